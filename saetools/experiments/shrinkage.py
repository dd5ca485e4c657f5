"""Shrinkage across SAE architectures and the feature-suppression fix (docs/shrinkage.md).

Gated SAEs (Rajamanoharan et al. 2024a, arXiv 2404.16014), JumpReLU SAEs (Rajamanoharan et
al. 2024b, arXiv 2407.14435), TopK / BatchTopK, and the L1 baseline are trained with the
sae-lens trainer on the *same* activations; each is evaluated with :mod:`saetools.evals`
(fidelity vs L0, gamma under both definitions of docs/shrinkage.md, the per-token l2 ratio). The L1
SAE is then fixed post hoc as in Wright & Sharkey (2024) (:func:`saetools.saes.refit_decoder`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from sae_lens import (
    BatchTopKTrainingSAEConfig,
    GatedTrainingSAEConfig,
    JumpReLUTrainingSAEConfig,
    StandardTrainingSAEConfig,
    TopKTrainingSAEConfig,
)
from sae_lens.saes.sae import SAEMetadata

from saetools.activations import collect_activations
from saetools.evals import evaluate_saes
from saetools.experiments.protocol import (
    Claims,
    ClaimsTable,
    Headline,
    Profiles,
    at_matched_l0,
    check_over_seeds,
    claim,
    require_model,
    run_seeds,
    short_training,
    subplots,
    tf32_on_cuda,
)
from saetools.models.text import corpus_tokens
from saetools.saes import refit_decoder
from saetools.training import train_sae

__all__ = ["HEADLINES", "JUMPRELU_TOLERANCE", "L0_ROUNDING", "SHRINK_MARGIN", "Config", "Result", "check", "figures", "run"]


@dataclass(frozen=True, kw_only=True)
class Config(Profiles):
    """What to train and evaluate."""

    layer: int | None = None
    """Residual stream ``blocks.{layer}.hook_resid_pre``; default the middle layer."""
    n_documents: int = 2500
    """Corpus documents whose activations train the SAEs."""
    n_eval_documents: int = 300
    """Held-out documents for evaluation."""
    context_size: int | None = None
    """Row length of the corpus rows, in tokens (default: the model's ``n_ctx``)."""
    d_sae: int = 384
    """Latents per SAE."""
    total_samples: int = 100_000
    """Training activations per SAE."""
    batch_size: int = 1024
    """Activations per training step."""
    lr: float = 2e-3
    """Adam learning rate."""
    l1_coefficients: tuple[float, ...] = (2.0, 5.0)
    """Sweep for the standard (L1) and gated SAEs (activations normalised to unit mean square norm)."""
    l0_coefficients: tuple[float, ...] = (0.5, 2.0)
    """Sweep for JumpReLU."""
    jumprelu_sparsity_loss: Literal["step", "tanh"] = "tanh"
    """JumpReLU's sparsity loss (sae-lens ``jumprelu_sparsity_loss_mode``): ``"step"`` is the
    paper's L0 loss, whose gradient reaches only the thresholds through a narrow kernel and
    barely moves L0 in a short run (L0 near 290 of 384 after ~100 steps on tiny-ioi);
    ``"tanh"`` is Anthropic's smooth variant, which sparsifies within the smoke budget."""
    k_values: tuple[int, ...] = (8, 24)
    """Sweep for TopK and BatchTopK."""
    seed: int = 0
    """Seeds data, initialisation and batch order."""
    n_seeds: int = 1
    """Seeds to run (``seed``, ``seed + 1000``, ...: data, initialisation and batch order all
    change); :func:`check` reports each claim's spread over them and needs it on every seed."""

    def __post_init__(self):
        if self.n_seeds < 1:
            raise ValueError(f"Config.n_seeds must be >= 1, got {self.n_seeds}")
        for name in ("n_documents", "n_eval_documents", "d_sae", "total_samples", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Config.{name} must be positive")
        if self.jumprelu_sparsity_loss not in ("step", "tanh"):
            raise ValueError(f"Config.jumprelu_sparsity_loss must be 'step' or 'tanh', "
                             f"got {self.jumprelu_sparsity_loss!r}")

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {},
        # 1,000 steps per SAE on 190k activations; sweeps wide enough for their L0 ranges to overlap
        "cpu": {"n_seeds": 3, "n_documents": 10_000, "total_samples": 512_000, "batch_size": 512, "l1_coefficients": (1.0, 2.0, 5.0),
                "l0_coefficients": (0.2, 0.5, 2.0), "k_values": (8, 16, 32)},
        "test": {"context_size": 64, "n_documents": 24, "n_eval_documents": 6, "d_sae": 64, "total_samples": 2048, "batch_size": 256},
        "full": {
            "n_documents": 60_000,
            "n_eval_documents": 3000,
            "d_sae": 2048,
            "total_samples": 8_000_000,
            "batch_size": 4096,
            "l1_coefficients": (1.0, 2.0, 5.0, 10.0),
            "l0_coefficients": (0.2, 0.5, 1.0, 2.0),
            "k_values": (8, 16, 32, 64),
            "jumprelu_sparsity_loss": "step",
        },
    }
    """Named configurations: ``"cpu"`` (the bundled model trained to convergence: the papers' comparisons, at most 10 minutes on 2 CPU cores), ``"smoke"`` (CPU, about a minute) or ``"full"``."""


@dataclass
class Result:
    """Everything the notebook shows."""

    config: Config
    table: pd.DataFrame
    """One row per SAE: ``architecture``, ``param`` (the swept value) and the evals columns."""
    l2_ratios: dict[str, np.ndarray]
    """Per-token ``||x_hat|| / ||x||`` on the evaluation tokens, per SAE."""
    suppression: pd.DataFrame
    """The most-shrunk L1 SAE before and after :func:`refit_decoder`."""
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)
    seed_results: list = field(default_factory=list)
    """The other seeds' results (``Config.n_seeds > 1``); this one is the first seed's."""


