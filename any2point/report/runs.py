"""Reading run folders for ``any2point-report``, and grouping runs that repeat one setting.

A run is a folder with a ``metrics.json`` (and, when Hydra wrote it, ``.hydra/config.yaml``
and ``.hydra/hydra.yaml``), anywhere below the report's folder: a sweep
(``multirun/train/<date>/<job>/``) or a results tree (``results/<study>/<run>/``).

**Group rule.** Two runs belong to one group when their *settings* are equal. The settings are
the run's composed config (``.hydra/config.yaml``, read as plain YAML, never resolved),
flattened to dotted keys, minus the keys that vary between repetitions or do not change the
result by design (:data:`RUN_SPECIFIC`: ``seed``, ``data.fewshot.fold``, paths such as
``data.root``, and execution switches such as ``trainer.threads``), plus the split the
metrics refer to. A run without ``.hydra/config.yaml`` is described by its metrics.json
fields instead (:data:`METRICS_SETTINGS`). A group is labelled by the settings in which the
groups differ, a config group's keys shown as its option (``peft=tokenizer_only`` rather than
every ``peft.*`` key) when the groups' options differ, else the key itself
(``source.pretrained=false`` where every run has ``source=minilm``); the options come from
``.hydra/hydra.yaml``, else from metrics.json's ``peft_config`` and ``source``. Runs are
paired across groups by (seed, few-shot fold).

Files are read as data: size checked before reading, JSON without NaN/Infinity, YAML by the
safe loader without aliases (:data:`MAX_SETTINGS` keys at most). A row that cannot be used
(unreadable, truncated, nested too deeply, not an object, OA/mAcc, or a zero-shot key that is
present, not a number in [0, 100], a broken config) is skipped with the reason, never a crash.
"""
from __future__ import annotations

import json
import math
import os
import stat
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import yaml

from ..recorded import settings_as_today
from .metrics import METRICS, REQUIRED, carries

__all__ = ["Run", "Group", "find_runs", "read_run", "group_runs", "RUN_SPECIFIC", "METRICS_SETTINGS",
           "MAX_FILE_BYTES", "MAX_SETTINGS", "BadRun"]

# Keys (and everything below them) that never split a group: repetitions and execution details.
RUN_SPECIFIC = ("seed", "data.fewshot.fold", "data.root", "data.cache", "data.cache_dir", "source.weights",
                "train.resume", "trainer.threads", "trainer.num_workers", "trainer.progress",
                "trainer.reuse_host_memory", "trainer.activation_checkpointing", "trainer.compile")
# A run's settings when it has no .hydra/config.yaml (metrics.json fields).
METRICS_SETTINGS = ("source", "weights_tag", "data", "peft_config", "split", "epochs", "num_points", "classes",
                    "train_samples")
# A run's config group options when it has no .hydra/hydra.yaml (e.g. a results tree that kept
# only metrics.json and config.yaml): group -> metrics.json field.
METRICS_CHOICES = {"peft": "peft_config", "source": "source"}
_OPTION_OF_FIELD = {fld: group for group, fld in METRICS_CHOICES.items()}
MAX_FILE_BYTES = 4 * 2**20  # a metrics.json or config file is a few KB; refuse anything this large
# A composed config has a few hundred keys; more is not a config any2point wrote (and would slow grouping).
MAX_SETTINGS = 10_000
_NUMBERS = ("trainable_params", "seconds")  # optional numeric columns: a number when present
_SPLIT_KEY = "metrics.split"


class BadRun(ValueError):
    """A run folder whose files cannot be used; the message names the file and the problem."""


@dataclass
class Run:
    name: str  # folder relative to the report's folder
    metrics: dict
    settings: dict[str, str]  # the group identity (see the module docstring)
    choices: dict[str, str] = field(default_factory=dict)  # config group -> option (Hydra's runtime choices)
    pair: tuple | None = None  # (seed, fold) when the seed is known

    def value(self, key: str) -> str | None:
        """``key`` as a config group option, a dotted config key, or a metrics.json field."""
        if key in self.choices:
            return self.choices[key]
        if key in self.settings:
            return self.settings[key]
        if key in self.metrics and self.metrics[key] is not None:
            return _text(self.metrics[key])
        return None


