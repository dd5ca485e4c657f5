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


def test_heldout_names_never_in_ioi_or_abc_training_sentences():
    held = set(heldout_names())
    docs = generate_labelled_documents(4000, seed=0)
    ioi_docs = [text for kind, text in docs if kind in ("ioi", "abc")]
    assert len(ioi_docs) > 1000
    for text in ioi_docs:
        assert not (set(text.replace(".", " ").replace(",", " ").split()) & held), text


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