def _configs(cfg: Config, d_in: int, hook: str) -> dict[str, tuple[str, float, object]]:
    common = {"d_in": d_in, "d_sae": cfg.d_sae, "metadata": SAEMetadata(hook_name=hook),
                  "normalize_activations": "expected_average_only_in"}
    out = {}
    for c in cfg.l1_coefficients:
        out[f"standard l1={c}"] = ("standard", c, StandardTrainingSAEConfig(l1_coefficient=c, **common))
        out[f"gated l1={c}"] = ("gated", c, GatedTrainingSAEConfig(l1_coefficient=c, **common))
    for c in cfg.l0_coefficients:
        out[f"jumprelu l0={c}"] = ("jumprelu", c, JumpReLUTrainingSAEConfig(
            l0_coefficient=c, jumprelu_sparsity_loss_mode=cfg.jumprelu_sparsity_loss, **common))
    for k in cfg.k_values:
        out[f"topk k={k}"] = ("topk", k, TopKTrainingSAEConfig(k=k, **common))
        out[f"batchtopk k={k}"] = ("batchtopk", k, BatchTopKTrainingSAEConfig(k=k, **common))
    return out


@torch.no_grad()
def _l2_ratio(sae, x: torch.Tensor) -> np.ndarray:
    return (sae(x).norm(dim=-1) / x.norm(dim=-1)).numpy()


SUPPORTED_MODELS = "Any TransformerLens model with a tokenizer (it reads the bundled corpus)."
"""The models this experiment runs on (:func:`check_model` rejects others before any work)."""
EXPERIMENT = "The shrinkage experiment"


def check_model(model, cfg: Config | None = None) -> None:
    """Raise :class:`~saetools.experiments.protocol.UnsupportedModelError` unless the experiment
    supports ``model`` (with ``cfg``; :data:`SUPPORTED_MODELS`)."""
    require_model(model, EXPERIMENT)


