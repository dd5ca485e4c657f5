"""AFA, ZF plots, epsilon_LBO and top-AFA SAEs (Lee, Davies, Canby, Hockenmaier 2025, arXiv 2503.24277).

Three parts, all on quantities defined once in :mod:`saetools.diagnostics.afa` and :mod:`saetools.evals`:

1. **Toy ground truth**: :class:`saetools.diagnostics.toy.ToySuperposition` with a knob on how
   far from orthogonal the true feature directions are. The true dictionary's epsilon_LBO is 0
   for orthonormal directions and grows with the overlap; the AFA bound of docs/lee2025_top_afa.md holds
   token by token (``eps_LBO`` with the exact ``l1`` denominator never exceeds the true
   coherence), the global band ``c = epsilon (h - 1)`` is a guarantee only while ``c < 1``, and
   the paper's narrowest plotted band is left once the directions overlap enough.
2. **ZF plots and epsilon_LBO of real SAEs** on the same held-out activations: the bundled
   SAEs (or sae-lens pretrained ones on GPT-2) and every SAE trained in part 3.
3. **top-AFA vs TopK vs BatchTopK** trained with :func:`saetools.train_sae` on the same
   activations, with and without the paper's per-token standardisation
  , converted to their inference form (save / ``SAE.load_from_disk``: BatchTopK
   becomes a JumpReLU) and evaluated with :func:`saetools.evals.evaluate_saes`.

See ``docs/lee2025_top_afa.md`` for the method and where saetools differs from the authors' code.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from sae_lens import BatchTopKTrainingSAEConfig, TopKTrainingSAEConfig
from sae_lens.saes.sae import SAEMetadata

from saetools.activations import collect_activations
from saetools.diagnostics.afa import ZFData, afa, eps_lbo_table, sae_input_space, zf_data, zf_data_from_codes
from saetools.diagnostics.toy import ToyConfig, ToySuperposition
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
from saetools.saes import load_bundled_sae, load_pretrained_sae, load_sae, save_sae
from saetools.saes.topafa import TopAFATrainingSAEConfig
from saetools.training import train_sae

__all__ = ["AUTHORS_ADAM_BETAS", "AUTHORS_DEAD_WINDOW", "BUNDLED_EXPECTED_FAILURES_AT", "HEADLINES", "MATCH_TOLERANCE", "PAPER_LAYER6", "Config", "Result", "check", "figures", "nmse_standardised", "run",
           "toy_bounds"]

PAPER_LAYER6 = pd.DataFrame(
    [("TopK", "k=32", 32.0, 0.0649), ("TopK", "k=512", 512.0, 0.0089), ("TopK", "k=1024", 1023.0, 1.74e-4),
     ("BatchTopK", "k=1024", 1024.0, 1.65e-4), ("top-AFA", "1/128", 315.0, 0.132),
     ("top-AFA", "1/64", 1110.0, 0.0291), ("top-AFA", "1/32", 2037.0, 1.64e-4)],
    columns=["activation", "k / lambda_AFA", "L0", "normalised MSE"],
)
"""Reported by the authors for GPT-2 small layer 6, 12,288 latents (their exported results); a
reference for the ``"full"`` profile, not produced by this module."""


@dataclass(frozen=True, kw_only=True)
class Config(Profiles):
    """What to generate, train and evaluate."""

    layer: int | None = None
    """Residual stream ``blocks.{layer}.hook_resid_pre``; default the middle layer (tiny-ioi: 2,
    where the bundled SAEs live)."""
    n_documents: int = 600
    """Corpus documents whose activations train the SAEs."""
    n_eval_documents: int = 60
    """Held-out documents: evaluation, ZF plots, epsilon_LBO."""
    context_size: int | None = None
    """Row length of the corpus rows, in tokens (default: the model's ``n_ctx``)."""
    d_sae: int = 256
    """Latents of every trained SAE."""
    total_samples: int = 30_720
    """Training activations per SAE."""
    batch_size: int = 512
    """Activations per training step."""
    lr: float = 2e-3
    """Adam learning rate."""
    k_values: tuple[int, ...] = (8, 32)
    """Sweep for TopK and BatchTopK."""
    afa_coefficients: tuple[float, ...] = (1 / 32,)
    """``lambda_AFA`` sweep for top-AFA (paper: 1/128 .. 1/16)."""
    standardise: tuple[bool, ...] = (True, False)
    """top-AFA variants: per-token standardisation (the paper's ``input_unit_norm``, sae-lens
    ``"layer_norm"``) and/or raw activations scaled by one constant (``"expected_average_only_in"``,
    the variant ``docs/lee2025_top_afa.md`` explains)."""
    bundled: tuple[str, ...] = ("resid2-topk16", "resid2-standard")
    """Bundled SAEs to include (those whose hook is this run's hook)."""
    pretrained: tuple[tuple[str, str], ...] = ()
    """sae-lens pretrained ``(release, sae_id)`` pairs to include (need the hub or a cache)."""
    layer_sweep_k: int = 16
    """``k`` of the TopK SAE trained at every layer's residual stream (``hook_resid_pre`` of each
    block and the last ``hook_resid_post``) to compare how epsilon_LBO and the reconstruction
    error rank the layers; 0: no sweep."""
    toy_d: int = 64
    """Toy dense dimension."""
    toy_h: int = 48
    """Toy features for the overlap sweep (``< toy_d``: the coherence equals the overlap exactly)."""
    toy_overlaps: tuple[float, ...] = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
    """Pairwise cosine of the toy directions (:attr:`saetools.diagnostics.toy.ToyConfig.overlap`)."""
    toy_superposition_h: int = 512
    """Features of an extra toy in superposition (random unit directions, ``h > d``; its firing
    probability is scaled by ``toy_h / toy_superposition_h`` to keep the same L0); 0: none."""
    toy_samples: int = 4000
    """Samples per toy."""
    toy_firing_probability: float = 0.08
    """Probability that a toy feature is active on a sample."""
    seed: int = 0
    """Seeds data, initialisation, batch order and the toys."""
    n_seeds: int = 1
    """Seeds to run (``seed``, ``seed + 1000``, ...: data, initialisation and batch order all
    change); :func:`check` reports each claim's spread over them and needs it on every seed."""

    def __post_init__(self):
        if self.n_seeds < 1:
            raise ValueError(f"Config.n_seeds must be >= 1, got {self.n_seeds}")
        for name in ("n_documents", "n_eval_documents", "d_sae", "total_samples", "batch_size", "toy_d", "toy_h",
                     "toy_samples"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Config.{name} must be positive, got {getattr(self, name)}")
        if not self.k_values and not self.afa_coefficients:
            raise ValueError("Config: k_values and afa_coefficients are both empty; nothing to train")
        if any(c < 0 for c in self.afa_coefficients):
            raise ValueError(f"Config.afa_coefficients must be >= 0, got {self.afa_coefficients}")
        if self.afa_coefficients and not self.standardise:
            raise ValueError("Config.standardise must name at least one top-AFA variant (True / False)")
        if sorted(self.toy_overlaps) != list(self.toy_overlaps) or not all(0 <= o < 1 for o in self.toy_overlaps):
            raise ValueError(f"Config.toy_overlaps must be increasing values in [0, 1), got {self.toy_overlaps}")
        if len(self.toy_overlaps) < 2 or self.toy_overlaps[0] != 0:
            raise ValueError("Config.toy_overlaps must start at 0 and hold at least two values")
        if self.layer_sweep_k < 0 or self.layer_sweep_k > self.d_sae:
            raise ValueError(f"Config.layer_sweep_k must be in [0, d_sae={self.d_sae}], got {self.layer_sweep_k}")
        if self.toy_h >= self.toy_d:
            raise ValueError(f"Config.toy_h ({self.toy_h}) must be < toy_d ({self.toy_d}) so that the "
                             "toy coherence equals the overlap")

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "smoke": {},
        # 1,000 steps per SAE; the TopK sweep reaches the L0 that top-AFA picks here (about 210 of 256)
        "cpu": {"n_seeds": 3, "n_documents": 6000, "n_eval_documents": 200, "total_samples": 256_000,
                "batch_size": 256, "k_values": (8, 32, 128, 240), "afa_coefficients": (1 / 64, 1 / 32, 1 / 16)},
        "test": {"context_size": 64, "n_documents": 24, "n_eval_documents": 6, "d_sae": 64, "total_samples": 2048, "batch_size": 256,
                 "toy_samples": 600, "toy_superposition_h": 96},
        "full": {
            "layer": 8,
            "n_documents": 40_000,
            "n_eval_documents": 1000,
            "d_sae": 12_288,
            "total_samples": 20_000_000,
            "batch_size": 4096,
            "lr": 3e-4,
            "k_values": (32, 128, 512, 2048),
            "afa_coefficients": (1 / 128, 1 / 64, 1 / 32, 1 / 16),
            "bundled": (),
            "pretrained": (("gpt2-small-res-jb", "blocks.8.hook_resid_pre"),),
            "toy_samples": 20_000,
        },
    }
    """Named configurations: ``"cpu"`` (the bundled model trained to convergence: the papers' comparisons, at most 10 minutes on 2 CPU cores), ``"smoke"`` (CPU, under a minute) or ``"full"`` (GPT-2 small layer 8, GPU)."""


@dataclass
class Result:
    """Everything the notebook shows."""

    config: Config
    toy: pd.DataFrame
    """One row per toy (:func:`toy_bounds`)."""
    toy_zf: dict[str, ZFData]
    """AFA quantities of each toy's true dictionary and codes."""
    table: pd.DataFrame
    """One row per SAE: ``family``, ``param``, ``standardised``, the :func:`evaluate_saes` columns,
    ``nmse_standardised`` and the :func:`saetools.diagnostics.afa.eps_lbo_table` columns (prefixed ``zf_``)."""
    zf: dict[str, ZFData]
    """AFA quantities of every SAE on the held-out activations."""
    afa_target: pd.DataFrame
    """Spread of the top-AFA target ``||x_n - b_dec||`` over tokens, per top-AFA SAE."""
    layers: pd.DataFrame | None = None
    """One TopK SAE per layer (:attr:`Config.layer_sweep_k`): ``hook``, the medians over held-out
    tokens of ``eps_lbo`` and of the normalised reconstruction error ``recon_error``
    (``||z - z_hat||^2 / ||z||^2``), the paired violins of the paper's figure."""
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)
    seed_results: list = field(default_factory=list)
    """The other seeds' results (``Config.n_seeds > 1``); this one is the first seed's."""


