"""Measurements for LM-Infinite (Han et al. 2023, docs/han2023_lm_infinite.md) on a rotary model.

* :func:`per_position_nll` -- next-token NLL at every position, for a variant of the method;
* :func:`attention_entropy` -- entropy of attention rows vs sequence length (factor 2 of §6.1);
* :func:`passkey_accuracy` -- greedy retrieval of a five-digit key hidden at a random depth of
  a long filler text (Mohtashami & Jaggi 2023), in contexts of growing length;
* :func:`time_and_memory` -- seconds and peak CPU tensor memory of a forward pass, full attention
  vs the lean Lambda path.

Every function takes the model and integer token tensors, runs under ``torch.no_grad`` and
returns tensors or pandas DataFrames with documented columns.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from saetools.lminfinite.attention import LMInfiniteConfig, lean_attention, lm_infinite
from saetools.models.corpus import passkey, passkey_fit, passkey_question

__all__ = [
    "VARIANTS",
    "variant_config",
    "applied",
    "per_position_nll",
    "binned_nll",
    "attention_entropy",
    "passkey_batch",
    "greedy_decode",
    "passkey_accuracy",
    "peak_cpu_bytes",
    "time_and_memory",
]

VARIANTS = ("vanilla", "mask only", "cap only", "both", "n_global=0")
"""The ablations of docs/han2023_lm_infinite.md: no method, Lambda mask alone, distance cap alone, both, and
both with no global branch (a pure sliding window with the cap)."""


def variant_config(name: str, *, n_local: int, n_global: int) -> LMInfiniteConfig | None:
    """The :class:`LMInfiniteConfig` of a named variant (``None`` for ``"vanilla"``)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of {VARIANTS}")
    if name == "vanilla":
        return None
    return LMInfiniteConfig(
        n_local=n_local, n_global=0 if name == "n_global=0" else n_global,
        use_mask=name != "cap only", use_cap=name != "mask only",
    )


@contextmanager
def applied(model, cfg: LMInfiniteConfig | None, *, lean: bool = False) -> Iterator[None]:
    """Scope in which ``model`` runs with ``cfg`` (nothing when ``None``), hooks or lean path."""
    if cfg is None:
        ctx = nullcontext()
    else:
        ctx = lean_attention(model, cfg) if lean else lm_infinite(model, cfg)
    with ctx:
        yield


def _check_tokens(model, tokens: Tensor) -> None:
    if tokens.ndim != 2 or tokens.dtype != torch.long:
        raise ValueError(f"tokens must be a [batch, pos] long tensor, got {tuple(tokens.shape)} {tokens.dtype}")
    if tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"sequence length {tokens.shape[1]} exceeds model.cfg.n_ctx={model.cfg.n_ctx} "
                         "(TransformerLens's rotary table stops there)")


@torch.no_grad()
def per_position_nll(model, tokens: Int[Tensor, "batch pos"], cfg: LMInfiniteConfig | None = None,
                     *, lean: bool = False) -> Tensor:
    """Mean over the batch of the NLL (nats) of token ``t + 1`` given tokens ``0..t``: ``[pos - 1]``."""
    _check_tokens(model, tokens)
    out = []
    with applied(model, cfg, lean=lean):
        for rows in _row_batches(tokens):
            logp = model(rows, return_type="logits")[:, :-1].float().log_softmax(-1)
            out.append(-logp.gather(-1, rows[:, 1:, None])[..., 0])
    return torch.cat(out).mean(0)


