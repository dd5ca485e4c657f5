"""Nodes: one activation at one semantic position of an IOI prompt (Makelov et al. 2024).

A :class:`Node` is a head activation (``q``, ``k``, ``v`` or ``z`` of one head, or ``z`` of all
heads concatenated as sae-lens's attention SAEs see it) or a residual / attention / MLP output,
read at a semantic position (IO, S1, S1+1, S2, END) that is looked up *per prompt*: positions
differ between ABB and BAB prompts, so no fixed column is ever assumed.

Nodes come from a circuit (:func:`circuit_nodes`): each role maps to the activations Makelov et
al. study for it, and nodes group into **cross-sections** (role x attribute) that are
edited jointly. :func:`node_acts` reads many nodes in one forward pass; :func:`run_with_nodes`
replaces them (with fixed values or with a function of the value flowing through) inside a
scope that removes every hook, even after an exception.

See ``docs/makelov2024_supervised_dictionaries.md`` for the method and where saetools differs from
the authors' code.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from saetools.hooks import check_hook_names
from saetools.tasks import ioi

__all__ = [
    "attribute_patching",
    "ROLE_NODES",
    "CrossSection",
    "Node",
    "NodeRunner",
    "circuit_nodes",
    "cross_sections",
    "end_logits_with_nodes",
    "node_acts",
    "run_with_nodes",
]

Kind = Literal["q", "k", "v", "z", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]
_HEAD_KINDS = ("q", "k", "v", "z")
Replacement = Tensor | Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Node:
    """One activation at one semantic position, per prompt.

    ``head=None`` on a ``z`` node means all heads concatenated (``n_heads * d_head``), the
    input of sae-lens's ``hook_z`` attention SAEs; on ``q``/``k``/``v`` a head is required.
    """

    layer: int
    kind: Kind
    position: str
    head: int | None = None

    def __post_init__(self):
        if self.kind not in Kind.__args__:
            raise ValueError(f"Node.kind must be one of {Kind.__args__}, got {self.kind!r}")
        if self.position not in ioi.POSITIONS:
            raise ValueError(f"Node.position must be one of {ioi.POSITIONS}, got {self.position!r}")
        if self.kind in ("q", "k", "v") and self.head is None:
            raise ValueError(f"a {self.kind!r} node needs a head")
        if self.kind not in _HEAD_KINDS and self.head is not None:
            raise ValueError(f"a {self.kind!r} node has no head (got head={self.head})")

    @property
    def hook_name(self) -> str:
        """The TransformerLens hook point this node reads."""
        if self.kind in _HEAD_KINDS:
            return f"blocks.{self.layer}.attn.hook_{self.kind}"
        return f"blocks.{self.layer}.hook_{self.kind}"

    @property
    def label(self) -> str:
        """Short name, e.g. ``"L2H1.z@END"`` or ``"L3.resid_post@END"``."""
        unit = f"L{self.layer}" + (f"H{self.head}" if self.head is not None else "")
        return f"{unit}.{self.kind}@{self.position}"

    def __str__(self) -> str:
        return self.label

    def dim(self, model) -> int:
        """Width of the node's vectors for ``model``."""
        if self.kind in _HEAD_KINDS:
            return model.cfg.d_head * (1 if self.head is not None else model.cfg.n_heads)
        return model.cfg.d_model

    def check(self, model) -> None:
        """Raise a clear error when ``model`` has no such hook or head."""
        check_hook_names(model, [self.hook_name])
        if self.head is not None and not 0 <= self.head < model.cfg.n_heads:
            raise ValueError(f"{self.label}: head {self.head} out of range (model has {model.cfg.n_heads} heads)")

    def _index(self, act: Tensor, batch: ioi.IOIBatch):
        rows = torch.arange(act.shape[0], device=act.device)
        pos = batch.positions[self.position].to(act.device)
        return (rows, pos) if self.head is None else (rows, pos, self.head)

    def read(self, act: Tensor, batch: ioi.IOIBatch) -> Float[Tensor, "batch d"]:
        """This node's vectors from the hook's full activation ``act``."""
        out = act[self._index(act, batch)]
        return out.flatten(1) if out.ndim == 3 else out

    def write(self, act: Tensor, batch: ioi.IOIBatch, value: Tensor) -> Tensor:
        """``act`` with this node's vectors replaced by ``value`` (in place; returns ``act``)."""
        idx = self._index(act, batch)
        act[idx] = value.to(act.device, act.dtype).reshape(act[idx].shape)
        return act


