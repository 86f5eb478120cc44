"""``any2point-report DIR [--compare KEY]``: the runs below DIR, their groups, and differences.

Every ``metrics.json`` below DIR is one run (a sweep, or a results tree such as
``results/<study>/<run>/``); each is a row of the runs table: run, source, data, peft (the
config option, so ablations of one method are told apart), the split OA refers to, OA, mAcc,
trainable parameters, time. Runs that differ only in ``seed`` and the few-shot fold form a
group (the rule: :mod:`any2point.report.runs`); the groups table gives per group n, mean ±
sample std and the Student-t 95 % interval of OA and mAcc. ``--compare KEY`` adds each group's
difference to its baseline group with its own interval (:mod:`any2point.report.compare`).
When a reported run carries the zero-shot metrics (``zsl_top1``, ``gzsl_seen``, ``gzsl_unseen``,
``gzsl_hm``), each table gets their columns too (:mod:`any2point.report.metrics`); a run or group
without them leaves those cells empty.

Printed as markdown and written to ``DIR/report.md``; CSV in ``DIR/report.csv`` (runs),
``DIR/report_groups.csv`` and, with ``--compare``, ``DIR/report_compare.csv``. A run whose
files cannot be used is skipped with a warning naming the file; the tables are still written.
Text taken from run files (folder names, sources, labels, compared values) is escaped for
markdown: a ``|`` cannot split a cell and a line break cannot end a row or start a heading.
"""
from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from pathlib import Path
from typing import Sequence

from ..atomic import atomic_write_text
from ..errors import exit_on_user_error
from .compare import Comparison, NoBaseline, compare_groups, group_metrics, group_summary
from .metrics import METRICS, REQUIRED, reported_metrics
from .runs import Group, Run, find_runs, group_runs
from .stats import LEVEL, Interval

__all__ = ["collect_runs", "markdown_table", "groups_table", "compare_table", "write_report", "main", "COLUMNS"]

COLUMNS = ["run", "source", "data", "peft", "split", "oa", "macc", "trainable_params", "seconds"]
_HEADERS = {"run": "run", "source": "source", "data": "data", "peft": "peft", "split": "split (OA on)",
            "trainable_params": "trainable params", "seconds": "time", **METRICS}
_CI = f"{round(LEVEL * 100)} % CI"


# every character Python (and so a reader's splitlines) treats as a line break
_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")


def _md(value) -> str:
    """Run-file text as one markdown table cell or heading: line breaks become a space,
    backslashes and ``|`` are escaped (GitHub's tables split cells at every unescaped ``|``)."""
    return _LINE_BREAKS.sub(" ", str(value)).replace("\\", "\\\\").replace("|", "\\|")


def _run_columns(metrics: Sequence[str]) -> list[str]:
    """COLUMNS with the reported metrics beyond OA and mAcc after mAcc."""
    at = COLUMNS.index(REQUIRED[-1]) + 1
    return COLUMNS[:at] + [m for m in metrics if m not in REQUIRED] + COLUMNS[at:]


def _row(run: Run, metrics: Sequence[str] = REQUIRED) -> dict:
    row = {"run": run.name, **{k: run.metrics.get(k) for k in _run_columns(metrics)[1:]}}
    row["peft"] = run.metrics.get("peft_config") or row["peft"]  # the config option: ablations differ there
    return row


def collect_runs(root: str | Path, ignore: Sequence[str] = ()) -> tuple[list[dict], list[str]]:
    """Rows of every usable metrics.json below ``root`` (sorted), and problems with the others."""
    runs, problems = find_runs(root, ignore)
    return _rows(runs), problems


def _rows(runs: Sequence[Run]) -> list[dict]:
    metrics = reported_metrics(r.metrics for r in runs)
    return sorted((_row(r, metrics) for r in runs),
                  key=lambda r: (str(r["data"]), str(r["source"]), str(r["peft"]), r["run"]))


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
    if key in METRICS:
        return f"{value:.2f}"
    if key == "trainable_params":
        return _params(value)
    if key == "seconds":
        return _duration(value)
    return _md(value)


def _table_columns(rows: list[dict]) -> list[str]:
    """The runs table's columns: those of the rows (COLUMNS, plus the zero-shot metrics they carry)."""
    return list(rows[0]) if rows else list(COLUMNS)


