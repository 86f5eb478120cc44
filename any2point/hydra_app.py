"""Running the training app: Hydra's command line, plus the model preset a ``source.name=...``
override implies, chosen before Hydra composes (``sys.argv`` is read, never edited).

The training config selects its model preset from the *source option* (``model:
${a2p_preset:${source}}`` in conf/train.yaml), which an override of the *value*
``source.name`` does not change: without this step ``any2point-train source.name=timm:...``
would run a 2D ViT on the default option's preset (MiniLM's 1D settings). So a command that sets
``source.name`` and chooses no ``model=`` gets ``model=<preset>`` by the same rule as
:func:`any2point.create_model` (:func:`any2point.backbones.registry.source_preset`).
"""
from __future__ import annotations

from typing import Callable

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import OverrideParseException

from .backbones.registry import source_preset
from .errors import ConfigError
from .peft import refuse_removed_setting, refuse_renamed_method

__all__ = ["source_preset_overrides", "check_source_preset", "refuse_old_spellings", "run_hydra_app"]

_SOURCE_NAME = "source.name"
_MODEL_GROUP = "model"


def _values(override: Override) -> list[str]:
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_iterator()]
    return [str(override.value())]


def source_preset_overrides(overrides: list[str]) -> list[str]:
    """``overrides`` plus ``model=<preset>`` when they set ``source.name`` and choose no
    ``model``: the preset :func:`~any2point.backbones.registry.source_preset` gives the name.
    A sweep over names of different presets is refused (one command cannot pair each name with
    its own preset): choose ``model=`` or sweep ``source=`` options instead."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    if _chooses_model(parsed):
        return list(overrides)
    names = [o for o in parsed if o.key_or_group == _SOURCE_NAME and not o.is_delete()]
    if not names:
        return list(overrides)
    values = _values(names[-1])
    presets = {value: source_preset(value) for value in values}
    if len(set(presets.values())) > 1:
        pairs = ", ".join(f"{name} -> model={preset}" for name, preset in presets.items())
        raise ConfigError(f"{names[-1].input_line}: these sources run on different model presets ({pairs}); "
                          f"sweep them in separate commands, sweep source=<option> instead, or choose model=...")
    return [*overrides, f"{_MODEL_GROUP}={next(iter(presets.values()))}"]


def refuse_old_spellings(overrides: list[str]) -> list[str]:
    """``overrides`` as they are, once none of them spells a removed setting or a renamed PEFT
    method (``model.adapter.guided=...``, ``peft=adapter``): those stop with a one-line
    :class:`ConfigError` naming what to use (any2point.peft.registry). Overrides that do not
    parse are left to Hydra, which reports them."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException:
        return list(overrides)
    for override in parsed:
        refuse_removed_setting(override.key_or_group)
        if override.key_or_group == "peft" and override.package is None and not override.is_delete():
            for value in _values(override):
                refuse_renamed_method(value)
    return list(overrides)


def _chooses_model(parsed: list[Override]) -> bool:
    return any(o.key_or_group == _MODEL_GROUP and o.package is None for o in parsed)


def check_source_preset(source_name: str, composed: str | None, task_overrides: list[str]) -> None:
    """Refuse a composed run whose model preset is not the one its ``source.name`` runs on,
    unless the command chose ``model=`` itself: a config (an experiment) that sets
    ``source.name`` without its ``source`` option would otherwise run another source's preset."""
    expected = source_preset(source_name)
    if composed == expected or _chooses_model(OverridesParser.create().parse_overrides(list(task_overrides))):
        return
    raise ConfigError(f"source.name={source_name} runs on model preset {expected!r} (as any2point.create_model "
                      f"builds it), but the config composed model={composed}: choose the source with "
                      f"source=<option>, or the preset with model=...")


def run_hydra_app(task: Callable, config_module: str, config_name: str,
                  prepare: Callable[[list[str]], list[str]] = source_preset_overrides) -> None:
    """What ``@hydra.main`` does, with ``prepare`` applied to the command line's overrides
    before composition. Hydra reads ``sys.argv`` in its decorator and has no public way to pass
    overrides to a full app (run dirs, ``-m`` sweeps, launchers), so this calls the runner the
    decorator calls (hydra-core 1.3). ``--experimental-rerun`` is refused: it unpickles a file."""
    from hydra import version
    from hydra._internal.utils import _run_hydra, get_args_parser

    version.setbase("1.3")
    parser = get_args_parser()
    args = parser.parse_args()
    if args.experimental_rerun is not None:
        raise ConfigError("--experimental-rerun is not supported: it unpickles a file (rerun the command "
                          "with the overrides in the run's .hydra/overrides.yaml)")
    args.overrides = prepare(refuse_old_spellings(list(args.overrides)))
    _run_hydra(args=args, args_parser=parser, task_function=task, config_path=f"pkg://{config_module}",
               config_name=config_name)