@tf32_on_cuda
def run(model, cfg: Config) -> Result:
    """Every measurement, once per seed (:func:`~saetools.experiments.protocol.run_seeds`)."""
    check_model(model, cfg)
    return run_seeds(_run_one, model, cfg)


def _run_one(model, cfg: Config) -> Result:
    """Train every architecture on the same activations, evaluate, and fix the L1 SAE."""
    check_model(model, cfg)
    t0 = time.perf_counter()
    layer = model.cfg.n_layers // 2 if cfg.layer is None else cfg.layer
    hook = f"blocks.{layer}.hook_resid_pre"
    tokens, keep = corpus_tokens(model, cfg.n_documents, seed=cfg.seed, context_size=cfg.context_size)
    acts = collect_activations(model, tokens, hook, mask=keep)
    eval_tokens, eval_keep = corpus_tokens(model, cfg.n_eval_documents, seed=cfg.seed + 10_000, context_size=cfg.context_size)
    eval_acts = collect_activations(model, eval_tokens, hook, mask=eval_keep)
    saes, meta = {}, {}
    for i, (name, (arch, param, sae_cfg)) in enumerate(_configs(cfg, acts.shape[1], hook).items()):
        saes[name] = train_sae(acts, sae_cfg, total_samples=cfg.total_samples, batch_size=cfg.batch_size,
                               lr=cfg.lr, seed=cfg.seed + i)
        meta[name] = (arch, param)
    table = evaluate_saes(model, saes, eval_tokens)
    table.insert(1, "param", [meta[n][1] for n in table.sae])
    table["architecture"] = [meta[n][0] for n in table.sae]
    ratios = {n: _l2_ratio(s, eval_acts) for n, s in saes.items()}
    l1_names = [n for n in saes if meta[n][0] == "standard"]
    worst = min(l1_names, key=lambda n: table.set_index("sae").loc[n, "gamma_saelens"])
    fixed = refit_decoder(saes[worst], acts)
    supp = evaluate_saes(model, {f"{worst} (before)": saes[worst], f"{worst} (refit)": fixed}, eval_tokens)
    ratios[f"{worst} (refit)"] = _l2_ratio(fixed, eval_acts)
    return Result(config=cfg, table=table, l2_ratios=ratios, suppression=supp,
                           seconds=time.perf_counter() - t0,
                           meta={"hook_name": hook, "train_activations": int(acts.shape[0]),
                                 "eval_activations": int(eval_acts.shape[0]), "config": asdict(cfg)})


def figures(result: Result) -> dict[str, Figure]:
    """``{"shrinkage": ...}``: fidelity vs L0, gamma vs L0 (both definitions) and the l2-ratio
    histograms, one titled panel each. The definitions behind the words: loss recovered =
    (CE_zero - CE_sae) / (CE_zero - CE_clean); gamma (sae-lens) = E||x_hat||^2 / E[x_hat.x],
    gamma (projection) = E[x_hat.x] / E||x||^2; l2 ratio = ||x_hat|| / ||x||."""
    t = result.table
    fig, axes = subplots(1, 4, figsize=(18, 4))
    for arch, g in t.groupby("architecture"):
        g = g.sort_values("l0")
        axes[0].plot(g.l0, g.loss_recovered_zero, "o-", label=arch)
        axes[1].plot(g.l0, g.fvu, "o-", label=arch)
        axes[2].plot(g.l0, g.gamma_saelens, "o-", label=f"{arch}")
        axes[2].plot(g.l0, g.gamma_proj, "x--", color=axes[2].lines[-1].get_color())
    axes[0].set(title="Fidelity: loss recovered", xlabel="active latents per token (L0)", xscale="log",
                ylabel="loss recovered (vs zero-ablation)")
    axes[1].set(title="Fidelity: unexplained variance", xlabel="active latents per token (L0)", xscale="log",
                ylabel="fraction of variance unexplained")
    axes[2].axhline(1.0, color="gray", lw=0.5)
    axes[2].set(title="Shrinkage (1 = none; o sae-lens, x projection)", xlabel="active latents per token (L0)",
                xscale="log", ylabel="shrinkage factor gamma")
    for name, r in result.l2_ratios.items():
        if name.endswith(str(result.table.param.iloc[0])) or "refit" in name or name.split()[0] in ("topk", "jumprelu"):
            axes[3].hist(r, bins=60, range=(0, 1.6), histtype="step", label=name)
    axes[3].set(title="Reconstruction norm per token", xlabel="norm of reconstruction / norm of input",
                ylabel="tokens")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return {"shrinkage": fig}