def markdown_table(rows: list[dict]) -> str:
    columns = _table_columns(rows)
    head = "| " + " | ".join(_HEADERS[c] for c in columns) + " |"
    rule = "|" + "|".join("---:" if c in METRICS or c in ("trainable_params", "seconds") else "---"
                          for c in columns) + "|"
    body = ["| " + " | ".join(_cell(c, r[c]) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body]) + "\n"


def _number(value: float | None, signed: bool = False) -> str:
    return "" if value is None else (f"{value:+.2f}" if signed else f"{value:.2f}")


def _diff(i: Interval | None) -> str:
    return "" if i is None else _number(i.mean, True)


def _mean_std(i: Interval | None) -> str:
    if i is None:  # a metric not every run of the group carries
        return ""
    return f"{i.mean:.2f} ± {i.std:.2f}" if i.std is not None else f"{i.mean:.2f} (n=1)"


def _ci(i: Interval | None, signed: bool = False) -> str:
    if i is None:
        return ""
    if not i.has_ci:
        return f"no CI (n={i.n})" if i.method != "welch" else "no CI (a group has n=1)"
    return f"[{_number(i.low, signed)}, {_number(i.high, signed)}]"


def _seeds(group: Group) -> str:
    pairs = sorted({p for p in (r.pair for r in group.runs) if p is not None}, key=str)
    if not pairs:
        return ""
    if all(fold is None for _, fold in pairs):
        return ",".join(seed for seed, _ in pairs)
    return ",".join(f"{seed}/{fold}" for seed, fold in pairs)


def _rule(columns: Sequence[str], right: Sequence[str]) -> str:
    return "|" + "|".join("---:" if c in right else "---" for c in columns) + "|"