@dataclass(frozen=True)
class CrossSection:
    """Nodes edited together for one attribute (e.g. "IO in name-mover out")."""

    name: str
    attribute: str
    """``"io"``, ``"s"`` or ``"pos"`` (see :data:`saetools.tasks.ioi.ATTRIBUTES`)."""
    nodes: tuple[Node, ...]


# Makelov et al.'s nodes per role: (kind, position) pairs, and which attributes each
# role's nodes are edited for. ``s_suppression`` (our role for heads that attend END -> S and
# write against S, the bundled model's mechanism) and ``io_mover`` (heads that carry IO to END
# without a direct effect) are read like name movers.
ROLE_NODES: dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, ...]]] = {
    "name_mover": ((("z", "END"), ("q", "END")), ("io", "s", "pos")),
    "backup_name_mover": ((("z", "END"), ("q", "END")), ("io", "s", "pos")),
    "negative_name_mover": ((("z", "END"), ("q", "END")), ("io", "s", "pos")),
    "io_mover": ((("z", "END"),), ("io", "pos")),
    "s_suppression": ((("z", "END"),), ("s", "pos")),
    "s_inhibition": ((("z", "END"), ("v", "S2")), ("s", "pos")),
    "induction": ((("z", "S2"),), ("s", "pos")),
    "duplicate_token": ((("z", "S2"),), ("s", "pos")),
}


def circuit_nodes(circuit, roles: Sequence[str] | None = None) -> dict[str, tuple[Node, ...]]:
    """Nodes of each role of ``circuit`` (a :class:`saetools.circuits.Circuit`), per :data:`ROLE_NODES`.

    Roles without Makelov nodes (e.g. previous-token heads) and empty roles are left out.
    """
    out = {}
    for role, heads in circuit.roles.items():
        if (roles is not None and role not in roles) or role not in ROLE_NODES or not heads:
            continue
        kinds = ROLE_NODES[role][0]
        out[role] = tuple(Node(l, k, p, h) for (l, h) in heads for k, p in kinds)
    return out


def cross_sections(circuit, roles: Sequence[str] | None = None, *, kinds: Sequence[str] = ("z",)) -> list[CrossSection]:
    """Cross-sections (role x attribute) of ``circuit``: the nodes of a role of the given kinds,
    once per attribute that role's nodes carry (:data:`ROLE_NODES`)."""
    out = []
    for role, nodes in circuit_nodes(circuit, roles).items():
        for kind in kinds:
            sel = tuple(n for n in nodes if n.kind == kind)
            if not sel:
                continue
            for attr in ROLE_NODES[role][1]:
                out.append(CrossSection(f"{attr.upper()} in {role} {kind}", attr, sel))
    return out


def _stop_layer(nodes: Sequence[Node]) -> int:
    """Run the blocks up to the last node's layer only (never the unembedding: a node in the
    last block would otherwise compute every prompt's full-vocabulary logits)."""
    return max(n.layer for n in nodes) + 1


@torch.no_grad()
def node_acts(model, batch: ioi.IOIBatch, nodes: Sequence[Node], *, batch_size: int = 512) -> dict[Node, Float[Tensor, "batch d"]]:
    """Every node's vectors over the prompts of ``batch`` (float32, on the CPU): one forward pass
    per ``batch_size`` prompts, through the blocks up to the last node's layer."""
    nodes = list(dict.fromkeys(nodes))
    for n in nodes:
        n.check(model)
    hooks = sorted({n.hook_name for n in nodes})
    out: dict[Node, list[Tensor]] = {n: [] for n in nodes}
    stop = _stop_layer(nodes)
    for i in range(0, len(batch), batch_size):
        sub = batch[i : i + batch_size]
        _, cache = model.run_with_cache(sub.tokens.to(model.cfg.device), names_filter=hooks, stop_at_layer=stop)
        for n in nodes:
            out[n].append(n.read(cache[n.hook_name], sub).float().cpu())
    return {n: torch.cat(v) for n, v in out.items()}


