"""SAE dark matter: the linearly predictable and the nonlinear parts of an SAE's error.

Engels, Smith & Tegmark (2024), "Decomposing the Dark Matter of Sparse Autoencoders"
(arXiv 2410.14670; docs/engels2024_dark_matter.md). For activations ``x`` (one row per token) and an SAE:

* ``Sae(x)`` is the reconstruction (``b_dec`` included); ``SaeError(x) = x - Sae(x)``;
* ``W*`` is the least-squares map from ``x`` to the error, fit on one half of the tokens:
  ``LinearError(x) = x W*`` and ``NonlinearError(x) = SaeError(x) - x W*``, so
  ``x = Sae(x) + LinearError(x) + NonlinearError(x)`` exactly (:func:`decompose`);
* every R^2 is scored on the *other* half (:func:`vector_r2`, :func:`norm_r2`).

Submodules: :mod:`.decompose` (token rule, decomposition), :mod:`.regression` (least squares,
R^2, cross-width norm matrix, earlier-component regressions), :mod:`.scaling` (power law plus
constant, stacked width decomposition), :mod:`.splice` (downstream CE of each part),
:mod:`.synthetic` (noise injection). Gradient pursuit lives in :mod:`saetools.diagnostics.dark_matter.pursuit`.
"""

from saetools.diagnostics.dark_matter.decompose import (
    DarkMatterDecomposition,
    collect_hooks,
    decompose,
    decompose_reconstruction,
    position_mask,
    sae_reconstruct,
)
from saetools.diagnostics.dark_matter.regression import (
    LinearFit,
    component_regressions,
    fit_linear,
    fvu,
    norm_r2,
    norm_r2_matrix,
    pooled_r2,
    r2_per_dim,
    split_halves,
    vector_r2,
)
from saetools.diagnostics.dark_matter.scaling import PowerLawFit, fit_power_law, scaling_regions
from saetools.diagnostics.dark_matter.splice import PARTS, Part, decomposition_hook, splice_ce
from saetools.diagnostics.dark_matter.synthetic import noise_injection

__all__ = [
    "PARTS", "DarkMatterDecomposition", "LinearFit", "Part", "PowerLawFit", "collect_hooks",
    "component_regressions", "decompose", "decompose_reconstruction", "decomposition_hook", "fit_linear",
    "fit_power_law", "fvu", "noise_injection", "norm_r2", "norm_r2_matrix", "pooled_r2", "position_mask",
    "r2_per_dim", "sae_reconstruct", "scaling_regions", "splice_ce", "split_halves", "vector_r2",
]
