"""LM-Infinite: the Lambda-shaped attention mask and the distance cap, on TransformerLens models.

Han, Wang, Peng, Xiong, Chen, Ji, Wang (2023/2024), "LM-Infinite: Zero-Shot Extreme Length
Generalization for Large Language Models" (arXiv 2308.16137); see docs/han2023_lm_infinite.md for the exact
rule. For query position ``i`` and key ``j <= i`` (distance ``d = i - j``):

* **Lambda mask**: key ``j`` is attended iff ``j < n_global`` (global branch: the first tokens)
  or ``d < n_local`` (local branch: the ``n_local`` most recent tokens, the query included);
* **distance cap**: keys outside the local window get the logit of relative distance
  ``L_cap = min(limit_distance, kv_len - 1)``, computed as ``<rope(q_i, L_cap), k_j>`` with the
  *unrotated* key; keys inside the window keep their true-distance logit (so a global token
  inside the window is counted once, at its true distance).

With the mask off and the cap on ("cap only"), every key outside the window gets the capped
logit, the rule the paper states. The authors' non-fused path agrees only when
``limit_distance == n_local`` (the default): otherwise it gives keys at distances between
``n_local`` and the cap a zero logit. saetools keeps the paper's rule.

* **top-k middle attention** (the authors' later version, ``top_k > 0``): in layers
  ``>= top_k_from_layer``, each query also attends to the ``top_k`` keys of the masked middle
  (``n_global <= j`` and ``d >= n_local``) whose logit at the inserted distance
  ``top_k_distance`` (``<rope(q_i, top_k_distance), k_j>``) is largest, with that logit. This is
  what lets a model retrieve a fact from the middle of a long context (passkey retrieval).

Two implementations give the same numbers:

* :func:`lm_infinite_hooks` -- scoped hooks (``hook_rot_q``, ``hook_rot_k``,
  ``hook_attn_scores``) on any TransformerLens model; costs the usual n x n scores;
* :func:`lean_attention` -- swaps each attention forward for a chunked one that only scores a
  band of ``n_local`` keys plus the global keys, so memory grows linearly with length
  (``hook_attn_scores`` / ``hook_pattern`` do not fire inside it).

Both are context managers that restore the model on exit, also after an exception.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from saetools.hooks import scoped_hooks

__all__ = [
    "LMInfiniteConfig",
    "AbsolutePositionWarning",
    "lambda_scores",
    "lm_infinite_hooks",
    "lm_infinite",
    "lean_attention",
]


class AbsolutePositionWarning(UserWarning):
    """Mask-only LM-Infinite on a model whose positions are absolute (e.g. GPT-2)."""


@dataclass(frozen=True, kw_only=True)
class LMInfiniteConfig:
    """Which parts of LM-Infinite to apply, and their sizes."""

    n_local: int
    """Local-branch width: keys with distance ``< n_local`` keep true-distance logits
    (the paper uses the pretraining length)."""
    n_global: int = 4
    """Global branch: the first ``n_global`` tokens stay visible (0 = pure sliding window)."""
    limit_distance: int | None = None
    """Distance cap L_cap for keys outside the local window (default: ``n_local``)."""
    use_mask: bool = True
    """Apply the Lambda mask (drop keys that are neither global nor local)."""
    use_cap: bool = True
    """Apply the distance cap (needs rotary positions)."""
    top_k: int = 0
    """Top-k middle-token attention: each query also attends to this many keys of the masked
    middle, those with the largest logit at distance ``top_k_distance`` (0 = off). The authors
    use 5 for passkey retrieval. They apply it to the newest token only (the one being decoded,
    with a KV cache); here every query gets it, so one forward over a prompt equals decoding it
    token by token without a cache. Needs the mask and rotary positions."""
    top_k_from_layer: int = 0
    """First layer with top-k middle attention (the authors: layer 4 of 32)."""
    top_k_distance: int | None = None
    """Relative distance at which the top-k middle keys are scored and attended (default: the
    cap; the authors insert them at the pretraining length)."""

    def __post_init__(self) -> None:
        if self.n_local < 1:
            raise ValueError(f"LMInfiniteConfig.n_local must be >= 1, got {self.n_local}")
        if self.n_global < 0:
            raise ValueError(f"LMInfiniteConfig.n_global must be >= 0, got {self.n_global}")
        if self.limit_distance is not None and self.limit_distance < 0:
            raise ValueError(f"LMInfiniteConfig.limit_distance must be >= 0, got {self.limit_distance}")
        if not (self.use_mask or self.use_cap):
            raise ValueError("LMInfiniteConfig: use_mask and use_cap are both off; run the model "
                             "without LM-Infinite instead")
        if self.top_k < 0 or self.top_k_from_layer < 0:
            raise ValueError(f"LMInfiniteConfig.top_k and top_k_from_layer must be >= 0, got "
                             f"{self.top_k} and {self.top_k_from_layer}")
        if self.top_k and not self.use_mask:
            raise ValueError("LMInfiniteConfig: top_k middle attention needs use_mask=True (without the "
                             "mask no middle key is masked, so there is nothing to select)")
        if self.top_k_distance is not None and self.top_k_distance < 0:
            raise ValueError(f"LMInfiniteConfig.top_k_distance must be >= 0, got {self.top_k_distance}")

    def top_k_at(self, layer: int) -> bool:
        """Whether ``layer`` has top-k middle attention."""
        return self.top_k > 0 and layer >= self.top_k_from_layer

    @property
    def cap(self) -> int:
        """The configured distance cap (before clipping to ``kv_len - 1``)."""
        return self.n_local if self.limit_distance is None else self.limit_distance

    def top_k_dist(self, kv_len: int) -> int:
        """The distance of the top-k middle keys, clipped to ``kv_len - 1`` like the cap."""
        d = self.cap if self.top_k_distance is None else self.top_k_distance
        return min(d, kv_len - 1)


def _check_model(model, cfg: LMInfiniteConfig) -> None:
    mcfg = model.cfg
    rotary = mcfg.positional_embedding_type == "rotary"
    if cfg.top_k and not rotary:
        raise ValueError(
            f"top-k middle attention scores keys at an inserted rotary distance, but this model's "
            f"positional_embedding_type is {mcfg.positional_embedding_type!r}; use top_k=0"
        )
    if cfg.use_cap and not rotary:
        raise ValueError(
            f"the distance cap needs rotary positions, but this model's positional_embedding_type "
            f"is {mcfg.positional_embedding_type!r}; use LMInfiniteConfig(use_cap=False) for the "
            "mask only"
        )
    if not rotary:
        warnings.warn(
            f"LM-Infinite mask only on a model with {mcfg.positional_embedding_type!r} positions: "
            "this demonstrates the Lambda mask inside the trained length, not length "
            "generalisation (docs/han2023_lm_infinite.md)", AbsolutePositionWarning, stacklevel=3,
        )
    for flag in ("use_logn_attn", "use_dynamic_ntk_rope"):
        if getattr(mcfg, flag, False):
            raise NotImplementedError(f"LM-Infinite hooks do not support models with {flag}=True")


def _rotate(attn, x: Float[Tensor, "batch pos head d_head"], pos: Tensor, *, inverse: bool = False) -> Tensor:
    """Rotate ``x`` by rotary positions ``pos`` (``[pos]``) with the module's own tables.

    ``inverse=True`` undoes the rotation (rotation by ``-pos``).
    """
    rd = attn.cfg.rotary_dim
    cos = attn.rotary_cos[pos].to(x.dtype)[None, :, None, :]
    sin = attn.rotary_sin[pos].to(x.dtype)[None, :, None, :]
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    flip = attn.rotate_every_two(x_rot)
    out = x_rot * cos - flip * sin if inverse else x_rot * cos + flip * sin
    return torch.cat([out, x_pass], dim=-1)


def _expand_kv(k: Tensor, n_heads: int) -> Tensor:
    """Repeat grouped key heads so there is one per query head."""
    return k if k.shape[2] == n_heads else k.repeat_interleave(n_heads // k.shape[2], dim=2)


def lambda_scores(
    true_scores: Float[Tensor, "batch head q k"],
    capped_scores: Float[Tensor, "batch head q k_capped"] | None,
    q_pos: Tensor,
    k_pos: Tensor,
    cfg: LMInfiniteConfig,
    top_k_scores: Float[Tensor, "batch head q k"] | None = None,
) -> Float[Tensor, "batch head q k"]:
    """Apply the LM-Infinite rule to attention logits.

    Args:
        true_scores: logits at true relative distance.
        capped_scores: logits at the capped distance for the first ``k_capped`` keys (all keys
            outside the window that can receive a capped logit); ``None`` when the cap is off.
        q_pos: absolute positions of the queries, ``[q]``.
        k_pos: absolute positions of the keys, ``[k]`` (ascending).
        cfg: the rule.
        top_k_scores: logits of every key at distance ``cfg.top_k_distance``; given, each query
            also keeps the ``cfg.top_k`` masked middle keys with the largest of these logits.

    Returns:
        Logits with masked entries at ``-inf``, ready for the softmax.
    """
    dist = q_pos[:, None] - k_pos[None, :]
    causal = dist >= 0
    local = causal & (dist < cfg.n_local)
    keep = (local | (k_pos[None, :] < cfg.n_global)) & causal if cfg.use_mask else causal
    out = true_scores
    if cfg.use_cap and capped_scores is not None:
        n_c = capped_scores.shape[-1]
        head = torch.where(local[:, :n_c], true_scores[..., :n_c], capped_scores)
        out = torch.cat([head, true_scores[..., n_c:]], dim=-1)
    if top_k_scores is not None and cfg.top_k:
        chosen = _top_k_middle(top_k_scores, causal & ~local & (k_pos[None, :] >= cfg.n_global), cfg.top_k)
        out, keep = torch.where(chosen, top_k_scores, out), keep | chosen
    return out.masked_fill(~keep, float("-inf"))


def _top_k_middle(scores: Tensor, middle: Tensor, k: int) -> Tensor:
    """Boolean ``scores``-shaped mask of the (up to) ``k`` largest ``middle`` entries of each row."""
    k = min(k, scores.shape[-1])
    masked = scores.masked_fill(~middle, float("-inf"))
    chosen = torch.zeros_like(masked, dtype=torch.bool).scatter_(-1, masked.topk(k, dim=-1).indices, True)
    return chosen & middle  # rows with fewer than k middle keys picked some masked ones


def _capped_scores(attn, rot_q: Tensor, rot_k: Tensor, q_pos: Tensor, k_pos: Tensor, cap: int) -> Tensor:
    """``<rope(q_i, cap), k_j> / attn_scale`` from rotated queries and keys."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    q = _rotate(attn, rot_q, q_pos, inverse=True)
    q = _rotate(attn, q, torch.full_like(q_pos, cap))
    k = _expand_kv(_rotate(attn, rot_k, k_pos, inverse=True), q.shape[2])
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / attn.attn_scale
    return apply_softcap(scores, attn.cfg.attn_scores_soft_cap)