def toy_bounds(toy: ToySuperposition, n: int, *, seed: int, name: str) -> tuple[dict, ZFData]:
    """AFA bounds of a toy's *true* dictionary and codes (noise-free).

    Returns a row with the coherence ``eps``, ``c = eps (h - 1)``, the median epsilon_LBO
    (paper denominator), the largest ``l1`` epsilon_LBO divided by ``eps`` (at most 1 by the
    theorem), the fraction of samples inside the global band (NaN when ``c >= 1``: vacuous),
    the fraction inside the paper's ``c = 0.25`` band, and ``||f|| / ||z||`` quantiles.
    """
    batch = toy.sample(n, seed=seed)
    W = toy.W.double()
    W = W / W.norm(dim=-1, keepdim=True)  # float64 unit rows, as the theorem assumes (and toy.coherence uses)
    z = batch.f.double() @ W  # noise- and bias-free: the codes explain z exactly
    data = zf_data_from_codes(z, batch.f, W, name=name, include_bias=False)
    l1 = zf_data_from_codes(z, batch.f, W, name=name, include_bias=False, denominator="l1").eps_lbo
    eps = toy.coherence
    c = eps * (toy.cfg.h - 1)
    ratio = data.ratio[np.isfinite(data.ratio)]
    return {
        "toy": name, "d": toy.cfg.d, "h": toy.cfg.h, "overlap": toy.cfg.overlap, "coherence": eps, "c": c,
        "eps_lbo": float(np.nanmedian(data.eps_lbo)),
        "l1_eps_lbo_over_coherence": float(np.nanmax(l1) / eps) if eps > 0 else float(np.nanmax(l1)),
        "in_global_band": data.frac_in_band(c) if c < 1 else float("nan"),
        "in_band_0.25": data.frac_in_band(0.25),
        "ratio_p5": float(np.percentile(ratio, 5)), "ratio_median": float(np.median(ratio)),
        "ratio_p95": float(np.percentile(ratio, 95)),
    }, data


