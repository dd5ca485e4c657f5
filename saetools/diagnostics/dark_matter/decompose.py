"""The decomposition ``x = Sae(x) + LinearError(x) + NonlinearError(x)`` (Engels et al. 2024).

Which tokens (the documented rule): :func:`position_mask` drops the first ``drop_first``
positions of every context and any token the caller's ``keep`` mask excludes (BOS, padding).
Early positions (BOS / attention-sink tokens) have outsized norms and atypical errors, and
leaving them in inflates the norm R^2; the paper drops 200 of 1024 positions on
Gemma, 10 of 512 on GPT-2.

See ``docs/engels2024_dark_matter.md`` for the method and where saetools differs from the authors'
code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from saetools.diagnostics.dark_matter.regression import (
    LinearFit,
    fit_linear,
    fvu,
    norm_r2,
    pooled_r2,
    split_halves,
    vector_r2,
)
from saetools.hooks import check_hook_names

__all__ = [
    "DarkMatterDecomposition", "collect_hooks", "decompose", "decompose_reconstruction", "position_mask",
    "sae_reconstruct",
]

X = Float[Tensor, "n d"]


def position_mask(tokens: Int[Tensor, "batch pos"], *, drop_first: int,
                  keep: Bool[Tensor, "batch pos"] | None = None) -> Bool[Tensor, "batch pos"]:
    """True at the tokens analysed: context position ``>= drop_first`` and ``keep`` (if given)."""
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, pos], got {tuple(tokens.shape)}")
    if drop_first < 0 or drop_first >= tokens.shape[1]:
        raise ValueError(f"drop_first must be in [0, {tokens.shape[1]}) for contexts of {tokens.shape[1]} "
                         f"tokens, got {drop_first}")
    if keep is not None and keep.shape != tokens.shape:
        raise ValueError(f"keep must have the tokens' shape {tuple(tokens.shape)}, got {tuple(keep.shape)}")
    mask = torch.arange(tokens.shape[1], device=tokens.device)[None, :] >= drop_first
    mask = mask.expand(tokens.shape[0], -1)
    return mask & keep.to(tokens.device) if keep is not None else mask.clone()


@torch.no_grad()
def collect_hooks(model, tokens: Int[Tensor, "batch pos"], hook_names: Sequence[str],
                  mask: Bool[Tensor, "batch pos"], *, batch_size: int = 64) -> dict[str, X]:
    """Activations of several hooks in one pass per batch, at the ``mask`` tokens, ``[n, d]`` each.

    Head hooks (``hook_z``, ``[batch, pos, head, d_head]``) are flattened to ``head * d_head``.
    Rows are aligned across hooks (row ``t`` is the same token everywhere).
    """
    check_hook_names(model, list(hook_names))
    if mask.shape != tokens.shape:
        raise ValueError(f"mask must have the tokens' shape {tuple(tokens.shape)}, got {tuple(mask.shape)}")
    layers = [int(h.split(".")[1]) for h in hook_names if h.startswith("blocks.")]
    stop = max(layers) + 1 if len(layers) == len(hook_names) else None
    out: dict[str, list[Tensor]] = {h: [] for h in hook_names}
    for i in tqdm(range(0, tokens.shape[0], batch_size), desc="collect activations", leave=False):
        chunk = tokens[i : i + batch_size].to(model.cfg.device)
        _, cache = model.run_with_cache(chunk, names_filter=list(hook_names), stop_at_layer=stop)
        m = mask[i : i + batch_size].to(chunk.device)
        for h in hook_names:
            act = cache[h]
            out[h].append((act.flatten(-2) if act.ndim == 4 else act)[m].float().cpu())
    return {h: torch.cat(v) for h, v in out.items()}


@torch.no_grad()
def sae_reconstruct(sae, x: X, *, batch_size: int = 8192) -> tuple[X, Int[Tensor, " n"]]:
    """``(Sae(x), L0 per token)``: ``sae.decode(sae.encode(x))`` and the number of non-zero latents."""
    if x.ndim != 2 or x.shape[-1] != sae.cfg.d_in:
        raise ValueError(f"x must be [n, d_in={sae.cfg.d_in}] (flatten hook_z heads), got {tuple(x.shape)}")
    outs, l0s = [], []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size].to(sae.W_dec.device, sae.W_dec.dtype)
        f = sae.encode(xb)
        outs.append(sae.decode(f).reshape(xb.shape).to(x))
        l0s.append((f != 0).sum(-1).cpu())
    return torch.cat(outs), torch.cat(l0s)


@dataclass
class DarkMatterDecomposition:
    """``x = Sae(x) + LinearError(x) + NonlinearError(x)`` for one reconstruction of one token set.

    Scores are out of sample: ``W*`` fit on ``fit_idx``, scores measured on ``eval_idx``.
    """

    x: X
    """The activations analysed, one row per token."""
    sae_out: X
    """``Sae(x)`` (any reconstruction: an SAE's, gradient pursuit's, a synthetic one)."""
    linear: LinearFit
    """``SaeError ≈ x W* (+ b)`` fit on ``fit_idx``."""
    fit_idx: Tensor
    """Rows ``W*`` (and the norm regression) were fit on."""
    eval_idx: Tensor
    """Rows every score is measured on."""
    vector_r2: float
    """:func:`~saetools.diagnostics.dark_matter.vector_r2` of ``LinearError`` as a prediction of ``SaeError``."""
    pooled_r2: float
    """:func:`~saetools.diagnostics.dark_matter.pooled_r2` of the same."""
    norm_r2: float
    """:func:`~saetools.diagnostics.dark_matter.norm_r2`: R^2 of predicting ``||SaeError||^2`` from ``x``."""
    l0: Tensor | None = None
    """Active latents per token, when known."""
    meta: dict = field(default_factory=dict)
    """Free-form provenance (e.g. the SAE's name)."""

    @property
    def sae_error(self) -> X:
        """``x - Sae(x)``."""
        return self.x - self.sae_out

    @cached_property
    def linear_error(self) -> X:
        """``x W* (+ b)``."""
        return self.linear.predict(self.x)

    @property
    def nonlinear_error(self) -> X:
        """``SaeError - LinearError``."""
        return self.sae_error - self.linear_error

    def fvu_sae(self) -> float:
        """FVU of ``Sae(x)`` on the eval half."""
        e = self.eval_idx
        return fvu(self.x[e], self.sae_out[e])

    def fvu_sae_linear(self) -> float:
        """FVU of ``Sae(x) + LinearError(x)`` on the eval half: the nonlinear error's share of ``x``."""
        e = self.eval_idx
        return fvu(self.x[e], self.sae_out[e] + self.linear_error[e])

    def fvu_sae_nonlinear(self) -> float:
        """FVU of ``Sae(x) + NonlinearError(x)`` on the eval half: the linear error's share of ``x``."""
        e = self.eval_idx
        return fvu(self.x[e], self.x[e] - self.linear_error[e])

    def summary(self) -> dict[str, float]:
        """The scores and FVUs as one dict (a table row)."""
        out = {"vector_r2": self.vector_r2, "pooled_r2": self.pooled_r2, "norm_r2": self.norm_r2,
               "fvu_sae": self.fvu_sae(), "fvu_sae_linear": self.fvu_sae_linear(),
               "fvu_sae_nonlinear": self.fvu_sae_nonlinear(), "n_fit": len(self.fit_idx),
               "n_eval": len(self.eval_idx)}
        if self.l0 is not None:
            out["l0"] = float(self.l0.double().mean())
        return out


def decompose_reconstruction(x: X, x_hat: X, *, seed: int = 0, split: tuple[Tensor, Tensor] | None = None,
                             intercept: bool = False, ridge: float = 0.0, norm_intercept: bool = False,
                             l0: Tensor | None = None) -> DarkMatterDecomposition:
    """Split ``x - x_hat`` into its least-squares linear prediction from ``x`` and the rest.

    Args:
        x: activations ``[n, d]`` (the analysed tokens only); x_hat: their reconstruction.
        seed: picks the halves (:func:`~saetools.diagnostics.dark_matter.split_halves`) unless
            ``split = (fit_idx, eval_idx)`` is given (use one split for a whole SAE series).
        intercept: fit ``SaeError ≈ x W + b`` instead of ``x W`` (the paper: no intercept).
        ridge: ridge penalty of the fit (default 0: plain least squares, as in the paper).
        norm_intercept: fit ``||SaeError||^2 ≈ x w + c`` instead of ``x w`` (the paper's main
            figure and the authors' code: no intercept). Its R^2 is measured around the mean
            either way, so the intercept-free score is never the higher one.
        l0: optional active latents per token, kept for the summary.

    Raises:
        ValueError: mismatched shapes, or fewer than ``4 d`` fit tokens (a ``d x d``
            regression on so few tokens overfits).
    """
    if x.shape != x_hat.shape or x.ndim != 2:
        raise ValueError(f"x and x_hat must both be [n, d]; got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    fit_idx, eval_idx = split if split is not None else split_halves(x.shape[0], seed=seed)
    if len(fit_idx) < 4 * x.shape[1] or len(eval_idx) < 2:
        raise ValueError(f"{len(fit_idx)} fit tokens for a {x.shape[1]}-dimensional regression would overfit; "
                         f"use at least {4 * x.shape[1]} (the paper fits on 150k tokens for d = 3584)")
    err = x - x_hat
    lin = fit_linear(x[fit_idx], err[fit_idx], intercept=intercept, ridge=ridge)
    pred = lin.predict(x[eval_idx])
    nr2, _ = norm_r2(x, err, fit_idx, eval_idx, ridge=ridge, intercept=norm_intercept)
    return DarkMatterDecomposition(x=x, sae_out=x_hat, linear=lin, fit_idx=fit_idx, eval_idx=eval_idx,
                                   vector_r2=vector_r2(err[eval_idx], pred),
                                   pooled_r2=pooled_r2(err[eval_idx], pred), norm_r2=nr2, l0=l0)


def decompose(sae, x: X, *, seed: int = 0, split: tuple[Tensor, Tensor] | None = None,
              intercept: bool = False, ridge: float = 0.0, norm_intercept: bool = False) -> DarkMatterDecomposition:
    """:func:`decompose_reconstruction` with ``x_hat = Sae(x)`` (:func:`sae_reconstruct`).

    ``x`` holds the analysed tokens only (:func:`position_mask` is the rule on early
    positions); one row per token, float32 recommended (fp16 errors are noisy).
    """
    x_hat, l0 = sae_reconstruct(sae, x)
    return decompose_reconstruction(x, x_hat, seed=seed, split=split, intercept=intercept, ridge=ridge,
                                    norm_intercept=norm_intercept, l0=l0)
