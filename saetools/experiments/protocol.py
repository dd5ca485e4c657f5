"""What every experiment module shares: named profiles for its ``Config``, and figures that
a notebook displays exactly once.

Each module in :mod:`saetools.experiments` follows one protocol:

* ``Config`` -- a frozen dataclass; ``Config.profile(name)`` gives a named configuration
  (``"smoke"``: the bundled model on a CPU in about a minute; ``"cpu"``: the bundled model trained
  to convergence, so that the papers' comparisons can be tested, at most 10 minutes on 2 CPU
  cores; ``"full"``: the paper's scale, on a
  GPU; ``"test"``: the smallest sizes that run every step, in seconds on a CPU for any model --
  it exercises the code path and shows no science), built by :class:`Profiles` from the fields each profile changes;
* ``run(model, cfg) -> Result`` -- every measurement, as data;
* ``figures(result) -> dict[str, Figure]`` -- matplotlib figures, drawn but not displayed;
* ``check_model(model)`` -- raises :class:`UnsupportedModelError`, naming the models the
  experiment supports, before any work on a model it cannot use (``run`` calls it first);
* ``check(result)`` -- asserts the claims the profile can test (:class:`Claims`), so a claim
  that the run does not show raises :class:`ClaimFailed` (and nothing else does), and returns
  the claims table (claim | paper's value | this run's value | verdict | why): every paper
  headline claim (``HEADLINES``) is a row, reproduced, not reproduced (a strict expected
  failure, with its reason) or not testable at this profile (with the reason); every notebook
  ends by displaying it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["CLAIMS_MIMETYPE", "CLAIM_COLUMNS", "NOT_REPRODUCED", "NOT_TESTABLE", "REPRODUCED", "ClaimFailed",
           "Claims", "ClaimsTable", "Headline", "Profiles", "UnsupportedModelError", "claim", "require_model", "require_release_model",
           "BUNDLED_MODELS", "MIN_COMPARISON_STEPS", "at_matched_l0", "bundled_expected_failures", "check_over_seeds", "run_seeds", "short_training", "spread", "subplots", "tf32_on_cuda"]

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


CLAIMS_MIMETYPE = "application/vnd.saetools.claims+json"
"""The mimetype under which a displayed claims table carries its rows (``saetools reproduce``
reads them into ``claims.csv``)."""

REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE = "reproduced", "not reproduced", "not testable at this profile"
"""The verdicts of a claims table."""

CLAIM_COLUMNS = ["claim", "paper", "run", "verdict", "why"]
"""A claims table's columns: the claim in words, the paper's value, this run's value (with the
seed spread where the run has several seeds), the verdict, and why (for a claim not reproduced
or not testable)."""


CLAIM_COLUMN_LABELS = {"claim": "claim", "paper": "paper's value", "run": "this run's value (± seed spread)",
                       "verdict": "verdict", "why": "why"}
"""How a claims table names its columns on screen."""


@dataclass(frozen=True)
class Headline:
    """One of a paper's headline claims, as the paper states it."""

    claim: str
    """The claim, in words."""
    paper: str
    """The paper's own number or finding."""


class ClaimsTable(pd.DataFrame):
    """A claims table (columns :data:`CLAIM_COLUMNS`) that, displayed in a notebook, also carries
    its rows as JSON (:data:`CLAIMS_MIMETYPE`) for ``saetools reproduce``."""

    @property
    def _constructor(self):
        return ClaimsTable

    def _repr_html_(self):
        """The whole text of every cell (no truncation), column names in words."""
        with pd.option_context("display.max_colwidth", None):
            return pd.DataFrame(self).rename(columns=CLAIM_COLUMN_LABELS)._repr_html_()

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {CLAIMS_MIMETYPE: {"rows": [{"key": k, **r} for k, r in zip(self.index, self.to_dict("records"))]}}


def spread(values, fmt: str = ".3f") -> str:
    """``mean ± sd (n seeds)`` of per-seed values (just the value when there is one)."""
    v = np.asarray(list(values), dtype=float)
    if v.size == 1:
        return format(float(v[0]), fmt)
    return f"{v.mean():{fmt}} ± {v.std(ddof=1):{fmt}} ({v.size} seeds)"


