"""How long a profile takes and how much GPU memory it needs, estimated from its sizes and FLOPs.

Each experiment's work is summed into a :class:`Workload`: tokens through the model (each costs
``2 x parameters`` FLOPs forward), SAE training (FLOPs, and optimizer steps, each of which also
pays a fixed launch overhead on a GPU), and the largest set of tensors alive at once. :func:`estimate`
turns a workload into seconds and GiB on a :class:`GPU`: FLOPs at :data:`EFFICIENCY` of the
card's float32 peak, plus :data:`STEP_OVERHEAD_S` per optimizer step, plus the model's weights.

These are estimates for planning (order of magnitude, not a benchmark):
``bench/bench_full_profiles.py`` times the heavy steps on the device at hand.
``saetools reproduce --profile full`` refuses to start when the estimate does not fit the GPU.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["GPUS", "GPU", "ModelDims", "ProfileTooLargeError", "Workload", "check_fits", "estimate",
           "experiment_estimate", "markdown_table", "model_dims", "profile_table", "readme_table", "workload"]

EFFICIENCY = 0.4
"""Fraction of a GPU's float32 peak that the matrix products reach (typical for these shapes)."""
STEP_OVERHEAD_S = 1e-3
"""Seconds of kernel launches and bookkeeping per SAE optimizer step (forward, backward, Adam)."""
DOC_TOKENS = 20
"""Tokens per document of the bundled corpus with BOS (GPT-2's tokenizer gives 18.8 + 1)."""
PROMPT_TOKENS = 19
"""Tokens per IOI prompt with BOS (Wang et al.'s templates give about 17, Makelov et al.'s 19)."""
BYTES = 4  # float32


class ProfileTooLargeError(RuntimeError):
    """A profile's estimated GPU memory exceeds the device's (or it needs a GPU and there is none)."""


@dataclass(frozen=True)
class GPU:
    """A GPU's dense float32 matmul peak (in TF32 where the card has it: experiments run their
    float32 products in TF32 on CUDA, :func:`~saetools.experiments.protocol.tf32_on_cuda`) and
    its memory."""

    name: str
    tflops: float
    memory_gib: float


GPUS = {"T4": GPU("T4 (16 GB)", 8.1, 15.0), "A100": GPU("A100 (80 GB)", 156.0, 79.0),
        "H100": GPU("H100 PCIe (80 GB)", 378.0, 79.0)}
"""The cards of the README's table (T4: Colab's free GPU; it has no TF32, so plain float32)."""


@dataclass(frozen=True)
class Workload:
    """What a run does, in units :func:`estimate` prices."""

    forward_tokens: float = 0.0
    """Tokens through the model (forward passes)."""
    train_flops: float = 0.0
    """FLOPs of all SAE training (forward and backward)."""
    train_steps: float = 0.0
    """Optimizer steps run one after another (a batch of SAEs trained together counts once)."""
    peak_bytes: float = 0.0
    """The largest set of tensors alive at once on the GPU, besides the model's weights."""

    def __add__(self, other: Workload) -> Workload:
        return Workload(self.forward_tokens + other.forward_tokens, self.train_flops + other.train_flops,
                        self.train_steps + other.train_steps, max(self.peak_bytes, other.peak_bytes))


@dataclass(frozen=True)
class ModelDims:
    """The sizes of a model that the estimates need."""

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int
    n_params: int


def model_dims(cfg) -> ModelDims:
    """:class:`ModelDims` of a TransformerLens ``HookedTransformerConfig``."""
    n_params = cfg.n_params + 2 * cfg.d_vocab * cfg.d_model + cfg.n_ctx * cfg.d_model
    return ModelDims(cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_vocab, cfg.n_ctx, n_params)


def _forward(dims: ModelDims, tokens: float, batch_tokens: float) -> Workload:
    """``tokens`` through the whole model in batches of ``batch_tokens`` (logits dominate memory:
    the logits and their log-softmax)."""
    return Workload(forward_tokens=tokens, peak_bytes=2 * batch_tokens * dims.d_vocab * BYTES)


