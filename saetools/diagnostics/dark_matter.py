"""SAE dark matter: the linearly predictable and the nonlinear parts of an SAE's error.

Engels, Smith & Tegmark (2024), "Decomposing the Dark Matter of Sparse Autoencoders"
(arXiv 2410.14670; NOTES §4). For activations ``x`` (one row per token) and an SAE:

* ``Sae(x)`` is the reconstruction (``b_dec`` included); ``SaeError(x) = x - Sae(x)``;
* ``W*`` is the least-squares map from ``x`` to the error, fit on one half of the tokens
  (:func:`split_halves`): ``LinearError(x) = x W*`` and ``NonlinearError(x) = SaeError(x) - x W*``,
  so ``x = Sae(x) + LinearError(x) + NonlinearError(x)`` exactly;
* every R^2 is scored on the *other* half (out of sample; :func:`vector_r2`, :func:`norm_r2`);
* the CE cost of each part: :func:`splice_ce` splices ``Sae + LinearError`` and
  ``Sae + NonlinearError`` into the model in a scoped hook.

Which tokens: :func:`position_mask` drops the first ``drop_first`` positions of every context
(BOS / attention-sink positions have outsized norms and, on short contexts, atypically small
errors; the paper drops 200 of 1024 on Gemma, 10 of 512 on GPT-2) and any token the caller's
``keep`` mask excludes (padding, mid-row BOS). Also here: cross-width matrices of per-token
error norms (:func:`norm_r2_matrix`), regressions from earlier components
(:func:`component_regressions`), the power-law-plus-constant fit (:func:`fit_power_law`), the
stacked width decomposition (:func:`scaling_regions`) and the synthetic noise-injection model
(:func:`noise_injection`). Gradient pursuit lives in :mod:`saetools.pursuit`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from saetools.evals import explained_variance
from saetools.hooks import check_hook_names

__all__ = [
    "DarkMatterDecomposition", "LinearFit", "PowerLawFit", "collect_hooks", "component_regressions",
    "decompose", "decompose_reconstruction", "decomposition_hook", "fit_linear", "fit_power_law", "fvu",
    "noise_injection", "norm_r2", "norm_r2_matrix", "pooled_r2", "position_mask", "r2_per_dim",
    "sae_reconstruct", "scaling_regions", "splice_ce", "split_halves", "vector_r2",
]

X = Float[Tensor, "n d"]


# ---- tokens -----------------------------------------------------------------------------------

def position_mask(tokens: Int[Tensor, "batch pos"], *, drop_first: int,
                  keep: Bool[Tensor, "batch pos"] | None = None) -> Bool[Tensor, "batch pos"]:
    """True at the tokens analysed: context position ``>= drop_first`` and ``keep`` (if given)."""
    if drop_first < 0 or drop_first >= tokens.shape[1]:
        raise ValueError(f"drop_first must be in [0, {tokens.shape[1]}) for contexts of {tokens.shape[1]} "
                         f"tokens, got {drop_first}")
    mask = torch.arange(tokens.shape[1], device=tokens.device)[None, :] >= drop_first
    mask = mask.expand(tokens.shape[0], -1)
    return mask & keep.to(tokens.device) if keep is not None else mask.clone()


@torch.no_grad()
def collect_hooks(model, tokens: Int[Tensor, "batch pos"], hook_names: Sequence[str],
                  mask: Bool[Tensor, "batch pos"], *, batch_size: int = 64) -> dict[str, X]:
    """Activations of several hooks in one pass per batch, at the ``mask`` tokens, ``[n, d]`` each.

    Head hooks (``hook_z``, ``[batch, pos, head, d_head]``) are flattened to ``head * d_head``.
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
    if x.shape[-1] != sae.cfg.d_in:
        raise ValueError(f"x has width {x.shape[-1]}, the SAE expects d_in={sae.cfg.d_in}")
    outs, l0s = [], []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size].to(sae.W_dec.device, sae.W_dec.dtype)
        f = sae.encode(xb)
        outs.append(sae.decode(f).reshape(xb.shape).to(x))
        l0s.append((f != 0).sum(-1).cpu())
    return torch.cat(outs), torch.cat(l0s)


# ---- least squares and R^2 ----------------------------------------------------------------------