def groups_table(groups: Sequence[Group]) -> str:
    metrics = group_metrics(groups)
    heads = ["group", "n", "seeds (/fold)", "split"] + [h for m in metrics for h in
                                                      (f"{METRICS[m]} mean ± std", f"{METRICS[m]} {_CI}")]
    lines = ["| " + " | ".join(heads) + " |", _rule(heads, heads[1:2] + heads[4:])]
    for g in groups:
        s = group_summary(g, metrics)
        cells = [_md(g.label), str(len(g.runs)), _md(_seeds(g)), _md(g.split)]
        cells += [c for m in metrics for c in (_mean_std(s[m]), _ci(s[m]))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _method(c: Comparison) -> str:
    i = c.diffs["oa"]
    if i.method == "paired":
        return f"paired, {i.n} pair" + ("" if i.n == 1 else "s")
    return f"Welch, n={len(c.group.runs)} vs {len(c.baseline.runs)}" + (f", df {i.df:.1f}" if i.df else "")


def compare_table(comparisons: Sequence[Comparison], metrics: Sequence[str] | None = None) -> str:
    """``metrics``: the compared metric keys (default: those of the comparisons, else OA and mAcc)."""
    if metrics is None:
        metrics = list(comparisons[0].diffs) if comparisons else REQUIRED
    heads = ["group", "baseline", "pairing"] + [h for m in metrics for h in
                                                (f"Δ{METRICS[m]}", f"Δ{METRICS[m]} {_CI}")]
    lines = ["| " + " | ".join(heads) + " |", _rule(heads, heads[3:])]
    for c in comparisons:
        cells = [_md(c.group.label), _md(c.baseline.label), _method(c)]
        cells += [x for m in metrics for x in (_diff(c.diffs[m]), _ci(c.diffs[m], True))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _interval_fields(metric: str, centre: str, i: Interval | None) -> dict:
    """CSV fields of an interval; what does not exist (std or CI at n=1, a metric the runs do
    not carry) is left empty, not NaN."""
    if i is None:
        return dict.fromkeys((f"{metric}_{centre}", f"{metric}_std", f"{metric}_ci_low", f"{metric}_ci_high",
                              f"{metric}_df"))
    return {f"{metric}_{centre}": i.mean, f"{metric}_std": i.std, f"{metric}_ci_low": i.low,
            f"{metric}_ci_high": i.high, f"{metric}_df": i.df}


def _group_rows(groups: Sequence[Group]) -> list[dict]:
    metrics = group_metrics(groups)
    rows = []
    for g in groups:
        s = group_summary(g, metrics)
        row = {"group": g.label, "n": len(g.runs), "seeds": _seeds(g), "split": g.split}
        for m in metrics:
            row.update(_interval_fields(m, "mean", s[m]))
        rows.append(row)
    return rows


def _compare_rows(key: str, comparisons: Sequence[Comparison]) -> list[dict]:
    rows = []
    for c in comparisons:
        row = {"key": key, "group": c.group.label, "baseline": c.baseline.label, "method": c.method,
               "n": c.diffs["oa"].n}
        for m in c.diffs:
            row.update(_interval_fields(m, "diff", c.diffs[m]))
        rows.append(row)
    return rows


def _columns(rows: list[dict], first: Sequence[str]) -> list[str]:
    return list(rows[0]) if rows else list(first)


def write_report(root: str | Path, compare: str | None = None, baseline: str | None = None,
                 ignore: Sequence[str] = ()) -> tuple[str, list[dict], list[str]]:
    """Write the report files in ``root``; returns (markdown, run rows, problems).
    Raises NoBaseline when ``compare`` is given and no group has the baseline value."""
    root = Path(root)
    runs, problems = find_runs(root, ignore)
    rows = _rows(runs)
    groups = group_runs(runs)
    parts = [f"## Runs\n\n{markdown_table(rows)}",
             f"## Groups (runs differing only in seed and few-shot fold; Student-t {_CI})\n\n{groups_table(groups)}"]
    atomic_write_text(root / "report.csv", _csv(rows, _table_columns(rows)))
    group_rows = _group_rows(groups)
    atomic_write_text(root / "report_groups.csv", _csv(group_rows, _columns(group_rows, ["group"])))
    if compare is not None and groups:
        value, comparisons, notes = compare_groups(groups, compare, baseline)
        notes = "".join(f"- not compared: {_md(n)}\n" for n in notes)
        parts.append(f"## Difference to {_md(compare)}={_md(value)} (group - baseline; {_CI})\n\n"
                     f"{compare_table(comparisons, group_metrics(groups))}" + (f"\n{notes}" if notes else ""))
        compare_rows = _compare_rows(compare, comparisons)
        atomic_write_text(root / "report_compare.csv", _csv(compare_rows, _columns(compare_rows, ["key"])))
    markdown = "\n".join(parts)
    atomic_write_text(root / "report.md", f"# Runs below {_md(root)}\n\n{markdown}")
    return markdown, rows, problems


@exit_on_user_error("any2point-report")
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="any2point-report",
                                description="Tabulate every run (metrics.json) below a folder, e.g. a sweep, "
                                            "with per-group means and confidence intervals.")
    p.add_argument("dir", help="a sweep directory (multirun/...), a results/<study> folder, or any folder of runs")
    p.add_argument("--compare", metavar="KEY",
                   help="difference of every group to the baseline group of KEY (a config group such as peft, "
                        "a dotted config key such as train.lr, or a metrics.json field)")
    p.add_argument("--baseline", metavar="VALUE", help="KEY's baseline value (default: the first in sort order)")
    p.add_argument("--ignore", metavar="KEY", action="append", default=[],
                   help="a config key (and the keys below it) that does not split groups; repeatable")
    args = p.parse_args(argv)
    if args.baseline is not None and args.compare is None:
        p.error("--baseline needs --compare KEY")
    root = Path(args.dir)
    if not root.is_dir():
        print(f"any2point-report: {root} is not a directory", file=sys.stderr)
        return 2
    try:
        table, rows, problems = write_report(root, args.compare, args.baseline, args.ignore)
    except NoBaseline as exc:
        print(f"any2point-report: --compare {args.compare}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"any2point-report: cannot write the report in {root}: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"any2point-report: warning: skipped {problem}", file=sys.stderr)
    if not rows:
        print(f"any2point-report: no usable metrics.json below {root}", file=sys.stderr)
        return 1
    print(table, end="")
    written = ", ".join(str(root / f) for f in ("report.md", "report.csv", "report_groups.csv")
                        + (("report_compare.csv",) if args.compare else ()))
    print(f"\n{len(rows)} runs; written {written}", file=sys.stderr)
    return 0

