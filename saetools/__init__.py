"""saetools: a Jupyter-first toolkit for sparse-autoencoder interpretability research.

A thin layer over TransformerLens hooks and sae-lens v6. The public surface is eight names:

* :func:`load_model` (and :class:`ModelUnavailableError`) -- a TransformerLens model from the
  hub, or the bundled ``tiny-ioi`` / ``tiny-rotary`` models;
* :func:`splice` -- scoped SAE splicing (error term, gradient through the error, latent
  interventions); :func:`evaluate_saes` -- the standard SAE metrics in one table;
* :func:`collect_activations`, :class:`ActivationStore`, :func:`train_sae` -- activations and
  training on the sae-lens trainer; :func:`load_bundled_sae` -- small SAEs for ``tiny-ioi``.

Everything else lives in subpackages, one home per role (see ``docs/README.md``):
:mod:`saetools.tasks.ioi` (IOI prompts and metrics), :mod:`saetools.circuits` (Wang et al.
2022: ablation, patching, circuit discovery), :mod:`saetools.dictionaries` (Makelov et al.
2024: supervised dictionaries, their evaluations, occlusion and over-splitting),
:mod:`saetools.diagnostics` (for any dictionary: AFA, dark matter, pursuit, geometry),
:mod:`saetools.saes` (the sae-lens architectures saetools adds: ``topafa``, ``switch``,
``topk_signed``, ``gated_faithful``; registered when :mod:`saetools.saes` is imported, which
every saetools function that loads or trains an SAE does), :mod:`saetools.lminfinite` (Han et
al. 2023), :mod:`saetools.widgets`, and :mod:`saetools.experiments` (one module per notebook).

The eight names load lazily, so ``import saetools.data`` or ``import saetools.tasks.ioi`` does
not import sae-lens.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = [
    "load_model",
    "ModelUnavailableError",
    "splice",
    "evaluate_saes",
    "train_sae",
    "collect_activations",
    "ActivationStore",
    "load_bundled_sae",
]
__version__ = "0.1.0"

_HOMES = {
    "load_model": "saetools.models.loading",
    "ModelUnavailableError": "saetools.models.loading",
    "splice": "saetools.splicing",
    "evaluate_saes": "saetools.evals",
    "train_sae": "saetools.training",
    "collect_activations": "saetools.activations",
    "ActivationStore": "saetools.activations",
    "load_bundled_sae": "saetools.saes",
}

if TYPE_CHECKING:
    from saetools.activations import ActivationStore, collect_activations
    from saetools.evals import evaluate_saes
    from saetools.models.loading import ModelUnavailableError, load_model
    from saetools.saes import load_bundled_sae
    from saetools.splicing import splice
    from saetools.training import train_sae


def __getattr__(name: str):
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'saetools' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