def split_halves(n: int, *, seed: int) -> tuple[Int[Tensor, " m"], Int[Tensor, " k"]]:
    """A seeded random permutation of ``range(n)`` cut in two: ``(fit, eval)`` indices."""
    if n < 4:
        raise ValueError(f"need at least 4 tokens to split, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n // 2], perm[n // 2 :]


@dataclass(frozen=True)
class LinearFit:
    """``y ≈ x W + b``, the minimiser of ``sum_t ||y_t - x_t W - b||^2 + ridge ||W||_F^2``."""

    weight: Float[Tensor, "d_in d_out"] | Float[Tensor, " d_in"]
    """float64; a vector for a scalar (1-D) target."""
    bias: Float[Tensor, " d_out"] | Float[Tensor, ""]
    """Zero when fitted without intercept."""
    ridge: float
    intercept: bool

    def predict(self, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_out"]:
        """``x W + b`` in ``x``'s dtype."""
        return (x.double() @ self.weight.to(x.device) + self.bias.to(x.device)).to(x.dtype)


def _as2d(t: Tensor) -> Tensor:
    return t[:, None] if t.ndim == 1 else t


def fit_linear(x: Float[Tensor, "n d_in"], y: Float[Tensor, "n d_out"] | Float[Tensor, " n"], *,
               intercept: bool = False, ridge: float = 0.0, chunk: int = 65536) -> LinearFit:
    """Least squares ``y ≈ x W (+ b)`` by the normal equations in float64.

    ``(X^T X + ridge I) W = X^T Y`` with ``X, Y`` centred by their means when ``intercept``
    (then ``b = mean(y) - mean(x) W``). ``ridge = 0`` (default) is plain least squares; a
    rank-deficient ``X^T X`` gets the minimum-norm solution (``torch.linalg.lstsq``, ``gelsd``).
    Gram matrices are accumulated over row chunks, so ``n`` may be large.
    """
    y2 = _as2d(y)
    if x.ndim != 2 or y2.shape[0] != x.shape[0]:
        raise ValueError(f"x must be [n, d_in] and y [n, ...] with the same n; got {tuple(x.shape)}, {tuple(y.shape)}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    mx = x.double().mean(0) if intercept else torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    my = y2.double().mean(0) if intercept else torch.zeros(y2.shape[1], dtype=torch.float64, device=x.device)
    gram = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    cross = torch.zeros(x.shape[1], y2.shape[1], dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], chunk):
        xc, yc = x[i : i + chunk].double() - mx, y2[i : i + chunk].double() - my
        gram += xc.T @ xc
        cross += xc.T @ yc
    gram += ridge * torch.eye(x.shape[1], dtype=torch.float64, device=x.device)
    w = torch.linalg.lstsq(gram.cpu(), cross.cpu(), driver="gelsd").solution.to(x.device)
    b = my - mx @ w
    if y.ndim == 1:  # a scalar target keeps a vector weight, so predictions are [n]
        w, b = w[:, 0], b[0]
    return LinearFit(weight=w, bias=b, ridge=float(ridge), intercept=intercept)


def r2_per_dim(y: Tensor, y_hat: Tensor) -> Float[Tensor, " d"]:
    """Per output dimension ``j``: ``1 - sum_t (y_tj - yhat_tj)^2 / sum_t (y_tj - mean_t y_tj)^2``.

    Constant dimensions (zero total sum of squares) are NaN.
    """
    y, y_hat = _as2d(y).double(), _as2d(y_hat).double()
    ss_tot = (y - y.mean(0)).pow(2).sum(0)
    ss_res = (y - y_hat).pow(2).sum(0)
    return torch.where(ss_tot > 0, 1 - ss_res / torch.where(ss_tot > 0, ss_tot, 1), torch.nan)


def vector_r2(y: Tensor, y_hat: Tensor) -> float:
    """Vector R^2 (NOTES §4.1): the mean over output dimensions of :func:`r2_per_dim` (NaNs skipped).

    Not ``1 -`` the FVU of the prediction: every dimension counts equally, whatever its variance
    (that is :func:`pooled_r2`).
    """
    return float(torch.nanmean(r2_per_dim(y, y_hat)))


def pooled_r2(y: Tensor, y_hat: Tensor) -> float:
    """``1 - sum ||y - yhat||^2 / sum ||y - mean(y)||^2`` (1 - FVU of ``yhat`` as a model of ``y``)."""
    y, y_hat = _as2d(y).double(), _as2d(y_hat).double()
    return float(1 - (y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


def fvu(x: X, x_hat: X) -> float:
    """FVU = ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` (:func:`saetools.evals.explained_variance`)."""
    return 1.0 - explained_variance(x, x_hat)


def norm_r2(x: X, error: X, fit_idx: Tensor, eval_idx: Tensor, *, intercept: bool = True,
            ridge: float = 0.0) -> tuple[float, LinearFit]:
    """R^2 on ``eval_idx`` of the linear prediction of ``||error_t||^2`` from ``x_t`` fit on ``fit_idx``."""
    target = error.double().pow(2).sum(-1)
    fit = fit_linear(x[fit_idx], target[fit_idx], intercept=intercept, ridge=ridge)
    return pooled_r2(target[eval_idx], fit.predict(x[eval_idx].double())), fit


# ---- the decomposition --------------------------------------------------------------------------

@dataclass
class DarkMatterDecomposition:
    """``x = Sae(x) + LinearError(x) + NonlinearError(x)`` for one SAE on one token set.

    Scores are out of sample: fitted on ``fit_idx``, measured on ``eval_idx``.
    """

    x: X
    sae_out: X
    """``Sae(x)`` (any reconstruction: an SAE's, gradient pursuit's, a synthetic one)."""
    linear: LinearFit
    """``SaeError ≈ x W* (+ b)`` fitted on ``fit_idx``."""
    fit_idx: Tensor
    eval_idx: Tensor
    vector_r2: float
    """:func:`vector_r2` of ``LinearError`` as a prediction of ``SaeError`` on ``eval_idx``."""
    pooled_r2: float
    """:func:`pooled_r2` of the same."""
    norm_r2: float
    """:func:`norm_r2`: R^2 of predicting ``||SaeError||^2`` from ``x`` (with intercept)."""
    l0: Tensor | None = None
    """Active latents per token, when known."""
    meta: dict = field(default_factory=dict)

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
                             intercept: bool = False, ridge: float = 0.0,
                             l0: Tensor | None = None) -> DarkMatterDecomposition:
    """Split ``x - x_hat`` into its linear prediction from ``x`` and the rest.

    Args:
        x: activations ``[n, d]``; x_hat: their reconstruction.
        seed: picks the halves (:func:`split_halves`) unless ``split = (fit_idx, eval_idx)``.
        intercept: fit ``SaeError ≈ x W + b`` instead of ``x W`` (the paper: no intercept).
        ridge: :func:`fit_linear`'s ridge (default 0: plain least squares).
        l0: optional active latents per token, kept for the summary.
    """
    if x.shape != x_hat.shape or x.ndim != 2:
        raise ValueError(f"x and x_hat must both be [n, d]; got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    fit_idx, eval_idx = split if split is not None else split_halves(x.shape[0], seed=seed)
    if x.shape[0] < 4 * x.shape[1]:
        raise ValueError(f"{x.shape[0]} tokens for a {x.shape[1]}-dimensional regression would overfit; "
                         f"use at least {4 * x.shape[1]} (the paper: 150k fit tokens for d = 3584)")
    err = x - x_hat
    lin = fit_linear(x[fit_idx], err[fit_idx], intercept=intercept, ridge=ridge)
    pred = lin.predict(x[eval_idx])
    nr2, _ = norm_r2(x, err, fit_idx, eval_idx, ridge=ridge)
    return DarkMatterDecomposition(x=x, sae_out=x_hat, linear=lin, fit_idx=fit_idx, eval_idx=eval_idx,
                                   vector_r2=vector_r2(err[eval_idx], pred),
                                   pooled_r2=pooled_r2(err[eval_idx], pred), norm_r2=nr2, l0=l0)


def decompose(sae, x: X, *, seed: int = 0, split: tuple[Tensor, Tensor] | None = None,
              intercept: bool = False, ridge: float = 0.0) -> DarkMatterDecomposition:
    """:func:`decompose_reconstruction` with ``x_hat = Sae(x)`` (:func:`sae_reconstruct`).

    ``x`` holds the analysed tokens only (see :func:`position_mask` for the rule on early
    positions); one row per token, float32 recommended (fp16 errors are noisy).
    """
    x_hat, l0 = sae_reconstruct(sae, x)
    return decompose_reconstruction(x, x_hat, seed=seed, split=split, intercept=intercept, ridge=ridge, l0=l0)


# ---- per-token predictability and earlier components -------------------------------------------

def norm_r2_matrix(norms: Float[Tensor, "models n"], fit_idx: Tensor, eval_idx: Tensor, *,
                   extra: Float[Tensor, "models n"] | None = None) -> np.ndarray:
    """``R[i, j]``: R^2 on ``eval_idx`` of ``norms[j] ≈ a norms[i] (+ e extra[i]) + c`` fitted on ``fit_idx``.

    With ``norms`` the per-token error norms ``||SaeError||`` of a series of SAEs, a high
    off-diagonal ``R`` means the SAEs fail on the same tokens. With ``extra`` (e.g. the
    ``||NonlinearError||`` of each SAE) as a second regressor, ``R_extra - R`` is the gain.
    """
    if extra is not None and extra.shape != norms.shape:
        raise ValueError(f"extra must match norms {tuple(norms.shape)}, got {tuple(extra.shape)}")
    y = norms.T.double()
    rows = []
    for i in range(norms.shape[0]):
        feats = norms[i][:, None] if extra is None else torch.stack([norms[i], extra[i]], 1)
        fit = fit_linear(feats[fit_idx].double(), y[fit_idx], intercept=True)
        rows.append(r2_per_dim(y[eval_idx], fit.predict(feats[eval_idx].double())).numpy())
    return np.stack(rows)


def component_regressions(sources: Mapping[str, Tensor], targets: Mapping[str, Tensor],
                          fit_idx: Tensor, eval_idx: Tensor, *, ridge: float = 0.0) -> pd.DataFrame:
    """Linear prediction (with intercept) of each target from each source, fitted on one half.

    Returns:
        One row per ``(source, target)``: ``vector_r2`` and ``pooled_r2`` on ``eval_idx`` and
        the source width ``d_source``.
    """
    rows = []
    for sname, s in sources.items():
        for tname, t in targets.items():
            if s.shape[0] != t.shape[0]:
                raise ValueError(f"source {sname!r} has {s.shape[0]} rows, target {tname!r} {t.shape[0]}")
            fit = fit_linear(s[fit_idx], t[fit_idx], intercept=True, ridge=ridge)
            pred = fit.predict(s[eval_idx].double())
            rows.append({"source": sname, "target": tname, "d_source": s.shape[1],
                         "vector_r2": vector_r2(t[eval_idx], pred), "pooled_r2": pooled_r2(t[eval_idx], pred)})
    return pd.DataFrame(rows)


# ---- width scaling ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PowerLawFit:
    """``y(W) = c + a W^m`` fitted to points ``(W, y)``; ``W`` in latents."""

    c: float
    a: float
    m: float
    method: str
    rmse: float
    """Root mean squared residual at the fitted points."""

    def __call__(self, w) -> np.ndarray:
        return self.c + self.a * np.asarray(w, dtype=float) ** self.m


def fit_power_law(widths: Sequence[float], values: Sequence[float], *, m_range: tuple[float, float] = (-3.0, 0.0),
                  use_scipy: bool = True) -> PowerLawFit:
    """Least-squares ``c + a W^m`` with ``c >= 0``, ``a >= 0``, ``m`` in ``m_range``.

    Method: a grid of 601 exponents over ``m_range``; for each, ``(c, a)`` by least squares on
    ``[1, (W/W_0)^m]`` (clipped to ``c, a >= 0``); the best grid point then seeds
    ``scipy.optimize.curve_fit`` (trust-region reflective, same bounds) when scipy is importable
    and ``use_scipy``. ``method`` says which ran. With few widths the fit is fragile (NOTES §4.6):
    read ``rmse`` and the points, not just the parameters.
    """
    w = np.asarray(widths, dtype=float)
    y = np.asarray(values, dtype=float)
    if w.shape != y.shape or w.size < 3 or (w <= 0).any():
        raise ValueError(f"need >= 3 positive widths with one value each; got widths {w}, values {y}")
    w0 = w.min()
    u = w / w0

    def solve(m):
        A = np.stack([np.ones_like(u), u**m], 1)
        c, a = np.linalg.lstsq(A, y, rcond=None)[0]
        if a < 0:
            c, a = y.mean(), 0.0
        if c < 0:
            c, a = 0.0, max(float(np.dot(u**m, y) / np.dot(u**m, u**m)), 0.0)
        return c, a, float(np.sum((c + a * u**m - y) ** 2))

    grid = np.linspace(*m_range, 601)
    c, a, m = min(((*solve(m)[:2], m) for m in grid), key=lambda p: solve(p[2])[2])
    method = f"grid over m in {m_range} (601 points) + least squares for (c, a)"
    if use_scipy:
        try:
            from scipy.optimize import curve_fit

            popt, _ = curve_fit(lambda uu, cc, aa, mm: cc + aa * uu**mm, u, y, p0=[c, a, m],
                                bounds=([0, 0, m_range[0]], [np.inf, np.inf, m_range[1]]), maxfev=20000)
            c, a, m = (float(v) for v in popt)
            method += ", refined by scipy.optimize.curve_fit (trf)"
        except ImportError:
            pass
        except RuntimeError as err:  # no convergence: keep the grid solution and say so
            method += f" (scipy refinement failed: {err})"
    a_raw = a * w0 ** (-m)  # c + a (W/W0)^m = c + a W0^-m W^m
    rmse = float(np.sqrt(np.mean((c + a * u**m - y) ** 2)))
    return PowerLawFit(c=float(c), a=float(a_raw), m=float(m), method=method, rmse=rmse)


def scaling_regions(fvu_sae: Sequence[float], fvu_sae_linear: Sequence[float],
                    fvu_pursuit_linear: Sequence[float], asymptote: float) -> pd.DataFrame:
    """The stacked width decomposition of ``FVU(Sae)``, per width (bottom to top).

    * ``nonlinear`` = FVU(Pursuit + its LinearError): what neither a better encoder nor a
      linear map removes;
    * ``encoder`` = FVU(Sae + LinearError) - FVU(Pursuit + its LinearError): the part of the
      nonlinear error that re-encoding with the same decoder (gradient pursuit) removes;
    * ``linear`` = c - FVU(Sae + LinearError), with ``c`` the fitted asymptote of FVU(Sae): the
      linearly predictable error that does not shrink with width;
    * ``absent`` = FVU(Sae) - c: the error that shrinks with width (features not yet learned).

    The four sum to FVU(Sae). A negative value (e.g. pursuit worse than the encoder, or an
    asymptote below FVU(Sae + LinearError)) is kept as measured; plots clip it at 0.
    """
    sae, lin, gp = (np.asarray(v, dtype=float) for v in (fvu_sae, fvu_sae_linear, fvu_pursuit_linear))
    return pd.DataFrame({"nonlinear": gp, "encoder": lin - gp, "linear": asymptote - lin,
                         "absent": sae - asymptote})


# ---- downstream: splicing the parts -------------------------------------------------------------

Part = Literal["sae", "sae+linear", "sae+nonlinear", "all"]
PARTS: tuple[Part, ...] = ("sae", "sae+linear", "sae+nonlinear", "all")


def decomposition_hook(sae, linear: LinearFit, part: Part, mask: Bool[Tensor, "batch pos"]):
    """Hook replacing the activation at the ``mask`` tokens by a part of the decomposition.

    ``"sae"``: ``Sae(x)``; ``"sae+linear"``: ``Sae(x) + LinearError(x)``; ``"sae+nonlinear"``:
    ``Sae(x) + NonlinearError(x) = x - LinearError(x)``; ``"all"``: ``x`` itself (a no-op up to
    float rounding; a check of the splice). Other tokens are untouched.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")

    def hook(act: Tensor, hook) -> Tensor:
        m = mask.to(act.device)
        if m.shape != act.shape[:2]:
            raise ValueError(f"mask {tuple(m.shape)} does not match the activation's [batch, pos] "
                             f"{tuple(act.shape[:2])} at {hook.name}")
        x = act[m]
        if part == "all":
            new = x
        elif part == "sae+nonlinear":
            new = x - linear.predict(x)
        else:
            new = sae.decode(sae.encode(x)).reshape(x.shape)
            if part == "sae+linear":
                new = new + linear.predict(x)
        out = act.clone()
        out[m] = new.to(act.dtype)
        return out

    return hook


@torch.no_grad()
def splice_ce(model, sae, linear: LinearFit, tokens: Int[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"],
              *, parts: Sequence[Part] = ("sae", "sae+linear", "sae+nonlinear"),
              batch_size: int = 64) -> dict[str, float]:
    """Mean next-token CE with each part spliced in at ``sae.cfg.metadata.hook_name``.

    Each splice is a scoped hook (``model.hooks``): nothing stays attached, even after an
    exception. CE is averaged over predictions made at positions ``p`` with ``mask[p]`` and
    ``mask[p + 1]`` (the replaced tokens, predicting an analysed token).

    Returns:
        ``{"clean": ce, part: ce, ...}`` and ``"delta_" + part`` = CE(part) - CE(clean).
    """
    hook_name = sae.cfg.metadata.hook_name
    check_hook_names(model, [hook_name])
    sums = {p: 0.0 for p in ("clean", *parts)}
    count = 0
    for i in tqdm(range(0, tokens.shape[0], batch_size), desc="splice CE", leave=False):
        chunk = tokens[i : i + batch_size].to(model.cfg.device)
        m = mask[i : i + batch_size].to(chunk.device)
        pred = m[:, :-1] & m[:, 1:]
        count += int(pred.sum())
        sums["clean"] += model(chunk, return_type="loss", loss_per_token=True)[pred].double().sum().item()
        for p in parts:
            with model.hooks(fwd_hooks=[(hook_name, decomposition_hook(sae, linear, p, m))]):
                ce = model(chunk, return_type="loss", loss_per_token=True)
            sums[p] += ce[pred].double().sum().item()
    out = {p: s / count for p, s in sums.items()}
    out.update({f"delta_{p}": out[p] - out["clean"] for p in parts})
    return out


# ---- synthetic model ----------------------------------------------------------------------------

@torch.no_grad()
def noise_injection(sae, x: X, *, ablate_fractions: Sequence[float] = (0.0, 0.25, 0.5),
                    act_sigmas: Sequence[float] = (0.0, 0.5, 1.0), recon_sigmas: Sequence[float] = (0.0, 0.5, 1.0),
                    seed: int = 0) -> pd.DataFrame:
    """The synthetic model of NOTES §4.2 item 7: where error comes from decides whether it is predictable.

    ``Sae(x)`` stands in for a "true" activation built from known features ``f = encode(x)``.
    A synthetic activation and a synthetic SAE output are made from it:

    * ``x_syn = Sae(x) + act_sigma * s * eps_a`` (dense noise that *is* part of the activation);
    * ``x_hat_syn = decode(f * keep) + recon_sigma * s * eps_r`` where ``keep`` drops the
      ``ablate_fraction`` of live latents with the lowest mean activation (features the SAE has
      not learned) and ``eps_r`` is noise introduced by the SAE itself;

    ``eps_a, eps_r`` are independent standard normal, ``s`` the RMS per-dimension standard
    deviation of ``Sae(x)``. Each grid point is scored with :func:`decompose_reconstruction`.

    Returns:
        One row per grid point: ``ablate_fraction, act_sigma, recon_sigma`` and the scores.
    """
    gen = torch.Generator().manual_seed(seed)
    xb = x.to(sae.W_dec.device, sae.W_dec.dtype)
    f = torch.cat([sae.encode(xb[i : i + 8192]) for i in range(0, xb.shape[0], 8192)])
    true = sae.decode(f).reshape(xb.shape).to(x)
    s = true.var(0).mean().sqrt()
    mean_act = f.mean(0)
    live = torch.nonzero(mean_act > 0).flatten()
    order = live[torch.argsort(mean_act[live])]
    split = split_halves(x.shape[0], seed=seed)
    eps_a = torch.randn(x.shape, generator=gen).to(x)
    eps_r = torch.randn(x.shape, generator=gen).to(x)
    rows = []
    for p in ablate_fractions:
        keep = torch.ones(f.shape[1], dtype=f.dtype, device=f.device)
        keep[order[: int(round(p * len(order)))]] = 0
        base = sae.decode(f * keep).reshape(xb.shape).to(x)
        for sa in act_sigmas:
            for sr in recon_sigmas:
                if p == 0 and sa == 0 and sr == 0:
                    continue  # no error at all: nothing to predict
                dm = decompose_reconstruction(true + sa * s * eps_a, base + sr * s * eps_r, split=split)
                rows.append({"ablate_fraction": p, "act_sigma": sa, "recon_sigma": sr,
                             **{k: v for k, v in dm.summary().items() if k not in ("n_fit", "n_eval")}})
    return pd.DataFrame(rows)
