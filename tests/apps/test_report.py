"""any2point-report: every metrics.json below a folder becomes a row; runs that differ only in
seed/fold form groups with mean ± std and Student-t intervals (checked against t quantiles
written out here); --compare gives paired or Welch differences; bad rows are skipped with a
warning; a real two-source sweep gives a two-row report."""
from __future__ import annotations

import csv
import io
import json
import math
import os

import pytest
import yaml

from any2point.report import collect_runs, main
from any2point.report.compare import compare_groups
from any2point.report.metrics import METRICS
from any2point.report.runs import find_runs, group_runs
from any2point.zeroshot import ZERO_SHOT_KEYS
from ..tiny_run import TINY, run_module, write_experiment


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
    lines = lines[lines.index("## Runs") + 2:]
    assert lines[0].startswith("| run | source | data | peft | split (OA on) | OA | mAcc | trainable params | time |")
    assert lines[2] == "| 1_source=a/nested | a | shapes | linear | val | 50.00 | 49.00 | 116.6 k | 42s |"
    assert lines[3] == "| 0_source=b | b | shapes | any2point | test | 81.23 | 80.50 | 1.23 M | 1h 02m |"
    assert lines[4] == "| 2_ablation | c | shapes | any2point_no_cells | val | 70.00 | 69.00 | 500.0 k | 1m 00s |"
    assert "skipped" in captured.err and "broken" in captured.err
    assert (tmp_path / "report.md").read_text().split("## Groups")[0].count("\n| ") == 4
    csv_lines = (tmp_path / "report.csv").read_text().splitlines()
    assert csv_lines[0] == "run,source,data,peft,split,oa,macc,trainable_params,seconds" and len(csv_lines) == 4


def test_empty_or_missing_folder(tmp_path):
    assert main([str(tmp_path)]) == 1
    assert main([str(tmp_path / "missing")]) == 2


@pytest.mark.slow  # a two-job any2point-train sweep and a report process: about 29 s on 2 cores
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
    runs, groups = report.stdout.split("## Groups")
    rows = [line for line in runs.splitlines() if line.startswith("| ") and "tiny_" in line]
    assert len(rows) == 2 and "| tiny_1d | shapes | any2point | test |" in rows[0] and "| tiny_2d |" in rows[1]
    # one run per source: two groups told apart by their config group options, no interval
    assert "| model=tiny_1d, source=tiny_1d | 1 | 0 | test |" in groups and "no CI (n=1)" in groups
    assert (sweep / "report.md").is_file() and len((sweep / "report.csv").read_text().splitlines()) == 3


# Two-sided 95 % Student-t quantiles t(0.975, df), from printed tables.
T975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105}


def _run(root, name, peft, seed, oa, macc, fold=None, lr=1e-3, config=True, **extra):
    """A run folder as any2point-train writes it: metrics.json, .hydra/config.yaml, .hydra/hydra.yaml
    (without the config, metrics.json carries the seed, as a hand-made or older run might)."""
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"source": "minilm", "data": "modelnet40", "peft": peft,
                                                "peft_config": peft, "split": "val", "oa": oa, "macc": macc,
                                                "trainable_params": 1000, "seconds": 10.0, **extra,
                                                **({} if config else {"seed": seed})}))
    if config:
        (d / ".hydra").mkdir()
        cfg = {"seed": seed, "source": {"name": "minilm", "weights": None},
               "data": {"name": "modelnet40", "root": f"/machine/{name}", "val_fraction": 0.1},
               "peft": {"name": peft, "rank": 8 if peft == "any2point" else 0}, "train": {"lr": lr},
               "trainer": {"threads": 1 + seed % 2, "progress": False}}
        if fold is not None:
            cfg["data"]["fewshot"] = {"ways": 5, "shots": 10, "fold": fold, "queries": 20}
        (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
        (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
            {"hydra": {"runtime": {"choices": {"peft": peft, "source": "minilm", "hydra/launcher": "basic"}}}}))
    return d


def _ci(values):
    n = len(values)
    mean = sum(values) / n
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T975[n - 1] * s / math.sqrt(n)
    return mean, s, mean - half, mean + half


