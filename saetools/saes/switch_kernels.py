"""Routed kernels of the Switch SAE (Mudide et al. 2024, docs/mudide2024_switch_sae.md), free of sae-lens.

The authors' code computes every expert densely and masks, which saves nothing.
Here each token's work touches only its own expert:

* :func:`routed_topk` -- tokens sorted by expert; each expert multiplies only its contiguous
  slice of tokens by its own block of ``W_enc`` (one matmul per expert, a loop over experts,
  not over tokens) and takes the TopK inside the block. Its backward is sparse: the weight
  gradient is a sparse-times-dense product over the ``n k`` selected entries, the input
  gradient a gather of ``k`` encoder columns per token;
* :func:`sparse_decode` -- ``sum_j a_j W_dec[idx_j]`` reading only the ``k`` selected rows
  (``F.embedding_bag``), never a dense ``[n, d_sae]`` matrix;
* :func:`load_balance_loss`, :func:`geometric_median` and the analytic FLOP counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

__all__ = [
    "decoder_flops_per_token",
    "dense_input_decode",
    "encoder_flops_per_token",
    "geometric_median",
    "load_balance_loss",
    "routed_topk",
    "sort_by_expert",
    "sparse_decode",
]


def encoder_flops_per_token(d_in: int, d_sae: int, n_experts: int = 1) -> int:
    """Encoder FLOPs per token, a multiply-add counted as 2: ``2 d_in d_sae / N + 2 d_in N``.

    The second term is the router (absent for ``N = 1``, a dense SAE); biases, ReLU and TopK
    are not counted. These are the two terms of the paper's FLOP matching: a
    Switch SAE with ``N`` experts of width ``M_e`` costs about as much as a dense ``M_e``-wide
    TopK SAE.
    """
    if n_experts < 1 or d_sae % n_experts:
        raise ValueError(f"d_sae={d_sae} must be a positive multiple of n_experts={n_experts}")
    return 2 * d_in * (d_sae // n_experts) + (2 * d_in * n_experts if n_experts > 1 else 0)


def decoder_flops_per_token(d_in: int, *, k: int | None = None, d_sae: int | None = None) -> int:
    """Decoder FLOPs per token: ``2 k d_in`` for a sparse decode of ``k`` latents, or
    ``2 d_sae d_in`` for a dense one (``d_sae`` given; sae-lens's TopK decodes densely)."""
    if (k is None) == (d_sae is None):
        raise ValueError("give exactly one of k (sparse decode) or d_sae (dense decode)")
    return 2 * d_in * (k if k is not None else d_sae)


@torch.no_grad()
def geometric_median(points: Float[Tensor, "n d"], *, max_iter: int = 100, tol: float = 1e-5,
                     eps: float = 1e-8) -> Float[Tensor, " d"]:
    """The geometric median ``argmin_m sum_t ||x_t - m||`` by Weiszfeld's iteration.

    Starts from the mean; each step is the average of the points weighted by
    ``1 / max(||x_t - m||, eps)``; stops after ``max_iter`` steps or when ``m`` moves less than
    ``tol * (1 + ||m||)``. Computed in float64, returned in the points' dtype.
    """
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"points must be a non-empty [n, d] matrix, got shape {tuple(points.shape)}")
    x = points.double()
    m = x.mean(0)
    for _ in range(max_iter):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(eps)
        new = (w[:, None] * x).sum(0) / w.sum()
        done = (new - m).norm() <= tol * (1 + new.norm())
        m = new
        if done:
            break
    return m.to(points.dtype)


def load_balance_loss(probs: Float[Tensor, "n n_experts"], expert: Int[Tensor, " n"]) -> Tensor:
    """Switch-Transformer balancing loss ``L_lb = N sum_i F_i P_i`` (Fedus et al. 2021).

    ``F_i`` is the fraction of tokens routed (argmax) to expert ``i`` (no gradient), ``P_i``
    the mean router probability of expert ``i``. ``L_lb = 1`` when both are uniform; it grows
    towards ``N`` when every token goes to one expert with probability 1.
    """
    n_experts = probs.shape[-1]
    frac = torch.bincount(expert, minlength=n_experts).to(probs.dtype) / max(expert.numel(), 1)
    return n_experts * (frac * probs.mean(0)).sum()