def _toys(cfg: Config) -> tuple[pd.DataFrame, dict[str, ZFData]]:
    rows, zfs = [], {}
    specs = [(f"overlap {o:g}", ToyConfig(d=cfg.toy_d, h=cfg.toy_h, overlap=o, seed=cfg.seed,
                                          firing_probability=cfg.toy_firing_probability)) for o in cfg.toy_overlaps]
    if cfg.toy_superposition_h:
        specs.append((f"superposition h={cfg.toy_superposition_h}",
                      ToyConfig(d=cfg.toy_d, h=cfg.toy_superposition_h, seed=cfg.seed, orthogonalize=False,
                                firing_probability=cfg.toy_firing_probability * cfg.toy_h / cfg.toy_superposition_h)))
    for i, (name, toy_cfg) in enumerate(specs):
        row, zfs[name] = toy_bounds(ToySuperposition(toy_cfg), cfg.toy_samples, seed=cfg.seed + 1 + i, name=name)
        rows.append(row)
    return pd.DataFrame(rows).set_index("toy"), zfs


def _lam(c: float) -> str:
    return f"1/{round(1 / c)}" if c > 0 and abs(1 / c - round(1 / c)) < 1e-6 else f"{c:g}"


def _train_configs(cfg: Config, d_in: int, hook: str) -> dict[str, tuple[str, object, bool, object]]:
    common = {"d_in": d_in, "d_sae": cfg.d_sae, "metadata": SAEMetadata(hook_name=hook)}
    scaled = {**common, "normalize_activations": "expected_average_only_in"}
    out = {}
    for k in cfg.k_values:
        out[f"topk k={k}"] = ("topk", k, False, TopKTrainingSAEConfig(k=k, **scaled))
        out[f"batchtopk k={k}"] = ("batchtopk", k, False, BatchTopKTrainingSAEConfig(k=k, **scaled))
    for lam in cfg.afa_coefficients:
        for std in cfg.standardise:
            norm = "layer_norm" if std else "expected_average_only_in"
            out[f"topafa l={_lam(lam)} {'std' if std else 'raw'}"] = (
                "topafa", _lam(lam), std, TopAFATrainingSAEConfig(afa_coefficient=lam, normalize_activations=norm,
                                                                  **common))
    return out


