import time

import pytest
import torch
from sae_lens import HookedSAETransformer

import saetools
from saetools.data import load_words
from saetools.models import loading
from saetools.models.tokenizer import non_single_token_words


def test_bundled_model_loads_in_eval_mode(bundled_model):
    assert isinstance(bundled_model, HookedSAETransformer)
    assert not bundled_model.training
    cfg = bundled_model.cfg
    assert (cfg.normalization_type, cfg.positional_embedding_type, cfg.act_fn) == ("LN", "standard", "gelu_new")


def test_bundled_tokenizer_behaves_like_gpt2(bundled_model):
    toks = bundled_model.to_str_tokens("Then, Mary and John went to the store.")
    assert toks[0] == "<|endoftext|>"
    assert toks[1:6] == ["Then", ",", " Mary", " and", " John"]
    ids = bundled_model.to_tokens(" Mary", prepend_bos=False)
    assert ids.shape == (1, 1)
    words = load_words("names") + load_words("places") + load_words("objects")
    assert non_single_token_words(bundled_model.tokenizer, words) == []


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="tiny-ioi"):
        saetools.load_model("gpt-17")


def test_missing_model_file_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        saetools.load_model(str(tmp_path))


def test_gpt2_offline_fails_fast_naming_the_bundled_model(monkeypatch, tmp_path):
    # An endpoint that refuses connections and an empty cache: the "no hub" situation.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(loading, "is_cached", lambda repo: False)
    t0 = time.perf_counter()
    with pytest.raises(loading.ModelUnavailableError, match="tiny-ioi"):
        saetools.load_model("gpt2")
    assert time.perf_counter() - t0 < 10.0


def test_gpt2_offline_mode_fails_fast(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(loading, "is_cached", lambda repo: False)
    with pytest.raises(loading.ModelUnavailableError, match="gpt2-small|gpt2"):
        saetools.load_model("gpt2-small")


def test_save_and_load_roundtrip(tmp_path, random_model):
    random_model.tokenizer.save_pretrained(tmp_path)
    loading.save_model(random_model, tmp_path)
    again = saetools.load_model(str(tmp_path))
    tokens = random_model.to_tokens("Then, Mary and John")
    with torch.no_grad():
        torch.testing.assert_close(again(tokens), random_model(tokens), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_random_gpt2_small_has_gpt2_shapes_and_hooks():
    model = loading.random_gpt2_small()
    tokens = torch.randint(0, 50257, (2, 7))
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in {
            "blocks.9.attn.hook_z", "blocks.11.hook_resid_post", "blocks.0.attn.hook_pattern"})
    assert logits.shape == (2, 7, 50257)
    assert cache["blocks.9.attn.hook_z"].shape == (2, 7, 12, 64)
    assert cache["blocks.11.hook_resid_post"].shape == (2, 7, 768)
    assert cache["blocks.0.attn.hook_pattern"].shape == (2, 12, 7, 7)
    assert sum(p.numel() for p in model.parameters()) > 160_000_000


def test_bundled_model_unembedding_is_tied_like_gpt2(bundled_model):
    torch.testing.assert_close(bundled_model.W_U, bundled_model.W_E.T, atol=0, rtol=0)


def test_tied_training_keeps_w_u_equal_to_w_e_transposed(tmp_path):
    from saetools.models.build.tiny_ioi import TrainConfig, train_tiny_ioi

    cfg = TrainConfig(steps=3, warmup=1, batch_size=4, n_layers=1, d_model=16, n_heads=2, ema_start=1)
    train_tiny_ioi(cfg, tmp_path, eval_every=0)
    model = saetools.load_model(str(tmp_path))
    torch.testing.assert_close(model.W_U, model.W_E.T, atol=0, rtol=0)


def test_training_is_deterministic_in_its_seed(tmp_path):
    from safetensors.torch import load_file

    from saetools.models.build.tiny_ioi import TrainConfig, train_tiny_ioi

    cfg = TrainConfig(steps=4, warmup=1, batch_size=4, n_layers=1, d_model=16, n_heads=2, ema_start=1)
    for run in ("a", "b"):
        train_tiny_ioi(cfg, tmp_path / run, eval_every=0)
    a, b = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fast_gelu_equals_transformer_lens_gelu_new_with_and_without_gradient():
    from transformer_lens.utilities.activation_functions import gelu_new as tl_gelu_new

    from saetools.models.loading import gelu_new

    x = torch.linspace(-12, 12, 10001, dtype=torch.float64)
    torch.testing.assert_close(gelu_new(x.clone()), tl_gelu_new(x), atol=1e-12, rtol=1e-12)
    xg = x.clone().requires_grad_(True)
    xt = x.clone().requires_grad_(True)
    gelu_new(xg).sum().backward()
    tl_gelu_new(xt).sum().backward()
    torch.testing.assert_close(xg.grad, xt.grad, atol=1e-12, rtol=1e-12)


def test_loaded_models_use_the_fast_gelu_and_match_transformer_lens(bundled_model):
    from transformer_lens.utilities.activation_functions import gelu_new as tl_gelu_new

    from saetools.models.loading import gelu_new

    assert all(block.mlp.act_fn is gelu_new for block in bundled_model.blocks)
    tokens = torch.randint(1, bundled_model.cfg.d_vocab, (4, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast = bundled_model(tokens)
        for block in bundled_model.blocks:
            block.mlp.act_fn = tl_gelu_new
        try:
            reference = bundled_model(tokens)
        finally:
            for block in bundled_model.blocks:
                block.mlp.act_fn = gelu_new
    torch.testing.assert_close(fast, reference, atol=1e-4, rtol=1e-5)


def test_loaded_models_keep_the_unembedding_in_the_layout_transformer_lens_reads(bundled_model):
    """``Unembed`` reads ``W_U.T.contiguous()``: the loaded layout makes that free, same logits."""
    W = bundled_model.W_U
    assert W.T.is_contiguous() and W.T.contiguous().data_ptr() == W.data_ptr()
    tokens = torch.randint(1, bundled_model.cfg.d_vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast = bundled_model(tokens)
        resid = bundled_model(tokens, stop_at_layer=bundled_model.cfg.n_layers)
        reference = bundled_model.ln_final(resid) @ W.detach().contiguous() + bundled_model.b_U
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