L0_ROUNDING = 1e-3
"""Relative L0 change the refit may show: folding ``b_dec`` into the encoder bias changes float32
rounding, which flips the odd latent sitting exactly at its threshold."""


HEADLINES: dict[str, Headline] = {
    "L1 shrinks": Headline("L1 SAEs shrink their reconstructions", "baseline gamma noticeably below 1 (Gated SAE paper)"),
    "gated does not shrink": Headline("Gated SAEs do not shrink, and shrink less than L1 SAEs with the same "
                                      "coefficient", "gamma about 1"),
    "L0-trained do not shrink": Headline("JumpReLU, TopK and BatchTopK SAEs do not shrink",
                                         "no L1 penalty, so no shrinkage (JumpReLU paper)"),
    "gated beats L1 at equal L0": Headline("at equal L0, Gated SAEs reconstruct better than L1 SAEs",
                                           "half as many firing features for comparable fidelity"),
    "JumpReLU best at equal L0": Headline("at equal L0, JumpReLU reconstructs at least as well as Gated and TopK",
                                          "state-of-the-art fidelity at a given sparsity (Gemma 2 9B)"),
    "refit removes shrinkage": Headline(
        "fine-tuning the decoder with the activation pattern frozen removes shrinkage and lowers the MSE at "
        "the same L0", "9% lower MSE, 24% smaller perplexity increase (Pythia-70m; Wright & Sharkey)"),
}
"""The headline claims of the Gated and JumpReLU SAE papers and of Wright & Sharkey's
feature-suppression fix (keys of :func:`check`'s table)."""

SHRINK_MARGIN = 0.05
"""An SAE *shrinks* when ``gamma_saelens < 1 - SHRINK_MARGIN`` and does not when
``|gamma_saelens - 1| < SHRINK_MARGIN`` (the papers say "noticeably below 1" and "about 1")."""

JUMPRELU_TOLERANCE = 0.05
"""JumpReLU "at least as good" at equal L0: its FVU at most this fraction above the other's curve."""


def _beats(t: pd.DataFrame, arch: str, refs: tuple[str, ...]) -> tuple[dict, str]:
    """FVU of each ``arch`` SAE relative to each reference curve at the same L0 (inside its range)."""
    gaps = {}
    for name, row in t[t.architecture == arch].iterrows():
        for ref in refs:
            r = t[t.architecture == ref]
            g = row.fvu / at_matched_l0(r.l0, r.fvu, row.l0) - 1
            if np.isfinite(g):
                gaps[f"{name} vs {ref}"] = g
    return gaps, "; ".join(f"{k}: FVU {v:+.1%} at L0 equal" for k, v in gaps.items())


