"""Hook-name helpers and small, pure hook-function factories.

Hooks are data: ``(hook_name, fn)`` pairs. Apply them only through scopes that clean up in
``finally`` -- ``model.hooks(...)``, ``model.run_with_hooks(...)`` or :func:`scoped_hooks` --
so that no hook survives an exception.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = [
    "HookNameError",
    "check_heads",
    "check_hook_names",
    "attached_hook_count",
    "scoped_hooks",
    "replace_heads_hook",
    "capture_hook",
]

Hook = tuple[str, Callable]


class HookNameError(KeyError):
    """A hook name that the model does not have."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def check_heads(model, heads: Sequence[tuple[int, int]]) -> None:
    """Raise ``ValueError`` naming every ``(layer, head)`` the model does not have."""
    bad = [(l, h) for l, h in heads if not (0 <= l < model.cfg.n_layers and 0 <= h < model.cfg.n_heads)]
    if bad:
        raise ValueError(f"heads {bad} do not exist: the model has {model.cfg.n_layers} layers x "
                         f"{model.cfg.n_heads} heads (layer and head indices start at 0)")


def check_hook_names(model, names: Sequence[str]) -> None:
    """Raise :class:`HookNameError` naming unknown hooks and the nearest valid ones."""
    valid = model.hook_dict
    for name in names:
        if name not in valid:
            near = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
            raise HookNameError(
                f"model has no hook point {name!r}; nearest valid names: {near or 'none'} "
                f"(see model.hook_dict for all {len(valid)})"
            )


def attached_hook_count(model) -> int:
    """Number of forward/backward hooks currently attached to the model's hook points."""
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values())


@contextmanager
def scoped_hooks(model, fwd_hooks: Sequence[Hook]) -> Iterator[None]:
    """Attach ``fwd_hooks`` for the duration of the block; always removed, even on error."""
    check_hook_names(model, [n for n, _ in fwd_hooks])
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        yield


def replace_heads_hook(heads: Sequence[int], replacement: Tensor | None) -> Callable:
    """Hook for ``attn.hook_z`` / ``hook_q|k|v`` replacing the given heads' activations.

    Args:
        heads: head indices to replace.
        replacement: a tensor broadcastable to the activation ``[batch pos head d_head]``
            (e.g. per-prompt means); ``None`` means zero ablation.
    """
    idx = torch.as_tensor(list(heads), dtype=torch.long)

    def hook(act: Tensor, hook) -> Tensor:
        act = act.clone()
        i = idx.to(act.device)
        if replacement is None:
            act[:, :, i] = 0.0
        else:
            rep = replacement.to(act.device, act.dtype)
            act[:, :, i] = rep.expand_as(act)[:, :, i]
        return act

    return hook


def capture_hook(store: dict, key: str | None = None, detach: bool = True) -> Callable:
    """Hook that stores its activation in ``store[key or hook.name]`` and returns nothing."""

    def hook(act: Tensor, hook) -> None:
        store[key or hook.name] = act.detach() if detach else act

    return hook