def nmse_standardised(sae, x: torch.Tensor) -> float:
    """The AFA paper's "normalised MSE": per-element MSE after standardising each token with its
    input's mean and (unbiased) std, ``mean_{tokens, d} ((x_hat - x) / (std_d(x) + 1e-5))^2``."""
    with torch.no_grad():
        x_hat = sae(x)
    sd = x.std(dim=-1, keepdim=True) + 1e-5
    return ((x_hat - x) / sd).double().pow(2).mean().item()


def _afa_target(name: str, sae, x: torch.Tensor, standardised: bool) -> dict:
    with torch.no_grad():
        t = afa(sae_input_space(sae, x), sae.b_dec.detach()).double()
        raw = afa(x).double()
    return {"sae": name, "standardised": standardised, "target_mean": t.mean().item(),
            "target_cv": (t.std() / t.mean()).item(), "input_norm_cv": (raw.std() / raw.mean()).item()}


def _reference_saes(cfg: Config, hook: str, d_in: int, meta: dict) -> dict:
    out, skipped = {}, []
    for name in cfg.bundled:
        sae = load_bundled_sae(name)
        if sae.cfg.metadata.hook_name == hook and sae.cfg.d_in == d_in:
            out[f"bundled {name}"] = sae
        else:
            skipped.append(f"{name} (reads {sae.cfg.metadata.hook_name}, d_in {sae.cfg.d_in})")
    for release, sae_id in cfg.pretrained:
        out[f"{release} {sae_id}"] = load_pretrained_sae(release, sae_id)
    meta["skipped_reference_saes"] = skipped
    return out


def _releases(cfg: Config | None) -> set[str]:
    return set() if cfg is None else {release for release, _ in cfg.pretrained}


SUPPORTED_MODELS = "Any TransformerLens model with a tokenizer; ``pretrained`` SAEs must be for this model (the full profile's are for GPT-2 small)."
"""The models this experiment runs on (:func:`check_model` rejects others before any work)."""
EXPERIMENT = "The top-AFA experiment"


def check_model(model, cfg: Config | None = None) -> None:
    """Raise :class:`~saetools.experiments.protocol.UnsupportedModelError` unless the experiment
    supports ``model`` (with ``cfg``; :data:`SUPPORTED_MODELS`)."""
    require_model(model, EXPERIMENT, releases=_releases(cfg))


@tf32_on_cuda
def run(model, cfg: Config) -> Result:
    """Every measurement, once per seed (:func:`~saetools.experiments.protocol.run_seeds`)."""
    check_model(model, cfg)
    return run_seeds(_run_one, model, cfg)


