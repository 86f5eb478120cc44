"""The commands the README and the docs show are ones that work.

Every command line in a fenced shell block (```bash, ```sh, ```shell, ```console or a bare
fence) of README.md and docs/**/*.md is checked without running anything:

- ``any2point-train`` (also ``python -m any2point.train`` and ``torchrun ... -m any2point.train``)
  and ``any2point-eval``: the overrides are composed with Hydra's compose API as the app would,
  every value of a ``-m`` sweep included, then the start-up checks run (required keys, the
  settings no run can use, the typed model and PEFT sections), so an unknown key, group or
  option, or a refused value, fails here with the file and line;
- ``any2point-show``: its arguments parse, and its overrides compose as the training config;
- ``any2point-predict``: its arguments parse;
- ``python -m any2point.bench SUB ...``: the subcommand exists and its options parse, in
  code blocks and in inline code (`` `python -m any2point.bench ...` ``) alike;
- any other ``any2point-*`` word that starts a command must be a console script of setup.cfg.

Templates with placeholders (``peft=<name>``) belong in prose, not in a shell block: Hydra
cannot parse ``<`` in a value, and this test would say so.
"""
from __future__ import annotations

import configparser
import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

import any2point.config  # noqa: F401  (registers the schemas)
from any2point.config import check_required, check_train_settings
from any2point.errors import ConfigError
from any2point.hydra_app import refuse_old_spellings, source_preset_overrides

pytestmark = [pytest.mark.filterwarnings("ignore:Class `DataConfig` subclasses `Dict`:UserWarning")]

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|"}
# Hydra's own flags; every other token of an app's command line is an override
HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p"}
HYDRA_FLAGS = {"-m", "--multirun", "--resolve", "-h", "--help", "--hydra-help"}
# launchers of optional extras: their options exist once the plugin is installed
LAUNCHER_PLUGINS = {"joblib": ("hydra_plugins.hydra_joblib_launcher", "sweep"),
                    "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm")}


@dataclass(frozen=True)
class Command:
    where: str          # file:line
    kind: str           # train | eval | show | predict | bench | script
    args: tuple[str, ...]
    error: str | None = None  # a console block shows the command failing with this message


def _fenced_shell_lines(text: str):
    """(line number, line, error) of every command inside a shell code block, continuations
    joined. In a ``console`` block only ``$`` lines are commands, and the ``<app>: error: ...``
    line printed after one is the error it must stop with."""
    fence, pending, start = None, "", 0
    shown: list = []  # the console command whose output lines follow
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            match = re.match(r"(`{3,}|~{3,})\s*([\w-]*)", stripped)
            if match:
                fence = (match.group(1), match.group(2).lower())
            continue
        if stripped.startswith(fence[0]):
            fence = None
            continue
        if fence[1] not in SHELL_FENCES:
            continue
        if fence[1] == "console" and not pending and not stripped.startswith("$ "):
            error = re.match(r"any2point-\w+: error: (.*)", stripped)
            if error and shown:
                shown[-1][2] = error.group(1)
            continue
        if not pending:
            start = number
        pending += stripped[:-1].rstrip() + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            shown.append([start, pending.removeprefix("$ "), None])
            pending = ""
    yield from (tuple(command) for command in shown)


def _segments(line: str) -> list[list[str]]:
    tokens = shlex.split(line, comments=True)
    out, current = [], []
    for token in tokens:
        if token in SEPARATORS:
            out.append(current)
            current = []
        else:
            current.append(token)
    return [s for s in [*out, current] if s]


def _module_after_m(tokens: list[str]) -> tuple[str, list[str]] | None:
    if "-m" in tokens:
        at = tokens.index("-m")
        if at + 1 < len(tokens):
            return tokens[at + 1], tokens[at + 2:]
    return None


def _classify(tokens: list[str]) -> tuple[str, list[str]] | None:
    head = tokens[0]
    scripts = {"any2point-train": "train", "any2point-eval": "eval", "any2point-show": "show",
               "any2point-predict": "predict"}
    if head in scripts:
        return scripts[head], tokens[1:]
    if head.startswith("any2point-"):
        return "script", tokens[:1]
    if head in ("python", "python3", "torchrun"):
        found = _module_after_m(tokens)
        modules = {"any2point.train": "train", "any2point.evaluate": "eval", "any2point.bench": "bench"}
        if found and found[0] in modules:
            return modules[found[0]], found[1]
    return None


