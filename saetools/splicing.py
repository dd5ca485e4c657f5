"""Scoped splicing of SAEs into a ``HookedSAETransformer``, and latent interventions.

:func:`splice` is the one way saetools attaches SAEs: it validates every SAE against the model
(hook name, input width) before touching it, and on exit -- normal or by exception -- the
model has exactly the SAEs, hook-point modules and hooks it had before (the very same objects,
not re-created copies, unlike sae-lens's ``model.saes``).

Two things sae-lens's ``HookedSAETransformer`` leaves out:

* one uniform ``use_error_term`` for every run mode: inside ``splice`` the plain forward,
  ``run_with_cache`` and ``run_with_hooks`` all see the same SAEs and error terms;
* ``error_grad=True``: the error node ``x - x_hat(x)`` is computed *with* gradient (sae-lens
  computes it under ``torch.no_grad``), so gradients flow through it to upstream components,
  as in the error nodes of sparse feature circuits (Marks et al. 2024). With no intervention,
  the gradient of the output with respect to the SAE input is then exactly the clean one.

Latent interventions are pure hook functions on ``<hook>.hook_sae_acts_post`` (the SAE's
latents after the activation function): :func:`ablate_latents`, :func:`clamp_latents`,
:func:`steer_latents` and :func:`patch_latents`. With the error term, the error is computed
from the *un-intervened* latents, so an intervention changes the output by exactly
``W_dec^T (f' - f)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from jaxtyping import Float
from torch import Tensor

from saetools.hooks import check_hook_names
from saetools.sae_lens_compat import SAEWrapper, disable_sae_hooks, get_deep_attr, set_deep_attr

__all__ = [
    "SAEShapeError",
    "ablate_latents",
    "check_sae_fits",
    "clamp_latents",
    "hook_width",
    "latent_acts",
    "latent_hook_name",
    "patch_latents",
    "splice",
    "steer_latents",
]

Positions = int | Sequence[int] | slice | Tensor | None


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


_MODEL_ALIASES = {"gpt2-small": "gpt2"}


def _check_model_and_saes(model, saes: list) -> None:
    """Type, duplicate and provenance checks before anything is attached."""
    from sae_lens import HookedSAETransformer

    if not isinstance(model, HookedSAETransformer):
        raise TypeError(f"splice needs a sae-lens HookedSAETransformer, got {type(model).__name__}; load the "
                        "model with saetools.load_model (or HookedSAETransformer.from_pretrained)")
    for sae in saes:
        if not (hasattr(sae, "cfg") and hasattr(sae, "encode") and hasattr(sae, "decode")):
            raise TypeError(f"splice takes sae-lens SAEs, got {type(sae).__name__} ({sae!r:.60}); load one with "
                            "saetools.load_bundled_sae, saetools.saes.load_sae or sae_lens.SAE.from_pretrained")
    hooks = [sae.cfg.metadata.hook_name for sae in saes]
    twice = sorted({h for h in hooks if hooks.count(h) > 1 and h is not None})
    if twice:
        raise ValueError(f"several SAEs read the same hook {twice}; only one SAE per hook can be spliced at a "
                         "time: splice them one after another (e.g. in a loop over a width sweep)")
    theirs = {_canonical(sae.cfg.metadata.model_name) for sae in saes} - {None}
    ours = _canonical(model.cfg.model_name)
    for other in theirs - {ours}:
        warnings.warn(f"splicing an SAE trained on {other!r} into {model.cfg.model_name!r}: its latents may "
                      "mean nothing here", UserWarning, stacklevel=4)


def _canonical(name: str | None) -> str | None:
    return None if name is None else _MODEL_ALIASES.get(name, name)


def same_model(a: str | None, b: str | None) -> bool:
    """Whether two model names are one model (``gpt2`` and ``gpt2-small`` are)."""
    return _canonical(a) == _canonical(b)


def check_sae_fits(model, sae) -> None:
    """Raise a clear error unless ``sae`` reads a hook of ``model`` at the right width."""
    name = sae.cfg.metadata.hook_name
    if name is None:
        raise ValueError("the SAE has no cfg.metadata.hook_name; set it to the hook it reads")
    if name.endswith("hook_z") and not getattr(sae, "hook_z_reshaping_mode", True):
        raise SAEShapeError(f"the SAE reads {name!r} (n_heads x d_head per position) but does not reshape it: "
                            "create it with reshape_activations='hook_z' in its config, or call "
                            "sae.turn_on_forward_pass_hook_z_reshaping() before splicing")
    spliced = name in model._acts_to_saes  # nesting: measure at the spliced SAE's input
    check_hook_names(model, [f"{name}.hook_sae_input" if spliced else name])
    width = hook_width(model, f"{name}.hook_sae_input" if spliced else name)
    if width != sae.cfg.d_in:
        raise SAEShapeError(
            f"SAE for {name!r} has d_in={sae.cfg.d_in}, but the activation there has width {width}; "
            "was it trained on another model or hook?"
        )


class _GradErrorWrapper(SAEWrapper):
    """sae-lens's splice wrapper, but the error term keeps its gradient (SAEs only)."""

    def forward(self, original_output: Tensor) -> Tensor:
        sae_out = self.sae.decode(self.sae.encode(original_output))
        with disable_sae_hooks(self.sae):  # the error is measured against the un-intervened SAE
            clean = self.sae.decode(self.sae.encode(original_output))
        error = original_output - clean
        mask = self._token_mask
        if mask is not None:
            mask = mask.reshape(*mask.shape, *([1] * (original_output.dim() - mask.dim())))
            error = torch.where(mask, torch.zeros_like(error), error)
        sae_out = sae_out + self.hook_sae_error(error)
        if mask is not None:
            sae_out = torch.where(mask, original_output, sae_out)
        return self.hook_sae_output(sae_out)


