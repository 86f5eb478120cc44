"""BatchNorm over rows that belong to different groups (the views), each group with its own
statistics and affine parameters, without splitting the rows into per-group tensors."""
from __future__ import annotations

import torch
from torch import nn

from any2point.native import kernels_apply
from any2point.native.grouped_norm import native_grouped_norm

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
        if not self.training:
            scale = self.weight * torch.rsqrt(self.running_var + self.eps)  # (Gr, D)
            shift = self.bias - self.running_mean * scale
            return torch.addcmul(shift.index_select(0, group), x, scale.index_select(0, group))
        count = torch.bincount(group, minlength=self.groups).to(x.dtype)  # (Gr,)
        if kernels_apply(x, self.weight, self.bias):  # the CPU kernel
            y, mean, var = native_grouped_norm(x, group, count, self.weight, self.bias, self.eps)
            self._update_running(mean, var, count.unsqueeze(-1))
            return y
        count = count.unsqueeze(-1)  # (Gr, 1)
        with torch.no_grad():
            mean = x.new_zeros(self.groups, x.shape[-1]).index_add(0, group, x) / count.clamp_min(1)
            centred = x - mean.index_select(0, group)
            var = x.new_zeros(self.groups, x.shape[-1]).index_add(0, group, centred.square()) / count.clamp_min(1)
            self._update_running(mean, var, count)
            rstd = torch.rsqrt(var + self.eps)
            xhat = centred.mul_(rstd.index_select(0, group))
        return _GroupedNormalizeAffine.apply(x, xhat, group, rstd, count, self.weight, self.bias)

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        """Running averages from this batch's per-group mean and biased variance; a group with no
        rows keeps its values."""
        seen = count > 0
        unbiased = var * count / (count - 1).clamp_min(1)
        m = self.momentum
        self.running_mean.copy_(torch.where(seen, (1 - m) * self.running_mean + m * mean, self.running_mean))
        self.running_var.copy_(torch.where(seen, (1 - m) * self.running_var + m * unbiased, self.running_var))
        self.num_batches_tracked += 1


class _GroupedNormalizeAffine(torch.autograd.Function):
    """y = xhat * weight[g] + bias[g] with xhat the per-group standardised x (batch statistics),
    and BatchNorm's closed-form gradient: six passes over the rows instead of the dozen an
    autograd graph of the mean, variance and gathers makes."""

    @staticmethod
    def forward(ctx, x, xhat, group, rstd, count, weight, bias):
        # x is an input only so that its gradient (the closed form below) reaches it
        ctx.save_for_backward(xhat, group, rstd, count, weight)
        return torch.addcmul(bias.index_select(0, group), xhat, weight.index_select(0, group))

    @staticmethod
    def backward(ctx, grad):
        xhat, group, rstd, count, weight = ctx.saved_tensors
        width = grad.shape[-1]
        grad_bias = grad.new_zeros(count.shape[0], width).index_add_(0, group, grad)  # (Gr, D)
        grad_weight = grad.new_zeros(count.shape[0], width).index_add_(0, group, grad * xhat)
        grad_x = None
        if ctx.needs_input_grad[0]:
            n = count.clamp_min(1)
            # dx = weight * rstd * (grad - mean(grad) - xhat * mean(grad * xhat)), per group
            mean_grad, mean_grad_xhat = (grad_bias / n).index_select(0, group), (grad_weight / n).index_select(0, group)
            centre = torch.addcmul(mean_grad, xhat, mean_grad_xhat)
            grad_x = (grad - centre).mul_((weight * rstd).index_select(0, group))
        return grad_x, None, None, None, None, grad_weight.to(weight.dtype), grad_bias.to(weight.dtype)
