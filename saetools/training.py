"""Train SAEs on collected activations with the sae-lens trainer.

:func:`train_sae` hands an :class:`~saetools.activations.ActivationStore` (in memory or streamed
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
from jaxtyping import Float
from torch import Tensor

from saetools.activations import ActivationStore
from saetools.data.files import atomic_write_text, check_writable_dir

__all__ = ["latest_checkpoint", "train_sae"]

STATE_FILE = "saetools_stream.json"


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


def _read_state(ckpt: Path) -> dict:
    file = ckpt / STATE_FILE
    try:
        state = json.loads(file.read_text())
        int(state["batches_consumed"]), int(state["n_training_samples"]), int(state["n_training_steps"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{file} is damaged ({err}), so checkpoint {ckpt} cannot be resumed: delete that "
                         "folder and resume from the checkpoint folder (the previous checkpoint is used), "
                         "or start again without resume_from") from err
    return state


def latest_checkpoint(checkpoint_dir: str | Path) -> Path:
    """The checkpoint with the most training samples under ``checkpoint_dir``."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise FileNotFoundError(f"checkpoint folder {checkpoint_dir} does not exist; pass the checkpoint_dir "
                                "of the interrupted run")
    found = sorted((p for p in checkpoint_dir.iterdir() if (p / STATE_FILE).is_file()),
                   key=lambda p: _read_state(p)["n_training_samples"])
    if not found:
        raise FileNotFoundError(f"no saetools checkpoint (with {STATE_FILE}) under {checkpoint_dir}: the run "
                                "was interrupted before its first checkpoint was written, so there is nothing "
                                "to resume; start it again without resume_from")
    return found[-1]


def _resume_point(resume_from, *, seed: int, batch_size: int) -> tuple[Path | None, dict | None]:
    """The checkpoint to resume from and its saved stream state (``None, None`` for a fresh run)."""
    if resume_from is None:
        return None, None
    ckpt = Path(resume_from)
    ckpt = ckpt if (ckpt / STATE_FILE).is_file() else latest_checkpoint(ckpt)
    state = _read_state(ckpt)
    if state["seed"] != seed or state["batch_size"] != batch_size:
        raise ValueError(f"checkpoint {ckpt} was written with seed={state['seed']}, batch_size="
                         f"{state['batch_size']}; resume with the same arguments")
    return ckpt, state


def _fit(sae, trainer_cfg, store: ActivationStore, *, seed: int, batch_size: int, device: str, ckpt, state):
    """Run sae-lens's trainer on ``store``'s seeded stream, from ``state`` when resuming; each
    checkpoint also records where the stream is, so a resumed run ends where a whole one does."""
    from sae_lens.training.sae_trainer import SAETrainer

    start = 0 if state is None else state["batches_consumed"]
    provider = _CountingProvider(store.batches(batch_size, seed=seed, start=start, device=device), start)
    trainer = None

    def record_position(checkpoint_path) -> None:
        if checkpoint_path is not None:
            atomic_write_text(Path(checkpoint_path) / STATE_FILE, json.dumps({
                "seed": seed, "batch_size": batch_size, "batches_consumed": provider.consumed,
                "n_training_samples": trainer.n_training_samples,
                # sae-lens checkpoints before counting the step it has just taken
                "n_training_steps": trainer.n_training_steps + 1,
            }) + "\n")

    class Trainer(SAETrainer):
        def _update_pbar(self, step_output, pbar, update_interval: int = 100):
            # sae-lens moves its bar every 100 steps only, so a run of 60 or 250 steps ended on a
            # red, unfinished bar: follow the samples trained at every step (tqdm throttles drawing)
            if self.n_training_steps % update_interval == 0:
                losses = " | ".join(f"{k}: {float(torch.as_tensor(v).detach()):.5f}" for k, v in step_output.losses.items())
                pbar.set_description(f"{self.n_training_steps}| {losses}", refresh=False)
            pbar.update(self.n_training_samples - pbar.n)

    trainer = Trainer(cfg=trainer_cfg, sae=sae, data_provider=provider, save_checkpoint_fn=record_position)
    if state is not None:
        trainer.load_trainer_state(ckpt)
        trainer.n_training_steps = state["n_training_steps"]
        trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds
                                         if t >= trainer.n_training_samples]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        trained = trainer.fit()
    return trained.eval()