def _row_batches(tokens: Tensor, max_tokens: int = 4096) -> list[Tensor]:
    """Split rows so that each forward holds at most ``max_tokens`` tokens (n x n scores!)."""
    per = max(1, max_tokens // tokens.shape[1])
    return list(tokens.split(per))


def binned_nll(nll: Tensor, train_ctx: int) -> pd.DataFrame:
    """Mean NLL in position bins ``[0.5, 1) x L, [1, 2) x L, [2, 4) x L, ...`` (L = ``train_ctx``).

    Returns columns ``lo``, ``hi`` (context positions, ``hi`` exclusive), ``factor`` (``hi / L``)
    and ``nll``; the first bin is the in-length reference.
    """
    rows, lo, hi = [], train_ctx // 2, train_ctx
    while lo < len(nll):
        rows.append({"lo": lo, "hi": min(hi, len(nll)), "factor": hi / train_ctx,
                     "nll": float(nll[lo:hi].mean())})
        lo, hi = hi, 2 * hi
    return pd.DataFrame(rows)


@torch.no_grad()
def attention_entropy(model, tokens: Int[Tensor, "batch pos"], lengths: Sequence[int],
                      cfg: LMInfiniteConfig | None = None, *, last: int = 16) -> pd.DataFrame:
    """Entropy (nats) of the attention distribution vs sequence length.

    For each length ``n``, runs the prefix ``tokens[:, :n]`` and averages
    ``H(p) = -sum_j p_j log p_j`` over the rows of the ``last`` queries, all heads and layers.

    Returns columns ``length``, ``entropy``.
    """
    rows = []
    for n in lengths:
        _check_tokens(model, tokens[:, :n])
        ents: list[Tensor] = []

        def grab(pattern: Tensor, hook) -> None:
            p = pattern[:, :, -last:].float()
            ents.append(-(p * p.clamp_min(1e-30).log()).sum(-1).mean())

        with applied(model, cfg):
            with model.hooks(fwd_hooks=[(lambda name: name.endswith("attn.hook_pattern"), grab)]):
                model(tokens[:, :n], return_type=None)
        rows.append({"length": int(n), "entropy": float(torch.stack(ents).mean())})
    return pd.DataFrame(rows)


def passkey_batch(tokenizer, length: int, n: int, *, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` passkey prompts of at most ``length`` tokens (Mohtashami & Jaggi 2023, as LM-Infinite
    evaluates it), all of one length.

    Layout: BOS, filler sentences (``"The grass is green. ..."``) with the key line ``"The pass
    key is 48213. Remember it. 48213 is the pass key."`` after a uniformly random number of them,
    then ``"What is the pass key? The pass key is"``. As many filler sentences as fit, leaving
    room for the answer. Returns ``(prompts [n, pos], keys [n, k])``: the token ids of each
    answer ``" 48213"`` (k tokens, the same for every key), for greedy decoding.
    """
    rng = np.random.default_rng(seed)
    n_filler = passkey_fit(tokenizer, length)
    if n_filler == 0:
        raise ValueError(f"length {length} is too short for a passkey prompt with one filler sentence "
                         f"(it needs more than {length} tokens); use a longer length")
    keys = [passkey(rng) for _ in range(n)]
    texts = [passkey_question(n_filler, k, float(d)) for k, d in zip(keys, rng.random(n))]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    digits = tokenizer([" " + k for k in keys], add_special_tokens=False)["input_ids"]
    if len({len(x) for x in ids}) != 1 or len({len(d) for d in digits}) != 1:
        raise ValueError("this tokenizer does not give every passkey prompt and key the same length; "
                         "passkey_batch needs a tokenizer that splits numbers digit by digit (as tiny-rotary's)")
    prompts = torch.tensor([[tokenizer.bos_token_id] + x for x in ids])
    return prompts, torch.tensor(digits)


@torch.no_grad()
def greedy_decode(model, prompts: Int[Tensor, "batch pos"], n_new: int, cfg: LMInfiniteConfig | None = None,
                  *, lean: bool = False) -> Tensor:
    """``[batch, n_new]`` tokens decoded greedily after ``prompts`` (a full forward per token)."""
    tokens = prompts
    with applied(model, cfg, lean=lean):
        for _ in range(n_new):
            nxt = torch.cat([model(r, return_type="logits")[:, -1].argmax(-1) for r in _row_batches(tokens)])
            tokens = torch.cat([tokens, nxt[:, None].to(tokens.device)], dim=1)
    return tokens[:, prompts.shape[1]:]


@torch.no_grad()
def passkey_accuracy(model, tokenizer, lengths: Sequence[int], cfg: LMInfiniteConfig | None = None,
                     *, n: int = 20, seed: int = 0, lean: bool = False) -> pd.DataFrame:
    """Fraction of passkey prompts (:func:`passkey_batch`) whose key (five digits) the model decodes
    greedily, every token correct. Returns columns ``length`` (of the prompt with its answer), ``accuracy``, ``n``."""
    rows = []
    for length in lengths:
        prompts, keys = passkey_batch(tokenizer, length, n, seed=seed + length)
        _check_tokens(model, prompts)
        if prompts.shape[1] + keys.shape[1] - 1 > model.cfg.n_ctx:
            raise ValueError(f"passkey length {length} exceeds model.cfg.n_ctx={model.cfg.n_ctx}")
        got = greedy_decode(model, prompts, keys.shape[1], cfg, lean=lean)
        ok = (got.cpu() == keys).all(1)
        rows.append({"length": int(prompts.shape[1] + keys.shape[1]), "accuracy": float(ok.float().mean()), "n": n})
    return pd.DataFrame(rows)


_PROFILER_LOG_LINE = re.compile(r"^(USDT|INFO|WARNING):\d{4}-\d\d-\d\d [^\]]*\.cpp:\d+\]")


@contextmanager
def _without_profiler_log():
    """The profiler's C++ side logs every start and stop on the process's stderr (file
    descriptor 2, which a notebook shows): drop those lines, pass everything else through."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if not _PROFILER_LOG_LINE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))


def peak_cpu_bytes(fn: Callable[[], object]) -> tuple[object, int]:
    """Run ``fn`` and return ``(result, peak)``: the high-water mark of CPU tensor bytes that
    ``fn`` allocated, from the PyTorch profiler's allocator events (allocations minus frees,
    in time order, relative to the start; tensors that existed before are not counted)."""
    from torch.profiler import ProfilerActivity, profile

    with _without_profiler_log(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    cur = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        cur += e.nbytes()
        peak = max(peak, cur)
    return out, peak


@torch.no_grad()
def time_and_memory(model, lengths: Sequence[int], cfg: LMInfiniteConfig, *, seed: int = 0) -> pd.DataFrame:
    """Wall time and peak CPU tensor memory of one forward pass (batch 1, random tokens).

    Two paths per length: ``"full"`` (the unmodified model, n x n attention) and ``"lean"``
    (:func:`~saetools.lminfinite.lean_attention` with ``cfg``). Returns columns ``path``,
    ``length``, ``seconds``, ``peak_mb`` (see :func:`peak_cpu_bytes`).
    """
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for length in lengths:
        tokens = torch.randint(model.cfg.d_vocab, (1, length), generator=gen)
        _check_tokens(model, tokens)
        for path in ("full", "lean"):
            def fwd():
                with applied(model, cfg if path == "lean" else None, lean=True):
                    return model(tokens, return_type="loss")

            fwd()  # warm-up: grows the rotary table once, outside the measurement
            t0 = time.perf_counter()
            fwd()
            seconds = time.perf_counter() - t0
            _, peak = peak_cpu_bytes(fwd)
            rows.append({"path": path, "length": int(length), "seconds": seconds, "peak_mb": peak / 2**20})
    return pd.DataFrame(rows)
