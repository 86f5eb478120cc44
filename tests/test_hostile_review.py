"""Hostile-review findings: hostile files (YAML aliases, deep nesting, wide point arrays, poisoned
cache entries, PLY counts that dodge the size check, glTF buffers naming FIFOs, incomplete
optimizer states) are refused or skipped with a message naming the file, never a hang or a crash."""
from __future__ import annotations

import json
import time

import pytest

from any2point.report import main as report_main
from any2point.report_runs import MAX_SETTINGS, find_runs


def _metrics_run(root, name, config_text=None, metrics_text=None):
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(metrics_text or json.dumps(
        {"oa": 80.0, "macc": 70.0, "source": "minilm", "data": "modelnet40", "peft_config": "any2point",
         "split": "val"}))
    if config_text is not None:
        (d / ".hydra").mkdir()
        (d / ".hydra" / "config.yaml").write_text(config_text)
    return d


# -- 1. any2point-report -------------------------------------------------------------------------------------------

_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [*{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}]\n"
    for a, b in zip("abcdefgh", "bcdefghi"))


def test_report_refuses_yaml_aliases_quickly(tmp_path, capsys):
    bad = _metrics_run(tmp_path, "laughs", config_text=_LAUGHS)
    _metrics_run(tmp_path, "good", config_text="seed: 0\npeft:\n  rank: 4\n")
    started = time.monotonic()
    assert report_main([str(tmp_path)]) == 0
    assert time.monotonic() - started < 10  # the expanded file has 10**9 leaves
    err = capsys.readouterr().err
    assert f"skipped {bad / '.hydra' / 'config.yaml'}: not valid YAML" in err and "aliases" in err


def test_report_caps_the_number_of_settings(tmp_path):
    keys = "".join(f"k{i}: {i}\n" for i in range(MAX_SETTINGS + 1))
    bad = _metrics_run(tmp_path, "wide", config_text=keys)
    runs, problems = find_runs(tmp_path)
    assert runs == [] and len(problems) == 1
    assert str(bad / ".hydra" / "config.yaml") in problems[0] and f"more than {MAX_SETTINGS} settings" in problems[0]


@pytest.mark.parametrize("where", ["config", "metrics", "metrics_field"])
def test_deeply_nested_files_are_bad_rows(tmp_path, capsys, where):
    depth = 100_000
    if where == "config":
        bad = _metrics_run(tmp_path, "deep", config_text="[" * depth + "]" * depth + "\n")
    elif where == "metrics":
        bad = _metrics_run(tmp_path, "deep", metrics_text='{"oa": 80, "macc": 70, "x": ' + "[" * depth
                           + "]" * depth + "}")
    else:  # valid JSON that json.loads accepts, nested too deeply for json.dumps of a settings field
        depth = 5_000
        bad = _metrics_run(tmp_path, "deep", metrics_text='{"oa": 80, "macc": 70, "source": ' + "[" * depth
                           + "]" * depth + "}")
    _metrics_run(tmp_path, "good")
    assert report_main([str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert f"warning: skipped {bad}" in err and "nested too deeply" in err