class Claims:
    """The claims one ``check`` tests, as a table: claim | paper's value | this run's value |
    verdict | why.

    ``claims(key, holds, run)`` records a claim and raises :class:`ClaimFailed` (with ``run``,
    the measured numbers) unless ``holds``; ``claims.untestable(key, why)`` records a claim the
    profile cannot test (a short run, a model without the phenomenon's prerequisites). Keys in
    ``headlines`` (key -> :class:`Headline`) are the paper's headline claims: their row shows the
    claim in words and the paper's number, and :meth:`table` refuses to leave one out. A key in
    ``expected_failures`` (key -> why the run cannot show it) is a *strict* expected failure:
    recorded as not reproduced with its measured numbers, and raising if it unexpectedly holds
    (so the declaration is removed once the model shows the claim).
    """

    def __init__(self, expected_failures: Mapping[str, str] | None = None, *,
                 headlines: Mapping[str, Headline] | None = None, collect: bool = False):
        self.collect = collect
        """Record every claim without raising (one seed of several; :func:`check_over_seeds` decides)."""
        self.values: dict[str, float] = {}
        self.holds: dict[str, bool] = {}
        self.expected = dict(expected_failures or {})
        self.headlines = dict(headlines or {})
        self.rows: list[dict] = []
        self._seen: set[str] = set()

    def _row(self, key: str, run: str, verdict: str, why: str, paper: str | None) -> None:
        if key in self._seen:
            raise ValueError(f"claim {key!r} recorded twice")
        self._seen.add(key)
        h = self.headlines.get(key)
        self.rows.append({"claim": h.claim if h else key, "paper": h.paper if h else (paper or ""), "run": run,
                          "verdict": verdict, "why": why, "key": key})

    def __call__(self, key: str, holds: object, run: str, *, paper: str | None = None,
                 value: float | None = None) -> None:
        """Record claim ``key``: whether it ``holds``, the measured numbers (``run``), and its
        headline number ``value`` (what the seed spread is computed on)."""
        holds = bool(holds)
        self.holds[key] = holds
        if value is not None:
            self.values[key] = float(value)
        if self.collect:
            self._row(key, run, REPRODUCED if holds else NOT_REPRODUCED, "", paper)
            return
        if key in self.expected:
            self._row(key, run, NOT_REPRODUCED if not holds else "unexpectedly holds", self.expected[key], paper)
            if holds:
                raise ClaimFailed(f"{key!r} is declared an expected failure ({self.expected[key]}) but holds: "
                                  f"{run}; remove it from the expected failures")
            return
        self._row(key, run, REPRODUCED if holds else NOT_REPRODUCED, "", paper)
        claim(holds, f"{key}: {run}")

    def untestable(self, key: str, why: str, run: str = "", *, paper: str | None = None) -> None:
        """Record ``key`` as not testable at this profile, and why."""
        self._row(key, run, NOT_TESTABLE, why, paper)

    def row(self, key: str) -> dict:
        """The recorded row of ``key``."""
        return next(r for r in self.rows if r["key"] == key)

    def table(self) -> ClaimsTable:
        """One row per claim, in the order recorded, indexed by key (columns
        :data:`CLAIM_COLUMNS`); raises if a headline claim was left out."""
        missing = [k for k in self.headlines if k not in self._seen]
        if missing:
            raise ValueError(f"check left out headline claims {missing}: test each, or record it with "
                             "Claims.untestable and the reason")
        unused = [k for k in self.expected if k not in self._seen]
        if unused:
            raise ValueError(f"expected failures {unused} name no claim of this check; its claims: {sorted(self._seen)}")
        return ClaimsTable(pd.DataFrame(self.rows, columns=CLAIM_COLUMNS,
                                        index=pd.Index([r["key"] for r in self.rows], name="key")))


MIN_COMPARISON_STEPS = 1000
"""Optimizer steps an SAE needs before a profile compares architectures by their fidelity (short
runs rank them by how fast they start, not where they end)."""


def short_training(steps: int) -> str | None:
    """Why a profile whose SAEs train ``steps`` steps cannot compare architectures (None when it can)."""
    if steps >= MIN_COMPARISON_STEPS:
        return None
    return (f"each SAE trains {steps} steps, short of the {MIN_COMPARISON_STEPS} a comparison of architectures "
            "needs; the cpu profile trains them to convergence")


