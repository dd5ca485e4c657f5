"""The synthetic corpora the bundled models are trained on, and their packing into rows.

The ``tiny-ioi`` corpus: seeded document generators, mixed by :class:`CorpusConfig`, built so
that the only rule solving every IOI-like sentence is Wang et al.'s (2022): *the answer is the
first-clause name that is not repeated*.

* **IOI** sentences (Wang et al. 2022): ``"Then, Mary and John went to the store. John gave a
  ring to Mary."`` built from compositional templates (``data/ioi_templates.json``) plus the
  Wang et al. templates that are not held out;
* **distractor** IOI sentences: a third, new name stands next to the subject in the second
  clause and is never the answer -- after it (``"John, with Kevin, gave a ring to Mary."``) or
  before it (``"Kevin said that John gave a ring to Mary."``). In plain IOI the subject is
  always the last name before the answer; a model can then answer "the first-clause name that
  is not the most recent one" without ever noticing the repetition. With the new name last,
  that shortcut fails, and with it first, "not the first name of the second clause" fails;
* **triple-S** sentences: the subject is named a third time (``"... John was happy, and John
  gave a ring to Mary."``);
* **recall** sentences with a single name that is later copied after "to"
  (``"Today, Mary went to the park. The ring was given to Mary."``), over every name including
  held-out ones: it trains copying *any* name from context;
* **grammar** sentences from a small grammar over the same vocabulary (every name, including
  held-out ones, so their embeddings are trained);
* **copying** sequences: a random word list followed by its repeat (``" store Mary ring store
  Mary ring."``), the format in which :func:`saetools.circuits.copying_scores` probes induction
  and duplicate-token heads.

No sentence has three distinct names with one of the first two as a coin-flip answer (the ABC
distribution): such sentences reward "avoid the last name", the shortcut above.

``tiny-rotary`` trains on rows that start at BOS: :func:`long_document` text (the sentences
above run together) and passkey documents (:func:`passkey_document`, the protocol of Mohtashami
& Jaggi 2023 that LM-Infinite evaluates).

Held out for evaluation (see :func:`saetools.data.heldout_templates` /
:func:`saetools.data.heldout_names`): some template strings never occur, the distractor phrase
held-out distractor phrase of ``data/ioi_templates.json`` never occurs, and some names never occur in an IOI sentence, so
choosing between two first-clause names -- the IOI task itself -- is never trained on them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from saetools.data import heldout_names, heldout_templates, ioi_template_data, load_words, with_distractor

KINDS: tuple[str, ...] = ("ioi", "distractor", "triple", "recall", "grammar", "copying")

_TRIPLE = (" was happy, and {S}", " smiled. Then {S}", " came back, and {S}")

__all__ = [
    "KINDS",
    "CorpusConfig",
    "generate_labelled_documents",
    "training_templates",
    "fill_template",
    "generate_documents",
    "tokenizer_training_text",
    "pack_documents",
    "PASSKEY_FILLER",
    "passkey",
    "passkey_document",
    "passkey_question",
    "passkey_fit",
    "long_document",
    "long_document_tokens",
]


@dataclass(frozen=True, kw_only=True)
class CorpusConfig:
    """Mixture weights of the document generators (normalised to sum to 1)."""

    ioi: float = 0.25
    """Weight of IOI sentences (names A, B, B)."""
    distractor: float = 0.25
    """Weight of IOI sentences with a new, non-answer name next to the subject."""
    triple: float = 0.10
    """Weight of IOI sentences that name the subject three times."""
    recall: float = 0.15
    """Weight of single-name recall sentences (every name, held-out ones included)."""
    grammar: float = 0.10
    """Weight of small-grammar sentences."""
    copying: float = 0.15
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


def _ioi(rng: np.random.Generator, templates, names, places, objects, *, variant: str) -> str:
    """One IOI sentence with its answer; ``variant`` is ``"ioi"``, ``"distractor"`` or ``"triple"``."""
    template = templates[rng.integers(len(templates))]
    picked = rng.choice(len(names), size=3, replace=False)
    io, s, c = (names[i] for i in picked)
    if variant == "distractor":
        d = ioi_template_data()["distractors"]
        phrases = d["after"] + d["before"]
        template = with_distractor(template, c, phrase=phrases[rng.integers(len(phrases))])
    elif variant == "triple":
        head, tail = template.rsplit("{S}", 1)
        template = head + "{S}" + _TRIPLE[rng.integers(len(_TRIPLE))] + tail
    # The pattern decides the first-clause order (ABB: IO first; BAB: S first).
    n1, n2 = (io, s) if rng.random() < 0.5 else (s, io)
    place = places[rng.integers(len(places))]
    obj = objects[rng.integers(len(objects))]
    return f"{fill_template(template, n1=n1, n2=n2, s=s, place=place, obj=obj)} {io}."


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
    return f"{span} {span}."


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
        "ioi": lambda: _ioi(rng, templates, ioi_names, places, objects, variant="ioi"),
        "distractor": lambda: _ioi(rng, templates, ioi_names, places, objects, variant="distractor"),
        "triple": lambda: _ioi(rng, templates, ioi_names, places, objects, variant="triple"),
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
    # The passkey protocol's words (tiny-rotary shares this tokenizer); digits are split one by
    # one by the tokenizer, so no number needs to be seen.
    extra += [PASSKEY_FILLER + _KEY_LINE.format(key="12345") + PASSKEY_QUESTION] * 50
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


# The passkey documents of tiny-rotary (LM-Infinite): the protocol of Mohtashami & Jaggi (2023).

PASSKEY_FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
"""The filler block that surrounds the key line."""
_FILLER_SENTENCES = tuple(" " + x.strip() + "." for x in PASSKEY_FILLER.split(".") if x.strip())
_KEY_LINE = " The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = " What is the pass key? The pass key is"
"""The question after which the key is decoded (greedily)."""


def passkey(rng: np.random.Generator, n_digits: int = 5) -> str:
    """A random passkey of ``n_digits`` digits (first digit non-zero)."""
    return str(int(rng.integers(10 ** (n_digits - 1), 10**n_digits)))


def passkey_question(n_filler: int, key: str, depth: float) -> str:
    """A passkey prompt, ending with the question: ``n_filler`` filler sentences with the key
    line inserted after ``round(depth * n_filler)`` of them (``depth`` in [0, 1])."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    sentences = [_FILLER_SENTENCES[i % len(_FILLER_SENTENCES)] for i in range(n_filler)]
    at = round(depth * n_filler)
    return "".join(sentences[:at]) + _KEY_LINE.format(key=key) + "".join(sentences[at:]) + PASSKEY_QUESTION


