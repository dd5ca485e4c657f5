"""Word lists and templates shipped with saetools (IOI names, places, objects, templates).

The files are plain text / JSON so that users can read and extend them; these loaders are the
only place that knows where they live.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Literal

WordList = Literal["names", "places", "objects"]

__all__ = ["WordList", "load_words", "ioi_template_data", "heldout_names", "heldout_templates", "with_distractor"]


@lru_cache(maxsize=None)
def load_words(kind: WordList) -> tuple[str, ...]:
    """Return a shipped word list, without comments or blank lines, in file order."""
    if kind not in ("names", "places", "objects"):
        raise ValueError(f"unknown word list {kind!r}; choose 'names', 'places' or 'objects'")
    text = resources.files(__package__).joinpath(f"{kind}.txt").read_text(encoding="utf-8")
    words = tuple(w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#"))
    if len(set(words)) != len(words):
        raise ValueError(f"{kind}.txt contains duplicates")
    return words


@lru_cache(maxsize=None)
def ioi_template_data() -> dict:
    """The parsed ``ioi_templates.json`` (see its ``_doc`` fields for the placeholders)."""
    text = resources.files(__package__).joinpath("ioi_templates.json").read_text(encoding="utf-8")
    return json.loads(text)


def heldout_names() -> tuple[str, ...]:
    """Names that the bundled model never saw in an IOI or ABC training sentence."""
    every = ioi_template_data()["heldout"]["name_every"]
    return load_words("names")[every - 1 :: every]


def heldout_templates() -> tuple[str, ...]:
    """Template strings that never occur in the bundled model's training corpus."""
    data = ioi_template_data()
    held = data["heldout"]
    return tuple(data["wang2022"][i] for i in held["wang2022"]) + tuple(
        data["makelov2024"][i] for i in held["makelov2024"]
    )


def with_distractor(template: str, name: str, *, phrase: str | None = None) -> str:
    """``template`` with a new name ``name`` placed next to its subject ``{S}`` by ``phrase``.

    ``phrase`` holds ``{C}`` (default: the held-out phrase of ``ioi_templates.json``,
    ``", together with {C},"``). A phrase that ends with a space (``"{C} said that "``) goes
    before the subject, any other right after it: ``"... {S} gave a {OBJECT} to"`` becomes
    ``"... {S}, together with Kevin, gave a {OBJECT} to"``.
    """
    phrase = ioi_template_data()["distractors"]["heldout"] if phrase is None else phrase
    if "{C}" not in phrase:
        raise ValueError(f"distractor phrase {phrase!r} has no {{C}} placeholder")
    if template.count("{S}") < 1:
        raise ValueError(f"template {template!r} has no {{S}} placeholder")
    head, tail = template.rsplit("{S}", 1)
    filled = phrase.replace("{C}", name)
    return head + (filled + "{S}" if phrase.endswith(" ") else "{S}" + filled) + tail
