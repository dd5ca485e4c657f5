"""SAEs trained on one node's IOI activations, with the paper's schedule shape.

Makelov, Lange & Nanda (2024) train a small SAE per node (8x its width) on the node's
activations over the IOI training prompts:

* inputs scaled by one scalar so that their mean l2 norm is ``sqrt(d)`` (Anthropic's April 2024
  recipe); the same scalar serves every later input (eval and counterfactual activations) --
  here it is folded into the weights at the end (``fold_activation_norm_scaling_factor``), so
  the returned SAE reads raw node vectors and its latents are those of the normalised space;
* variants: vanilla ReLU + L1 (sae-lens ``standard``), gated with the paper-faithful frozen
  decoder auxiliary loss (saetools ``gated_faithful``), the paper's no-ReLU TopK
  (saetools ``topk_signed``) and sae-lens's ReLU TopK (``topk``, decoder not rescaled);
* Adam (0.9, 0.999), summed-over-dimensions squared error, gradient-norm clipping at 1 (as
  sae-lens's trainer), epochs over the training vectors with the LR scheduled *per epoch*:
  dead-latent resampling (Anthropic-style: inputs drawn in proportion to their squared
  reconstruction error become the dead latents' decoder directions, encoder rows scaled to
  0.2 x the mean alive encoder norm, biases zeroed, Adam state reset) at 25 % and 50 % of the
  epochs (the paper: epochs 501 and 1001 of 2000), after each an LR warm-up from 0.1x over 5 %
  of the epochs (100 of 2000), and a linear decay to 0 over the last 25 % (1500-2000).

Why not :func:`saetools.train_sae`: the sae-lens trainer runs one LR schedule from one
initialisation, while this schedule restarts the optimizer and re-warms the LR mid-run after
editing the weights. The loop below reuses sae-lens's training SAE classes, their losses
(``training_forward_pass``) and inference format; only the outer loop is ours.

:func:`webtext_attention_saes` loads the OpenWebText attention-output SAEs (Kissane et al.,
sae-lens release ``gpt2-small-hook-z-kk``) that the paper compares against on GPT-2.

See ``docs/makelov2024_supervised_dictionaries.md`` for the method and where saetools differs from
the authors' code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from saetools.dictionaries.nodes import Node
from saetools.dictionaries.supervised import SAEDictionary

__all__ = ["VARIANTS", "WEBTEXT_RELEASE", "IOISAEConfig", "lr_multiplier", "resample_dead", "train_node_sae",
           "train_node_saes", "webtext_attention_saes"]

VARIANTS = ("standard", "gated", "topk_signed", "topk")
WEBTEXT_RELEASE = "gpt2-small-hook-z-kk"
Variant = Literal["standard", "gated", "topk_signed", "topk"]


@dataclass(frozen=True, kw_only=True)
class IOISAEConfig:
    """How the per-node SAEs are trained (defaults: the paper's, with fewer epochs)."""

    variants: tuple[str, ...] = VARIANTS
    """Which of :data:`VARIANTS` to train."""
    expansion: int = 8
    """``d_sae = expansion * d`` (the paper: 8 x 64 = 512)."""
    l1_coefficient: float = 1.0
    """L1 coefficient of ``standard`` and ``gated`` (the paper sweeps 0.5, 1, 2.5, 5), in the
    normalised space."""
    k: int = 3
    """Active latents of the TopK variants (the paper sweeps 3, 6, 12, 24 and plots k = 3)."""
    epochs: int = 2000
    """Passes over the training vectors (the paper: 2000)."""
    batch_size: int = 512
    """Vectors per step."""
    lr: float = 3e-4
    """Adam learning rate."""
    resample_at: tuple[float, ...] = (0.25, 0.5)
    """Resampling points as fractions of ``epochs`` (the paper: 501 and 1001 of 2000)."""
    warmup: float = 0.05
    """Length of the LR warm-up after each resampling, as a fraction of ``epochs``."""
    warmup_start: float = 0.1
    """LR multiplier right after a resampling."""
    decay_from: float = 0.75
    """Fraction of ``epochs`` after which the LR decays linearly to 0."""
    seed: int = 0
    """Seeds initialisation, batch order and resampling."""

    def __post_init__(self):
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise ValueError(f"IOISAEConfig.variants must be a non-empty subset of {VARIANTS}, got {self.variants}")
        for name in ("expansion", "k", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"IOISAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.l1_coefficient < 0:
            raise ValueError("IOISAEConfig.lr must be > 0 and l1_coefficient >= 0")
        for name in ("warmup", "warmup_start", "decay_from"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"IOISAEConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if any(not 0 < r < 1 for r in self.resample_at):
            raise ValueError(f"IOISAEConfig.resample_at must be fractions in (0, 1), got {self.resample_at}")


def lr_multiplier(epoch: int, cfg: IOISAEConfig) -> float:
    """The LR multiplier at ``epoch`` (0-based): warm-up after each resampling, final linear decay."""
    mult = 1.0
    warm = max(1, round(cfg.warmup * cfg.epochs))
    for r in cfg.resample_at:
        since = epoch - round(r * cfg.epochs)
        if 0 <= since < warm:
            mult = cfg.warmup_start + (1 - cfg.warmup_start) * since / warm
    start = round(cfg.decay_from * cfg.epochs)
    if epoch >= start:
        mult *= max(0.0, 1 - (epoch - start) / max(1, cfg.epochs - start))
    return mult


def _sae_config(variant: str, d: int, cfg: IOISAEConfig, hook_name: str | None):
    from sae_lens import StandardTrainingSAEConfig, TopKTrainingSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from saetools.saes import FaithfulGatedTrainingSAEConfig
    from saetools.saes.topk_signed import SignedTopKTrainingSAEConfig

    common = {"d_in": d, "d_sae": cfg.expansion * d, "metadata": SAEMetadata(hook_name=hook_name)}
    if variant == "standard":  # unit-norm decoder rows at init, W_enc = W_dec^T (sae-lens default)
        return StandardTrainingSAEConfig(l1_coefficient=cfg.l1_coefficient, decoder_init_norm=1.0, **common)
    if variant == "gated":
        return FaithfulGatedTrainingSAEConfig(l1_coefficient=cfg.l1_coefficient, decoder_init_norm=1.0, **common)
    if variant == "topk_signed":
        return SignedTopKTrainingSAEConfig(k=cfg.k, decoder_init_norm=1.0, **common)
    if variant == "topk":
        return TopKTrainingSAEConfig(k=cfg.k, rescale_acts_by_decoder_norm=False, decoder_init_norm=1.0, **common)
    raise ValueError(f"unknown variant {variant!r}; use one of {VARIANTS}")


@torch.no_grad()
def resample_dead(sae, x: Float[Tensor, "n d"], dead: Tensor, *, generator: torch.Generator) -> int:
    """Anthropic-style resampling of the ``dead`` latents (boolean ``[d_sae]``) on inputs ``x``.

    Inputs are drawn (without replacement while possible) with probability proportional to
    their squared reconstruction error; each becomes a dead latent's unit decoder row, its
    encoder column is that direction times 0.2 x the mean encoder norm of the alive latents,
    and the latent's biases (``b_enc`` / ``b_gate`` / ``b_mag`` / ``r_mag``) are zeroed.
    Returns the number of latents resampled.
    """
    idx = dead.nonzero()[:, 0]
    if idx.numel() == 0:
        return 0
    err = (sae(x) - x).pow(2).sum(-1).double() + 1e-12
    pick = torch.multinomial(err.cpu(), idx.numel(), replacement=idx.numel() > x.shape[0], generator=generator)
    dirs = x[pick.to(x.device)]
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    alive = ~dead
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
    sae.W_dec.data[idx] = dirs
    sae.W_enc.data[:, idx] = dirs.T * 0.2 * enc_norm
    for name in ("b_enc", "b_gate", "b_mag", "r_mag"):
        p = getattr(sae, name, None)
        if isinstance(p, torch.nn.Parameter):
            p.data[idx] = 0.0
    return int(idx.numel())


def _new_optimizer(sae, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam([p for p in sae.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.999))


def train_node_sae(acts: Float[Tensor, "n d"], variant: Variant, cfg: IOISAEConfig, *, node: Node | None = None,
                   seed: int | None = None, progress: bool = False):
    """Train one SAE of ``variant`` on one node's activations (module docstring).

    Args:
        acts: the node's vectors over the training prompts.
        variant: one of :data:`VARIANTS`.
        cfg: the schedule and sizes.
        node: recorded as the SAE's hook name.
        seed: overrides ``cfg.seed``.

    Returns:
        A sae-lens training SAE in eval mode that reads raw (unnormalised) node vectors; its
        ``cfg.metadata`` records ``hook_name``, and ``scaling_factor`` (the normalisation) is
        stored on it as an attribute.
    """
    from sae_lens import TrainingSAE
    from sae_lens.saes.sae import TrainStepInput

    if acts.ndim != 2 or acts.shape[0] < 2:
        raise ValueError(f"acts must be [n >= 2, d], got {tuple(acts.shape)}")
    if not torch.isfinite(acts).all():
        raise ValueError("acts contain NaN or inf")
    seed = cfg.seed if seed is None else seed
    x = acts.float()
    scale = math.sqrt(x.shape[1]) / float(x.norm(dim=-1).mean().clamp_min(1e-12))
    xs = x * scale
    sae_cfg = _sae_config(variant, x.shape[1], cfg, node.hook_name if node is not None else None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sae = TrainingSAE.from_dict(sae_cfg.to_dict())
    sae.to(x.device).train()
    gen = torch.Generator().manual_seed(seed)
    opt = _new_optimizer(sae, cfg.lr)
    coeffs = {k: float(getattr(v, "value", v)) for k, v in sae.get_coefficients().items()}
    resample_epochs = {round(r * cfg.epochs) for r in cfg.resample_at}
    bs = min(cfg.batch_size, x.shape[0])
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    step = 0
    for epoch in tqdm(range(cfg.epochs), desc=f"{variant} SAE", leave=False, disable=not progress):
        if epoch in resample_epochs:
            sae.eval()
            resample_dead(sae, xs, ~fired, generator=gen)
            sae.train()
            opt = _new_optimizer(sae, cfg.lr)
            fired.zero_()
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_multiplier(epoch, cfg)
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0] - bs + 1, bs):
            out = sae.training_forward_pass(TrainStepInput(sae_in=xs[perm[i : i + bs]], coefficients=coeffs,
                                                           dead_neuron_mask=None, n_training_steps=step,
                                                           is_logging_step=False))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            fired |= (out.feature_acts.detach() != 0).any(0).cpu()
            step += 1
    sae.eval()
    sae.fold_activation_norm_scaling_factor(scale)
    sae.scaling_factor = scale
    return sae


def train_node_saes(acts: Mapping[Node, Tensor], cfg: IOISAEConfig) -> dict[str, dict[Node, SAEDictionary]]:
    """Every variant of ``cfg.variants`` at every node: ``{variant: {node: SAEDictionary}}``.

    Seeds differ per (variant, node) but are fixed by ``cfg.seed``.
    """
    out: dict[str, dict[Node, SAEDictionary]] = {v: {} for v in cfg.variants}
    jobs = [(v, n) for v in cfg.variants for n in acts]
    for i, (v, n) in enumerate(tqdm(jobs, desc="per-node SAEs", leave=False)):
        out[v][n] = SAEDictionary(train_node_sae(acts[n], v, cfg, node=n, seed=cfg.seed + i), node=n)
    return out


def webtext_attention_saes(nodes: Sequence[Node], *, device: str = "cpu") -> dict[Node, SAEDictionary]:
    """The OpenWebText attention-output SAEs (release :data:`WEBTEXT_RELEASE`, one per layer, on
    ``hook_z`` of all heads concatenated) for ``z`` nodes with ``head=None`` on GPT-2 small.

    Raises:
        ValueError: a node that is not an all-heads ``z`` node.
        saetools.saes.PretrainedSAEUnavailableError: offline with nothing cached.
    """
    from saetools.saes import load_pretrained_sae

    bad = [n.label for n in nodes if n.kind != "z" or n.head is not None]
    if bad:
        raise ValueError(f"webtext SAEs read hook_z of all heads: use Node(layer, 'z', position) without a head, "
                         f"got {bad}")
    out = {}
    for n in nodes:
        sae = load_pretrained_sae(WEBTEXT_RELEASE, f"blocks.{n.layer}.hook_z", device=device)
        sae.turn_off_forward_pass_hook_z_reshaping()  # our node vectors are already flat [n, 768]
        out[n] = SAEDictionary(sae, node=n)
    return out
