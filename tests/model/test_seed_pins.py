"""A seed gives the same model, bit for bit, whatever the code's shape: the parameters and
buffers (in state-dict order, names aside) and the logits of every PEFT method, under each
initialisation scheme, pinned as digests.

The digests were recorded before the PEFT methods took over their own parts from the model
(issue 27: per-pass state, initialisation and removed parts as method hooks); a refactor that
draws random numbers in another order, or computes a forward pass differently, fails here.
Parameters are drawn by torch's CPU generator (the same on every machine); the logits are
float32 CPU arithmetic on one thread, exact on the machine they were recorded on (x86-64).
"""
from __future__ import annotations

import hashlib

import pytest
import torch

import any2point

# (source, peft, model overrides, (parameters, eval logits, train logits)): sha256, first 16 hex digits
# ('bottleneck' was recorded as 'adapter', its name then: the same model under its one name now)
PINS = [
    ('tiny_2d', 'any2point', {'init': 'torch'}, ('70f6886a846ffa07', '253997ce8f42ee4f', 'aca26ad508befd4f')),
    ('tiny_2d', 'any2point', {'init': 'scan'}, ('5149aef51fd29a4e', '7e3063e275d360f7', 'b5afd218e1a1949a')),
    ('tiny_2d', 'any2point', {'init': 'modelnet'}, ('6f7d89574f7b4c2a', '2b22f9e3aaf30ea6', '9d61503f2e0d6a34')),
    ('tiny_2d', 'bottleneck', {'init': 'torch'}, ('899e2a7697d4e5a4', 'f51340561e8da6e1', '2842f443bf18c1b8')),
    ('tiny_2d', 'bottleneck', {'init': 'scan'}, ('28e5ad243e4e59c0', '2c38a4d27870cabe', '437bb3236fabdbc8')),
    ('tiny_2d', 'bottleneck', {'init': 'modelnet'}, ('1c9045cce08e4b8c', 'cd5072adda126d93', '6fc0a271e6dc3086')),
    ('tiny_2d', 'prompt', {'init': 'torch'}, ('e93b0d3633ca3dbe', '260a3ae23c234359', 'f350fc26c4a00273')),
    ('tiny_2d', 'prompt', {'init': 'scan'}, ('e93b0d3633ca3dbe', '260a3ae23c234359', 'f350fc26c4a00273')),
    ('tiny_2d', 'prompt', {'init': 'modelnet'}, ('181e9b0a28de0ab0', 'b02ca8809f9a23af', '164299569820d8f2')),
    ('tiny_2d', 'lora', {'init': 'torch'}, ('28b4302ec2c4686e', 'cc561a2035996327', 'df722267c187c4f0')),
    ('tiny_2d', 'lora', {'init': 'scan'}, ('28b4302ec2c4686e', 'cc561a2035996327', 'df722267c187c4f0')),
    ('tiny_2d', 'lora', {'init': 'modelnet'}, ('810791ddd82a62a5', '93f3fa37c49ab1ac', '94df4719fedb7917')),
    ('tiny_2d', 'tokenizer_only', {'init': 'torch'}, ('8eac91b2349ffbfd', 'f0eeb0f69049d881', 'f432718ab66a3194')),
    ('tiny_2d', 'tokenizer_only', {'init': 'scan'}, ('8eac91b2349ffbfd', 'f0eeb0f69049d881', 'f432718ab66a3194')),
    ('tiny_2d', 'tokenizer_only', {'init': 'modelnet'}, ('a4e81178eb6170d6', '45ad69530602f43a', '52eec53f99b8178f')),
    ('tiny_2d', 'linear', {'init': 'torch'}, ('15a7bb48fa6c0680', 'afd03366fcec1553', '30a6180668dd1bd4')),
    ('tiny_2d', 'linear', {'init': 'scan'}, ('15a7bb48fa6c0680', 'afd03366fcec1553', '30a6180668dd1bd4')),
    ('tiny_2d', 'linear', {'init': 'modelnet'}, ('c168d91c944bdd92', '621e585e240fdc03', '7993d7cbb442f607')),
    ('tiny_2d', 'full', {'init': 'torch'}, ('15a7bb48fa6c0680', 'afd03366fcec1553', '3083a262a5e85800')),
    ('tiny_2d', 'full', {'init': 'scan'}, ('15a7bb48fa6c0680', 'afd03366fcec1553', '3083a262a5e85800')),
    ('tiny_2d', 'full', {'init': 'modelnet'}, ('c168d91c944bdd92', '621e585e240fdc03', 'd11a9c97ef183d5a')),
    ('tiny_2d', 'any2point_shuffled_position', {'init': 'torch'},
     ('70f6886a846ffa07', '6fdbcdeb6480eacc', '6be639496bda0603')),
    ('tiny_2d', 'any2point_shuffled_position', {'init': 'scan'},
     ('5149aef51fd29a4e', '21dc742fc40259bf', 'ec609fd4d54d0eec')),
    ('tiny_2d', 'any2point_shuffled_position', {'init': 'modelnet'},
     ('6f7d89574f7b4c2a', 'e967dd0453618a12', '66fb15abcaf4eff2')),
    ('tiny_2d', 'any2point_shuffled_source', {'init': 'torch'},
     ('e477ab95bfe7fe4e', '7525bd957f53afea', 'd25062a9c52f365a')),
    ('tiny_2d', 'any2point_shuffled_source', {'init': 'scan'},
     ('4ab2d87d18f4f0d0', '0f9049ce75a07c4e', 'd3137be9625da61d')),
    ('tiny_2d', 'any2point_shuffled_source', {'init': 'modelnet'},
     ('bc0e7565ad3119b4', 'cb621a8180e43644', '8df4b3eddd623cb5')),
    ('tiny_1d', 'any2point', {'init': 'scan'}, ('3068bbc03d7633d6', 'fd7ae6ab4460ea44', 'ebbcc0c3fd051acd')),
    ('tiny_1d', 'bottleneck', {'init': 'scan'}, ('0384b1e1abb0f1d7', '45c01223fd593ac2', '40ea79e065260b31')),
    ('tiny_1d', 'any2point', {'init': 'modelnet'}, ('a287cb93f4cbfffb', '76e9dab569710367', 'e6f15a1a65c90531')),
    ('tiny_1d', 'bottleneck', {'init': 'modelnet'}, ('26f92f621ed3a487', '5d70722baf34739d', 'c2b066ac58e0fc28')),
    ('tiny_2d', 'any2point', {'init': 'modelnet', 'adapter': {'pool': 'mean_max', 'reference': 'uniform'}},
     ('9c8090978eb52af2', '330f3188c7dec81e', 'eb7a0cda7a4f653b')),
    ('tiny_2d', 'any2point', {'init': 'scan', 'adapter': {'view_cells': False}},
     ('63b43488d921daa2', '4a9cc534adca502a', 'b4e7aab42a6ce20f')),
    ('tiny_1d', 'any2point', {'init': 'scan', 'projection': {'kind': 'learned'},
                            'cls_token': 'random', 'cls_position': 'random'},
     ('ce880b39b9c35294', '7a4fe515de102e79', '2c0cce4f8fa95d99')),
    ('tiny_1d', 'tokenizer_only', {'init': 'scan', 'projection': {'kind': 'learned'},
                                 'cls_token': 'random', 'cls_position': 'random'},
     ('e9e1c95adf5b172a', '273d32c45d66a8b3', 'c770c9d3aa666cd3')),
    ('tiny_2d', 'tokenizer_only', {'init': 'modelnet', 'projection': {'kind': 'learned'}},
     ('2ae3017141cb5fd3', '6963042ea4fdd7c9', '705cf4419577b494')),
]


def _case_id(case) -> str:
    source, peft, overrides, _ = case
    return "-".join([source, peft, *(f"{k}={v}" for k, v in sorted(_flat(overrides).items()))])


def _flat(overrides: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().contiguous().cpu()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _cloud() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 256, 3, generator=g)
    return x / x.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)


def fingerprint(source: str, peft: str, overrides: dict) -> tuple[str, str, str]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = any2point.create_model(source, num_classes=3, peft=peft, **overrides)
        params = _digest(model.state_dict().values())
        points = _cloud()
        with torch.no_grad():
            evaluated = model.eval()(points)
            torch.manual_seed(1)  # the train-mode pass draws dropout masks
            trained = model.train()(points)
        return params, _digest([evaluated]), _digest([trained])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("case", PINS, ids=_case_id)
def test_a_seed_gives_the_recorded_parameters_and_logits(case):
    source, peft, overrides, pinned = case
    assert fingerprint(source, peft, overrides) == pinned
