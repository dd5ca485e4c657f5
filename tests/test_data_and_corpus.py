import pytest

from saetools.data import heldout_names, heldout_templates, ioi_template_data, load_words
from saetools.models.corpus import (
    CorpusConfig,
    generate_documents,
    generate_labelled_documents,
    training_templates,
)


def test_word_lists_are_unique_and_nonempty():
    for kind in ("names", "places", "objects"):
        words = load_words(kind)
        assert len(words) == len(set(words)) > 20


def test_unknown_word_list_is_a_clear_error(user_view):
    with pytest.raises(ValueError, match="names"):
        load_words("animals")


def test_heldout_templates_never_in_training():
    held = set(heldout_templates())
    train = set(training_templates())
    assert held and not (held & train)
    assert len(train) > 1000


IOI_KINDS = ("ioi", "distractor", "triple")


def test_heldout_names_never_in_ioi_training_sentences():
    held = set(heldout_names())
    docs = generate_labelled_documents(4000, seed=0)
    ioi_docs = [text for kind, text in docs if kind in IOI_KINDS]
    assert len(ioi_docs) > 1000
    for text in ioi_docs:
        assert not (set(text.replace(".", " ").replace(",", " ").split()) & held), text


def _names_in(text: str) -> list[str]:
    names = set(load_words("names"))
    return [w for w in text.replace(".", " ").replace(",", " ").split() if w in names]


def test_no_ioi_sentence_rewards_avoiding_the_last_name():
    """The shortcut "answer the first-clause name that is not the last one mentioned" fails on a
    good share of the IOI-like sentences, and every answer is the non-repeated first-clause name."""
    docs = [text for kind, text in generate_labelled_documents(4000, seed=1) if kind in IOI_KINDS]
    shortcut_fails = 0
    for text in docs:
        *context, answer = _names_in(text)
        first = context[:2]
        counts = {n: context.count(n) for n in first}
        assert answer in first and counts[answer] == 1 and max(counts.values()) >= 2, text
        last = context[-1]
        shortcut = [n for n in first if n != last]
        shortcut_fails += shortcut != [answer]
    assert shortcut_fails / len(docs) > 0.1, shortcut_fails / len(docs)


def test_heldout_distractor_phrase_never_in_training():
    phrase = ioi_template_data()["distractors"]["heldout"].replace("{C}", "").strip(" ,")
    assert phrase and phrase not in " ".join(generate_documents(5000, seed=2))


def test_copying_documents_are_plain_repeats():
    """The corpus trains repeats in the format copying_scores probes (a list, then the list again)."""
    docs = [text for kind, text in generate_labelled_documents(500, seed=0) if kind == "copying"]
    for text in docs:
        words = text.rstrip(".").split()
        half = len(words) // 2
        assert words[:half] == words[half:], text


def test_heldout_names_do_occur_elsewhere_in_the_corpus():
    held = set(heldout_names())
    text = " ".join(generate_documents(5000, seed=0))
    assert sum(1 for n in held if f" {n}" in text) == len(held)


def test_corpus_is_deterministic_in_its_seed():
    assert generate_documents(50, seed=3) == generate_documents(50, seed=3)
    assert generate_documents(50, seed=3) != generate_documents(50, seed=4)


def test_corpus_config_validates(user_view):
    with pytest.raises(ValueError, match="ioi"):
        CorpusConfig(ioi=-1)


def test_makelov_templates_are_three():
    assert len(ioi_template_data()["makelov2024"]) == 3
