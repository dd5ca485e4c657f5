"""The claims of the quick tour (``notebooks/00_quickstart.ipynb``): the model solves IOI, some
head matters for it, splicing an SAE with its error term changes nothing, and without it the
SAE keeps most of the logit difference. The notebook makes each measurement with the public
API in view; :func:`check` holds the thresholds in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd

from saetools.experiments.protocol import Claims, ClaimsTable, Profiles, require_model

__all__ = ["ACCURACY_MIN", "ERROR_TERM_ATOL", "HEAD_DROP_MIN", "SPLICED_LD_MIN", "Config", "Result", "check"]

ACCURACY_MIN = 0.9
"""The model solves IOI: accuracy above this."""
HEAD_DROP_MIN = 0.1
"""Mean-ablating the most important head lowers the logit difference by at least this fraction."""
ERROR_TERM_ATOL = 1e-4
"""Splicing with the error term changes no logit by more than this."""
SPLICED_LD_MIN = 0.5
"""Without the error term the SAE keeps at least this fraction of the logit difference."""


@dataclass(frozen=True, kw_only=True)
class Config(Profiles):
    """Sizes of the tour."""

    n_prompts: int = 300
    """IOI prompts evaluated."""
    sae_prompts: int = 300
    """IOI prompts whose activations train the SAE."""
    sae_samples: int = 60_000
    """Activations the SAE trains on (with repeats)."""

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {},
        "cpu": {"n_prompts": 400},
        "test": {"n_prompts": 16, "sae_prompts": 48, "sae_samples": 2048},
        "full": {"n_prompts": 2000, "sae_prompts": 4000, "sae_samples": 2_000_000},
    }
    """Named configurations: ``"cpu"`` (the bundled model trained to convergence: the papers' comparisons, at most 10 minutes on 2 CPU cores), ``"smoke"`` (CPU minutes) or ``"full"`` (GPU scale)."""


@dataclass
class Result:
    """The tour's measurements."""

    accuracy: float
    """Fraction of prompts with ``logit(IO) > logit(S)`` at END."""
    sweep: pd.DataFrame
    """The single-head mean-ablation sweep, largest drop first (``frac_drop`` column)."""
    max_logit_change_with_error: float
    """Largest absolute logit change when the SAE is spliced with its error term."""
    logit_diff: float
    """Mean clean logit difference."""
    logit_diff_spliced: float
    """Mean logit difference with the SAE spliced without its error term."""


SUPPORTED_MODELS = "Any model whose tokenizer makes names single tokens: GPT-2 and other TransformerLens models with a GPT-2-style tokenizer, or the bundled ``tiny-ioi``."
"""The models this experiment runs on (:func:`check_model` rejects others before any work)."""
EXPERIMENT = "The quickstart"


def check_model(model) -> None:
    """Raise :class:`~saetools.experiments.protocol.UnsupportedModelError` unless the experiment
    supports ``model`` (:data:`SUPPORTED_MODELS`)."""
    require_model(model, EXPERIMENT, ioi_names=True)


def check(result: Result) -> ClaimsTable:
    """The four claims of the tour, as a table; raises ``ClaimFailed``."""
    claims = Claims()
    claims("the model solves IOI", result.accuracy > ACCURACY_MIN,
           f"accuracy {result.accuracy:.3f}, mean logit difference {result.logit_diff:.2f}",
           paper=f"Wang et al.: GPT-2 small prefers IO (our bar: accuracy > {ACCURACY_MIN})")
    top = float(result.sweep.frac_drop.iloc[0])
    claims("a head matters", top > HEAD_DROP_MIN, f"the largest drop from ablating one head: {top:.0%}",
           paper=f"a few heads carry the task (our bar: > {HEAD_DROP_MIN:.0%})")
    claims("splicing with the error term is exact", result.max_logit_change_with_error < ERROR_TERM_ATOL,
           f"largest logit change {result.max_logit_change_with_error:.2e}",
           paper=f"SAE(x) + (x - SAE(x)) = x (our bar: < {ERROR_TERM_ATOL:g})")
    kept = result.logit_diff_spliced / result.logit_diff
    claims("the spliced SAE keeps the behaviour", kept > SPLICED_LD_MIN,
           f"the spliced SAE keeps {kept:.0%} of the logit difference",
           paper=f"a good SAE preserves the task (our bar: > {SPLICED_LD_MIN:.0%})")
    return claims.table()
