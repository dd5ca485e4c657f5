"""The synthetic corpora the bundled models are trained on, and their packing into rows.

The ``tiny-ioi`` corpus: 
Four seeded document generators, mixed by :class:`CorpusConfig`:

* **IOI** sentences (Wang et al. 2022): ``"Then, Mary and John went to the store. John gave a
  ring to Mary."`` built from compositional templates (``data/ioi_templates.json``) plus the
  Wang et al. templates that are not held out;
* **ABC** sentences: the same templates with a third, distinct name as the subject; the answer
  is one of the first two names at random, so the model learns "a first-clause name that is not
  the subject" rather than a surface statistic. ABC sentences use only training names: with
  held-out names appearing *only* in ABC sentences (whose answer is a coin flip), a model
  learns that those names make the answer 50/50 and fails IOI on them;
* **recall** sentences with a single name that is later copied after "to"
  (``"Today, Mary went to the park. The ring was given to Mary."``), over every name including
  held-out ones: not IOI (there is no second name to choose from), but it trains the model to
  copy *any* name from context, so the IOI circuit's copying is not specific to training names;
* **grammar** sentences from a small grammar over the same vocabulary (every name, including
  held-out ones, so their embeddings are trained);
* **copying** sequences: a random word list followed by its repeat, so that induction and
  duplicate-token heads can form.

``tiny-rotary`` trains on :func:`long_document` streams: the same sentences without document
breaks, with passkey statements recalled a few sentences later.

Held out for evaluation (see :func:`saetools.data.heldout_templates` /
:func:`saetools.data.heldout_names`): some template strings never occur, and some names never
occur in an IOI or ABC sentence, so choosing between two first-clause names -- the IOI
task itself -- is never trained on them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from saetools.data import heldout_names, heldout_templates, ioi_template_data, load_words

KINDS: tuple[str, ...] = ("ioi", "abc", "recall", "grammar", "copying")

__all__ = [
    "KINDS",
    "CorpusConfig",
    "generate_labelled_documents",
    "training_templates",
    "fill_template",
    "generate_documents",
    "tokenizer_training_text",
    "pack_documents",
    "KEY_PREFIX",
    "passkey",
    "long_document",
    "long_document_tokens",
]


@dataclass(frozen=True, kw_only=True)
class CorpusConfig:
    """Mixture weights of the document generators (normalised to sum to 1)."""

    ioi: float = 0.40
    """Weight of IOI sentences (names A, B, B)."""
    abc: float = 0.10
    """Weight of ABC sentences (three distinct names)."""
    recall: float = 0.20
    """Weight of single-name recall sentences (every name, held-out ones included)."""
    grammar: float = 0.10
    """Weight of small-grammar sentences."""
    copying: float = 0.20
    """Weight of repeated word lists."""

    def __post_init__(self) -> None:
        for field in KINDS:
            if getattr(self, field) < 0:
                raise ValueError(f"CorpusConfig.{field} must be >= 0")
        if sum(getattr(self, f) for f in KINDS) <= 0:
            raise ValueError("CorpusConfig weights must not all be zero")

    @property
    def probabilities(self) -> np.ndarray:
        w = np.array([getattr(self, f) for f in KINDS], dtype=float)
        return w / w.sum()


@lru_cache(maxsize=None)
def training_templates() -> tuple[str, ...]:
    """All IOI templates the corpus may use: compositional ones and non-held-out Wang et al."""
    data = ioi_template_data()
    pieces = data["corpus_pieces"]
    held = set(heldout_templates())
    out: list[str] = []
    for opener, activity, lead, action in itertools.product(
        pieces["openers"], pieces["activities"], pieces["leads"], pieces["actions"]
    ):
        out.append(f"{opener} {{N1}} and {{N2}} {activity}. {lead}{{S}} {action}")
    for opener, activity, action in itertools.product(
        pieces["openers"], pieces["activities"], pieces["actions"]
    ):
        out.append(f"{opener} {{N1}} and {{N2}} {activity}, and afterwards {{S}} {action}")
    for conj, activity, action in itertools.product(
        pieces["conjunctions"], pieces["activities"], pieces["actions"]
    ):
        out.append(f"{conj} {{N1}} and {{N2}} {activity}, {{S}} {action}")
    out.extend(data["wang2022"])
    # dict.fromkeys keeps order while dropping duplicates.
    return tuple(t for t in dict.fromkeys(out) if t not in held)


def fill_template(template: str, *, n1: str, n2: str, s: str, place: str, obj: str) -> str:
    """Fill a template's placeholders (see ``data/ioi_templates.json``)."""
    return template.format(N1=n1, N2=n2, S=s, PLACE=place, OBJECT=obj)


