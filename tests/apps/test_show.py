"""any2point-show: pictures of the projection, the cells and the view weights.

The pictures must show what the model computes: the cell colours are checked against the
cell assignment the model's forward pass uses, on the data behind the plot (the scatter's
offsets and colours), not on pixels."""
from __future__ import annotations

import json
import re

import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib.collections import PathCollection

from any2point.show import (ShowOptions, cell_colours, compose_train_config, compute_scene, model_from_config,
                            model_from_overrides, pe_colours, plot_views, read_cloud, view_weights)
from any2point.show.cli import main
from ..data_files import box_mesh, random_clouds, write_off
from ..tiny_run import TINY, compose_config

SOURCES = ["tiny_1d", "tiny_2d"]
PICTURES = ["cloud", "views", "pe"]


@pytest.fixture(scope="module")
def clouds(tmp_path_factory):
    """Two different inputs: a box mesh (OFF) and a random cloud (NPY)."""
    folder = tmp_path_factory.mktemp("clouds")
    box = write_off(folder / "box.off", *box_mesh((1.0, 2.0, 3.0)))
    blob = folder / "blob.npy"
    np.save(blob, random_clouds(1, 400, seed=3)[0])
    return box, blob


def _pixels(path) -> np.ndarray:
    return matplotlib.image.imread(str(path))


def _drawn(path) -> bool:
    """A PNG with something on it (not one flat colour)."""
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len(np.unique(_pixels(path).reshape(-1, 4), axis=0)) > 8


@pytest.mark.parametrize("source", SOURCES)
def test_pictures_are_written_and_depend_on_the_cloud(source, clouds, tmp_path):
    box, blob = clouds
    args = ["--source", source, "--points", "128", "--out", str(tmp_path)]
    assert main([str(box), str(blob), *args]) == 0
    for name in PICTURES:
        first, second = tmp_path / f"box_{name}.png", tmp_path / f"blob_{name}.png"
        assert _drawn(first)
        a, b = _pixels(first), _pixels(second)
        assert a.shape == b.shape and not np.array_equal(a, b), f"{name}: two clouds gave the same picture"
    # the same cloud gives the same picture (random test sources are seeded), so the difference above is the input's
    assert main([str(box), *args, "--pictures", "views", "--out", str(tmp_path / "again")]) == 0
    assert np.array_equal(_pixels(tmp_path / "box_views.png"), _pixels(tmp_path / "again" / "box_views.png"))


def _view_scatters(fig) -> list[PathCollection]:
    """The token scatters of the views figure, in view order (one per axes for 2D, all on one for 1D)."""
    return [c for ax in fig.axes for c in ax.collections if isinstance(c, PathCollection)]


def _same_cell(ids: np.ndarray) -> np.ndarray:
    """(G, G): whether tokens i and j share an id."""
    return ids[:, None] == ids[None, :]


@pytest.mark.parametrize("source", SOURCES)
def test_plotted_cell_colours_are_the_models_cell_assignment(source, clouds):
    model = model_from_overrides([f"source={source}"])
    cloud = read_cloud(clouds[1], 128)
    scene = compute_scene(model, cloud)
    fig = plot_views(scene)
    scatters = _view_scatters(fig)
    assert len(scatters) == scene.views == 6

    # what the model's forward pass uses: embed() hands the method's pass state (peft=any2point: the
    # adapters' cell assignment) to every block
    with torch.no_grad():
        points = torch.from_numpy(cloud)[None]
        _, context = model.embed(points)
        _, centres = model.tokenizer(points)
        where = model.views.positions(centres)
    token_cells = context.state.view_cells[:, 0].t().numpy()  # (G, M): the cloud's cell in every view
    G = token_cells.shape[0]
    g = model.config.adapter.cell
    for m, scatter in enumerate(scatters):
        offsets, colours = scatter.get_offsets(), scatter.get_facecolors()
        units = where.source_units[0, m].numpy()
        # the data behind the plot sits at the model's projected positions ...
        if scene.kind == "2d":
            np.testing.assert_allclose(offsets, units[:, ::-1], atol=1e-5)  # plotted as (col, row)
            expected_cells = np.floor(units / g).astype(int)  # (G, 2): a cell is g x g pixels
            same = _same_cell(expected_cells[:, 0]) & _same_cell(expected_cells[:, 1])
        else:
            np.testing.assert_allclose(offsets[:, 0], units[:, 0], atol=1e-5)
            same = _same_cell(np.floor(units[:, 0] / g).astype(int))  # a segment is g rows
        # ... coloured by the cell the model assigns there
        np.testing.assert_allclose(colours, cell_colours(scene.cells[m]), atol=1e-6)
        assert np.array_equal(_same_cell(scene.cells[m]), _same_cell(token_cells[:, m]))
        assert np.array_equal(_same_cell(token_cells[:, m]), same)  # the geometry, written out independently
        assert 1 < len(np.unique(scene.cells[m])) < G  # the picture has something to show


