"""Activation patching and path patching on IOI, vectorised over prompts.

Implements the interventions of Wang et al. (2022, "Interpretability in the Wild", §3 and
Appendix B) in the form ARENA and Makelov et al. (2024) use them (``docs/wang2022_ioi.md``):

* **activation patching** of the residual stream (layer x semantic position), of head outputs
  (``hook_z``) and of head queries / keys / values (``hook_q|k|v``);
* **path patching** from sender heads to receivers: the receivers' q / k / v inputs, or the
  logits (the senders' direct effect).

Every function takes a *clean* batch and a *corrupted* batch with the same token layout (the
default corruption is the ABC counterpart of :func:`saetools.circuits.ablation.abc_counterpart`; any
:func:`saetools.tasks.ioi.counterfactual` works). Semantic positions are looked up *per
prompt*, in each batch separately, so ABB and BAB prompts are patched at the right tokens even
when the corrupted prompt swaps them. Prompts are batched: there is a Python loop over layers
and heads, never over prompts.

Direction: ``"denoise"`` runs the corrupted prompts and patches in clean activations (is the
component *sufficient* to restore the behaviour?); ``"noise"`` runs the clean prompts and
patches in corrupted activations (is it *necessary*?). Either way the reported ``score`` is
:func:`saetools.tasks.ioi.normalized_score` of the mean logit difference ``logit(IO) -
logit(S)`` (the clean prompt's names), with clean = 1 and corrupted = 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from saetools.circuits import incremental
from saetools.circuits.ablation import abc_counterpart
from saetools.hooks import check_heads, scoped_hooks
from saetools.tasks import ioi

__all__ = [
    "Head",
    "default_corruption",
    "patch_resid",
    "patch_heads",
    "path_patch",
]

Head = tuple[int, int]
Direction = Literal["denoise", "noise"]
Component = Literal["z", "q", "k", "v"]
ALL = "all"
"""Position label meaning every position of the sequence."""


def default_corruption(model, clean: ioi.IOIBatch, *, seed: int = 0) -> ioi.IOIBatch:
    """The ABC counterpart of ``clean`` (S2 replaced by a third name), rendered for ``model``."""
    names = ioi.default_words("names", model)
    return ioi.render(model, abc_counterpart(clean.spec, seed=seed, names=names))


def _check_pair(model, clean: ioi.IOIBatch, corrupted: ioi.IOIBatch | None, seed: int) -> ioi.IOIBatch:
    if corrupted is None:
        return default_corruption(model, clean, seed=seed)
    if corrupted.tokens.shape != clean.tokens.shape:
        raise ValueError(
            f"corrupted tokens have shape {tuple(corrupted.tokens.shape)} but clean tokens have "
            f"{tuple(clean.tokens.shape)}: patching needs the same token layout. Build the "
            "corrupted batch from the clean spec (ablation.abc_counterpart or ioi.counterfactual) "
            "with single-token names, and render both with the same model."
        )
    return corrupted


def _check_direction(direction: str) -> None:
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}")


def _pos_index(batch: ioi.IOIBatch, position: str, device) -> Tensor | None:
    """Per-prompt index of a semantic position (``None`` for every position)."""
    if position == ALL:
        return None
    if position not in batch.positions:
        raise ValueError(f"unknown position {position!r}; use one of {list(ioi.POSITIONS)} or 'all'")
    return batch.positions[position].to(device)


def _copy_hook(src: Tensor, base_pos: Tensor | None, src_pos: Tensor | None, heads=None):
    """Hook writing ``src`` into the activation at the given per-prompt positions (and heads).

    ``base_pos`` / ``src_pos`` index the running and the source activation separately, so a
    semantic position is matched even when the two batches place it at different tokens.
    """
    idx_h = () if heads is None else (torch.as_tensor(heads, dtype=torch.long),)

    def hook(act: Tensor, hook) -> Tensor:
        act = act.clone()
        if base_pos is None:
            act[(slice(None), slice(None), *idx_h)] = src[(slice(None), slice(None), *idx_h)].to(act.dtype)
        elif heads is None:
            rows = torch.arange(act.shape[0], device=act.device)
            act[rows, base_pos] = src[rows, src_pos].to(act.dtype)
        else:
            rows = torch.arange(act.shape[0], device=act.device)[:, None]
            h = idx_h[0].to(act.device)[None, :]
            act[rows, base_pos[:, None], h] = src[rows, src_pos[:, None], h].to(act.dtype)
        return act

    return hook


def _run_ld(model, base: ioi.IOIBatch, hooks, *, start_resid: Tensor | None = None, start_layer: int = 0) -> Tensor:
    """Per-prompt logit difference of ``base`` under ``hooks`` (scoped; removed even on error).

    With ``start_resid`` the run starts at ``blocks.{start_layer}`` from that cached residual
    stream (activations before a patch do not change, so they need not be recomputed).
    """
    left = getattr(model.tokenizer, "padding_side", "right") == "left"
    with scoped_hooks(model, hooks):
        if start_resid is None or start_layer == 0 or left:
            resid = model(base.tokens, stop_at_layer=model.cfg.n_layers)
        else:
            resid = model(start_resid, start_at_layer=start_layer, stop_at_layer=model.cfg.n_layers)
    return ioi.logit_diff_from_resid(model, resid, base)


def _with_answers(batch: ioi.IOIBatch, clean: ioi.IOIBatch) -> ioi.IOIBatch:
    """``batch`` scored with the clean prompts' answers (the metric is always clean IO vs S)."""
    return ioi.IOIBatch(batch.spec, batch.texts, batch.tokens, clean.io_ids, clean.s_ids, batch.positions)


