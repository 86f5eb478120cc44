"""A PEFT method from outside the package: one Python file (and a YAML variant) in a package
that registers through the ``any2point.peft_methods`` entry point trains through
``any2point-train peft=<its name>``, and its checkpoint records its own config. (Misspelt
settings fail by name for every method alike: tests/peft/test_peft.py.)"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from torch import nn

import any2point
from ..tiny_run import TINY, env, metrics

# BitFit (Ben Zaken et al. 2022): the biases of the source's linear layers train, optionally
# its LayerNorms too, besides the composition's own parts; no adapters.
PLUGIN = '''
"""BitFit for any2point: a third-party PEFT method."""
from dataclasses import dataclass

from torch import nn

from any2point.peft import PeftConfig, PeftMethod, parameters_outside_source, register_peft_method


@dataclass
class BitFitConfig(PeftConfig):
    name: str = "bitfit"
    norms: bool = False  # also train the source's LayerNorms


@register_peft_method("bitfit", BitFitConfig)
class BitFit(PeftMethod):
    """BitFit: the source's linear biases train."""

    def trainable_parameters(self, model):
        yield from parameters_outside_source(model)
        for module in model.source.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                yield module.bias
            if self.config.norms and isinstance(module, nn.LayerNorm):
                yield from module.parameters()
'''

# A variant of the method as a YAML, found through hydra.searchpath.
VARIANT = '''
defaults:
  - bitfit
  - _self_
norms: true
'''


def _install_plugin(root: Path) -> None:
    (root / "a2p_bitfit").mkdir(parents=True)
    (root / "a2p_bitfit" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    dist = root / "a2p_bitfit-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: a2p-bitfit\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[any2point.peft_methods]\nbitfit = a2p_bitfit\n")
    (root / "conf" / "peft").mkdir(parents=True)
    (root / "conf" / "peft" / "bitfit_norms.yaml").write_text(VARIANT)


def _train(args: list[str], cwd: Path, plugin_root: Path) -> subprocess.CompletedProcess:
    script = shutil.which("any2point-train", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "any2point.train"]
    environment = env()
    environment["PYTHONPATH"] = str(plugin_root)
    return subprocess.run(command + args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


def _expected_trainable(norms: bool) -> int:
    """Counted here without the plug-in: the composition's own parts plus the source's biases."""
    model = any2point.create_model("tiny_1d", num_classes=4, peft="full")
    own = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("source."))
    biases = sum(m.bias.numel() for m in model.source.modules() if isinstance(m, nn.Linear) and m.bias is not None)
    ln = sum(p.numel() for m in model.source.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters())
    return own + biases + (ln if norms else 0)


def test_a_method_registered_outside_the_package_trains_through_any2point_train(tmp_path):
    plugin_root = tmp_path / "site"
    _install_plugin(plugin_root)
    sweep = tmp_path / "sweep"
    # the method itself (ConfigStore option), then its YAML variant found through hydra.searchpath
    done = _train(["-m", *TINY, "peft=bitfit,bitfit_norms", f"hydra.searchpath=[file://{plugin_root / 'conf'}]",
                          f"hydra.sweep.dir={sweep}"], tmp_path, plugin_root)
    assert done.returncode == 0, done.stderr[-3000:]

    for job, option, norms in ((0, "bitfit", False), (1, "bitfit_norms", True)):
        (run,) = sweep.glob(f"{job}_*")
        m = metrics(run)
        assert (m["peft"], m["peft_config"]) == ("bitfit", option)
        assert m["trainable_params"] == _expected_trainable(norms), option
        assert json.loads((run / "checkpoint.json").read_text())["peft"] == {"name": "bitfit", "norms": norms}
