"""Gated SAE with the paper-faithful auxiliary loss (Rajamanoharan et al. 2024, arXiv 2404.16014, Eq. 8).

The paper trains the gate path to reconstruct on its own through a *frozen* copy of the
decoder: ``L_aux = ||x - x_hat_frozen(ReLU(pi_gate(x)))||^2`` with stop-gradient ``W_dec`` and
``b_dec``. sae-lens's ``gated`` architecture uses the live decoder there, so the auxiliary
term also pulls the decoder towards reconstructing from the (shrunk) gate activations. This
architecture, ``gated_faithful``, differs from sae-lens's ``gated`` only in that detach; it
trains with the sae-lens trainer and saves as an ordinary ``gated`` inference SAE.

See ``docs/shrinkage.md`` for the method and where saetools differs from the authors' code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sae_lens import register_sae_training_class
from sae_lens.saes.gated_sae import GatedSAEConfig, GatedTrainingSAE, GatedTrainingSAEConfig
from sae_lens.saes.sae import SAEConfig, TrainStepInput

from saetools.sae_lens_compat import SAE_TRAINING_CLASS_REGISTRY

__all__ = ["ARCHITECTURE", "FaithfulGatedTrainingSAE", "FaithfulGatedTrainingSAEConfig"]

ARCHITECTURE = "gated_faithful"


@dataclass
class FaithfulGatedTrainingSAEConfig(GatedTrainingSAEConfig):
    """``GatedTrainingSAEConfig`` whose auxiliary reconstruction uses a frozen decoder."""

    # sae-lens's ``from_dict`` builds the config with ``metadata`` as a dict and converts it
    # afterwards, so the dataclass fields are not checked against their annotations under pytest.
    __no_type_check__ = True

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def get_inference_config_class(self) -> type[SAEConfig]:
        return GatedSAEConfig


class FaithfulGatedTrainingSAE(GatedTrainingSAE):
    """sae-lens's ``GatedTrainingSAE`` with the paper's stop-gradient decoder in ``L_aux``."""

    def calculate_aux_loss(self, step_input: TrainStepInput, feature_acts: torch.Tensor,
                           hidden_pre: torch.Tensor, sae_out: torch.Tensor) -> dict[str, torch.Tensor]:
        sae_in_centered = step_input.sae_in - (self.b_dec * self.cfg.apply_b_dec_to_input)
        pi_gate_act = torch.relu(sae_in_centered @ self.W_enc + self.b_gate)
        # sparsity on the gate path, weighted by decoder norms (= unit-norm decoder in the paper)
        l1_loss = step_input.coefficients["l1"] * torch.sum(
            pi_gate_act * self.W_dec.norm(dim=1), dim=-1).mean()
        via_gate = pi_gate_act @ self.W_dec.detach() + self.b_dec.detach()
        aux = (via_gate - step_input.sae_in).pow(2).sum(dim=-1).mean()
        return {"l1_loss": l1_loss, "auxiliary_reconstruction_loss": aux}


if ARCHITECTURE not in SAE_TRAINING_CLASS_REGISTRY:  # idempotent under importlib.reload
    register_sae_training_class(ARCHITECTURE, FaithfulGatedTrainingSAE, FaithfulGatedTrainingSAEConfig)