def _scores_hook(attn, cfg: LMInfiniteConfig, state: dict, top_k: bool) -> Callable:
    def hook(scores: Tensor, hook) -> Tensor:
        n_q, n_k = scores.shape[-2:]
        k_pos = torch.arange(n_k, device=scores.device)
        q_pos = k_pos[n_k - n_q:]  # with a KV cache the queries are the last positions
        capped = top = None
        if cfg.use_cap or top_k:
            rot_q, rot_k = state.pop("rot_q"), state.pop("rot_k")
        if cfg.use_cap:
            cap = min(cfg.cap, n_k - 1)
            n_c = min(cfg.n_global, n_k) if cfg.use_mask else n_k
            capped = _capped_scores(attn, rot_q, rot_k[:, :n_c], q_pos, k_pos[:n_c], cap)
        if top_k:
            top = _capped_scores(attn, rot_q, rot_k, q_pos, k_pos, cfg.top_k_dist(n_k))
        return lambda_scores(scores, capped, q_pos, k_pos, cfg, top)

    return hook


def _store(state: dict, key: str) -> Callable:
    def hook(act: Tensor, hook) -> None:
        state[key] = act

    return hook


def lm_infinite_hooks(model, cfg: LMInfiniteConfig) -> list[tuple[str, Callable]]:
    """``(hook_name, fn)`` pairs that apply LM-Infinite in every layer.

    Apply them in a scope that cleans up (:func:`lm_infinite`, ``model.hooks(...)``,
    ``run_with_hooks``). The distance-cap hooks read ``hook_rot_q`` / ``hook_rot_k`` and undo
    the rotation, so they also work with a KV cache. Inputs are assumed unpadded (token ``t``
    at rotary position ``t``).

    Raises:
        ValueError: the cap is requested on a model without rotary positions.
    """
    _check_model(model, cfg)
    hooks = []
    for layer, block in enumerate(model.blocks):
        state: dict = {}
        if cfg.use_cap or cfg.top_k_at(layer):
            hooks.append((f"blocks.{layer}.attn.hook_rot_q", _store(state, "rot_q")))
            hooks.append((f"blocks.{layer}.attn.hook_rot_k", _store(state, "rot_k")))
        hooks.append((f"blocks.{layer}.attn.hook_attn_scores",
                      _scores_hook(block.attn, cfg, state, cfg.top_k_at(layer))))
    return hooks