def check(result: Result, *, expected_failures: Mapping[str, str] | None = None) -> ClaimsTable:
    """The papers' claims on this run (:data:`HEADLINES`), measured on held-out tokens, over its
    seeds (:func:`~saetools.experiments.protocol.check_over_seeds`); raises ``ClaimFailed``.

    * L1 SAEs shrink: ``gamma_saelens`` below ``1 - SHRINK_MARGIN``, and below the Gated SAE
      trained with the same coefficient; Gated, JumpReLU, TopK and BatchTopK do not (within
      :data:`SHRINK_MARGIN` of 1).
    * Where the SAEs trained long enough (:func:`~saetools.experiments.protocol.short_training`)
      and the sweeps overlap in L0: every Gated SAE has a lower FVU than the L1 curve at its
      L0; every JumpReLU SAE's FVU is at most :data:`JUMPRELU_TOLERANCE` above the Gated and
      TopK curves at its L0.
    * The frozen-pattern refit of the most-shrunk L1 SAE moves ``gamma_saelens`` at least 0.05
      closer to 1, lowers the MSE, and keeps L0 (up to rounding); ``gamma_proj`` rises.

    ``gamma_proj`` is not tested against 1: it equals ``1 - E||x - x_hat||^2 / E||x||^2`` for an
    unbiased reconstruction, so it is below 1 for every imperfect SAE, shrinking or not.
    """
    return check_over_seeds(result, _claims, expected_failures=expected_failures, headlines=HEADLINES)


def _claims(result: Result, claims: Claims) -> None:
    """One seed's claims (:func:`check`)."""
    cfg = result.config
    t = result.table.set_index("sae")
    l1 = t[t.architecture == "standard"]
    gated = t[t.architecture == "gated"].set_index("param").gamma_saelens
    claims("L1 shrinks", (l1.gamma_saelens < 1 - SHRINK_MARGIN).all(),
           "gamma " + ", ".join(f"{n} {v:.3f}" for n, v in l1.gamma_saelens.items()), value=l1.gamma_saelens.max())
    g_ok = all(abs(gated[row.param] - 1) < SHRINK_MARGIN and row.gamma_saelens < gated[row.param]
               for _, row in l1.iterrows())
    claims("gated does not shrink", g_ok, "gamma " + ", ".join(
        f"gated l1={p} {v:.3f} (L1 {l1.set_index('param').gamma_saelens[p]:.3f})" for p, v in gated.items()),
        value=(gated - 1).abs().max())
    l0_trained = t[t.architecture.isin(["jumprelu", "topk", "batchtopk"])]
    claims("L0-trained do not shrink", ((l0_trained.gamma_saelens - 1).abs() < SHRINK_MARGIN).all(),
           "gamma " + ", ".join(f"{n} {v:.3f}" for n, v in l0_trained.gamma_saelens.items()),
           value=(l0_trained.gamma_saelens - 1).abs().max())
    why = short_training(cfg.total_samples // cfg.batch_size)
    for key, arch, refs, tol in (("gated beats L1 at equal L0", "gated", ("standard",), 0.0),
                                 ("JumpReLU best at equal L0", "jumprelu", ("gated", "topk"), JUMPRELU_TOLERANCE)):
        gaps, text = _beats(t, arch, refs)
        if why:
            claims.untestable(key, why, text)
        elif not gaps:
            claims.untestable(key, f"no {arch} SAE's L0 lies inside the {' / '.join(refs)} sweep's L0 range: widen "
                              "the sweeps", "L0 " + ", ".join(f"{a} {v:.1f}" for a, v in t.groupby("architecture").l0.median().items()))
        else:
            claims(key, all(g < 0 if tol == 0 else g <= tol for g in gaps.values()), text, value=max(gaps.values()))
    s = result.suppression.set_index("sae")
    before, after = s.iloc[0], s.iloc[1]
    claims("refit removes shrinkage",
           abs(after.gamma_saelens - 1) < abs(before.gamma_saelens - 1) - 0.05 and after.mse < before.mse
           and abs(after.l0 - before.l0) <= L0_ROUNDING * before.l0,
           f"gamma {before.gamma_saelens:.3f} -> {after.gamma_saelens:.3f}, MSE {before.mse:.4g} -> {after.mse:.4g} "
           f"({after.mse / before.mse - 1:+.1%}), L0 {before.l0:.2f} -> {after.l0:.2f}", value=after.mse / before.mse - 1)
    claim(after.gamma_proj > before.gamma_proj, "refit should raise gamma_proj")
