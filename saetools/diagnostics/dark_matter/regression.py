"""Least squares and R^2 for the dark-matter analyses (Engels et al. 2024, docs/engels2024_dark_matter.md).

Every score is out of sample: fit on one half of the tokens (:func:`split_halves`), score on
the other. Definitions, once:

* :func:`r2_per_dim` -- per output dimension ``1 - SS_res / SS_tot`` (``SS_tot`` about the mean);
* :func:`vector_r2` -- the paper's "vector R^2": the *mean over dimensions* of :func:`r2_per_dim`;
* :func:`pooled_r2` -- ``1 - sum ||y - yhat||^2 / sum ||y - mean y||^2`` (1 - FVU of the prediction);
* :func:`norm_r2` -- R^2 of the linear prediction of ``||error||^2`` from ``x`` (with intercept);
* :func:`norm_r2_matrix` -- cross-width prediction of per-token error norms (finding 3 of
  ``docs/engels2024_dark_matter.md``);
* :func:`component_regressions` -- errors predicted from earlier components (finding 5).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from saetools.evals import explained_variance

__all__ = [
    "LinearFit", "component_regressions", "fit_linear", "fvu", "norm_r2", "norm_r2_matrix", "pooled_r2",
    "r2_per_dim", "split_halves", "vector_r2",
]

X = Float[Tensor, "n d"]


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
    """The ridge penalty used (0: plain least squares)."""
    intercept: bool
    """Whether ``b`` was fitted."""

    def predict(self, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_out"] | Float[Tensor, " n"]:
        """``x W + b`` (computed in float64, returned in ``x``'s dtype)."""
        if x.shape[-1] != self.weight.shape[0]:
            raise ValueError(f"LinearFit expects inputs of width {self.weight.shape[0]}, got {tuple(x.shape)}")
        return (x.double() @ self.weight.to(x.device) + self.bias.to(x.device)).to(x.dtype)


def _as2d(t: Tensor) -> Tensor:
    return t[:, None] if t.ndim == 1 else t


def _solve_normal(gram: Tensor, cross: Tensor) -> Tensor:
    """``gram^-1 cross`` for a symmetric positive semi-definite ``gram``: Cholesky (a hundred
    times faster than an SVD at d = 768) unless it fails or is badly conditioned, then the
    minimum-norm least-squares solution."""
    chol, info = torch.linalg.cholesky_ex(gram)
    if info.item() == 0:
        diag = chol.diagonal()
        if float(diag.min()) > 1e-6 * float(diag.max()):  # condition number of gram below 1e12
            return torch.cholesky_solve(cross, chol)
    return torch.linalg.lstsq(gram, cross, driver="gelsd").solution


def fit_linear(x: Float[Tensor, "n d_in"], y: Float[Tensor, "n d_out"] | Float[Tensor, " n"], *,
               intercept: bool = False, ridge: float = 0.0, chunk: int = 65536) -> LinearFit:
    """Least squares ``y ≈ x W (+ b)`` by the normal equations in float64.

    ``(X^T X + ridge I) W = X^T Y`` with ``X, Y`` centred by their means when ``intercept``
    (then ``b = mean(y) - mean(x) W``). ``ridge = 0`` (default) is plain least squares, the
    paper's ``torch.linalg.lstsq``: solved by Cholesky when ``X^T X`` is positive definite (the
    unique solution), and a rank-deficient one gets the minimum-norm solution (``gelsd``). Gram matrices are accumulated over row chunks, so ``n`` may be large.
    """
    y2 = _as2d(y)
    if x.ndim != 2 or y2.ndim != 2 or y2.shape[0] != x.shape[0]:
        raise ValueError(f"x must be [n, d_in] and y [n, d_out] or [n] with the same n; "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("cannot fit a linear map on 0 rows")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    dev = x.device
    mx = x.double().mean(0) if intercept else torch.zeros(x.shape[1], dtype=torch.float64, device=dev)
    my = y2.double().mean(0) if intercept else torch.zeros(y2.shape[1], dtype=torch.float64, device=dev)
    gram = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=dev)
    cross = torch.zeros(x.shape[1], y2.shape[1], dtype=torch.float64, device=dev)
    for i in range(0, x.shape[0], chunk):
        xc, yc = x[i : i + chunk].double() - mx, y2[i : i + chunk].double().to(dev) - my
        gram += xc.T @ xc
        cross += xc.T @ yc
    gram += ridge * torch.eye(x.shape[1], dtype=torch.float64, device=dev)
    w = _solve_normal(gram.cpu(), cross.cpu()).to(dev)
    b = my - mx @ w
    if y.ndim == 1:  # a scalar target keeps a vector weight, so predictions are [n]
        w, b = w[:, 0], b[0]
    return LinearFit(weight=w, bias=b, ridge=float(ridge), intercept=intercept)


def r2_per_dim(y: Tensor, y_hat: Tensor) -> Float[Tensor, " d"]:
    """Per output dimension ``j``: ``1 - sum_t (y_tj - yhat_tj)^2 / sum_t (y_tj - mean_t y_tj)^2``.

    Constant dimensions (zero total sum of squares) are NaN.
    """
    y, y_hat = _as2d(y).double(), _as2d(y_hat).double()
    if y.shape != y_hat.shape:
        raise ValueError(f"y and y_hat must have the same shape, got {tuple(y.shape)} and {tuple(y_hat.shape)}")
    ss_tot = (y - y.mean(0)).pow(2).sum(0)
    ss_res = (y - y_hat).pow(2).sum(0)
    return torch.where(ss_tot > 0, 1 - ss_res / torch.where(ss_tot > 0, ss_tot, 1), torch.nan)


def vector_r2(y: Tensor, y_hat: Tensor) -> float:
    """Vector R^2: the mean over output dimensions of :func:`r2_per_dim` (NaNs skipped).

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
    """R^2 on ``eval_idx`` of the linear prediction of ``||error_t||^2`` from ``x_t`` fit on ``fit_idx``.

    The paper's norm prediction: ``d`` coefficients (+ an intercept by default) for one scalar
    per token, so it is far easier than predicting the ``d``-dimensional error itself.
    """
    if x.shape[0] != error.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows, error {error.shape[0]}")
    target = error.double().pow(2).sum(-1)
    fit = fit_linear(x[fit_idx], target[fit_idx], intercept=intercept, ridge=ridge)
    return pooled_r2(target[eval_idx], fit.predict(x[eval_idx].double())), fit


def norm_r2_matrix(norms: Float[Tensor, "models n"], fit_idx: Tensor, eval_idx: Tensor, *,
                   extra: Float[Tensor, "models n"] | None = None) -> np.ndarray:
    """``R[i, j]``: R^2 on ``eval_idx`` of ``norms[j] ≈ a norms[i] (+ e extra[i]) + c`` fit on ``fit_idx``.

    With ``norms`` the per-token error norms ``||SaeError||`` of a series of SAEs, a high
    off-diagonal ``R`` means the SAEs fail on the same tokens (the paper's finding 3). With
    ``extra`` (e.g. the ``||NonlinearError||`` of each SAE) as a second regressor,
    ``R_extra - R`` is the gain from it.
    """
    if norms.ndim != 2:
        raise ValueError(f"norms must be [models, n], got {tuple(norms.shape)}")
    if extra is not None and extra.shape != norms.shape:
        raise ValueError(f"extra must match norms {tuple(norms.shape)}, got {tuple(extra.shape)}")
    y = norms.T.double()
    rows = []
    for i in range(norms.shape[0]):  # one multi-output regression per source model
        feats = norms[i][:, None] if extra is None else torch.stack([norms[i], extra[i]], 1)
        fit = fit_linear(feats[fit_idx].double(), y[fit_idx], intercept=True)
        rows.append(r2_per_dim(y[eval_idx], fit.predict(feats[eval_idx].double())).numpy())
    return np.stack(rows)


def component_regressions(sources: Mapping[str, Tensor], targets: Mapping[str, Tensor],
                          fit_idx: Tensor, eval_idx: Tensor, *, ridge: float = 0.0) -> pd.DataFrame:
    """Linear prediction (with intercept) of each target from each source, fit on one half.

    The paper's finding 5: e.g. sources = the previous layer's residual and its SAE's parts,
    the attention and MLP outputs; targets = this layer's SaeError, LinearError, NonlinearError.

    Returns:
        One row per ``(source, target)``: ``vector_r2`` and ``pooled_r2`` on ``eval_idx``, and
        the source width ``d_source``.
    """
    rows = []
    for sname, s in sources.items():
        for tname, t in targets.items():
            if s.ndim != 2 or s.shape[0] != t.shape[0]:
                raise ValueError(f"source {sname!r} {tuple(s.shape)} and target {tname!r} {tuple(t.shape)} "
                                 "must be [n, d] with the same n (one row per token)")
            fit = fit_linear(s[fit_idx], t[fit_idx], intercept=True, ridge=ridge)
            pred = fit.predict(s[eval_idx].double())
            rows.append({"source": sname, "target": tname, "d_source": s.shape[1],
                         "vector_r2": vector_r2(t[eval_idx], pred), "pooled_r2": pooled_r2(t[eval_idx], pred)})
    return pd.DataFrame(rows)
