"""saetools: a Jupyter-first toolkit for sparse-autoencoder interpretability research.

A thin layer over TransformerLens hooks and sae-lens v6. The public surface is small:

* :func:`load_model` -- GPT-2 from the hub, or the bundled ``tiny-ioi`` / ``tiny-rotary`` models;
* :mod:`saetools.tasks.ioi` -- IOI prompt distributions, semantic positions, counterfactuals,
  metrics; :mod:`saetools.ablation` -- head ablation (zero / mean over ABC / resample);
* :mod:`saetools.patching` -- activation and path patching; :mod:`saetools.circuits` -- IOI head
  roles, :class:`~saetools.circuits.Circuit`, faithfulness;
* :func:`splice` -- scoped SAE splicing (error term, gradient through the error, latent
  interventions); :func:`evaluate_saes` -- the standard SAE metrics in one table;
  :func:`train_sae`, :func:`collect_activations`, :class:`ActivationStore` -- training on the
  sae-lens trainer; :mod:`saetools.saes` -- saving, loading; :func:`load_bundled_sae` -- small
  SAEs trained on the bundled model, with a card of measured metrics;
* :mod:`saetools.dictionaries` -- supervised IOI feature dictionaries and the approximation /
  control / interpretability evaluations of Makelov et al. 2024, for them and for SAEs;
* :mod:`saetools.diagnostics` -- occlusion and over-splitting, decoder geometry, SAE dark matter;
  :mod:`saetools.afa` -- AFA / epsilon_LBO (Lee et al. 2025); :mod:`saetools.pursuit` -- batched
  gradient pursuit; :mod:`saetools.toy` -- toy superposition with ground truth;
* sae-lens architectures registered on import: ``topafa``, ``switch`` (routed), ``topk_signed``,
  ``gated_faithful`` (:mod:`saetools.saes`);
* :mod:`saetools.lminfinite` -- LM-Infinite (Han et al. 2023) as scoped hooks;
* :mod:`saetools.widgets` -- offline HTML and ipywidgets panels;
* :mod:`saetools.experiments` -- the paper reproductions behind the notebooks (config, run,
  figures, checks).
"""

from saetools.evals import evaluate_saes
from saetools.models.loading import ModelUnavailableError, load_model
from saetools.saes import load_bundled_sae
from saetools.splice import splice
from saetools.store import ActivationStore
from saetools.training import collect_activations, train_sae

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
