"""saetools: a Jupyter-first toolkit for sparse-autoencoder interpretability research.

A thin layer over TransformerLens hooks and sae-lens v6. The public surface is small:

* :func:`load_model` -- GPT-2 from the hub or the bundled ``tiny-ioi`` model;
* :mod:`saetools.tasks.ioi` -- IOI prompt distributions and metrics;
* :mod:`saetools.ablation` -- head ablation (zero / mean / resample);
* :func:`splice` -- scoped SAE splicing; :func:`train_sae` / :func:`collect_activations`;
* :mod:`saetools.widgets` -- offline HTML and ipywidgets panels.
"""

from saetools.models.loading import ModelUnavailableError, load_model
from saetools.splice import splice
from saetools.training import collect_activations, train_sae

__all__ = ["load_model", "ModelUnavailableError", "splice", "train_sae", "collect_activations"]
__version__ = "0.1.0"
