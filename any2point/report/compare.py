"""``any2point-report --compare KEY``: every group against the baseline group of KEY.

KEY is a config group (``peft``, ``source``), a dotted config key (``train.lr``,
``data.fewshot.shots``) or a metrics.json field. The baseline value is ``--baseline VALUE``,
else the first of KEY's values in sort order. Each group is compared with the baseline group
that shares its other settings: the settings in which groups differ, except those that follow
from KEY (one value per value of KEY, e.g. the ``peft.*`` keys of a ``peft`` option, or the
``model.*`` preset of a ``source``). In a sweep of ``peft`` x ``data.fewshot.shots`` each
shots setting thus has its own baseline.

The difference (group - baseline) of OA, mAcc and, when the runs carry them, the zero-shot
metrics (:mod:`any2point.report.metrics`) gets a Student-t 95 % interval: of the mean
paired difference when both groups ran the same (seed, fold) pairs, each once; else Welch's
interval.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .metrics import REQUIRED, reported_metrics
from .runs import Group, varying_keys
from .stats import Interval, mean_interval, paired_difference, welch_difference

__all__ = ["Comparison", "compare_groups", "group_summary", "group_metrics", "NoBaseline"]


class NoBaseline(ValueError):
    """No group has the requested baseline value (the message lists the values there are)."""


@dataclass
class Comparison:
    group: Group
    baseline: Group
    method: str  # paired | welch
    diffs: dict[str, Interval | None]  # metric -> group - baseline; None when a side lacks the metric


def group_metrics(groups: Sequence[Group]) -> tuple[str, ...]:
    """The metric keys these groups' runs are reported on (:func:`reported_metrics`)."""
    return reported_metrics(r.metrics for g in groups for r in g.runs)


def _difference(group: Group, baseline: Group, metric: str) -> Interval | None:
    if not (group.carries(metric) and baseline.carries(metric)):
        return None
    mine, theirs = group.paired_values(metric), baseline.paired_values(metric)
    if mine is not None and theirs is not None and set(mine) == set(theirs):
        return paired_difference(mine, theirs)
    return welch_difference(group.values(metric), baseline.values(metric))


def _follows_from(key: str, by_value: dict[str, list[Group]]) -> bool:
    """True when ``key`` has one value among the groups of each value of KEY."""
    return all(len({g.settings.get(key) for g in groups}) == 1 for groups in by_value.values())


def compare_groups(groups: Sequence[Group], key: str, baseline: str | None = None
                   ) -> tuple[str, list[Comparison], list[str]]:
    """(baseline value, comparisons, notes on groups that could not be compared)."""
    by_value: dict[str, list[Group]] = {}
    notes = []
    for g in groups:
        value = g.value(key)
        if value is None:
            notes.append(f"{g.label}: no value of {key}")
            continue
        by_value.setdefault(value, []).append(g)
    if not by_value:
        raise NoBaseline(f"no run has a value of {key!r} (a config group such as peft, a dotted config key "
                         f"such as train.lr, or a metrics.json field)")
    if baseline is None:
        baseline = sorted(by_value)[0]
    if baseline not in by_value:
        raise NoBaseline(f"no group has {key}={baseline}; its values are: {', '.join(sorted(by_value))}")
    context = [k for k in varying_keys(groups) if not _follows_from(k, by_value)]
    metrics = group_metrics(groups)
    comparisons = []
    for value in sorted(v for v in by_value if v != baseline):
        for g in by_value[value]:
            matches = [b for b in by_value[baseline] if all(b.settings.get(k) == g.settings.get(k) for k in context)]
            if len(matches) != 1:
                notes.append(f"{g.label}: {len(matches)} baseline groups with {key}={baseline} and the same other "
                             f"settings ({', '.join(context) or 'none'}), expected one")
                continue
            diffs = {m: _difference(g, matches[0], m) for m in metrics}
            comparisons.append(Comparison(g, matches[0], diffs["oa"].method, diffs))
    comparisons.sort(key=lambda c: (c.baseline.label, c.group.label))
    return baseline, comparisons, notes


def group_summary(group: Group, metrics: Sequence[str] = REQUIRED) -> dict[str, Interval | None]:
    """Each metric of a group: mean, sample std and Student-t interval; None for a metric
    that not every run of the group carries."""
    return {m: mean_interval(group.values(m)) if group.carries(m) else None for m in metrics}