_GRAMMAR = (
    "{OPENER} {NAME} went to the {PLACE} and bought a {OBJECT}.",
    "{OPENER} {NAME} was happy at the {PLACE}.",
    "{OPENER} {NAME} found a {OBJECT} in the {PLACE}.",
    "{OPENER} the {OBJECT} was in the {PLACE}.",
    "{OPENER} {NAME} and {NAME2} were friends.",
    "{OPENER} {NAME} said that the {PLACE} was closed.",
    "{OPENER} {NAME} had a {OBJECT} and a {OBJECT2}.",
    "{OPENER} {NAME} wanted to go to the {PLACE}.",
    "{OPENER} {NAME} was thinking about the {OBJECT}.",
    "{OPENER} {NAME} decided to stay at the {PLACE}.",
    "{OPENER} {NAME} really liked the {OBJECT}.",
    "{OPENER} the {PLACE} was crazy and the {OBJECT} was long.",
    "{OPENER} {NAME} gave the {OBJECT} away.",
    "{OPENER} {NAME} met friends at the {PLACE}.",
    "{OPENER} {NAME} had lots of fun.",
)


def _ioi_or_abc(rng: np.random.Generator, templates, names, places, objects, *, abc: bool) -> str:
    template = templates[rng.integers(len(templates))]
    k = 3 if abc else 2
    picked = rng.choice(len(names), size=k, replace=False)
    a, b = names[picked[0]], names[picked[1]]
    place = places[rng.integers(len(places))]
    obj = objects[rng.integers(len(objects))]
    if abc:
        s = names[picked[2]]
        answer = a if rng.random() < 0.5 else b
        text = fill_template(template, n1=a, n2=b, s=s, place=place, obj=obj)
    else:
        # a is IO, b is S; the pattern decides the first-clause order.
        n1, n2 = (a, b) if rng.random() < 0.5 else (b, a)
        text = fill_template(template, n1=n1, n2=n2, s=b, place=place, obj=obj)
        answer = a
    return f"{text} {answer}."


def _grammar(rng: np.random.Generator, names, places, objects, openers) -> str:
    pattern = _GRAMMAR[rng.integers(len(_GRAMMAR))]
    n = rng.choice(len(names), size=2, replace=False)
    o = rng.choice(len(objects), size=2, replace=False)
    return pattern.format(
        OPENER=openers[rng.integers(len(openers))],
        NAME=names[n[0]],
        NAME2=names[n[1]],
        PLACE=places[rng.integers(len(places))],
        OBJECT=objects[o[0]],
        OBJECT2=objects[o[1]],
    )


_RECALL = (
    "{OPENER} {NAME} went to the {PLACE}. The {OBJECT} was given to {NAME}.",
    "{OPENER} {NAME} had a {OBJECT}. Everyone said hello to {NAME}.",
    "{OPENER} {NAME} was at the {PLACE}. Then a {OBJECT} was sent to {NAME}.",
    "{OPENER} {NAME} found a {OBJECT}. The {PLACE} gave it back to {NAME}.",
)


def _recall(rng: np.random.Generator, names, places, objects, openers) -> str:
    return _RECALL[rng.integers(len(_RECALL))].format(
        OPENER=openers[rng.integers(len(openers))],
        NAME=names[rng.integers(len(names))],
        PLACE=places[rng.integers(len(places))],
        OBJECT=objects[rng.integers(len(objects))],
    )


def _copying(rng: np.random.Generator, vocab) -> str:
    length = int(rng.integers(4, 12))
    words = [vocab[i] for i in rng.choice(len(vocab), size=length, replace=False)]
    span = " ".join(words)
    return f"List: {span}. Again: {span}."


