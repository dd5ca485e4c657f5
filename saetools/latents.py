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

__all__ = ["Context", "LatentData", "decoder_logit_effects", "gather_latent_data", "select_latents"]

NEURONPEDIA = "https://neuronpedia.org"
"""Where sae-lens's pretrained SAEs have their latent pages (``<id>/<latent>``)."""


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
    logit_histogram: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)
    """``(counts, bin_edges)`` of the decoder direction's direct logit effect over the vocabulary."""
    neuronpedia_id: str | None = None
    """The SAE's Neuronpedia id (sae-lens sets it for its pretrained releases), for links."""
    skipped: dict[str, int] = field(default_factory=dict)
    """How many latents the default selection passed over, by reason (``dead``, ``dense``,
    ``bos``); empty when the latents were given."""

    def neuronpedia_url(self, latent: int) -> str | None:
        """The latent's Neuronpedia page, for SAEs that have one."""
        return f"{NEURONPEDIA}/{self.neuronpedia_id}/{int(latent)}" if self.neuronpedia_id else None


@torch.no_grad()
def decoder_logit_effects(model, sae, latents: Sequence[int] | None = None) -> Tensor | None:
    """``[len(latents), d_vocab]`` direct logit effect of each decoder direction (all latents by
    default), or ``None`` if the hook is not the residual stream or ``attn.hook_z`` (no direct
    path to the unembedding). Ask only for the latents you show: for GPT-2's 24,576-latent SAEs
    all of them take about a teraFLOP."""
    W_dec = sae.W_dec if latents is None else sae.W_dec[torch.as_tensor(list(latents), dtype=torch.long)]
    W_dec = W_dec.to(model.W_U)
    if sae.cfg.d_in == model.cfg.d_model:
        return W_dec @ model.W_U
    name = sae.cfg.metadata.hook_name
    if name.endswith("attn.hook_z"):
        layer = int(name.split(".")[1])
        W_O = model.W_O[layer]  # [head, d_head, d_model]
        out = torch.einsum("sjh,jhm->sm", W_dec.reshape(-1, *W_O.shape[:2]), W_O)
        return out @ model.W_U
    return None


def select_latents(
    acts: Tensor, first: Tensor, n: int, *, max_frequency: float = 0.1, max_first_share: float = 0.5,
) -> tuple[list[int], dict[str, int]]:
    """Latents worth a dashboard: ``n`` spread evenly over the firing-frequency ranking of the
    latents that are neither dead (never fire), dense (fire on more than ``max_frequency`` of
    tokens) nor BOS-dominated (more than ``max_first_share`` of their activation mass on the
    beginning-of-sequence token). Returns the latents and how many were skipped, by reason.

    Args:
        acts: latent activations ``[batch, pos, d_sae]``.
        first: ``[batch, pos]`` bool, True at beginning-of-sequence tokens.
    """
    freq = (acts != 0).float().mean((0, 1))
    mass = acts.abs().sum((0, 1))
    first_share = acts.abs()[first].sum(0) / mass.clamp_min(1e-12)
    dead, dense = freq == 0, freq > max_frequency
    bos = ~dead & ~dense & (first_share > max_first_share)
    ok = (~dead & ~dense & ~bos).nonzero().squeeze(-1)
    ranked = ok[freq[ok].argsort(descending=True)]
    if len(ranked) > n:
        ranked = ranked[torch.linspace(0, len(ranked) - 1, n).round().long()]
    skipped = {"dead": int(dead.sum()), "dense": int(dense.sum()), "bos": int(bos.sum())}
    return ranked.tolist(), skipped


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
        latents: which latents; default ``n_latents`` chosen by :func:`select_latents` (no
            dead, dense or BOS-dominated latents, spread over the frequency ranking).
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
    skipped: dict[str, int] = {}
    if latents is None:
        bos_id = getattr(model.tokenizer, "bos_token_id", None)
        first = tokens.cpu() == bos_id if bos_id is not None else torch.zeros(tokens.shape, dtype=torch.bool)
        first[:, 0] = True  # the first position is the attention sink, BOS or not
        latents, skipped = select_latents(acts, first, n_latents)
    latents = [int(j) for j in latents]
    effects = decoder_logit_effects(model, sae, latents)
    data = LatentData(sae_name=name or f"{sae.cfg.architecture()}@{sae.cfg.metadata.hook_name}",
                      hook_name=sae.cfg.metadata.hook_name, latents=latents,
                      frequency={j: freq[j].item() for j in latents}, contexts={}, histogram={},
                      neuronpedia_id=getattr(sae.cfg.metadata, "neuronpedia_id", None), skipped=skipped)
    str_rows: dict[int, list[str]] = {}
    for i, j in enumerate(latents):
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
            eff = effects[i].float().cpu()
            up, down = eff.topk(n_logit_tokens), (-eff).topk(n_logit_tokens)
            tok = model.tokenizer
            data.promoted[j] = [(tok.decode([int(t)]), float(v)) for v, t in zip(up.values, up.indices)]
            data.suppressed[j] = [(tok.decode([int(t)]), -float(v)) for v, t in zip(down.values, down.indices)]
            counts, edges = np.histogram(eff.numpy(), bins=bins)
            data.logit_histogram[j] = (counts.tolist(), edges.tolist())
    return data
