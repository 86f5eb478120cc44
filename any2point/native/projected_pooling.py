"""Projected cell pooling: the mini attention's residual output projection followed by mean +
max pooling per cell, in one C kernel on the CPU.

    y_r = x_t + o_r W_m + b_m  for token-view r = m * T + t,   out_u = mean_{r in u} y_r + max_{r in u} y_r

The PyTorch composition (``_ResidualOutProjection`` then ``ops.mean_plus_max``) writes the
(M, T, D) copy y, larger than the CPU's cache, and its forward and backward read it about
fifteen times; the kernel builds each row in a small buffer when it needs it (once in the
forward, once in the backward) and saves only each cell's max and tie share. It runs on
torch's OpenMP threads (see any2point.native).
"""
from __future__ import annotations

import torch

from . import call, run_bounds

__all__ = ["native_projected_pooling"]


def native_projected_pooling(x: torch.Tensor, o: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                             segments: torch.Tensor, members: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """x (B, G, D), o (M, B * G, K), weight (M, K, D), bias (M, D); segments (M * B * G,) the
    cell of each token-view, numbered by (view, cloud) as ``CellAssignment`` does (a cell never
    mixes clouds), and members, offsets the rows of each cell (``BagTranspose.of(
    segments.unsqueeze(1), U)``) -> (U, D). For tensors that ``kernels_apply`` accepts."""
    B, G, D = x.shape
    bounds = run_bounds(offsets, members.numel())
    # the first cell of each (view, cloud), and the end: (M * B + 1,)
    groups = torch.cat([segments.view(-1, G).amin(1), offsets.new_tensor([offsets.numel()])])
    return _ProjectedPooling.apply(x.reshape(B * G, D), o, weight, bias, members, bounds, groups)


class _ProjectedPooling(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, o, weight, bias, members, bounds, groups):
        x, o, weight, bias, members, bounds, groups = (
            t.contiguous() for t in (x, o, weight, bias, members, bounds, groups))
        (T, D), (M, _, K), U = x.shape, o.shape, bounds.numel() - 1
        out, peak, share = (x.new_empty(U, D) for _ in range(3))
        largest = int(torch.diff(bounds).max()) if U else 0
        call("projected_pooling_forward", x.dtype, T, D, K, M, (groups.numel() - 1) // M, largest,
             x, o, weight, bias, members, bounds, groups, out, peak, share)
        ctx.save_for_backward(x, o, weight, bias, members, bounds, groups, peak, share)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, o, weight, bias, members, bounds, groups, peak, share = ctx.saved_tensors
        (T, D), (M, _, K) = x.shape, o.shape
        grad_x, grad_o, grad_weight, grad_bias = (
            torch.zeros_like(x), torch.empty_like(o), torch.zeros_like(weight), torch.zeros_like(bias))
        call("projected_pooling_backward", x.dtype, T, D, K, M, (groups.numel() - 1) // M, x, o, weight, bias,
             members, bounds, groups, peak, share, grad.contiguous(), grad_x, grad_o, grad_weight, grad_bias)
        return grad_x, grad_o, grad_weight, grad_bias, None, None, None
