"""SAEs: saetools's sae-lens architectures, save/load, pretrained releases and bundled SAEs.

Architectures registered with sae-lens when this package is imported (so ``SAE.load_from_disk``
and ``SAE.from_dict`` find them):

* ``gated_faithful`` -- Gated SAE with the paper's frozen-decoder auxiliary loss
  (:mod:`saetools.saes.gated_faithful`);
* ``topk_signed`` -- Makelov et al.'s no-ReLU TopK (:mod:`saetools.saes.topk_signed`);
* ``topafa`` -- top-AFA SAEs of Lee et al. 2025 (:mod:`saetools.saes.topafa`);
* ``switch`` -- routed Switch SAEs of Mudide et al. 2024 (:mod:`saetools.saes.switch`);
* :func:`save_sae` / :func:`load_sae` / :func:`load_pretrained_sae` (:mod:`saetools.saes.io`);
* :func:`refit_decoder` -- the feature-suppression fix (:mod:`saetools.saes.suppression`);
* :func:`load_bundled_sae` -- small SAEs for the bundled ``tiny-ioi`` model, with a card of
  measured metrics (``bundled/CARD.md``, built by ``scripts/build_bundled_saes.py``).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from saetools.saes import switch, topafa, topk_signed  # noqa: F401  (registers the architectures)
from saetools.saes.gated_faithful import FaithfulGatedTrainingSAEConfig
from saetools.saes.io import (
    PretrainedSAEUnavailableError,
    load_pretrained_sae,
    load_sae,
    release_model_name,
    save_sae,
)
from saetools.saes.suppression import refit_decoder

__all__ = [
    "FaithfulGatedTrainingSAEConfig",
    "PretrainedSAEUnavailableError",
    "bundled_sae_card",
    "bundled_saes",
    "load_bundled_sae",
    "load_pretrained_sae",
    "EXAMPLE_SAES",
    "example_sae",
    "release_model_name",
    "load_sae",
    "refit_decoder",
    "save_sae",
]


def _bundled_dir() -> Path:
    return Path(str(resources.files("saetools.saes").joinpath("bundled")))


def bundled_saes() -> list[str]:
    """Names of the SAEs shipped with saetools (folders under ``saetools/saes/bundled``)."""
    root = _bundled_dir()
    return sorted(p.name for p in root.iterdir() if (p / "cfg.json").is_file()) if root.is_dir() else []


def load_bundled_sae(name: str, *, device: str = "cpu"):
    """Load a bundled SAE by name, e.g. ``"resid2-topk16"`` (all names: :func:`bundled_saes`; metrics:
    ``bundled/CARD.md``)."""
    available = bundled_saes()
    if name not in available:
        raise ValueError(f"unknown bundled SAE {name!r}; available: {available or 'none (run scripts/build_bundled_saes.py)'}")
    return load_sae(_bundled_dir() / name, device=device)


EXAMPLE_SAES = {
    "tiny-ioi": ("bundled", "resid2-topk16"),
    "gpt2": ("gpt2-small-res-jb", "blocks.8.hook_resid_pre"),
}
"""An SAE to explore for each model the notebooks name: ``(release, id)``, where the release
``"bundled"`` means :func:`load_bundled_sae` and any other is a sae-lens release."""


def example_sae(model_name: str, *, device: str = "cpu"):
    """An SAE to explore for ``model_name`` (see :data:`EXAMPLE_SAES`), or ``None`` if there is
    none: the bundled TopK SAE for ``tiny-ioi``, Joseph Bloom's residual-stream SAE of layer 8
    for ``gpt2`` (from the hub or its cache; its latents link to their Neuronpedia pages)."""
    if model_name not in EXAMPLE_SAES:
        return None
    release, sae_id = EXAMPLE_SAES[model_name]
    if release == "bundled":
        return load_bundled_sae(sae_id, device=device)
    return load_pretrained_sae(release, sae_id, device=device)


def bundled_sae_card() -> dict:
    """The measured metrics of the bundled SAEs (``bundled/card.json``)."""
    card = _bundled_dir() / "card.json"
    if not card.is_file():
        raise FileNotFoundError(f"{card} is missing; run scripts/build_bundled_saes.py")
    return json.loads(card.read_text())
