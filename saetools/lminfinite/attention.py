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

With the mask off and the cap on ("cap only", the authors' non-fused path), every key outside
the window gets the capped logit. Two implementations give the same numbers:

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

    @property
    def cap(self) -> int:
        """The configured distance cap (before clipping to ``kv_len - 1``)."""
        return self.n_local if self.limit_distance is None else self.limit_distance


def _check_model(model, cfg: LMInfiniteConfig) -> None:
    mcfg = model.cfg
    rotary = mcfg.positional_embedding_type == "rotary"
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
) -> Float[Tensor, "batch head q k"]:
    """Apply the LM-Infinite rule to attention logits.

    Args:
        true_scores: logits at true relative distance.
        capped_scores: logits at the capped distance for the first ``k_capped`` keys (all keys
            outside the window that can receive a capped logit); ``None`` when the cap is off.
        q_pos: absolute positions of the queries, ``[q]``.
        k_pos: absolute positions of the keys, ``[k]`` (ascending).
        cfg: the rule.

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
    return out.masked_fill(~keep, float("-inf"))


def _capped_scores(attn, rot_q: Tensor, rot_k: Tensor, q_pos: Tensor, k_pos: Tensor, cap: int) -> Tensor:
    """``<rope(q_i, cap), k_j> / attn_scale`` from rotated queries and keys."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    q = _rotate(attn, rot_q, q_pos, inverse=True)
    q = _rotate(attn, q, torch.full_like(q_pos, cap))
    k = _expand_kv(_rotate(attn, rot_k, k_pos, inverse=True), q.shape[2])
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / attn.attn_scale
    return apply_softcap(scores, attn.cfg.attn_scores_soft_cap)


def _scores_hook(attn, cfg: LMInfiniteConfig, state: dict) -> Callable:
    def hook(scores: Tensor, hook) -> Tensor:
        n_q, n_k = scores.shape[-2:]
        k_pos = torch.arange(n_k, device=scores.device)
        q_pos = k_pos[n_k - n_q:]  # with a KV cache the queries are the last positions
        capped = None
        if cfg.use_cap:
            cap = min(cfg.cap, n_k - 1)
            n_c = min(cfg.n_global, n_k) if cfg.use_mask else n_k
            rot_q, rot_k = state.pop("rot_q"), state.pop("rot_k")
            capped = _capped_scores(attn, rot_q, rot_k[:, :n_c], q_pos, k_pos[:n_c], cap)
        return lambda_scores(scores, capped, q_pos, k_pos, cfg)

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
        if cfg.use_cap:
            hooks.append((f"blocks.{layer}.attn.hook_rot_q", _store(state, "rot_q")))
            hooks.append((f"blocks.{layer}.attn.hook_rot_k", _store(state, "rot_k")))
        hooks.append((f"blocks.{layer}.attn.hook_attn_scores", _scores_hook(block.attn, cfg, state)))
    return hooks


@contextmanager
def lm_infinite(model, cfg: LMInfiniteConfig) -> Iterator[None]:
    """Run ``model`` with LM-Infinite hooks inside the block; always removed afterwards."""
    with scoped_hooks(model, lm_infinite_hooks(model, cfg)):
        yield


def _banded_z(attn, q: Tensor, k: Tensor, v: Tensor, cfg: LMInfiniteConfig, chunk: int) -> Tensor:
    """Attention output ``z`` of the Lambda rule, scoring each query chunk against the global
    keys plus a band of ``n_local`` keys: O(pos * (n_local + n_global + chunk)) memory."""
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
        pattern = lambda_scores(scores, capped, pos[s:e], k_pos, cfg).softmax(-1)
        vals = torch.cat([v[:, :g], v[:, lo:e]], dim=1)
        z[:, s:e] = torch.einsum("bhqk,bkhd->bqhd", pattern, vals)
    return z


def _lean_forward(attn, cfg: LMInfiniteConfig, chunk: int) -> Callable:
    def forward(query_input, key_input, value_input, past_kv_cache_entry=None,
                additive_attention_mask=None, attention_mask=None, position_bias=None, **kwargs):
        if past_kv_cache_entry is not None or attention_mask is not None or additive_attention_mask is not None:
            raise NotImplementedError("lean_attention scores whole unpadded sequences: no KV cache, "
                                      "no attention_mask; use lm_infinite (hooks) for generation")
        q, k, v = attn.calculate_qkv_matrices(query_input, key_input, value_input)
        z = attn.hook_z(_banded_z(attn, q, k, v, cfg, chunk))
        out = torch.einsum("bqhd,hdm->bqm", z, attn.W_O.to(z.dtype)) + attn.b_O
        return out

    return forward


@contextmanager
def lean_attention(model, cfg: LMInfiniteConfig, *, chunk: int | None = None) -> Iterator[None]:
    """Swap every attention forward for a memory-lean Lambda-masked one inside the block.

    Never materialises the n x n score matrix: query chunks of ``chunk`` tokens (default
    ``n_local``) are scored against the global keys plus a band of recent keys, so peak memory
    grows linearly with length. ``hook_q/k/v``, ``hook_rot_q/k`` and ``hook_z`` still fire;
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
        for block in model.blocks:
            block.attn.forward = _lean_forward(block.attn, cfg, chunk)
            patched.append(block.attn)
        yield
    finally:
        for attn in patched:
            del attn.forward  # drop the instance attribute: the class's forward is back
