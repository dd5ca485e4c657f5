"""Whether a model solves IOI with Wang et al.'s (2022) circuit, checked with plain measurements.

:func:`discover_circuit` assigns roles from path patching. This module checks the same story
with the simplest tools, the way a reader of Wang et al. would check it by hand:

* **direct logit attribution** (:func:`direct_logit_attribution`): each head's and MLP's output
  at END, through the final LayerNorm's scale frozen at its clean value, projected on
  ``W_U[IO] - W_U[S]``. The parts add up to the logit difference;
* **attention** from END to IO, S1 and S2, and at S2 to S1 / S1+1 (discovery's table);
* **single-head mean ablation** over the ABC distribution (:mod:`~saetools.circuits.ablation`);
* **the Pos attribute** (:func:`pos_patching`): patch a head's output at END from the prompt
  with the first-clause order flipped and count the changed predictions (as Makelov et al.
  2024 do for their attributes).

:func:`mechanism_evidence` gathers these per head and names the heads that meet each role's
criterion (:class:`MechanismTargets`); :meth:`MechanismEvidence.targets` is the table the
bundled model's card and notebook 01 report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor

from saetools.circuits import ablation, incremental
from saetools.circuits.discovery import Discovery, Faithfulness, faithfulness
from saetools.tasks import ioi

__all__ = ["MechanismTargets", "MechanismEvidence", "direct_logit_attribution", "pos_patching", "mechanism_evidence"]

Head = tuple[int, int]


@dataclass(frozen=True, kw_only=True)
class MechanismTargets:
    """Thresholds that make a head count as playing a role of Wang et al.'s circuit."""

    name_mover_dla: float = 0.15
    """A name mover's direct logit attribution is at least this fraction of the logit difference..."""
    name_mover_attention_ratio: float = 2.0
    """...and it attends from END to IO at least this many times more than to S1 and to S2; it sits
    in the upper half of the layers."""
    s_inhibition_drop: float = 0.10
    """Mean-ablating an S-inhibition head lowers the logit difference by at least this fraction; it
    attends from END to S2 more than to IO or S1, and path patching through the name movers'
    queries finds it (``via_nm_q`` >= ``path_effect``)."""
    path_effect: float = 0.02
    """Minimum path-patching effect (fraction of the clean-minus-corrupted logit difference)."""
    copying_score: float = 0.3
    """A duplicate-token or induction head below an S-inhibition head has a duplicate or induction
    score (repeated word lists) or S2 -> S1 / S2 -> S1+1 attention of at least this much."""
    layer0_share_max: float = 0.20
    """Layer-0 heads together write at most this fraction of the logit difference directly."""
    kept: tuple[float, float] = (0.8, 1.2)
    """The circuit alone keeps a fraction of the logit difference within this range..."""
    removed_min: float = 0.6
    """...and ablating it removes at least this fraction."""
    pos_changed_min: float = 0.2
    """Patching the Pos attribute into some head at END changes at least this fraction of the
    top predictions."""


