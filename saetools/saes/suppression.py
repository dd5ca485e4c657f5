"""The feature-suppression fix: re-fit the decoder on MSE alone with the activation pattern frozen.

Wright & Sharkey (2024), "Addressing Feature Suppression in SAEs" (docs/shrinkage.md): L1-trained
SAEs shrink their latents; fine-tuning on the reconstruction loss alone, with which latents
fire kept fixed, removes the bias while keeping L0. With the encoder frozen, that fine-tune
is a least-squares problem in the decoder, ``min_{W, b} E||x - W^T f(x) - b||^2``, which we
solve exactly (the optimum an MSE-only fine-tune converges to) instead of by SGD. At the
optimum the residual is orthogonal to the reconstruction, so gamma (either definition,
docs/shrinkage.md) is 1 on the fitting data.
"""

from __future__ import annotations

import copy

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["refit_decoder"]


@torch.no_grad()
def refit_decoder(sae, acts: Float[Tensor, "n d_in"], *, ridge: float = 1e-6, batch_size: int = 8192):
    """A copy of ``sae`` whose ``W_dec`` and ``b_dec`` minimise the MSE with the encoder frozen.

    Args:
        sae: a sae-lens SAE whose decoder is ``f @ W_dec + b_dec`` (every built-in architecture).
        acts: activations to fit on ``[n, d_in]``.
        ridge: Tikhonov term relative to the mean diagonal of ``F^T F`` (keeps dead latents finite).
        batch_size: rows per encoding pass.

    Returns:
        A new SAE (the input is not modified). L0 and the firing pattern are unchanged, since
        the encoder is the same. Note: sae-lens's encoders subtract ``b_dec`` from the input
        when ``apply_b_dec_to_input``; the original ``b_dec`` is folded into the encoder bias
        first so that the pattern stays exactly the same.
    """
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        raise ValueError("this SAE's encoder depends on the decoder norms (rescale_acts_by_decoder_norm); "
                         "save it as an inference SAE first (saetools.saes.save_sae / load_sae)")
    new = copy.deepcopy(sae).eval()
    if getattr(new.cfg, "apply_b_dec_to_input", False):
        _fold_input_bias(new)
    d_sae = new.cfg.d_sae
    gram = torch.zeros(d_sae + 1, d_sae + 1, dtype=torch.float64)
    cross = torch.zeros(d_sae + 1, new.cfg.d_in, dtype=torch.float64)
    for i in range(0, acts.shape[0], batch_size):
        x = acts[i : i + batch_size].to(new.W_dec)
        f = new.encode(x)
        f1 = torch.cat([f, torch.ones_like(f[:, :1])], dim=1).double().cpu()
        gram += f1.T @ f1
        cross += f1.T @ x.double().cpu()
    gram += ridge * gram.diagonal()[:-1].mean().clamp(min=1e-12) * torch.eye(d_sae + 1, dtype=torch.float64)
    sol = torch.linalg.solve(gram, cross)
    new.W_dec.data.copy_(sol[:-1].to(new.W_dec))
    new.b_dec.data.copy_(sol[-1].to(new.b_dec))
    return new


def _fold_input_bias(sae) -> None:
    """Move ``- b_dec @ W`` into the encoder biases and stop subtracting ``b_dec`` from the input."""
    shift_names = [n for n in ("b_enc", "b_gate") if hasattr(sae, n)]
    for name in shift_names:
        getattr(sae, name).data.sub_(sae.b_dec @ sae.W_enc)
    if hasattr(sae, "b_mag"):
        sae.b_mag.data.sub_((sae.b_dec @ sae.W_enc) * sae.r_mag.exp())
    sae.cfg.apply_b_dec_to_input = False
