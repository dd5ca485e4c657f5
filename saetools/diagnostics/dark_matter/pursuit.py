"""Gradient pursuit: sparse coding with a fixed dictionary, batched over tokens.

Engels, Smith & Tegmark (2024), "Decomposing the Dark Matter of Sparse Autoencoders"
(arXiv 2410.14670), §"reducing nonlinear error" (docs/engels2024_dark_matter.md), re-encode each token with an
SAE's decoder as the dictionary, at that token's own L0, to separate the error of the encoder
from the error of the dictionary. The rule, for one token (signal ``s = x - b``, dictionary
``D`` with one atom per row, weights ``w = 0``), repeated ``L0`` times:

1. residual ``r = s - w D``; inner products ``g = D r``;
2. add ``argmax_j g_j`` to the selected set ``S``;
3. restricted gradient ``g_S`` (``g`` on ``S``, zero elsewhere); ``c = g_S D``;
4. optimal step ``eta = <c, r> / <c, c>`` (0 when ``c = 0``);
5. ``w <- max(w + eta g_S, 0)``.

The reconstruction is ``w D + b``. Two variants of ``S`` exist (``variant=``):

* ``"nonzero"`` (default; the dark-matter authors' code): ``S`` is recomputed every step as
  ``{j : w_j != 0}`` plus the new argmax, so a latent clipped to 0 leaves the set;
* ``"persistent"`` (dictionary_learning's ``grad_pursuit``): ``S`` only grows.

:func:`gradient_pursuit` runs all tokens at once. A token stops after its own number of steps
(``l0[t]``), so its final number of non-zero weights is at most ``l0[t]``. Tokens are sorted by
``l0`` and processed in chunks, so each chunk runs only as many steps as its largest budget,
and each token's weights are held in ``max(l0)`` slots rather than a dense ``d_sae`` vector.
:func:`gradient_pursuit_reference` is the literal one-token-at-a-time rule with dense weights:
slow, kept as the reference that the tests and ``bench/bench_pursuit.py`` compare against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

__all__ = [
    "PursuitResult",
    "effective_decoder",
    "gradient_pursuit",
    "gradient_pursuit_reference",
    "sae_gradient_pursuit",
]

Variant = Literal["nonzero", "persistent"]


@dataclass
class PursuitResult:
    """Sparse codes from gradient pursuit, one row per token.

    Weights live in ``T = max(l0)`` slots per token: latent ``indices[t, s]`` has weight
    ``values[t, s]``; slots with ``values == 0`` are empty (their index is meaningless).
    """

    reconstruction: Float[Tensor, "n d"]
    """``w D + b`` per token."""
    indices: Int[Tensor, "n slots"]
    """Latent held by each slot."""
    values: Float[Tensor, "n slots"]
    """Its weight (``>= 0``)."""
    picks: Int[Tensor, "n slots"]
    """``argmax_j g_j`` at each step (``-1`` after the token's budget): the selection order."""
    l0: Int[Tensor, " n"]
    """Number of non-zero weights per token (``<=`` the target)."""
    variant: str
    """``"nonzero"`` or ``"persistent"`` (module docstring)."""

    def to_dense(self, d_sae: int) -> Float[Tensor, "n d_sae"]:
        """The weights as a dense ``[n, d_sae]`` matrix (memory: ``n * d_sae`` floats)."""
        out = torch.zeros(self.values.shape[0], d_sae, dtype=self.values.dtype, device=self.values.device)
        return out.scatter_add_(1, self.indices, self.values)

    def selected(self, token: int) -> set[int]:
        """The latents with non-zero weight for one token."""
        return {int(i) for i, v in zip(self.indices[token], self.values[token], strict=True) if v != 0}


def _check(x: Tensor, dictionary: Tensor, bias: Tensor | None, l0: Tensor, variant: str) -> None:
    if x.ndim != 2 or dictionary.ndim != 2 or x.shape[1] != dictionary.shape[1]:
        raise ValueError(f"x must be [n, d] and dictionary [d_sae, d] (one atom per row); got x "
                         f"{tuple(x.shape)} and dictionary {tuple(dictionary.shape)}")
    if bias is not None and bias.shape != (x.shape[1],):
        raise ValueError(f"bias must be [d] = [{x.shape[1]}], got {tuple(bias.shape)}")
    if l0.shape != (x.shape[0],) or l0.dtype.is_floating_point:
        raise ValueError(f"l0 must be an integer tensor [n] = [{x.shape[0]}] (the target L0 of each "
                         f"token), got {l0.dtype} {tuple(l0.shape)}")
    if (l0 < 0).any():
        raise ValueError("l0 must be non-negative")
    if variant not in ("nonzero", "persistent"):
        raise ValueError(f"variant must be 'nonzero' or 'persistent', got {variant!r}")


def _pursue_chunk(s: Tensor, D: Tensor, budget: Tensor, variant: str) -> tuple[Tensor, ...]:
    """Gradient pursuit for one chunk of signals ``s`` (bias already removed)."""
    n, T = s.shape[0], int(budget.max())
    rows = torch.arange(n, device=s.device)
    idx = torch.zeros(n, T, dtype=torch.long, device=s.device)
    coef = torch.zeros(n, T, dtype=s.dtype, device=s.device)
    used = torch.zeros(n, T, dtype=torch.bool, device=s.device)
    picks = torch.full((n, T), -1, dtype=torch.long, device=s.device)
    r = s.clone()
    for t in range(T):
        active = budget > t
        g = r @ D.T
        j = g.argmax(-1)
        picks[active, t] = j[active]
        # the slot of the new latent: its own if already selected, else the first free one
        # (at step t at most t slots hold non-zero weights, so one of the T is free)
        hit = used & (idx == j[:, None])
        slot = torch.where(hit.any(-1), hit.int().argmax(-1), (~used).int().argmax(-1))
        a, sl = rows[active], slot[active]
        idx[a, sl] = j[active]
        used[a, sl] = True
        atoms = D[idx]  # [n, T, d]
        g_sel = g.gather(1, idx) * used
        c = torch.einsum("nt,ntd->nd", g_sel, atoms)
        cc = (c * c).sum(-1)
        eta = torch.where(cc > 0, (c * r).sum(-1) / torch.where(cc > 0, cc, 1), 0) * active
        coef = (coef + eta[:, None] * g_sel).clamp(min=0)
        if variant == "nonzero":
            used = coef != 0
        r = s - torch.einsum("nt,ntd->nd", coef, atoms)
    return idx, coef, picks, s - r


@torch.no_grad()
def gradient_pursuit(
    x: Float[Tensor, "n d"],
    dictionary: Float[Tensor, "d_sae d"],
    l0: Int[Tensor, " n"],
    *,
    bias: Float[Tensor, " d"] | None = None,
    variant: Variant = "nonzero",
    max_elements: int = 2**25,
    progress: bool = True,
) -> PursuitResult:
    """Gradient pursuit (module docstring) for every token, each at its own target ``l0``.

    Args:
        x: signals ``[n, d]``.
        dictionary: atoms ``[d_sae, d]`` (an SAE's effective decoder, :func:`effective_decoder`).
        l0: target number of steps per token (integer, ``>= 0``).
        bias: subtracted before and added after (an SAE's ``b_dec``); default none.
        variant: ``"nonzero"`` or ``"persistent"`` selected set (module docstring).
        max_elements: bound on the floats of one chunk's ``[chunk, d_sae]`` and
            ``[chunk, max(l0), d]`` temporaries (sets the chunk size; memory, not results).
        progress: show a progress bar over chunks.

    Returns:
        A :class:`PursuitResult` with ``max(l0)`` slots per token, in the input order.
    """
    _check(x, dictionary, bias, l0, variant)
    n, d = x.shape
    D = dictionary.to(x)
    b = torch.zeros(d, dtype=x.dtype, device=x.device) if bias is None else bias.to(x)
    budget = l0.to(x.device)
    T = max(int(budget.max()) if n else 0, 1)
    chunk = max(1, max_elements // max(D.shape[0], T * d))
    order = torch.argsort(budget, stable=True)  # similar budgets share a chunk
    idx = torch.zeros(n, T, dtype=torch.long, device=x.device)
    val = torch.zeros(n, T, dtype=x.dtype, device=x.device)
    picks = torch.full((n, T), -1, dtype=torch.long, device=x.device)
    recon = torch.zeros_like(x)
    starts = range(0, n, chunk)
    for i in tqdm(starts, desc="gradient pursuit", leave=False, disable=not progress or len(starts) < 2):
        sel = order[i : i + chunk]
        bud = budget[sel]
        if int(bud.max()) == 0:
            continue
        ci, cv, cp, cr = _pursue_chunk(x[sel] - b, D, bud, variant)
        idx[sel, : ci.shape[1]], val[sel, : ci.shape[1]], picks[sel, : ci.shape[1]] = ci, cv, cp
        recon[sel] = cr
    return PursuitResult(reconstruction=recon + b, indices=idx, values=val, picks=picks,
                         l0=(val != 0).sum(-1), variant=variant)


@torch.no_grad()
def gradient_pursuit_reference(
    x: Float[Tensor, "n d"],
    dictionary: Float[Tensor, "d_sae d"],
    l0: Int[Tensor, " n"],
    *,
    bias: Float[Tensor, " d"] | None = None,
    variant: Variant = "nonzero",
) -> tuple[Float[Tensor, "n d_sae"], list[list[int]]]:
    """The rule applied literally, one token at a time with dense weights (slow; for tests).

    Returns:
        ``(weights [n, d_sae], picks)``: dense weights and, per token, the argmax of each step.
    """
    _check(x, dictionary, bias, l0, variant)
    D = dictionary.to(x)
    b = torch.zeros(x.shape[1], dtype=x.dtype) if bias is None else bias.to(x)
    weights = torch.zeros(x.shape[0], D.shape[0], dtype=x.dtype)
    all_picks = []
    for t in range(x.shape[0]):
        s = x[t] - b
        w = torch.zeros(D.shape[0], dtype=x.dtype)
        selected = torch.zeros(D.shape[0], dtype=torch.bool)
        picks = []
        for _ in range(int(l0[t])):
            r = s - w @ D
            g = D @ r
            j = int(g.argmax())
            picks.append(j)
            if variant == "nonzero":
                selected = w != 0
            selected[j] = True
            g_sel = torch.where(selected, g, torch.zeros_like(g))
            c = g_sel @ D
            cc = c @ c
            eta = (c @ r) / cc if cc > 0 else 0.0
            w = (w + eta * g_sel).clamp(min=0)
        weights[t] = w
        all_picks.append(picks)
    return weights, all_picks


@torch.no_grad()
def effective_decoder(sae, *, atol: float = 1e-4) -> tuple[Float[Tensor, "d_sae d"], Float[Tensor, " d"]]:
    """The affine map an SAE's ``decode`` applies: ``decode(f) = f D + b``.

    Read off ``decode`` itself (``b = decode(0)``, row ``j`` of ``D`` = ``decode(e_j) - b``), so
    decoder-norm rescaling (TopK's ``rescale_acts_by_decoder_norm``), folded normalisation and
    any other linear post-processing are included. Outputs of ``hook_z`` SAEs are flattened.

    Raises:
        ValueError: ``decode`` is not affine (e.g. ``normalize_activations="layer_norm"``, whose
            output scale depends on the input), checked on random sparse codes to ``atol``
            relative to the output norm.
    """
    h = sae.cfg.d_sae
    dev = sae.W_dec.device
    zero = torch.zeros(1, h, dtype=sae.W_dec.dtype, device=dev)
    b = sae.decode(zero).reshape(-1)
    rows = []
    for i in range(0, h, 4096):
        eye = torch.eye(h, dtype=zero.dtype, device=dev)[i : i + 4096]
        rows.append(sae.decode(eye).reshape(eye.shape[0], -1) - b)
    D = torch.cat(rows)
    gen = torch.Generator().manual_seed(0)
    # 5 % of the latents active per probe code, and at least 2: a small d_sae must not get a zero
    # code, on which every decode looks affine
    active = torch.rand(4, h, generator=gen).topk(min(h, max(2, round(0.05 * h))), dim=1).indices
    f = torch.zeros(4, h).scatter_(1, active, torch.rand(4, h, generator=gen)).to(zero)
    want = sae.decode(f).reshape(4, -1)
    err = (want - (f @ D + b)).norm() / want.norm().clamp(min=1e-12)
    if err > atol:
        raise ValueError(f"the SAE's decode is not affine (relative error {err:.2e} on a random code): "
                         "gradient pursuit needs a fixed dictionary; use an SAE with "
                         "normalize_activations='none' or folded scaling")
    return D, b


@torch.no_grad()
def sae_gradient_pursuit(sae, x: Float[Tensor, "n d"], *, variant: Variant = "nonzero",
                         max_elements: int = 2**25, progress: bool = True) -> PursuitResult:
    """Re-encode ``x`` with ``sae``'s decoder as the dictionary, each token at the SAE's own L0 there.

    The target of token ``t`` is the number of non-zero latents of ``sae.encode(x[t])``; the
    dictionary and bias are :func:`effective_decoder`'s. See :func:`gradient_pursuit`.
    """
    D, b = effective_decoder(sae)
    l0 = torch.cat([(sae.encode(x[i : i + 8192].to(D.device)) != 0).sum(-1)
                    for i in range(0, x.shape[0], 8192)])
    return gradient_pursuit(x.to(D.device), D, l0, bias=b, variant=variant,
                            max_elements=max_elements, progress=progress)