@dataclass
class MechanismEvidence:
    """Per-head measurements and the heads that meet each role's criterion."""

    heads: pd.DataFrame
    """One row per head: ``layer, head, dla, dla_frac, end_io, end_s1, end_s2, s2_s1, s2_s1p1,
    duplicate, induction, via_nm_q, ablation_drop, pos_changed``."""
    components: pd.DataFrame
    """Direct logit attribution of every component (:func:`direct_logit_attribution`)."""
    logit_diff: float
    """Mean clean logit difference."""
    faithfulness: Faithfulness
    """The discovered circuit alone and ablated."""
    criteria: MechanismTargets = field(default_factory=MechanismTargets)

    def _sel(self, mask) -> list[Head]:
        return [(int(l), int(h)) for l, h in zip(self.heads.layer[mask], self.heads["head"][mask])]

    @property
    def name_movers(self) -> list[Head]:
        t, c = self.heads, self.criteria
        upper = t.layer >= (t.layer.max() + 1) // 2
        ratio = c.name_mover_attention_ratio
        return self._sel(upper & (t.dla_frac >= c.name_mover_dla) & (t.end_io >= ratio * t.end_s1)
                         & (t.end_io >= ratio * t.end_s2))

    @property
    def s_inhibition(self) -> list[Head]:
        t, c = self.heads, self.criteria
        top = max((l for l, _ in self.name_movers), default=-1)
        return self._sel((t.layer < top) & (t.end_s2 > t.end_io) & (t.end_s2 > t.end_s1)
                         & (t.via_nm_q >= c.path_effect) & (t.ablation_drop >= c.s_inhibition_drop))

    @property
    def copying_heads(self) -> list[Head]:
        t, c = self.heads, self.criteria
        top = max((l for l, _ in self.s_inhibition), default=-1)
        score = t[["duplicate", "induction", "s2_s1", "s2_s1p1"]].max(axis=1)
        return self._sel((t.layer < top) & (score >= c.copying_score))

    @property
    def layer0_share(self) -> float:
        """Fraction of the logit difference written directly by layer-0 heads (signed sum)."""
        return float(self.heads.dla[self.heads.layer == 0].sum() / self.logit_diff)

    def targets(self) -> pd.DataFrame:
        """One row per criterion: ``key`` (a short name), ``target``, ``measured``, ``met``."""
        c, f, t = self.criteria, self.faithfulness, self.heads
        fmt = lambda hs: ", ".join(f"L{l}H{h}" for l, h in hs) or "none"
        best_nm = t[t.layer >= (t.layer.max() + 1) // 2].sort_values("dla_frac").iloc[-1]
        rows = [
            ("name mover", f"name mover (upper half, DLA >= {c.name_mover_dla:.0%} of the logit difference, END->IO "
             f">= {c.name_mover_attention_ratio:g}x END->S1 and END->S2)",
             f"{fmt(self.name_movers)} (largest upper-half DLA: L{int(best_nm.layer)}H{int(best_nm['head'])} "
             f"{best_nm.dla_frac:.0%})", bool(self.name_movers)),
            ("S-inhibition head", f"S-inhibition head (END->S2 most, via the name movers' queries >= {c.path_effect:.0%}, "
             f"mean ablation -{c.s_inhibition_drop:.0%} or more)", fmt(self.s_inhibition), bool(self.s_inhibition)),
            ("duplicate-token or induction head", f"duplicate-token or induction head below it (score >= {c.copying_score:g})",
             fmt(self.copying_heads), bool(self.copying_heads)),
            ("layer-0 share", f"layer-0 heads' share of the direct effect <= {c.layer0_share_max:.0%}",
             f"{self.layer0_share:.0%}", abs(self.layer0_share) <= c.layer0_share_max),
            ("circuit keeps", f"circuit alone keeps {c.kept[0]:.0%}-{c.kept[1]:.0%}", f"{f.kept:.0%}",
             c.kept[0] <= f.kept <= c.kept[1]),
            ("circuit ablation removes", f"ablating the circuit removes >= {c.removed_min:.0%}", f"{f.removed:.0%}", f.removed >= c.removed_min),
            ("Pos matters", f"patching Pos changes >= {c.pos_changed_min:.0%} of predictions at some head",
             f"{t.pos_changed.max():.0%} (L{t.loc[t.pos_changed.idxmax(), 'layer']}H"
             f"{t.loc[t.pos_changed.idxmax(), 'head']})", t.pos_changed.max() >= c.pos_changed_min),
        ]
        return pd.DataFrame(rows, columns=["key", "target", "measured", "met"])


def _to_logit_diff(model, x: Tensor, scale: Tensor, dirs: Tensor) -> Tensor:
    """Project residual-stream contributions ``x [batch, n, d]`` through the final norm with its
    scale frozen (``scale [batch, 1, 1]``) onto the answer directions ``dirs [batch, d]``."""
    norm = model.cfg.normalization_type
    if norm in ("LN", "LNPre"):
        x = x - x.mean(-1, keepdim=True)
    if norm is not None:
        x = x / scale
    if norm in ("LN", "RMS"):
        x = x * model.ln_final.w
    return torch.einsum("bnd,bd->bn", x, dirs)


@torch.no_grad()
def direct_logit_attribution(model, batch: ioi.IOIBatch) -> pd.DataFrame:
    """Direct contribution of every component to the logit difference at END (mean over prompts).

    Rows: ``component`` (``"embed"``, ``"pos_embed"``, ``"L{l}H{h}"``, ``"L{l} attn bias"``,
    ``"MLP{l}"``, ``"final bias"``), ``layer``, ``head`` (-1 when not a head) and ``dla``. The
    final norm's scale is the clean run's, so the rows add up to the mean logit difference.
    """
    L = model.cfg.n_layers
    keep = lambda n: n.endswith(("hook_z", "hook_mlp_out", "hook_embed", "hook_pos_embed")) or n == "ln_final.hook_scale"
    _, cache = model.run_with_cache(batch.tokens, names_filter=keep)
    rows = torch.arange(len(batch), device=batch.tokens.device)
    end = batch.positions["END"].to(batch.tokens.device)
    at = lambda name: cache[name][rows, end]
    dirs = (model.W_U[:, batch.io_ids] - model.W_U[:, batch.s_ids]).T  # [batch, d]
    scale = at("ln_final.hook_scale")[:, None] if model.cfg.normalization_type else torch.ones(len(batch), 1, 1)
    parts, labels = [], []

    def add(x: Tensor, names: list[tuple[str, int, int]]) -> None:
        parts.append(_to_logit_diff(model, x, scale, dirs))
        labels.extend(names)

    add(at("hook_embed")[:, None], [("embed", -1, -1)])
    if "hook_pos_embed" in cache:
        add(at("hook_pos_embed")[:, None], [("pos_embed", -1, -1)])
    for l in range(L):
        z = at(f"blocks.{l}.attn.hook_z")  # [batch, head, d_head]
        add(torch.einsum("bhe,hed->bhd", z, model.W_O[l]), [(f"L{l}H{h}", l, h) for h in range(model.cfg.n_heads)])
        add(model.b_O[l].expand(len(batch), 1, -1), [(f"L{l} attn bias", l, -1)])
        add(at(f"blocks.{l}.hook_mlp_out")[:, None], [(f"MLP{l}", l, -1)])
    bias = (model.b_U[batch.io_ids] - model.b_U[batch.s_ids])[:, None]
    if model.cfg.normalization_type in ("LN",):
        bias = bias + torch.einsum("d,bd->b", model.ln_final.b, dirs)[:, None]
    parts.append(bias)
    labels.append(("final bias", -1, -1))
    dla = torch.cat(parts, dim=1).mean(0).float().cpu().numpy()
    return pd.DataFrame({"component": [c for c, _, _ in labels], "layer": [l for _, l, _ in labels],
                         "head": [h for _, _, h in labels], "dla": dla})


@torch.no_grad()
def pos_patching(model, batch: ioi.IOIBatch, *, seed: int = 0) -> pd.DataFrame:
    """Per head, the fraction of prompts whose top END prediction changes when the head's output
    at END is patched from the prompt with the first-clause order flipped (ABB <-> BAB, same IO
    and S; Makelov et al.'s Pos attribute). Columns ``layer, head, pos_changed``.

    A patch at END changes only END, so each patch reruns only the END token from the head's
    layer on (:mod:`saetools.circuits.incremental`); models outside its fast path get full
    hooked reruns from the head's layer."""
    names = sorted(set(batch.spec["io"]) | set(batch.spec["s"]))
    cf = ioi.render(model, ioi.counterfactual(batch.spec, "pos", seed=seed, names=names))
    if cf.tokens.shape != batch.tokens.shape:
        raise ValueError("the Pos counterfactual tokenizes to another layout; use single-token words")
    patch = _pos_patch_hooked if incremental.unsupported(model) else _pos_patch_incremental
    heads = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    changed = patch(model, batch, cf, heads)
    return pd.DataFrame({"layer": [l for l, _ in heads], "head": [h for _, h in heads], "pos_changed": changed})


def _top(model, x_end: Tensor) -> Tensor:
    """Top prediction from the final residual stream at END."""
    x = x_end[:, None]
    if getattr(model, "ln_final", None) is not None and model.cfg.normalization_type is not None:
        x = model.ln_final(x)
    return model.unembed(x)[:, 0].argmax(-1)


def _pos_patch_incremental(model, batch, cf, heads) -> list[float]:
    dev = model.W_U.device
    end = batch.positions["END"].to(dev)
    rows = torch.arange(len(batch), device=dev)
    cache = incremental.full_cache(model, batch.tokens.to(dev), end)
    src = incremental.full_cache(model, cf.tokens.to(dev), end)
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    clean = _top(model, cache[last][rows, end])
    win = incremental.window(end, end)
    out = []
    for layer, head in heads:
        name = f"blocks.{layer}.attn.hook_z"
        z = cache[name].clone()
        z[rows, end, head] = src[name][rows, end, head]
        x = incremental.forward_from(model, cache, layer, win, override={name: z})
        out.append(float((_top(model, x) != clean).float().mean()))
    return out


def _pos_patch_hooked(model, batch, cf, heads) -> list[float]:
    rows = torch.arange(len(batch), device=batch.tokens.device)
    end = batch.positions["END"].to(batch.tokens.device)
    _, src = model.run_with_cache(cf.tokens, names_filter=lambda n: n.endswith("hook_z"))
    final, cache = model.run_with_cache(batch.tokens, names_filter=lambda n: n.endswith("hook_resid_pre"))
    clean = final[rows, end].argmax(-1)
    out = []
    for layer, head in heads:
        patched = src[f"blocks.{layer}.attn.hook_z"][rows, end, head]

        def hook(z, hook):
            z[rows, end, head] = patched
            return z

        logits = model.run_with_hooks(cache[f"blocks.{layer}.hook_resid_pre"], start_at_layer=layer,
                                      fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
        out.append(float((logits[rows, end].argmax(-1) != clean).float().mean()))
    return out


@torch.no_grad()
def mechanism_evidence(model, clean: ioi.IOIBatch, corrupted: ioi.IOIBatch, discovery: Discovery, *,
                       criteria: MechanismTargets | None = None) -> MechanismEvidence:
    """Measure every head (see the module docstring) on ``clean`` with the ABC reference
    ``corrupted`` (used for mean ablation), next to ``discovery``'s path-patching table."""
    comps = direct_logit_attribution(model, clean)
    ld = float(ioi.logit_diff(model(clean.tokens), clean).mean())
    t = discovery.heads[["layer", "head", "end_io", "end_s", "end_s2", "s2_s1", "s2_s1p1", "duplicate",
                         "induction", "via_nm_q"]].copy()
    t["end_s1"] = t.end_s - t.end_s2
    t = t.drop(columns="end_s").merge(comps[comps["head"] >= 0][["layer", "head", "dla"]], on=["layer", "head"])
    t["dla_frac"] = t.dla / ld
    reps = ablation.head_z_replacements(model, clean, method="mean", reference=corrupted)
    sweep = ablation.head_ablation_sweep(model, clean, replacements=reps)
    t = t.merge(sweep[["layer", "head", "frac_drop"]].rename(columns={"frac_drop": "ablation_drop"}), on=["layer", "head"])
    t = t.merge(pos_patching(model, clean), on=["layer", "head"])
    cols = ["layer", "head", "dla", "dla_frac", "end_io", "end_s1", "end_s2", "s2_s1", "s2_s1p1", "duplicate",
            "induction", "via_nm_q", "ablation_drop", "pos_changed"]
    return MechanismEvidence(heads=t[cols].sort_values(["layer", "head"]).reset_index(drop=True), components=comps,
                             logit_diff=ld, faithfulness=faithfulness(model, clean, discovery.circuit, reference=corrupted),
                             criteria=criteria or MechanismTargets())