class _Runs:
    """Clean and corrupted runs of one patching call: caches, baselines, base / source sides."""

    def __init__(self, model, clean, corrupted, names: Sequence[str], direction: Direction):
        _check_direction(direction)
        self.model, self.clean, self.corrupted, self.direction = model, clean, corrupted, direction
        keep = set(names)
        caches = {}
        for key, batch in (("clean", clean), ("corrupted", corrupted)):
            resid, cache = model.run_with_cache(
                batch.tokens, names_filter=lambda n: n in keep, stop_at_layer=model.cfg.n_layers
            )
            caches[key] = (cache, ioi.logit_diff_from_resid(model, resid, _with_answers(batch, clean)))
        self.clean_ld = float(caches["clean"][1].mean())
        self.corrupted_ld = float(caches["corrupted"][1].mean())
        base, source = ("corrupted", "clean") if direction == "denoise" else ("clean", "corrupted")
        self.base_cache, self.source_cache = caches[base][0], caches[source][0]
        self.base_batch = corrupted if direction == "denoise" else clean
        self.source_batch = clean if direction == "denoise" else corrupted
        self.metric_batch = _with_answers(self.base_batch, clean)

    def positions(self, position: str):
        dev = self.model.W_U.device
        return _pos_index(self.base_batch, position, dev), _pos_index(self.source_batch, position, dev)

    def ld(self, hooks, layer: int) -> float:
        start = self.base_cache[f"blocks.{layer}.hook_resid_pre"]
        return float(_run_ld(self.model, self.metric_batch, hooks, start_resid=start, start_layer=layer).mean())

    def frame(self, rows: list[dict]) -> pd.DataFrame:
        return _frame(rows, self.clean_ld, self.corrupted_ld, self.direction)


def _frame(rows: list[dict], clean_ld: float, corrupted_ld: float, direction: str) -> pd.DataFrame:
    """Tidy table of patching results with the normalised ``score`` and the baselines in ``attrs``."""
    df = pd.DataFrame(rows)
    df["score"] = ioi.normalized_score(
        torch.tensor(df["logit_diff"].to_numpy()), clean=clean_ld, corrupted=corrupted_ld
    ).numpy()
    df.attrs.update(clean_logit_diff=clean_ld, corrupted_logit_diff=corrupted_ld, direction=direction)
    return df


def _as_positions(positions) -> list[str]:
    return [positions] if isinstance(positions, str) else list(positions)


