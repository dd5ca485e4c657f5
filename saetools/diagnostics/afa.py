"""Approximate feature activation (AFA), ZF plots and epsilon_LBO (Lee et al. 2025, arXiv 2503.24277).

Theory. If a dense activation is ``z = sum_i f_i w_i`` with unit-norm directions that are
epsilon-quasi-orthogonal (``|<w_i, w_j>| <= epsilon`` for ``i != j``), then
``||z||^2 = ||f||^2 + sum_{i != j} f_i f_j <w_i, w_j>`` and the cross term is at most
``epsilon (||f||_1^2 - ||f||_2^2) <= epsilon (h - 1) ||f||_2^2`` in absolute value, so

    (1 - epsilon (h - 1)) ||f||^2  <=  ||z||^2  <=  (1 + epsilon (h - 1)) ||f||^2.

The **AFA** is ``||z||`` used as an estimate of ``||f||`` (:func:`afa`). Written with
``c = epsilon (h - 1)``, the feature norm lies in the band
``||z|| / sqrt(1 + c) <= ||f|| <= ||z|| / sqrt(1 - c)`` (:func:`afa_bounds`; no upper limit
once ``c >= 1``); the paper draws the bands ``c`` in ``{0.25, 0.5, 1}``.

What an SAE contributes (the authors' code). For one token with SAE latents ``f`` the
*decoder-scaled code* is

    f~ = [f_1 ||d_1||, ..., f_h ||d_h||, ||b_dec||]

where ``d_i`` is the *effective* decoder row of latent ``i`` (``W_dec[i]``, or
``W_dec[i] / ||W_dec[i]||`` for sae-lens SAEs with ``rescale_acts_by_decoder_norm``), so
``f~_i`` is the norm of latent ``i``'s contribution to the reconstruction. **The decoder
bias enters as one more feature**, direction ``b_dec / ||b_dec||`` with activation
``||b_dec||`` (``include_bias=False`` leaves it out). ``z`` is the SAE's input in the SAE's
own space: the raw hook activation for SAEs with ``normalize_activations`` ``"none"`` (all
sae-lens pretrained and saetools bundled SAEs) or ``"expected_average_only_in"`` (scaled
outside the SAE), the per-token standardised activation for ``"layer_norm"`` SAEs and the
rescaled one for ``"constant_norm_rescale"``.

**epsilon_LBO** of a token is the smallest epsilon consistent with the pair of norms
(:func:`eps_lbo`): ``eps_LBO = | ||z||^2 - ||f~||^2 | / D`` with

* ``denominator="dictionary"`` (the paper): ``D = (h - 1) ||f~||^2``, ``h = d_sae`` (the
  appended bias is not counted in ``h``, as in the authors' code);
* ``"active"``: ``D = (L0 - 1) ||f~||^2`` with ``L0`` the non-zero entries of ``f~`` (the
  bias entry included) -- the tighter variant docs/lee2025_top_afa.md mentions;
* ``"l1"``: ``D = ||f~||_1^2 - ||f~||_2^2``, the exact cross-term bound (tightest).

Each is a lower bound on the coherence of any dictionary that reproduces ``z`` exactly from
``f~``: ``dictionary <= active <= l1 <= epsilon``. Tokens whose ``D`` is 0 get NaN. An SAE's
epsilon_LBO is the median over tokens (:meth:`ZFData.summary` also gives the mean and 90th
percentile). Points with ``||f~|| > ||z||`` are *over-activated*, below the diagonal
*under-activated*.

See ``docs/lee2025_top_afa.md`` for the method and where saetools differs from the authors' code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from saetools.evals import flat_hook_z

__all__ = [
    "DEFAULT_BANDS",
    "ZFData",
    "afa",
    "afa_bounds",
    "eps_lbo",
    "eps_lbo_table",
    "sae_input_space",
    "zf_data",
    "zf_data_from_codes",
    "zf_plot",
    "zf_violin_plot",
]

Denominator = Literal["dictionary", "active", "l1"]
DEFAULT_BANDS = (0.25, 0.5, 1.0)
"""Values of ``c = epsilon (h - 1)`` whose bands the paper draws."""


def afa(z: Float[Tensor, "*batch d"], center: Float[Tensor, " d"] | None = None) -> Float[Tensor, "*batch"]:
    """Linear AFA: ``||z - center||_2`` per token (``center`` defaults to 0; top-AFA uses ``b_dec``)."""
    return (z if center is None else z - center).norm(dim=-1)


def afa_bounds(z_norm, c) -> tuple[np.ndarray, np.ndarray]:
    """Band for ``||f||`` implied by ``||z||`` and ``c = epsilon (h - 1)``: ``(||z|| / sqrt(1 + c), ||z|| / sqrt(1 - c))``.

    ``c`` may be a scalar or one value per token (e.g. the tighter ``epsilon (L0 - 1)``). The
    upper end is ``inf`` where ``c >= 1`` (the lower bound on ``||z||^2`` is then vacuous).
    """
    z_norm, c = np.asarray(z_norm, dtype=float), np.asarray(c, dtype=float)
    if (c < 0).any():
        raise ValueError("c = epsilon (h - 1) must be >= 0")
    with np.errstate(divide="ignore", invalid="ignore"):
        upper = np.where(c < 1, z_norm / np.sqrt(np.clip(1 - c, 1e-300, None)), np.inf)
    return z_norm / np.sqrt(1 + c), upper


def eps_lbo(
    z: Float[Tensor, "n d"] | Float[Tensor, " n"],
    f_tilde: Float[Tensor, "n m"],
    *,
    h: int | None = None,
    denominator: Denominator = "dictionary",
) -> Float[Tensor, " n"]:
    """Per-token epsilon_LBO (module docstring) from dense activations and decoder-scaled codes.

    Args:
        z: dense activations ``[n, d]`` (or their norms ``[n]``).
        f_tilde: decoder-scaled codes ``[n, m]`` (absolute values are used); include the
            decoder-bias column yourself if it belongs to the model.
        h: dictionary size for ``denominator="dictionary"`` (default ``m``).
        denominator: ``"dictionary"`` (paper), ``"active"`` or ``"l1"``.

    Returns:
        float64 ``[n]``; NaN where the denominator is 0.
    """
    if z.ndim not in (1, 2) or f_tilde.ndim != 2:
        raise ValueError(f"eps_lbo needs z [n, d] (or norms [n]) and f_tilde [n, m]; got {tuple(z.shape)} "
                         f"and {tuple(f_tilde.shape)}")
    if denominator == "dictionary" and (f_tilde.shape[-1] if h is None else h) < 2:
        raise ValueError(f"eps_lbo with denominator='dictionary' needs h >= 2 latents, got h={h}")
    z_sq = (z.double().pow(2).sum(-1) if z.ndim == 2 else z.double().pow(2))
    f = f_tilde.double().abs()
    if z_sq.shape[0] != f.shape[0]:
        raise ValueError(f"z has {z_sq.shape[0]} tokens but f_tilde has {f.shape[0]}")
    f_sq = f.pow(2).sum(-1)
    if denominator == "dictionary":
        den = ((f.shape[-1] if h is None else h) - 1) * f_sq
    elif denominator == "active":
        den = ((f != 0).sum(-1) - 1).double() * f_sq
    elif denominator == "l1":
        den = f.sum(-1).pow(2) - f_sq
    else:
        raise ValueError(f"denominator must be 'dictionary', 'active' or 'l1', got {denominator!r}")
    out = (z_sq - f_sq).abs() / den
    return torch.where(den > 0, out, torch.full_like(out, float("nan")))


@dataclass
class ZFData:
    """Per-token AFA quantities of one dictionary on one set of activations (module docstring)."""

    name: str
    z_norm: np.ndarray
    """``||z||`` per token (the AFA)."""
    f_norm: np.ndarray
    """``||f~||`` per token (decoder-scaled code, bias included when ``include_bias``)."""
    eps_lbo: np.ndarray
    """Per-token epsilon_LBO with :attr:`denominator`."""
    l0: np.ndarray
    """Active latents per token (the bias entry not counted)."""
    recon_error: np.ndarray
    """Normalised reconstruction error ``||z - z_hat||^2 / ||z||^2`` per token (same space as ``z``)."""
    h: int
    """Dictionary size (latents, without the bias)."""
    denominator: str
    include_bias: bool

    @property
    def ratio(self) -> np.ndarray:
        """``||f~|| / ||z||`` per token (1 on the diagonal of the ZF plot; NaN where both are 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.f_norm / self.z_norm

    def frac_in_band(self, c: float) -> float:
        """Fraction of tokens whose ``||f~||`` lies in the band of ``c = epsilon (h - 1)`` (:func:`afa_bounds`)."""
        lo, hi = afa_bounds(self.z_norm, c)
        return float(np.mean((self.f_norm >= lo) & (self.f_norm <= hi)))

    def summary(self, bands: Sequence[float] = DEFAULT_BANDS) -> dict[str, float]:
        """One row: medians over tokens (``eps_lbo`` is the SAE's epsilon_LBO), band fractions, L0."""
        row = {
            "eps_lbo": float(np.nanmedian(self.eps_lbo)),
            "eps_lbo_mean": float(np.nanmean(self.eps_lbo)),
            "eps_lbo_p90": float(np.nanpercentile(self.eps_lbo, 90)),
            "ratio_median": float(np.nanmedian(self.ratio)),
            "frac_over_activated": float(np.mean(self.f_norm > self.z_norm)),
            "recon_error_median": float(np.nanmedian(self.recon_error)),
            "l0": float(np.mean(self.l0)),
            "h": self.h,
            "n_tokens": int(self.z_norm.shape[0]),
        }
        for c in bands:
            row[f"in_band_{c:g}"] = self.frac_in_band(c)
        return row


def zf_data_from_codes(
    z: Float[Tensor, "n d"],
    f: Float[Tensor, "n h"],
    W_dec: Float[Tensor, "h d"],
    b_dec: Float[Tensor, " d"] | None = None,
    *,
    name: str = "dictionary",
    include_bias: bool = True,
    denominator: Denominator = "dictionary",
) -> ZFData:
    """AFA quantities for codes ``f`` of a raw dictionary ``z ~ f @ W_dec + b_dec`` (e.g. ground truth).

    ``f~_i = f_i ||W_dec[i]||``, plus ``||b_dec||`` when ``b_dec`` is given and ``include_bias``.
    """
    if W_dec.ndim != 2 or f.shape[-1] != W_dec.shape[0] or z.shape[-1] != W_dec.shape[1]:
        raise ValueError(f"need z [n, d], f [n, h], W_dec [h, d]; got {tuple(z.shape)}, {tuple(f.shape)}, "
                         f"{tuple(W_dec.shape)}")
    if z.shape[0] != f.shape[0]:
        raise ValueError(f"z has {z.shape[0]} tokens but f has {f.shape[0]}")
    z, f, W_dec = z.double(), f.double(), W_dec.double()
    bias = torch.zeros(W_dec.shape[1], dtype=torch.float64) if b_dec is None else b_dec.double()
    return _zf(name, z, f, W_dec.norm(dim=-1), f @ W_dec + bias, bias.norm() if include_bias else None,
               W_dec.shape[0], denominator)


def _zf(name, z, f, dec_norms, z_hat, bias_norm, h, denominator) -> ZFData:
    f_tilde = f.abs() * dec_norms
    if bias_norm is not None:
        f_tilde = torch.cat([f_tilde, bias_norm.expand(f.shape[0], 1)], dim=-1)
    z_sq = z.pow(2).sum(-1)
    return ZFData(
        name=name, z_norm=z_sq.sqrt().numpy(), f_norm=f_tilde.norm(dim=-1).numpy(),
        eps_lbo=eps_lbo(z, f_tilde, h=h, denominator=denominator).numpy(),
        l0=(f != 0).sum(-1).numpy(), recon_error=((z - z_hat).pow(2).sum(-1) / z_sq).numpy(),  # NaN if z = 0
        h=h, denominator=denominator, include_bias=bias_norm is not None,
    )


def sae_input_space(sae, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_in"]:
    """``x`` in the space the SAE's dictionary reconstructs (sae-lens's run-time normalisation).

    ``"layer_norm"``: ``(x - mean) / (std + 1e-5)`` (unbiased std); ``"constant_norm_rescale"``:
    ``x sqrt(d_in) / ||x||``; any other mode: ``x`` unchanged (sae-lens applies none at run time).
    """
    mode = sae.cfg.normalize_activations
    if mode == "layer_norm":
        xc = x - x.mean(dim=-1, keepdim=True)
        return xc / (xc.std(dim=-1, keepdim=True) + 1e-5)
    if mode == "constant_norm_rescale":
        return x * (sae.cfg.d_in ** 0.5) / x.norm(dim=-1, keepdim=True)
    return x


@torch.no_grad()
def zf_data(
    sae,
    acts: Float[Tensor, "n d_in"],
    *,
    name: str | None = None,
    include_bias: bool = True,
    denominator: Denominator = "dictionary",
    batch_size: int = 4096,
) -> ZFData:
    """AFA quantities of a sae-lens SAE (any of saetools's, bundled or pretrained) on activations.

    Args:
        sae: a sae-lens ``SAE`` (or ``TrainingSAE``) whose reconstruction is
            ``f @ W_dec + b_dec`` (standard, gated, JumpReLU, TopK, BatchTopK, top-AFA, ...).
        acts: activations at the SAE's hook, one row per token (``[n, d_in]``; heads flattened).
        name: label (default: the architecture).
        include_bias: append ``||b_dec||`` to the code (the paper's ZF plot does).
        denominator: epsilon_LBO denominator (module docstring).
        batch_size: tokens encoded at once.
    """
    if getattr(sae.cfg.metadata, "hook_name_out", None) is not None:
        raise ValueError("zf_data needs an SAE that reconstructs its own input; this is a transcoder "
                         f"(reads {sae.cfg.metadata.hook_name}, writes {sae.cfg.metadata.hook_name_out})")
    if acts.ndim != 2 or acts.shape[-1] != sae.cfg.d_in:
        raise ValueError(f"acts must be [n, d_in={sae.cfg.d_in}] (flatten heads for hook_z SAEs), "
                         f"got {tuple(acts.shape)}")
    W = sae.W_dec.detach().double()
    dec_norms = W.norm(dim=-1)
    scale = 1 / dec_norms.clamp(min=1e-8) if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False) else None
    b_dec = sae.b_dec.detach().double()
    parts: list[ZFData] = []
    with flat_hook_z(sae):
        for i in range(0, acts.shape[0], batch_size):
            x = acts[i : i + batch_size].to(sae.device, sae.dtype)
            f = sae.encode(x)
            f = (f.to_dense() if f.is_sparse else f).double().cpu()
            if scale is not None:  # effective decoder rows W_dec[i] / ||W_dec[i]||
                f = f * scale.cpu()
            z = sae_input_space(sae, x).double().cpu()
            parts.append(_zf("", z, f, dec_norms.cpu(), f @ W.cpu() + b_dec.cpu(),
                             b_dec.norm().cpu() if include_bias else None, sae.cfg.d_sae, denominator))
    cat = {k: np.concatenate([getattr(p, k) for p in parts])
           for k in ("z_norm", "f_norm", "eps_lbo", "l0", "recon_error")}
    return ZFData(name=name or sae.cfg.architecture(), h=sae.cfg.d_sae, denominator=denominator,
                  include_bias=include_bias, **cat)


def _as_list(data) -> list[ZFData]:
    if isinstance(data, ZFData):
        return [data]
    if isinstance(data, Mapping):
        return list(data.values())
    return list(data)


def eps_lbo_table(data: ZFData | Sequence[ZFData] | Mapping[str, ZFData],
                  bands: Sequence[float] = DEFAULT_BANDS) -> pd.DataFrame:
    """One row per dictionary: :meth:`ZFData.summary` (``eps_lbo`` = median per-token epsilon_LBO).

    Medians skip NaN tokens (``z = 0`` and ``f~ = 0``, or a zero epsilon_LBO denominator).
    """
    return pd.DataFrame([{"name": d.name, **d.summary(bands)} for d in _as_list(data)]).set_index("name")


def zf_plot(
    data: ZFData | Sequence[ZFData] | Mapping[str, ZFData],
    *,
    bands: Sequence[float] = DEFAULT_BANDS,
    ncols: int = 3,
    max_points: int = 4000,
    seed: int = 0,
    axes=None,
):
    """ZF plot per dictionary: ``||z||`` (AFA, x) against ``||f~||`` (y), with the diagonal and bands.

    Each band ``c = epsilon (h - 1)`` is drawn as its two edges ``y = x / sqrt(1 + c)`` and
    ``y = x / sqrt(1 - c)`` (the latter only for ``c < 1``). Points are a seeded subsample of
    at most ``max_points`` tokens. Returns the figure.
    """
    import matplotlib.pyplot as plt

    items = _as_list(data)
    if axes is None:
        rows = -(-len(items) // ncols)
        fig, axes = plt.subplots(rows, min(ncols, len(items)), figsize=(4.2 * min(ncols, len(items)), 3.8 * rows),
                                 squeeze=False)
        axes = axes.ravel()
    else:
        axes = np.atleast_1d(axes).ravel()
        fig = axes[0].figure
    rng = np.random.default_rng(seed)
    for ax, d in zip(axes, items, strict=False):
        idx = rng.permutation(len(d.z_norm))[:max_points]
        ax.scatter(d.z_norm[idx], d.f_norm[idx], s=3, alpha=0.35, lw=0, color="C0")
        hi = float(max(d.z_norm.max(), d.f_norm.max())) * 1.05
        grid = np.linspace(0, hi, 50)
        ax.plot(grid, grid, color="k", lw=1, label="||f~|| = ||z||")
        for j, c in enumerate(bands):
            lo_edge, hi_edge = afa_bounds(grid, c)
            ax.plot(grid, lo_edge, ls="--", lw=0.8, color=f"C{j + 1}", label=f"eps(h-1) = {c:g}")
            if c < 1:
                ax.plot(grid, hi_edge, ls="--", lw=0.8, color=f"C{j + 1}")
        ax.set(xlim=(0, hi), ylim=(0, hi), xlabel="||z|| (AFA)", ylabel="||f~|| (decoder-scaled code)",
               title=f"{d.name}\nmedian eps_LBO = {np.nanmedian(d.eps_lbo):.2e}")
    for ax in axes[len(items):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def zf_violin_plot(data: ZFData | Sequence[ZFData] | Mapping[str, ZFData], *, clip_percentile: float = 99):
    """Paired violins per dictionary (the paper's per-layer figure): normalised reconstruction
    error ``||z - z_hat||^2 / ||z||^2`` (left) and epsilon_LBO (right), each clipped at its
    ``clip_percentile``-th percentile, on a log10 scale. Returns the figure."""
    import matplotlib.pyplot as plt

    items = _as_list(data)
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.3 * len(items)) * 2, 3.8))
    for ax, key, label in ((axes[0], "recon_error", "||z - z_hat||^2 / ||z||^2"),
                           (axes[1], "eps_lbo", f"eps_LBO ({items[0].denominator})")):
        vals = []
        for d in items:
            v = getattr(d, key)
            v = v[np.isfinite(v)]
            v = np.clip(v, None, np.percentile(v, clip_percentile)) if v.size else np.zeros(1)
            vals.append(np.log10(np.maximum(v, 1e-12)))  # exact zeros (e.g. a perfect dictionary) at 1e-12
        ax.violinplot(vals, showmedians=True)
        ax.set_xticks(range(1, len(items) + 1), [d.name for d in items], rotation=30, ha="right", fontsize=8)
        ax.set(ylabel=f"log10 {label}")
    fig.tight_layout()
    return fig
