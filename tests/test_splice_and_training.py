import pytest
import torch
from conftest import random_standard_sae
from sae_lens import TopKTrainingSAEConfig
from sae_lens.saes.sae import SAEMetadata

import saetools
from saetools.hooks import HookNameError, attached_hook_count
from saetools.splicing import SAEShapeError


def _sae(hook="blocks.1.hook_resid_pre", seed=0, d_in=32):
    return random_standard_sae(d_in=d_in, hook=hook, seed=seed)


def test_error_term_leaves_logits_unchanged_and_plain_splice_changes_them(random_model):
    tokens = random_model.to_tokens("Then, Mary and John went to the store.")
    sae = _sae()
    with torch.no_grad():
        clean = random_model(tokens)
        with saetools.splice(random_model, sae, use_error_term=True):
            with_err = random_model(tokens)
        with saetools.splice(random_model, sae):
            spliced = random_model(tokens)
    assert (with_err - clean).abs().max() <= 1e-5
    assert (spliced - clean).abs().max() > 1e-3


def test_wrong_width_and_unknown_hook_are_clear_errors(random_model):
    with pytest.raises(SAEShapeError, match="d_in=48.*width 32"):
        with saetools.splice(random_model, _sae(d_in=48)):
            pass
    with pytest.raises(HookNameError, match="nearest"):
        with saetools.splice(random_model, _sae(hook="blocks.1.hook_resid_pree")):
            pass


def test_model_is_restored_after_an_exception(random_model):
    hooks_before = attached_hook_count(random_model)
    with pytest.raises(RuntimeError, match="inside"):
        with saetools.splice(random_model, _sae(), use_error_term=True):
            assert "blocks.1.hook_resid_pre" in random_model.acts_to_saes
            raise RuntimeError("inside")
    assert random_model.acts_to_saes == {}
    assert attached_hook_count(random_model) == hooks_before


def test_train_sae_reduces_reconstruction_error():
    gen = torch.Generator().manual_seed(0)
    # Sparse non-negative combinations of 64 random directions in 32 dimensions.
    dirs = torch.nn.functional.normalize(torch.randn(64, 32, generator=gen), dim=-1)
    codes = torch.rand(8192, 64, generator=gen) * (torch.rand(8192, 64, generator=gen) < 0.05)
    acts = codes @ dirs
    cfg = TopKTrainingSAEConfig(d_in=32, d_sae=128, k=4, metadata=SAEMetadata(hook_name="x"))
    sae = saetools.train_sae(acts, cfg, total_samples=80_000, batch_size=256, lr=3e-3, seed=0)
    with torch.no_grad():
        fvu = ((sae(acts) - acts) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum()
    assert fvu < 0.5


def test_train_sae_rejects_nans_and_wrong_width():
    cfg = TopKTrainingSAEConfig(d_in=8, d_sae=16, k=2, metadata=SAEMetadata(hook_name="x"))
    bad = torch.zeros(1000, 8)
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        saetools.train_sae(bad, cfg, total_samples=1000, batch_size=100)
    with pytest.raises(ValueError, match="d_in=8"):
        saetools.train_sae(torch.zeros(1000, 9), cfg, total_samples=1000, batch_size=100)


def test_collect_activations_drops_bos_and_flattens_heads(random_model):
    tokens = random_model.to_tokens(["Then, Mary and John", "Then, Bob and Amy"])
    acts = saetools.collect_activations(random_model, tokens, "blocks.0.attn.hook_z")
    assert acts.shape == (2 * (tokens.shape[1] - 1), 32)
