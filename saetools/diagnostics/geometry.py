"""Decoder geometry: nearest-neighbour cosines, duplicate latents, inter-expert similarity.

The feature-geometry analysis of Mudide et al. 2024 (Switch SAEs, docs/mudide2024_switch_sae.md figure 6),
written for any dictionary: every function takes a decoder matrix ``[n_latents, d]`` (one
row per latent, as sae-lens's ``W_dec``) or anything with a ``W_dec`` (an SAE). Rows are
compared by cosine, so row norms do not matter; all-zero rows have cosine 0 with everything.

* :func:`nearest_neighbours` -- per latent, the largest cosine to any *other* latent, and which;
* :func:`duplicate_fraction` -- the fraction of latents with at least one other latent at
  cosine above 0.9 (the paper's "duplicates");
* :func:`group_similarity` -- the inter-expert matrix: for groups ``i, j`` (experts, or any
  equal-sized chunks), the mean over latents of ``i`` of their largest cosine to a latent of
  ``j``. Split a *dense* SAE into chunks for the paper's control (an arbitrary split of a
  dense SAE: contiguous chunks of its arbitrary latent order, or a seeded random split);
* :func:`geometry_table` -- the per-dictionary summary used in the notebooks.

All of them work on blocks of ``chunk_size`` rows at a time, so memory is
``O(chunk_size * n_latents)``, never ``n_latents^2`` (16k latents take seconds on a CPU).
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["DUPLICATE_THRESHOLD", "decoder_matrix", "duplicate_fraction", "geometry_table", "group_similarity",
           "nearest_neighbours"]

DUPLICATE_THRESHOLD = 0.9
"""Cosine above which two latents count as duplicates (Mudide et al. 2024)."""

Decoder = Float[Tensor, "n_latents d"]


def decoder_matrix(dictionary) -> Decoder:
    """The ``[n_latents, d]`` decoder of ``dictionary``: a matrix, or an object with ``W_dec``."""
    w = getattr(dictionary, "W_dec", dictionary)
    if not isinstance(w, Tensor):
        raise TypeError(f"expected a decoder matrix [n_latents, d] or an SAE with W_dec, got {type(dictionary).__name__}")
    if w.ndim != 2 or w.shape[0] < 2:
        raise ValueError(f"a decoder must be a [n_latents, d] matrix with at least 2 latents, got shape {tuple(w.shape)}")
    return w.detach()


def _unit(w: Tensor) -> Tensor:
    w = w.float()
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _blocks(n: int, chunk_size: int):
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return ((s, min(s + chunk_size, n)) for s in range(0, n, chunk_size))


@torch.no_grad()
def nearest_neighbours(dictionary, *, chunk_size: int = 1024) -> tuple[Float[Tensor, " n_latents"], Int[Tensor, " n_latents"]]:
    """Per latent, the largest cosine to any other latent of the same decoder, and its index.

    Args:
        dictionary: decoder ``[n_latents, d]`` or an SAE (its ``W_dec``).
        chunk_size: rows compared at a time (memory ``chunk_size * n_latents`` floats).

    Returns:
        ``(cosine [n_latents], index [n_latents])``.
    """
    u = _unit(decoder_matrix(dictionary))
    n = u.shape[0]
    cos, idx = u.new_empty(n), torch.empty(n, dtype=torch.long, device=u.device)
    for s, e in _blocks(n, chunk_size):
        sims = u[s:e] @ u.T
        sims[torch.arange(e - s, device=u.device), torch.arange(s, e, device=u.device)] = -float("inf")
        cos[s:e], idx[s:e] = sims.max(-1)
    return cos, idx


def duplicate_fraction(dictionary, *, threshold: float = DUPLICATE_THRESHOLD, chunk_size: int = 1024) -> float:
    """Fraction of latents with at least one other latent at cosine ``> threshold`` (Mudide et al.
    2024 use 0.9). Both members of a duplicate pair count."""
    if not -1.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [-1, 1), got {threshold}")
    cos, _ = nearest_neighbours(dictionary, chunk_size=chunk_size)
    return (cos > threshold).double().mean().item()


@torch.no_grad()
def group_similarity(
    dictionary,
    n_groups: int,
    *,
    permute_seed: int | None = None,
    chunk_size: int = 1024,
) -> Float[Tensor, "n_groups n_groups"]:
    """The inter-expert similarity matrix: ``S[i, j] = mean_{l in i} max_{m in j, m != l} cos(l, m)``.

    Group ``i`` is latents ``[i E, (i + 1) E)`` with ``E = n_latents / n_groups`` (a Switch SAE's
    experts), or, with ``permute_seed``, the same split after a seeded random permutation of
    the latents (the control for a dense SAE, whose latent order is arbitrary anyway). The
    diagonal is the mean nearest-neighbour cosine inside a group (NaN for one-latent groups);
    the off-diagonal entries
    measure how much each expert re-learns its neighbours' features.

    Args:
        dictionary: decoder ``[n_latents, d]`` or an SAE (its ``W_dec``).
        n_groups: number of groups; must divide ``n_latents``.
        permute_seed: shuffle the latents (seeded) before splitting them.
        chunk_size: rows compared at a time.
    """
    u = _unit(decoder_matrix(dictionary))
    n = u.shape[0]
    if n_groups < 1 or n % n_groups:
        raise ValueError(f"n_groups={n_groups} must be a positive divisor of n_latents={n}")
    if permute_seed is not None:
        u = u[torch.randperm(n, generator=torch.Generator().manual_seed(permute_seed)).to(u.device)]
    width = n // n_groups
    total = u.new_zeros(n_groups, n_groups)
    for s, e in _blocks(n, chunk_size):
        sims = u[s:e] @ u.T
        sims[torch.arange(e - s, device=u.device), torch.arange(s, e, device=u.device)] = -float("inf")
        best = sims.view(e - s, n_groups, width).max(-1).values  # [rows, groups]
        total.index_add_(0, torch.arange(s, e, device=u.device) // width, best)
    total /= width
    return total.masked_fill_(total == -float("inf"), float("nan"))  # one-latent groups: no other latent


def geometry_table(
    dictionaries: Mapping[str, object],
    *,
    n_groups: Mapping[str, int] | None = None,
    threshold: float = DUPLICATE_THRESHOLD,
    chunk_size: int = 1024,
) -> pd.DataFrame:
    """One row per dictionary: ``n_latents``, ``nn_cos_mean``, ``nn_cos_median``,
    ``duplicate_frac`` (cosine > ``threshold``) and, for names in ``n_groups``, ``n_groups``
    and ``inter_group_sim`` (the mean off-diagonal entry of :func:`group_similarity`)."""
    rows = []
    for name, d in dictionaries.items():
        cos, _ = nearest_neighbours(d, chunk_size=chunk_size)
        row = {"name": name, "n_latents": cos.numel(), "nn_cos_mean": cos.mean().item(),
               "nn_cos_median": cos.median().item(), "duplicate_frac": (cos > threshold).double().mean().item(),
               "n_groups": 1, "inter_group_sim": float("nan")}
        g = (n_groups or {}).get(name, 1)
        if g > 1:
            s = group_similarity(d, g, chunk_size=chunk_size)
            row.update(n_groups=g, inter_group_sim=s[~torch.eye(g, dtype=torch.bool)].mean().item())
        rows.append(row)
    return pd.DataFrame(rows)
