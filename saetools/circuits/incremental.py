"""Incremental forward passes: recompute only the positions an intervention can change.

Activation patching (Wang et al. 2022, §3; Appendix B) reruns the model once per patched
component, but under causal attention a patch at positions ``>= p`` of layer ``L`` cannot
change anything at positions ``< p``, nor anything in layers below ``L``, and the IOI metric
reads only the END position of the last layer. This module reruns exactly that part: for each
prompt the *window* of positions from its first changed position to its END, in layers
``L..n_layers-1``, with the keys and values of the unchanged positions read from a cache of
the base run, and only the END query in the last layer. Everything else is the base run's
cached activations, bit for bit.

The numbers equal a full hooked forward pass up to float rounding (tests check both against
a naive per-prompt reference). The fast path covers the standard causal decoder family of
TransformerLens ``HookedTransformer`` (GPT-2 and the bundled models): :func:`unsupported`
names the reason when a model falls outside it, and callers then use ordinary hooked runs.
It reads the model's own weights and TransformerLens' own components (``ln1``, ``ln2``,
``apply_mlp``, ``calculate_attention_scores``, ``calculate_z_scores``, ``input_to_embed``);
only the per-prompt causal mask over the window is written here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.components.mlps.mlp import MLP
from transformer_lens.utilities.addmm import batch_addmm
from transformer_lens.utilities.attention import simple_attn_linear

from saetools.hooks import attached_hook_count
from saetools.models.loading import gelu_new

__all__ = ["Window", "window", "unsupported", "forward_from", "full_cache", "counterpart_cache", "cache_names",
           "mlp_out"]

Cache = dict[str, Tensor]


def unsupported(model) -> str | None:
    """Why the incremental path cannot run ``model`` exactly (``None`` when it can)."""
    cfg = model.cfg
    if not isinstance(model, HookedTransformer):
        return f"{type(model).__name__} is not a TransformerLens HookedTransformer"
    if attached_hook_count(model) or getattr(model, "acts_to_saes", None):
        return "the model has hooks or spliced SAEs attached (they must act on every run)"
    if getattr(model.tokenizer, "padding_side", "right") == "left":
        return "left padding (positions shift per prompt)"
    checks = {
        "positional_embedding_type": cfg.positional_embedding_type == "standard",
        "attention_dir": cfg.attention_dir == "causal",
        "n_key_value_heads": cfg.n_key_value_heads is None,
        "parallel_attn_mlp": not cfg.parallel_attn_mlp,
        "use_normalization_before_and_after": not cfg.use_normalization_before_and_after,
        "use_split_qkv_input / use_attn_in": not (cfg.use_split_qkv_input or cfg.use_attn_in),
        "use_qk_norm / clip_qkv": not cfg.use_qk_norm and cfg.clip_qkv is None,
        "use_logn_attn / use_attention_sinks": not (cfg.use_logn_attn or cfg.use_attention_sinks),
        "load_in_4bit": not cfg.load_in_4bit,
        "attention type": all(getattr(b.attn, "attn_type", "global") == "global" for b in model.blocks),
        "post-norm architecture": all(not hasattr(b, "ln1_post") for b in model.blocks)
        and cfg.original_architecture not in ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM"),
    }
    bad = [k for k, ok in checks.items() if not ok]
    return f"unsupported config: {', '.join(bad)}" if bad else None


def cache_names(layer: int, *, components: tuple[str, ...] = ("resid_pre", "k", "v", "z")) -> list[str]:
    """TransformerLens hook names the incremental path reads at ``layer``."""
    return [f"blocks.{layer}.hook_resid_pre" if c == "resid_pre" else f"blocks.{layer}.attn.hook_{c}"
            for c in components]


@dataclass(frozen=True)
class Window:
    """Per-prompt positions recomputed by an incremental pass."""

    idx: Int[Tensor, "batch win"]
    """Absolute position of each window slot (consecutive per prompt, ending at or after its END)."""
    valid: Bool[Tensor, "batch win"]
    """Slots recomputed: from the prompt's first changed position to its END. Other slots keep
    the cached values (before the change they are the base run exactly; after END nothing reads them)."""
    end: Int[Tensor, " batch"]
    """Absolute END position of each prompt (the position the metric reads)."""


def window(start: Int[Tensor, " batch"], end: Int[Tensor, " batch"]) -> Window:
    """The window holding ``[start_i, end_i]`` for every prompt ``i``.

    Args:
        start: first position whose activations can differ from the cache (clamped to ``end``).
        end: last position needed (the END token).
    """
    start = torch.minimum(start, end)
    width = int((end - start).max()) + 1
    w0 = (end - width + 1).clamp(min=0)
    idx = w0[:, None] + torch.arange(width, device=end.device)
    return Window(idx=idx, valid=(idx >= start[:, None]) & (idx <= end[:, None]), end=end)


def _fill(full: Tensor | None, at: tuple[Tensor, Tensor], values: Tensor, size: tuple[int, int]) -> Tensor:
    """A copy of ``full`` (``[batch, pos, ...]``; zeros when ``None``) with ``values`` written at ``at``."""
    out = values.new_zeros(*size, *values.shape[1:]) if full is None else full.clone()
    out[at] = values.to(out.dtype)
    return out


def _attend(attn, q: Tensor, k: Tensor, v: Tensor, at: tuple[Tensor, Tensor], win: Window) -> Tensor:
    """Causal attention of packed queries (at (row, position) ``at``) over full keys.

    The queries are laid out per prompt (``[batch, win]``, zeros in unused slots) so that each
    attends to its own prompt's keys; that costs ``win x pos`` scores per prompt, small next to
    the per-token work that runs packed.
    """
    r, pos = at
    b = k.shape[0]
    if len(r) == b and bool((r == torch.arange(b, device=r.device)).all()):  # one query per prompt
        slot, width = torch.zeros_like(r), 1
    else:
        slot, width = pos - win.idx[r, 0], win.idx.shape[1]
    q_pad = q.new_zeros(b, width, *q.shape[1:])
    q_pad[r, slot] = q
    q_pos = torch.full((b, width), -1, device=pos.device, dtype=pos.dtype)
    q_pos[r, slot] = pos
    scores = attn.calculate_attention_scores(q_pad, k)  # [batch, head, win, pos]
    mask = torch.arange(k.shape[1], device=k.device)[None, None, :] <= q_pos[:, :, None]
    scores = torch.where(mask[:, None], scores, attn.IGNORE.to(scores.device))
    pattern = F.softmax(scores, dim=-1)
    pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern).to(v.dtype)
    return attn.calculate_z_scores(v, pattern)[r, slot]


def _out(attn, z: Tensor) -> Tensor:
    """Attention output of packed head outputs ``z`` (``[tokens, head, d_head]``)."""
    w = attn.W_O.reshape(-1, attn.W_O.shape[-1]).T  # [d_model, head*d_head]
    return F.linear(z.reshape(z.shape[0], -1), w, attn.b_O)


def mlp_out(block, h: Tensor) -> Tensor:
    """``block.applymlp_out(h)``, fused for TransformerLens' plain GELU MLP."""
    mlp, cfg = block.mlp, block.cfg
    if type(mlp) is not MLP or cfg.act_fn != "gelu_new" or cfg.is_layer_norm_activation():
        return block.applymlp_out(h)
    return batch_addmm(mlp.b_out, mlp.W_out, gelu_new(batch_addmm(mlp.b_in, mlp.W_in, h)))