def _attach_grad_error(model, sae, exclude_special_tokens) -> None:
    name = sae.cfg.metadata.hook_name
    if (sae.cfg.metadata.hook_name_out or name) != name:
        raise ValueError("error_grad=True supports SAEs (input hook == output hook), not transcoders")
    wrapper = _GradErrorWrapper(sae, use_error_term=True, exclude_special_tokens=exclude_special_tokens)
    model._acts_to_saes[name] = wrapper
    set_deep_attr(model, name, wrapper)
    model.setup()


def _resolve(model, interventions) -> list[tuple[str, Callable]]:
    hooks = [(n if isinstance(n, str) else latent_hook_name(n), fn) for n, fn in interventions]
    check_hook_names(model, [n for n, _ in hooks])
    return hooks


@contextmanager
def splice(
    model,
    saes,
    *,
    use_error_term: bool = False,
    error_grad: bool = False,
    interventions: Sequence[tuple] = (),
    exclude_special_tokens: bool | list[int] = False,
) -> Iterator:
    """Attach ``saes`` (and optional latent interventions) for the duration of the block.

    Args:
        model: a ``HookedSAETransformer``.
        saes: one sae-lens SAE or a list of them (each at its ``cfg.metadata.hook_name``).
        use_error_term: add the SAE's reconstruction error back, so the model's outputs are
            unchanged and interventions on latents are measured against the exact clean run.
        error_grad: compute the error term with gradient (needs ``use_error_term=True``), so
            backpropagation reaches the error node (``<hook>.hook_sae_error``) and upstream.
        interventions: ``(sae_or_hook_name, hook_fn)`` pairs; an SAE stands for its
            ``hook_sae_acts_post``. They apply to every run mode inside the block.
        exclude_special_tokens: bypass the SAEs at special-token positions (sae-lens semantics).

    Yields:
        The model, with the SAEs attached.

    Raises:
        SAEShapeError / HookNameError: an SAE that does not fit the model (nothing attached).
        TypeError: a model that is not a ``HookedSAETransformer``, or something that is not an SAE.
        ValueError: ``error_grad`` without ``use_error_term``; two SAEs for one hook.

    Warns (``UserWarning``) when an SAE's metadata names another model (``gpt2`` and
    ``gpt2-small`` are the same model).
    """
    if error_grad and not use_error_term:
        raise ValueError("error_grad=True needs use_error_term=True (there is no error node otherwise)")
    saes = list(saes) if isinstance(saes, Sequence) and not isinstance(saes, str) else [saes]
    _check_model_and_saes(model, saes)
    for sae in saes:
        check_sae_fits(model, sae)
    before = dict(model._acts_to_saes)
    before_out = dict(model._transcoder_output_hooks)
    paths = {p for s in saes for p in (s.cfg.metadata.hook_name, s.cfg.metadata.hook_name_out) if p}
    modules = {p: get_deep_attr(model, p) for p in paths}
    in_hooks = {p: list(getattr(m, "fwd_hooks", [])) for p, m in modules.items()}
    try:
        for sae in saes:
            if error_grad:
                _attach_grad_error(model, sae, exclude_special_tokens)
            else:
                model.add_sae(sae, use_error_term=use_error_term,
                              exclude_special_tokens=exclude_special_tokens)
        hooks = _resolve(model, interventions)
        with model.hooks(fwd_hooks=hooks):
            yield model
    finally:
        for path, module in modules.items():  # the exact objects, with their own hooks
            for handle in getattr(module, "fwd_hooks", []):
                if handle not in in_hooks[path]:  # e.g. a transcoder's input-capture hook
                    handle.hook.remove()
            if hasattr(module, "fwd_hooks"):
                module.fwd_hooks = in_hooks[path]
            set_deep_attr(model, path, module)
        model._acts_to_saes.clear()
        model._acts_to_saes.update(before)
        model._transcoder_output_hooks.clear()
        model._transcoder_output_hooks.update(before_out)
        model.setup()