def _hooks(batch: ioi.IOIBatch, replacements: Mapping[Node, Replacement]) -> list[tuple[str, Callable]]:
    by_hook: dict[str, list[tuple[Node, Replacement]]] = defaultdict(list)
    for node, rep in replacements.items():
        by_hook[node.hook_name].append((node, rep))

    def make(items):
        def hook(act, hook):
            for node, rep in items:
                value = rep(node.read(act, batch).float()) if callable(rep) else rep.to(act.device)
                node.write(act, batch, value)
            return act
        return hook

    return [(name, make(items)) for name, items in by_hook.items()]


def run_with_nodes(model, batch: ioi.IOIBatch, replacements: Mapping[Node, Replacement]) -> Float[Tensor, "batch pos vocab"]:
    """Logits of ``batch`` with node values replaced.

    Each replacement is either a tensor ``[batch, d]`` (the node's new vectors, e.g. a
    counterfactual activation or a supervised edit) or a function ``[batch, d] -> [batch, d]``
    applied to the value flowing through that node in *this* run (e.g. an SAE reconstruction).
    Hooks are attached only for the call and removed even after an exception.
    """
    for node, rep in replacements.items():
        node.check(model)
        if not callable(rep) and tuple(rep.shape) != (len(batch), node.dim(model)):
            raise ValueError(f"replacement for {node.label} has shape {tuple(rep.shape)}; "
                             f"expected ({len(batch)}, {node.dim(model)})")
    with torch.no_grad(), model.hooks(fwd_hooks=_hooks(batch, replacements)):
        return model(batch.tokens.to(model.cfg.device))


class NodeRunner:
    """END logits of one batch under many node replacements (the hot path of every evaluation).

    When every replaced node sits at END and all prompts have the same END (Makelov et al.'s
    equal-length prompts), nothing before END can change: the clean keys and values of the
    prefix are computed once (a frozen TransformerLens key-value cache per chunk of
    ``batch_size`` prompts) and each call runs the END token alone, about ``seq_len`` times
    cheaper. Otherwise each call is a full forward pass. Both paths give the same logits
    (tested); hooks are scoped to each call.
    """

    def __init__(self, model, batch: ioi.IOIBatch, *, batch_size: int = 512):
        self.model, self.batch, self.batch_size = model, batch, batch_size
        end = batch.positions["END"]
        self._end = int(end[0]) if len(batch) and bool((end == end[0]).all()) else None
        self._caches: list | None = None

    def _suffix_caches(self):
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        if self._caches is None:
            self._caches = []
            dev = self.model.cfg.device
            for i in range(0, len(self.batch), self.batch_size):
                prefix = self.batch.tokens[i : i + self.batch_size, : self._end].to(dev)
                cache = TransformerLensKeyValueCache.init_cache(self.model.cfg, dev, prefix.shape[0])
                with torch.no_grad():
                    self.model(prefix, past_kv_cache=cache)
                cache.freeze()
                self._caches.append(cache)
        return self._caches

    def _suffix_batch(self, sub: ioi.IOIBatch) -> ioi.IOIBatch:
        pos = {k: (torch.zeros_like(v) if k == "END" else torch.full_like(v, -1)) for k, v in sub.positions.items()}
        return ioi.IOIBatch(sub.spec, sub.texts, sub.tokens[:, self._end : self._end + 1], sub.io_ids, sub.s_ids, pos)

    @torch.no_grad()
    def __call__(self, replacements: Mapping[Node, Replacement] | None = None) -> Float[Tensor, "batch vocab"]:
        """END logits with ``replacements`` (see :func:`run_with_nodes`)."""
        replacements = dict(replacements or {})
        for node, rep in replacements.items():
            node.check(self.model)
            if not callable(rep) and tuple(rep.shape) != (len(self.batch), node.dim(self.model)):
                raise ValueError(f"replacement for {node.label} has shape {tuple(rep.shape)}; "
                                 f"expected ({len(self.batch)}, {node.dim(self.model)})")
        fast = self._end is not None and all(n.position == "END" for n in replacements)
        caches = self._suffix_caches() if fast else None  # built before any hook is attached
        outs = []
        for c, i in enumerate(range(0, len(self.batch), self.batch_size)):
            sl = slice(i, i + self.batch_size)
            sub = self.batch[sl]
            reps = {n: (r if callable(r) else r[sl]) for n, r in replacements.items()}
            if fast:
                suffix = self._suffix_batch(sub)
                with self.model.hooks(fwd_hooks=_hooks(suffix, reps)):
                    logits = self.model(suffix.tokens.to(self.model.cfg.device), past_kv_cache=caches[c])
                outs.append(logits[:, 0].float().cpu())
            else:
                outs.append(ioi.end_logits(run_with_nodes(self.model, sub, reps), sub).float().cpu())
        return torch.cat(outs)


