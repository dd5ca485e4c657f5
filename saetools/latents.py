"""Data for latent dashboards: top activating contexts, activation histograms and the tokens a
latent's decoder direction promotes or suppresses (its direct logit effect, ``W_dec[j] @ W_U``,
as in Bricken et al. 2023 "Towards Monosemanticity" feature dashboards).

The widgets in :mod:`saetools.widgets.dashboard` take a :class:`LatentData` and never a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from saetools.splicing import latent_hook_name, splice

__all__ = ["Context", "LatentData", "decoder_logit_effects", "gather_latent_data"]


@dataclass(frozen=True)
class Context:
    """A window of tokens around one activation of a latent."""

    tokens: list[str]
    """The window's tokens as strings."""
    acts: list[float]
    """The latent's activation at each token of the window."""
    max_act: float
    """The activation at the centre token (the one this context was chosen for)."""
    row: int
    """Prompt index in the evaluated tokens."""
    pos: int
    """Position of the centre token."""


@dataclass
class LatentData:
    """Everything a latent dashboard shows, for some latents of one SAE."""

    sae_name: str
    hook_name: str
    latents: list[int]
    frequency: dict[int, float]
    """Fraction of evaluated tokens where the latent fires."""
    contexts: dict[int, list[Context]]
    """Top activating contexts, strongest first."""
    histogram: dict[int, tuple[list[int], list[float]]]
    """``(counts, bin_edges)`` of the latent's non-zero activations."""
    promoted: dict[int, list[tuple[str, float]]] = field(default_factory=dict)
    """Tokens whose logits the decoder direction raises most, with the logit effect."""
    suppressed: dict[int, list[tuple[str, float]]] = field(default_factory=dict)
    """Tokens whose logits the decoder direction lowers most."""


@torch.no_grad()
def decoder_logit_effects(model, sae) -> Tensor | None:
    """``[d_sae, d_vocab]`` direct logit effect of each decoder direction, or ``None`` if the
    hook is not the residual stream or ``attn.hook_z`` (no direct path to the unembedding)."""
    W_dec = sae.W_dec.to(model.W_U)
    if sae.cfg.d_in == model.cfg.d_model:
        return W_dec @ model.W_U
    name = sae.cfg.metadata.hook_name
    if name.endswith("attn.hook_z"):
        layer = int(name.split(".")[1])
        W_O = model.W_O[layer]  # [head, d_head, d_model]
        out = torch.einsum("sjh,jhm->sm", W_dec.reshape(-1, *W_O.shape[:2]), W_O)
        return out @ model.W_U
    return None


def _window(str_toks: list[str], acts: Tensor, pos: int, before: int, after: int):
    lo, hi = max(0, pos - before), min(len(str_toks), pos + after + 1)
    return str_toks[lo:hi], acts[lo:hi].tolist()


@torch.no_grad()
def gather_latent_data(
    model,
    sae,
    tokens: Int[Tensor, "batch pos"],
    *,
    latents: Sequence[int] | None = None,
    n_latents: int = 16,
    name: str | None = None,
    k_contexts: int = 8,
    window: tuple[int, int] = (10, 3),
    n_logit_tokens: int = 8,
    bins: int = 30,
    batch_size: int = 32,
) -> LatentData:
    """Gather dashboard data for ``latents`` of ``sae`` over ``tokens``.

    Args:
        model: a ``HookedSAETransformer`` with a tokenizer.
        sae: the SAE (spliced with the error term, so later layers see the clean run).
        tokens: prompts ``[batch, pos]``.
        latents: which latents; default the ``n_latents`` most frequently firing ones.
        name: label for the SAE (default its architecture and hook).
        k_contexts: top activating contexts per latent.
        window: tokens shown before and after the activating token.
        n_logit_tokens: promoted / suppressed tokens per latent.
        bins: histogram bins.
        batch_size: prompts per forward pass.
    """
    hook = latent_hook_name(sae)
    chunks = []
    with splice(model, sae, use_error_term=True):
        for i in range(0, tokens.shape[0], batch_size):
            _, cache = model.run_with_cache(tokens[i : i + batch_size].to(model.cfg.device), names_filter=hook)
            chunks.append(cache[hook].float().cpu())
    acts = torch.cat(chunks)  # [batch, pos, d_sae]
    freq = (acts != 0).float().mean((0, 1))
    if latents is None:
        latents = freq.argsort(descending=True)[:n_latents].tolist()
    latents = [int(j) for j in latents]
    effects = decoder_logit_effects(model, sae)
    data = LatentData(sae_name=name or f"{sae.cfg.architecture()}@{sae.cfg.metadata.hook_name}",
                      hook_name=sae.cfg.metadata.hook_name, latents=latents,
                      frequency={j: freq[j].item() for j in latents}, contexts={}, histogram={})
    str_rows: dict[int, list[str]] = {}
    for j in latents:
        a = acts[..., j]
        top = a.flatten().topk(min(k_contexts, a.numel()))
        ctxs = []
        for v, flat in zip(top.values.tolist(), top.indices.tolist()):
            if v <= 0:
                break
            row, pos = divmod(flat, a.shape[1])
            if row not in str_rows:
                str_rows[row] = model.to_str_tokens(tokens[row])
            toks, vals = _window(str_rows[row], a[row], pos, *window)
            ctxs.append(Context(tokens=toks, acts=vals, max_act=v, row=row, pos=pos))
        data.contexts[j] = ctxs
        nz = a[a != 0].numpy()
        counts, edges = np.histogram(nz, bins=bins) if nz.size else (np.zeros(bins, int), np.linspace(0, 1, bins + 1))
        data.histogram[j] = (counts.tolist(), edges.tolist())
        if effects is not None:
            eff = effects[j].float().cpu()
            up, down = eff.topk(n_logit_tokens), (-eff).topk(n_logit_tokens)
            tok = model.tokenizer
            data.promoted[j] = [(tok.decode([int(t)]), float(v)) for v, t in zip(up.values, up.indices)]
            data.suppressed[j] = [(tok.decode([int(t)]), -float(v)) for v, t in zip(down.values, down.indices)]
    return data
