"""The decoder-norm constraint shared by saetools's SAE architectures.

Several papers (Switch SAEs, ``docs/mudide2024_switch_sae.md``; top-AFA, ``docs/lee2025_top_afa.md``)
keep decoder rows at unit norm by renormalising them after every step *and* removing, before the
step, the gradient component parallel to each row, so the step itself moves along the sphere to
first order.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


class _ProjectRowGrad(torch.autograd.Function):
    """Identity; the backward removes, per row, the gradient component parallel to the row."""

    @staticmethod
    def forward(ctx, w):
        ctx.save_for_backward(w)
        return w.view_as(w)

    @staticmethod
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        unit = w / w.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        return grad - (grad * unit).sum(-1, keepdim=True) * unit


def project_row_grad(W_dec: Float[Tensor, "d_sae d_in"]) -> Float[Tensor, "d_sae d_in"]:
    """``W_dec`` unchanged, but its gradient loses the component parallel to each row.

    With rows renormalised before every step this keeps the decoder on the unit sphere to first
    order (the authors' ``remove_gradient_parallel_to_decoder_directions``; they project after
    gradient clipping, sae-lens's trainer clips after this projection).
    """
    return _ProjectRowGrad.apply(W_dec)
