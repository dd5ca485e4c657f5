"""The model side of the IOI panel: run a typed prompt with heads ablated, return plain data.

:class:`saetools.widgets.ioi_panel.IOIPanel` stays free of model code (widgets are
functions of data); it calls :meth:`IOIBackend.run` and draws the :class:`IOIRun` it returns.
Ablation is mean ablation over the ABC distribution (Wang et al. 2022), averaged over
prompts *and positions*, so that it applies to a prompt of any length (the per-template,
per-position means of :mod:`saetools.circuits.ablation` need a known template).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from saetools.circuits import ablation, patching
from saetools.hooks import check_heads, scoped_hooks
from saetools.tasks import ioi

__all__ = ["IOIRun", "IOIBackend"]

Head = tuple[int, int]


@dataclass(frozen=True)
class IOIRun:
    """One prompt run through the model (what the panel draws)."""

    text: str
    str_tokens: list[str]
    """The prompt's tokens as strings (BOS first)."""
    io: str | None
    """The indirect object (the name that occurs once), if the prompt has one."""
    s: str | None
    """The subject (the name that occurs twice), if the prompt has one."""
    logit_diff: float
    """``logit(IO) - logit(S)`` at the last position (NaN without IO and S)."""
    top: pd.DataFrame
    """Top next-token predictions: ``token, logit, prob``."""
    patterns: Tensor
    """Attention patterns ``[layer, head, query_pos, key_pos]``."""
    ablated: tuple[Head, ...]


class IOIBackend:
    """Runs IOI prompts for :class:`~saetools.widgets.ioi_panel.IOIPanel`.

    Args:
        model: a TransformerLens model with a tokenizer.
        batch: IOI prompts; the first ``n_examples`` are offered in the panel, and the ABC
            counterpart of the batch is the mean-ablation reference.
        n_examples: number of example prompts.
        top_k: number of top predictions returned.
        seed: seed of the ABC reference.
    """

    def __init__(self, model, batch: ioi.IOIBatch, *, n_examples: int = 8, top_k: int = 8, seed: int = 0):
        self.model, self.top_k = model, top_k
        self.examples: list[str] = list(batch.texts[:n_examples])
        self.n_layers, self.n_heads = model.cfg.n_layers, model.cfg.n_heads
        self.names = set(ioi.default_words("names", model))
        reference = patching.default_corruption(model, batch, seed=seed)
        with torch.no_grad():
            names = [f"blocks.{l}.attn.hook_z" for l in range(self.n_layers)]
            _, cache = model.run_with_cache(reference.tokens, names_filter=lambda n: n in names)
        real = torch.arange(reference.tokens.shape[1])[None, :] <= reference.positions["END"][:, None]
        w = real.to(cache[names[0]].dtype)[:, :, None, None].to(cache[names[0]].device)
        # Mean over prompts and real (unpadded) positions: [1, 1, head, d_head] per layer.
        self.means = {l: ((cache[n] * w).sum((0, 1)) / w.sum((0, 1)))[None, None] for l, n in enumerate(names)}

    def _answers(self, str_tokens: Sequence[str]) -> tuple[str | None, str | None]:
        counts = Counter(t.strip() for t in str_tokens if t.startswith(" ") and t.strip() in self.names)
        s = next((n for n, c in counts.items() if c >= 2), None)
        io = next((n for n, c in counts.items() if c == 1), None)
        return (io, s) if io and s else (None, None)

    @torch.no_grad()
    def run(self, text: str, ablated: Sequence[Head] = ()) -> IOIRun:
        """Run ``text`` with ``ablated`` heads mean-ablated; the answer names are inferred."""
        text = text.rstrip()
        if not text:
            raise ValueError("empty prompt: type an IOI prompt such as "
                             "'Then, Mary and John went to the store. John gave a ring to'")
        ablated = tuple((int(l), int(h)) for l, h in ablated)
        check_heads(self.model, ablated)
        tokens = self.model.to_tokens(text, prepend_bos=True)
        pat_names = [f"blocks.{l}.attn.hook_pattern" for l in range(self.n_layers)]
        store: dict[str, Tensor] = {}

        def keep(act, hook):
            store[hook.name] = act[0].detach().cpu()

        hooks = ablation.head_ablation_hooks(ablated, self.means) + [(n, keep) for n in pat_names]
        with scoped_hooks(self.model, hooks):
            logits = self.model(tokens)[0, -1].float().cpu()
        str_tokens = self.model.to_str_tokens(tokens[0])
        io, s = self._answers(str_tokens[1:])
        ld = float("nan")
        if io is not None:
            tid = [self.model.to_single_token(" " + n) for n in (io, s)]
            ld = float(logits[tid[0]] - logits[tid[1]])
        probs = logits.softmax(-1)
        top = torch.topk(logits, self.top_k)
        table = pd.DataFrame({
            "token": [self.model.tokenizer.decode([int(i)]) for i in top.indices],
            "logit": top.values.numpy(), "prob": probs[top.indices].numpy(),
        })
        patterns = torch.stack([store[n] for n in pat_names])
        return IOIRun(text, list(str_tokens), io, s, ld, table, patterns, ablated)
