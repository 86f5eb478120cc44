"""``any2point-report DIR``: one table of every run below DIR (a sweep, or any folder of runs).

Every ``metrics.json`` below DIR is one row: run, source, data, peft (the config option, so
ablations of one method are told apart), the split OA refers to,
OA, mAcc, trainable parameters, time. The table is printed as markdown and written to
``DIR/report.md`` and ``DIR/report.csv``.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Sequence

from .errors import exit_on_user_error

__all__ = ["collect_runs", "markdown_table", "write_report", "main", "COLUMNS"]

COLUMNS = ["run", "source", "data", "peft", "split", "oa", "macc", "trainable_params", "seconds"]
_HEADERS = {"run": "run", "source": "source", "data": "data", "peft": "peft", "split": "split (OA on)",
            "oa": "OA", "macc": "mAcc", "trainable_params": "trainable params", "seconds": "time"}


def collect_runs(root: str | Path) -> tuple[list[dict], list[str]]:
    """Rows of every readable metrics.json below ``root`` (sorted), and problems with the others."""
    root = Path(root)
    rows, problems = [], []
    for path in sorted(root.rglob("metrics.json")):
        try:
            metrics = json.loads(path.read_text())
            if not isinstance(metrics, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: {exc}")
            continue
        run = path.parent.relative_to(root).as_posix() or "."
        row = {k: metrics.get(k) for k in COLUMNS[1:]}
        row["peft"] = metrics.get("peft_config") or row["peft"]  # the config option: ablations differ there
        rows.append({"run": run, **row})
    rows.sort(key=lambda r: (str(r["data"]), str(r["source"]), str(r["peft"]), r["run"]))
    return rows, problems


def _params(n) -> str:
    if n is None:
        return ""
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def _duration(seconds) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def _cell(key: str, value) -> str:
    if value is None:
        return ""
    if key in ("oa", "macc"):
        return f"{value:.2f}"
    if key == "trainable_params":
        return _params(value)
    if key == "seconds":
        return _duration(value)
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    head = "| " + " | ".join(_HEADERS[c] for c in COLUMNS) + " |"
    rule = "|" + "|".join("---:" if c in ("oa", "macc", "trainable_params", "seconds") else "---" for c in COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(c, r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join([head, rule, *body]) + "\n"


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_report(root: str | Path) -> tuple[str, list[dict], list[str]]:
    """Write ``report.md`` and ``report.csv`` in ``root``; returns (markdown, rows, problems)."""
    root = Path(root)
    rows, problems = collect_runs(root)
    table = markdown_table(rows)
    (root / "report.md").write_text(f"# Runs below {root}\n\n{table}")
    (root / "report.csv").write_text(_csv(rows))
    return table, rows, problems


@exit_on_user_error("any2point-report")
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="any2point-report",
                                description="Tabulate every run (metrics.json) below a folder, e.g. a sweep.")
    p.add_argument("dir", help="a sweep directory (multirun/...) or any folder of runs")
    args = p.parse_args(argv)
    root = Path(args.dir)
    if not root.is_dir():
        print(f"any2point-report: {root} is not a directory", file=sys.stderr)
        return 2
    table, rows, problems = write_report(root)
    for problem in problems:
        print(f"any2point-report: skipped {problem}", file=sys.stderr)
    if not rows:
        print(f"any2point-report: no metrics.json below {root}", file=sys.stderr)
        return 1
    print(table, end="")
    print(f"\n{len(rows)} runs; written {root / 'report.md'} and {root / 'report.csv'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
