"""Scoped splicing of SAEs into a ``HookedSAETransformer``.

:func:`splice` is the one way saetools attaches SAEs: it validates every SAE against the model
(hook name, input width) before touching it, and on exit -- normal or by exception -- the
model has exactly the SAEs and hooks it had before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from saetools.hooks import check_hook_names

__all__ = ["SAEShapeError", "splice", "hook_width"]


class SAEShapeError(ValueError):
    """An SAE's input width does not match the activation at its hook."""


@torch.no_grad()
def hook_width(model, hook_name: str) -> int:
    """Width of the activation at ``hook_name`` as an SAE sees it (heads flattened)."""
    check_hook_names(model, [hook_name])
    tokens = torch.zeros((1, 1), dtype=torch.long, device=model.cfg.device)
    _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    act = cache[hook_name]
    return act.shape[-2] * act.shape[-1] if act.ndim == 4 else act.shape[-1]


def _validate(model, sae) -> None:
    name = sae.cfg.metadata.hook_name
    if name is None:
        raise ValueError("the SAE has no cfg.metadata.hook_name; set it to the hook it reads")
    check_hook_names(model, [name])
    width = hook_width(model, name)
    if width != sae.cfg.d_in:
        raise SAEShapeError(
            f"SAE for {name!r} has d_in={sae.cfg.d_in}, but the activation there has width {width}; "
            "was it trained on another model or hook?"
        )


@contextmanager
def splice(model, saes, *, use_error_term: bool = False) -> Iterator:
    """Attach ``saes`` for the duration of the block.

    Args:
        model: a ``HookedSAETransformer``.
        saes: one sae-lens SAE or a list of them (each at its ``cfg.metadata.hook_name``).
        use_error_term: add the SAE's reconstruction error back, so the model's outputs are
            unchanged and interventions on latents are measured against the exact clean run.

    Yields:
        The model, with the SAEs attached.
    """
    saes = list(saes) if isinstance(saes, Sequence) else [saes]
    for sae in saes:
        _validate(model, sae)
    with model.saes(saes=saes, use_error_term=use_error_term):
        yield model
