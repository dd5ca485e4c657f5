"""Switch SAEs (Mudide et al. 2024, arXiv 2410.08201): routed, and really cheaper.

A Switch SAE is ``N`` TopK SAEs ("experts") of width ``E = d_sae / N`` and a router. Each
token is sent to one expert; only that expert's encoder runs. With ``x`` the SAE input (after
sae-lens's input normalisation):

* router: ``p(x) = softmax((x - b_router) @ W_router)`` (``W_router [d_in, N]``, no bias inside
  the linear map, its own centring vector ``b_router``); the expert is ``i = argmax_j p_j(x)``;
* encoder: ``f = TopK_k(ReLU((x - b_dec) @ W_enc[:, block_i] + b_enc[block_i]))``, where
  ``block_i = [i E, (i+1) E)`` are expert ``i``'s latents (the authors' code has no ``b_enc``;
  ours is zero-initialised, as sae-lens's TopK);
* latents (``hook_sae_acts_post``, full width ``[.., d_sae]``, zero outside ``block_i``):
  ``a = p_i(x) f`` with ``routing="softmax"``, ``a = f`` with ``routing="heaviside"``;
* decoder: ``x_hat = a @ W_dec + b_dec``, one shared ``b_dec``; the router is trained through
  the ``p_i`` scaling (softmax) and by the load-balancing loss.

Scaling the latents by ``p_i`` (rather than the output) is the authors' implementation; it is
the same function (TopK is scale-invariant, the decoder linear) and keeps ``decode`` linear,
so splicing, interventions and sae-lens's tooling treat a Switch SAE like any other SAE.

**Routed.** The kernels (:mod:`saetools.saes.switch_kernels`) sort tokens by expert and run
one matmul per expert on its own tokens and its own block of ``W_enc``; the TopK runs inside
the block; the decoder reads only the ``k`` selected rows of ``W_dec``; the backward pass is
sparse too. The full-width latent vector is materialised only when something is attached to
``hook_sae_acts_pre`` / ``hook_sae_acts_post`` (a cache, an intervention), or when ``encode``
is called (it returns dense latents, as every sae-lens SAE does). :func:`masked_dense_forward`
is the authors' dense-and-mask computation, kept as the reference.

**Training** (``SwitchTrainingSAE``, trained by sae-lens's ``SAETrainer``, e.g. through
:func:`saetools.train_sae`): the loss is sae-lens's ``sum_dims ||x - x_hat||^2`` (mean over
tokens) plus ``alpha * d_in * L_lb`` with the Switch-Transformer balancing loss
``L_lb = N sum_i F_i P_i`` (:func:`~saetools.saes.switch_kernels.load_balance_loss`). The
``d_in`` factor is the authors' convention: it makes ``alpha`` a weight relative
to the *per-dimension* MSE, so the paper's ``alpha = 3`` carries over. (With sae-lens's
``normalize_activations="expected_average_only_in"`` the per-dimension MSE is that of inputs
scaled to ``E||x||^2 = d_in``, as the paper's GPT-2 activations roughly are.) Decoder rows are
renormalised to unit norm before every step and the gradient component parallel to each row
is removed; ``b_dec`` and ``b_router`` start at the geometric median of the first training
batch (Weiszfeld iterations).

See ``docs/mudide2024_switch_sae.md`` for the method and where saetools differs from the authors'
code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from sae_lens import register_sae_class, register_sae_training_class
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

from saetools.sae_lens_compat import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY, sparse_matmul_nd
from saetools.saes.decoder_norm import project_row_grad
from saetools.saes.switch_kernels import (
    decoder_flops_per_token,
    dense_input_decode,
    encoder_flops_per_token,
    geometric_median,
    load_balance_loss,
    routed_topk,
    sort_by_expert,
    sparse_decode,
)

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
    name = type(cfg).__name__
    if cfg.n_experts < 1:
        raise ValueError(f"{name}.n_experts must be >= 1, got {cfg.n_experts}")
    if cfg.d_sae % cfg.n_experts:
        raise ValueError(f"{name}.d_sae={cfg.d_sae} must be a multiple of n_experts={cfg.n_experts} "
                         "(every expert has d_sae // n_experts latents)")
    if not 1 <= cfg.k <= cfg.d_sae // cfg.n_experts:
        raise ValueError(f"{name}.k={cfg.k} must be between 1 and the expert width d_sae // n_experts = "
                         f"{cfg.d_sae // cfg.n_experts}; lower k or use fewer experts")
    if cfg.routing not in ("softmax", "heaviside"):
        raise ValueError(f"{name}.routing must be 'softmax' or 'heaviside', got {cfg.routing!r}")


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

    # sae-lens's ``from_dict`` builds the config with ``metadata`` as a dict and converts it
    # afterwards, so the dataclass fields are not checked against their annotations under pytest.
    __no_type_check__ = True

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
        tied_biases: make ``b_router`` the same parameter as ``b_dec`` for the whole run. The
            paper's formula has two biases; the authors' initialisation assigns one tensor to
            both, so their runs train a single one. Off by default (the formula).
        aux_loss_coefficient: weight of an AuxK loss as sae-lens's TopK has (the top
            ``d_in // 2`` pre-activations of dead latents, in each token's own expert,
            reconstruct the detached residual; scaled down while few latents are dead). 0 (the
            authors) turns it off. It materialises the own-expert pre-activations at full
            width (``batch x d_sae`` floats) on steps with dead latents.
        decoder_init_norm: must stay ``None``: decoder rows are constrained to unit norm.
    """

    # sae-lens's ``from_dict`` builds the config with ``metadata`` as a dict and converts it
    # afterwards, so the dataclass fields are not checked against their annotations under pytest.
    __no_type_check__ = True

    n_experts: int = 8
    k: int = 32
    routing: Routing = "softmax"
    load_balance_coefficient: float = 3.0
    geometric_median_init: bool = True
    tied_biases: bool = False
    aux_loss_coefficient: float = 0.0
    decoder_init_norm: float | None = None

    def __post_init__(self):
        super().__post_init__()
        _validate_switch_fields(self)
        if self.load_balance_coefficient < 0:
            raise ValueError("SwitchTrainingSAEConfig.load_balance_coefficient must be >= 0, got "
                             f"{self.load_balance_coefficient}")
        if self.aux_loss_coefficient < 0:
            raise ValueError("SwitchTrainingSAEConfig.aux_loss_coefficient must be >= 0, got "
                             f"{self.aux_loss_coefficient}")
        if self.decoder_init_norm is not None:
            raise ValueError("SwitchTrainingSAEConfig.decoder_init_norm must be None: a Switch SAE's "
                             "decoder rows are constrained to unit norm throughout training")

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def get_inference_config_class(self) -> type[SAEConfig]:
        return SwitchSAEConfig

    @property
    def expert_width(self) -> int:
        """Latents per expert, ``d_sae // n_experts``."""
        return self.d_sae // self.n_experts