BUNDLED_MODELS = ("tiny-ioi", "tiny-rotary")
"""The models saetools ships; their known failures are declared per experiment."""


def bundled_expected_failures(module, model_name: str, profile: str) -> dict[str, str] | None:
    """The claims an experiment's bundled model is known not to show at ``profile`` (key -> why):
    the module's ``BUNDLED_EXPECTED_FAILURES`` (every profile) and its
    ``BUNDLED_EXPECTED_FAILURES_AT[profile]``. None for any other model (every claim must hold
    or fail loudly there)."""
    if model_name not in BUNDLED_MODELS:
        return None
    return {**getattr(module, "BUNDLED_EXPECTED_FAILURES", {}),
            **getattr(module, "BUNDLED_EXPECTED_FAILURES_AT", {}).get(profile, {})}


def run_seeds(run_one: Callable, model, cfg):
    """``run_one(model, cfg)`` once per seed of ``cfg.n_seeds`` (seeds ``cfg.seed + 1000 i``: the
    data, initialisation and batch order all change); returns the first seed's result with the
    others in its ``seed_results`` and ``cfg`` as its config."""
    import dataclasses

    from tqdm.auto import tqdm

    if cfg.n_seeds == 1:
        return run_one(model, cfg)
    results = [run_one(model, dataclasses.replace(cfg, seed=cfg.seed + 1000 * i, n_seeds=1))
               for i in tqdm(range(cfg.n_seeds), desc="seeds")]
    first = results[0]
    first.config, first.seed_results = cfg, results[1:]
    return first


def check_over_seeds(result, claims_of: Callable, *, expected_failures: Mapping[str, str] | None,
                     headlines: Mapping[str, Headline]) -> ClaimsTable:
    """The claims table of ``result`` and its other seeds (``result.seed_results``).

    ``claims_of(result, claims)`` records one seed's claims. With one seed, that is the table.
    With several, a claim is reproduced only when it holds on every seed; its row shows the first
    seed's numbers and the spread of its headline ``value`` over the seeds (:func:`spread`). A
    claim untestable on any seed is untestable.
    """
    seeds = [result, *getattr(result, "seed_results", [])]
    if len(seeds) == 1:
        claims = Claims(expected_failures, headlines=headlines)
        claims_of(result, claims)
        return claims.table()
    per_seed = []
    for r in seeds:
        c = Claims(headlines=headlines, collect=True)
        claims_of(r, c)
        per_seed.append(c)
    final = Claims(expected_failures, headlines=headlines)
    for key in [row["key"] for row in per_seed[0].rows]:
        rows = [c.row(key) for c in per_seed]
        first = rows[0]
        paper = None if key in headlines else first["paper"]
        if any(r["verdict"] == NOT_TESTABLE for r in rows):
            why = next(r["why"] for r in rows if r["verdict"] == NOT_TESTABLE)
            final.untestable(key, why, first["run"], paper=paper)
            continue
        n_hold = sum(c.holds[key] for c in per_seed)
        values = [c.values[key] for c in per_seed if key in c.values]
        spread_ = f"{np.mean(values):.3g} ± {np.std(values, ddof=1):.2g}, " if len(values) == len(seeds) else ""
        final(key, n_hold == len(seeds), f"{first['run']} (first seed) | over {len(seeds)} seeds: {spread_}holds on "
              f"{n_hold} of {len(seeds)}", paper=paper)
    return final.table()


def at_matched_l0(ref_l0, ref_y, l0: float) -> float:
    """A reference sweep's ``y`` at ``l0`` (linear in log L0 between its points), or NaN where
    ``l0`` lies outside the sweep's L0 range: comparisons at matched L0 never extrapolate."""
    order = np.argsort(np.asarray(ref_l0, dtype=float))
    x, y = np.log(np.asarray(ref_l0, dtype=float)[order]), np.asarray(ref_y, dtype=float)[order]
    if not len(x) or not x[0] <= np.log(l0) <= x[-1]:
        return float("nan")
    return float(np.interp(np.log(l0), x, y))


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
