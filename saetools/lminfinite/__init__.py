"""LM-Infinite (Han et al. 2023): length generalisation of rotary models without training.

* :mod:`~saetools.lminfinite.attention` -- the Lambda-shaped mask and the distance cap, as
  scoped hooks on any TransformerLens rotary model, and the memory-lean attention path;
* :mod:`~saetools.lminfinite.evaluation` -- per-position NLL, attention entropy, passkey
  retrieval, time and memory.
"""

from saetools.lminfinite.attention import (
    AbsolutePositionWarning,
    LMInfiniteConfig,
    lambda_scores,
    lean_attention,
    lm_infinite,
    lm_infinite_hooks,
)

__all__ = [
    "AbsolutePositionWarning", "LMInfiniteConfig", "lambda_scores", "lean_attention", "lm_infinite",
    "lm_infinite_hooks",
]