def _hooked(module: nn.Module) -> bool:
    """Whether anything (a TransformerLens hook, a cache, a raw torch hook) is attached."""
    return bool(getattr(module, "_forward_hooks", None) or getattr(module, "_backward_hooks", None)
                or getattr(module, "_forward_pre_hooks", None))


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

    def route(self, x: Float[Tensor, "*batch d_in"]) -> tuple[Int[Tensor, " *batch"], Float[Tensor, "*batch n_experts"]]:
        """The expert each token goes to and the router probabilities ``p(x)``.

        Returns:
            ``(expert [...], probs [..., n_experts])``; ``expert = probs.argmax(-1)``.
        """
        sae_in = self._sae_input(x)
        expert, _, probs = self._route(sae_in)
        if self.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
            self.run_time_activation_norm_fn_out(sae_in)  # drop the stored per-token statistics
        return expert, probs

    def _scale(self, top: Tensor, p: Tensor) -> Tensor:
        acts = top.relu()
        return acts * p.unsqueeze(-1) if self.cfg.routing == "softmax" else acts

    def _shift(self) -> Tensor:
        return self.b_dec if self.cfg.apply_b_dec_to_input else torch.zeros_like(self.b_dec)

    def _sparse_code(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Routed encode of ``flat [n, d_in]``: ``(idx [n, k], acts [n, k], expert [n], probs [n, N])``."""
        expert, p, probs = self._route(flat)
        top, idx = routed_topk(flat, self._shift(), self.W_enc, self.b_enc, expert,
                               n_experts=self.cfg.n_experts, k=self.cfg.k)
        return idx, self._scale(top, p), expert, probs

    def _own_block_preacts(self, flat: Tensor, expert: Tensor) -> Tensor:
        """Full-width pre-activations ``[n, d_sae]``: each token's own expert block, zero elsewhere
        (plain autograd; one matmul per expert)."""
        n, n_exp, width = flat.shape[0], self.cfg.n_experts, self.cfg.expert_width
        order, inverse, counts = sort_by_expert(expert, n_exp)
        xs = flat[order] - self._shift()
        w, b = self.W_enc.split(width, dim=1), self.b_enc.split(width)
        blocks = [torch.addmm(b[i], xi, w[i]) for i, xi in enumerate(xs.split(counts)) if counts[i]]
        own = torch.cat(blocks)[inverse] if blocks else xs.new_zeros(0, width)
        rows = torch.arange(n, device=flat.device)
        return flat.new_zeros(n, n_exp, width).index_put((rows, expert), own).view(n, self.cfg.d_sae)

    def _encode(self, sae_in: Tensor, *, want_pre: bool = False) -> tuple[Tensor, Tensor]:
        """Dense full-width ``(latents [..., d_sae], pre-activations)`` of ``sae_in [..., d_in]``,
        through the latent hooks (which see the input's leading shape). Pre-activations (own
        expert's block, zero elsewhere) are materialised only when ``want_pre`` or
        ``hook_sae_acts_pre`` is hooked; otherwise an empty ``[0]`` tensor."""
        lead, d_sae = sae_in.shape[:-1], self.cfg.d_sae
        flat = sae_in.reshape(-1, self.cfg.d_in)
        n, n_exp, width = flat.shape[0], self.cfg.n_experts, self.cfg.expert_width
        if want_pre or _hooked(self.hook_sae_acts_pre):
            expert, p, _ = self._route(flat)
            pre = self.hook_sae_acts_pre(self._own_block_preacts(flat, expert).view(*lead, d_sae))
            rows = torch.arange(n, device=flat.device)
            top, j = pre.reshape(n, n_exp, width)[rows, expert].topk(self.cfg.k, dim=-1, sorted=False)
            idx, acts = j + expert.unsqueeze(-1) * width, self._scale(top, p)
        else:
            idx, acts, _, _ = self._sparse_code(flat)
            pre = flat.new_zeros(0)
        dense = flat.new_zeros(n, d_sae).scatter(-1, idx, acts)
        return self.hook_sae_acts_post(dense.view(*lead, d_sae)), pre

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Full-width latents ``a`` (dense; zero outside each token's expert)."""
        return self._encode(self._sae_input(x))[0]

    def _finish_decode(self, out: Tensor) -> Tensor:
        out = self.hook_sae_recons(out)
        out = self.run_time_activation_norm_fn_out(out)
        return self.reshape_fn_out(out, self.d_head)

    def decode(self, feature_acts: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """``a @ W_dec + b_dec``. Sparse COO latents use a sparse matmul; dense latents that need
        no gradient read only their non-zero entries (dense matmul otherwise)."""
        if feature_acts.is_sparse:
            out = sparse_matmul_nd(feature_acts, self.W_dec)
        else:
            lead = feature_acts.shape[:-1]
            out = dense_input_decode(feature_acts.reshape(-1, self.cfg.d_sae), self.W_dec)
            out = out.reshape(*lead, self.cfg.d_in)
        return self._finish_decode(out + self.b_dec)

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """Reconstruction. Routed and sparse end to end unless a latent hook or the error term
        is in use (then sae-lens's encode -> decode path, with full-width latents)."""
        if self.use_error_term or _hooked(self.hook_sae_acts_pre) or _hooked(self.hook_sae_acts_post):
            return super().forward(x)
        sae_in = self._sae_input(x)
        idx, acts, _, _ = self._sparse_code(sae_in.reshape(-1, self.cfg.d_in))
        out = sparse_decode(idx, acts, self.W_dec) + self.b_dec
        return self.hook_sae_output(self._finish_decode(out.reshape(sae_in.shape)))

    def sparse_encode(self, x: Float[Tensor, "... d_in"]) -> tuple[Int[Tensor, "... k"], Float[Tensor, "... k"]]:
        """The latents as ``(indices, values)``, ``k`` per token (global latent ids; no hooks)."""
        sae_in = self._sae_input(x)
        idx, acts, _, _ = self._sparse_code(sae_in.reshape(-1, self.cfg.d_in))
        if self.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
            self.run_time_activation_norm_fn_out(sae_in)  # drop the stored per-token statistics
        lead = sae_in.shape[:-1]
        return idx.reshape(*lead, self.cfg.k), acts.reshape(*lead, self.cfg.k)

    # --- folding -----------------------------------------------------------------------------

    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        """Fold decoder row norms into the encoder; exact only when the norms are equal inside
        each expert (TopK ranks pre-activations, which the fold would rescale per latent)."""
        norms = self.W_dec.norm(dim=-1).view(self.cfg.n_experts, -1)
        if not torch.allclose(norms, norms[:, :1].expand_as(norms), rtol=1e-4, atol=0):
            raise NotImplementedError(
                "folding decoder norms into the encoder would change which latents win the TopK "
                "inside an expert (the row norms differ within an expert); a Switch SAE trained by "
                "saetools has unit-norm rows, so there is nothing to fold")
        super().fold_W_dec_norm()

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """Fold a constant input scale ``c`` (the SAE saw ``c x``) into the weights, router included."""
        super().fold_activation_norm_scaling_factor(scaling_factor)
        self.W_router.data *= scaling_factor
        if self.b_router is not self.b_dec:  # tied: folded once, as b_dec
            self.b_router.data /= scaling_factor

    @torch.no_grad()
    def fold_activation_whitening(self, mean: Tensor, whitening_matrix: Tensor,
                                  unwhitening_matrix: Tensor) -> None:
        """sae-lens's whitening fold, plus the router: ``W_router <- M W_router``,
        ``b_router <- b_router M^-1 + mean``."""
        dtype = torch.promote_types(self.W_router.dtype, whitening_matrix.dtype)
        m, minv = whitening_matrix.to(self.device, dtype), unwhitening_matrix.to(self.device, dtype)
        self.W_router.data.copy_(m @ self.W_router.data.to(dtype))
        if self.b_router is not self.b_dec:  # tied: folded once, as b_dec (the same formula)
            self.b_router.data.copy_(self.b_router.data.to(dtype) @ minv + mean.to(self.device, dtype))
        super().fold_activation_whitening(mean, whitening_matrix, unwhitening_matrix)


class SwitchSAE(_SwitchCore, SAE[SwitchSAEConfig]):
    """Inference Switch SAE (architecture ``"switch"``); see the module docstring."""

    def __init__(self, cfg: SwitchSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)


def _untie(state_dict: dict[str, Any]) -> None:
    """safetensors stores no tensor twice: a tied ``b_router`` is written as a copy of ``b_dec``."""
    b_router, b_dec = state_dict.get("b_router"), state_dict.get("b_dec")
    if b_router is not None and b_dec is not None and b_router.data_ptr() == b_dec.data_ptr():
        state_dict["b_router"] = b_router.clone()


class SwitchTrainingSAE(_SwitchCore, TrainingSAE[SwitchTrainingSAEConfig]):
    """Training Switch SAE for sae-lens's ``SAETrainer``; saves as :class:`SwitchSAE`."""

    def __init__(self, cfg: SwitchTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        if cfg.tied_biases:
            self.b_router = self.b_dec  # one parameter under two names, as in the authors' runs
        self._biases_initialised = False
        self.load_history: list[float] = []
        """``N max_i F_i`` (busiest expert's load over uniform) at every training step."""

    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {"load_balance": self.cfg.load_balance_coefficient}

    def encode_with_hidden_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(latents, pre-activations)``, both full width; the pre-activations are those of each
        token's own expert (zero in the other experts' blocks, which are never computed)."""
        return self._encode(self._sae_input(x), want_pre=True)

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
        """Routed forward, MSE + ``alpha * d_in * L_lb``.

        Latents are returned as a sparse COO ``[n, d_sae]`` tensor (sae-lens's trainer reads
        firing statistics from it); the pre-activations as an empty tensor (never computed at
        full width). Logged metrics: ``load_balance`` (``L_lb``) and
        ``max_expert_load_over_uniform`` (``N max_i F_i``).
        """
        x = step_input.sae_in
        sae_in = self._sae_input(x)
        flat = sae_in.reshape(-1, self.cfg.d_in)
        if self.cfg.geometric_median_init and step_input.n_training_steps == 0 and not self._biases_initialised:
            self.initialize_biases_from_data(flat.detach())
        self.normalize_decoder_()
        W_dec = project_row_grad(self.W_dec)
        n = flat.shape[0]
        if _hooked(self.hook_sae_acts_pre) or _hooked(self.hook_sae_acts_post):
            feature_acts, _ = self._encode(flat)
            expert, _, probs = self._route(flat)
            out = feature_acts @ W_dec
        else:
            idx, acts, expert, probs = self._sparse_code(flat)
            out = sparse_decode(idx, acts, W_dec)
            rows = torch.arange(n, device=idx.device).repeat_interleave(self.cfg.k)
            feature_acts = torch.sparse_coo_tensor(torch.stack([rows, idx.reshape(-1)]), acts.detach().reshape(-1),
                                                   (n, self.cfg.d_sae), check_invariants=False)
        recon = out + self.b_dec
        sae_out = self._finish_decode(recon.reshape(sae_in.shape))
        mse = self.mse_loss_fn(sae_out, x).sum(dim=-1).mean()
        lb = load_balance_loss(probs, expert)
        lb_term = step_input.coefficients.get("load_balance", self.cfg.load_balance_coefficient) * self.cfg.d_in * lb
        aux = {}
        if self.cfg.aux_loss_coefficient > 0:
            aux["auxiliary_reconstruction_loss"] = self._auxk_loss(flat, recon, expert, W_dec, step_input.dead_neuron_mask)
        load = torch.bincount(expert, minlength=self.cfg.n_experts).float() / max(n, 1)
        if self.training:
            self.load_history.append(load.max().item() * self.cfg.n_experts)
        return TrainStepOutput(
            sae_in=x, sae_out=sae_out, feature_acts=feature_acts, hidden_pre=sae_in.new_zeros(0),
            loss=mse + lb_term + sum(aux.values()), losses={"mse_loss": mse, "load_balance_loss": lb_term, **aux},
            metrics={"load_balance": lb.detach(), "max_expert_load_over_uniform": load.max() * self.cfg.n_experts},
        )

    def process_state_dict_for_saving(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving(state_dict)
        _untie(state_dict)

    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        _untie(state_dict)

    def load_state_dict(self, state_dict, *args, **kwargs):
        out = super().load_state_dict(state_dict, *args, **kwargs)
        if self.cfg.tied_biases:
            self.b_router = self.b_dec
        return out

    def _auxk_loss(self, flat: Tensor, recon: Tensor, expert: Tensor, W_dec: Tensor, dead: Tensor | None) -> Tensor:
        """sae-lens TopK's AuxK in the SAE's space, on each token's own expert (``aux_loss_coefficient``)."""
        n_dead = 0 if dead is None else int(dead.sum())
        if n_dead == 0:
            return recon.new_zeros(())
        k_aux = self.cfg.d_in // 2
        scale = min(n_dead / k_aux, 1.0)
        pre = self._own_block_preacts(flat, expert)
        own = torch.zeros_like(pre, dtype=torch.bool).view(len(flat), self.cfg.n_experts, -1)
        own[torch.arange(len(flat), device=flat.device), expert] = True
        masked = torch.where(dead[None] & own.view_as(pre), pre, -torch.inf)
        top = masked.topk(min(k_aux, n_dead, self.cfg.expert_width), dim=-1, sorted=False)
        values = torch.where(torch.isfinite(top.values), top.values, 0.0)  # fewer dead latents in this expert
        aux_acts = torch.zeros_like(pre).scatter(-1, top.indices, values)
        residual = (flat - recon).detach()
        return self.cfg.aux_loss_coefficient * scale * (aux_acts @ W_dec - residual).pow(2).sum(-1).mean()

    def calculate_aux_loss(self, step_input: TrainStepInput, feature_acts: Tensor, hidden_pre: Tensor,
                           sae_out: Tensor) -> dict[str, Tensor]:
        """The balancing term, for sae-lens's generic training pass (ours does not call it)."""
        expert, probs = self.route(step_input.sae_in)
        coeff = step_input.coefficients.get("load_balance", self.cfg.load_balance_coefficient)
        return {"load_balance_loss": coeff * self.cfg.d_in
                * load_balance_loss(probs.reshape(-1, self.cfg.n_experts), expert.reshape(-1))}


def masked_dense_forward(sae: SwitchSAE | SwitchTrainingSAE, x: Float[Tensor, "n d_in"]
                         ) -> tuple[Float[Tensor, "n d_sae"], Float[Tensor, "n d_in"]]:
    """The authors' computation: every expert encodes every token, the others are masked out.

    ``z = ReLU((x - b_dec) @ W_enc + b_enc)`` for all ``d_sae`` latents, multiplied by the
    one-hot routing mask (times ``p_i`` for softmax routing), TopK over the full width, dense
    decode. Same function as the routed path at ``N`` times the encoder cost (and a dense
    decoder); the reference for tests and a baseline in ``bench/bench_switch.py``.

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