def test_a_setting_changes_the_picture_data_as_it_changes_the_model(clouds):
    cloud = read_cloud(clouds[0], 128)
    base = compute_scene(model_from_overrides(["source=tiny_2d"]), cloud)
    finer = compute_scene(model_from_overrides(["source=tiny_2d", "model.adapter.cell=8"]), cloud)
    closer = compute_scene(model_from_overrides(["source=tiny_2d", "model.projection.translation=-1.2"]), cloud)
    assert base.cell_size == 16 and finer.cell_size == 8
    np.testing.assert_array_equal(finer.positions, base.positions)
    for m in range(base.views):  # finer cells split the coarse ones, never merge them
        assert len(np.unique(finer.cells[m])) >= len(np.unique(base.cells[m]))
        assert np.array_equal(_same_cell(finer.cells[m]) & _same_cell(base.cells[m]), _same_cell(finer.cells[m]))
    assert sum(len(np.unique(f)) for f in finer.cells) > sum(len(np.unique(b)) for b in base.cells)
    # a camera closer to the cloud spreads the projection over more of the canvas
    spread = lambda s: np.ptp(s.positions, axis=1).mean()  # noqa: E731
    assert spread(closer) > spread(base)


def test_pe_colours_share_one_basis_and_the_mean_is_what_the_model_adds(clouds):
    model = model_from_overrides(["source=tiny_2d"])
    cloud = read_cloud(clouds[0], 128)
    scene = compute_scene(model, cloud)
    with torch.no_grad():
        _, centres = model.tokenizer(torch.from_numpy(cloud)[None])
        pe = model.views.encode(model.source.position_table(), model.views.positions(centres))[0].numpy()
    np.testing.assert_allclose(scene.pe, pe, atol=1e-6)
    np.testing.assert_allclose(scene.view_pe.mean(axis=0), scene.pe, atol=1e-5)  # the mean over the six views
    colours = pe_colours(scene)
    assert colours.views.shape == (6, len(scene.centres), 3) and colours.table.shape == (8, 12, 3)
    assert colours.views.min() >= 0 and colours.views.max() <= 1
    # one linear basis: the colour of the mean PE is the mean of the per-view colours (no clipping inside the table)
    np.testing.assert_allclose(colours.mean, colours.views.mean(axis=0), atol=1e-6)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A one-epoch tiny_2d run on four procedural shapes (seconds)."""
    from any2point.train import run_training

    run = tmp_path_factory.mktemp("trained")
    run_training(compose_config("train", [o for o in TINY if not o.startswith("source=")] + ["source=tiny_2d"]), run)
    return run


def test_checkpoint_adds_view_weights_and_topk(trained_run, clouds, tmp_path, capsys):
    box = clouds[0]
    assert main([str(box), "--checkpoint", str(trained_run), "--block", "0", "--topk", "3", "--out", str(tmp_path),
                 "--html"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith(str(box)))
    labels = re.findall(r"(\w+) \(\d+\.\d%\)", line)
    assert len(labels) == 3 and set(labels) <= {"sphere", "cube", "torus", "cone"}
    for name in PICTURES + ["weights", "topk"]:
        assert _drawn(tmp_path / f"box_{name}.png"), name
    page = (tmp_path / "box_cloud.html").read_text()
    points = json.loads(re.search(r"const points = (\[.*?\]\]),", page).group(1))
    assert len(points) == 64 and all(len(p) == 3 for p in points)  # the checkpoint's number of points

    # the weights shown are the ones the model's forward pass mixes its views with
    from any2point.checkpoint import load_checkpoint

    model = load_checkpoint(trained_run).model
    ensemble, logits = view_weights(model, read_cloud(box, 64), block=0)
    G, M = ensemble.weights.shape
    assert (G, M) == (8, 6) and logits.shape == (1, 4)  # 64 points -> 8 tokens
    torch.testing.assert_close(ensemble.weights.sum(dim=1), torch.ones(G))
    assert (ensemble.weights > 0).all()
    torch.testing.assert_close(ensemble.reconstructs(), ensemble.output, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        plain = model(torch.from_numpy(read_cloud(box, 64))[None])
    torch.testing.assert_close(logits, plain)  # recording the block changes nothing


def test_a_checkpoint_without_guided_ensemble_still_gives_topk(clouds, tmp_path, capsys):
    from any2point.checkpoint import save_checkpoint
    from any2point.factory import create_model_from_config

    source = {"name": "tiny_1d", "pretrained": False, "weights": None, "options": {}}
    names = ["a", "b", "c"]
    cfg = compose_train_config(["source=tiny_1d", "source.pretrained=false", "peft=linear"])
    model = create_model_from_config(cfg, len(names))
    save_checkpoint(model, tmp_path / "run" / "checkpoint", source=source, class_names=names, num_points=64)
    assert main([str(clouds[0]), "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "no view weights: peft=linear has no guided ensemble" in captured.err
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["box_cloud.png", "box_pe.png", "box_topk.png", "box_views.png"]


def test_errors_name_the_problem(trained_run, clouds, tmp_path, capsys):
    box = str(clouds[0])
    assert main([box, "--checkpoint", str(trained_run), "--block", "7", "--out", str(tmp_path)]) == 2
    assert "--block 7 is out of range: tiny_2d has 2 blocks" in capsys.readouterr().err
    assert main([box, "--checkpoint", str(trained_run), "source=tiny_1d", "--out", str(tmp_path)]) == 2
    assert "only model.* settings" in capsys.readouterr().err
    assert main([box, "--source", "tiny_1d", "model.adapter.cel=3", "--out", str(tmp_path)]) == 2
    assert "model.adapter.cel" in capsys.readouterr().err
    missing = tmp_path / "missing.off"
    assert main([str(missing), box, "--source", "tiny_1d", "--points", "64", "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "missing.off" in captured.err and "1 of 2 files failed" in captured.err
    assert (tmp_path / "box_views.png").is_file()
    assert main([box, "--source", "tiny_1d", "--pictures", "views,bogus", "--out", str(tmp_path)]) == 2
    assert "unknown ['bogus']" in capsys.readouterr().err
    assert main([box, "--source", "tiny_1d", "--pictures", "weights", "--out", str(tmp_path)]) == 2
    assert "needs --checkpoint" in capsys.readouterr().err


def test_only_the_requested_pictures_are_written_under_the_given_name(clouds, tmp_path):
    assert main([str(clouds[0]), "--source", "tiny_2d", "--points", "64", "--pictures", "views", "--name", "mine",
                 "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine_views.png"]


def test_notebook_api_matches_the_command_line_config():
    cfg = compose_train_config(["source=tiny_1d", "model.projection.length=40"])
    model = model_from_config(cfg)
    assert model.views.length == 40 and not model.training
    scene = compute_scene(model, random_clouds(1, 128, seed=1)[0])
    assert scene.kind == "1d" and scene.positions.shape == (6, 16) and scene.positions.max() <= 39 + 1e-4
    assert ShowOptions().points == 1024


def test_a_cloud_that_cannot_be_drawn_fails_alone_with_a_message(clouds, tmp_path, capsys):
    code = main([str(clouds[0]), "--source", "tiny_1d", "--points", "2", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "clouds have 2 points" in err and "1 of 1 files failed" in err and "Traceback" not in err