def sort_by_expert(expert: Int[Tensor, " n"], n_experts: int) -> tuple[Tensor, Tensor, list[int]]:
    """``(order, inverse, counts)``: ``expert[order]`` is sorted (stable), ``y[order][inverse]
    == y``, and ``counts[i]`` tokens go to expert ``i`` (a Python list: one host sync)."""
    order = torch.argsort(expert, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return order, inverse, torch.bincount(expert, minlength=n_experts).tolist()


class _RoutedTopK(torch.autograd.Function):
    """Per-expert encoder matmul + TopK on tokens sorted by expert, with a sparse backward."""

    @staticmethod
    def forward(ctx, x, shift, W_enc, b_enc, counts, k, width):
        xc = x - shift
        top = x.new_empty(x.shape[0], k)
        idx = torch.empty(x.shape[0], k, dtype=torch.long, device=x.device)
        start = 0
        for i, c in enumerate(counts):  # a loop over experts (N), never over tokens
            if c:
                block = slice(i * width, (i + 1) * width)
                pre = torch.addmm(b_enc[block], xc[start:start + c], W_enc[:, block])
                v, j = pre.topk(k, dim=-1, sorted=False)
                top[start:start + c] = v
                idx[start:start + c] = j + i * width
                start += c
        ctx.save_for_backward(xc, W_enc, idx)
        ctx.mark_non_differentiable(idx)
        return top, idx

    @staticmethod
    def backward(ctx, grad_top, _grad_idx):
        xc, W_enc, idx = ctx.saved_tensors
        need_x, need_shift, need_w, need_b = ctx.needs_input_grad[:4]
        n, k = idx.shape
        d_sae = W_enc.shape[1]
        g = grad_top.contiguous()
        flat_idx, flat_g = idx.reshape(-1), g.reshape(-1)
        col = None
        if need_shift or need_b:  # per latent, the sum over tokens of its pre-activation gradient
            col = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, flat_idx, flat_g)
        grad_x = grad_shift = grad_w = None
        if need_w:  # dL/dW_enc[:, l] = sum over (t, j) with idx[t, j] = l of g[t, j] xc[t]
            tok = torch.arange(n, device=idx.device).repeat_interleave(k)
            wide = torch.float32 if g.dtype in (torch.float16, torch.bfloat16) else g.dtype  # no half sparse.mm
            sel = torch.sparse_coo_tensor(torch.stack([flat_idx, tok]), flat_g.to(wide), (d_sae, n),
                                          check_invariants=False)
            grad_w = torch.sparse.mm(sel, xc.to(wide)).to(xc.dtype).t().contiguous()
        if need_x:  # dL/dxc[t] = sum_j g[t, j] W_enc[:, idx[t, j]]
            grad_x = F.embedding_bag(idx, W_enc.t().contiguous(), per_sample_weights=g, mode="sum")
        if need_shift:  # -sum_t dL/dxc[t]
            grad_shift = -(W_enc @ col)
        return grad_x, grad_shift, grad_w, col if need_b else None, None, None, None


def routed_topk(
    x: Float[Tensor, "n d_in"],
    shift: Float[Tensor, " d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, " d_sae"],
    expert: Int[Tensor, " n"],
    *,
    n_experts: int,
    k: int,
) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
    """The ``k`` largest pre-activations of each token inside its own expert.

    Expert ``i`` owns latents ``[i E, (i + 1) E)`` with ``E = d_sae / n_experts``; token ``t``'s
    pre-activations there are ``(x_t - shift) @ W_enc[:, block] + b_enc[block]``. Only those
    ``E`` columns are computed (``2 d_in E`` FLOPs per token instead of ``2 d_in d_sae``).

    Returns:
        ``(values [n, k], indices [n, k])``: pre-activations (before any ReLU) and their global
        latent ids, in no particular order within a token. Differentiable in ``x``, ``shift``,
        ``W_enc``, ``b_enc`` (sparse backward).
    """
    width = W_enc.shape[1] // n_experts
    order, inverse, counts = sort_by_expert(expert, n_experts)
    top, idx = _RoutedTopK.apply(x[order], shift, W_enc, b_enc, counts, k, width)
    return top[inverse], idx[inverse]


def sparse_decode(idx: Int[Tensor, "n k"], acts: Float[Tensor, "n k"], W_dec: Float[Tensor, "d_sae d_in"]
                  ) -> Float[Tensor, "n d_in"]:
    """``sum_j acts[t, j] W_dec[idx[t, j]]`` per token (no bias), reading only those rows."""
    return F.embedding_bag(idx, W_dec, per_sample_weights=acts, mode="sum")


def dense_input_decode(f: Float[Tensor, "n d_sae"], W_dec: Float[Tensor, "d_sae d_in"]) -> Float[Tensor, "n d_in"]:
    """``f @ W_dec`` reading only the non-zero entries of ``f`` when it is sparse enough.

    Used only when no gradient with respect to ``f`` is needed: the sparse path would give a
    zero gradient to the zero entries, whose true gradient is ``W_dec @ grad`` (attribution
    methods read it). More than 1/16 non-zero: a dense matmul.
    """
    if f.requires_grad:
        return f @ W_dec
    rows, cols = f.nonzero(as_tuple=True)
    if rows.numel() * 16 > f.numel():
        return f @ W_dec
    offsets = torch.zeros(f.shape[0], dtype=torch.long, device=f.device)
    offsets[1:] = torch.bincount(rows, minlength=f.shape[0]).cumsum(0)[:-1]
    return F.embedding_bag(cols, W_dec, offsets, mode="sum", per_sample_weights=f[rows, cols])