def test_groups_by_everything_but_seed_fold_paths_and_threads(tmp_path):
    oa = [87.0, 88.5, 86.25]
    for seed, v in enumerate(oa):
        _run(tmp_path, f"a/{seed}", "any2point", seed, v, v - 7)
    _run(tmp_path, "lr", "any2point", 0, 80.0, 70.0, lr=2e-3)  # another setting: its own group
    groups = group_runs(find_runs(tmp_path)[0])
    assert [(g.label, len(g.runs)) for g in groups] == [("train.lr=0.001", 3), ("train.lr=0.002", 1)]
    mean, s, low, high = _ci(oa)
    assert main([str(tmp_path)]) == 0
    out = (tmp_path / "report.md").read_text()
    assert f"| train.lr=0.001 | 3 | 0,1,2 | val | {mean:.2f} ± {s:.2f} | [{low:.2f}, {high:.2f}] |" in out
    # n = 1: the mean alone, no interval, and nothing is NaN
    assert "| train.lr=0.002 | 1 | 0 | val | 80.00 (n=1) | no CI (n=1) | 70.00 (n=1) | no CI (n=1) |" in out
    rows = (tmp_path / "report_groups.csv").read_text().splitlines()
    assert rows[0].startswith("group,n,seeds,split,oa_mean,oa_std,oa_ci_low,oa_ci_high,oa_df,macc_mean")
    first = next(csv.DictReader(io.StringIO("\n".join(rows))))
    assert float(first["oa_ci_low"]) == pytest.approx(low, abs=1e-9) and first["oa_df"] == "2.0"
    assert float(first["oa_ci_high"]) == pytest.approx(high, abs=1e-9) and first["seeds"] == "0,1,2"
    assert rows[2].endswith(",80.0,,,,,70.0,,,,") and "nan" not in "".join(rows).lower()


def test_compare_pairs_by_seed_and_fold(tmp_path, capsys):
    base = {(0, 0): 90.0, (0, 1): 85.0, (1, 0): 88.0, (1, 1): 80.0}
    other = {(0, 0): 86.0, (0, 1): 84.0, (1, 0): 83.5, (1, 1): 79.0}
    for (seed, fold), v in base.items():
        _run(tmp_path, f"any/{seed}_{fold}", "any2point", seed, v, v, fold=fold)
    for (seed, fold), v in reversed(list(other.items())):  # another order on disk: pairs are by key
        _run(tmp_path, f"tok/{seed}_{fold}", "tokenizer_only", seed, v, v, fold=fold)
    diffs = [other[k] - base[k] for k in base]
    mean, s, low, high = _ci(diffs)
    assert main([str(tmp_path), "--compare", "peft"]) == 0
    out = capsys.readouterr().out
    assert "## Difference to peft=any2point" in out
    assert (f"| peft=tokenizer_only | peft=any2point | paired, 4 pairs | {mean:+.2f} | [{low:+.2f}, {high:+.2f}] |"
            in out)
    # the baseline may be named; the difference changes sign
    assert main([str(tmp_path), "--compare", "peft", "--baseline", "tokenizer_only"]) == 0
    assert f"| peft=any2point | peft=tokenizer_only | paired, 4 pairs | {-mean:+.2f} | [{-high:+.2f}, {-low:+.2f}] |" \
        in capsys.readouterr().out
    csv_rows = (tmp_path / "report_compare.csv").read_text().splitlines()
    assert csv_rows[0].startswith("key,group,baseline,method,n,oa_diff") and ",paired,4," in csv_rows[1]
    assert main([str(tmp_path), "--compare", "peft", "--baseline", "lora"]) == 2
    assert "its values are: any2point, tokenizer_only" in capsys.readouterr().err