@torch.no_grad()
def patch_resid(
    model, clean: ioi.IOIBatch, corrupted: ioi.IOIBatch | None = None, *,
    positions: str | Sequence[str] = ioi.POSITIONS, direction: Direction = "denoise", seed: int = 0,
) -> pd.DataFrame:
    """Patch ``blocks.L.hook_resid_pre`` at each layer x semantic position.

    Args:
        model: a TransformerLens model.
        clean: the clean prompts.
        corrupted: prompts with the same token layout (default: the ABC counterpart).
        positions: semantic positions (:data:`saetools.tasks.ioi.POSITIONS`) and/or ``"all"``.
        direction: ``"denoise"`` (corrupted run, clean patch) or ``"noise"``.
        seed: seed of the default corruption.

    Returns:
        Tidy table, one row per (layer, position): ``layer, position, logit_diff, score``.
        ``attrs`` hold the clean / corrupted mean logit differences and the direction.
    """
    corrupted = _check_pair(model, clean, corrupted, seed)
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)]
    runs = _Runs(model, clean, corrupted, names, direction)
    rows = []
    for layer in tqdm(range(model.cfg.n_layers), desc="resid patching", leave=False):
        for position in _as_positions(positions):
            base_pos, src_pos = runs.positions(position)
            hook = _copy_hook(runs.source_cache[names[layer]], base_pos, src_pos)
            rows.append({"layer": layer, "position": position,
                         "logit_diff": runs.ld([(names[layer], hook)], layer)})
    return runs.frame(rows)


@torch.no_grad()
def patch_heads(
    model, clean: ioi.IOIBatch, corrupted: ioi.IOIBatch | None = None, *,
    component: Component = "z", positions: str | Sequence[str] = ALL,
    heads: Sequence[Head] | None = None, direction: Direction = "denoise", seed: int = 0,
) -> pd.DataFrame:
    """Patch each head's output (``z``) or query / key / value, one head at a time.

    Args:
        model: a TransformerLens model.
        clean: the clean prompts.
        corrupted: prompts with the same token layout (default: the ABC counterpart).
        component: ``"z"`` (head output), ``"q"``, ``"k"`` or ``"v"``.
        positions: ``"all"`` (the whole sequence, default) and/or semantic positions.
        heads: heads to patch (default: every head).
        direction: ``"denoise"`` (corrupted run, clean patch) or ``"noise"``.
        seed: seed of the default corruption.

    Returns:
        Tidy table, one row per (head, position):
        ``layer, head, component, position, logit_diff, score``.
    """
    if component not in ("z", "q", "k", "v"):
        raise ValueError(f"component must be 'z', 'q', 'k' or 'v', got {component!r}")
    corrupted = _check_pair(model, clean, corrupted, seed)
    heads = _all_heads(model) if heads is None else [(int(l), int(h)) for l, h in heads]
    check_heads(model, heads)
    if incremental.unsupported(model) is None:
        return _patch_heads_incremental(model, clean, corrupted, component, _as_positions(positions), heads, direction)
    hook_of = {layer: f"blocks.{layer}.attn.hook_{component}" for layer, _ in heads}
    names = list(hook_of.values()) + [f"blocks.{layer}.hook_resid_pre" for layer in hook_of]
    runs = _Runs(model, clean, corrupted, names, direction)
    rows = []
    for layer, head in tqdm(heads, desc=f"{component} patching", leave=False):
        for position in _as_positions(positions):
            base_pos, src_pos = runs.positions(position)
            hook = _copy_hook(runs.source_cache[hook_of[layer]], base_pos, src_pos, heads=[head])
            rows.append({"layer": layer, "head": head, "component": component, "position": position,
                         "logit_diff": runs.ld([(hook_of[layer], hook)], layer)})
    return runs.frame(rows)


