"""The guided aggregation's view weighting and sum in one C kernel on the CPU.

    a_m = (cos(F_m, R) + 1) / 2,  w_m = a_m / sum_m a_m,  out = sum_m w_m F_m

for every token, with F_m its cell's feature in view m and R its 3D reference feature. The
PyTorch version (``adapters.guided``: ``gathered_dots``, the norms, ``weighted_bag``) takes
about twenty passes over the (cells, D) and (tokens, D) features and their gradients; the
kernel reads each token's M cells once forward and once backward.
"""
from __future__ import annotations

import torch

from . import call

__all__ = ["native_guided_sum"]


def native_guided_sum(views: torch.Tensor, reference: torch.Tensor, token_cells: torch.Tensor,
                      clouds: int) -> torch.Tensor:
    """views (U, D) one row per cell; reference (T, D); token_cells (T, M) each token's cell in
    each view, tokens grouped by cloud (``clouds`` groups of T / clouds) and no cell shared by
    two clouds -> (T, D)."""
    if token_cells.numel() and not 0 <= int(token_cells.min()) <= int(token_cells.max()) < views.shape[0]:
        raise IndexError(f"token_cells must index the {views.shape[0]} rows of views")
    return _GuidedSum.apply(views, reference, token_cells, clouds)


class _GuidedSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, views, reference, token_cells, clouds):
        views, reference, token_cells = views.contiguous(), reference.contiguous(), token_cells.contiguous()
        (U, D), (T, M) = views.shape, token_cells.shape
        out, cell_norm = reference.new_empty(T, D), views.new_empty(U)
        weights, total = reference.new_empty(T, M), reference.new_empty(T)
        call("guided_sum_forward", views.dtype, T, U, D, M, views, reference, token_cells, out, cell_norm,
             weights, total)
        ctx.save_for_backward(views, reference, token_cells, cell_norm, weights, total)
        ctx.clouds = clouds
        return out

    @staticmethod
    def backward(ctx, grad):
        views, reference, token_cells, cell_norm, weights, total = ctx.saved_tensors
        (T, M), D = token_cells.shape, views.shape[1]
        grad_views, grad_reference = torch.zeros_like(views), torch.empty_like(reference)
        call("guided_sum_backward", views.dtype, T, D, M, ctx.clouds, views, reference, token_cells, cell_norm,
             weights, total, grad.contiguous(), grad_views, grad_reference)
        return grad_views, grad_reference, None, None