def latent_hook_name(sae) -> str:
    """Name of the hook on ``sae``'s latents when spliced: ``<hook>.hook_sae_acts_post``."""
    return f"{sae.cfg.metadata.hook_name}.hook_sae_acts_post"


@torch.no_grad()
def latent_acts(model, sae, tokens, *, use_error_term: bool = True) -> Float[Tensor, "batch pos d_sae"]:
    """The SAE's latent activations on ``tokens`` (e.g. the source of :func:`patch_latents`)."""
    name = latent_hook_name(sae)
    with splice(model, sae, use_error_term=use_error_term):
        _, cache = model.run_with_cache(tokens, names_filter=name,
                                        stop_at_layer=_stop_layer(sae.cfg.metadata.hook_name))
    return cache[name]


def _stop_layer(hook_name: str) -> int | None:
    parts = hook_name.split(".")
    return int(parts[1]) + 1 if parts[0] == "blocks" else None


def _mask(act: Tensor, latents, positions: Positions) -> Tensor:
    """Boolean mask broadcastable to ``act [batch pos d_sae]``: the entries to intervene on."""
    lat = torch.zeros(act.shape[-1], dtype=torch.bool, device=act.device)
    lat[slice(None) if latents is None else _checked_index(latents, act.shape[-1], "latent")] = True
    if positions is None:
        return lat
    if isinstance(positions, Tensor) and positions.dtype == torch.bool:
        if positions.shape != act.shape[:2]:
            raise ValueError(f"a boolean positions mask must be [batch, pos] = {tuple(act.shape[:2])}, "
                             f"got {tuple(positions.shape)}")
        pos = positions.to(act.device)
    else:
        pos = torch.zeros(act.shape[:2], dtype=torch.bool, device=act.device)
        pos[:, positions if isinstance(positions, slice) else _checked_index(positions, act.shape[1], "position")] = True
    return pos[..., None] & lat


def _checked_index(index, size: int, what: str) -> Tensor:
    """``index`` as a long tensor, or a ``ValueError`` naming the entries outside ``[-size, size)``."""
    idx = torch.as_tensor(index, dtype=torch.long).reshape(-1)
    bad = idx[(idx < -size) | (idx >= size)].tolist()
    if bad:
        raise ValueError(f"{what} indices {bad[:10]} are out of range: there are {size} {what}s "
                         f"(use 0..{size - 1}, or negative indices from the end)")
    return idx


def ablate_latents(latents: Sequence[int] | None = None, *, positions: Positions = None) -> Callable:
    """Hook for ``hook_sae_acts_post`` setting ``latents`` (all if ``None``) to zero."""

    def hook(act: Tensor, hook) -> Tensor:
        return act.masked_fill(_mask(act, latents, positions), 0.0)

    return hook


def clamp_latents(latents: Sequence[int], value: float, *, positions: Positions = None,
                  only_active: bool = False) -> Callable:
    """Hook setting ``latents`` to ``value`` (only where they already fire if ``only_active``)."""

    def hook(act: Tensor, hook) -> Tensor:
        sel = _mask(act, latents, positions)
        if only_active:
            sel = sel & (act != 0)
        return act.masked_fill(sel, value)

    return hook


def steer_latents(latents: Sequence[int], coefficient: float | Sequence[float], *,
                  positions: Positions = None) -> Callable:
    """Hook adding ``coefficient`` to ``latents``: the output moves by ``coefficient * W_dec[latent]``."""

    def hook(act: Tensor, hook) -> Tensor:
        delta = torch.zeros(act.shape[-1], dtype=act.dtype, device=act.device)
        delta[_checked_index(latents, act.shape[-1], "latent")] = torch.as_tensor(coefficient, dtype=act.dtype)
        return torch.where(_mask(act, latents, positions), act + delta, act)

    return hook


def patch_latents(source: Float[Tensor, "batch pos d_sae"], latents: Sequence[int] | None = None, *,
                  positions: Positions = None) -> Callable:
    """Hook replacing ``latents`` (all if ``None``) by their values in ``source``.

    Args:
        source: latent activations from another prompt (:func:`latent_acts`), with the same
            ``[batch, pos]`` shape as the run it patches into (or broadcastable to it).
        latents: which latents to patch.
        positions: which positions to patch.
    """

    def hook(act: Tensor, hook) -> Tensor:
        src = source.to(act.device, act.dtype)
        if src.shape[-1] != act.shape[-1]:
            raise ValueError(f"source has d_sae={src.shape[-1]}, the SAE has {act.shape[-1]}")
        return torch.where(_mask(act, latents, positions), src.expand_as(act), act)

    return hook
