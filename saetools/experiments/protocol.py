"""What every experiment module shares: named profiles for its ``Config``, and figures that
a notebook displays exactly once.

Each module in :mod:`saetools.experiments` follows one protocol:

* ``Config`` -- a frozen dataclass; ``Config.profile(name)`` gives a named configuration
  (``"smoke"``: the bundled model on a CPU in about a minute; ``"full"``: the paper's scale, on a
  GPU; ``"test"``: the smallest sizes that run every step, in seconds on a CPU for any model --
  it exercises the code path and shows no science), built by :class:`Profiles` from the fields each profile changes;
* ``run(model, cfg) -> Result`` -- every measurement, as data;
* ``figures(result) -> dict[str, Figure]`` -- matplotlib figures, drawn but not displayed;
* ``check_model(model)`` -- raises :class:`UnsupportedModelError`, naming the models the
  experiment supports, before any work on a model it cannot use (``run`` calls it first);
* ``check(result)`` -- asserts the claims the profile can test, each through :func:`claim`, so a
  claim that the run does not show raises :class:`ClaimFailed` (and nothing else does); every
  notebook ends with it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = ["ClaimFailed", "Claims", "Profiles", "UnsupportedModelError", "claim", "require_model", "require_release_model",
           "subplots", "tf32_on_cuda"]

F = TypeVar("F", bound=Callable[..., Any])


def tf32_on_cuda(fn: F) -> F:
    """Run ``fn`` with float32 matrix products and convolutions in TF32 on CUDA GPUs (8x the
    float32 throughput of an A100; 10-bit mantissas in the products, float32 accumulation), as
    SAE training commonly does; the previous setting is restored afterwards. CPU results are
    unaffected. Every experiment's ``run`` uses it."""
    import torch

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            return fn(*args, **kwargs)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

    return wrapper  # type: ignore[return-value]

MIN_SINGLE_TOKEN_NAMES = 24
"""IOI experiments need at least this many of saetools's names as single tokens."""


class UnsupportedModelError(ValueError):
    """An experiment cannot run on this model; the message names the models it supports."""


def require_release_model(model, release: str, experiment: str) -> None:
    """Raise :class:`UnsupportedModelError` unless the sae-lens ``release`` was trained on
    ``model`` (by the release's model name, e.g. ``gpt2-small`` for ``gpt2``)."""
    from saetools.saes import release_model_name
    from saetools.splicing import same_model

    trained_on = release_model_name(release)
    if not same_model(trained_on, model.cfg.model_name):
        raise UnsupportedModelError(
            f"{experiment}: the sae-lens release {release!r} holds SAEs of {trained_on}, not of "
            f"{model.cfg.model_name}. Load {trained_on} (saetools.load_model({trained_on!r})) or choose a "
            "release of this model.")


def require_model(model, experiment: str, *, ioi_names: bool = False, rotary: bool = False,
                  releases: Iterable[str] = ()) -> None:
    """Raise :class:`UnsupportedModelError` unless ``model`` has what ``experiment`` needs: a
    tokenizer; with ``ioi_names``, one that makes at least :data:`MIN_SINGLE_TOKEN_NAMES` of
    saetools's names single tokens (GPT-2's and the bundled models' do); with ``rotary``, rotary
    position embeddings (LM-Infinite's setting); and SAEs of its own for each sae-lens release
    of ``releases`` (:func:`require_release_model`)."""
    name = getattr(model.cfg, "model_name", "this model")
    if model.tokenizer is None:
        raise UnsupportedModelError(f"{experiment} needs a model with a tokenizer; {name} has none. Load one "
                                    "with saetools.load_model (a TransformerLens name or a bundled model).")
    if ioi_names:
        from saetools.tasks import ioi

        n = len(ioi.default_words("names", model))
        if n < MIN_SINGLE_TOKEN_NAMES:
            raise UnsupportedModelError(
                f"{experiment} needs a tokenizer that makes names single tokens (IOI prompts compare the "
                f"logits of two names): {name} gives {n} single-token names of saetools's list, fewer than "
                f"{MIN_SINGLE_TOKEN_NAMES}. Use GPT-2 ('gpt2') or the bundled 'tiny-ioi'.")
    if rotary and model.cfg.positional_embedding_type != "rotary":
        raise UnsupportedModelError(
            f"{experiment} needs a model with rotary position embeddings (LM-Infinite changes how "
            f"relative distances enter attention): {name} uses {model.cfg.positional_embedding_type!r} "
            "positions. Use the bundled 'tiny-rotary' or a rotary TransformerLens model such as "
            "'pythia-70m-deduped' or a Llama.")
    for release in releases:
        require_release_model(model, release, experiment)


class ClaimFailed(AssertionError):
    """A paper's claim that this run does not show (raised by an experiment's ``check``).

    On a model that lacks the phenomenon (random weights, or a profile too small to show it)
    this is the expected outcome; any other exception is a fault of the code or the input.
    """


def claim(holds: object, message: str) -> None:
    """Raise :class:`ClaimFailed` with ``message`` (the measured numbers) unless ``holds``.

    Unlike ``assert``, it also checks under ``python -O``.
    """
    if not holds:
        raise ClaimFailed(message)


class Claims:
    """The claims one ``check`` tests, some of them declared expected failures.

    ``claims(key, holds, message)`` raises :class:`ClaimFailed` unless ``holds``, except for a
    key in ``expected_failures`` (key -> why the run cannot show it): such a claim is a *strict*
    expected failure, recorded with its measured numbers, and raising if it unexpectedly holds
    (so the declaration is removed once the model shows the claim). :meth:`table` lists every
    claim tested.
    """

    def __init__(self, expected_failures: Mapping[str, str] | None = None):
        self.expected = dict(expected_failures or {})
        self.rows: list[dict] = []

    def __call__(self, key: str, holds: object, message: str) -> None:
        holds = bool(holds)
        if key in self.expected:
            self.rows.append({"claim": key, "status": "expected failure" if not holds else "unexpectedly holds",
                              "measured": message, "why": self.expected[key]})
            if holds:
                raise ClaimFailed(f"{key!r} is declared an expected failure ({self.expected[key]}) but holds: "
                                  f"{message}; remove it from the expected failures")
            return
        self.rows.append({"claim": key, "status": "holds" if holds else "fails", "measured": message, "why": ""})
        claim(holds, message)

    def table(self):
        """One row per claim tested: ``claim, status, measured, why``."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["claim", "status", "measured", "why"])


class Profiles:
    """Mixin for an experiment's ``Config``: ``PROFILES`` maps a profile name to the fields it
    changes from the defaults, and :meth:`profile` builds that configuration."""

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {"smoke": {}}

    @classmethod
    def profile(cls, name: str):
        """The configuration called ``name`` (one of ``PROFILES``)."""
        if name not in cls.PROFILES:
            raise ValueError(
                f"unknown profile {name!r} for {cls.__module__}.{cls.__qualname__}: "
                f"use one of {sorted(cls.PROFILES)}"
            )
        return cls(**cls.PROFILES[name])


def subplots(*args, **kwargs) -> tuple[Figure, Any]:
    """``plt.subplots`` for the figures an experiment returns: the figure is closed to pyplot,
    so Jupyter shows it only where a notebook displays it (never a second time at cell end)."""
    fig, axes = plt.subplots(*args, **kwargs)
    plt.close(fig)
    return fig, axes
