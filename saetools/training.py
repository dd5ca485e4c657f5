"""Collect activations and train SAEs on them with the sae-lens trainer.

:func:`train_sae` hands an in-memory activation tensor to sae-lens's ``SAETrainer`` as its data
provider (a seeded, shuffled stream of batches), so every sae-lens training architecture
(``standard``, ``gated``, ``jumprelu``, ``topk``, ``batchtopk``, ``matryoshka_batchtopk``, and
those registered by saetools) trains the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from saetools.hooks import check_hook_names

__all__ = ["collect_activations", "activation_batches", "train_sae"]


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


def train_sae(
    acts: Float[Tensor, "n d"],
    cfg,
    *,
    total_samples: int,
    batch_size: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
    lr_warm_up_steps: int = 0,
    lr_decay_steps: int = 0,
):
    """Train a sae-lens training SAE built from ``cfg`` on ``acts`` with ``SAETrainer``.

    Args:
        acts: training activations ``[n, d_in]``.
        cfg: a sae-lens ``TrainingSAEConfig`` subclass instance (its architecture picks the
            class through sae-lens's registry).
        total_samples: activations to train on (``total_samples // batch_size`` steps).
        batch_size: activations per step.
        lr: Adam learning rate.
        seed: seeds the initialisation and the batch order.

    Returns:
        The trained sae-lens ``TrainingSAE`` (usable with ``HookedSAETransformer``).
    """
    from sae_lens import TrainingSAE
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    if acts.ndim != 2 or acts.shape[1] != cfg.d_in:
        raise ValueError(f"acts must be [n, d_in={cfg.d_in}], got {tuple(acts.shape)}")
    if not torch.isfinite(acts).all():
        raise ValueError("acts contain NaN or inf values; check the model and hook")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sae = TrainingSAE.from_dict(cfg.to_dict())
    device = str(acts.device)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=total_samples,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr / 10,
        lr_warm_up_steps=lr_warm_up_steps,
        lr_decay_steps=lr_decay_steps,
        device=device,
        logger=LoggingConfig(log_to_wandb=False),
        dead_feature_window=max(1, total_samples // batch_size // 4),
        feature_sampling_window=max(1, total_samples // batch_size // 2),
    )
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae,
                         data_provider=activation_batches(acts, batch_size, seed=seed, device=device))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        trained = trainer.fit()
    return trained.eval()
