"""top-AFA SAEs (Lee, Davies, Canby, Hockenmaier 2025, arXiv 2503.24277) as a sae-lens architecture.

A top-AFA SAE has no sparsity hyperparameter ``k``: for every token it keeps the largest
latents until the l2 norm of their (decoder-scaled) activations is as close as possible to
the *approximate feature activation* (AFA), the norm of the centred input. Architecture
``"topafa"``, registered with sae-lens on import (inference: :class:`TopAFASAE`; training:
:class:`TopAFATrainingSAE`), so it trains with sae-lens's ``SAETrainer`` (and
:func:`saetools.train_sae`), saves with ``save_inference_model`` / ``save_model``, loads with
``SAE.load_from_disk`` (after ``import saetools.saes``), and splices into a
``HookedSAETransformer`` like a built-in SAE.

Encoding (exactly docs/lee2025_top_afa.md; notation per token):

1. ``x_n``: the SAE input in the SAE's own space. With ``normalize_activations="layer_norm"``
   this is sae-lens's per-token standardisation ``(x - mean_d x) / (std_d x + 1e-5)`` (unbiased
   std), which is the paper's ``input_unit_norm=True``; otherwise ``x_n = x``.
2. centre: ``x_c = x_n - b_dec``; pre-activations ``a = ReLU(x_c @ W_enc)`` (no encoder bias).
3. AFA target ``t = ||x_c||_2`` (the *centred* input).
4. scores ``s_i = (a_i ||W_dec[i]||)^2`` (``= a_i^2`` for unit-norm decoder rows).
5. sort the scores in descending order, ``c_m = sqrt(sum of the m largest)`` for m = 1..h,
   with the last *squared* sum replaced by ``1e8`` (so ``c_h = 1e4``), as in the authors' code:
   "all latents" is the nearest prefix only for a target beyond about ``5e3``.
6. ``k = argmin_m |c_m - t| + 1`` (0-based argmin, first minimiser on ties): the prefix whose
   norm is *closest* to the target, not the first to exceed it.
7. keep the ``k`` top latents with their values ``a_i`` and zero the rest;
   ``x_hat = f @ W_dec + b_dec``, then undo the normalisation of step 1.

:func:`topafa_mask` computes steps 4-6 for a whole batch without per-token Python: it ranks
only the top ``K`` scores (``torch.topk``) and widens ``K`` (x4) for the tokens whose target
lies beyond the ranked prefix. Because ``c_m`` is non-decreasing, once ``c_K >= t`` the
global argmin lies in the prefix, so the result is identical to a full sort (tested against
a naive per-token loop in ``tests/test_topafa.py``).

Training loss (docs/lee2025_top_afa.md; all terms in the SAE's normalised space ``x_n``):

``L = mean_{batch, d} (x_hat_n - x_n)^2  +  lambda_AFA * mean_batch (||f~|| - T)^2  +  AuxK``

with ``f~_i = f_i ||W_dec[i]||`` (``= f`` for unit-norm rows) and ``T = ||x_n||`` (the paper's
code: the *un-centred* input, an inconsistency with step 3 that we keep, as ``docs/lee2025_top_afa.md``
explains; ``afa_loss_target="centred"`` uses ``||x_c||`` instead). AuxK reconstructs the
residual ``x_n - x_hat_n`` (not detached, as in the authors' code; ``aux_detach=True`` detaches
it) from the ``aux_k`` largest ReLU pre-activations of the dead latents (sae-lens's dead-latent
mask), ``aux_coefficient * mean_{batch, d}(...)^2``. With
``normalize_decoder=True`` (the paper), decoder rows are rescaled to unit norm before every
step and the decoder gradient loses its component parallel to each row. Two differences from
the authors' loop remain or need arguments of :func:`saetools.train_sae`: the sae-lens trainer
clips the gradient norm at 1 (the authors: off), "dead" means no firing for
``dead_feature_window`` steps (the authors: 5; pass ``dead_feature_window=5``), and Adam's
``beta2`` is 0.999 unless ``adam_betas=(0.9, 0.99)`` (the authors').

The selection depends on the decoder only through ``a_i ||W_dec[i]||``, which is unchanged
when a latent's encoder column is scaled by ``c`` and its decoder row by ``1/c``. So folding
decoder norms (``fold_W_dec_norm``, done when saving) and sae-lens's
``expected_average_only_in`` scaling fold leave the SAE's function unchanged. Covariance
whitening cannot be folded (the target norm lives in the whitened space) and is refused.

See ``docs/lee2025_top_afa.md`` for the method and where saetools differs from the authors' code.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
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
from sae_lens.saes.topk_sae import calculate_topk_aux_acts
from torch import Tensor

from saetools.sae_lens_compat import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from saetools.saes.decoder_norm import project_row_grad

__all__ = [
    "ARCHITECTURE",
    "LAST_PREFIX_SENTINEL",
    "TopAFASAE",
    "TopAFASAEConfig",
    "TopAFATrainingSAE",
    "TopAFATrainingSAEConfig",
    "topafa_mask",
]

ARCHITECTURE = "topafa"

LAST_PREFIX_SENTINEL = 1e8
"""Value that replaces the *squared* norm of the all-latents prefix (step 5), as in the authors'
code (their ``cumsum`` of squared scores ends in ``1e8`` before the square root)."""

_MIN_SEARCH = 32  # smallest prefix ranked by topafa_mask


def topafa_mask(
    acts: Float[Tensor, "*batch d_sae"],
    decoder_norms: Float[Tensor, " d_sae"],
    target: Float[Tensor, "*batch"],
    *,
    start_k: int | None = None,
) -> Bool[Tensor, "*batch d_sae"]:
    """Which latents top-AFA keeps (steps 4-6 of the module docstring), for a batch at once.

    Args:
        acts: non-negative pre-activations ``a = ReLU(x_c @ W_enc)``.
        decoder_norms: ``||W_dec[i]||`` per latent (ones for unit-norm rows).
        target: the AFA target ``||x_c||`` per token.
        start_k: length of the first ranked prefix (performance only; the result does not
            depend on it). Default: 32, or the smallest power of two >= it.

    Returns:
        Boolean mask, ``True`` for the ``k`` latents kept in each token; ``mask.sum(-1)`` is
        the per-token ``k``.
    """
    if acts.shape[:-1] != target.shape:
        raise ValueError(f"target must have shape {tuple(acts.shape[:-1])} (one norm per token), "
                         f"got {tuple(target.shape)}")
    h = acts.shape[-1]
    if decoder_norms.shape != (h,):
        raise ValueError(f"decoder_norms must have shape ({h},), got {tuple(decoder_norms.shape)}")
    with torch.no_grad():
        scores = (acts.detach().reshape(-1, h) * decoder_norms.detach()).square()
        t = target.detach().reshape(-1).to(scores.dtype)
        n = scores.shape[0]
        mask = torch.zeros(n, h, dtype=torch.bool, device=scores.device)
        rows: Tensor | None = None  # None: all rows still open (avoids a copy of the scores)
        k_len = min(h, max(_MIN_SEARCH, 1 << max(0, int(start_k or 0) - 1).bit_length()))
        while n:
            s, tr = (scores, t) if rows is None else (scores[rows], t[rows])
            vals, idx = s.topk(k_len, dim=-1, sorted=True)
            cum = vals.cumsum(-1)
            if k_len == h:
                cum[:, -1] = LAST_PREFIX_SENTINEL
            cum.sqrt_()
            if k_len == h:
                done = torch.ones(cum.shape[0], dtype=torch.bool, device=cum.device)
            else:  # c_m is non-decreasing: once c_K >= t the argmin lies in the prefix
                done = cum[:, -1] >= tr
            k = (cum - tr[:, None]).abs().argmin(-1) + 1
            keep = torch.arange(k_len, device=k.device) < k[:, None]
            if rows is None and bool(done.all()):
                mask.scatter_(-1, idx, keep)
                break
            open_rows = torch.arange(n, device=scores.device) if rows is None else rows
            block = torch.zeros(int(done.sum()), h, dtype=torch.bool, device=scores.device)
            mask[open_rows[done]] = block.scatter_(-1, idx[done], keep[done])
            rows = open_rows[~done]
            n = rows.numel()
            k_len = min(h, 4 * k_len)
    return mask.reshape(acts.shape)


def _check_normalisation(cfg) -> None:
    if cfg.normalize_activations == "covariance_whitening":
        raise ValueError("topafa does not support normalize_activations='covariance_whitening': the AFA "
                         "target is a norm in the whitened space, which cannot be folded into the weights; "
                         "use 'none', 'expected_average_only_in' or 'layer_norm'")
    if not cfg.apply_b_dec_to_input:
        raise ValueError("topafa centres its input by b_dec (x_c = x - b_dec is the AFA target): "
                         "apply_b_dec_to_input must be True")


@dataclass
class TopAFASAEConfig(SAEConfig):
    """Inference config of a top-AFA SAE (no extra fields: the per-token ``k`` is chosen by AFA).

    ``normalize_activations="layer_norm"`` is the paper's per-token standardisation
    (``input_unit_norm=True``); ``"none"`` runs on raw activations.
    """

    # sae-lens's ``from_dict`` builds the config with ``metadata`` as a dict and converts it
    # afterwards, so the dataclass fields are not checked against their annotations under pytest.
    __no_type_check__ = True

    def __post_init__(self):
        super().__post_init__()
        _check_normalisation(self)

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


@dataclass
class TopAFATrainingSAEConfig(TrainingSAEConfig):
    """Training config of a top-AFA SAE (defaults: the authors' code).

    Per-token standardisation is sae-lens's ``normalize_activations="layer_norm"`` (the
    paper's setting in all its runs); leave it at ``"none"`` (or ``"expected_average_only_in"``)
    to train on raw activations, the variant ``docs/lee2025_top_afa.md`` explains.
    """

    # sae-lens's ``from_dict`` builds the config with ``metadata`` as a dict and converts it
    # afterwards, so the dataclass fields are not checked against their annotations under pytest.
    __no_type_check__ = True

    afa_coefficient: float = 1 / 32
    """``lambda_AFA``, weight of ``mean_batch (||f~|| - T)^2`` (paper sweep: 1/128 .. 1/16)."""
    afa_warm_up_steps: int = 0
    """Linear warm-up of ``lambda_AFA`` (sae-lens coefficient scheduler)."""
    afa_loss_target: Literal["input", "centred"] = "input"
    """``T`` in the AFA loss: ``||x_n||`` (the authors' code) or ``||x_n - b_dec||`` (the selection's target)."""
    aux_k: int = 512
    """Dead latents used by the AuxK loss (paper ``top_k_aux``)."""
    aux_coefficient: float = 1 / 32
    """Weight of the AuxK loss (paper ``aux_penalty``)."""
    aux_detach: bool = False
    """Detach the AuxK target ``x_n - x_hat_n`` (as sae-lens's TopK does), so that AuxK trains only
    the dead latents. Off by default, as in the authors' code: the gradient also flows through
    ``x_hat_n``, and AuxK pulls the main reconstruction towards the dead latents' prediction."""
    normalize_decoder: bool = True
    """Unit-norm decoder rows before each step, and decoder gradients projected onto the rows' tangent space."""
    decoder_init_norm: float | None = 1.0
    """Initial decoder row norm (``W_enc`` starts as ``W_dec^T``); unit rows as in the paper."""

    def __post_init__(self):
        super().__post_init__()
        _check_normalisation(self)
        if self.afa_coefficient < 0 or self.aux_coefficient < 0:
            raise ValueError("TopAFATrainingSAEConfig.afa_coefficient and aux_coefficient must be >= 0")
        if self.aux_k <= 0:
            raise ValueError(f"TopAFATrainingSAEConfig.aux_k must be positive, got {self.aux_k}")
        if self.afa_loss_target not in ("input", "centred"):
            raise ValueError(f"TopAFATrainingSAEConfig.afa_loss_target must be 'input' or 'centred', "
                             f"got {self.afa_loss_target!r}")

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def get_inference_config_class(self) -> type[SAEConfig]:
        return TopAFASAEConfig


class _TopAFAMixin:
    """Encoding and decoding shared by the inference and training classes."""

    _k_hint: int = 0  # largest k of the previous batch: where topafa_mask starts ranking

    def decoder_norms(self) -> Tensor:
        """``||W_dec[i]||`` per latent (detached)."""
        return self.W_dec.detach().norm(dim=-1)

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(f, hidden_pre, x_c)``: kept latents, pre-ReLU pre-activations, centred input."""
        sae_in = self.process_sae_in(x)  # x_c = normalised input - b_dec
        hidden_pre = self.hook_sae_acts_pre(sae_in @ self.W_enc)
        acts = hidden_pre.relu()
        mask = topafa_mask(acts, self.decoder_norms(), sae_in.detach().norm(dim=-1), start_k=self._k_hint)
        self._k_hint = int(mask.sum(-1).max()) if mask.numel() else 0
        return self.hook_sae_acts_post(acts * mask), hidden_pre, sae_in

    def encode(self, x: Tensor) -> Tensor:
        """Latents kept by top-AFA (the module docstring's steps 1-7, before decoding)."""
        return self._encode(x)[0]

    def decode(self, feature_acts: Tensor) -> Tensor:
        """``f @ W_dec + b_dec``, then the SAE's output de-normalisation and head reshaping."""
        sae_out_pre = self.hook_sae_recons(feature_acts @ self.W_dec + self.b_dec)
        sae_out_pre = self.run_time_activation_norm_fn_out(sae_out_pre)
        return self.reshape_fn_out(sae_out_pre, self.d_head)

    @torch.no_grad()
    def fold_activation_whitening(self, mean, whitening_matrix, unwhitening_matrix) -> None:
        raise NotImplementedError("a whitening cannot be folded into a top-AFA SAE: it changes the AFA target "
                                  "||x - b_dec|| and hence which latents are kept")


class TopAFASAE(_TopAFAMixin, SAE[TopAFASAEConfig]):
    """Inference top-AFA SAE: parameters ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec``."""

    def __init__(self, cfg: TopAFASAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)


class TopAFATrainingSAE(_TopAFAMixin, TrainingSAE[TopAFATrainingSAEConfig]):
    """Training top-AFA SAE for sae-lens's ``SAETrainer`` (loss: the module docstring).

    ``training_forward_pass`` returns ``losses`` with ``mse_loss``, ``afa_loss`` (already
    weighted by ``lambda_AFA``) and ``auxiliary_reconstruction_loss`` (weighted).
    """

    def __init__(self, cfg: TopAFATrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)

    def encode_with_hidden_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f, hidden_pre, _ = self._encode(x)
        return f, hidden_pre

    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {"afa": TrainCoefficientConfig(value=self.cfg.afa_coefficient,
                                              warm_up_steps=self.cfg.afa_warm_up_steps)}

    def _w_dec(self) -> Tensor:
        return project_row_grad(self.W_dec) if self.cfg.normalize_decoder else self.W_dec

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        if self.cfg.normalize_decoder:
            with torch.no_grad():
                self.W_dec.data /= self.W_dec.data.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        f, hidden_pre, x_c = self._encode(step_input.sae_in)
        recon_n = self.hook_sae_recons(f @ self._w_dec() + self.b_dec)
        sae_out = self.run_time_activation_norm_fn_out(recon_n)
        x_n = (x_c + self.b_dec).detach()  # the input in the SAE's normalised space
        mse_loss = (recon_n - x_n).pow(2).mean()
        aux = self.calculate_aux_loss(replace(step_input, sae_in=x_n), f, hidden_pre, recon_n)
        return TrainStepOutput(
            sae_in=step_input.sae_in, sae_out=sae_out, feature_acts=f, hidden_pre=hidden_pre,
            loss=mse_loss + sum(aux.values()), losses={"mse_loss": mse_loss, **aux},
            metrics={"topafa_mean_k": (f != 0).sum(-1).float().mean().detach()},
        )

    def calculate_aux_loss(self, step_input: TrainStepInput, feature_acts: Tensor, hidden_pre: Tensor,
                           sae_out: Tensor) -> dict[str, Tensor]:
        """AFA and AuxK losses; ``step_input.sae_in`` and ``sae_out`` in the normalised space ``x_n``."""
        x_n = step_input.sae_in
        w_dec = self._w_dec()
        code_norm = (feature_acts * w_dec.norm(dim=-1)).norm(dim=-1)
        target = x_n if self.cfg.afa_loss_target == "input" else x_n - self.b_dec.detach()
        afa = step_input.coefficients["afa"] * (code_norm - target.norm(dim=-1)).pow(2).mean()
        dead = step_input.dead_neuron_mask
        if dead is None or (n_dead := int(dead.sum())) == 0:
            auxk = sae_out.new_zeros(())
        else:
            residual = x_n - sae_out
            if self.cfg.aux_detach:
                residual = residual.detach()
            aux_acts = calculate_topk_aux_acts(min(self.cfg.aux_k, n_dead), hidden_pre.relu(), dead)
            auxk = self.cfg.aux_coefficient * (aux_acts @ w_dec - residual).pow(2).mean()
        return {"afa_loss": afa, "auxiliary_reconstruction_loss": auxk}

    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        """Fold the decoder norms (unit rows on disk; the SAE's function is unchanged)."""
        super().process_state_dict_for_saving_inference(state_dict)
        norms = state_dict["W_dec"].norm(dim=-1, keepdim=True).clamp(min=1e-8)
        state_dict["W_dec"] = state_dict["W_dec"] / norms
        state_dict["W_enc"] = state_dict["W_enc"] * norms.T


if ARCHITECTURE not in SAE_CLASS_REGISTRY:  # idempotent under importlib.reload
    register_sae_class(ARCHITECTURE, TopAFASAE, TopAFASAEConfig)
if ARCHITECTURE not in SAE_TRAINING_CLASS_REGISTRY:
    register_sae_training_class(ARCHITECTURE, TopAFATrainingSAE, TopAFATrainingSAEConfig)