@torch.no_grad()
def forward_from(
    model, cache: Cache, layer: int, win: Window, *,
    override: Cache | None = None, resid: Float[Tensor, "batch pos d_model"] | None = None,
    record: Cache | None = None,
) -> Float[Tensor, "batch d_model"]:
    """Rerun layers ``layer..n_layers-1`` on the window only; return the final residual at END.

    Per-token work (layer norms, projections, MLPs) runs on the window's valid slots only,
    packed as one token list; attention reads every key and value, the unchanged ones from
    ``cache``.

    Args:
        model: a model for which :func:`unsupported` is ``None``.
        cache: the base run's activations (full length): ``hook_resid_pre``, ``attn.hook_k``,
            ``attn.hook_v`` of every layer from ``layer`` on, and what ``override`` needs.
        layer: first layer to rerun.
        win: the positions to rerun (:func:`window`).
        override: full-length replacements at ``layer``: ``attn.hook_z`` (the head outputs, so
            that layer's attention is not rerun) or any of ``attn.hook_q|k|v`` (attention is rerun
            from them; missing ones come from ``cache``).
        resid: a full-length ``hook_resid_pre`` of ``layer`` to start from instead of the cache's.
        record: when given, filled with full-length ``hook_resid_pre``, ``attn.hook_q|k|v|z`` of
            every rerun layer and the last ``hook_resid_post`` (cache values outside the valid
            slots), and the last layer is rerun at every valid slot, not only at END.

    Returns:
        The final residual stream (before ``ln_final``) at each prompt's END.
    """
    override = override or {}
    n = model.cfg.n_layers
    rows = torch.arange(win.idx.shape[0], device=win.idx.device)
    r, s = win.valid.nonzero(as_tuple=True)  # packed tokens, row-major: one END per row
    at = (r, win.idx[r, s])
    is_end = at[1] == win.end[r]
    start = resid if resid is not None else cache[f"blocks.{layer}.hook_resid_pre"]
    size = start.shape[:2]
    x = start[at]
    for l in range(layer, n):
        block, attn = model.blocks[l], model.blocks[l].attn
        hook = f"blocks.{l}.attn.hook_"
        end_only = record is None and l == n - 1
        if record is not None:
            record[f"blocks.{l}.hook_resid_pre"] = _fill(cache.get(f"blocks.{l}.hook_resid_pre"), at, x, size)
        if end_only:  # only END is read after the last layer
            q_at = (rows, win.end)
        z_over = override.get(hook + "z") if l == layer else None
        if z_over is not None:
            z = z_over[q_at if end_only else at]
        else:
            if l == layer and any(hook + c in override for c in "qkv"):
                # Attention inputs at ``layer`` come from the base run: only the patch changes them.
                q_full, k, v = (override.get(hook + c, cache.get(hook + c)) for c in "qkv")
                q = q_full[q_at if end_only else at]
            else:
                h = block.ln1(x[None])
                k = _fill(cache.get(hook + "k"), at, simple_attn_linear(h, attn.W_K, attn.b_K)[0], size)
                v = _fill(cache.get(hook + "v"), at, simple_attn_linear(h, attn.W_V, attn.b_V)[0], size)
                q = simple_attn_linear(h[:, is_end] if end_only else h, attn.W_Q, attn.b_Q)[0]
                if record is not None:
                    record[hook + "q"] = _fill(cache.get(hook + "q"), at, q, size)
            z = _attend(attn, q, k, v, (rows, win.end) if end_only else at, win)
            if record is not None:
                record[hook + "k"], record[hook + "v"] = k, v
        if record is not None:
            record[hook + "z"] = _fill(cache.get(hook + "z"), at, z, size)
        if end_only:
            x = x[is_end]
        x = x + _out(attn, z)
        if not model.cfg.attn_only:
            x = x + mlp_out(block, block.ln2(x[None])[0])
    if record is not None:
        name = f"blocks.{n - 1}.hook_resid_post"
        record[name] = _fill(cache.get(name), at, x, size)
        x = x[is_end]
    return x


