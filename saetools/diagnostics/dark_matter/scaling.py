"""Width scaling of SAE error: power law plus constant, and the stacked decomposition.

Engels et al. (2024), Fig. 1 (finding 2 of ``docs/engels2024_dark_matter.md``): at fixed L0,
``FVU(Sae)`` falls with width ``W`` like ``c + a W^m``; the asymptote ``c`` is the "dark matter" that width does not remove,
and it splits into a linearly predictable part and a nonlinear part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

__all__ = ["PowerLawFit", "fit_power_law", "scaling_regions"]

N_GRID = 601


@dataclass(frozen=True)
class PowerLawFit:
    """``y(W) = c + a W^m`` fitted to points ``(W, y)``; ``W`` in latents."""

    c: float
    """The asymptote (``W -> inf`` for ``m < 0``)."""
    a: float
    """The scale (``>= 0``)."""
    m: float
    """The exponent (in the fit's ``m_range``; meaningless when ``a = 0``)."""
    method: str
    """How it was fitted (reported next to the parameters; docs/engels2024_dark_matter.md)."""
    rmse: float
    """Root mean squared residual at the fitted points."""

    def __call__(self, w) -> np.ndarray:
        """``c + a w^m``."""
        return self.c + self.a * np.asarray(w, dtype=float) ** self.m


def _ca(u: np.ndarray, y: np.ndarray, m: float) -> tuple[float, float, float]:
    """Least-squares ``(c, a)`` for ``y ≈ c + a u^m`` with ``c, a >= 0``, and the squared error."""
    p = u**m
    c, a = np.linalg.lstsq(np.stack([np.ones_like(p), p], 1), y, rcond=None)[0]
    if a < 0:  # the best non-negative fit puts a on the boundary: a constant
        c, a = max(float(y.mean()), 0.0), 0.0
    if c < 0:
        c, a = 0.0, max(float(p @ y / (p @ p)), 0.0)
    return float(c), float(a), float(np.sum((c + a * p - y) ** 2))


def fit_power_law(widths: ArrayLike, values: ArrayLike, *, m_range: tuple[float, float] = (-3.0, 0.0),
                  use_scipy: bool = True) -> PowerLawFit:
    """Least-squares ``c + a W^m`` with ``c >= 0``, ``a >= 0``, ``m`` in ``m_range``.

    Method (the paper fits the same model by Adam on the MSE, 50k steps; this is a
    deterministic equivalent): for each of 601 exponents on a grid over ``m_range``, ``(c, a)``
    by least squares on ``[1, (W/W_0)^m]`` (``W_0`` the smallest width; clipped to
    ``c, a >= 0``); the best grid point then seeds ``scipy.optimize.curve_fit`` (trust-region
    reflective, same bounds) when ``use_scipy``. ``method`` says what ran. With few widths the
    fit is fragile: read ``rmse`` and the points, not just the parameters.

    Raises:
        ValueError: fewer than 3 points, non-positive widths or non-finite values.
    """
    w = np.asarray(widths, dtype=float)
    y = np.asarray(values, dtype=float)
    if w.ndim != 1 or w.shape != y.shape or w.size < 3 or (w <= 0).any() or not np.isfinite(y).all():
        raise ValueError(f"need >= 3 positive widths with one finite value each; got widths {w}, values {y}")
    if not m_range[0] < m_range[1]:
        raise ValueError(f"m_range must be (low, high) with low < high, got {m_range}")
    w0 = w.min()
    u = w / w0
    fits = [(*_ca(u, y, m), m) for m in np.linspace(*m_range, N_GRID)]
    c, a, _, m = min(fits, key=lambda f: f[2])
    method = f"grid over m in {m_range} ({N_GRID} points) + least squares for (c, a) >= 0"
    if use_scipy and a > 0:
        try:  # scipy is not a declared dependency of saetools (it comes with sae-lens's stack)
            from scipy.optimize import curve_fit

            popt, _ = curve_fit(lambda uu, cc, aa, mm: cc + aa * uu**mm, u, y, p0=[c, a, m],
                                bounds=([0, 0, m_range[0]], [np.inf, np.inf, m_range[1]]), maxfev=20000)
            refined = tuple(float(v) for v in popt)
            if np.sum((refined[0] + refined[1] * u ** refined[2] - y) ** 2) <= _ca(u, y, m)[2]:
                c, a, m = refined
                method += ", refined by scipy.optimize.curve_fit (trf)"
        except ImportError:
            method += " (scipy not installed: no refinement)"
        except (RuntimeError, ValueError) as err:  # no convergence: keep the grid solution and say so
            method += f" (scipy refinement failed: {err})"
    rmse = float(np.sqrt(np.mean((c + a * u**m - y) ** 2)))
    # c + a (W/W0)^m = c + (a W0^-m) W^m
    return PowerLawFit(c=float(c), a=float(a * w0 ** (-m)), m=float(m), method=method, rmse=rmse)


def scaling_regions(fvu_sae: ArrayLike, fvu_sae_linear: ArrayLike,
                    fvu_pursuit_linear: ArrayLike, asymptote: float) -> pd.DataFrame:
    """The stacked width decomposition of ``FVU(Sae)``, per width (bottom to top; paper Fig. 1).

    * ``nonlinear`` = FVU(Pursuit + its LinearError): what neither a better encoder nor a
      linear map removes;
    * ``encoder`` = FVU(Sae + LinearError) - FVU(Pursuit + its LinearError): the part of the
      nonlinear error that re-encoding with the same decoder (gradient pursuit) removes;
    * ``linear`` = c - FVU(Sae + LinearError), with ``c`` the fitted asymptote of FVU(Sae): the
      linearly predictable error that does not shrink with width;
    * ``absent`` = FVU(Sae) - c: the error that shrinks with width (features not yet learned).

    The four sum to FVU(Sae). A negative value (pursuit worse than the encoder, or an
    asymptote below FVU(Sae + LinearError)) is kept as measured; plots clip it at 0.
    """
    sae, lin, gp = (np.asarray(v, dtype=float) for v in (fvu_sae, fvu_sae_linear, fvu_pursuit_linear))
    if not sae.shape == lin.shape == gp.shape:
        raise ValueError(f"one value per width in each series; got lengths {sae.size}, {lin.size}, {gp.size}")
    return pd.DataFrame({"nonlinear": gp, "encoder": lin - gp, "linear": asymptote - lin,
                         "absent": sae - asymptote})