def _saes(n: int, d_in: float, d_sae: float, samples: float, batch: int, *, together: int = 1,
          steps_each: float | None = None) -> Workload:
    """``n`` SAEs trained on ``samples`` vectors each, ``together`` of them per step (dense encoder
    and decoder: ``12 d_in d_sae`` FLOPs per vector, forward and backward; weights, gradients and
    two Adam moments held)."""
    steps = n / together * (math.ceil(samples / batch) if steps_each is None else steps_each)
    state = 4 * 2 * d_in * d_sae * BYTES * together
    acts = 3 * batch * d_sae * BYTES * together
    return Workload(train_flops=12 * d_in * d_sae * samples * n, train_steps=steps, peak_bytes=state + acts)


def _resid_saes(dims: ModelDims, cfg, n_saes: int, d_sae: float, *, tokens: float, ctx: int) -> Workload:
    """Collect activations, train ``n_saes`` SAEs on them, evaluate each spliced (shrinkage, top-AFA)."""
    eval_tokens = cfg.n_eval_documents * DOC_TOKENS
    collect = _forward(dims, tokens + eval_tokens, 0)
    train = _saes(n_saes, dims.d_model, d_sae, cfg.total_samples, cfg.batch_size)
    evaluate = _forward(dims, eval_tokens * (n_saes + 2), 32 * ctx)
    return collect + train + evaluate


