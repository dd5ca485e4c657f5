"""Indirect object identification (IOI): prompt distributions, semantic positions, metrics.

Implements the prompt distributions of Wang et al. (2022, "Interpretability in the Wild") and
Makelov, Lange & Nanda (2024, ``docs/makelov2024_supervised_dictionaries.md``) as data:

* a **spec** is a :class:`pandas.DataFrame` with one row per prompt and the columns
  ``template, pattern, io, s, s1, place, object`` (``s1`` is the first-clause non-IO name; it
  equals ``s`` except in the ABC distribution, where three names are distinct);
* :func:`render` turns a spec into an :class:`IOIBatch` (tokens, answer ids, and per-prompt
  semantic positions IO, S1, S1+1, S2, END) for one model's tokenizer;
* counterfactuals (:func:`counterfactual`) edit exactly one attribute of a spec: the IO name,
  the S name, or the position (flip ABB <-> BAB, identities kept).

Patterns follow Makelov et al.: ``"ABB"`` means IO comes first in the first clause (Wang et
al.'s "ABBA"), ``"BAB"`` means the subject comes first (Wang et al.'s "BABA").
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from saetools.data import ioi_template_data, load_words, with_distractor

__all__ = [
    "IOIBatch",
    "POSITIONS",
    "ATTRIBUTES",
    "MultiTokenWordError",
    "default_words",
    "single_token_words",
    "check_single_tokens",
    "check_templates",
    "TEMPLATE_FIELDS",
    "sample_spec",
    "wang_spec",
    "makelov_spec",
    "abc_spec",
    "distractor_spec",
    "distractor_logit_diff",
    "makelov_name_splits",
    "counterfactual",
    "resample_context",
    "render",
    "logit_diff",
    "logit_diff_from_resid",
    "end_logit_diff",
    "end_resid_logit_diff",
    "accuracy",
    "io_probability",
    "normalized_score",
    "end_logits",
]

Pattern = Literal["ABB", "BAB"]
POSITIONS: tuple[str, ...] = ("IO", "S1", "S1+1", "S2", "END")
ATTRIBUTES: tuple[str, ...] = ("io", "s", "pos")
_SPEC_COLUMNS = ["template", "pattern", "io", "s", "s1", "place", "object"]
MAKELOV_PREFIX = "Then, "


class MultiTokenWordError(ValueError):
    """A name / place / object is not a single token (with a leading space) for a tokenizer."""


def _tokenizer(model_or_tokenizer):
    return getattr(model_or_tokenizer, "tokenizer", None) or model_or_tokenizer


def single_token_words(model_or_tokenizer, words: Sequence[str]) -> list[str]:
    """Filter ``words`` to those that are one token when preceded by a space."""
    tok = _tokenizer(model_or_tokenizer)
    ids = tok([" " + w for w in words], add_special_tokens=False)["input_ids"]
    return [w for w, i in zip(words, ids) if len(i) == 1]


def default_words(kind: Literal["names", "places", "objects"], model=None) -> list[str]:
    """saetools's word list ``kind`` (:func:`saetools.data.load_words`); with ``model`` (or a
    tokenizer), only the words that are single tokens for its tokenizer (GPT-2 splits four of
    the 157 names, e.g. ``" Doris"``)."""
    words = list(load_words(kind))
    return words if model is None else single_token_words(model, words)


def check_single_tokens(model_or_tokenizer, words: Sequence[str], *, kind: str = "word") -> None:
    """Raise :class:`MultiTokenWordError` naming every word that is not a single token."""
    good = set(single_token_words(model_or_tokenizer, words))
    bad = [w for w in words if w not in good]
    if bad:
        raise MultiTokenWordError(
            f"these {kind}s are not single tokens (with a leading space) for this tokenizer: "
            f"{bad[:20]}{' ...' if len(bad) > 20 else ''}. Sample with the model, e.g. "
            "ioi.wang_spec(n, seed=0, model=model), to draw only words that are single tokens for it, "
            "or filter your own list with ioi.single_token_words(model, words)."
        )


TEMPLATE_FIELDS = ("N1", "N2", "S", "PLACE", "OBJECT")
"""The placeholders an IOI template may use; ``{N1}``, ``{N2}`` and ``{S}`` are required."""


def check_templates(templates: Sequence[str]) -> None:
    """Raise ``ValueError`` naming templates with unknown or missing placeholders."""
    if isinstance(templates, str) or not len(templates):
        raise ValueError("templates must be a non-empty list of template strings, e.g. "
                         "['Then, {N1} and {N2} went to the {PLACE}. {S} gave a {OBJECT} to']")
    for t in templates:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(t) if f is not None}
        except ValueError as err:
            raise ValueError(f"template {t!r} is not a valid format string ({err})") from err
        unknown, missing = sorted(fields - set(TEMPLATE_FIELDS)), [f for f in ("N1", "N2", "S") if f not in fields]
        if unknown or missing:
            raise ValueError(f"template {t!r}: unknown placeholders {unknown}, missing {missing}; an IOI "
                             f"template uses {{N1}} and {{N2}} (first clause), {{S}} (subject) and optionally "
                             "{PLACE} and {OBJECT}")
        if t.rstrip().endswith("}"):
            raise ValueError(f"template {t!r} ends with a placeholder; it must end just before the answer "
                             "(e.g. '... gave it to')")


def sample_spec(
    n: int,
    *,
    templates: Sequence[str],
    names: Sequence[str],
    seed: int,
    places: Sequence[str] | None = None,
    objects: Sequence[str] | None = None,
    patterns: Sequence[Pattern] = ("ABB", "BAB"),
    abc: bool = False,
    symmetric: bool = False,
    model=None,
) -> pd.DataFrame:
    """Sample ``n`` prompt specs uniformly over templates, names, places, objects, patterns.

    Args:
        n: number of prompts (with ``symmetric``, ``n`` must be even: each sampled prompt is
            followed by its twin with IO and S swapped).
        templates: template strings with ``{N1} {N2} {S} {PLACE} {OBJECT}`` placeholders.
        names: candidate names; IO, S (and the ABC third name) are distinct.
        seed: seed of the sampler (a fresh ``numpy`` generator; no global state).
        patterns: patterns to sample from, uniformly.
        abc: the ABC distribution: the first-clause non-IO name differs from the subject.
        symmetric: Wang et al.'s option, adding the IO <-> S swapped twin of every prompt.
        model: a model or tokenizer; default places and objects are then only those that are
            single tokens for it (:func:`default_words`).
    """
    if n < 0 or (symmetric and n % 2):
        raise ValueError(f"n must be >= 0 (and even when symmetric), got {n}")
    if len(names) < 3:
        raise ValueError(f"need at least 3 distinct names, got {len(names)}: IO, S and the ABC third name differ")
    check_templates(templates)
    places = list(places if places is not None else default_words("places", model))
    objects = list(objects if objects is not None else default_words("objects", model))
    rng = np.random.default_rng(seed)
    m = n // 2 if symmetric else n
    # Three distinct names per prompt, vectorised: sort random keys and take the first 3.
    picks = np.argsort(rng.random((m, len(names))), axis=1)[:, :3]
    names_arr = np.asarray(names, dtype=object)
    spec = pd.DataFrame(
        {
            "template": np.asarray(templates, dtype=object)[rng.integers(len(templates), size=m)],
            "pattern": np.asarray(patterns, dtype=object)[rng.integers(len(patterns), size=m)],
            "io": names_arr[picks[:, 0]],
            "s": names_arr[picks[:, 1]],
            "place": np.asarray(places, dtype=object)[rng.integers(len(places), size=m)],
            "object": np.asarray(objects, dtype=object)[rng.integers(len(objects), size=m)],
        }
    )
    spec["s1"] = names_arr[picks[:, 2]] if abc else spec["s"]
    if symmetric:
        twin = spec.copy()
        twin["io"], twin["s"] = spec["s"], spec["io"]
        twin["s1"] = twin["s"] if not abc else spec["s1"]
        spec = pd.concat([spec, twin]).sort_index(kind="stable").reset_index(drop=True)
    return spec[_SPEC_COLUMNS]


def wang_spec(n: int, *, seed: int, names: Sequence[str] | None = None, model=None, **kw) -> pd.DataFrame:
    """Wang et al. (2022): the 15 BABA templates and their ABBA twins.

    With ``model`` (or its tokenizer), the default names, places and objects are those that are
    single tokens for it (:func:`default_words`), as :func:`render` requires.
    """
    templates = kw.pop("templates", ioi_template_data()["wang2022"])
    return sample_spec(n, templates=templates, names=names or default_words("names", model), seed=seed,
                       model=model, **kw)


def abc_spec(n: int, *, seed: int, **kw) -> pd.DataFrame:
    """The ABC distribution (three distinct names), the mean-ablation reference of Wang et al."""
    return wang_spec(n, seed=seed, abc=True, **kw)


def distractor_spec(spec: pd.DataFrame, *, seed: int, names: Sequence[str], phrase: str | None = None) -> pd.DataFrame:
    """``spec`` with a new, non-answer name next to each prompt's subject (column ``distractor``).

    ``"... John gave a ring to"`` becomes ``"... John, together with Kevin, gave a ring to"``
    (:func:`saetools.data.with_distractor`; ``phrase`` defaults to the phrase held out from the
    bundled model's corpus). A model that answers "the first-clause name that is not the last
    one mentioned" fails here; one that finds the repeated name does not. Score it with
    :func:`distractor_logit_diff`.
    """
    rng = np.random.default_rng(seed)
    names = list(names)
    out = spec.copy()
    picked = []
    for io, s, s1 in zip(spec["io"], spec["s"], spec["s1"]):
        pool = [n for n in names if n not in (io, s, s1)]
        if not pool:
            raise ValueError("need at least 4 distinct names for distractor prompts")
        picked.append(pool[rng.integers(len(pool))])
    out["distractor"] = picked
    out["template"] = [with_distractor(t, c, phrase=phrase) for t, c in zip(spec["template"], picked)]
    return out


def distractor_logit_diff(model, logits: Float[Tensor, "batch pos vocab"], batch: IOIBatch) -> Float[Tensor, " batch"]:
    """``logit(IO) - logit(distractor)`` at END for prompts of :func:`distractor_spec`."""
    if "distractor" not in batch.spec.columns:
        raise ValueError("the batch has no distractor column; build its spec with ioi.distractor_spec")
    end = end_logits(logits, batch)
    c_ids = _name_ids(_tokenizer(model), list(batch.spec["distractor"])).to(end.device)
    rows = torch.arange(end.shape[0], device=end.device)
    return end[rows, batch.io_ids.to(end.device)] - end[rows, c_ids]


def makelov_name_splits(names: Sequence[str] | None = None, *, model=None) -> dict[str, tuple[str, ...]]:
    """Makelov et al.'s name splits: base names (first half); IO / S counterfactual targets.

    ``base`` is the first half of the list; ``io_targets`` the first half of the rest and
    ``s_targets`` its second half, so base, IO-target and S-target names never overlap. The
    default list is filtered to ``model``'s single tokens when it is given.
    """
    names = tuple(names or default_words("names", model))
    half = len(names) // 2
    rest = names[half:]
    return {"base": names[:half], "io_targets": rest[: len(rest) // 2], "s_targets": rest[len(rest) // 2 :]}


def makelov_spec(
    n: int,
    *,
    seed: int,
    split: Literal["train", "test", "full"] = "full",
    names: Sequence[str] | None = None,
    model=None,
    **kw,
) -> pd.DataFrame:
    """Makelov et al. (2024): three equal-length templates with the ``"Then, "`` prefix.

    ``split="train"`` uses the first half of names / objects / places and templates T1-T2;
    ``"test"`` the second half and T3; ``"full"`` everything. With ``model``, the default
    words are those that are single tokens for it (:func:`default_words`).
    """
    templates = list(ioi_template_data()["makelov2024"])
    names = list(names or default_words("names", model))
    places, objects = default_words("places", model), default_words("objects", model)
    if split == "train":
        templates, names = templates[:2], names[: len(names) // 2]
        places, objects = places[: len(places) // 2], objects[: len(objects) // 2]
    elif split == "test":
        templates, names = templates[2:], names[len(names) // 2 :]
        places, objects = places[len(places) // 2 :], objects[len(objects) // 2 :]
    elif split != "full":
        raise ValueError(f"split must be 'train', 'test' or 'full', got {split!r}")
    return sample_spec(
        n, templates=templates, names=names, places=places, objects=objects, seed=seed, **kw
    )


def counterfactual(
    spec: pd.DataFrame,
    attribute: Literal["io", "s", "pos"],
    *,
    seed: int,
    names: Sequence[str] | None = None,
    model=None,
) -> pd.DataFrame:
    """Return a copy of ``spec`` with exactly one attribute changed per prompt.

    * ``"pos"``: flip ABB <-> BAB (the order of the first clause), identities kept;
    * ``"io"`` / ``"s"``: replace that name (everywhere it occurs) with a name drawn from
      ``names`` (default: :func:`default_words` for ``model``) that does not occur in the prompt.
    """
    out = spec.copy()
    if attribute == "pos":
        out["pattern"] = np.where(spec["pattern"] == "ABB", "BAB", "ABB")
        return out
    if attribute not in ("io", "s"):
        raise ValueError(f"attribute must be 'io', 's' or 'pos', got {attribute!r}")
    pool = np.asarray(list(names or default_words("names", model)), dtype=object)
    rng = np.random.default_rng(seed)
    used = np.stack([spec["io"].to_numpy(), spec["s"].to_numpy(), spec["s1"].to_numpy()], axis=1)
    # Draw 4 candidates per prompt; at least one is not among the <= 3 names in use.
    if len(pool) < 4:
        raise ValueError("need at least 4 candidate names for a name counterfactual")
    cand = pool[np.argsort(rng.random((len(spec), len(pool))), axis=1)[:, :4]]
    ok = ~(cand[:, :, None] == used[:, None, :]).any(-1)
    new = cand[np.arange(len(spec)), ok.argmax(1)]
    if attribute == "io":
        out["io"] = new
    else:
        same = spec["s1"] == spec["s"]
        out["s"] = new
        out.loc[same, "s1"] = new[same.to_numpy()]
    return out


CONTEXT_COLUMNS = ("template", "place", "object")
"""What a prompt says besides its attributes (names and pattern)."""


def resample_context(spec: pd.DataFrame, *, seed: int) -> pd.DataFrame:
    """Return a copy of ``spec`` with the same attributes in another context.

    Names (``io``, ``s``, ``s1``) and the pattern stay; template, place and object are drawn from
    another prompt of ``spec`` (one random permutation of the rows, so the contexts keep their
    distribution). Patching a node from these prompts shows how far the attribute values alone
    determine what the node passes on (:func:`saetools.dictionaries.edit_cross_section`).
    """
    if len(spec) < 2:
        raise ValueError("resample_context needs at least 2 prompts to draw contexts from")
    perm = np.random.default_rng(seed).permutation(len(spec))
    out = spec.copy()
    for c in CONTEXT_COLUMNS:
        out[c] = spec[c].to_numpy()[perm]
    return out


@dataclass(frozen=True)
class IOIBatch:
    """IOI prompts rendered for one tokenizer: tokens, answers and semantic positions."""

    spec: pd.DataFrame
    """One row per prompt (see the module docstring)."""
    texts: list[str]
    """The prompts as text (ending just before the IO name)."""
    tokens: Int[Tensor, "batch pos"]
    """BOS-prefixed token ids, right-padded."""
    io_ids: Int[Tensor, " batch"]
    """Token id of ``" " + IO``, the correct answer."""
    s_ids: Int[Tensor, " batch"]
    """Token id of ``" " + S``, the subject."""
    positions: dict[str, Int[Tensor, " batch"]]
    """Per-prompt index of each semantic position in :data:`POSITIONS`."""

    def __len__(self) -> int:
        return len(self.texts)

    def to(self, device) -> "IOIBatch":
        """A copy with the tensors on ``device``."""
        return IOIBatch(
            self.spec,
            self.texts,
            self.tokens.to(device),
            self.io_ids.to(device),
            self.s_ids.to(device),
            {k: v.to(device) for k, v in self.positions.items()},
        )

    def __getitem__(self, idx) -> "IOIBatch":
        """Select prompts by a slice, an index array or a boolean mask."""
        if isinstance(idx, slice):
            rows = np.arange(len(self))[idx]
        else:
            rows = np.arange(len(self))[np.asarray(idx)]
        t = torch.as_tensor(rows, dtype=torch.long)
        return IOIBatch(
            self.spec.iloc[rows].reset_index(drop=True),
            [self.texts[i] for i in rows],
            self.tokens[t],
            self.io_ids[t],
            self.s_ids[t],
            {k: v[t] for k, v in self.positions.items()},
        )


def _fill(spec: pd.DataFrame) -> list[str]:
    first_io = spec["pattern"].to_numpy() == "ABB"
    n1 = np.where(first_io, spec["io"], spec["s1"])
    n2 = np.where(first_io, spec["s1"], spec["io"])
    return [
        t.format(N1=a, N2=b, S=s, PLACE=p, OBJECT=o)
        for t, a, b, s, p, o in zip(spec["template"], n1, n2, spec["s"], spec["place"], spec["object"])
    ]


def _name_ids(tok, names: Sequence[str]) -> Tensor:
    uniq = sorted(set(names))
    check_single_tokens(tok, uniq, kind="name")
    ids = tok([" " + w for w in uniq], add_special_tokens=False)["input_ids"]
    lookup = {w: i[0] for w, i in zip(uniq, ids)}
    return torch.tensor([lookup[w] for w in names], dtype=torch.long)


def render(model, spec: pd.DataFrame, *, equal_length: bool = False) -> IOIBatch:
    """Tokenize a spec with ``model``'s tokenizer and locate the semantic positions.

    Args:
        model: a TransformerLens model (``to_tokens`` and ``tokenizer`` are used).
        spec: prompt specs (:func:`sample_spec` and friends).
        equal_length: raise if prompts tokenize to different lengths (Makelov et al. batch
            without padding and require this).

    Raises:
        MultiTokenWordError: a name, place or object is not a single token for this tokenizer
            (then prompts of one template would have different token layouts).
        ValueError: no prompts, missing columns, or a template with unknown placeholders.
    """
    tok = model.tokenizer
    if tok is None:
        raise ValueError("the model has no tokenizer; IOI prompts need one (see load_model)")
    if len(spec) == 0:
        raise ValueError("the spec has no prompts; sample some with ioi.wang_spec(n, seed=...) (n >= 1)")
    missing = [c for c in _SPEC_COLUMNS if c not in spec.columns]
    if missing:
        raise ValueError(f"the spec lacks the columns {missing}; build it with ioi.sample_spec / wang_spec / "
                         "makelov_spec")
    check_templates(list(spec["template"].unique()))
    # One token layout per template (mean ablation and patching rely on it): every word single-token.
    check_single_tokens(tok, sorted(set(spec["place"])), kind="place")
    check_single_tokens(tok, sorted(set(spec["object"])), kind="object")
    texts = _fill(spec)
    io_ids = _name_ids(tok, list(spec["io"]))
    s_ids = _name_ids(tok, list(spec["s"]))
    s1_ids = _name_ids(tok, list(spec["s1"]))
    tokens = model.to_tokens(texts, prepend_bos=True, padding_side="right").cpu()
    # Lengths from the tokenizer itself (padding may equal BOS, so count real tokens).
    lengths = torch.tensor(
        [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]], dtype=torch.long
    ) + (tokens[:, 0] == tok.bos_token_id).long()
    if equal_length and lengths.unique().numel() > 1:
        raise ValueError(
            f"prompts have different token lengths {sorted(lengths.unique().tolist())}; "
            "use single-token names, places and objects"
        )
    ar = torch.arange(tokens.shape[1])
    valid = ar[None, :] < lengths[:, None]

    def first(ids):
        hit = (tokens == ids[:, None]) & valid
        return torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(ids, -1))

    def last(ids):
        hit = (tokens == ids[:, None]) & valid
        idx = torch.where(hit, ar[None, :], torch.full_like(tokens, -1))
        return idx.max(1).values

    positions = {"IO": first(io_ids), "S1": first(s1_ids), "S2": last(s_ids), "END": lengths - 1}
    positions["S1+1"] = positions["S1"] + 1
    missing = [k for k, v in positions.items() if (v < 0).any()]
    if missing:
        raise ValueError(f"could not locate positions {missing} in some prompts")
    return IOIBatch(spec.reset_index(drop=True), texts, tokens, io_ids, s_ids,
                    {k: positions[k] for k in POSITIONS})


def end_logits(logits: Float[Tensor, "batch pos vocab"], batch: IOIBatch) -> Float[Tensor, "batch vocab"]:
    """Logits at each prompt's END position."""
    end = batch.positions["END"].to(logits.device)
    return logits[torch.arange(logits.shape[0], device=logits.device), end]


def end_logit_diff(end: Float[Tensor, "batch vocab"], batch: IOIBatch) -> Float[Tensor, " batch"]:
    """The IOI metric: ``logit(IO) - logit(S)`` per prompt, from the logits at END.

    Every logit difference in saetools is this definition: :func:`logit_diff` applies it to
    full logits, :func:`end_resid_logit_diff` and :func:`logit_diff_from_resid` to the IO and S
    columns of the unembedding of the residual stream.
    """
    return _io_minus_s(end.gather(1, _answers(batch, end.device)))


def _answers(batch: IOIBatch, device) -> Int[Tensor, "batch 2"]:
    return torch.stack([batch.io_ids, batch.s_ids], dim=1).to(device)


def _io_minus_s(io_s: Float[Tensor, "batch 2"]) -> Float[Tensor, " batch"]:
    return io_s[:, 0] - io_s[:, 1]


def logit_diff(logits: Float[Tensor, "batch pos vocab"], batch: IOIBatch) -> Float[Tensor, " batch"]:
    """:func:`end_logit_diff` of a model's full logits."""
    return end_logit_diff(end_logits(logits, batch), batch)


def end_resid_logit_diff(model, x_end: Float[Tensor, "batch d_model"], batch: IOIBatch) -> Float[Tensor, " batch"]:
    """:func:`end_logit_diff` from the final residual stream at END (before ``ln_final``).

    Unembeds only the IO and S columns instead of building ``[batch, d_vocab]`` logits; equal
    to ``end_logit_diff(model.unembed(model.ln_final(x_end)), batch)`` up to float rounding.
    """
    x = x_end[:, None]
    if getattr(model, "ln_final", None) is not None and model.cfg.normalization_type is not None:
        x = model.ln_final(x)
    x = x[:, 0]
    answers = _answers(batch, x.device)
    return _io_minus_s(torch.einsum("bd,dba->ba", x, model.W_U[:, answers]) + model.b_U[answers])


def logit_diff_from_resid(model, resid_final: Float[Tensor, "batch pos d_model"], batch: IOIBatch) -> Float[Tensor, " batch"]:
    """:func:`end_logit_diff` from the final residual stream (before ``ln_final``).

    Equal to ``logit_diff(model(tokens), batch)`` up to float rounding, but unembeds only the IO
    and S columns at END instead of building ``[batch, pos, d_vocab]`` logits (2 GB for 500
    GPT-2 prompts). Get ``resid_final`` with ``model(tokens, stop_at_layer=model.cfg.n_layers)``.
    """
    rows = torch.arange(resid_final.shape[0], device=resid_final.device)
    return end_resid_logit_diff(model, resid_final[rows, batch.positions["END"].to(resid_final.device)], batch)


def accuracy(logits: Float[Tensor, "batch pos vocab"], batch: IOIBatch) -> Float[Tensor, " batch"]:
    """1.0 where ``logit(IO) > logit(S)`` at END, else 0.0 (per prompt)."""
    return (logit_diff(logits, batch) > 0).float()


def io_probability(logits: Float[Tensor, "batch pos vocab"], batch: IOIBatch) -> Float[Tensor, " batch"]:
    """Softmax probability of the IO token at END, per prompt."""
    p = end_logits(logits, batch).float().softmax(-1)
    return p.gather(1, batch.io_ids.to(p.device)[:, None])[:, 0]


def normalized_score(
    value: Tensor | float, *, clean: Tensor | float, corrupted: Tensor | float
) -> Tensor:
    """``(value - corrupted) / (clean - corrupted)``: 1 at the clean run, 0 at the corrupted."""
    value, clean, corrupted = (torch.as_tensor(x, dtype=torch.float32) for x in (value, clean, corrupted))
    return (value - corrupted) / (clean - corrupted)
