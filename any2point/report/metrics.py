"""The metrics ``any2point-report`` tabulates, in one place: metrics.json key -> display name.

``oa`` and ``macc`` are in every run. The zero-shot keys (written by runs with the contrastive
head, see ``any2point/zeroshot.py``) are tabulated when one of the reported runs carries them,
so a report of classification runs keeps exactly its OA/mAcc columns. All are percentages.
"""
from __future__ import annotations

from typing import Iterable, Mapping

__all__ = ["METRICS", "REQUIRED", "reported_metrics", "carries"]

METRICS = {"oa": "OA", "macc": "mAcc", "zsl_top1": "ZSL top-1", "gzsl_seen": "GZSL seen",
           "gzsl_unseen": "GZSL unseen", "gzsl_hm": "GZSL HM"}
REQUIRED = ("oa", "macc")  # a run without them is not usable


def carries(metrics: Mapping, key: str) -> bool:
    """True when a run's metrics.json has a value for ``key`` (a zero-shot key may be absent)."""
    return metrics.get(key) is not None


def reported_metrics(all_metrics: Iterable[Mapping]) -> tuple[str, ...]:
    """The keys to tabulate for these runs' metrics.json contents: OA, mAcc and every other key
    of :data:`METRICS` that one of them carries, in :data:`METRICS` order."""
    present = set(REQUIRED)
    for metrics in all_metrics:
        present.update(k for k in METRICS if carries(metrics, k))
    return tuple(k for k in METRICS if k in present)
