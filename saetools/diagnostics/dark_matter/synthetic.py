"""The synthetic noise-injection model (Engels et al. 2024 ``synthetic_simulation.py``, finding 6).

Where an error comes from decides whether it is linearly predictable: features the SAE has not
learned and dense noise that is part of the activation can be predicted from ``x``; noise the
SAE itself introduces into its reconstruction cannot.

See ``docs/engels2024_dark_matter.md`` for the method and where saetools differs from the authors'
code.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from saetools.diagnostics.dark_matter.decompose import decompose_reconstruction
from saetools.diagnostics.dark_matter.regression import split_halves

__all__ = ["noise_injection"]


@torch.no_grad()
def noise_injection(sae, x: Float[Tensor, "n d"], *, ablate_fractions: Sequence[float] = (0.0, 0.25, 0.5),
                    act_sigmas: Sequence[float] = (0.0, 0.5, 1.0), recon_sigmas: Sequence[float] = (0.0, 0.5, 1.0),
                    seed: int = 0) -> pd.DataFrame:
    """Score synthetic activations whose error sources are known.

    ``Sae(x)`` stands in for a "true" activation built from known features ``f = encode(x)``.
    A synthetic activation and a synthetic SAE output are made from it:

    * ``x_syn = Sae(x) + act_sigma * s * eps_a`` (dense noise that *is* part of the activation);
    * ``x_hat_syn = decode(f * keep) + recon_sigma * s * eps_r`` where ``keep`` drops the
      ``ablate_fraction`` of live latents with the lowest mean activation (features the SAE has
      not learned) and ``eps_r`` is noise introduced by the SAE itself;

    ``eps_a, eps_r`` are independent standard normal (seeded), ``s`` the RMS per-dimension
    standard deviation of ``Sae(x)``. Each grid point is scored with
    :func:`~saetools.diagnostics.dark_matter.decompose_reconstruction` on one fixed split, the
    norm regression with an intercept (the noise's squared norm has a constant mean).

    Returns:
        One row per grid point (the error-free point is skipped): ``ablate_fraction,
        act_sigma, recon_sigma`` and the scores (``vector_r2``, ``norm_r2``, FVUs).
    """
    for name, vals in (("ablate_fractions", ablate_fractions), ("act_sigmas", act_sigmas),
                       ("recon_sigmas", recon_sigmas)):
        if any(v < 0 for v in vals) or (name == "ablate_fractions" and any(v > 1 for v in vals)):
            raise ValueError(f"{name} must be >= 0 (fractions <= 1), got {tuple(vals)}")
    if x.ndim != 2 or x.shape[1] != sae.cfg.d_in:
        raise ValueError(f"x must be [n, d_in={sae.cfg.d_in}], got {tuple(x.shape)}")
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
        keep[order[: round(p * len(order))]] = 0
        base = sae.decode(f * keep).reshape(xb.shape).to(x)
        for sa in act_sigmas:
            for sr in recon_sigmas:
                if p == 0 and sa == 0 and sr == 0:
                    continue  # no error at all: nothing to predict
                # with an intercept: the introduced noise's squared norm has a constant mean, which an
                # intercept-free fit would score as unpredictable structure
                dm = decompose_reconstruction(true + sa * s * eps_a, base + sr * s * eps_r, split=split,
                                              norm_intercept=True)
                rows.append({"ablate_fraction": p, "act_sigma": sa, "recon_sigma": sr,
                             **{k: v for k, v in dm.summary().items() if k not in ("n_fit", "n_eval")}})
    return pd.DataFrame(rows)
