"""``any2point-sources``: the named sources, and how to name any model of timm, transformers or open_clip.

Nothing is built: the table comes from the registry's ``SourceSpec`` records (the position
table rendered from its values), the "weights" column asks each spec whether its pretrained
weights are on this machine now, the caveats below it say how some weights differ from the
model they are named after, and the prefixes come from the registered families.
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import exit_on_user_error
from .backbones.registry import get_source_spec, list_families, list_sources

__all__ = ["main", "source_rows", "family_rows"]

COLUMNS = (("name", "name"), ("position", "pos"), ("width", "width"), ("depth", "depth"), ("heads", "heads"),
           ("table", "position table"), ("origin", "weights origin"), ("licence", "licence"),
           ("weights_available", "weights here"))


def _available(spec) -> bool:
    try:
        return bool(spec.weights_available())
    except Exception:  # a plug-in's check must not break the listing
        return False


def source_rows() -> list[dict]:
    """One record per registered source, in name order."""
    rows = []
    for name in list_sources():
        spec = get_source_spec(name)
        pos = spec.position
        rows.append({"name": spec.name, "family": spec.family, "position": pos.kind, "width": spec.width,
                     "depth": spec.depth, "heads": spec.heads, "table": spec.table, "table_shape": list(pos.shape),
                     "canvas": list(pos.canvas) if pos.canvas else None,
                     "patch": list(pos.patch) if pos.patch else None, "cls_position": pos.cls,
                     "origin": spec.origin, "licence": spec.licence, "weights_available": _available(spec),
                     "description": spec.description, "caveat": spec.caveat})
    return rows


def family_rows() -> list[dict]:
    """One record per library prefix."""
    return [{"prefix": f.prefix, "syntax": f.syntax, "library": f.library, "accepts": f.accepts,
             "example": f.example} for f in list_families()]


def format_families(rows: list[dict]) -> str:
    lines = ["", "Any model of these libraries by name (sizes and position table read from the model; "
             "a model that does not fit is refused with the reason):"]
    for r in rows:
        lines += [f"  {r['syntax']}", f"      {r['accepts']}", f"      e.g. any2point-train source.name={r['example']}"]
    lines += ["  With source.pretrained=false for random weights, source.weights=PATH for a local copy and",
              "  source.options={...} for arguments of the library's own factory; such a source runs on model/base.yaml."]
    return "\n".join(lines)


def format_caveats(rows: list[dict]) -> str:
    """How some sources' weights differ from the model they are named after ("" when none do)."""
    notes = [f"  {r['name']}: {r['caveat']}" for r in rows if r.get("caveat")]
    return "\n".join(["", "", "Caveats:", *notes]) if notes else ""


def format_table(rows: list[dict]) -> str:
    def cell(row, key):
        value = row[key]
        return ("yes" if value else "no") if isinstance(value, bool) else str(value)

    cells = [[title for _, title in COLUMNS]] + [[cell(r, key) for key, _ in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@exit_on_user_error("any2point-sources")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="any2point-sources", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true",
                        help="print JSON ({'sources': [...], 'prefixes': [...]}) instead of a table")
    args = parser.parse_args(argv)
    rows, families = source_rows(), family_rows()
    text = (json.dumps({"sources": rows, "prefixes": families}, indent=2) if args.json
            else format_table(rows) + format_caveats(rows) + "\n" + format_families(families))
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
