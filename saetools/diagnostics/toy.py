"""A toy superposition generator with ground truth (``docs/lee2025_top_afa.md``).

``z = sum_i f_i w_i + b + noise``: ``h`` unit-norm feature directions ``w_i`` in ``d``
dimensions (``h`` may exceed ``d``: superposition), sparse non-negative activations ``f``,
an optional fixed bias ``b`` and isotropic Gaussian noise. It is built on sae-lens's
``sae_lens.synthetic`` module (v6.54): :class:`~sae_lens.synthetic.FeatureDictionary` holds
the directions and bias and maps ``f`` to ``z``; :class:`~sae_lens.synthetic.ActivationGenerator`
draws ``f`` (independent Bernoulli firing, magnitudes ``ReLU(N(mean, std))``). saetools adds
what the AFA analyses need and sae-lens does not offer: a knob for *how far from orthogonal*
the directions are, their exact coherence, seeded sampling that leaves the global RNG alone,
and the noise.

Orthogonality. Base directions ``g_i`` are random unit vectors, optionally made orthogonal:
exactly orthonormal (QR) when ``h <= d``, pushed apart with sae-lens's
``orthogonalize_embeddings`` when ``h > d``; then every
direction is pulled towards one shared unit vector ``u``:
``w_i = normalise(sqrt(1 - overlap) g_i + sqrt(overlap) u)``. When ``h < d`` (and
``orthogonalize``), the ``g_i`` are orthonormal and ``u`` is orthogonal to all of them, so
``<w_i, w_j> = overlap`` exactly for every pair; in general :attr:`ToySuperposition.coherence`
(``max_{i != j} |<w_i, w_j>|``) reports the coherence exactly.

Reuse::

    toy = ToySuperposition(ToyConfig(d=64, h=48, overlap=0.1, seed=0))
    batch = toy.sample(10_000, seed=1)   # batch.z [n, d], batch.f [n, h], batch.noise
    toy.W, toy.bias, toy.coherence
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from sae_lens.synthetic import ActivationGenerator, FeatureDictionary, orthogonalize_embeddings
from torch import Tensor

__all__ = ["ToyBatch", "ToyConfig", "ToySuperposition"]


@dataclass(frozen=True, kw_only=True)
class ToyConfig:
    """The generator's ground truth."""

    d: int = 64
    """Dense (observed) dimension."""
    h: int = 256
    """Number of features (``h > d`` is superposition)."""
    overlap: float = 0.0
    """Pull towards a shared direction, in ``[0, 1)``: 0 keeps the base directions, larger
    values make every pair of features less orthogonal (pairwise cosine ``overlap`` for
    orthonormal base directions)."""
    orthogonalize: bool = True
    """Make the base directions orthonormal (``h <= d``) or push them apart (``h > d``, sae-lens
    ``orthogonalize_embeddings``) before the overlap is applied."""
    firing_probability: float = 0.02
    """Probability that a feature is active on a sample (independently per feature)."""
    magnitude_mean: float = 1.0
    """Mean of an active feature's magnitude, drawn as ``ReLU(N(mean, std))``."""
    magnitude_std: float = 0.5
    """Standard deviation of an active feature's magnitude."""
    noise_std: float = 0.0
    """Standard deviation of the isotropic Gaussian noise, per dimension."""
    bias_norm: float = 0.0
    """Norm of the fixed bias ``b`` (a random direction); 0: no bias."""
    seed: int = 0
    """Seeds the directions and the bias (samples take their own seed)."""

    def __post_init__(self):
        if self.d <= 0 or self.h <= 0:
            raise ValueError(f"ToyConfig.d and ToyConfig.h must be positive, got d={self.d}, h={self.h}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"ToyConfig.overlap must be in [0, 1), got {self.overlap}")
        if not 0 < self.firing_probability <= 1:
            raise ValueError(f"ToyConfig.firing_probability must be in (0, 1], got {self.firing_probability}")
        for name in ("magnitude_std", "noise_std", "bias_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"ToyConfig.{name} must be >= 0")


@dataclass
class ToyBatch:
    """One draw from the generator."""

    z: Float[Tensor, "n d"]
    """Observed dense activations ``f @ W + bias + noise``."""
    f: Float[Tensor, "n h"]
    """Ground-truth sparse, non-negative feature activations."""
    noise: Float[Tensor, "n d"]
    """The noise that was added."""


class ToySuperposition:
    """The generator (see the module docstring); directions fixed at construction."""

    def __init__(self, cfg: ToyConfig):
        self.cfg = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        base = torch.randn(cfg.h, cfg.d, generator=gen)
        base = base / base.norm(dim=-1, keepdim=True)
        if cfg.orthogonalize and cfg.h <= cfg.d:  # exactly orthonormal rows (QR: Gram-Schmidt), same span
            q, r = torch.linalg.qr(base.T)
            base = (q * torch.sign(torch.diagonal(r))).T
        elif cfg.orthogonalize:  # more directions than dimensions: push them apart (sae-lens, deterministic)
            base = orthogonalize_embeddings(base)
        shared = torch.randn(cfg.d, generator=gen)
        if cfg.orthogonalize and cfg.h < cfg.d:  # orthogonal to every base direction
            shared = shared - base.T @ (base @ shared)
        shared = shared / shared.norm()
        w = (1 - cfg.overlap) ** 0.5 * base + cfg.overlap ** 0.5 * shared
        w = w / w.norm(dim=-1, keepdim=True)
        bias_dir = torch.randn(cfg.d, generator=gen)
        # seed=: sae-lens draws its own (overwritten) directions from a private generator, not the global RNG
        self.dictionary = FeatureDictionary(cfg.h, cfg.d, bias=False, initializer=None, seed=cfg.seed)
        with torch.no_grad():
            self.dictionary.feature_vectors.copy_(w)
            self.dictionary.bias.copy_(bias_dir / bias_dir.norm() * cfg.bias_norm)
        self.activations = ActivationGenerator(
            cfg.h, firing_probabilities=cfg.firing_probability,
            mean_firing_magnitudes=cfg.magnitude_mean, std_firing_magnitudes=cfg.magnitude_std,
        )

    @property
    def W(self) -> Float[Tensor, "h d"]:
        """Unit-norm feature directions, one per row."""
        return self.dictionary.feature_vectors.detach()

    @property
    def bias(self) -> Float[Tensor, " d"]:
        """The fixed bias ``b``."""
        return self.dictionary.bias.detach()

    @property
    def coherence(self) -> float:
        """``max_{i != j} |<w_i, w_j>|``: the smallest ``epsilon`` for which the directions are
        epsilon-quasi-orthogonal, computed in float64 on the rows renormalised in
        float64 (the stored float32 rows are unit only to about 1e-7)."""
        w = self.W.double()
        w = w / w.norm(dim=-1, keepdim=True)  # float64 unit rows: exact up to float64 rounding
        gram = w @ w.T
        gram.fill_diagonal_(0)
        return gram.abs().max().item()

    @torch.no_grad()
    def sample(self, n: int, *, seed: int) -> ToyBatch:
        """``n`` samples drawn with their own seed (the global RNG is left as it was)."""
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            f = self.activations.sample(n)
            noise = torch.randn(n, self.cfg.d) * self.cfg.noise_std
        return ToyBatch(z=self.dictionary(f) + noise, f=f, noise=noise)