def test_compare_without_common_seeds_uses_welch(tmp_path):
    # equal sizes and variances: Welch's degrees of freedom are 2 (n - 1) = 4 exactly
    a, b = [80.0, 82.0, 84.0], [76.0, 78.0, 80.0]
    for i, v in enumerate(a):
        _run(tmp_path, f"a{i}", "any2point", i, v, v)
    for i, v in enumerate(b):
        _run(tmp_path, f"b{i}", "tokenizer_only", 10 + i, v, v)
    _run(tmp_path, "single", "linear", 0, 70.0, 70.0)
    groups = group_runs(find_runs(tmp_path)[0])
    value, comparisons, notes = compare_groups(groups, "peft")
    assert value == "any2point" and not notes
    by_group = {c.group.label: c for c in comparisons}
    welch = by_group["peft=tokenizer_only"].diffs["oa"]
    se = math.sqrt(4.0 / 3 + 4.0 / 3)
    assert welch.method == "welch" and welch.df == pytest.approx(4.0)
    assert welch.mean == pytest.approx(-4.0) and welch.high == pytest.approx(-4.0 + T975[4] * se)
    # against a single run there is no interval: shown as such
    single = by_group["peft=linear"].diffs["oa"]
    assert single.mean == pytest.approx(70.0 - 82.0) and single.low is None and single.high is None
    assert main([str(tmp_path), "--compare", "peft"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "| peft=linear | peft=any2point | Welch, n=1 vs 3 | -12.00 | no CI (a group has n=1) |" in md


def test_compare_keeps_other_settings_apart(tmp_path):
    # peft x shots: each shots setting is compared with its own baseline
    for shots, shift in ((10, 0.0), (20, 5.0)):
        for seed in (0, 1):
            for peft, gain in (("any2point", 2.0), ("tokenizer_only", 0.0)):
                d = _run(tmp_path, f"{peft}_{shots}_{seed}", peft, seed, 70 + shift + gain + seed, 60.0)
                cfg = yaml.safe_load((d / ".hydra" / "config.yaml").read_text())
                cfg["data"]["shots"] = shots
                (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    groups = group_runs(find_runs(tmp_path)[0])
    _, comparisons, notes = compare_groups(groups, "peft")
    assert not notes and len(comparisons) == 2
    for c in comparisons:
        assert c.group.settings["data.shots"] == c.baseline.settings["data.shots"]
        assert c.diffs["oa"].mean == pytest.approx(-2.0) and c.diffs["oa"].low == pytest.approx(-2.0)


@pytest.mark.parametrize("content, reason", [
    ('{"oa": NaN, "macc": 50.0}', "holds NaN, which is not a number"),
    ('{"oa": Infinity, "macc": 50.0}', "holds Infinity"),
    ('{"oa": "87.5", "macc": 50.0}', "oa is '87.5', expected a percentage"),
    ('{"oa": 87.5, "macc": null}', "macc is None, expected a percentage"),
    ('{"oa": 187.5, "macc": 50.0}', "oa is 187.5"),
    ('{"oa": 87.5, "macc": 50.0, "seconds": "soon"}', "seconds is 'soon'"),
    ('{"oa": 87.5, "mac', "not valid JSON, maybe truncated"),
    ("", "not valid JSON"),
    ("[87.5, 50.0]", "expected a JSON object, got list"),
    (b"\xff\xfe{", "unreadable"),
])
def test_a_bad_row_is_skipped_with_a_warning_naming_the_file(tmp_path, capsys, content, reason):
    _run(tmp_path, "good", "any2point", 0, 80.0, 70.0)
    bad = tmp_path / "bad_run"
    bad.mkdir()
    path = bad / "metrics.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main([str(tmp_path), "--compare", "peft"]) == 0
    captured = capsys.readouterr()
    assert f"warning: skipped {path}: " in captured.err and reason in captured.err
    assert "| good | minilm | modelnet40 | any2point | val | 80.00 | 70.00 |" in captured.out
    assert "bad_run" not in captured.out


def test_a_broken_config_or_oversized_file_is_a_bad_row(tmp_path, capsys):
    d = _run(tmp_path, "cfg", "any2point", 0, 80.0, 70.0)
    (d / ".hydra" / "config.yaml").write_text("seed: [0\n")
    big = _run(tmp_path, "big", "any2point", 0, 80.0, 70.0, config=False, note="x" * (5 * 2**20))
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / "metrics.json")  # reading it would wait forever
    _run(tmp_path, "good", "any2point", 1, 81.0, 71.0)
    assert main([str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert f"skipped {d / '.hydra' / 'config.yaml'}: not valid YAML" in err
    assert f"skipped {big / 'metrics.json'}: " in err and "more than the" in err
    assert f"skipped {tmp_path / 'fifo' / 'metrics.json'}: not a regular file" in err


def test_runs_without_config_group_by_metrics_fields(tmp_path):
    for i, v in enumerate((80.0, 82.0)):
        _run(tmp_path, f"r{i}", "any2point", i, v, v, config=False)
    _run(tmp_path, "other", "linear", 0, 60.0, 60.0, config=False)
    groups = group_runs(find_runs(tmp_path)[0])
    assert [(g.label, len(g.runs)) for g in groups] == [("peft=any2point", 2), ("peft=linear", 1)]
    assert sorted(r.pair for r in groups[0].runs) == [("0", None), ("1", None)]


def test_a_results_tree_without_hydra_yaml_still_compares_by_option(tmp_path, capsys):
    # results/<study>/<run>/ keeps metrics.json and .hydra/config.yaml only; two ablations of one
    # method share peft.name, and metrics.json's peft_config tells them apart
    for seed in (0, 1):
        for option, v in (("any2point", 80.0), ("any2point_random_source", 79.0)):
            d = _run(tmp_path / "results" / "study", f"{option}_{seed}", option, seed, v + seed, v)
            (d / ".hydra" / "hydra.yaml").unlink()
            cfg = yaml.safe_load((d / ".hydra" / "config.yaml").read_text())
            cfg["peft"] = {"name": "any2point", "random_source": option != "any2point"}
            (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main([str(tmp_path / "results" / "study"), "--compare", "peft"]) == 0
    out = capsys.readouterr().out
    assert "| peft=any2point_random_source | peft=any2point | paired, 2 pairs | -1.00 | [-1.00, -1.00] |" in out


def test_groups_that_differ_below_an_unchanged_option_get_distinct_labels(tmp_path, capsys):
    # peft=any2point_random_source is peft=any2point plus source.pretrained=false: the source
    # option (minilm) is the same for both, so labelling the differing key by it would give two
    # groups one label; the peft option (metrics.json's peft_config, no hydra.yaml) tells them apart
    for fold in (0, 1):
        for option, pretrained, v in (("any2point", True, 80.0), ("any2point_random_source", False, 83.0)):
            d = _run(tmp_path, f"{option}_{fold}", option, 0, v + fold, v + fold, fold=fold)
            (d / ".hydra" / "hydra.yaml").unlink()
            cfg = yaml.safe_load((d / ".hydra" / "config.yaml").read_text())
            cfg["peft"] = {"name": "any2point", "rank": 8}
            cfg["source"]["pretrained"] = pretrained
            (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    labels = [g.label for g in group_runs(find_runs(tmp_path)[0])]
    assert labels == ["peft=any2point, source.pretrained=true", "peft=any2point_random_source, source.pretrained=false"]
    assert main([str(tmp_path), "--compare", "peft"]) == 0
    assert ("| peft=any2point_random_source, source.pretrained=false | peft=any2point, source.pretrained=true "
            "| paired, 2 pairs | +3.00 |") in capsys.readouterr().out


def test_a_key_swept_under_one_option_labels_by_the_key(tmp_path):
    for rank in (4, 8):
        d = _run(tmp_path, f"r{rank}", "any2point", 0, 80.0 + rank, 80.0)
        cfg = yaml.safe_load((d / ".hydra" / "config.yaml").read_text())
        cfg["peft"]["rank"] = rank
        (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert [g.label for g in group_runs(find_runs(tmp_path)[0])] == ["peft.rank=4", "peft.rank=8"]


def test_text_from_run_files_cannot_split_cells_or_start_headings(tmp_path, capsys):
    import re

    _write(tmp_path / "a|b\n# folder", source="x|y\n# injected heading", data="shapes\r\n| fake | row |",
           peft="any2point", split="test", oa=50.0, macc=40.0, trainable_params=1000, seconds=1.0)
    _write(tmp_path / "plain", source="back\\slash", data="shapes", peft="any2point", split="test", oa=60.0,
           macc=50.0, trainable_params=1000, seconds=1.0)
    assert main([str(tmp_path), "--compare", "source"]) == 0
    markdown = (tmp_path / "report.md").read_text()
    assert capsys.readouterr().out in markdown
    lines = markdown.splitlines()
    assert [line.split(" (")[0] for line in lines if line.startswith("#")] == [
        f"# Runs below {tmp_path}", "## Runs", "## Groups", "## Difference to source=back\\\\slash"]
    cells = re.compile(r"(?<!\\)\|")  # a pipe not escaped by a backslash separates cells
    for table in markdown.split("## ")[1:]:
        rows = [line for line in table.splitlines() if line.startswith("|")]
        assert rows and len({len(cells.findall(row)) for row in rows}) == 1, rows  # one column count per table
    assert "| a\\|b # folder | x\\|y # injected heading | shapes \\| fake \\| row \\| | any2point |" in markdown
    assert "| plain | back\\\\slash | shapes |" in markdown


# Classification runs must give the report they gave before the zero-shot keys were tabulated:
# tests/apps/report_golden/ holds the files written by the report code of that time (commit 697d1a2)
# on the study below and on the committed results/fewshot_5w10s, the report's folder written
# as {ROOT}.
GOLDEN = os.path.join(os.path.dirname(__file__), "report_golden")
REPORT_FILES = ("report.md", "report.csv", "report_groups.csv", "report_compare.csv")


def _classification_study(root):
    """Paired seeds x folds, an unpaired (Welch) arm and a single run."""
    for seed in (0, 1):
        for fold in (0, 1):
            _run(root, f"any/{seed}_{fold}", "any2point", seed, 80.0 + seed + 0.25 * fold, 70.5 - fold, fold=fold)
            _run(root, f"tok/{seed}_{fold}", "tokenizer_only", seed, 76.0 - seed + 0.5 * fold, 66.0 + seed, fold=fold)
    for i, v in enumerate((71.0, 74.5, 73.0)):
        _run(root, f"lin/{i}", "linear", 10 + i, v, v - 3.0, fold=0)
    _run(root, "lora", "lora", 0, 79.125, 69.875, fold=0)


@pytest.mark.parametrize("study", ["study", "fewshot_5w10s"])
def test_a_classification_study_gives_the_same_report_byte_for_byte(tmp_path, capsys, study):
    import shutil

    root = tmp_path / study
    if study == "study":
        _classification_study(root)
    else:
        shutil.copytree(os.path.join(os.path.dirname(GOLDEN), os.pardir, os.pardir, "results", "fewshot_5w10s"), root)
    assert main([str(root), "--compare", "peft"]) == 0
    for name in REPORT_FILES:
        with open(os.path.join(GOLDEN, study, name), encoding="utf-8", newline="") as f:
            expected = f.read().replace("{ROOT}", str(root))
        assert (root / name).read_bytes() == expected.encode("utf-8"), name


def _zero_shot_run(root, name, peft, seed, zsl, seen, unseen, oa=70.0, macc=65.0):
    hm = 2 * seen * unseen / (seen + unseen)
    _run(root, name, peft, seed, oa, macc, zsl_top1=zsl, zsl_macc=zsl - 1.0, gzsl_seen=seen, gzsl_unseen=unseen,
         gzsl_hm=hm)
    return hm


ZERO_SHOT_HEADS = ["ZSL top-1", "GZSL seen", "GZSL unseen", "GZSL HM"]


def test_a_zero_shot_study_tabulates_and_compares_the_zero_shot_keys(tmp_path, capsys):
    zs = {"any2point": {"zsl_top1": [52.0, 55.5, 50.25], "gzsl_seen": [61.0, 63.5, 60.0],
                        "gzsl_unseen": [30.0, 34.0, 31.5]},
          "tokenizer_only": {"zsl_top1": [40.0, 42.5, 41.0], "gzsl_seen": [64.0, 62.0, 63.0],
                             "gzsl_unseen": [20.0, 24.5, 21.0]}}
    for peft, values in zs.items():
        values["gzsl_hm"] = [_zero_shot_run(tmp_path, f"{peft}/{seed}", peft, seed, values["zsl_top1"][seed],
                                            values["gzsl_seen"][seed], values["gzsl_unseen"][seed],
                                            oa=80.0 + seed, macc=75.0 + seed) for seed in range(3)]
    # a classification run in the same folder: its zero-shot cells are empty, its OA counts as before
    _run(tmp_path, "linear/0", "linear", 0, 60.0, 55.0)
    keys = ["zsl_top1", "gzsl_seen", "gzsl_unseen", "gzsl_hm"]
    assert list(ZERO_SHOT_KEYS) == keys and set(keys) <= set(METRICS)  # the keys zero-shot runs write
    assert main([str(tmp_path), "--compare", "peft", "--baseline", "tokenizer_only"]) == 0
    out = capsys.readouterr().out
    md = (tmp_path / "report.md").read_text()
    assert out in md

    # runs table: the zero-shot columns after mAcc, in percent with two decimals
    assert ("| run | source | data | peft | split (OA on) | OA | mAcc | ZSL top-1 | GZSL seen | GZSL unseen | GZSL HM "
            "| trainable params | time |") in md
    hm = zs["any2point"]["gzsl_hm"][1]
    assert (f"| any2point/1 | minilm | modelnet40 | any2point | val | 81.00 | 76.00 | 55.50 | 63.50 | 34.00 "
            f"| {hm:.2f} | 1.0 k | 10s |") in md
    assert "| linear/0 | minilm | modelnet40 | linear | val | 60.00 | 55.00 |  |  |  |  | 1.0 k | 10s |" in md
    assert (tmp_path / "report.csv").read_text().splitlines()[0] == (
        "run,source,data,peft,split,oa,macc,zsl_top1,gzsl_seen,gzsl_unseen,gzsl_hm,trainable_params,seconds")

    # groups: n, mean ± std and the Student-t interval of each key, computed by hand
    heads = [f"{name} {part}" for name in ["OA", "mAcc", *ZERO_SHOT_HEADS] for part in ("mean ± std", "95 % CI")]
    assert "| group | n | seeds (/fold) | split | " + " | ".join(heads) + " |" in md
    for peft, values in zs.items():
        cells = []
        for key in ["oa", "macc", *keys]:
            vals = values[key] if key in values else [(80.0 if key == "oa" else 75.0) + s for s in range(3)]
            mean, s, low, high = _ci(vals)
            cells += [f"{mean:.2f} ± {s:.2f}", f"[{low:.2f}, {high:.2f}]"]
        assert f"| peft={peft} | 3 | 0,1,2 | val | " + " | ".join(cells) + " |" in md
    assert ("| peft=linear | 1 | 0 | val | 60.00 (n=1) | no CI (n=1) | 55.00 (n=1) | no CI (n=1) "
            "|  |  |  |  |  |  |  |  |") in md
    groups = list(csv.DictReader(io.StringIO((tmp_path / "report_groups.csv").read_text())))
    first = groups[0]
    assert first["group"] == "peft=any2point"
    for key in keys:
        mean, s, low, high = _ci(zs["any2point"][key])
        assert float(first[f"{key}_mean"]) == pytest.approx(mean, abs=1e-9)
        assert float(first[f"{key}_std"]) == pytest.approx(s, abs=1e-9)
        assert float(first[f"{key}_ci_low"]) == pytest.approx(low, abs=1e-9)
        assert float(first[f"{key}_ci_high"]) == pytest.approx(high, abs=1e-9) and first[f"{key}_df"] == "2.0"
    assert all(groups[1][f"{key}_{field}"] == "" for key in keys
               for field in ("mean", "std", "ci_low", "ci_high", "df"))

    # --compare: paired by seed for every key; against a group without the keys, empty cells
    cells = []
    for key in keys:
        mean, s, low, high = _ci([a - b for a, b in zip(zs["any2point"][key], zs["tokenizer_only"][key])])
        cells += [f"{mean:+.2f}", f"[{low:+.2f}, {high:+.2f}]"]
        row = next(r for r in csv.DictReader(io.StringIO((tmp_path / "report_compare.csv").read_text()))
                   if r["group"] == "peft=any2point")
        assert float(row[f"{key}_diff"]) == pytest.approx(mean, abs=1e-9)
        assert float(row[f"{key}_ci_low"]) == pytest.approx(low, abs=1e-9)
        assert float(row[f"{key}_ci_high"]) == pytest.approx(high, abs=1e-9) and row["method"] == "paired"
    assert " | ΔZSL top-1 | ΔZSL top-1 95 % CI | ΔGZSL seen | " in md
    assert ("| peft=any2point | peft=tokenizer_only | paired, 3 pairs | +0.00 | [+0.00, +0.00] | +0.00 "
            "| [+0.00, +0.00] | " + " | ".join(cells) + " |") in md
    assert "| peft=linear | peft=tokenizer_only | Welch, n=1 vs 3 | " in md and md.rstrip().endswith(
        "no CI (a group has n=1) |  |  |  |  |  |  |  |  |")


@pytest.mark.parametrize("field, value", [("gzsl_hm", 150.0), ("zsl_top1", "52"), ("gzsl_seen", True)])
def test_a_zero_shot_key_that_is_not_a_percentage_is_a_bad_row(tmp_path, capsys, field, value):
    _zero_shot_run(tmp_path, "good", "any2point", 0, 52.0, 61.0, 30.0)
    bad = _run(tmp_path, "bad", "any2point", 1, 80.0, 70.0,
               **{"zsl_top1": 50.0, "gzsl_seen": 60.0, "gzsl_unseen": 30.0, "gzsl_hm": 40.0, field: value})
    assert main([str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert f"skipped {bad / 'metrics.json'}: {field} is {value!r}, expected a percentage" in err


# -- runs recorded by older versions group with today's (any2point.recorded) ---------------------

def test_recorded_settings_read_as_today():
    from any2point.recorded import settings_as_today

    old = {"peft.name": "any2point", "model.adapter.guided": True, "model.adapter.rank": 8}
    assert settings_as_today(old) == {"peft.name": "any2point", "peft.source_norms": False,
                                      "model.adapter.rank": 8, "model.adapter.seam": "after_norm"}
    # the bottleneck baseline under both of its old spellings
    for recorded in ({"peft.name": "any2point", "model.adapter.guided": False}, {"peft.name": "adapter"}):
        assert settings_as_today(recorded)["peft.name"] == "bottleneck"
    # what a run recorded is kept; a method that no longer exists keeps its name
    now = {"peft.name": "any2point_shuffled_source", "peft.seed": 3, "model.adapter.seam": "before_norm"}
    assert settings_as_today(now) == {**now, "peft.source_norms": False}
    assert settings_as_today({"peft.name": "gone"}) == {"peft.name": "gone"}
    # a control with bottlenecks only has no method today: it keeps the setting that sets it apart
    control = {"peft.name": "any2point_shuffled_source", "model.adapter.guided": False}
    assert settings_as_today(control)["model.adapter.guided"] is False


def test_a_study_groups_runs_from_before_and_after_a_setting_was_added_or_removed(tmp_path):
    from any2point.report.runs import find_runs, group_runs

    def write(name, fold, adapter, peft):
        d = _run(tmp_path, name, peft["name"], 0, 80.0 + fold, 80.0 + fold, fold=fold)
        cfg = yaml.safe_load((d / ".hydra" / "config.yaml").read_text())
        cfg["peft"], cfg["model"] = peft, {"adapter": adapter}
        (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))

    for fold in (0, 1):  # the same model, recorded before and after issue 27 and the source_norms setting
        write(f"old/{fold}", fold, {"guided": True, "seam": "before_norm"}, {"name": "any2point"})
        write(f"new/{fold}", fold, {"seam": "before_norm"}, {"name": "any2point", "source_norms": False})
        write(f"norms/{fold}", fold, {"seam": "before_norm"}, {"name": "any2point", "source_norms": True})
    runs, problems = find_runs(tmp_path)
    assert not problems
    groups = group_runs(runs)
    assert sorted(len(g.runs) for g in groups) == [2, 4]
    assert sorted(g.label for g in groups) == ["peft.source_norms=false", "peft.source_norms=true"]


def test_a_setting_of_a_method_is_shown_when_runs_of_one_method_differ_in_it(tmp_path):
    from any2point.report.runs import find_runs, group_runs

    for peft in ("any2point", "any2point_shuffled_source"):
        for norms in (False, True):
            d = _run(tmp_path, f"{peft}_{norms}", peft, 0, 80.0, 80.0, fold=0)
            cfg = yaml.safe_load((d / ".hydra" / "config.yaml").read_text())
            cfg["peft"] = {"name": peft, "source_norms": norms}
            (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    labels = sorted(g.label for g in group_runs(find_runs(tmp_path)[0]))
    assert labels == [f"peft={p}, peft.source_norms={n}" for p in ("any2point", "any2point_shuffled_source")
                      for n in ("false", "true")]
