"""BatchNorm over rows that belong to different groups (the views), each group with its own
statistics and affine parameters, without splitting the rows into per-group tensors."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["GroupedBatchNorm"]


class GroupedBatchNorm(nn.Module):
    """Rows (R, D) with a group id each (R,) -> normalised per group and channel.

    Equivalent to running one ``nn.BatchNorm1d(D)`` per group on that group's rows (same
    training statistics, running averages with unbiased variance, eps and momentum)."""

    def __init__(self, groups: int, width: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.groups, self.eps, self.momentum = groups, eps, momentum
        self.weight = nn.Parameter(torch.ones(groups, width))
        self.bias = nn.Parameter(torch.zeros(groups, width))
        self.register_buffer("running_mean", torch.zeros(groups, width))
        self.register_buffer("running_var", torch.ones(groups, width))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        if self.training:
            count = torch.bincount(group, minlength=self.groups).to(x.dtype).unsqueeze(-1)  # (Gr, 1)
            mean = x.new_zeros(self.groups, x.shape[-1]).index_add(0, group, x) / count.clamp_min(1)
            centred = x - mean.index_select(0, group)
            var = x.new_zeros(self.groups, x.shape[-1]).index_add(0, group, centred.square()) / count.clamp_min(1)
            with torch.no_grad():
                seen = count > 0
                unbiased = var * count / (count - 1).clamp_min(1)
                m = self.momentum
                self.running_mean.copy_(torch.where(seen, (1 - m) * self.running_mean + m * mean, self.running_mean))
                self.running_var.copy_(torch.where(seen, (1 - m) * self.running_var + m * unbiased, self.running_var))
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean, self.running_var
            centred = x - mean.index_select(0, group)
        scale = self.weight * torch.rsqrt(var + self.eps)  # (Gr, D)
        return torch.addcmul(self.bias.index_select(0, group), centred, scale.index_select(0, group))
