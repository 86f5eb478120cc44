"""Settings recorded by older versions, read as today's: a sweep's run configs (any2point-report)
and a training state's fingerprint (resume) use the same rules, on flat dotted keys.

- ``model.adapter.guided`` was removed (issue 27, one name per model): ``false`` with
  ``peft=any2point`` was the bottleneck baseline, and ``peft.name=adapter`` is ``bottleneck`` now.
- ``model.adapter.seam`` did not exist before the post-LN seam: those runs placed the guided
  aggregation after a post-LN block's output LayerNorm, ``after_norm``.
- A method's settings added later (``peft.source_norms``) were off: a recorded method's missing
  settings take its config's defaults.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

__all__ = ["settings_as_today"]


def settings_as_today(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """``recorded`` (flat dotted keys, plain values) as today's settings of the same run; a new
    dict. A method that no longer exists keeps its recorded name, and a run no method of today's
    is keeps ``model.adapter.guided``: whoever reads them refuses or labels them by it."""
    from .peft import RENAMED_METHODS, get_peft_method
    from .peft.adapters import Any2PointMethod

    settings = dict(recorded)
    if any(key.startswith("model.adapter.") for key in settings):
        settings.setdefault("model.adapter.seam", "after_norm")
    name = settings.get("peft.name")
    if not isinstance(name, str):
        return settings
    name = RENAMED_METHODS.get(name, name)
    try:
        method = get_peft_method(name)
    except ValueError:  # an unknown method: refused by name where it is built
        return settings
    if settings.get("model.adapter.guided", True) is False and name != "bottleneck":
        # guided=false turned a method built on Any2Point's into bottlenecks alone: for
        # any2point that is the bottleneck baseline; a control built on it has no such variant
        if name == "any2point":
            name, method = "bottleneck", get_peft_method("bottleneck")
        elif issubclass(method.method, Any2PointMethod):
            return settings
    settings["peft.name"] = name
    settings.pop("model.adapter.guided", None)
    for field in dataclasses.fields(method.config):
        if field.name != "name" and field.default is not dataclasses.MISSING:
            settings.setdefault(f"peft.{field.name}", field.default)
    return settings
