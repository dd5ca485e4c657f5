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
           "train_node_saes", "train_sae_batch", "webtext_attention_saes"]

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


def train_node_sae(acts: Float[Tensor, "n d"], variant: Variant, cfg: IOISAEConfig, *, node: Node | None = None,
                   seed: int | None = None, progress: bool = False):
    """Train one SAE of ``variant`` on one node's activations (module docstring).

    Args:
        acts: the node's vectors over the training prompts (training runs on their device).
        variant: one of :data:`VARIANTS`.
        cfg: the schedule and sizes.
        node: recorded as the SAE's hook name.
        seed: overrides ``cfg.seed``.

    Returns:
        A sae-lens training SAE in eval mode that reads raw (unnormalised) node vectors; its
        ``cfg.metadata`` records ``hook_name``, and ``scaling_factor`` (the normalisation) is
        stored on it as an attribute.
    """
    (sae,) = train_sae_batch([acts], variant, cfg, nodes=[node], seeds=[cfg.seed if seed is None else seed],
                             progress=progress)
    return sae


def _check_acts(acts: Sequence[Tensor]) -> None:
    for a in acts:
        if a.ndim != 2 or a.shape[0] < 2:
            raise ValueError(f"acts must be [n >= 2, d], got {tuple(a.shape)}")
        if not torch.isfinite(a).all():
            raise ValueError("acts contain NaN or inf")
    if len({tuple(a.shape) for a in acts}) > 1:
        raise ValueError(f"a batch of SAEs needs activations of one shape, got {sorted({tuple(a.shape) for a in acts})}")


class _Step(torch.nn.Module):
    """One SAE's training step as a module call, so ``torch.func`` can map it over stacked weights."""

    def __init__(self, sae):
        super().__init__()
        self.sae = sae

    def forward(self, x: Tensor, coefficients: dict, step: int) -> tuple[Tensor, Tensor]:
        from sae_lens.saes.sae import TrainStepInput

        out = self.sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients=coefficients, dead_neuron_mask=None,
                                                            n_training_steps=step, is_logging_step=False))
        return out.loss, out.feature_acts


def _clip_per_sae(grads: list[Tensor], max_norm: float = 1.0) -> None:
    """``clip_grad_norm_`` applied to each SAE of a stack separately (dim 0 indexes the SAEs)."""
    norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.ndim - 1))))