def _commands() -> list[Command]:
    commands = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT).as_posix()
        for number, line, error in _fenced_shell_lines(text):
            for tokens in _segments(line):
                found = _classify(tokens)
                if found:
                    commands.append(Command(f"{rel}:{number}", found[0], tuple(found[1]), error))
        for number, line in enumerate(text.splitlines(), 1):
            for inline in re.findall(r"(?<!`)`python -m any2point\.bench ([^`]+)`", line):  # naming a subcommand
                commands.append(Command(f"{rel}:{number}", "bench", tuple(shlex.split(inline))))
    return commands


COMMANDS = _commands()


def _split_hydra_args(command: Command) -> list[str]:
    overrides, args = [], list(command.args)
    while args:
        token = args.pop(0)
        if token in HYDRA_FLAGS_WITH_VALUE:
            args.pop(0)
        elif token in HYDRA_FLAGS:
            pass
        elif token.startswith("-"):
            pytest.fail(f"{command.where}: {token!r} is not a flag of the Hydra apps")
        else:
            overrides.append(token)
    return overrides


def _expansions(overrides: list[str], where: str) -> list[list[str]]:
    """One override list per value of every sweep (the other sweeps at their first value)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:  # the parse error names the override
        pytest.fail(f"{where}: Hydra cannot parse the overrides: {exc}")
    values = [_sweep_values(o) if o.is_sweep_override() else [o.get_value_element_as_str()] for o in parsed]
    base = [f"{o.input_line.split('=', 1)[0]}={v[0]}" if o.is_sweep_override() else o.input_line
            for o, v in zip(parsed, values)]
    runs = [base]
    for i, (o, vs) in enumerate(zip(parsed, values)):
        for v in vs[1:]:
            runs.append([*base[:i], f"{o.input_line.split('=', 1)[0]}={v}", *base[i + 1:]])
    return runs


def _sweep_values(override) -> list[str]:
    """Every value of a choice sweep; the ends of a range (its values differ only in number)."""
    values = list(override.sweep_string_iterator())
    return values[:1] + values[-1:] if override.value_type.name == "RANGE_SWEEP" and len(values) > 2 else values


def _skip_without_launcher(overrides: list[str]) -> None:
    for override in overrides:
        key, _, value = override.partition("=")
        if key == "hydra/launcher" and value in LAUNCHER_PLUGINS:
            module, extra = LAUNCHER_PLUGINS[value]
            if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
                pytest.skip(f"hydra/launcher={value} needs the {extra} extra (pip install -e \".[{extra}]\")")


def _compose_checked(app: str, overrides: list[str], where: str, error: str | None = None):
    try:
        cfg = compose(app, overrides=overrides, return_hydra_config=True)  # hydra.* overrides checked too
        with open_dict(cfg):
            cfg.pop("hydra")  # the app's config, as the app sees it
        check_required(cfg)
        if app == "train":
            check_train_settings(cfg)
            OmegaConf.to_object(cfg.model)
            OmegaConf.to_object(cfg.peft)
    except Exception as exc:
        if error is not None and str(exc) == error:
            return None  # stops with the message the docs show
        pytest.fail(f"{where}: any2point-{app} {' '.join(overrides)}\n  {type(exc).__name__}: {exc}")
    return cfg  # an error shown for a command that composes comes at run time (tests/apps/test_train.py)


def _ids(commands):
    return [f"{c.where} {c.kind} {' '.join(c.args)[:60]}" for c in commands]


APP_COMMANDS = [c for c in COMMANDS if c.kind in ("train", "eval")]


@pytest.mark.usefixtures("hydra_conf")
@pytest.mark.parametrize("command", APP_COMMANDS, ids=_ids(APP_COMMANDS))
def test_train_and_eval_commands_compose(command):
    overrides = _split_hydra_args(command)
    try:  # as the apps do before composing (any2point.hydra_app.run_hydra_app)
        overrides = refuse_old_spellings(overrides)
    except ConfigError as exc:
        if command.error == str(exc):
            return  # stops with the message the docs show
        pytest.fail(f"{command.where}: any2point-{command.kind} {' '.join(overrides)}\n  ConfigError: {exc}")
    if command.kind == "train":
        overrides = source_preset_overrides(overrides)
    _skip_without_launcher(overrides)
    for run in _expansions(overrides, command.where):
        _compose_checked(command.kind, run, command.where, command.error)


SHOW_COMMANDS = [c for c in COMMANDS if c.kind == "show"]


@pytest.mark.parametrize("command", SHOW_COMMANDS, ids=_ids(SHOW_COMMANDS))
def test_show_commands_parse_and_compose(command):
    from any2point.show.cli import _parser, _split_inputs
    from any2point.show.inputs import compose_train_config

    args = _parse(_parser(), command, intermixed=True)
    files, overrides = _split_inputs(args.inputs)
    assert files, f"{command.where}: any2point-show names no file"
    if args.checkpoint is None:
        try:
            compose_train_config(([f"source={args.source}"] if args.source else []) + overrides)
        except Exception as exc:
            pytest.fail(f"{command.where}: {type(exc).__name__}: {exc}")
    else:
        assert all(o.startswith("model.") for o in overrides), f"{command.where}: only model.* with --checkpoint"


PREDICT_COMMANDS = [c for c in COMMANDS if c.kind == "predict"]


@pytest.mark.parametrize("command", PREDICT_COMMANDS, ids=_ids(PREDICT_COMMANDS))
def test_predict_commands_parse(command):
    from any2point.predict import _parser

    _parse(_parser(), command)


BENCH_COMMANDS = [c for c in COMMANDS if c.kind == "bench"]


@pytest.mark.parametrize("command", BENCH_COMMANDS, ids=_ids(BENCH_COMMANDS))
def test_bench_subcommands_exist_and_their_options_parse(command):
    from any2point.bench.__main__ import build_parser

    parser, found = build_parser()
    args = _parse(parser, command)
    assert args.subcommand in found["modules"], f"{command.where}: bench {args.subcommand}: {found['broken']}"


def _parse(parser, command: Command, intermixed: bool = False):
    try:
        return (parser.parse_intermixed_args if intermixed else parser.parse_args)(list(command.args))
    except SystemExit:
        pytest.fail(f"{command.where}: the arguments {' '.join(command.args)!r} do not parse (see stderr)")


def _console_scripts() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    lines = parser.get("options.entry_points", "console_scripts").splitlines()
    return {line.partition("=")[0].strip() for line in lines if "=" in line}


def test_every_any2point_command_in_the_docs_is_a_console_script():
    named = {c.args[0] for c in COMMANDS if c.kind == "script"}
    assert named <= _console_scripts(), named - _console_scripts()


def test_the_docs_show_commands_of_every_kind():
    """The extraction works: a change of fence or prompt style must not silence this file."""
    kinds = {c.kind for c in COMMANDS}
    assert {"train", "eval", "show", "predict", "bench", "script"} <= kinds, kinds
    readme = [c for c in COMMANDS if c.where.startswith("README.md:")]
    assert any(c.kind == "train" and c.args == () for c in readme), "the README's quickstart command"


def test_the_extraction_joins_continuations_and_splits_chains():
    text = "```bash\n$ any2point-train a=1 \\\n    b=2  # note\npip x && any2point-eval c=3\n```\n```text\nany2point-train z=9\n```\n"
    lines = list(_fenced_shell_lines(text))
    assert lines == [(2, "any2point-train a=1 b=2  # note", None), (4, "pip x && any2point-eval c=3", None)]
    shown = "```console\n$ any2point-train x=1\nany2point-train: error: x=1 is bad\n$ echo $?\n1\n```\n"
    assert list(_fenced_shell_lines(shown)) == [(2, "any2point-train x=1", "x=1 is bad"), (4, "echo $?", None)]
    assert [_classify(s) for s in _segments(lines[1][1])] == [None, ("eval", ["c=3"])]
    assert _expansions(["a=1,2", "b=range(2)", "c=x"], "here") == [
        ["a=1", "b=0", "c=x"], ["a=2", "b=0", "c=x"], ["a=1", "b=1", "c=x"]]


@pytest.mark.usefixtures("hydra_conf")
@pytest.mark.parametrize("bad", ["model.adapter.rnak=4", "peft=any2point,adapterr", "experiment=no_such",
                                 "train.epochs=0"])
def test_a_wrong_command_in_the_docs_would_fail(bad):
    command = Command("example.md:1", "train", ("-m", "source=minilm", bad))
    with pytest.raises(pytest.fail.Exception, match="example.md:1"):
        for run in _expansions(_split_hydra_args(command), command.where):
            _compose_checked("train", run, command.where)
