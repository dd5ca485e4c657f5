import numpy as np
import pytest
import torch

from saetools.data import load_words
from saetools.tasks import ioi

NAMES = list(load_words("names"))


@pytest.mark.parametrize("pattern", ["ABB", "BAB"])
def test_positions_point_at_the_right_tokens(random_model, pattern):
    spec = ioi.wang_spec(40, seed=0, patterns=(pattern,))
    batch = ioi.render(random_model, spec)
    for i in range(len(batch)):
        toks = random_model.to_str_tokens(batch.tokens[i])
        p = {k: int(v[i]) for k, v in batch.positions.items()}
        assert toks[p["IO"]] == " " + spec.io[i]
        assert toks[p["S1"]] == " " + spec.s[i]
        assert toks[p["S2"]] == " " + spec.s[i]
        assert p["S2"] > max(p["IO"], p["S1"])
        assert (p["IO"] < p["S1"]) == (pattern == "ABB")
        assert p["END"] == len(random_model.to_str_tokens(batch.texts[i])) - 1
        assert toks[p["END"]] == " to"


def test_makelov_prompts_have_equal_length(random_model):
    batch = ioi.render(random_model, ioi.makelov_spec(60, seed=1), equal_length=True)
    assert (batch.positions["END"] == 18).all()  # BOS + 18 tokens


def test_makelov_splits_are_disjoint():
    s = ioi.makelov_name_splits()
    assert not (set(s["base"]) & set(s["io_targets"])) and not (set(s["io_targets"]) & set(s["s_targets"]))
    train, test = ioi.makelov_spec(200, seed=0, split="train"), ioi.makelov_spec(200, seed=0, split="test")
    assert not (set(train.io) & set(test.io))
    assert set(train.template).isdisjoint(set(test.template))


@pytest.mark.parametrize("attribute", ["io", "s", "pos"])
def test_counterfactuals_change_exactly_one_attribute(attribute):
    spec = ioi.makelov_spec(300, seed=0)
    cf = ioi.counterfactual(spec, attribute, seed=1)
    changed = {"io": cf.io != spec.io, "s": cf.s != spec.s, "pos": cf.pattern != spec.pattern}
    assert changed[attribute].all()
    for other, diff in changed.items():
        if other != attribute:
            assert not diff.any(), other
    assert (cf.template == spec.template).all() and (cf.place == spec.place).all()
    # new names never collide with names already in the prompt
    assert (cf.io != cf.s).all()


def test_resample_context_keeps_the_attributes_and_shuffles_the_rest():
    spec = ioi.makelov_spec(300, seed=0)
    out = ioi.resample_context(spec, seed=4)
    for c in ("io", "s", "s1", "pattern"):
        assert (out[c] == spec[c]).all(), c
    rows = list(zip(*(spec[c] for c in ("template", "place", "object"))))
    new = list(zip(*(out[c] for c in ("template", "place", "object"))))
    assert sorted(new) == sorted(rows)  # the same contexts, drawn jointly from other prompts
    assert np.mean([a != b for a, b in zip(new, rows)]) > 0.9
    assert ioi.resample_context(spec, seed=4).equals(out)
    with pytest.raises(ValueError, match="at least 2"):
        ioi.resample_context(spec[:1], seed=0)


def test_symmetric_adds_swapped_twins():
    spec = ioi.wang_spec(10, seed=0, symmetric=True)
    assert (spec.io[0::2].to_numpy() == spec.s[1::2].to_numpy()).all()


def test_abc_has_three_distinct_names(random_model):
    spec = ioi.abc_spec(50, seed=0)
    assert ((spec.io != spec.s) & (spec.s != spec.s1) & (spec.io != spec.s1)).all()
    batch = ioi.render(random_model, spec)
    toks = random_model.to_str_tokens(batch.tokens[0])
    assert toks[int(batch.positions["S2"][0])] == " " + spec.s[0]


def test_multi_token_name_is_a_clear_error(random_model):
    spec = ioi.wang_spec(4, seed=0, names=["Mary", "John", "Bartholomewzz"])
    with pytest.raises(ioi.MultiTokenWordError, match="Bartholomewzz"):
        ioi.render(random_model, spec)
    assert ioi.single_token_words(random_model, ["Mary", "Bartholomewzz"]) == ["Mary"]


def test_metrics_are_calibrated_on_constructed_logits(random_model):
    batch = ioi.render(random_model, ioi.wang_spec(8, seed=0))
    logits = torch.zeros(len(batch), batch.tokens.shape[1], random_model.cfg.d_vocab)
    rows = torch.arange(len(batch))
    end = batch.positions["END"]
    logits[rows, end, batch.io_ids] = 3.0
    logits[rows, end, batch.s_ids] = 1.0
    torch.testing.assert_close(ioi.logit_diff(logits, batch), torch.full((8,), 2.0))
    assert ioi.accuracy(logits, batch).tolist() == [1.0] * 8
    v = random_model.cfg.d_vocab
    expected = torch.exp(torch.tensor(3.0)) / (torch.exp(torch.tensor(3.0)) + torch.exp(torch.tensor(1.0)) + v - 2)
    torch.testing.assert_close(ioi.io_probability(logits, batch), expected.expand(8))
    torch.testing.assert_close(ioi.normalized_score(torch.tensor([2.0, 0.5]), clean=2.0, corrupted=0.5),
                               torch.tensor([1.0, 0.0]))


def test_batch_indexing_keeps_fields_aligned(random_model):
    batch = ioi.render(random_model, ioi.wang_spec(12, seed=0))
    sub = batch[[3, 5]]
    assert sub.texts == [batch.texts[3], batch.texts[5]]
    assert torch.equal(sub.io_ids, batch.io_ids[[3, 5]])
    assert len(batch[2:6]) == 4
