"""Supervised feature dictionaries and their evaluation (Makelov, Lange & Nanda 2024).

* :mod:`~saetools.dictionaries.nodes` -- nodes (an activation at a semantic position),
  cross-sections from a circuit, and which heads carry an attribute (:func:`attribute_patching`);
* :mod:`~saetools.dictionaries.supervised` -- supervised dictionaries (mean codes, least squares;
  independent / coupled) with an SAE-like interface, and :class:`SAEDictionary` for SAEs;
* :mod:`~saetools.dictionaries.approximation` -- sufficiency, necessity, LD recovered, and what a
  dictionary's residual follows (:func:`shared_residual`);
* :mod:`~saetools.dictionaries.control` -- supervised and SAE edits, edit accuracy, weight removed;
* :mod:`~saetools.dictionaries.interpretability` -- precision / recall / F1 of latents, grouped
  F1, mean-max cosine;
* :mod:`~saetools.dictionaries.ioi_saes` -- SAEs trained per node with the paper's schedule;
* :mod:`~saetools.dictionaries.occlusion` -- occlusion (an attribute hidden behind a stronger one)
  and over-splitting (an attribute spread over many latents).

See ``docs/makelov2024_supervised_dictionaries.md`` for the method and where saetools differs from
the authors' code.
"""

from saetools.dictionaries.approximation import Approximation, approximation, ld_recovered, shared_residual
from saetools.dictionaries.control import (
    agreement_score,
    edit_accuracy,
    edit_cross_section,
    latent_weights,
    sae_edit_aware,
    sae_edit_greedy,
)
from saetools.dictionaries.interpretability import F1Table, f1_scores, grouped_f1, mean_max_cosine
from saetools.dictionaries.ioi_saes import (
    IOISAEConfig,
    train_node_sae,
    train_node_saes,
    webtext_attention_saes,
)
from saetools.dictionaries.nodes import (
    CrossSection,
    Node,
    NodeRunner,
    attribute_patching,
    circuit_nodes,
    cross_sections,
    node_acts,
    run_with_nodes,
)
from saetools.dictionaries.supervised import (
    SAEDictionary,
    SupervisedDictionary,
    attribute_values,
    fit_supervised,
)

__all__ = [
    "Approximation", "CrossSection", "F1Table", "IOISAEConfig", "Node", "NodeRunner", "SAEDictionary", "SupervisedDictionary",
    "agreement_score", "approximation", "attribute_patching", "attribute_values", "circuit_nodes", "cross_sections", "edit_accuracy",
    "edit_cross_section", "f1_scores", "fit_supervised", "grouped_f1", "latent_weights", "ld_recovered",
    "mean_max_cosine", "node_acts", "run_with_nodes", "sae_edit_aware", "sae_edit_greedy", "shared_residual",
    "train_node_sae", "train_node_saes", "webtext_attention_saes",
]