def generate_labelled_documents(
    n: int, *, seed: int, config: CorpusConfig | None = None
) -> list[tuple[str, str]]:
    """``n`` documents of the training mixture as ``(kind, text)``, deterministic in ``seed``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    config = config or CorpusConfig()
    rng = np.random.default_rng(seed)
    names = load_words("names")
    held = set(heldout_names())
    ioi_names = tuple(x for x in names if x not in held)
    places, objects = load_words("places"), load_words("objects")
    templates = training_templates()
    openers = tuple(ioi_template_data()["corpus_pieces"]["openers"]) + ("The day after,",)
    vocab = names + places + objects
    make = {
        "ioi": lambda: _ioi_or_abc(rng, templates, ioi_names, places, objects, abc=False),
        "abc": lambda: _ioi_or_abc(rng, templates, ioi_names, places, objects, abc=True),
        "recall": lambda: _recall(rng, names, places, objects, openers),
        "grammar": lambda: _grammar(rng, names, places, objects, openers),
        "copying": lambda: _copying(rng, vocab),
    }
    kinds = rng.choice(len(KINDS), size=n, p=config.probabilities)
    return [(KINDS[k], make[KINDS[k]]()) for k in kinds]


def generate_documents(n: int, *, seed: int, config: CorpusConfig | None = None) -> list[str]:
    """The texts of :func:`generate_labelled_documents`."""
    return [text for _, text in generate_labelled_documents(n, seed=seed, config=config)]


def tokenizer_training_text(*, seed: int, n_documents: int = 20_000) -> list[str]:
    """Text the tokenizer is trained on: corpus samples plus every template and word.

    The held-out templates are included (the *tokenizer* may know their words; the model's
    training corpus never contains them), and each word list entry is repeated with a leading
    space so that it becomes one token.
    """
    data = ioi_template_data()
    words = load_words("names") + load_words("places") + load_words("objects")
    extra = list(data["wang2022"]) + list(data["makelov2024"])
    extra += [" " + " ".join(words)] * 50
    return generate_documents(n_documents, seed=seed) + extra


def pack_documents(docs_ids: list[list[int]], *, n_ctx: int, bos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack whole documents into rows ``BOS d1 BOS d2 ...``; pad the rest with BOS.

    Returns ``(tokens, loss_mask)``, where ``loss_mask[r, t]`` says whether the prediction
    *from* position ``t`` counts (padding positions do not).
    """
    rows: list[list[int]] = []
    row: list[int] = []
    for ids in docs_ids:
        doc = [bos] + ids
        if len(doc) > n_ctx:
            continue
        if len(row) + len(doc) > n_ctx:
            rows.append(row)
            row = []
        row = row + doc
    if row:
        rows.append(row)
    out = torch.full((len(rows), n_ctx), bos, dtype=torch.long)
    mask = torch.zeros((len(rows), n_ctx), dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r) - 1] = True
    return out, mask


# The long passkey documents of tiny-rotary (LM-Infinite).

KEY_PREFIX = " The key is"
"""Text before the passkey digits, in both the statement and the recall."""


def passkey(rng: np.random.Generator) -> str:
    """A random five-digit passkey (first digit non-zero)."""
    return str(int(rng.integers(10_000, 100_000)))


def long_document(n_sentences: int, *, seed: int, passkey_rate: float = 0.3) -> str:
    """A long document: corpus sentences without breaks, with passkey statements and recalls.

    Each sentence slot starts a passkey statement with probability ``passkey_rate``; the
    same key is recalled after 0-2 further sentences, so the recall is always within a short
    distance of its statement (well inside the training length).
    """
    if n_sentences <= 0:
        raise ValueError(f"n_sentences must be positive, got {n_sentences}")
    rng = np.random.default_rng(seed)
    sentences = generate_documents(n_sentences, seed=int(rng.integers(1 << 31)))
    out: list[str] = []
    pending: list[tuple[int, str]] = []  # (sentences until recall, key)
    for s in sentences:
        if not pending and rng.random() < passkey_rate:
            key = passkey(rng)
            out.append(f"{KEY_PREFIX} {key}.")
            pending.append((int(rng.integers(0, 3)), key))
        out.append(" " + s)
        if pending:
            wait, key = pending[0]
            if wait == 0:
                out.append(f"{KEY_PREFIX} {key}.")
                pending.clear()
            else:
                pending[0] = (wait - 1, key)
    return "".join(out)


def long_document_tokens(tokenizer, n_tokens: int, *, seed: int, passkey_rate: float = 0.3) -> torch.Tensor:
    """``[n_tokens]`` token ids: BOS followed by the start of a seeded :func:`long_document`."""
    n_sentences = max(4, n_tokens // 12)  # sentences average ~20 tokens; retry if short
    while True:
        text = long_document(n_sentences, seed=seed, passkey_rate=passkey_rate)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= n_tokens - 1:
            return torch.tensor([tokenizer.bos_token_id] + ids[: n_tokens - 1], dtype=torch.long)
        n_sentences *= 2