@torch.no_grad()
def full_cache(model, tokens: Int[Tensor, "batch pos"], end: Int[Tensor, " batch"]) -> Cache:
    """Cache of ``tokens`` (``hook_resid_pre``, ``attn.hook_q|k|v|z``, last ``hook_resid_post``).

    A whole forward pass, but each prompt only up to ``end`` (padding after it is skipped; those
    positions hold zeros in the cache).
    """
    record: Cache = {}
    win = window(torch.zeros_like(end), end)
    forward_from(model, {}, 0, win, resid=model.input_to_embed(tokens)[0], record=record)
    return record


@torch.no_grad()
def counterpart_cache(
    model, cache: Cache, tokens: Int[Tensor, "batch pos"], other: Int[Tensor, "batch pos"],
    end: Int[Tensor, " batch"],
) -> Cache:
    """The cache of ``other`` from the cache of ``tokens``, rerunning only where they differ.

    Prompts of a patching pair share their tokens up to the first one that differs (the S2 name
    for the ABC corruption), so every activation before it is the same in both runs: copied, not
    recomputed. This also makes those activations *bit-identical* in the two caches, so a patch
    there is recognised as a no-op.

    Args:
        model: a model for which :func:`unsupported` is ``None``.
        cache: full cache of ``tokens`` with ``hook_resid_pre`` and ``attn.hook_q|k|v|z`` of
            every layer and the last layer's ``hook_resid_post``.
        tokens: the cached run's tokens.
        other: tokens of the same shape.
        end: last position needed per prompt.

    Returns:
        ``other``'s cache, with the same names, correct at every position up to ``end``.
    """
    differs = tokens != other
    first = torch.where(differs.any(1), differs.float().argmax(1), end)
    win = window(first, end)
    record: Cache = {}
    forward_from(model, cache, 0, win, resid=model.input_to_embed(other)[0], record=record)
    return record
