"""The LM-Infinite reproduction on a rotary model: config, ``run``, ``check`` and ``figures``.

Han et al. (2023), docs/han2023_lm_infinite.md: per-position NLL far past the training length for vanilla
attention and the ablations of the method, attention entropy vs length, passkey retrieval vs
context length, and time / peak memory of the lean path vs full attention. Used by the
notebook ``07_han2023_lm_infinite.ipynb`` and by ``scripts/build_rotary_model.py`` (model card).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

import pandas as pd
import torch
from matplotlib.figure import Figure

from saetools.experiments.protocol import (
    Claims,
    ClaimsTable,
    Headline,
    Profiles,
    require_model,
    subplots,
    tf32_on_cuda,
)
from saetools.lminfinite import LMInfiniteConfig
from saetools.lminfinite.evaluation import (
    VARIANTS,
    attention_entropy,
    binned_nll,
    passkey_accuracy,
    per_position_nll,
    time_and_memory,
    variant_config,
)
from saetools.models.corpus import long_document, long_document_tokens

__all__ = ["BUNDLED_EXPECTED_FAILURES", "BUNDLED_EXPECTED_FAILURES_AT", "Config", "Result", "run", "check", "target_status", "passkey_at", "figures",
           "mask_only_demo"]

@dataclass(frozen=True, kw_only=True)
class Config(Profiles):
    """What to measure."""

    n_docs: int = 2
    """Evaluation documents, each ``max_factor`` x the training length."""
    n_passkey: int = 10
    """Passkey prompts per length and variant."""
    memory_lengths: tuple[int, ...] = (512, 1024, 2048, 4096)
    """Lengths at which forward time and peak memory are measured (those above ``n_ctx`` are skipped)."""
    n_global: int = 4
    """Global-branch size of the method (the paper uses 10-100 at 2k-4k training length)."""
    n_local: int | None = None
    """Local window = distance cap; default the model's training length (``cfg.train_seq_length``)."""
    max_factor: int = 32
    """Evaluate up to ``max_factor`` x the training length (capped by ``model.cfg.n_ctx``)."""
    passkey_max_factor: int = 4
    """Passkey retrieval is measured at 1, 2, 4, ... x the training length, up to this factor."""
    top_k: int = 5
    """Top-k middle-token attention of the "top-k" passkey variant (the authors use 5)."""
    top_k_from_layer: int | None = None
    """First layer with top-k middle attention (default: the upper half, ``n_layers // 2``)."""
    seed: int = 0
    """Seeds the evaluation documents and passkeys."""

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {"max_factor": 16},
        "cpu": {"n_docs": 8, "n_passkey": 30, "passkey_max_factor": 8},
        "test": {"n_docs": 1, "n_passkey": 2, "memory_lengths": (256, 512), "max_factor": 4,
                 "passkey_max_factor": 2},
        "full": {"n_docs": 16, "n_passkey": 50, "passkey_max_factor": 8},
    }
    """Named configurations: ``"cpu"`` (the bundled model trained to convergence: the papers' comparisons, at most 10 minutes on 2 CPU cores), ``"smoke"`` (about a minute on a CPU) or ``"full"`` (more documents
    and passkey prompts)."""

    def __post_init__(self) -> None:
        for name in ("n_docs", "n_passkey"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Config.{name} must be positive")
        if self.n_global < 0:
            raise ValueError("Config.n_global must be >= 0")
        if self.max_factor < 2:
            raise ValueError("Config.max_factor must be >= 2")
        if self.passkey_max_factor < 1 or self.top_k < 0:
            raise ValueError("Config.passkey_max_factor must be >= 1 and Config.top_k >= 0")


@dataclass
class Result:
    """Measured results (every number in the notebook and the model card comes from here)."""

    config: dict
    """The :class:`Config` as a dict, plus the resolved ``train_ctx`` and ``n_local``."""
    nll: pd.DataFrame
    """Per-position NLL: columns ``variant``, ``position`` (of the context's last token), ``nll``."""
    nll_bins: pd.DataFrame
    """Binned NLL (see :func:`~saetools.lminfinite.evaluation.binned_nll`) with a ``variant`` column."""
    entropy: pd.DataFrame
    """Attention entropy: columns ``variant``, ``length``, ``entropy`` (nats)."""
    passkey: pd.DataFrame
    """Passkey accuracy (greedy, key at a random depth): columns ``variant`` (``vanilla``,
    ``both``, ``top-k``: both plus top-k middle attention), ``length``, ``accuracy``, ``n``."""
    cost: pd.DataFrame
    """Forward time and peak CPU tensor memory: ``path``, ``length``, ``seconds``, ``peak_mb``."""
    extra: dict = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        """NLL ratio to the in-length NLL at 1x, 8x and the largest factor, per variant."""
        b = self.nll_bins
        ref = b[b.lo == b.lo.min()].set_index("variant").nll
        rows = []
        for v, g in b.groupby("variant", sort=False):
            g = g.set_index("factor").nll
            rows.append({"variant": v, "in_length": ref[v], **{f"{f:g}x": g.get(f, float("nan"))
                                                               for f in (1.0, 8.0, g.index.max())}})
        return pd.DataFrame(rows).set_index("variant")


def _resolve(model, cfg: Config) -> tuple[int, int, int]:
    if model.cfg.positional_embedding_type != "rotary":
        raise ValueError("the LM-Infinite reproduction needs a rotary model (e.g. 'tiny-rotary'); "
                         "on absolute-position models only the mask-only demonstration applies")
    train_ctx = model.cfg.train_seq_length
    if train_ctx is None and cfg.n_local is None:
        raise ValueError("model.cfg.train_seq_length is unset: pass Config(n_local=...)")
    train_ctx = train_ctx or cfg.n_local
    n_local = cfg.n_local or train_ctx
    max_len = min(cfg.max_factor * train_ctx, model.cfg.n_ctx)
    return train_ctx, n_local, max_len


SUPPORTED_MODELS = "A model with rotary position embeddings: the bundled ``tiny-rotary``, Pythia or Llama-family models."
"""The models this experiment runs on (:func:`check_model` rejects others before any work)."""
EXPERIMENT = "LM-Infinite"


def check_model(model, cfg: Config | None = None) -> None:
    """Raise :class:`~saetools.experiments.protocol.UnsupportedModelError` unless the experiment
    supports ``model`` (with ``cfg``; :data:`SUPPORTED_MODELS`)."""
    require_model(model, EXPERIMENT, rotary=True)


@tf32_on_cuda
@torch.no_grad()
def run(model, cfg: Config = Config()) -> Result:
    """Measure everything on ``model`` (rotary; its tokenizer is used for the documents)."""
    check_model(model, cfg)
    train_ctx, n_local, max_len = _resolve(model, cfg)
    tok = model.tokenizer
    docs = torch.stack([long_document_tokens(tok, max_len, seed=cfg.seed + 1000 + i)
                        for i in range(cfg.n_docs)])
    nll_rows, bins = [], []
    for v in VARIANTS:
        vcfg = variant_config(v, n_local=n_local, n_global=cfg.n_global)
        # the lean path where the variant masks (same numbers as the hooks, linear memory)
        nll = per_position_nll(model, docs, vcfg, lean=vcfg is not None and vcfg.use_mask)
        nll_rows.append(pd.DataFrame({"variant": v, "position": range(len(nll)), "nll": nll.numpy()}))
        bins.append(binned_nll(nll, train_ctx).assign(variant=v))
    lengths = [train_ctx // 2 * 2**k for k in range(20) if train_ctx // 2 * 2**k <= max_len]
    both = variant_config("both", n_local=n_local, n_global=cfg.n_global)
    ent = [attention_entropy(model, docs[:1], lengths, c).assign(variant=v)
           for v, c in (("vanilla", None), ("both", both))]
    top_k_from = model.cfg.n_layers // 2 if cfg.top_k_from_layer is None else cfg.top_k_from_layer
    top_k = replace(both, top_k=cfg.top_k, top_k_from_layer=top_k_from)
    pk_lengths = [train_ctx * 2**k for k in range(20)
                  if 2**k <= cfg.passkey_max_factor and train_ctx * 2**k <= model.cfg.n_ctx]
    pk = [passkey_accuracy(model, tok, pk_lengths, c, n=cfg.n_passkey, seed=cfg.seed, lean=c is not None).assign(variant=v)
          for v, c in (("vanilla", None), ("both", both), ("top-k", top_k))]
    mem_lengths = [n for n in cfg.memory_lengths if n <= model.cfg.n_ctx]
    cost = time_and_memory(model, mem_lengths, both, seed=cfg.seed)
    return Result(
        config={**asdict(cfg), "train_ctx": train_ctx, "n_local": n_local, "max_len": max_len,
                "top_k_from_layer": top_k_from, "n_docs": cfg.n_docs, "n_passkey": cfg.n_passkey},
        nll=pd.concat(nll_rows, ignore_index=True), nll_bins=pd.concat(bins, ignore_index=True),
        entropy=pd.concat(ent, ignore_index=True), passkey=pd.concat(pk, ignore_index=True), cost=cost,
    )


def target_status(result: Result, *, tolerance: float = 0.10) -> dict:
    """The length-generalisation target: LM-Infinite ("both") NLL within ``tolerance`` of its in-length NLL at
    every factor. Returns ``{"met": bool, "worst_ratio": float, "worst_factor": float}``
    (measured, never asserted: see :func:`check` for what is asserted)."""
    s = result.summary()
    b = result.nll_bins[result.nll_bins.variant == "both"].set_index("factor").nll
    ratio = b / s.loc["both"].in_length
    return {"met": bool(ratio.max() <= 1 + tolerance), "worst_ratio": float(ratio.max()),
            "worst_factor": float(ratio.idxmax()), "tolerance": tolerance}


PASSKEY_IN_LENGTH_MIN = 0.9
"""Passkey accuracy of vanilla attention inside the training length (the model can retrieve)."""
PASSKEY_VANILLA_MAX = 0.5
"""...vanilla attention's at 4x the training length (it fails past it)..."""
PASSKEY_TOP_K_MIN = 0.8
"""...and LM-Infinite with top-k middle attention's at 4x (it retrieves from the masked middle)."""
SINK_RATIO_MIN = 1.05
"""NLL with n_global = 0 over NLL with the global branch, at the largest factor (factor 3)."""


def passkey_at(result: Result, variant: str, factor: int) -> float | None:
    """Passkey accuracy of ``variant`` at ``factor`` x the training length (None: not measured)."""
    p = result.passkey
    g = p[(p.variant == variant) & (p.length <= factor * result.config["train_ctx"])]
    # the measured length closest below factor x L (prompts fill up to it, a few tokens short)
    return None if g.empty or g.length.max() < 0.75 * factor * result.config["train_ctx"] else float(g.iloc[-1].accuracy)


BUNDLED_EXPECTED_FAILURES: dict[str, str] = {
    "starting tokens matter": (
        "tiny-rotary's training rows all start at BOS, yet its NLL with n_global = 0 equals the NLL with "
        "the global branch at every length: this 3-layer model formed no attention sink that a sliding "
        "window could lose"),
    "top-k retrieves at 4x": (
        "tiny-rotary's retrieval head finds the key digit by its relative position; top-k middle "
        "attention gives every selected key one inserted distance, so it selects key-line tokens but "
        "not the right digit: it retrieves only keys inside the local window, with any k or start layer"),
}
"""Claims the bundled ``tiny-rotary`` does not show, and why (strict expected failures in
:func:`check`: they must fail, with their measured numbers shown)."""

BUNDLED_EXPECTED_FAILURES_AT: dict[str, dict[str, str]] = {
    "cpu": {"vanilla retrieves in length": (
        "tiny-rotary retrieves the passkey inside its training length on most prompts but, over the cpu profile's "
        "larger prompt set, falls just short of the bar; which prompts it misses has not been examined")},
}
"""Claims ``tiny-rotary`` does not show at a profile, and why (strict expected failures)."""


MIN_DOCS = 8
"""Documents from which :func:`check` tests that LM-Infinite stays within its tolerance."""

HEADLINES: dict[str, Headline] = {
    "vanilla degrades": Headline("without LM-Infinite, the NLL explodes past the training length",
                                 "perplexity explodes right after L_pretrain"),
    "LM-Infinite holds": Headline("with the Lambda mask and the distance cap, the NLL stays at its in-length value "
                                  "far past the training length, without training",
                                  "perplexity retained up to 200M tokens (models trained at 2K / 4K)"),
    "starting tokens matter": Headline("the starting tokens are needed: without the global branch (a sliding window) "
                                       "the NLL rises", "n_global = 0 fails"),
    "vanilla fails at 4x": Headline("passkey retrieval fails past the training length without LM-Infinite",
                                    "vanilla accuracy falls to 0 right after L_pretrain"),
    "top-k retrieves at 4x": Headline("with LM-Infinite (top-k middle attention), the passkey is retrieved past the "
                                      "training length", "passkey accuracy kept at 6k-16k tokens"),
    "memory saving": Headline("LM-Infinite's attention needs memory linear in the length, full attention more",
                              "7.5x memory saving, 2.7x faster decoding (32k tokens)"),
}
"""Han et al.'s headline claims (keys of :func:`check`'s table)."""


def check(result: Result, *, tolerance: float = 0.10, margin: float = 2.0,
          expected_failures: Mapping[str, str] | None = None) -> ClaimsTable:
    """The claims that the reproduction supports, on measured numbers; raises ``ClaimFailed``.

    * vanilla NLL at the largest factor rises above ``(1 + tolerance)`` x its in-length NLL;
    * LM-Infinite ("both") NLL at the largest factor is below vanilla's by a factor ``margin``;
    * without the global branch (``n_global = 0``) the NLL at the largest factor is at least
      :data:`SINK_RATIO_MIN` x LM-Infinite's (the starting tokens are needed);
    * passkey retrieval (where the profile measures these lengths): vanilla >=
      :data:`PASSKEY_IN_LENGTH_MIN` inside the training length and <= :data:`PASSKEY_VANILLA_MAX`
      at 4x; LM-Infinite with top-k middle attention >= :data:`PASSKEY_TOP_K_MIN` at 4x;
    * the lean path's peak memory per token stays within 25% across the measured lengths,
      while full attention's peak grows faster than linearly.

    ``expected_failures`` (claim -> reason; e.g. :data:`BUNDLED_EXPECTED_FAILURES`) are strict
    expected failures (:class:`~saetools.experiments.protocol.Claims`). Returns the table of the
    claims tested. Whether LM-Infinite stays within ``tolerance`` of its in-length NLL (the
    length-generalisation target) is reported by :func:`target_status`, not asserted here.
    """
    claims = Claims(expected_failures, headlines=HEADLINES)
    s = result.summary()
    last = s.columns[-1]
    van, both = s.loc["vanilla"], s.loc["both"]
    claims("vanilla degrades", van[last] > (1 + tolerance) * van.in_length,
           f"vanilla NLL {van.in_length:.3f} in length, {van[last]:.3f} at {last}")
    text = (f"LM-Infinite NLL {both.in_length:.3f} in length, {both[last]:.3f} at {last} (needs within "
            f"{tolerance:.0%}); vanilla {van[last]:.3f} (needs {margin}x higher)")
    if result.config["n_docs"] < MIN_DOCS:
        claims.untestable("LM-Infinite holds", f"{result.config['n_docs']} documents: the NLL per length varies by "
                          f"more than the {tolerance:.0%} tolerance between documents; the cpu profile reads "
                          f"{MIN_DOCS} or more", text)
    else:
        claims("LM-Infinite holds", both[last] * margin < van[last] and both[last] <= (1 + tolerance) * both.in_length,
               text)
    no_sink = s.loc["n_global=0", last]
    claims("starting tokens matter", no_sink >= SINK_RATIO_MIN * both[last],
           f"NLL at {last}: n_global=0 {no_sink:.3f}, n_global={result.config['n_global']} {both[last]:.3f} "
           f"(needs >= {SINK_RATIO_MIN}x)")
    for key, variant, factor, ok, text in (
            ("vanilla retrieves in length", "vanilla", 1, lambda a: a >= PASSKEY_IN_LENGTH_MIN, f">= {PASSKEY_IN_LENGTH_MIN}"),
            ("vanilla fails at 4x", "vanilla", 4, lambda a: a <= PASSKEY_VANILLA_MAX, f"<= {PASSKEY_VANILLA_MAX}"),
            ("top-k retrieves at 4x", "top-k", 4, lambda a: a >= PASSKEY_TOP_K_MIN, f">= {PASSKEY_TOP_K_MIN}")):
        acc = passkey_at(result, variant, factor)
        paper = "precondition of the passkey claims" if key not in HEADLINES else None
        if acc is not None:
            claims(key, ok(acc), f"passkey accuracy of {variant} at {factor}x the training length {acc:.2f} (needs {text})",
                   paper=paper)
        else:
            claims.untestable(key, f"this profile measures no passkey accuracy of {variant} at {factor}x", paper=paper)
    c = result.cost
    lean = c[c.path == "lean"].set_index("length").peak_mb
    full = c[c.path == "full"].set_index("length").peak_mb
    per_tok = lean / lean.index
    growth = full.iloc[-1] / full.iloc[0] / (full.index[-1] / full.index[0])
    claims("memory saving", per_tok.max() <= 1.25 * per_tok.min() and growth > 1.5,
           f"lean peak MiB per token {per_tok.min():.4f}-{per_tok.max():.4f} (needs within 25%); full attention's "
           f"peak grows {growth:.2f}x faster than the length (needs > 1.5); at {full.index[-1]} tokens "
           f"{full.iloc[-1] / lean.reindex([full.index[-1]]).iloc[0]:.1f}x the lean path's")
    return claims.table()


def figures(result: Result) -> dict[str, Figure]:
    """``{"nll", "entropy", "passkey", "cost"}``: NLL vs position, attention entropy vs length,
    passkey accuracy vs length, time and peak memory of the lean path vs full attention."""
    L = result.config["train_ctx"]
    fig1, ax = subplots(figsize=(7, 4))
    for v, g in result.nll_bins.groupby("variant", sort=False):
        ax.plot(g.hi / L, g.nll, marker="o", label=v)
    ax.axvline(1, color="grey", ls=":", label="training length")
    ax.set(xscale="log", xlabel="context position / training length (bin end)",
           ylabel="mean NLL (nats) of the next token", title="Per-position NLL past the training length")
    ax.legend()
    fig2, ax = subplots(figsize=(6, 3.5))
    for v, g in result.entropy.groupby("variant", sort=False):
        ax.plot(g.length, g.entropy, marker="o", label=v)
    ax.axvline(L, color="grey", ls=":")
    ax.set(xscale="log", xlabel="sequence length", ylabel="entropy (nats)",
           title="Attention entropy -sum p log p of the last queries (mean over heads, layers)")
    ax.legend()
    fig3, ax = subplots(figsize=(6, 3.5))
    for v, g in result.passkey.groupby("variant", sort=False):
        ax.plot(g.length, g.accuracy, marker="o", label=v)
    ax.axvline(L, color="grey", ls=":")
    ax.set(xscale="log", ylim=(-0.05, 1.05), xlabel="context length",
           ylabel="accuracy (all 5 digits correct)",
           title="Passkey at a random depth, decoded greedily")
    ax.legend()
    fig4, axes = subplots(1, 2, figsize=(10, 3.5))
    for p, g in result.cost.groupby("path", sort=False):
        axes[0].plot(g.length, g.seconds, marker="o", label=p)
        axes[1].plot(g.length, g.peak_mb, marker="o", label=p)
    axes[0].set(xscale="log", yscale="log", xlabel="length", ylabel="seconds per forward")
    axes[1].set(xscale="log", yscale="log", xlabel="length",
                ylabel="peak CPU tensor MiB (profiler allocator events)")
    axes[0].legend()
    fig4.suptitle("Full attention vs the lean Lambda path")
    for f in (fig1, fig2, fig3, fig4):
        f.tight_layout()
    return {"nll": fig1, "entropy": fig2, "passkey": fig3, "cost": fig4}


@torch.no_grad()
def mask_only_demo(model, *, n_global: int = 4, n_local: int | None = None, n_docs: int = 4,
                   seed: int = 0) -> pd.DataFrame:
    """The Lambda mask alone inside the model's context (the only part that applies to GPT-2).

    Long synthetic documents cut to ``model.cfg.n_ctx`` tokens (BOS first), scored with full
    attention, the mask with ``n_global`` global tokens, and the mask with none (a sliding
    window): factor 3 of docs/han2023_lm_infinite.md. Not length generalisation. ``n_local`` defaults to
    ``n_ctx // 4``. Returns binned NLL (bins of ``n_local``) with columns ``variant``, ``lo``,
    ``hi``, ``nll``.
    """
    import warnings

    from saetools.lminfinite import AbsolutePositionWarning
    n = model.cfg.n_ctx
    n_local = n_local or n // 4
    texts = [long_document(n // 4, seed=seed + 2000 + i) for i in range(n_docs)]
    tokens = torch.stack([model.to_tokens(t, prepend_bos=True)[0, :n] for t in texts])
    out = []
    for name, g in (("full attention", None), (f"mask, n_global={n_global}", n_global),
                    ("mask, n_global=0", 0)):
        cfg = None if g is None else LMInfiniteConfig(n_local=n_local, n_global=g, use_cap=False)
        with warnings.catch_warnings():  # the demo is labelled mask-only already
            warnings.simplefilter("ignore", AbsolutePositionWarning)
            nll = per_position_nll(model, tokens, cfg)
        for lo in range(0, len(nll), n_local):
            out.append({"variant": name, "lo": lo, "hi": min(lo + n_local, len(nll)),
                        "nll": float(nll[lo: lo + n_local].mean())})
    return pd.DataFrame(out)