@contextmanager
def lm_infinite(model, cfg: LMInfiniteConfig) -> Iterator[None]:
    """Run ``model`` with LM-Infinite hooks inside the block; always removed afterwards."""
    with scoped_hooks(model, lm_infinite_hooks(model, cfg)):
        yield


def _banded_z(attn, q: Tensor, k: Tensor, v: Tensor, cfg: LMInfiniteConfig, chunk: int, top_k: bool) -> Tensor:
    """Attention output ``z`` of the Lambda rule, scoring each query chunk against the global
    keys plus a band of ``n_local`` keys: O(pos * (n_local + n_global + chunk)) memory.

    With ``top_k``, each chunk also scores every middle key before its band (O(chunk * pos)
    memory per chunk) and keeps each query's ``cfg.top_k`` best."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    n = q.shape[1]
    rotary = attn.cfg.positional_embedding_type == "rotary"
    pos = torch.arange(n, device=q.device)
    rq, rk = q, k
    if rotary:  # the module's own rotation (extends its table up to n_ctx when needed)
        rq, rk = attn.hook_rot_q(attn.apply_rotary(q)), attn.hook_rot_k(attn.apply_rotary(k))
    k, rk, v = (_expand_kv(t, q.shape[2]) for t in (k, rk, v))
    cap = min(cfg.cap, n - 1)
    q_cap = _rotate(attn, q, torch.full_like(pos, cap)) if cfg.use_cap else None
    q_top = _rotate(attn, q, torch.full_like(pos, cfg.top_k_dist(n))) if top_k else None
    z = torch.empty_like(q[..., : v.shape[-1]])
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        lo = max(0, s - cfg.n_local + 1)
        g = min(cfg.n_global, lo)
        k_pos = torch.cat([pos[:g], pos[lo:e]])
        keys = torch.cat([rk[:, :g], rk[:, lo:e]], dim=1)
        scores = torch.einsum("bqhd,bkhd->bhqk", rq[:, s:e], keys) / attn.attn_scale
        scores = apply_softcap(scores, attn.cfg.attn_scores_soft_cap)
        capped = None
        if cfg.use_cap:
            n_c = int((k_pos < cfg.n_global).sum())
            unrot = torch.cat([k[:, :g], k[:, lo:e]], dim=1)[:, :n_c]
            capped = torch.einsum("bqhd,bkhd->bhqk", q_cap[:, s:e], unrot) / attn.attn_scale
            capped = apply_softcap(capped, attn.cfg.attn_scores_soft_cap)
        logits = lambda_scores(scores, capped, pos[s:e], k_pos, cfg)
        vals = torch.cat([v[:, :g], v[:, lo:e]], dim=1)
        m_hi = e - cfg.n_local  # keys before it are in the middle for some query of the chunk
        if top_k and m_hi > cfg.n_global:
            mid = slice(cfg.n_global, m_hi)
            top = torch.einsum("bqhd,bkhd->bhqk", q_top[:, s:e], k[:, mid]) / attn.attn_scale
            top = apply_softcap(top, attn.cfg.attn_scores_soft_cap)
            middle = pos[s:e, None] - pos[None, mid] >= cfg.n_local
            top = top.masked_fill(~_top_k_middle(top, middle, cfg.top_k), float("-inf"))
            logits, vals = torch.cat([logits, top], dim=-1), torch.cat([vals, v[:, mid]], dim=1)
        z[:, s:e] = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), vals)
    return z


def _lean_forward(attn, cfg: LMInfiniteConfig, chunk: int, top_k: bool) -> Callable:
    def forward(query_input, key_input, value_input, past_kv_cache_entry=None,
                additive_attention_mask=None, attention_mask=None, position_bias=None, **kwargs):
        if past_kv_cache_entry is not None or attention_mask is not None or additive_attention_mask is not None:
            raise NotImplementedError("lean_attention scores whole unpadded sequences: no KV cache, "
                                      "no attention_mask; use lm_infinite (hooks) for generation")
        q, k, v = attn.calculate_qkv_matrices(query_input, key_input, value_input)
        z = attn.hook_z(_banded_z(attn, q, k, v, cfg, chunk, top_k))
        out = torch.einsum("bqhd,hdm->bqm", z, attn.W_O.to(z.dtype)) + attn.b_O
        return out

    return forward


@contextmanager
def lean_attention(model, cfg: LMInfiniteConfig, *, chunk: int | None = None) -> Iterator[None]:
    """Swap every attention forward for a memory-lean Lambda-masked one inside the block.

    Never materialises the n x n score matrix: query chunks of ``chunk`` tokens (default
    ``n_local``) are scored against the global keys plus a band of recent keys, so peak memory
    grows linearly with length. Top-k middle attention (``cfg.top_k``) must score every middle
    key: then each chunk holds ``chunk x n`` scores in its top-k layers. ``hook_q/k/v``, ``hook_rot_q/k`` and ``hook_z`` still fire;
    ``hook_attn_scores`` and ``hook_pattern`` do not. The original forwards are restored on
    exit, also after an exception.

    Raises:
        ValueError: ``cfg.use_mask`` is off (cap only attends to every key; no lean path), the
            cap is requested on a non-rotary model, or ``chunk < 1``.
    """
    if not cfg.use_mask:
        raise ValueError("lean_attention needs the Lambda mask (use_mask=True): without it every "
                         "key is attended and there is no banded structure to exploit")
    chunk = cfg.n_local if chunk is None else chunk
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    _check_model(model, cfg)
    for block in model.blocks:
        a = block.attn
        if getattr(a, "q_norm", None) is not None or a.cfg.clip_qkv is not None or getattr(a.cfg, "use_attention_sinks", False) \
                or a.cfg.use_attn_result or a.cfg.attention_dir != "causal":
            raise NotImplementedError("lean_attention supports plain causal attention only "
                                      "(no qk-norm, clip_qkv, sinks, use_attn_result)")
    patched = []
    try:
        for layer, block in enumerate(model.blocks):
            block.attn.forward = _lean_forward(block.attn, cfg, chunk, cfg.top_k_at(layer))
            patched.append(block.attn)
        yield
    finally:
        for attn in patched:
            del attn.forward  # drop the instance attribute: the class's forward is back
