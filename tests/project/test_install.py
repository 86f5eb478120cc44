"""Packaging: a wheel installs exactly one top-level module, ``any2point``, with backbones,
projections, adapters and conf inside it, and no generic top-level ``adapters`` etc."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INNER = ("backbones", "projections", "adapters", "conf")
GENERIC = ("adapters", "backbones", "projections", "conf")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a clean copy of the checkout (the build writes into its source tree)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    # not the virtual environment of the README's set-up commands (.venv, inside the checkout)
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info",
                                                              "__pycache__", ".pytest_cache", "outputs", "multirun"))
    out = root / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    wheels = list(out.glob("any2point-*.whl"))
    assert len(wheels) == 1, list(out.iterdir())
    return wheels[0]


@pytest.mark.slow  # builds the wheel (pip wheel of a copy of the checkout)
def test_wheel_has_one_top_level_module(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"any2point"}
    for sub in INNER:
        assert f"any2point/{sub}/__init__.py" in names, sub
    for generic in GENERIC:
        assert not any(n.startswith(f"{generic}/") or n == f"{generic}.py" for n in names), generic


@pytest.mark.slow  # builds the wheel (pip wheel of a copy of the checkout)
def test_wheel_ships_configs_and_console_script(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    yamls = sorted(p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml"))
    for rel in yamls:
        assert f"any2point/conf/{rel}" in names, rel
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "any2point-sources = any2point.cli_sources:main" in text
    top_level = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    if top_level:
        assert zipfile.ZipFile(wheel).read(top_level[0]).decode().split() == ["any2point"]


@pytest.mark.slow  # builds the wheel (pip wheel of a copy of the checkout)
def test_wheel_ships_no_native_sources(wheel):
    """Nothing is compiled at install or first use: the wheel carries no C/C++ sources or libraries."""
    names = zipfile.ZipFile(wheel).namelist()
    compiled = [n for n in names if n.endswith((".c", ".h", ".cpp", ".so", ".dll", ".dylib"))]
    assert compiled == [] and not any(n.startswith("any2point/native/") for n in names)


_PROBE = """
import importlib.util, json
import any2point, any2point.adapters, any2point.backbones, any2point.projections, any2point.conf
print(json.dumps({"generic": {n: importlib.util.find_spec(n) is not None for n in %r},
                  "file": any2point.__file__, "adapters": any2point.adapters.__name__}))
""" % (GENERIC,)


def _probe(cwd: Path, env_path: str | None = None) -> dict:
    import os

    env = dict(os.environ)
    if env_path is not None:
        env["PYTHONPATH"] = env_path
    proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_installed_package_has_no_generic_top_level_modules(tmp_path):
    """The environment's install (editable here): only any2point.* resolves, from anywhere."""
    result = _probe(tmp_path)
    assert result["generic"] == {n: False for n in GENERIC}
    assert result["adapters"] == "any2point.adapters"


@pytest.mark.slow  # builds the wheel (pip wheel of a copy of the checkout)
def test_installed_wheel_imports(wheel, tmp_path):
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q",
                           "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    installed = sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info"))
    assert installed == ["any2point", "bin"]  # bin/ holds the any2point-sources console script
    assert (target / "bin" / "any2point-sources").exists()
    result = _probe(tmp_path, env_path=str(target))
    assert Path(result["file"]).is_relative_to(target)
    assert result["generic"] == {n: False for n in GENERIC}
