"""Switch SAEs (Mudide et al. 2024, arXiv 2410.08201; NOTES §3): routed, and really cheaper.

A Switch SAE is ``N`` TopK SAEs ("experts") of width ``E = d_sae / N`` and a router. Each
token is sent to one expert; only that expert's encoder runs. With ``x`` the SAE input (after
sae-lens's input normalisation):

* router: ``p(x) = softmax((x - b_router) @ W_router)`` (``W_router [d_in, N]``, no bias inside
  the linear map, its own centring vector ``b_router``); the expert is ``i = argmax_j p_j(x)``;
* encoder: ``f = TopK_k(ReLU((x - b_dec) @ W_enc[:, block_i] + b_enc[block_i]))``, where
  ``block_i = [i E, (i+1) E)`` are expert ``i``'s latents (the authors' code has no ``b_enc``;
  ours is zero-initialised, as sae-lens's TopK);
* latents (``hook_sae_acts_post``, full width ``[.., d_sae]``, zero outside ``block_i``):
  ``a = p_i(x) * f`` with ``routing="softmax"``, ``a = f`` with ``routing="heaviside"``;
* decoder: ``x_hat = a @ W_dec + b_dec``, one shared ``b_dec``; the router is trained through
  the ``p_i`` scaling (softmax) and by the load-balancing loss.

Scaling the latents by ``p_i`` (rather than the output) is the authors' implementation; it is
the same function (TopK is scale-invariant, the decoder linear) and keeps ``decode`` linear,
so splicing, interventions and sae-lens's tooling treat a Switch SAE like any other SAE.

**The routed implementation.** The authors compute every expert densely and mask, which saves
nothing. Here tokens are sorted by expert and each expert multiplies only its own contiguous
slice of tokens with its own block of ``W_enc`` (``2 d_in E`` multiply-adds per token instead of
``2 d_in d_sae``); TopK runs inside the block; the decoder reads only the ``k`` selected rows of
``W_dec`` (``F.embedding_bag``), never a dense ``[n, d_sae]`` matrix. The backward pass is
sparse too: the encoder's weight gradient is a sparse-times-dense product over the ``n k``
selected entries. The full-width latent vector is materialised only when something is
attached to ``hook_sae_acts_pre`` / ``hook_sae_acts_post`` (a cache, an intervention), or
when ``encode`` is called (it returns the dense latents, as every sae-lens SAE does).
:func:`masked_dense_forward` is the authors' dense-and-mask computation, kept as the reference.

**Training** (``SwitchTrainingSAE``, trained by sae-lens's ``SAETrainer``, e.g. through
:func:`saetools.train_sae`): the loss is sae-lens's ``sum_dims ||x - x_hat||^2`` (mean over
tokens) plus ``alpha * d_in * L_lb`` with the Switch-Transformer balancing loss
``L_lb = N * sum_i F_i P_i`` (``F_i``: fraction of tokens routed to expert ``i``; ``P_i``:
mean router probability of expert ``i``; ``L_lb = 1`` at uniform routing, ``N`` at collapse).
The ``d_in`` factor is the authors' convention (NOTES §3.2): it makes ``alpha`` a weight
relative to the *per-dimension* MSE, so the paper's ``alpha = 3`` carries over unchanged.
Decoder rows are renormalised to unit norm before every step and the gradient component
parallel to each row is removed (as in the authors' trainer); ``b_dec`` and ``b_router``
start at the geometric median of the first training batch (Weiszfeld iterations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from sae_lens import register_sae_class, register_sae_training_class
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import (
    SAE,
    SAEConfig,
    TrainCoefficientConfig,
    TrainingSAE,
    TrainingSAEConfig,
    TrainStepInput,
    TrainStepOutput,
)
from torch import Tensor, nn

__all__ = [
    "ARCHITECTURE",
    "SwitchSAE",
    "SwitchSAEConfig",
    "SwitchTrainingSAE",
    "SwitchTrainingSAEConfig",
    "decoder_flops_per_token",
    "encoder_flops_per_token",
    "geometric_median",
    "load_balance_loss",
    "masked_dense_forward",
]

ARCHITECTURE = "switch"
Routing = Literal["softmax", "heaviside"]


def _validate_switch_fields(cfg) -> None:
    if cfg.n_experts < 1:
        raise ValueError(f"n_experts must be >= 1, got {cfg.n_experts}")
    if cfg.d_sae % cfg.n_experts:
        raise ValueError(f"d_sae={cfg.d_sae} must be a multiple of n_experts={cfg.n_experts} "
                         "(every expert has d_sae // n_experts latents)")
    if not 1 <= cfg.k <= cfg.d_sae // cfg.n_experts:
        raise ValueError(f"k={cfg.k} must be between 1 and the expert width d_sae // n_experts = "
                         f"{cfg.d_sae // cfg.n_experts}")
    if cfg.routing not in ("softmax", "heaviside"):
        raise ValueError(f"routing must be 'softmax' or 'heaviside', got {cfg.routing!r}")


@dataclass
class SwitchSAEConfig(SAEConfig):
    """Inference config of a Switch SAE (``d_sae`` is the total width, all experts together).

    Args:
        n_experts: number of experts ``N``; expert ``i`` owns latents ``[i E, (i+1) E)`` with
            ``E = d_sae // N``.
        k: active latents per token, chosen inside the routed expert.
        routing: ``"softmax"`` scales the latents by the router probability of the chosen
            expert (the paper's default); ``"heaviside"`` does not.
    """

    n_experts: int = 8
    k: int = 32
    routing: Routing = "softmax"

    def __post_init__(self):
        super().__post_init__()
        _validate_switch_fields(self)

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    @property
    def expert_width(self) -> int:
        """Latents per expert, ``d_sae // n_experts``."""
        return self.d_sae // self.n_experts


@dataclass
class SwitchTrainingSAEConfig(TrainingSAEConfig):
    """Training config of a Switch SAE (saves as :class:`SwitchSAEConfig`).

    Args:
        n_experts, k, routing: as :class:`SwitchSAEConfig`.
        load_balance_coefficient: ``alpha``; the loss adds ``alpha * d_in * L_lb`` to the
            summed-over-dimensions MSE (the authors' convention, so ``alpha`` is relative to the
            per-dimension MSE; paper default 3, ``0`` disables balancing).
        geometric_median_init: set ``b_dec`` and ``b_router`` to the geometric median of the
            first training batch (paper); otherwise they start at zero.
        decoder_init_norm: must stay ``None``: decoder rows are constrained to unit norm.
    """

    n_experts: int = 8
    k: int = 32
    routing: Routing = "softmax"
    load_balance_coefficient: float = 3.0
    geometric_median_init: bool = True
    decoder_init_norm: float | None = None

    def __post_init__(self):
        super().__post_init__()
        _validate_switch_fields(self)
        if self.load_balance_coefficient < 0:
            raise ValueError(f"load_balance_coefficient must be >= 0, got {self.load_balance_coefficient}")
        if self.decoder_init_norm is not None:
            raise ValueError("decoder_init_norm must be None for a Switch SAE: its decoder rows are "
                             "constrained to unit norm throughout training")

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def get_inference_config_class(self) -> type[SAEConfig]:
        return SwitchSAEConfig

    @property
    def expert_width(self) -> int:
        """Latents per expert, ``d_sae // n_experts``."""
        return self.d_sae // self.n_experts


# ---------------------------------------------------------------------------------------------
# FLOPs, geometric median, load balancing


def encoder_flops_per_token(d_in: int, d_sae: int, n_experts: int = 1) -> int:
    """Encoder FLOPs per token, counting a multiply-add as 2: ``2 d_in d_sae / N + 2 d_in N``.

    The second term is the router (absent for ``N = 1``, a dense SAE); biases, ReLU and TopK are
    not counted (NOTES §3.3: the paper's FLOP matching uses the same two terms).
    """
    if d_sae % n_experts:
        raise ValueError(f"d_sae={d_sae} must be a multiple of n_experts={n_experts}")
    return 2 * d_in * (d_sae // n_experts) + (2 * d_in * n_experts if n_experts > 1 else 0)


def decoder_flops_per_token(d_in: int, k: int | None = None, d_sae: int | None = None) -> int:
    """Decoder FLOPs per token: ``2 k d_in`` for a sparse decode of ``k`` latents, or
    ``2 d_sae d_in`` for a dense one (``k=None``, ``d_sae`` given: sae-lens's TopK decode)."""
    if (k is None) == (d_sae is None):
        raise ValueError("give exactly one of k (sparse decode) or d_sae (dense decode)")
    return 2 * d_in * (k if k is not None else d_sae)


@torch.no_grad()
def geometric_median(points: Float[Tensor, "n d"], *, max_iter: int = 100, tol: float = 1e-5,
                     eps: float = 1e-8) -> Float[Tensor, " d"]:
    """The geometric median ``argmin_m sum_t ||x_t - m||`` by Weiszfeld's iteration.

    Starts from the mean; each step is the average of the points weighted by
    ``1 / max(||x_t - m||, eps)``; stops after ``max_iter`` steps or when ``m`` moves less than
    ``tol * (1 + ||m||)``. Computed in float64, returned in the points' dtype.
    """
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"points must be a non-empty [n, d] matrix, got shape {tuple(points.shape)}")
    x = points.double()
    m = x.mean(0)
    for _ in range(max_iter):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(eps)
        new = (w[:, None] * x).sum(0) / w.sum()
        done = (new - m).norm() <= tol * (1 + new.norm())
        m = new
        if done:
            break
    return m.to(points.dtype)


def load_balance_loss(probs: Float[Tensor, "n n_experts"], expert: Int[Tensor, " n"]) -> Tensor:
    """Switch-Transformer balancing loss ``L_lb = N * sum_i F_i P_i`` (Fedus et al. 2021).

    ``F_i`` is the fraction of tokens routed to expert ``i`` (no gradient), ``P_i`` the mean
    router probability of expert ``i``. ``L_lb = 1`` when both are uniform; it grows to ``N``
    when every token goes to one expert with probability 1.
    """
    n_experts = probs.shape[-1]
    frac = torch.bincount(expert, minlength=n_experts).to(probs.dtype) / max(expert.numel(), 1)
    return n_experts * (frac * probs.mean(0)).sum()


# ---------------------------------------------------------------------------------------------
# Routed kernels


def _hooked(module: nn.Module) -> bool:
    """Whether anything (a TransformerLens hook, a cache, a raw torch hook) is attached."""
    return bool(getattr(module, "_forward_hooks", None) or getattr(module, "_backward_hooks", None)
                or getattr(module, "_forward_pre_hooks", None))


class _RoutedTopK(torch.autograd.Function):
    """Per-expert encoder matmul + TopK on tokens sorted by expert, with a sparse backward.

    Inputs: ``x [n, d]`` sorted by expert, ``shift [d]`` (subtracted from ``x``), ``W_enc``,
    ``b_enc``, the per-expert token counts, ``k`` and the expert width. Outputs the ``k`` largest
    pre-activations of each token's expert and their global latent indices (sorted order).
    """

    @staticmethod
    def forward(ctx, x, shift, W_enc, b_enc, counts, k, width):
        xc = x - shift
        n = x.shape[0]
        top = x.new_empty(n, k)
        idx = torch.empty(n, k, dtype=torch.long, device=x.device)
        start = 0
        for i, c in enumerate(counts):
            if c:
                block = slice(i * width, (i + 1) * width)
                pre = torch.addmm(b_enc[block], xc[start:start + c], W_enc[:, block])
                v, j = pre.topk(k, dim=-1, sorted=False)
                top[start:start + c] = v
                idx[start:start + c] = j + i * width
                start += c
        ctx.save_for_backward(xc, W_enc, idx)
        ctx.mark_non_differentiable(idx)
        return top, idx

    @staticmethod
    def backward(ctx, grad_top, _grad_idx):
        xc, W_enc, idx = ctx.saved_tensors
        need_x, need_shift, need_w, need_b = ctx.needs_input_grad[:4]
        n, k = idx.shape
        d_sae = W_enc.shape[1]
        g = grad_top.contiguous()
        flat_idx, flat_g = idx.reshape(-1), g.reshape(-1)
        col = None
        if need_shift or need_b:  # sum over tokens of the dense pre-activation gradient
            col = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, flat_idx, flat_g)
        grad_x = grad_shift = grad_w = None
        if need_w:  # dL/dW_enc[:, l] = sum over (t, j) with idx[t, j] = l of g[t, j] * xc[t]
            tok = torch.arange(n, device=idx.device).repeat_interleave(k)
            wide = torch.float32 if g.dtype in (torch.float16, torch.bfloat16) else g.dtype  # no half sparse.mm
            sel = torch.sparse_coo_tensor(torch.stack([flat_idx, tok]), flat_g.to(wide), (d_sae, n),
                                          check_invariants=False)
            grad_w = torch.sparse.mm(sel, xc.to(wide)).to(xc.dtype).t()
        if need_x:
            grad_x = F.embedding_bag(idx, W_enc.t().contiguous(), per_sample_weights=g, mode="sum")
        if need_shift:
            grad_shift = -(W_enc @ col)
        return grad_x, grad_shift, grad_w, col if need_b else None, None, None, None