def train_sae_batch(acts: Sequence[Float[Tensor, "n d"]], variant: Variant, cfg: IOISAEConfig, *,
                    nodes: Sequence[Node | None], seeds: Sequence[int], device: str | torch.device | None = None,
                    progress: bool = False) -> list:
    """Train one SAE of ``variant`` per activation matrix, all at once (module docstring).

    The SAEs' weights are stacked and each step runs sae-lens's ``training_forward_pass`` of
    every SAE in one vectorised call (``torch.func``), on ``device`` (default: the activations')
    with no host synchronisation inside an epoch; the SAEs are returned on the activations'
    device. Every SAE keeps its own seed, initialisation, batch
    order, gradient clipping and resampling, so it equals the SAE trained alone
    (:func:`train_node_sae`, ``tests/test_dictionaries.py``).
    """
    from sae_lens import TrainingSAE
    from torch.func import functional_call, stack_module_state

    from saetools.sae_lens_compat import use_mappable_topk

    _check_acts(acts)
    home = acts[0].device
    device = home if device is None else torch.device(device)
    x = torch.stack([a.float() for a in acts]).to(device)  # [N, n, d]
    scales = math.sqrt(x.shape[2]) / x.norm(dim=-1).mean(1).clamp_min(1e-12)  # [N]
    xs = x * scales[:, None, None]
    saes = []
    for node, seed in zip(nodes, seeds):
        sae_cfg = _sae_config(variant, x.shape[2], cfg, node.hook_name if node is not None else None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            saes.append(TrainingSAE.from_dict(sae_cfg.to_dict()).to(device).train())
    params, buffers = stack_module_state(saes)
    trainable = [p for name, p in params.items() if dict(saes[0].named_parameters())[name].requires_grad]
    for name, p in params.items():
        p.requires_grad_(any(q is p for q in trainable))
    use_mappable_topk(saes[0])  # the module whose calls are mapped over the stack
    step_fn = _Step(saes[0])
    coeffs = {k: float(getattr(v, "value", v)) for k, v in saes[0].get_coefficients().items()}

    def loss_and_acts(p, b, xb, step):
        return functional_call(step_fn, ({f"sae.{k}": v for k, v in {**p, **b}.items()}), (xb, coeffs, step))

    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    opt = torch.optim.Adam(trainable, lr=cfg.lr, betas=(0.9, 0.999))
    resample_epochs = {round(r * cfg.epochs) for r in cfg.resample_at}
    n = x.shape[1]
    bs = min(cfg.batch_size, n)
    fired = torch.zeros(len(saes), saes[0].cfg.d_sae, dtype=torch.bool, device=device)
    rows = torch.arange(len(saes), device=device)[:, None]
    step = 0
    for epoch in tqdm(range(cfg.epochs), desc=f"{variant} SAEs x{len(saes)}", leave=False, disable=not progress):
        if epoch in resample_epochs:
            _resample_stack(saes, params, xs, ~fired, gens)
            opt = torch.optim.Adam(trainable, lr=cfg.lr, betas=(0.9, 0.999))
            fired.zero_()
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_multiplier(epoch, cfg)
        perm = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)
        for i in range(0, n - bs + 1, bs):
            xb = xs[rows, perm[:, i : i + bs]]
            loss, feature_acts = torch.vmap(loss_and_acts, in_dims=(0, 0, 0, None), randomness="different")(
                params, buffers, xb, step)
            grads = torch.autograd.grad(loss.sum(), trainable)
            _clip_per_sae(list(grads))
            for p, g in zip(trainable, grads):
                p.grad = g
            opt.step()
            fired |= (feature_acts.detach() != 0).any(1)
            step += 1
    saes[0].activation_fn = saes[0].get_activation_fn()  # sae-lens's own again
    out = []
    for i, sae in enumerate(saes):
        with torch.no_grad():
            for name, p in sae.named_parameters():
                p.copy_(params[name][i])
            for name, b in sae.named_buffers():
                b.copy_(buffers[name][i])
        sae.eval()
        sae.fold_activation_norm_scaling_factor(float(scales[i]))
        sae.scaling_factor = float(scales[i])
        out.append(sae.to(home))
    return out


@torch.no_grad()
def _resample_stack(saes: list, params: dict[str, Tensor], xs: Tensor, dead: Tensor, gens: list) -> None:
    """:func:`resample_dead` on each SAE of a stack (its weights copied out and back)."""
    for i, sae in enumerate(saes):
        for name, p in sae.named_parameters():
            p.copy_(params[name][i])
        sae.eval()
        resample_dead(sae, xs[i], dead[i], generator=gens[i])
        sae.train()
        for name, p in sae.named_parameters():
            params[name][i].copy_(p)


def train_node_saes(acts: Mapping[Node, Tensor], cfg: IOISAEConfig, *, device: str | torch.device | None = None,
                    progress: bool = True) -> dict[str, dict[Node, SAEDictionary]]:
    """Every variant of ``cfg.variants`` at every node: ``{variant: {node: SAEDictionary}}``.

    The SAEs of one variant over nodes of one width train together on ``device`` (default: the
    activations'; :func:`train_sae_batch`), and come back on the activations' device.
    Seeds differ per (variant, node) but are fixed by ``cfg.seed``: the SAE of job ``i`` (variants
    outer, nodes inner) has seed ``cfg.seed + i``, as when each is trained alone.
    """
    nodes = list(acts)
    out: dict[str, dict[Node, SAEDictionary]] = {v: {} for v in cfg.variants}
    for vi, v in enumerate(tqdm(cfg.variants, desc="per-node SAEs", leave=False, disable=not progress)):
        by_shape: dict[tuple, list[int]] = {}
        for ni, n in enumerate(nodes):
            by_shape.setdefault(tuple(acts[n].shape), []).append(ni)
        for idx in by_shape.values():
            group = [nodes[i] for i in idx]
            saes = train_sae_batch([acts[n] for n in group], v, cfg, nodes=group, device=device,
                                   seeds=[cfg.seed + vi * len(nodes) + i for i in idx])
            out[v].update({n: SAEDictionary(sae, node=n) for n, sae in zip(group, saes)})
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
