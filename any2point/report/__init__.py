"""``any2point-report``: tables of the runs below a folder (:mod:`.cli`), grouped by their
settings (:mod:`.runs`), with confidence intervals (:mod:`.stats`) and differences to a
baseline group (:mod:`.compare`)."""
from .cli import collect_runs, main

__all__ = ["collect_runs", "main"]
