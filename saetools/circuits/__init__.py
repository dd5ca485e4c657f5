"""Circuit analysis on IOI (Wang et al. 2022, "Interpretability in the Wild").

* :mod:`~saetools.circuits.ablation` -- head ablation (zero, mean over the ABC distribution,
  resample) and the single-head sweep;
* :mod:`~saetools.circuits.patching` -- activation patching (residual stream, head q / k / v / z)
  and path patching (sender -> receiver);
* :mod:`~saetools.circuits.incremental` -- reruns from a cached prefix, so that a patch at one
  position recomputes only what it changes;
* :mod:`~saetools.circuits.discovery` -- head roles, the :class:`Circuit` they form, and its
  faithfulness (re-exported here);
* :mod:`~saetools.circuits.mechanism` -- the same roles checked with plain measurements (direct
  logit attribution, attention, mean ablation, Pos patching) against explicit targets;
* :mod:`~saetools.circuits.panel` -- the model side of the interactive IOI panel.
"""

from saetools.circuits.discovery import (
    ROLES,
    WANG_2022_GPT2_CIRCUIT,
    Circuit,
    Discovery,
    DiscoveryConfig,
    Faithfulness,
    ablated_logit_diff,
    attention_scores,
    classify_heads,
    copying_scores,
    discover_circuit,
    faithfulness,
)

__all__ = [
    "ROLES", "WANG_2022_GPT2_CIRCUIT", "Circuit", "Discovery", "DiscoveryConfig", "Faithfulness",
    "ablated_logit_diff", "attention_scores", "classify_heads", "copying_scores", "discover_circuit",
    "faithfulness",
]