def end_logits_with_nodes(model, batch: ioi.IOIBatch, replacements: Mapping[Node, Replacement], *,
                          batch_size: int = 512) -> Float[Tensor, "batch vocab"]:
    """END logits of :func:`run_with_nodes`, in chunks of ``batch_size`` prompts (fixed
    replacement tensors are sliced with the prompts). For many calls on one batch use a
    :class:`NodeRunner`, which reuses the clean prefix."""
    return NodeRunner(model, batch, batch_size=batch_size)(replacements)


@torch.no_grad()
def attribute_patching(model, batch: ioi.IOIBatch, attribute: str, *, position: str = "END", seed: int = 0,
                       names: Sequence[str] | None = None) -> pd.DataFrame:
    """Which heads carry an attribute: patch one head's ``z`` at ``position`` from the
    counterfactual prompt that changes ``attribute`` (``"io"``, ``"s"`` or ``"pos"``,
    :func:`saetools.tasks.ioi.counterfactual`), one head at a time, batched over prompts.

    Uses :class:`NodeRunner`, so with equal-length prompts and
    ``position="END"`` each patch re-runs only the END token.

    Returns:
        One row per head: ``layer, head, changed`` (fraction of prompts whose top END prediction
        changes), ``logit_diff`` (mean clean-answer logit difference after the patch) and
        ``logit_diff_clean``. Heads with a large ``changed`` but no direct effect on the logits
        carry the attribute to later components (e.g. the bundled model's IO movers).
    """
    if attribute not in ioi.ATTRIBUTES:
        raise ValueError(f"attribute must be one of {ioi.ATTRIBUTES}, got {attribute!r}")
    if position not in ioi.POSITIONS:
        raise ValueError(f"position must be one of {ioi.POSITIONS}, got {position!r}")
    names = names if names is not None else ioi.default_words("names", model)
    cf = ioi.render(model, ioi.counterfactual(batch.spec, attribute, seed=seed, names=names))
    if cf.tokens.shape != batch.tokens.shape:
        raise ValueError("counterfactual prompts tokenize to a different layout; use single-token words")
    heads = [Node(l, "z", position, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    src = node_acts(model, cf, heads)
    runner = NodeRunner(model, batch)
    clean_end = runner({})

    def ld(end):
        return float(ioi.end_logit_diff(end, batch).mean())

    out = []
    for node in heads:
        end = runner({node: src[node]})
        out.append({"layer": node.layer, "head": node.head,
                    "changed": float((end.argmax(-1) != clean_end.argmax(-1)).float().mean()),
                    "logit_diff": ld(end), "logit_diff_clean": ld(clean_end)})
    return pd.DataFrame(out)