def _run_one(model, cfg: Config) -> Result:
    """Toy bounds, then train every architecture on the same activations, convert, evaluate and ZF-plot."""
    check_model(model, cfg)
    t0 = time.perf_counter()
    toy, toy_zf = _toys(cfg)
    layer = model.cfg.n_layers // 2 if cfg.layer is None else cfg.layer
    hook = f"blocks.{layer}.hook_resid_pre"
    tokens, keep = corpus_tokens(model, cfg.n_documents, seed=cfg.seed, context_size=cfg.context_size)
    acts = collect_activations(model, tokens, hook, mask=keep)
    eval_tokens, eval_keep = corpus_tokens(model, cfg.n_eval_documents, seed=cfg.seed + 10_000, context_size=cfg.context_size)
    eval_acts = collect_activations(model, eval_tokens, hook, mask=eval_keep)
    meta = {"hook_name": hook, "train_activations": int(acts.shape[0]), "eval_activations": int(eval_acts.shape[0])}
    saes, info = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (family, param, std, sae_cfg)) in enumerate(_train_configs(cfg, acts.shape[1], hook).items()):
            trained = train_sae(acts, sae_cfg, total_samples=cfg.total_samples, batch_size=cfg.batch_size, lr=cfg.lr,
                                seed=cfg.seed + i, adam_betas=AUTHORS_ADAM_BETAS, dead_feature_window=AUTHORS_DEAD_WINDOW)
            saes[name] = load_sae(save_sae(trained, f"{tmp}/{i}"))  # inference form (BatchTopK -> JumpReLU)
            info[name] = (family, param, std)
    for name, sae in _reference_saes(cfg, hook, acts.shape[1], meta).items():
        saes[name] = sae
        info[name] = (f"{sae.cfg.architecture()} (reference)", "", False)
    table = evaluate_saes(model, saes, eval_tokens)
    table.insert(1, "family", [info[n][0] for n in table.sae])
    table.insert(2, "param", [str(info[n][1]) for n in table.sae])
    table.insert(3, "standardised", [info[n][2] for n in table.sae])
    table["nmse_standardised"] = [nmse_standardised(saes[n], eval_acts) for n in table.sae]
    zf = {n: zf_data(s, eval_acts, name=n) for n, s in saes.items()}
    zf_table = eps_lbo_table(zf).add_prefix("zf_")
    table = table.join(zf_table, on="sae")
    afa_target = pd.DataFrame([_afa_target(n, saes[n], eval_acts, info[n][2]) for n in saes
                               if info[n][0] == "topafa"])
    layers = _layer_sweep(model, cfg, tokens, keep, eval_tokens, eval_keep) if cfg.layer_sweep_k else None
    return Result(config=cfg, toy=toy, toy_zf=toy_zf, table=table, zf=zf, afa_target=afa_target, layers=layers,
                         seconds=time.perf_counter() - t0, meta={**meta, "config": asdict(cfg)})