def _trainer_config(*, total_samples, batch_size, lr, lr_end, adam_betas, checkpoint_dir, **rest):
    """sae-lens's ``SAETrainerConfig`` for :func:`train_sae` (no logging to wandb)."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    return SAETrainerConfig(
        total_training_samples=total_samples, train_batch_size_samples=batch_size, lr=lr, lr_end=lr_end,
        adam_beta1=adam_betas[0], adam_beta2=adam_betas[1], logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=None if checkpoint_dir is None else str(checkpoint_dir), **rest)


def _check_train_args(*, n_checkpoints, checkpoint_dir, adam_betas, dead_feature_window, lr, lr_end) -> None:
    """:func:`train_sae`'s argument checks, before any work."""
    if n_checkpoints and checkpoint_dir is None:
        raise ValueError(f"n_checkpoints={n_checkpoints} needs checkpoint_dir: the folder to write them to")
    if len(adam_betas) != 2 or not all(0 <= b < 1 for b in adam_betas):
        raise ValueError(f"adam_betas must be two numbers in [0, 1), got {adam_betas}")
    if dead_feature_window is not None and dead_feature_window < 1:
        raise ValueError(f"dead_feature_window must be >= 1 step, got {dead_feature_window}")
    if lr_end is not None and not 0 <= lr_end <= lr:
        raise ValueError(f"lr_end must be in [0, lr={lr}], got {lr_end}")
    if checkpoint_dir is not None:
        check_writable_dir(checkpoint_dir, what="checkpoints")  # before training, not at the first checkpoint


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
    lr_end: float | None = None,
    adam_betas: tuple[float, float] = (0.9, 0.999),
    dead_feature_window: int | None = None,
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
        acts: activations ``[n, d_in]`` or an :class:`~saetools.activations.ActivationStore`.
        cfg: a sae-lens ``TrainingSAEConfig`` (its architecture picks the class).
        total_samples: activations to train on (``total_samples // batch_size`` steps).
        batch_size: activations per step.
        lr: Adam learning rate.
        seed: seeds the initialisation and the batch order (global RNG untouched).
        lr_warm_up_steps / lr_decay_steps / lr_end: sae-lens's schedule: linear warm-up, then
            linear decay to ``lr_end`` (default ``lr / 10``) over the last ``lr_decay_steps``.
        adam_betas: Adam's betas (the top-AFA authors: ``(0.9, 0.99)``).
        dead_feature_window: steps without firing that make a latent dead (AuxK); default a
            quarter of the run (the top-AFA authors: 5). Gradients are clipped at norm 1 (sae-lens).
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

    _check_train_args(n_checkpoints=n_checkpoints, checkpoint_dir=checkpoint_dir, adam_betas=adam_betas,
                      dead_feature_window=dead_feature_window, lr=lr, lr_end=lr_end)
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
    trainer_cfg = _trainer_config(
        total_samples=total_samples, batch_size=batch_size, lr=lr, lr_end=lr / 10 if lr_end is None else lr_end,
        lr_warm_up_steps=lr_warm_up_steps, lr_decay_steps=lr_decay_steps, adam_betas=adam_betas, device=device,
        dead_feature_window=max(1, steps // 4) if dead_feature_window is None else dead_feature_window,
        feature_sampling_window=max(1, steps // 2), n_batches_for_norm_estimate=n_batches_for_norm_estimate,
        n_checkpoints=n_checkpoints, checkpoint_dir=checkpoint_dir)
    ckpt, state = _resume_point(resume_from, seed=seed, batch_size=batch_size)
    if state is not None:
        sae.load_weights_from_checkpoint(ckpt)
    return _fit(sae, trainer_cfg, store, seed=seed, batch_size=batch_size, device=device, ckpt=ckpt, state=state)