def workload(module: str, cfg, dims: ModelDims) -> Workload:
    """The :class:`Workload` of experiment ``module`` (its name in :mod:`saetools.experiments`)
    run with ``cfg`` on a model of ``dims``."""
    heads = dims.n_layers * dims.n_heads
    if module == "quickstart":
        prompts = cfg.n_prompts * PROMPT_TOKENS
        return (_forward(dims, prompts * (2 + heads) + cfg.sae_prompts * PROMPT_TOKENS, prompts)
                + _saes(1, dims.d_model, 8 * dims.d_model, cfg.sae_samples, 512))
    if module == "wang2022_ioi":
        prompts = cfg.n_prompts * PROMPT_TOKENS
        # clean and ABC runs, residual patching per layer and position, four head sweeps, path
        # patching of every head, and discovery's own sweeps
        return _forward(dims, prompts * (2 + 6 * dims.n_layers + 7 * heads), prompts)
    if module == "shrinkage":
        n = 2 * len(cfg.l1_coefficients) + len(cfg.l0_coefficients) + 2 * len(cfg.k_values)
        return _resid_saes(dims, cfg, n, cfg.d_sae, tokens=cfg.n_documents * DOC_TOKENS,
                           ctx=cfg.context_size or dims.n_ctx)
    if module == "lee2025_top_afa":
        n = 2 * len(cfg.k_values) + len(cfg.afa_coefficients) * len(cfg.standardise)
        return _resid_saes(dims, cfg, n, cfg.d_sae, tokens=cfg.n_documents * DOC_TOKENS,
                           ctx=cfg.context_size or dims.n_ctx)
    if module == "mudide2024_switch_sae":
        ctx = min(128, dims.n_ctx) if cfg.dataset else (cfg.context_size or dims.n_ctx)
        rows = cfg.n_documents + cfg.n_eval_documents
        tokens = rows * ctx if cfg.dataset else rows * DOC_TOKENS
        n = (len(cfg.k_values) + len(cfg.flop_matched_experts) + len(cfg.width_matched_experts)
             + len(cfg.balance_alphas) + 1)
        train = _saes(n, dims.d_model, cfg.width, cfg.total_samples, cfg.batch_size)
        return _forward(dims, tokens, 0) + train + _forward(dims, cfg.n_eval_documents * ctx * (n + 2), 32 * ctx)
    if module == "engels2024_dark_matter":
        return _dark_matter(cfg, dims)
    if module == "makelov2024_supervised_dictionaries":
        return _makelov(cfg, dims)
    if module == "han2023_lm_infinite":
        longest = dims.n_ctx  # documents of max_factor x the training length, capped at n_ctx
        lengths = [longest // 2**k for k in range(int(math.log2(max(2, cfg.max_factor))) + 1)]
        # five variants scored over n_docs documents, passkey prompts at every length, and the
        # attention scores of one layer at the longest length
        tokens = 5 * cfg.n_docs * longest + 2 * cfg.n_passkey * sum(lengths)
        return Workload(forward_tokens=tokens, peak_bytes=dims.n_heads * longest**2 * BYTES
                        + 2 * longest * dims.d_vocab * BYTES)
    raise ValueError(f"no workload model for experiment {module!r}")


def _dark_matter(cfg, dims: ModelDims) -> Workload:
    if cfg.source == "pretrained":
        widths = [int(m.group(1)) if (m := re.search(r"_(\d+)$", i)) else 24576 for i in cfg.pretrained_ids]
        tokens = cfg.n_rows * cfg.context_size
        train = Workload()
    else:
        widths = list(cfg.widths)
        tokens = cfg.n_documents * DOC_TOKENS
        train = _saes(len(widths) + 1, dims.d_model, max(widths), cfg.total_samples, cfg.batch_size)
    # encode every token with every SAE, and gradient pursuit with each dictionary (about L0
    # iterations of a [tokens, width] correlation, in chunks of pursuit_max_elements)
    encode = sum(2 * dims.d_model * w * tokens * 2 for w in widths)
    pursuit = sum(2 * dims.d_model * w * tokens * 64 for w in widths)
    chunk = cfg.pursuit_max_elements * BYTES * 3
    sae_bytes = 2 * dims.d_model * max(widths) * BYTES
    splice = _forward(dims, cfg.n_splice_rows * cfg.context_size * (len(widths) * 3 + 2), 32 * cfg.context_size)
    return (Workload(forward_tokens=tokens, train_flops=encode + pursuit, peak_bytes=chunk + sae_bytes)
            + train + splice)


def _makelov(cfg, dims: ModelDims) -> Workload:
    from saetools.circuits import WANG_2022_GPT2_CIRCUIT
    from saetools.dictionaries import cross_sections

    if cfg.circuit == "wang2022":
        n_nodes = len({n for s in cross_sections(WANG_2022_GPT2_CIRCUIT, kinds=cfg.kinds) for n in s.nodes})
    else:  # discovered: at most max_heads_per_role heads in each of about 6 roles
        n_nodes = 6 * (cfg.max_heads_per_role or 3) * len(cfg.kinds)
    s = cfg.saes
    d = dims.d_head
    # node activations of the training, evaluation, counterfactual and context prompts; the
    # edits' evaluation runs (one per cross-section, method and size); discovery's sweeps
    edits = 6 * (2 + len(cfg.ns_aware) + len(cfg.ns_greedy)) * (1 + len(s.variants))
    prompts = (cfg.n_train + cfg.n_eval * (8 + edits)) * PROMPT_TOKENS
    if cfg.circuit != "wang2022":
        prompts += cfg.n_discovery * PROMPT_TOKENS * 7 * dims.n_layers * dims.n_heads
    per_epoch = cfg.n_train // min(s.batch_size, cfg.n_train)  # full batches only
    samples = s.epochs * per_epoch * min(s.batch_size, cfg.n_train)
    train = Workload()
    for _ in s.variants:  # every node of a variant in one batch (train_node_saes)
        train = train + _saes(n_nodes, d, s.expansion * d, samples, s.batch_size, together=n_nodes,
                              steps_each=s.epochs * per_epoch)
    return _forward(dims, prompts, min(cfg.n_eval, 512) * PROMPT_TOKENS) + train


def estimate(work: Workload, dims: ModelDims, gpu: GPU) -> tuple[float, float]:
    """``(seconds, peak GiB)`` of ``work`` on ``gpu``."""
    flops = work.forward_tokens * 2 * dims.n_params + work.train_flops
    seconds = flops / (gpu.tflops * 1e12 * EFFICIENCY) + work.train_steps * STEP_OVERHEAD_S
    peak = (dims.n_params * BYTES + work.peak_bytes) / 2**30
    return seconds, peak


def experiment_estimate(module: str, profile: str, model_cfg) -> dict[str, tuple[float, float]]:
    """``{card: (seconds, peak GiB)}`` of experiment ``module``'s ``profile`` on a model of
    ``model_cfg``, for every card of :data:`GPUS`."""
    import importlib

    cfg = importlib.import_module(f"saetools.experiments.{module}").Config.profile(profile)
    dims = model_dims(model_cfg)
    work = workload(module, cfg, dims)
    return {key: estimate(work, dims, gpu) for key, gpu in GPUS.items()}


def profile_table(model_cfg, profile: str = "full", *, rotary_model_cfg=None) -> list[dict]:
    """One row per experiment: its ``profile`` on a model of ``model_cfg`` (LM-Infinite on
    ``rotary_model_cfg``, default the bundled ``tiny-rotary``, which its notebook uses when given
    GPT-2), estimated on every card of :data:`GPUS` (minutes and GiB)."""
    from saetools.experiments import EXPERIMENTS
    from saetools.models.loading import bundled_model_config

    rows = []
    for name in EXPERIMENTS:
        rotary = name == "han2023_lm_infinite"
        mcfg = (rotary_model_cfg or bundled_model_config("tiny-rotary")) if rotary else model_cfg
        row = {"experiment": name, "model": mcfg.model_name}
        for key, (seconds, peak) in experiment_estimate(name, profile, mcfg).items():
            row[f"{key} minutes"] = seconds / 60
            row[f"{key} GiB"] = peak
        rows.append(row)
    return rows


def check_fits(modules: list[str], profile: str, model_cfg, *, rotary_model_cfg=None) -> None:
    """Raise :class:`ProfileTooLargeError` when ``profile`` of any of ``modules`` needs a GPU and
    there is none, or needs more memory than this GPU has (estimates of :func:`workload`)."""
    import torch

    rows = {r["experiment"]: r for r in profile_table(model_cfg, profile, rotary_model_cfg=rotary_model_cfg)
            if r["experiment"] in modules}
    if not torch.cuda.is_available():
        slow = {m: r["A100 minutes"] for m, r in rows.items() if r["A100 minutes"] > 1}
        if slow:
            raise ProfileTooLargeError(
                f"the {profile!r} profile needs a CUDA GPU: estimated "
                + ", ".join(f"{m} {v:.0f} min" for m, v in slow.items())
                + " on an A100, and far longer on this machine's CPU. Run it on a GPU (e.g. Colab), or use "
                "--profile smoke here.")
        return
    have = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
    big = {m: r["A100 GiB"] for m, r in rows.items() if r["A100 GiB"] > have}
    if big:
        raise ProfileTooLargeError(
            f"the {profile!r} profile needs more GPU memory than this GPU's {have:.1f} GiB: estimated peaks "
            + ", ".join(f"{m} {v:.1f} GiB" for m, v in big.items())
            + ". Use a larger GPU (an A100 or H100 with 40-80 GB) or --profile smoke.")


def markdown_table(rows: list[dict]) -> str:
    """:func:`profile_table`'s rows as the README's Markdown table."""
    cards = list(GPUS)
    head = "| notebook | model | " + " | ".join(f"{GPUS[c].name}: min / GiB" for c in cards) + " |"
    rule = "|" + "---|" * (2 + len(cards))
    lines = [head, rule]
    for i, r in enumerate(rows):
        cells = [f"{r[f'{c} minutes']:.1f} / {r[f'{c} GiB']:.1f}" for c in cards]
        lines.append(f"| {i:02d} {r['experiment']} | {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_table() -> str:
    """The full profiles' estimates on GPT-2 small (LM-Infinite on ``tiny-rotary``), as the README
    shows them (``python -m saetools.experiments.budget`` prints it)."""
    from saetools.models.configs import gpt2_small_config

    return markdown_table(profile_table(gpt2_small_config(model_name="gpt2")))


if __name__ == "__main__":
    print(readme_table())
