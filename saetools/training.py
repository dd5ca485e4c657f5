"""Collect activations and train SAEs on them with the sae-lens trainer.

:func:`train_sae` hands an :class:`~saetools.store.ActivationStore` (in memory or streamed
from disk) to sae-lens's ``SAETrainer`` as its data provider (a seeded, shuffled stream of
batches), so every sae-lens training architecture (``standard``, ``gated``, ``jumprelu``,
``topk``, ``batchtopk``, ``matryoshka_batchtopk``, and those registered by saetools) trains the
same way, with sae-lens's progress bar, checkpoints and trainer state. saetools adds the
stream position to each checkpoint so that a resumed run ends exactly where an uninterrupted
one does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from saetools.hooks import check_hook_names
from saetools.store import ActivationStore

__all__ = [
    "ActivationStore", "DatasetUnavailableError", "activation_batches", "collect_activations",
    "corpus_tokens", "dataset_tokens", "latest_checkpoint", "train_sae",
]

STATE_FILE = "saetools_stream.json"


@torch.no_grad()
def collect_activations(
    model,
    tokens: Int[Tensor, "batch pos"],
    hook_name: str,
    *,
    batch_size: int = 64,
    drop_bos: bool = True,
    mask: Tensor | None = None,
) -> Float[Tensor, "n d"]:
    """Activations of ``hook_name`` over ``tokens``, flattened to one row per token.

    Args:
        model: a TransformerLens model.
        tokens: token ids ``[batch, pos]``.
        hook_name: e.g. ``"blocks.2.hook_resid_pre"``; head hooks (``hook_z``) are flattened
            to ``n_heads * d_head`` as sae-lens's ``reshape_activations="hook_z"`` expects.
        batch_size: prompts per forward pass.
        drop_bos: leave out position 0 (BOS activations are outliers).
        mask: optional boolean ``[batch, pos]`` selecting which tokens to keep.
    """
    check_hook_names(model, [hook_name])
    layer = int(hook_name.split(".")[1]) if hook_name.startswith("blocks.") else None
    out = []
    for i in tqdm(range(0, tokens.shape[0], batch_size), desc=f"collect {hook_name}", leave=False):
        chunk = tokens[i : i + batch_size].to(model.cfg.device)
        _, cache = model.run_with_cache(
            chunk, names_filter=hook_name, stop_at_layer=None if layer is None else layer + 1
        )
        act = cache[hook_name]
        if act.ndim == 4:  # [batch, pos, head, d_head]
            act = act.flatten(-2)
        keep = torch.ones(act.shape[:2], dtype=torch.bool, device=act.device)
        if drop_bos:
            keep[:, 0] = False
        if mask is not None:
            keep &= mask[i : i + batch_size].to(act.device)
        out.append(act[keep].float().cpu())
    return torch.cat(out)


def corpus_tokens(model, n_documents: int, *, seed: int) -> tuple[Int[Tensor, "row pos"], Tensor]:
    """Rows of the bundled corpus (:mod:`saetools.models.corpus`) packed as the model was trained.

    Returns:
        ``(tokens, keep)``: token rows ``[row, n_ctx]`` and a boolean mask that is False at
        BOS/padding positions (pass it as ``mask=`` to :func:`collect_activations`).
    """
    from saetools.models.corpus import generate_documents
    from saetools.models.train_tiny import pack_documents

    if model.tokenizer is None:
        raise ValueError("corpus_tokens needs a model with a tokenizer (e.g. load_model('tiny-ioi'))")
    bos = model.tokenizer.bos_token_id
    ids = model.tokenizer(generate_documents(n_documents, seed=seed), add_special_tokens=False)["input_ids"]
    tokens, _ = pack_documents(ids, n_ctx=model.cfg.n_ctx, bos=bos)
    return tokens, tokens != bos


class DatasetUnavailableError(RuntimeError):
    """A Hugging Face dataset cannot be loaded (no network and nothing cached)."""


def dataset_tokens(
    model, dataset, *, n_rows: int, context_size: int | None = None, column: str = "text",
    split: str = "train",
) -> Int[Tensor, "row pos"]:
    """Token rows from a Hugging Face text dataset, packed as ``BOS + context_size - 1`` tokens.

    Args:
        model: a TransformerLens model with a tokenizer.
        dataset: a dataset name on the hub (streamed; e.g. ``"NeelNanda/pile-10k"``) or a
            ``datasets.Dataset`` / iterable of rows already in memory.
        n_rows: rows to return.
        context_size: row length (default: ``model.cfg.n_ctx``).
        column: the text column.
        split: split of a named dataset.

    Raises:
        DatasetUnavailableError: a named dataset with no network (within seconds; names the
            offline token sources, :func:`corpus_tokens` and the IOI distributions).
    """
    from tqdm.auto import tqdm as _tqdm

    tok = model.tokenizer
    if tok is None:
        raise ValueError("dataset_tokens needs a model with a tokenizer")
    ctx = context_size or model.cfg.n_ctx
    if isinstance(dataset, str):
        from saetools.models.loading import hub_reachable

        if not hub_reachable():
            raise DatasetUnavailableError(
                f"cannot stream dataset {dataset!r}: the Hugging Face hub is unreachable. Offline, "
                "use saetools.training.corpus_tokens(model, ...) (the bundled corpus) or an IOI "
                "distribution (saetools.tasks.ioi)."
            )
        from datasets import load_dataset

        dataset = load_dataset(dataset, split=split, streaming=True)
    need = n_rows * (ctx - 1)
    stream: list[int] = []
    bar = _tqdm(total=need, desc="tokenize dataset", leave=False)
    for row in dataset:
        ids = tok(row[column], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        stream.extend(ids)
        bar.update(len(ids))
        if len(stream) >= need:
            break
    bar.close()
    if len(stream) < need:
        raise ValueError(f"the dataset holds {len(stream)} tokens; {need} needed for {n_rows} rows of {ctx}")
    body = torch.tensor(stream[:need], dtype=torch.long).view(n_rows, ctx - 1)
    return torch.cat([torch.full((n_rows, 1), tok.bos_token_id, dtype=torch.long), body], dim=1)


def activation_batches(
    acts: Float[Tensor, "n d"], batch_size: int, *, seed: int, device: str | torch.device = "cpu"
) -> Iterator[Tensor]:
    """Endless stream of shuffled batches, reshuffled each epoch from a seeded generator."""
    if acts.shape[0] < batch_size:
        raise ValueError(f"need at least batch_size={batch_size} activations, got {acts.shape[0]}")
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(acts.shape[0], generator=gen)
        for i in range(0, acts.shape[0] - batch_size + 1, batch_size):
            yield acts[perm[i : i + batch_size]].to(device)


class _CountingProvider:
    """The trainer's data provider; counts batches so a checkpoint knows where the stream is."""

    def __init__(self, batches: Iterator[Tensor], consumed: int):
        self.batches, self.consumed = batches, consumed

    def __iter__(self):
        return self

    def __next__(self) -> Tensor:
        batch = next(self.batches)
        self.consumed += 1
        return batch


