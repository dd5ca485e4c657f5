"""Downstream cost of each part of the SAE error (Engels et al. 2024 ``downstream_ce.py``).

Splice ``Sae(x) + LinearError(x)`` (the nonlinear error removed) or ``Sae(x) + NonlinearError(x)``
(the linear error removed) into the model at the SAE's hook, on the analysed tokens only, and
measure next-token cross-entropy.

See ``docs/engels2024_dark_matter.md`` for the method and where saetools differs from the authors'
code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm.auto import tqdm

from saetools.diagnostics.dark_matter.regression import LinearFit
from saetools.hooks import check_hook_names

__all__ = ["PARTS", "Part", "decomposition_hook", "splice_ce"]

Part = Literal["sae", "sae+linear", "sae+nonlinear", "all"]
PARTS: tuple[Part, ...] = ("sae", "sae+linear", "sae+nonlinear", "all")


def decomposition_hook(sae, linear: LinearFit, part: Part, mask: Bool[Tensor, "batch pos"]):
    """Hook replacing the activation at the ``mask`` tokens by a part of the decomposition.

    ``"sae"``: ``Sae(x)``; ``"sae+linear"``: ``Sae(x) + LinearError(x)``; ``"sae+nonlinear"``:
    ``Sae(x) + NonlinearError(x) = x - LinearError(x)``; ``"all"``: ``x`` itself (a no-op up to
    float rounding; a check of the splice). Other tokens are untouched. Head activations
    (``hook_z``) are flattened for the SAE and the linear map and reshaped back.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")

    def hook(act: Tensor, hook) -> Tensor:
        m = mask.to(act.device)
        if m.shape != act.shape[:2]:
            raise ValueError(f"mask {tuple(m.shape)} does not match the activation's [batch, pos] "
                             f"{tuple(act.shape[:2])} at {hook.name}")
        x = act[m]
        flat = x.flatten(1)
        if part == "all":
            new = flat
        elif part == "sae+nonlinear":
            new = flat - linear.predict(flat)
        else:
            new = sae.decode(sae.encode(flat.to(sae.W_dec.dtype))).reshape(flat.shape).to(flat)
            if part == "sae+linear":
                new = new + linear.predict(flat)
        out = act.clone()
        out[m] = new.reshape(x.shape).to(act.dtype)
        return out

    return hook


@torch.no_grad()
def splice_ce(model, sae, linear: LinearFit, tokens: Int[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"],
              *, parts: Sequence[Part] = ("sae", "sae+linear", "sae+nonlinear"),
              batch_size: int = 64) -> dict[str, float]:
    """Mean next-token CE with each part spliced in at ``sae.cfg.metadata.hook_name``.

    Each splice is a scoped hook (``model.hooks``): nothing stays attached, even after an
    exception. CE is averaged over the predictions made at positions ``p`` with ``mask[p]``
    and ``mask[p + 1]`` (from a replaced token, of an analysed token).

    Returns:
        ``{"clean": ce, part: ce, ...}`` and ``"delta_" + part`` = CE(part) - CE(clean).
    """
    hook_name = sae.cfg.metadata.hook_name
    check_hook_names(model, [hook_name])
    if mask.shape != tokens.shape:
        raise ValueError(f"mask must have the tokens' shape {tuple(tokens.shape)}, got {tuple(mask.shape)}")
    for p in parts:
        if p not in PARTS:
            raise ValueError(f"parts must be drawn from {PARTS}, got {p!r}")
    if not bool((mask[:, :-1] & mask[:, 1:]).any()):
        raise ValueError("no prediction to score: mask selects no two consecutive tokens")
    sums = {p: 0.0 for p in ("clean", *parts)}
    count = 0
    for i in tqdm(range(0, tokens.shape[0], batch_size), desc="splice CE", leave=False):
        chunk = tokens[i : i + batch_size].to(model.cfg.device)
        m = mask[i : i + batch_size].to(chunk.device)
        pred = m[:, :-1] & m[:, 1:]
        count += int(pred.sum())
        sums["clean"] += model(chunk, return_type="loss", loss_per_token=True)[pred].double().sum().item()
        for p in parts:
            with model.hooks(fwd_hooks=[(hook_name, decomposition_hook(sae, linear, p, m))]):
                ce = model(chunk, return_type="loss", loss_per_token=True)
            sums[p] += ce[pred].double().sum().item()
    out = {p: s / count for p, s in sums.items()}
    out.update({f"delta_{p}": out[p] - out["clean"] for p in parts})
    return out
