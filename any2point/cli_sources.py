"""``any2point-sources``: list every registered source from its spec alone.

Nothing is built: the table comes from the registry's ``SourceSpec`` records, and the
"weights" column asks each spec whether its pretrained weights are on this machine now.
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import exit_on_user_error
from .registry import get_source_spec, list_sources

__all__ = ["main", "source_rows"]

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
        rows.append({"name": spec.name, "family": spec.family, "position": spec.position, "width": spec.width,
                     "depth": spec.depth, "heads": spec.heads, "table": spec.table, "origin": spec.origin,
                     "licence": spec.licence, "weights_available": _available(spec),
                     "description": spec.description})
    return rows


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
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    args = parser.parse_args(argv)
    rows = source_rows()
    sys.stdout.write((json.dumps(rows, indent=2) if args.json else format_table(rows)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