class _UnitRowGrad(torch.autograd.Function):
    """Identity on the decoder; backward removes each row's gradient component along the row
    (rows are unit norm during training), as the authors' trainer does."""

    @staticmethod
    def forward(ctx, W_dec):
        ctx.save_for_backward(W_dec)
        return W_dec.view_as(W_dec)

    @staticmethod
    def backward(ctx, grad):
        (W_dec,) = ctx.saved_tensors
        return grad - (grad * W_dec).sum(-1, keepdim=True) * W_dec


def _sort_by_expert(expert: Tensor, n_experts: int) -> tuple[Tensor, Tensor, list[int]]:
    order = torch.argsort(expert, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return order, inverse, torch.bincount(expert, minlength=n_experts).tolist()


def _sparse_decode_dense_input(f: Float[Tensor, "n d_sae"], W_dec: Tensor) -> Tensor:
    """``f @ W_dec`` reading only the non-zero entries of ``f`` (dense matmul when > 1/16 dense)."""
    rows, cols = f.nonzero(as_tuple=True)
    if rows.numel() * 16 > f.numel():
        return f @ W_dec
    offsets = torch.zeros(f.shape[0], dtype=torch.long, device=f.device)
    offsets[1:] = torch.bincount(rows, minlength=f.shape[0]).cumsum(0)[:-1]
    return F.embedding_bag(cols, W_dec, offsets, mode="sum", per_sample_weights=f[rows, cols])


# ---------------------------------------------------------------------------------------------
# The SAE classes


class _SwitchCore:
    """Parameters, routing, encode / decode and the routed forward shared by both classes."""

    cfg: Any
    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    W_router: nn.Parameter
    b_router: nn.Parameter

    def initialize_weights(self) -> None:
        """The authors' initialisation: ``nn.Linear``-style uniform encoder and router weights
        (bound ``1/sqrt(d_in)``), decoder = encoder transposed with unit-norm rows, zero biases."""
        d, m, kw = self.cfg.d_in, self.cfg.d_sae, {"dtype": self.dtype, "device": self.device}
        bound = d ** -0.5
        w_enc = torch.empty(d, m, **kw).uniform_(-bound, bound)
        self.W_enc = nn.Parameter(w_enc)
        w_dec = w_enc.t().clone()
        if w_dec.device.type != "meta":
            w_dec /= w_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
        self.W_dec = nn.Parameter(w_dec.contiguous())
        self.b_enc = nn.Parameter(torch.zeros(m, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d, **kw))
        self.W_router = nn.Parameter(torch.empty(d, self.cfg.n_experts, **kw).uniform_(-bound, bound))
        self.b_router = nn.Parameter(torch.zeros(d, **kw))

    # --- routing ---------------------------------------------------------------------------

    def _sae_input(self, x: Tensor) -> Tensor:
        x = self.reshape_fn_in(x.to(self.dtype))
        x = self.hook_sae_input(x)
        return self.run_time_activation_norm_fn_in(x)

    def _route(self, sae_in: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        probs = ((sae_in - self.b_router) @ self.W_router).softmax(-1)
        p, expert = probs.max(-1)
        return expert, p, probs

    def route(self, x: Float[Tensor, "... d_in"]) -> tuple[Int[Tensor, "..."], Float[Tensor, "... n_experts"]]:
        """The expert each token goes to and the router probabilities ``p(x)``.

        Returns:
            ``(expert [...], probs [..., n_experts])``; ``expert = probs.argmax(-1)``.
        """
        expert, _, probs = self._route(self._sae_input(x))
        return expert, probs

    def _scale(self, top: Tensor, p: Tensor) -> Tensor:
        acts = top.relu()
        return acts * p.unsqueeze(-1) if self.cfg.routing == "softmax" else acts

    def _shift(self) -> Tensor:
        return self.b_dec if self.cfg.apply_b_dec_to_input else torch.zeros_like(self.b_dec)

    def _sparse_code(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Routed encode of ``flat [n, d_in]``: ``(idx [n, k], acts [n, k], expert [n], probs [n, N])``."""
        expert, p, probs = self._route(flat)
        order, inverse, counts = _sort_by_expert(expert, self.cfg.n_experts)
        top, idx = _RoutedTopK.apply(flat[order], self._shift(), self.W_enc, self.b_enc, counts,
                                     self.cfg.k, self.cfg.expert_width)
        return idx[inverse], self._scale(top[inverse], p), expert, probs

    def _block_preacts(self, flat: Tensor, expert: Tensor) -> Tensor:
        """Pre-activations of each token's own expert, ``[n, E]`` (plain autograd)."""
        order, inverse, counts = _sort_by_expert(expert, self.cfg.n_experts)
        xs = flat[order] - self._shift()
        w, b = self.W_enc.split(self.cfg.expert_width, dim=1), self.b_enc.split(self.cfg.expert_width)
        blocks = [torch.addmm(b[i], xi, w[i]) for i, xi in enumerate(xs.split(counts)) if counts[i]]
        if not blocks:
            return xs.new_zeros(0, self.cfg.expert_width)
        return torch.cat(blocks)[inverse]

    def _encode_flat(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """Dense full-width ``(acts, pre-activations)``, through the latent hooks; zero outside
        each token's expert (pre-activations are materialised only if that hook is used)."""
        n, n_exp, width = flat.shape[0], self.cfg.n_experts, self.cfg.expert_width
        if _hooked(self.hook_sae_acts_pre):
            expert, p, _ = self._route(flat)
            rows = torch.arange(n, device=flat.device)
            pre = flat.new_zeros(n, n_exp, width).index_put((rows, expert), self._block_preacts(flat, expert))
            pre = self.hook_sae_acts_pre(pre.view(n, self.cfg.d_sae))
            top, j = pre.view(n, n_exp, width)[rows, expert].topk(self.cfg.k, dim=-1, sorted=False)
            idx, acts = j + expert.unsqueeze(-1) * width, self._scale(top, p)
        else:
            idx, acts, _, _ = self._sparse_code(flat)
            pre = flat.new_zeros(0)
        dense = flat.new_zeros(n, self.cfg.d_sae).scatter(-1, idx, acts)
        return self.hook_sae_acts_post(dense), pre

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Full-width latents ``a`` (dense; zero outside each token's expert)."""
        sae_in = self._sae_input(x)
        acts, _ = self._encode_flat(sae_in.reshape(-1, self.cfg.d_in))
        return acts.reshape(*sae_in.shape[:-1], self.cfg.d_sae)

    def _finish_decode(self, out: Tensor) -> Tensor:
        out = self.hook_sae_recons(out)
        out = self.run_time_activation_norm_fn_out(out)
        return self.reshape_fn_out(out, self.d_head)

    def decode(self, feature_acts: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """``a @ W_dec + b_dec``, reading only the non-zero latents when ``a`` is sparse enough."""
        lead = feature_acts.shape[:-1]
        if feature_acts.is_sparse:
            flat = feature_acts.reshape(-1, self.cfg.d_sae) if feature_acts.ndim != 2 else feature_acts
            out = torch.sparse.mm(flat, self.W_dec)
        else:
            out = _sparse_decode_dense_input(feature_acts.reshape(-1, self.cfg.d_sae), self.W_dec)
        return self._finish_decode((out + self.b_dec).reshape(*lead, self.cfg.d_in))

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """Reconstruction. Routed and sparse end to end unless a latent hook or the error term
        is in use (then sae-lens's encode -> decode path, with full-width latents)."""
        if self.use_error_term or _hooked(self.hook_sae_acts_pre) or _hooked(self.hook_sae_acts_post):
            return super().forward(x)
        sae_in = self._sae_input(x)
        idx, acts, _, _ = self._sparse_code(sae_in.reshape(-1, self.cfg.d_in))
        out = F.embedding_bag(idx, self.W_dec, per_sample_weights=acts, mode="sum") + self.b_dec
        return self.hook_sae_output(self._finish_decode(out.reshape(sae_in.shape)))

    def sparse_encode(self, x: Float[Tensor, "... d_in"]) -> tuple[Int[Tensor, "... k"], Float[Tensor, "... k"]]:
        """The latents as ``(indices, values)``, ``k`` per token (global latent ids; no hooks)."""
        sae_in = self._sae_input(x)
        idx, acts, _, _ = self._sparse_code(sae_in.reshape(-1, self.cfg.d_in))
        lead = sae_in.shape[:-1]
        return idx.reshape(*lead, self.cfg.k), acts.reshape(*lead, self.cfg.k)

    # --- folding -----------------------------------------------------------------------------

    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError("folding decoder norms into the encoder changes which latents win "
                                  "the TopK inside an expert; a Switch SAE's decoder rows are unit "
                                  "norm after training, so there is nothing to fold")

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """Fold a constant input scale ``c`` (the SAE saw ``c x``) into the weights, router included."""
        super().fold_activation_norm_scaling_factor(scaling_factor)
        self.W_router.data *= scaling_factor
        self.b_router.data /= scaling_factor

    @torch.no_grad()
    def fold_activation_whitening(self, mean: Tensor, whitening_matrix: Tensor,
                                  unwhitening_matrix: Tensor) -> None:
        """sae-lens's whitening fold, plus the router: ``W_router <- M W_router``,
        ``b_router <- b_router M^-1 + mean``."""
        dtype = torch.promote_types(self.W_router.dtype, whitening_matrix.dtype)
        m, minv = whitening_matrix.to(self.device, dtype), unwhitening_matrix.to(self.device, dtype)
        self.W_router.data.copy_(m @ self.W_router.data.to(dtype))
        self.b_router.data.copy_(self.b_router.data.to(dtype) @ minv + mean.to(self.device, dtype))
        super().fold_activation_whitening(mean, whitening_matrix, unwhitening_matrix)


class SwitchSAE(_SwitchCore, SAE[SwitchSAEConfig]):
    """Inference Switch SAE (architecture ``"switch"``); see the module docstring."""

    def __init__(self, cfg: SwitchSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)


class SwitchTrainingSAE(_SwitchCore, TrainingSAE[SwitchTrainingSAEConfig]):
    """Training Switch SAE for sae-lens's ``SAETrainer``; saves as :class:`SwitchSAE`."""

    def __init__(self, cfg: SwitchTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self._biases_initialised = False

    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {"load_balance": self.cfg.load_balance_coefficient}

    def encode_with_hidden_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(latents, pre-activations)``, both full width; pre-activations are computed for
        each token's own expert only, and are all zeros unless ``hook_sae_acts_pre`` is hooked."""
        sae_in = self._sae_input(x)
        acts, pre = self._encode_flat(sae_in.reshape(-1, self.cfg.d_in))
        return acts.reshape(*sae_in.shape[:-1], self.cfg.d_sae), pre

    @torch.no_grad()
    def initialize_biases_from_data(self, x: Float[Tensor, "n d_in"]) -> None:
        """Set ``b_dec`` and ``b_router`` to the geometric median of ``x`` (as the SAE sees it)."""
        med = geometric_median(x.reshape(-1, self.cfg.d_in).to(self.dtype))
        self.b_dec.data.copy_(med)
        self.b_router.data.copy_(med)
        self._biases_initialised = True

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale decoder rows to unit norm in place (done before every training step)."""
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        """Routed forward, MSE + ``alpha * d_in * L_lb``; latents are returned as a sparse COO
        ``[n, d_sae]`` tensor (the trainer's firing statistics accept it)."""
        x = step_input.sae_in
        sae_in = self._sae_input(x)
        flat = sae_in.reshape(-1, self.cfg.d_in)
        if self.cfg.geometric_median_init and step_input.n_training_steps == 0 and not self._biases_initialised:
            self.initialize_biases_from_data(flat.detach())
        self.normalize_decoder_()
        W_dec = _UnitRowGrad.apply(self.W_dec)
        if _hooked(self.hook_sae_acts_pre) or _hooked(self.hook_sae_acts_post):
            acts_dense, _ = self._encode_flat(flat)
            expert, _, probs = self._route(flat)
            out = acts_dense @ W_dec
            feature_acts = acts_dense
        else:
            idx, acts, expert, probs = self._sparse_code(flat)
            out = F.embedding_bag(idx, W_dec, per_sample_weights=acts, mode="sum")
            n = flat.shape[0]
            rows = torch.arange(n, device=idx.device).repeat_interleave(self.cfg.k)
            feature_acts = torch.sparse_coo_tensor(torch.stack([rows, idx.reshape(-1)]), acts.detach().reshape(-1),
                                                   (n, self.cfg.d_sae), check_invariants=False)
        sae_out = self._finish_decode((out + self.b_dec).reshape(sae_in.shape))
        mse = self.mse_loss_fn(sae_out, x).sum(dim=-1).mean()
        lb = load_balance_loss(probs, expert)
        coeff = step_input.coefficients.get("load_balance", self.cfg.load_balance_coefficient)
        lb_term = coeff * self.cfg.d_in * lb
        load = torch.bincount(expert, minlength=self.cfg.n_experts).float() / max(expert.numel(), 1)
        return TrainStepOutput(
            sae_in=x, sae_out=sae_out, feature_acts=feature_acts, hidden_pre=sae_in.new_zeros(0),
            loss=mse + lb_term, losses={"mse_loss": mse, "load_balance_loss": lb_term},
            metrics={"load_balance": lb.detach(), "max_expert_load_over_uniform": (load.max() * self.cfg.n_experts)},
        )

    def calculate_aux_loss(self, step_input: TrainStepInput, feature_acts: Tensor, hidden_pre: Tensor,
                           sae_out: Tensor) -> dict[str, Tensor]:
        """The balancing term for sae-lens's generic training pass (unused by ours)."""
        expert, _, probs = self._route(self._sae_input(step_input.sae_in).reshape(-1, self.cfg.d_in))
        return {"load_balance_loss": step_input.coefficients["load_balance"] * self.cfg.d_in
                * load_balance_loss(probs, expert)}


# ---------------------------------------------------------------------------------------------
# The naive reference


def masked_dense_forward(sae: SwitchSAE | SwitchTrainingSAE, x: Float[Tensor, "n d_in"]
                         ) -> tuple[Float[Tensor, "n d_sae"], Float[Tensor, "n d_in"]]:
    """The authors' computation: every expert encodes every token, the others are masked out.

    ``z = ReLU((x - b_dec) @ W_enc + b_enc)`` for all ``d_sae`` latents, multiplied by the
    one-hot routing mask (times ``p_i`` for softmax routing), TopK over the full width, dense
    decode. Same function as the routed path, ``N`` times the encoder cost; the reference for
    tests and the baseline in ``bench/bench_switch.py``.

    Returns:
        ``(latents [n, d_sae], reconstruction [n, d_in])``.
    """
    sae_in = sae._sae_input(x).reshape(-1, sae.cfg.d_in)
    expert, p, _ = sae._route(sae_in)
    z = torch.relu((sae_in - sae._shift()) @ sae.W_enc + sae.b_enc)
    gate = F.one_hot(expert, sae.cfg.n_experts).to(z.dtype)
    if sae.cfg.routing == "softmax":
        gate = gate * p.unsqueeze(-1)
    z = z * gate.repeat_interleave(sae.cfg.expert_width, dim=1)
    top, idx = z.topk(sae.cfg.k, dim=-1, sorted=False)
    acts = torch.zeros_like(z).scatter(-1, idx, top)
    return acts, sae._finish_decode(acts @ sae.W_dec + sae.b_dec)


if ARCHITECTURE not in SAE_CLASS_REGISTRY:  # idempotent under importlib.reload
    register_sae_class(ARCHITECTURE, SwitchSAE, SwitchSAEConfig)
if ARCHITECTURE not in SAE_TRAINING_CLASS_REGISTRY:
    register_sae_training_class(ARCHITECTURE, SwitchTrainingSAE, SwitchTrainingSAEConfig)