def _layer_sweep(model, cfg: Config, tokens, keep, eval_tokens, eval_keep) -> pd.DataFrame:
    """One TopK SAE per residual-stream layer; medians of epsilon_LBO and of the reconstruction error."""
    hooks = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)]
    hooks.append(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")
    from saetools.diagnostics.dark_matter import collect_hooks

    def no_bos(mask):  # the tokens collect_activations keeps: BOS (position 0) left out
        mask = mask.clone()
        mask[:, 0] = False
        return mask

    train_all = collect_hooks(model, tokens, hooks, no_bos(keep))  # one forward pass for every layer
    held_all = collect_hooks(model, eval_tokens, hooks, no_bos(eval_keep))
    rows = []
    for i, hook in enumerate(hooks):
        acts, held = train_all.pop(hook), held_all.pop(hook)
        sae_cfg = TopKTrainingSAEConfig(k=cfg.layer_sweep_k, d_in=acts.shape[1], d_sae=cfg.d_sae,
                                        metadata=SAEMetadata(hook_name=hook), normalize_activations="expected_average_only_in")
        sae = train_sae(acts, sae_cfg, total_samples=cfg.total_samples, batch_size=cfg.batch_size, lr=cfg.lr,
                        seed=cfg.seed + 500 + i, adam_betas=AUTHORS_ADAM_BETAS, dead_feature_window=AUTHORS_DEAD_WINDOW)
        d = zf_data(sae, held, name=hook)
        rows.append({"hook": hook, "eps_lbo": float(np.nanmedian(d.eps_lbo)),
                     "recon_error": float(np.nanmedian(d.recon_error))})
    return pd.DataFrame(rows)


def figures(result: Result) -> dict[str, Figure]:
    """``{"toy_zf", "zf", "violin", "frontier", "layers"}``: toy ZF plots, ZF plots of the SAEs,
    paired violins (reconstruction error | epsilon_LBO), nMSE / loss recovered vs L0 with
    top-AFA's k histogram, and (with a layer sweep) both medians by layer."""
    from saetools.diagnostics.afa import zf_plot, zf_violin_plot

    toy_names = list(result.toy_zf)
    pick = [toy_names[0], toy_names[len(result.config.toy_overlaps) // 2], toy_names[len(result.config.toy_overlaps) - 1]]
    pick += toy_names[len(result.config.toy_overlaps):]
    figs = {"toy_zf": zf_plot({n: result.toy_zf[n] for n in pick}, ncols=4),
            "zf": zf_plot(result.zf, ncols=4), "violin": zf_violin_plot(result.zf)}
    for f in figs.values():
        plt.close(f)  # shown where the notebook displays it, once
    t = result.table
    fig, axes = subplots(1, 3, figsize=(16, 4))
    for fam, g in t[~t.family.str.endswith("(reference)")].groupby(["family", "standardised"]):
        g = g.sort_values("l0")
        label = fam[0] + (" (standardised)" if fam[1] else "")
        axes[0].plot(g.l0, g.nmse_standardised, "o-", label=label)
        axes[1].plot(g.l0, g.loss_recovered_zero, "o-", label=label)
    for _, r in t[t.family.str.endswith("(reference)")].iterrows():
        axes[0].plot(r.l0, r.nmse_standardised, "k*", ms=10)
        axes[1].plot(r.l0, r.loss_recovered_zero, "k*", ms=10, label=r.sae)
    axes[0].set(xscale="log", yscale="log", xlabel="L0 (mean active latents per token)",
                ylabel="nMSE = mean ((x_hat - x) / std(x))^2")
    axes[1].set(xscale="log", xlabel="L0", ylabel="loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean)")
    for name, d in result.zf.items():
        if name.startswith("topafa"):
            axes[2].hist(d.l0, bins=40, histtype="step", label=name)
    axes[2].set(xlabel="per-token k chosen by top-AFA", ylabel="tokens")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    figs["frontier"] = fig
    if result.layers is not None:
        figs["layers"] = _layers_figure(result.layers)
    return figs


def _layers_figure(layers: pd.DataFrame) -> Figure:
    """Median epsilon_LBO and median reconstruction error of one TopK SAE per layer."""
    fig, axes = subplots(1, 2, figsize=(10, 3.5))
    names = [h.replace("blocks.", "layer ").replace(".hook_resid_", " ") for h in layers.hook]
    for ax, col, label in ((axes[0], "recon_error", "median ||z - z_hat||^2 / ||z||^2"),
                           (axes[1], "eps_lbo", "median epsilon_LBO")):
        ax.bar(range(len(layers)), layers[col])
        ax.set(xticks=range(len(layers)), xticklabels=names, ylabel=label,
               title=f"{label.split(' ', 1)[1]} by layer (TopK SAEs)")
        ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    return fig


HEADLINES: dict[str, Headline] = {
    "eps_lbo": Headline("epsilon_LBO is 0 for orthonormal directions and grows with their overlap",
                        "zero exactly for a quasi-orthogonal-free (orthonormal) dictionary; increasing in the coherence"),
    "bound": Headline("the AFA bound holds token by token (l1 epsilon_LBO <= the coherence)", "a theorem: always"),
    "band": Headline("the c = 0.25 band holds for orthonormal directions and breaks with overlap / superposition",
                     "ZF points of real SAEs fall outside the narrow band"),
    "topk underactivated": Headline("TopK SAEs at small k are under-activated (||f~|| < ||z||)",
                                    "ZF plot: TopK points below the diagonal"),
    "top-AFA follows the AFA": Headline("top-AFA's code norm follows the AFA and its epsilon_LBO is lower than TopK's",
                                        "top-AFA points on the ZF diagonal"),
    "top-AFA matches TopK at equal L0": Headline(
        "top-AFA reconstructs as well as TopK / BatchTopK at equal L0, without choosing k",
        "layer 6: top-AFA 1/64 at L0 1110 nMSE 0.029, between TopK k=512 (0.0089) and k=32 (0.065)"),
    "eps_LBO ranks layers differently": Headline(
        "epsilon_LBO ranks layers differently from the reconstruction error",
        "best and worst layers by median epsilon_LBO differ from those by MSE (GPT-2 small, 12 layers)"),
}
"""Lee et al.'s headline claims (keys of :func:`check`'s table)."""

BUNDLED_EXPECTED_FAILURES_AT: dict[str, dict[str, str]] = {
    "cpu": {"top-AFA matches TopK at equal L0": (
        "trained to convergence on tiny-ioi (128 dimensions, 256 latents), top-AFA keeps most latents and "
        "reconstructs worse than a TopK SAE of the same L0, at every lambda_AFA tried, with and without "
        "standardisation; the paper's SAEs are far wider than their input (12,288 latents for 768 dimensions), "
        "and whether width closes the gap is not tested at this scale")},
}
"""Claims the bundled ``tiny-ioi`` does not show at a profile, and why (strict expected failures)."""

AUTHORS_ADAM_BETAS = (0.9, 0.99)
"""Adam's betas in the authors' training loop (every SAE of this experiment uses them)."""
AUTHORS_DEAD_WINDOW = 5
"""Steps without firing after which the authors count a latent dead (AuxK)."""

MATCH_TOLERANCE = 0.05
"""top-AFA "matches" TopK at equal L0 when its nMSE is at most this fraction above TopK's curve."""


def check(result: Result, *, expected_failures: Mapping[str, str] | None = None) -> ClaimsTable:
    """The paper's claims on this run (:data:`HEADLINES`), as a table; raises ``ClaimFailed``.

    Toy (true dictionaries, noise-free): epsilon_LBO near 0 (median < 1e-6) for orthonormal
    directions and strictly increasing with the overlap; the ``l1`` epsilon_LBO never exceeds the
    coherence (ratio <= 1 + 1e-6) and every sample lies in the global band wherever
    ``c = eps (h - 1) < 1``; the paper's ``c = 0.25`` band holds for orthonormal directions and
    breaks at the largest overlap and in superposition.

    SAEs (held-out activations): the TopK SAE with the smallest k is under-activated (median
    ``||f~|| / ||z|| < 1``); each top-AFA SAE picks a different k per token, matches the AFA
    more closely (median ``| ||f~|| / ||z|| - 1 |``) and has a lower epsilon_LBO; where the
    SAEs trained long enough (:func:`~saetools.experiments.protocol.short_training`), each top-AFA
    SAE whose L0 lies inside the TopK sweep's has an nMSE at most :data:`MATCH_TOLERANCE` above
    the TopK curve at that L0. Also asserted: with per-token standardisation the AFA target
    varies at most half as much across tokens, and every trained SAE recovers most of the loss.
    """
    return check_over_seeds(result, _claims, expected_failures=expected_failures, headlines=HEADLINES)


def _claims(result: Result, claims: Claims) -> None:
    """One seed's claims (:func:`check`)."""
    cfg, toy = result.config, result.toy
    sweep = toy[toy.h == cfg.toy_h]
    eps = sweep.eps_lbo.to_numpy()
    claims("eps_lbo", eps[0] < 1e-6 and (np.diff(eps) > 0).all(),
           f"median epsilon_LBO {eps[0]:.1e} at overlap 0, then {', '.join(f'{e:.3f}' for e in eps[1:])}",
           value=eps[-1])
    inside = toy.in_global_band.dropna()
    worst = float(toy.l1_eps_lbo_over_coherence.max())
    claims("bound", worst <= 1 + 1e-6 and (inside == 1.0).all(),
           f"largest l1 epsilon_LBO / coherence {worst:.4f}; share inside the global band {inside.min():.3f}",
           value=worst)
    broken = [sweep["in_band_0.25"].iloc[-1]] + list(toy[toy.h != cfg.toy_h]["in_band_0.25"])
    claims("band", sweep["in_band_0.25"].iloc[0] == 1.0 and all(b < 1.0 for b in broken),
           f"share inside c = 0.25: {sweep['in_band_0.25'].iloc[0]:.2f} orthonormal, "
           f"{', '.join(f'{b:.2f}' for b in broken)} at the largest overlap / in superposition", value=max(broken))

    t = result.table.set_index("sae")
    afa_rows = [n for n in t.index if t.loc[n, "family"] == "topafa"]
    for n in afa_rows:
        k = result.zf[n].l0
        claim(k.min() < k.max(), f"{n}: top-AFA chose the same k = {k.min()} for every token")
    topk = t[t.family == "topk"]
    if len(topk) and afa_rows:
        ref = topk.sort_values("l0").index[0]
        dev = {n: float(np.nanmedian(np.abs(result.zf[n].ratio - 1))) for n in [ref, *afa_rows]}
        ratio_ref = float(np.nanmedian(result.zf[ref].ratio))
        claims("topk underactivated", ratio_ref < 1, f"{ref}: median ||f~|| / ||z|| = {ratio_ref:.3f}", value=ratio_ref)
        better = all(dev[n] < dev[ref] and t.loc[n, "zf_eps_lbo"] < t.loc[ref, "zf_eps_lbo"] for n in afa_rows)
        claims("top-AFA follows the AFA", better, "median | ||f~|| / ||z|| - 1 |: " + ", ".join(
            f"{n} {dev[n]:.3f} (epsilon_LBO {t.loc[n, 'zf_eps_lbo']:.3f})" for n in dev),
            value=max(dev[n] for n in afa_rows))
        why = short_training(cfg.total_samples // cfg.batch_size)
        gaps = {n: t.loc[n, "nmse_standardised"] / at_matched_l0(topk.l0, topk.nmse_standardised, t.loc[n, "l0"]) - 1
                for n in afa_rows}
        gaps = {n: g for n, g in gaps.items() if np.isfinite(g)}
        if why:
            claims.untestable("top-AFA matches TopK at equal L0", why)
        elif not gaps:
            claims.untestable("top-AFA matches TopK at equal L0",
                              f"no top-AFA L0 ({', '.join(f'{v:.1f}' for v in t.loc[afa_rows, 'l0'])}) lies inside "
                              f"the TopK sweep's ({topk.l0.min():.1f}-{topk.l0.max():.1f}); widen k_values")
        else:
            claims("top-AFA matches TopK at equal L0", all(g <= MATCH_TOLERANCE for g in gaps.values()),
                   "nMSE relative to TopK at the same L0: " + ", ".join(f"{n} {g:+.1%}" for n, g in gaps.items()),
                   value=max(gaps.values()))
    else:
        for key in ("topk underactivated", "top-AFA follows the AFA", "top-AFA matches TopK at equal L0"):
            claims.untestable(key, "the profile trains no TopK or no top-AFA SAE")
    lay = result.layers
    if lay is None or len(lay) < 3:
        claims.untestable("eps_LBO ranks layers differently", "needs an SAE at 3 or more layers (layer_sweep_k > 0)")
    elif why := short_training(cfg.total_samples // cfg.batch_size):
        claims.untestable("eps_LBO ranks layers differently", why)
    else:
        by_eps, by_err = lay.eps_lbo.rank().to_numpy(), lay.recon_error.rank().to_numpy()
        rho = float(np.corrcoef(by_eps, by_err)[0, 1])
        short = [h.replace("blocks.", "").replace(".hook_resid_", " ") for h in lay.hook]
        differs = lay.eps_lbo.idxmin() != lay.recon_error.idxmin() or lay.eps_lbo.idxmax() != lay.recon_error.idxmax()
        claims("eps_LBO ranks layers differently", differs,
               f"best / worst layer by epsilon_LBO {short[lay.eps_lbo.idxmin()]} / {short[lay.eps_lbo.idxmax()]}, by "
               f"reconstruction error {short[lay.recon_error.idxmin()]} / {short[lay.recon_error.idxmax()]}; rank "
               f"correlation {rho:.2f}", value=rho)
    spread_ = result.afa_target
    if spread_.standardised.nunique() == 2:
        cv_std = spread_[spread_.standardised].target_cv.max()
        cv_raw = spread_[~spread_.standardised].target_cv.min()
        claim(cv_std <= 0.5 * cv_raw, f"standardisation should flatten the AFA target: CV {cv_std:.3g} vs {cv_raw:.3g}")
    trained = t[~t.family.str.endswith("(reference)")]
    claim((trained.loss_recovered_zero > 0.5).all(),
          f"trained SAEs should recover most of the loss: {trained.loss_recovered_zero.round(3).to_dict()}")