def latest_checkpoint(checkpoint_dir: str | Path) -> Path:
    """The checkpoint with the most training samples under ``checkpoint_dir``."""
    found = sorted((p for p in Path(checkpoint_dir).iterdir() if (p / STATE_FILE).is_file()),
                   key=lambda p: json.loads((p / STATE_FILE).read_text())["n_training_samples"])
    if not found:
        raise FileNotFoundError(f"no saetools checkpoint (with {STATE_FILE}) under {checkpoint_dir}")
    return found[-1]


def train_sae(
    acts: Float[Tensor, "n d"] | ActivationStore,
    cfg,
    *,
    total_samples: int,
    batch_size: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
    lr_warm_up_steps: int = 0,
    lr_decay_steps: int = 0,
    checkpoint_dir: str | Path | None = None,
    n_checkpoints: int = 0,
    resume_from: str | Path | None = None,
    device: str | torch.device | None = None,
    n_batches_for_norm_estimate: int | None = None,
):
    """Train a sae-lens training SAE built from ``cfg`` with sae-lens's ``SAETrainer``.

    Any registered training architecture works (``standard``, ``gated``, ``jumprelu``,
    ``topk``, ``batchtopk``, ``matryoshka_batchtopk``, and saetools's ``gated_faithful``,
    :mod:`saetools.saes.gated_faithful`). sae-lens shows a progress bar.

    Args:
        acts: training activations ``[n, d_in]``, or an :class:`~saetools.store.ActivationStore`
            (in memory or streamed from disk).
        cfg: a sae-lens ``TrainingSAEConfig`` subclass instance (its architecture picks the
            class through sae-lens's registry).
        total_samples: activations to train on (``total_samples // batch_size`` steps).
        batch_size: activations per step.
        lr: Adam learning rate.
        seed: seeds the initialisation and the batch order (global RNG untouched).
        lr_warm_up_steps / lr_decay_steps: sae-lens's schedule.
        checkpoint_dir: where sae-lens writes ``n_checkpoints`` evenly spaced checkpoints
            (weights, optimizer, schedulers, sparsity statistics; plus our stream position).
        n_checkpoints: how many intermediate checkpoints to write.
        resume_from: a checkpoint (or a ``checkpoint_dir``: the latest in it). The resumed run
            ends where the uninterrupted run with the same arguments ends.
        device: training device; default the device of ``acts`` (CPU for disk stores).
        n_batches_for_norm_estimate: batches sae-lens reads to estimate the activation scale
            when ``cfg.normalize_activations == "expected_average_only_in"``; default one pass
            over the store, at most 1,000 (sae-lens's default), since re-reading the same rows
            improves nothing.

    Returns:
        The trained sae-lens ``TrainingSAE`` in eval mode (usable with ``HookedSAETransformer``;
        :func:`saetools.saes.save_sae` writes it in sae-lens's inference format).
    """
    from sae_lens import TrainingSAE
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    store = acts if isinstance(acts, ActivationStore) else ActivationStore.in_memory(acts)
    if store.d_in != cfg.d_in:
        raise ValueError(f"acts must be [n, d_in={cfg.d_in}], got width {store.d_in}")
    store.check_finite()
    if device is None:
        device = acts.device if isinstance(acts, Tensor) else "cpu"
    device = str(device)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sae = TrainingSAE.from_dict(cfg.to_dict())
    steps = total_samples // batch_size
    if n_batches_for_norm_estimate is None:
        n_batches_for_norm_estimate = min(1000, max(1, len(store) // batch_size))
    trainer_cfg = SAETrainerConfig(
        total_training_samples=total_samples, train_batch_size_samples=batch_size, lr=lr,
        lr_end=lr / 10, lr_warm_up_steps=lr_warm_up_steps, lr_decay_steps=lr_decay_steps,
        device=device, logger=LoggingConfig(log_to_wandb=False),
        dead_feature_window=max(1, steps // 4), feature_sampling_window=max(1, steps // 2),
        n_batches_for_norm_estimate=n_batches_for_norm_estimate,
        n_checkpoints=n_checkpoints, checkpoint_path=None if checkpoint_dir is None else str(checkpoint_dir),
    )
    start, state = 0, None
    if resume_from is not None:
        ckpt = Path(resume_from)
        ckpt = ckpt if (ckpt / STATE_FILE).is_file() else latest_checkpoint(ckpt)
        state = json.loads((ckpt / STATE_FILE).read_text())
        if state["seed"] != seed or state["batch_size"] != batch_size:
            raise ValueError(f"checkpoint {ckpt} was written with seed={state['seed']}, batch_size="
                             f"{state['batch_size']}; resume with the same arguments")
        sae.load_weights_from_checkpoint(ckpt)
        start = state["batches_consumed"]
    provider = _CountingProvider(store.batches(batch_size, seed=seed, start=start, device=device), start)
    trainer = None

    def record_position(checkpoint_path) -> None:
        if checkpoint_path is not None:
            (Path(checkpoint_path) / STATE_FILE).write_text(json.dumps({
                "seed": seed, "batch_size": batch_size, "batches_consumed": provider.consumed,
                "n_training_samples": trainer.n_training_samples,
                # sae-lens checkpoints before counting the step it has just taken
                "n_training_steps": trainer.n_training_steps + 1,
            }) + "\n")

    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=provider, save_checkpoint_fn=record_position)
    if state is not None:
        trainer.load_trainer_state(ckpt)
        trainer.n_training_steps = state["n_training_steps"]
        trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds
                                         if t >= trainer.n_training_samples]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        trained = trainer.fit()
    return trained.eval()
