"""any2point-report: every metrics.json below a folder becomes a row; a real two-source sweep
gives a two-row report."""
from __future__ import annotations

import json

from any2point.report import collect_runs, main
from tiny_run import TINY, run_module, write_experiment


def _write(path, **metrics):
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(metrics))


def test_rows_table_and_files(tmp_path, capsys):
    _write(tmp_path / "0_source=b", source="b", data="shapes", peft="any2point", split="test", oa=81.234, macc=80.5,
           trainable_params=1_234_567, seconds=3725.0)
    _write(tmp_path / "1_source=a" / "nested", source="a", data="shapes", peft="linear", split="val", oa=50.0,
           macc=49.0, trainable_params=116_577, seconds=42.4)
    # an ablation: the same method (peft name) under another config option, which the row shows
    _write(tmp_path / "2_ablation", source="c", data="shapes", peft="any2point", peft_config="any2point_no_cells",
           split="val", oa=70.0, macc=69.0, trainable_params=500_000, seconds=60.0)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("{not json")

    rows, problems = collect_runs(tmp_path)
    assert [r["source"] for r in rows] == ["a", "b", "c"] and len(problems) == 1 and "broken" in problems[0]
    assert main([str(tmp_path)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0].startswith("| run | source | data | peft | split (OA on) | OA | mAcc | trainable params | time |")
    assert lines[2] == "| 1_source=a/nested | a | shapes | linear | val | 50.00 | 49.00 | 116.6 k | 42s |"
    assert lines[3] == "| 0_source=b | b | shapes | any2point | test | 81.23 | 80.50 | 1.23 M | 1h 02m |"
    assert lines[4] == "| 2_ablation | c | shapes | any2point_no_cells | val | 70.00 | 69.00 | 500.0 k | 1m 00s |"
    assert "skipped" in captured.err and "broken" in captured.err
    assert (tmp_path / "report.md").read_text().count("\n| ") == 4
    csv_lines = (tmp_path / "report.csv").read_text().splitlines()
    assert csv_lines[0] == "run,source,data,peft,split,oa,macc,trainable_params,seconds" and len(csv_lines) == 4


def test_empty_or_missing_folder(tmp_path):
    assert main([str(tmp_path)]) == 1
    assert main([str(tmp_path / "missing")]) == 2


def test_a_two_source_sweep_gives_a_two_row_report(tmp_path):
    sweep = tmp_path / "sweep"
    # the tiny settings as an experiment of the user's own, found through hydra.searchpath
    write_experiment(tmp_path / "my_conf", "tiny", [o for o in TINY if not o.startswith("source=")])
    args = ["-m", f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "experiment=tiny", "source=tiny_1d,tiny_2d",
            f"hydra.sweep.dir={sweep}"]
    done = run_module("any2point.train", args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0_experiment=tiny,source=tiny_1d", "1_experiment=tiny,source=tiny_2d"]  # named by overrides

    report = run_module("any2point.report", [str(sweep)], cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    rows = [line for line in report.stdout.splitlines() if line.startswith("| ") and "tiny_" in line]
    assert len(rows) == 2 and "| tiny_1d | shapes | any2point | test |" in rows[0] and "| tiny_2d |" in rows[1]
    assert (sweep / "report.md").is_file() and len((sweep / "report.csv").read_text().splitlines()) == 3
