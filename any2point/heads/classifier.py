"""The classifier head: an MLP on the pooled feature, one logit per training class."""
from __future__ import annotations

from torch import nn

from .base import Head
from .config import HeadConfig
from .registry import register_head

__all__ = ["ClassifierHead", "mlp_layers"]


def mlp_layers(in_features: int, hidden: list[int], dropout: float) -> tuple[list[nn.Module], int]:
    """Linear -> BN -> ReLU -> Dropout per hidden width; (the layers, their output width)."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        in_features = width
    return layers, in_features


@register_head("classifier")
class ClassifierHead(Head):
    """Linear -> BN -> ReLU -> Dropout per hidden layer, then the class logits."""

    def __init__(self, config: HeadConfig, width: int, num_classes: int):
        super().__init__(config, width, num_classes)
        layers, out = mlp_layers(self.in_features, config.hidden, config.dropout)
        for i, layer in enumerate([*layers, nn.Linear(out, num_classes)]):
            self.add_module(str(i), layer)  # numbered as the nn.Sequential it was: head.0.weight, ...

    def forward(self, features):
        for layer in self.children():
            features = layer(features)
        return features
