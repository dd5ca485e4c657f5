"""IOI circuit discovery: head roles from patching and attention, and faithfulness.

Follows Wang et al. (2022, "Interpretability in the Wild", §3 and §4): name movers are found
by their direct effect on the logit difference (path patching to the logits) and their
attention from END to IO; S-inhibition heads by path patching into the name movers' queries;
induction and duplicate-token heads by path patching into the S-inhibition heads' values and
their attention (S2 -> S1+1, S2 -> S1; repeated random sequences); previous-token heads by
their attention to the previous token. The circuit is data (:class:`Circuit`: role -> heads),
the "nodes" later modules consume; Makelov et al. (2024) use Wang et al.'s GPT-2 circuit
(:data:`WANG_2022_GPT2_CIRCUIT`). Method and deviations: ``docs/wang2022_ioi.md``.

Faithfulness (Wang et al. §4): mean-ablate (over the ABC distribution) every head outside the
circuit and report the fraction of the logit difference kept; mean-ablate the circuit and
report the fraction removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from saetools.circuits import ablation, patching
from saetools.data import load_words
from saetools.hooks import scoped_hooks
from saetools.tasks import ioi

__all__ = [
    "ROLES",
    "WANG_2022_GPT2_CIRCUIT",
    "Circuit",
    "Discovery",
    "DiscoveryConfig",
    "Faithfulness",
    "ablated_logit_diff",
    "attention_scores",
    "classify_heads",
    "copying_scores",
    "discover_circuit",
    "faithfulness",
]

Head = tuple[int, int]
ROLES: tuple[str, ...] = (
    "name_mover", "negative_name_mover", "s_suppression", "s_inhibition", "induction",
    "duplicate_token", "previous_token",
)


@dataclass(frozen=True)
class Circuit:
    """A circuit as data: role -> heads, in order of importance within each role."""

    roles: dict[str, tuple[Head, ...]]
    """Role name (see :data:`ROLES`) -> ``(layer, head)`` tuples."""
    name: str = ""
    """Where the circuit comes from (e.g. ``"Wang et al. 2022, GPT-2 small"``)."""

    @property
    def heads(self) -> list[Head]:
        """Every head of the circuit once, sorted by (layer, head)."""
        return sorted({h for hs in self.roles.values() for h in hs})

    def role_of(self, head: Head) -> list[str]:
        """The roles a head plays (empty when it is not in the circuit)."""
        return [r for r, hs in self.roles.items() if tuple(head) in hs]

    def __contains__(self, head) -> bool:
        return tuple(head) in set(self.heads)

    def with_role(self, role: str, heads: Sequence[Head]) -> Circuit:
        """A copy with ``role`` set to ``heads`` (e.g. heads found by :func:`saetools.dictionaries.attribute_patching`)."""
        return Circuit(roles={**self.roles, role: tuple(tuple(h) for h in heads)}, name=self.name)

    def to_frame(self) -> pd.DataFrame:
        """Tidy table ``role, layer, head, label`` (one row per role membership)."""
        rows = [{"role": r, "layer": l, "head": h, "label": f"L{l}H{h}"}
                for r, hs in self.roles.items() for l, h in hs]
        return pd.DataFrame(rows, columns=["role", "layer", "head", "label"])


WANG_2022_GPT2_CIRCUIT = Circuit(
    roles={
        "name_mover": ((9, 9), (9, 6), (10, 0)),
        "negative_name_mover": ((10, 7), (11, 10)),
        "backup_name_mover": ((9, 0), (9, 7), (10, 1), (10, 2), (10, 10), (11, 2), (11, 9)),
        "s_inhibition": ((7, 3), (7, 9), (8, 6), (8, 10)),
        "induction": ((5, 5), (6, 9), (5, 8), (5, 9)),
        "duplicate_token": ((0, 1), (3, 0), (0, 10)),
        "previous_token": ((2, 2), (4, 11)),
    },
    name="Wang et al. 2022, GPT-2 small",
)
"""The IOI circuit in GPT-2 small as reported by Wang et al. (2022) and used by Makelov et al."""


@dataclass(frozen=True, kw_only=True)
class DiscoveryConfig:
    """Thresholds of :func:`classify_heads`."""

    coverage: float = 0.8
    """A head "matters" along a path when it is one of the fewest heads whose effects, largest
    first, add up to this fraction of the column's total positive effect. Scale-free, and unlike a
    cut at a fraction of the largest effect it keeps heads that share a role with a dominant one."""
    min_effect: float = 0.02
    """...and its effect is at least this absolute fraction of the clean-minus-corrupted logit
    difference (so that noise-level heads never count)."""
    induction: float = 0.3
    """Minimum induction score (attention to the token after the previous occurrence)."""
    duplicate: float = 0.3
    """Minimum duplicate-token score (attention to the previous occurrence of the same token)."""
    previous: float = 0.3
    """Minimum previous-token score (attention to the token right before)."""
    n_prompts_copying: int = 32
    """Number of repeated random sequences for the induction / duplicate / previous scores."""
    copy_length: int = 10
    """Length of each random half of a repeated sequence (the bundled model saw lists of 4-12)."""
    seed: int = 0
    """Seed of the default corruption and of the random sequences."""

    def __post_init__(self) -> None:
        for name in ("coverage", "min_effect", "induction", "duplicate", "previous"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"DiscoveryConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.n_prompts_copying < 1 or self.copy_length < 2:
            raise ValueError("DiscoveryConfig.n_prompts_copying must be >= 1 and copy_length >= 2")


@torch.no_grad()
def attention_scores(model, batch: ioi.IOIBatch) -> pd.DataFrame:
    """Mean attention between IOI semantic positions, per head.

    Columns: ``layer, head, end_io, end_s`` (END -> IO, END -> S1 + S2), ``end_s2``,
    ``s2_s1`` (duplicate-token signature), ``s2_s1p1`` (induction signature), ``s1p1_s1``
    (previous-token signature).
    """
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(batch.tokens, names_filter=lambda n: n in names)
    pat = torch.stack([cache[n] for n in names], 1)  # [batch, layer, head, q, k]
    p = {k: v.to(pat.device) for k, v in batch.positions.items()}
    rows = torch.arange(pat.shape[0], device=pat.device)

    def att(q, k):
        return pat[rows, :, :, p[q], p[k]].mean(0)  # [layer, head]

    cols = {"end_io": att("END", "IO"), "end_s": att("END", "S1") + att("END", "S2"),
            "end_s2": att("END", "S2"), "s2_s1": att("S2", "S1"), "s2_s1p1": att("S2", "S1+1"),
            "s1p1_s1": att("S1+1", "S1")}
    return _head_frame(model, cols)


def _head_frame(model, cols: dict[str, Tensor]) -> pd.DataFrame:
    L, H = model.cfg.n_layers, model.cfg.n_heads
    df = pd.DataFrame({"layer": [l for l in range(L) for _ in range(H)], "head": list(range(H)) * L})
    for k, v in cols.items():
        df[k] = v.reshape(-1).float().cpu().numpy()
    return df


@torch.no_grad()
def copying_scores(model, *, n: int = 32, length: int = 20, seed: int = 0) -> pd.DataFrame:
    """Previous-token, duplicate-token and induction scores on repeated random word lists.

    Each sequence is BOS + ``r`` + ``r`` with ``r`` ``length`` words drawn (seeded
    ``numpy`` generator) from the single-token names, places and objects -- words both GPT-2
    and the bundled model know (the bundled model's corpus repeats such lists). Columns:
    ``layer, head, previous`` (attention t -> t-1), ``duplicate`` (second half, t ->
    t-length) and ``induction`` (second half, t -> t-length+1).
    """
    if 2 * length + 1 > model.cfg.n_ctx:
        raise ValueError(f"2 * length + 1 = {2 * length + 1} exceeds the model's n_ctx {model.cfg.n_ctx}")
    words = [w for kind in ("names", "places", "objects") for w in load_words(kind)]
    words = ioi.single_token_words(model, words)
    ids = torch.tensor([model.to_single_token(" " + w) for w in words])
    rng = np.random.default_rng(seed)
    r = ids[torch.as_tensor(np.argsort(rng.random((n, len(ids))), axis=1)[:, :length])]
    bos = model.tokenizer.bos_token_id
    tokens = torch.cat([torch.full((n, 1), bos), r, r], 1)
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=lambda x: x in names)
    pat = torch.stack([cache[x] for x in names], 1).mean(0)  # [layer, head, q, k]
    second = torch.arange(length + 1, 2 * length + 1, device=pat.device)
    return _head_frame(model, {
        "previous": pat.diagonal(-1, -2, -1)[..., 1:].mean(-1),
        "duplicate": pat[..., second, second - length].mean(-1),
        "induction": pat[..., second, second - length + 1].mean(-1),
    })


def _matters(col: pd.Series, cfg: DiscoveryConfig) -> pd.Series:
    """Heads among the fewest whose positive effects reach ``coverage`` of the column's total."""
    positive = col.clip(lower=0).sort_values(ascending=False, kind="stable")
    total = positive.sum()
    if total <= 0:
        return col != col
    n = int((positive.cumsum() < cfg.coverage * total).sum()) + 1
    return col.index.isin(positive.index[:n]) & (col >= cfg.min_effect)


def _ranked(df: pd.DataFrame, mask: pd.Series, by: str) -> tuple[Head, ...]:
    sel = df[mask].sort_values(by, ascending=False, kind="stable")
    return tuple((int(l), int(h)) for l, h in zip(sel.layer, sel["head"]))


def _name_movers(t: pd.DataFrame, cfg: DiscoveryConfig) -> tuple[tuple[Head, ...], tuple[Head, ...]]:
    to_io = t.end_io > t.end_s
    pos = _ranked(t, _matters(t.direct, cfg) & to_io, "direct")
    neg = t.assign(neg=-t.direct)
    return pos, _ranked(neg, _matters(neg.neg, cfg) & to_io, "neg")


def _s_suppressors(t: pd.DataFrame, cfg: DiscoveryConfig) -> tuple[Head, ...]:
    return _ranked(t, _matters(t.direct, cfg) & (t.end_s > t.end_io), "direct")


def classify_heads(table: pd.DataFrame, config: DiscoveryConfig | None = None) -> Circuit:
    """Assign IOI roles from a per-head table (pure function of its columns).

    Needs the columns of :func:`attention_scores` and :func:`copying_scores` and three effect
    columns, each the fraction of the clean-minus-corrupted logit difference a head carries
    along one path (path patching, noising): ``direct`` (to the logits), ``via_nm_q`` (into
    the name movers' queries at END) and ``via_si_v`` (into the S-inhibition heads' values).

    Rules: **name movers** have a large positive direct effect and attend more from END to IO
    than to S; **negative name movers** the same with a negative direct effect; **S-suppression**
    heads have a large positive direct effect but attend from END to S more than to IO: they
    raise the logit difference by writing *against* the subject (copy suppression, McDougall et
    al. 2023; the bundled tiny-ioi model relies on such layer-0 heads, which see S twice); **S-inhibition**
    heads matter via the name movers' queries; **induction** / **duplicate-token** heads matter
    via the S-inhibition values and have a high induction / duplicate score (repeated sequences)
    or attend S2 -> S1+1 / S2 -> S1; **previous-token** heads have a high previous-token score
    and sit before an induction head.
    """
    cfg = config or DiscoveryConfig()
    t = table
    nm, neg = _name_movers(t, cfg)
    s_sup = _s_suppressors(t, cfg)
    named = set(nm) | set(neg) | set(s_sup)
    not_nm = pd.Series([(l, h) not in named for l, h in zip(t.layer, t["head"])], index=t.index)
    si = _ranked(t, _matters(t.via_nm_q, cfg) & not_nm, "via_nm_q")
    upstream = _matters(t.via_si_v, cfg) & not_nm
    ind = _ranked(t, upstream & ((t.induction >= cfg.induction) | (t.s2_s1p1 >= cfg.induction)), "via_si_v")
    dup = _ranked(t, upstream & ((t.duplicate >= cfg.duplicate) | (t.s2_s1 >= cfg.duplicate)), "via_si_v")
    last_ind = max((l for l, _ in ind), default=-1)
    prev = _ranked(t, (t.previous >= cfg.previous) & (t.layer < last_ind), "previous")
    roles = {"name_mover": nm, "negative_name_mover": neg, "s_suppression": s_sup, "s_inhibition": si,
             "induction": ind, "duplicate_token": dup, "previous_token": prev}
    return Circuit(roles=roles, name="discovered")


@dataclass(frozen=True)
class Discovery:
    """Result of :func:`discover_circuit`: the circuit, the per-head evidence, the config."""

    circuit: Circuit
    heads: pd.DataFrame
    """Per-head table (the input of :func:`classify_heads`) with a ``roles`` column."""
    config: DiscoveryConfig = field(default_factory=DiscoveryConfig)


def _drop(df: pd.DataFrame, model) -> Tensor:
    """``1 - score`` of a path-patching table as a [layer, head] tensor (0 for absent senders)."""
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    out[torch.tensor(df.layer.to_list()), torch.tensor(df["head"].to_list())] = torch.tensor(
        (1 - df.score).to_list(), dtype=torch.float32)
    return out


@torch.no_grad()
def discover_circuit(
    model, clean: ioi.IOIBatch, corrupted: ioi.IOIBatch | None = None, *, config: DiscoveryConfig | None = None
) -> Discovery:
    """Find the IOI circuit of ``model`` (Wang et al. 2022, §3), stage by stage.

    1. direct effects (path patching to the logits) and attention -> name movers;
    2. path patching into the name movers' queries at END -> S-inhibition heads;
    3. path patching into the S-inhibition heads' values -> induction / duplicate-token heads;
       repeated random sequences -> previous-token heads.
    """
    cfg = config or DiscoveryConfig()
    corrupted = corrupted if corrupted is not None else patching.default_corruption(model, clean, seed=cfg.seed)
    table = attention_scores(model, clean).merge(
        copying_scores(model, n=cfg.n_prompts_copying, length=cfg.copy_length, seed=cfg.seed))
    table["direct"] = _drop(patching.path_patch(model, clean, corrupted, receivers="logits"), model).reshape(-1).numpy()
    nm, _ = _name_movers(table, cfg)
    table["via_nm_q"] = _path_column(model, clean, corrupted, nm, "q", "END")
    si = classify_heads(table.assign(via_si_v=0.0), cfg).roles["s_inhibition"]
    table["via_si_v"] = _path_column(model, clean, corrupted, si, "v", "all")
    circuit = classify_heads(table, cfg)
    table["roles"] = [",".join(circuit.role_of((l, h))) for l, h in zip(table.layer, table["head"])]
    return Discovery(circuit=circuit, heads=table, config=cfg)


def _path_column(model, clean, corrupted, receivers, receiver_input, position):
    if not receivers or min(l for l, _ in receivers) == 0:
        return 0.0
    df = patching.path_patch(model, clean, corrupted, receivers=list(receivers),
                             receiver_input=receiver_input, receiver_position=position)
    return _drop(df, model).reshape(-1).numpy()


@dataclass(frozen=True)
class Faithfulness:
    """Mean logit differences with parts of the model mean-ablated (ABC means, Wang et al. §4)."""

    clean: float
    """Mean logit difference of the full model."""
    circuit_only: float
    """...with every head outside the circuit mean-ablated."""
    circuit_ablated: float
    """...with every head of the circuit mean-ablated."""
    all_ablated: float
    """...with every head mean-ablated."""

    @property
    def kept(self) -> float:
        """Fraction of the logit difference the circuit alone keeps: ``circuit_only / clean``."""
        return self.circuit_only / self.clean

    @property
    def removed(self) -> float:
        """Fraction removed by ablating the circuit: ``1 - circuit_ablated / clean``."""
        return 1 - self.circuit_ablated / self.clean

    def to_frame(self) -> pd.DataFrame:
        """One row per condition: ``condition, logit_diff, fraction_of_clean``."""
        vals = {"full model": self.clean, "circuit only": self.circuit_only,
                "circuit ablated": self.circuit_ablated, "all heads ablated": self.all_ablated}
        return pd.DataFrame({"condition": list(vals), "logit_diff": list(vals.values()),
                             "fraction_of_clean": [v / self.clean for v in vals.values()]})


def ablated_logit_diff(model, batch: ioi.IOIBatch, heads: Sequence[Head], replacements) -> float:
    """Mean logit difference with ``heads`` ablated (scoped hooks; END logits only)."""
    with scoped_hooks(model, ablation.head_ablation_hooks(heads, replacements)):
        resid = model(batch.tokens, stop_at_layer=model.cfg.n_layers)
    return float(ioi.logit_diff_from_resid(model, resid, batch).mean())


@torch.no_grad()
def faithfulness(
    model, clean: ioi.IOIBatch, circuit: Circuit | Sequence[Head], *,
    reference: ioi.IOIBatch | None = None, seed: int = 0,
) -> Faithfulness:
    """Keep only the circuit, and ablate it: mean ablation over the ABC distribution.

    Args:
        model: a TransformerLens model.
        clean: IOI prompts.
        circuit: a :class:`Circuit` or a list of heads.
        reference: the ablation reference (default: the ABC counterpart of ``clean``).
        seed: seed of the default reference.
    """
    heads = circuit.heads if isinstance(circuit, Circuit) else [tuple(h) for h in circuit]
    reference = reference if reference is not None else patching.default_corruption(model, clean, seed=seed)
    reps = ablation.head_z_replacements(model, clean, method="mean", reference=reference)
    every = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    rest = [h for h in every if h not in set(heads)]
    return Faithfulness(
        clean=ablated_logit_diff(model, clean, [], reps),
        circuit_only=ablated_logit_diff(model, clean, rest, reps),
        circuit_ablated=ablated_logit_diff(model, clean, heads, reps),
        all_ablated=ablated_logit_diff(model, clean, every, reps),
    )