def _patch_heads_incremental(model, clean, corrupted, component, positions, heads, direction) -> pd.DataFrame:
    """:func:`patch_heads` rerunning only what each patch can change (:mod:`saetools.circuits.incremental`).

    One run of the clean prompts up to END; the corrupted cache reruns only from the first
    token where the prompts differ; each head patch reruns its layer and the later ones only from the
    first position where the patched activation differs from the base run, up to END.
    """
    _check_direction(direction)
    n = model.cfg.n_layers
    dev = model.W_U.device
    end_clean, end_corr = clean.positions["END"].to(dev), corrupted.positions["END"].to(dev)
    end = torch.maximum(end_clean, end_corr)
    cache_clean = incremental.full_cache(model, clean.tokens.to(dev), end)
    cache_corr = incremental.counterpart_cache(model, cache_clean, clean.tokens.to(dev), corrupted.tokens.to(dev), end)
    resid = cache_clean[f"blocks.{n - 1}.hook_resid_post"]
    clean_ld = float(ioi.logit_diff_from_resid(model, resid, clean).mean())
    corrupted_ld = float(ioi.logit_diff_from_resid(model, cache_corr[f"blocks.{n - 1}.hook_resid_post"],
                                        _with_answers(corrupted, clean)).mean())
    if direction == "denoise":
        base, base_batch, src, src_batch = cache_corr, corrupted, cache_clean, clean
    else:
        base, base_batch, src, src_batch = cache_clean, clean, cache_corr, corrupted
    end = base_batch.positions["END"].to(dev)
    after_end = torch.arange(clean.tokens.shape[1], device=dev)[None, :] > end[:, None]
    rows = []
    for layer, head in tqdm(heads, desc=f"{component} patching", leave=False):
        name = f"blocks.{layer}.attn.hook_{component}"
        for position in positions:
            base_pos, src_pos = _pos_index(base_batch, position, dev), _pos_index(src_batch, position, dev)
            patched = _copy_hook(src[name], base_pos, src_pos, heads=[head])(base[name], None)
            # Rerun from the first position the patch changes (bit-exact comparison: positions
            # before the prompts diverge are shared by both caches).
            changed = (patched[:, :, head] != base[name][:, :, head]).any(-1) & ~after_end
            start = torch.where(changed.any(1), changed.float().argmax(1), end)
            w = incremental.window(start if layer < n - 1 else end, end)
            x = incremental.forward_from(model, base, layer, w, override={name: patched})
            rows.append({"layer": layer, "head": head, "component": component, "position": position,
                         "logit_diff": float(ioi.end_resid_logit_diff(model, x, clean).mean())})
    return _frame(rows, clean_ld, corrupted_ld, direction)


def _all_heads(model) -> list[Head]:
    return [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]


@torch.no_grad()
def path_patch(
    model, clean: ioi.IOIBatch, corrupted: ioi.IOIBatch | None = None, *,
    receivers: Sequence[Head] | Literal["logits"] = "logits",
    receiver_input: Literal["q", "k", "v"] = "q", receiver_position: str = "END",
    senders: Sequence[Head] | None = None, direction: Direction = "noise", seed: int = 0,
) -> pd.DataFrame:
    """Path patching (Wang et al. 2022, §3.1): the effect of each sender through one path only.

    For each sender head: (1) run the base prompts with the sender's ``z`` taken from the
    source run and every other head frozen at its base value (MLPs recompute), and record the
    receivers' inputs; (2) run the base prompts again with only the receivers' inputs replaced
    by those values. With ``receivers="logits"`` step (1) already gives the answer: the
    sender's direct effect on the logit difference.

    Args:
        model: a TransformerLens model.
        clean: the clean prompts.
        corrupted: prompts with the same token layout (default: the ABC counterpart).
        receivers: receiver heads, or ``"logits"``.
        receiver_input: which input of the receivers is patched: ``"q"``, ``"k"`` or ``"v"``.
        receiver_position: semantic position of the receivers' input, or ``"all"``.
        senders: sender heads (default: every head in a layer before the last receiver).
        direction: ``"noise"`` (Wang et al.: clean run, corrupted sender) or ``"denoise"``.
        seed: seed of the default corruption.

    Returns:
        Tidy table, one row per sender: ``layer, head, logit_diff, score``.
    """
    corrupted = _check_pair(model, clean, corrupted, seed)
    n_layers = model.cfg.n_layers
    to_logits = isinstance(receivers, str)
    if to_logits and receivers != "logits":
        raise ValueError(f"receivers must be a list of (layer, head) or 'logits', got {receivers!r}")
    if receiver_input not in ("q", "k", "v"):
        raise ValueError(f"receiver_input must be 'q', 'k' or 'v', got {receiver_input!r}")
    recv = [] if to_logits else [(int(l), int(h)) for l, h in receivers]
    check_heads(model, recv)
    last = n_layers if to_logits else max(l for l, _ in recv)
    if senders is None:
        senders = [(l, h) for l, h in _all_heads(model) if l < last]
    senders = [(int(l), int(h)) for l, h in senders]
    check_heads(model, senders)
    too_late = [(l, h) for l, h in senders if not to_logits and l >= last]
    if too_late:
        raise ValueError(f"senders {too_late} are not before the last receiver layer {last}")
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    resid_names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
    out_names = [f"blocks.{layer}.hook_attn_out" for layer in range(n_layers)] if to_logits else []
    runs = _Runs(model, clean, corrupted, z_names + resid_names + out_names, direction)
    if to_logits and incremental.unsupported(model) is None:
        rows = [{"layer": l, "head": h, "logit_diff": ld} for (l, h), ld in zip(senders, _direct_effects(runs, senders))]
        return runs.frame(rows)
    base_pos, src_pos = runs.positions(receiver_position)
    rows = []
    for layer, head in tqdm(senders, desc="path patching", leave=False):
        freeze = []
        # Freeze every head from the sender's layer on; the sender carries the source value.
        for other in range(layer, n_layers if to_logits else last + 1):
            frozen = runs.base_cache[z_names[other]].clone()
            if other == layer:
                frozen[:, :, head] = runs.source_cache[z_names[layer]][:, :, head]
            freeze.append((z_names[other], _copy_hook(frozen, None, None)))
        # Nothing before the sender's layer changes: every run starts there, from the cache.
        if to_logits:
            ld = runs.ld(freeze, layer)
        else:
            ld = _receiver_step(runs, freeze, recv, receiver_input, base_pos, last, layer)
        rows.append({"layer": layer, "head": head, "logit_diff": ld})
    return runs.frame(rows)


