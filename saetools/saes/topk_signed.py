"""The no-ReLU TopK SAE of Makelov, Lange & Nanda (2024) as a sae-lens architecture.

Their TopK SAEs keep the ``k`` largest raw pre-activations *even when negative* (sae-lens's
``topk`` applies a ReLU to them), have no encoder bias besides the pre-encoder ``b_dec``
subtraction, no auxiliary dead-latent loss (dead latents are resampled instead) and do not
renormalise the decoder during training. ``topk_signed`` is sae-lens's TopK with exactly that
activation, ``rescale_acts_by_decoder_norm=False``, ``aux_loss_coefficient=0`` and ``b_enc``
frozen at zero (``train_b_enc=True`` trains it); a latent is "active" when it is selected (its
value is non-zero). Registered with sae-lens on import, so it
trains with the sae-lens trainer, saves, loads with ``SAE.load_from_disk`` and splices like a
built-in SAE.

See ``docs/makelov2024_supervised_dictionaries.md`` for the method and where saetools differs from
the authors' code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from sae_lens import register_sae_class, register_sae_training_class
from sae_lens.saes.sae import SAEConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
from torch import nn

from saetools.sae_lens_compat import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

__all__ = ["ARCHITECTURE", "SignedTopK", "SignedTopKSAE", "SignedTopKSAEConfig", "SignedTopKTrainingSAE",
           "SignedTopKTrainingSAEConfig"]

ARCHITECTURE = "topk_signed"


class SignedTopK(nn.Module):
    """Keep the ``k`` largest pre-activations per row with their sign; zero the rest."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, indices = torch.topk(x, k=self.k, dim=-1, sorted=False)
        return torch.zeros_like(x).scatter(-1, indices, values)  # out of place: torch.vmap maps it


@dataclass
class SignedTopKSAEConfig(TopKSAEConfig):
    """Inference config of ``topk_signed``."""

    # sae-lens's ``from_dict`` builds the config with ``metadata`` as a dict and converts it
    # afterwards, so the dataclass fields are not checked against their annotations under pytest.
    __no_type_check__ = True

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


class SignedTopKSAE(TopKSAE):
    """Inference SAE: sae-lens's TopK SAE with :class:`SignedTopK` as activation."""

    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return SignedTopK(self.cfg.k)


@dataclass
class SignedTopKTrainingSAEConfig(TopKTrainingSAEConfig):
    """Training config of ``topk_signed`` (no decoder-norm rescaling, as in the paper)."""

    # sae-lens's ``from_dict`` builds the config with ``metadata`` as a dict and converts it
    # afterwards, so the dataclass fields are not checked against their annotations under pytest.
    __no_type_check__ = True

    rescale_acts_by_decoder_norm: bool = False
    """The paper does not renormalise the decoder."""
    aux_loss_coefficient: float = 0.0
    """The paper resamples dead latents instead of an AuxK loss (set > 0 for sae-lens's AuxK)."""
    train_b_enc: bool = False
    """The paper's TopK has no encoder bias: ``b_enc`` stays zero unless this is True."""

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def get_inference_config_class(self) -> type[SAEConfig]:
        return SignedTopKSAEConfig


class SignedTopKTrainingSAE(TopKTrainingSAE):
    """Training SAE: sae-lens's TopK training SAE with :class:`SignedTopK` as activation."""

    def initialize_weights(self) -> None:
        super().initialize_weights()
        if not getattr(self.cfg, "train_b_enc", False):
            self.b_enc.requires_grad_(False)

    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return SignedTopK(self.cfg.k)


if ARCHITECTURE not in SAE_CLASS_REGISTRY:  # idempotent under importlib.reload
    register_sae_class(ARCHITECTURE, SignedTopKSAE, SignedTopKSAEConfig)
if ARCHITECTURE not in SAE_TRAINING_CLASS_REGISTRY:
    register_sae_training_class(ARCHITECTURE, SignedTopKTrainingSAE, SignedTopKTrainingSAEConfig)