@dataclass
class Group:
    settings: dict[str, str]
    runs: list[Run]
    label: str = ""

    def values(self, metric: str) -> list[float]:
        return [float(r.metrics[metric]) for r in self.runs]

    def carries(self, metric: str) -> bool:
        """True when every run of the group has ``metric`` (zero-shot keys are only in some runs)."""
        return all(carries(r.metrics, metric) for r in self.runs)

    def paired_values(self, metric: str) -> dict | None:
        """{(seed, fold): value}, or None when a run's seed is unknown or two runs share one."""
        pairs = [r.pair for r in self.runs]
        if any(p is None for p in pairs) or len(set(pairs)) != len(pairs):
            return None
        return {r.pair: float(r.metrics[metric]) for r in self.runs}

    @property
    def split(self) -> str:
        return str(self.runs[0].metrics.get("split") or "")

    def value(self, key: str) -> str | None:
        values = {r.value(key) for r in self.runs}
        return values.pop() if len(values) == 1 else " | ".join(sorted(map(str, values)))


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


class _NotANumber(ValueError):
    pass


def _no_constants(name: str):
    raise _NotANumber(name)


def _read_text(path: Path) -> str:
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
        raise BadRun(f"{path}: not a regular file")
    size = info.st_size
    if size > MAX_FILE_BYTES:
        raise BadRun(f"{path}: {size} bytes, more than the {MAX_FILE_BYTES} a run file may have")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadRun(f"{path}: unreadable ({exc})") from None


def _read_metrics(path: Path) -> dict:
    try:
        metrics = json.loads(_read_text(path), parse_constant=_no_constants)
    except RecursionError:
        raise BadRun(f"{path}: nested too deeply to be a run's metrics") from None
    except _NotANumber as exc:
        raise BadRun(f"{path}: holds {exc}, which is not a number (JSON has no NaN or Infinity); the run's "
                     f"metrics are unusable: rerun it") from None
    except BadRun:
        raise
    except ValueError as exc:
        raise BadRun(f"{path}: not valid JSON, maybe truncated ({exc}); rerun the run or delete the file") from None
    if not isinstance(metrics, dict):
        raise BadRun(f"{path}: expected a JSON object, got {type(metrics).__name__}")
    for key in METRICS:  # OA and mAcc always; the zero-shot keys when the run wrote them
        if key not in REQUIRED and not carries(metrics, key):
            continue
        value = metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 100.0:
            raise BadRun(f"{path}: {key} is {value!r}, expected a percentage (a number in [0, 100])")
    for key in _NUMBERS:
        value = metrics.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):
            raise BadRun(f"{path}: {key} is {value!r}, expected a non-negative number or null")
    return metrics