def passkey_fit(tokenizer, length: int, *, answer: str = " 12345") -> int:
    """The most filler sentences a passkey prompt can have so that BOS, the prompt and ``answer``
    fit in ``length`` tokens of ``tokenizer`` (0: not even one fits)."""
    n_tok = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    reserve = 1 + n_tok(answer)
    n = 0
    while reserve + n_tok(passkey_question(n + 1, "12345", 0.0)) <= length:
        n += 1
    return n


def passkey_document(rng: np.random.Generator, n_filler: int) -> str:
    """A training document: a passkey prompt with its key at a uniformly random depth, answered."""
    key = passkey(rng)
    return f"{passkey_question(n_filler, key, float(rng.random()))} {key}."


def long_document(n_sentences: int, *, seed: int) -> str:
    """A long document: ``n_sentences`` corpus sentences run together without breaks."""
    if n_sentences <= 0:
        raise ValueError(f"n_sentences must be positive, got {n_sentences}")
    return "".join(" " + s for s in generate_documents(n_sentences, seed=seed))


def long_document_tokens(tokenizer, n_tokens: int, *, seed: int) -> torch.Tensor:
    """``[n_tokens]`` token ids: BOS followed by the start of a seeded :func:`long_document`."""
    n_sentences = max(4, n_tokens // 12)  # sentences average ~20 tokens; retry if short
    while True:
        ids = tokenizer(long_document(n_sentences, seed=seed), add_special_tokens=False)["input_ids"]
        if len(ids) >= n_tokens - 1:
            return torch.tensor([tokenizer.bos_token_id] + ids[: n_tokens - 1], dtype=torch.long)
        n_sentences *= 2
