"""The ``data`` benchmark runs in quick mode and counts FPS work cold and warm."""
from __future__ import annotations

import json

from any2point.bench.__main__ import main as bench_main


def test_data_bench_quick(capsys):
    assert bench_main(["data", "--quick", "--json", "--workers", "0", "--glibc-malloc-defaults"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["benchmark"] == "data" and result["quick"] is True
    (scenario,) = result["scenarios"]
    cold, warm = scenario["cold"], scenario["warm"]
    assert cold["fps_clouds"] == 32 and warm["fps_clouds"] == 0  # the warm run reads the cache
    assert cold["samples"] == warm["samples"] == 32 and warm["epoch_samples_per_s"] > 0
    assert result["shapes_generation"]["clouds_per_s"] > 0