class _NoAliasLoader(yaml.SafeLoader):
    """The safe loader without anchors/aliases: Hydra never writes them, and a few aliases
    nested in each other expand to billions of nodes (a "billion laughs" file)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases are not accepted in a run file",
                                              event.start_mark)
        return super().compose_node(parent, index)


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.load(_read_text(path), Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise BadRun(f"{path}: nested too deeply to be a run's config") from None
    except yaml.YAMLError as exc:
        raise BadRun(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise BadRun(f"{path}: expected a mapping, got {type(data).__name__}")
    return data


def _flatten(node, path: Path, limit: int = MAX_SETTINGS) -> dict[str, str]:
    """Dotted keys of a nested mapping, as today's settings of the run that recorded them
    (:func:`any2point.recorded.settings_as_today`: a removed setting, a renamed method, a setting
    added since, so that a study's older and newer runs group by what they ran), as text;
    BadRun past ``limit`` keys (the config is not a run's)."""
    out: dict[str, object] = {}
    stack = [("", node)]
    while stack:  # iterative: a deeply nested file cannot exhaust the interpreter's stack
        prefix, item = stack.pop()
        if isinstance(item, dict) and item:
            stack.extend((f"{prefix}.{key}" if prefix else str(key), value) for key, value in reversed(item.items()))
            continue
        if len(out) >= limit:
            raise BadRun(f"{path}: more than {limit} settings; not a run's config")
        out[prefix] = item
    try:
        return {key: _text(value) for key, value in settings_as_today(out).items()}
    except RecursionError:
        raise BadRun(f"{path}: nested too deeply to be a run's config") from None


def _choices(hydra_yaml: dict) -> dict[str, str]:
    """The config groups' options of a run (``hydra.runtime.choices``), Hydra's own left out."""
    node = hydra_yaml
    for key in ("hydra", "runtime", "choices"):
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return {}
    return {str(k): _text(v) for k, v in node.items() if not str(k).startswith("hydra/") and v is not None}


def _ignored(key: str, ignore: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in ignore)


def read_run(metrics_path: Path, root: Path, ignore: Sequence[str] = ()) -> Run:
    """One run from its metrics.json and, when present, its .hydra files; BadRun if unusable."""
    metrics = _read_metrics(metrics_path)
    run_dir = metrics_path.parent
    name = run_dir.relative_to(root).as_posix() or "."
    config_path, hydra_path = run_dir / ".hydra" / "config.yaml", run_dir / ".hydra" / "hydra.yaml"
    ignore = tuple(RUN_SPECIFIC) + tuple(ignore)
    choices: dict[str, str] = {}
    if config_path.is_file():
        flat = _flatten(_read_yaml(config_path), config_path)
        settings = {k: v for k, v in flat.items() if not _ignored(k, ignore)}
        seed, fold = flat.get("seed"), flat.get("data.fewshot.fold")
        if hydra_path.is_file():
            choices = _choices(_read_yaml(hydra_path))
    else:
        settings = {k: _text(metrics[k]) for k in METRICS_SETTINGS if metrics.get(k) is not None}
        seed, fold = metrics.get("seed"), metrics.get("fold")
        seed = None if seed is None else _text(seed)
        fold = None if fold is None else _text(fold)
    if not choices:
        choices = {group: _text(metrics[field]) for group, field in METRICS_CHOICES.items()
                   if metrics.get(field) is not None}
    settings[_SPLIT_KEY] = _text(metrics.get("split"))
    return Run(name, metrics, settings, choices, None if seed is None else (seed, fold))


def find_runs(root: str | Path, ignore: Sequence[str] = ()) -> tuple[list[Run], list[str]]:
    """Every run below ``root`` (symbolic links to folders are not followed), and one problem
    per metrics.json that could not be used."""
    root = Path(root)
    runs, problems = [], []
    paths = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        if "metrics.json" in files:
            paths.append(Path(folder) / "metrics.json")
    for path in sorted(paths):
        try:
            runs.append(read_run(path, root, ignore))
        except BadRun as exc:
            problems.append(str(exc))
        except RecursionError:  # a value nested too deeply for json.dumps / comparison
            problems.append(f"{path}: nested too deeply to be a run's files")
        except OSError as exc:
            problems.append(f"{path}: unreadable ({exc})")
    return runs, problems


def group_runs(runs: Iterable[Run]) -> list[Group]:
    """Runs with equal settings, each group labelled by what sets it apart from the others."""
    by_settings: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        by_settings[tuple(sorted(run.settings.items()))].append(run)
    groups = [Group(dict(k), sorted(v, key=lambda r: r.name)) for k, v in by_settings.items()]
    varying = varying_keys(groups)
    options = distinguishing_choices(groups)
    # a key under a labelling option, or the metrics.json field standing for one, is said by the
    # option, unless groups with the same option differ in it (peft=any2point with and without
    # peft.source_norms)
    shown = [key for key in varying if not _said_by_option(key, groups, options)]
    for g in groups:
        choices = g.runs[0].choices
        parts = [f"{group}={choices[group]}" for group in options]
        parts += [f"{key}={g.settings.get(key, '-')}" for key in shown]
        if parts:
            g.label = ", ".join(parts)
        else:
            m = g.runs[0].metrics
            g.label = " / ".join(str(m.get(k) or "") for k in ("source", "data", "peft_config"))
    groups.sort(key=lambda g: g.label)
    return groups


def _said_by_option(key: str, groups: Sequence[Group], options: Sequence[str]) -> bool:
    """Whether labelling option of ``key``'s config group tells ``key``'s value in every group:
    no two groups with the same option hold different values of it."""
    option = key.split(".", 1)[0] if key.split(".", 1)[0] in options else _OPTION_OF_FIELD.get(key)
    if option not in options:
        return False
    seen: dict[str, str | None] = {}
    for g in groups:
        choice, value = g.runs[0].choices[option], g.settings.get(key)
        if seen.setdefault(choice, value) != value:
            return False
    return True


def distinguishing_choices(groups: Sequence[Group]) -> list[str]:
    """The config groups whose option is the same within every group of runs and not the same
    for all of them. Only these label a group by option: a key of a group whose option does
    not differ (``source.pretrained`` under ``source=minilm`` everywhere) is shown as itself."""
    names = sorted({name for g in groups for r in g.runs for name in r.choices})
    out = []
    for name in names:
        per_group = [{r.choices.get(name) for r in g.runs} for g in groups]
        one_each = all(len(o) == 1 and None not in o for o in per_group)
        if one_each and len(set().union(*per_group)) > 1:
            out.append(name)
    return out


def varying_keys(groups: Sequence[Group]) -> list[str]:
    keys = sorted({k for g in groups for k in g.settings})
    return [k for k in keys if len({g.settings.get(k) for g in groups}) > 1]
