"""GroupedBatchNorm's training forward and its backward in one C kernel each on the CPU.

The PyTorch version (``adapters.norm``) gathers each group's statistics and parameters back to
every row (index_select of a (groups, D) table into (rows, D), seven times) and makes a dozen
passes over the rows; the kernel looks each row's group up as it goes.
"""
from __future__ import annotations

import torch

from . import call

__all__ = ["native_grouped_norm"]


def native_grouped_norm(x: torch.Tensor, group: torch.Tensor, count: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (R, D), group (R,) ids below Gr, count (Gr,) rows per group (x's dtype), weight and bias
    (Gr, D) -> normalised and scaled rows (R, D), and each group's batch mean and biased
    variance (Gr, D), for the running statistics (no gradient)."""
    if group.numel() and not 0 <= int(group.min()) <= int(group.max()) < weight.shape[0]:  # C would write anywhere
        raise IndexError(f"group ids must lie in [0, {weight.shape[0]}), got {int(group.min())}..{int(group.max())}")
    return _GroupedNorm.apply(x, group, count, weight, bias, eps)


class _GroupedNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, count, weight, bias, eps):
        x, group, count, weight, bias = (t.contiguous() for t in (x, group, count, weight, bias))
        (R, D), Gr = x.shape, weight.shape[0]
        y, mean, var = x.new_empty(R, D), x.new_empty(Gr, D), x.new_empty(Gr, D)
        call("grouped_norm_forward", x.dtype, R, D, Gr, eps, x, group, count, weight, bias, y, mean, var)
        ctx.save_for_backward(x, group, count, weight, mean, var)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        x, group, count, weight, mean, var = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)
        call("grouped_norm_backward", x.dtype, x.shape[0], x.shape[1], weight.shape[0], ctx.eps, x, group, count,
             weight, mean, var, grad_y.contiguous(), grad_x, grad_weight, grad_bias)
        return grad_x, None, None, grad_weight, grad_bias, None