def _direct_effects(runs: _Runs, senders: Sequence[Head]) -> list[float]:
    """Path patching to the logits without hooked runs: once every head from the sender's layer
    on is frozen, positions no longer interact (attention outputs are fixed), so only END
    changes, and only through the MLPs. For each sender: END's residual stream at its layer,
    plus the sender's change of ``z`` through ``W_O``, then each later block's frozen attention
    output and recomputed MLP. Equal to the hooked runs up to float rounding (``tests``)."""
    model, batch = runs.model, runs.metric_batch
    base, source = runs.base_cache, runs.source_cache
    end = batch.positions["END"].to(model.W_U.device)
    rows = torch.arange(len(batch), device=end.device)
    by_layer: dict[int, list[int]] = {}
    for layer, head in senders:
        by_layer.setdefault(layer, []).append(head)
    effects = {}
    for layer, heads in by_layer.items():
        zn = f"blocks.{layer}.attn.hook_z"
        h = torch.tensor(heads, device=end.device)
        dz = source[zn][rows, end][:, h] - base[zn][rows, end][:, h]  # [batch, senders, d_head]
        w_o = model.blocks[layer].attn.W_O[h]  # [senders, d_head, d_model]
        x = base[f"blocks.{layer}.hook_resid_pre"][rows, end][None] + torch.einsum("bsd,sdm->sbm", dz, w_o)
        x = x.reshape(-1, x.shape[-1])  # [senders * batch, d_model]
        for later in range(layer, model.cfg.n_layers):
            block = model.blocks[later]
            mid = x + base[f"blocks.{later}.hook_attn_out"][rows, end].repeat(len(heads), 1)
            x = mid + incremental.mlp_out(block, block.ln2(mid[:, None])[:, 0])
        for hd, x_end in zip(heads, x.view(len(heads), len(batch), -1)):
            effects[(layer, hd)] = float(ioi.end_resid_logit_diff(model, x_end, batch).mean())
    return [effects[s] for s in senders]


def _receiver_step(runs: _Runs, freeze, recv, receiver_input: str, base_pos, last: int, start: int) -> float:
    """Steps (1)-(2) of path patching for head receivers (step (1) starts at layer ``start``, the
    sender's, from the cached residual stream); returns the mean logit difference."""
    model, store = runs.model, {}
    by_name: dict[str, list[int]] = {}
    for l, h in recv:
        by_name.setdefault(f"blocks.{l}.attn.hook_{receiver_input}", []).append(h)

    def grab(act, hook):
        store[hook.name] = act.detach()

    left = getattr(model.tokenizer, "padding_side", "right") == "left"
    with scoped_hooks(model, freeze + [(n, grab) for n in by_name]):
        if start == 0 or left:
            model(runs.base_batch.tokens, stop_at_layer=last + 1)
        else:
            model(runs.base_cache[f"blocks.{start}.hook_resid_pre"], start_at_layer=start, stop_at_layer=last + 1)
    # The receivers' inputs come from the same base prompts: same positions on both sides.
    hooks = [(n, _copy_hook(store[n], base_pos, base_pos, heads=hs)) for n, hs in by_name.items()]
    return float(_run_ld(model, runs.metric_batch, hooks).mean())
