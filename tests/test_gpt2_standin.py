"""The GPT-2 path, offline: GPT-2's real config and tokenizer with random weights, sae-lens's
GPT-2 releases and a hub dataset, all laid out as the Hugging Face cache holds them
(``tests/hub_standins.py``). The loading code is the real one; the weights are random, so these
tests check paths, shapes and hook names, never science."""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import pytest
import torch

import saetools
from saetools.models import loading

pytestmark = pytest.mark.usefixtures("gpt2_hub")
README = Path(__file__).parents[1] / "README.md"


def test_load_model_gpt2_reads_the_hub_cache_offline(gpt2_standin):
    from huggingface_hub import constants
    from sae_lens import HookedSAETransformer

    assert constants.HF_HUB_OFFLINE
    model = gpt2_standin
    assert isinstance(model, HookedSAETransformer) and not model.training
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model, model.cfg.n_ctx) == (12, 12, 768, 1024)
    assert model.cfg.d_vocab == 50257 and model.cfg.act_fn == "gelu_new"
    # GPT-2's byte-level BPE: " Mary" is one token (5335), " Doris" two
    assert model.tokenizer(" Mary", add_special_tokens=False)["input_ids"] == [5335]
    assert len(model.tokenizer(" Doris", add_special_tokens=False)["input_ids"]) == 2
    assert model.to_tokens("Hi")[0, 0].item() == model.tokenizer.bos_token_id == 50256


def test_the_readme_quick_look_runs_on_gpt2(gpt2_standin, monkeypatch):
    code = re.search(r"## Quick look\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert 'load_model("tiny-ioi")' in code
    monkeypatch.setattr(saetools, "load_model", lambda name: gpt2_standin if name == "gpt2" else None)
    # the same code on GPT-2, with 50 prompts instead of 500 (a CPU's seconds)
    assert "wang_spec(500," in code
    code = code.replace('load_model("tiny-ioi")', 'load_model("gpt2")').replace("wang_spec(500,", "wang_spec(50,")
    exec(compile(code, "README quick look", "exec"), {})


def test_default_names_adapt_to_the_tokenizer(gpt2_standin):
    from saetools.tasks import ioi

    names = ioi.default_words("names", gpt2_standin)
    assert "Doris" not in names and "Mary" in names and len(names) == 153
    spec = ioi.wang_spec(300, seed=0, model=gpt2_standin)
    batch = ioi.render(gpt2_standin, spec)
    assert batch.tokens.shape[0] == 300
    for attr in ("io", "s"):
        ioi.render(gpt2_standin, ioi.counterfactual(spec, attr, seed=1, model=gpt2_standin))
    ioi.render(gpt2_standin, ioi.makelov_spec(50, seed=0, model=gpt2_standin), equal_length=True)
    # without the model, the default list holds names GPT-2 splits: a clear error with the fix
    with pytest.raises(ioi.MultiTokenWordError, match=r"model=model"):
        ioi.render(gpt2_standin, ioi.wang_spec(300, seed=0))


@pytest.mark.parametrize("name, repo", [("gpt2-medium", "gpt2-medium"),
                                        ("pythia-70m-deduped", "EleutherAI/pythia-70m-deduped"),
                                        ("gemma-2-2b", "google/gemma-2-2b")])
def test_any_transformer_lens_name_gives_the_same_offline_error(name, repo):
    assert loading.pretrained_repo(name) == repo
    t0 = time.perf_counter()
    with pytest.raises(saetools.ModelUnavailableError, match=rf"{re.escape(repo)} is not in the local cache.*tiny-ioi"):
        saetools.load_model(name)
    assert time.perf_counter() - t0 < 10


def test_an_unknown_model_name_names_the_nearest():
    with pytest.raises(ValueError, match=r"unknown model 'pythia-70m-dedupe'.*nearest.*pythia-70m-deduped"):
        saetools.load_model("pythia-70m-dedupe")


@pytest.mark.parametrize("release, sae_id, hook, d_sae", [
    ("gpt2-small-res-jb", "blocks.8.hook_resid_pre", "blocks.8.hook_resid_pre", 24576),
    ("gpt2-small-res-jb-feature-splitting", "blocks.8.hook_resid_pre_1536", "blocks.8.hook_resid_pre", 1536),
    ("gpt2-small-hook-z-kk", "blocks.9.hook_z", "blocks.9.attn.hook_z", 24576),
])
def test_pretrained_releases_load_and_splice_into_gpt2(gpt2_standin, release, sae_id, hook, d_sae):
    from saetools import splice
    from saetools.saes import load_pretrained_sae

    sae = load_pretrained_sae(release, sae_id)
    assert sae.cfg.metadata.hook_name == hook and sae.cfg.d_sae == d_sae and sae.cfg.d_in == 768
    tokens = gpt2_standin.to_tokens(["When Mary and John went to the store, John gave a drink to"])
    with torch.no_grad():
        clean = gpt2_standin(tokens)
        with splice(gpt2_standin, sae, use_error_term=True):
            spliced = gpt2_standin(tokens)
    torch.testing.assert_close(spliced, clean, atol=1e-3, rtol=1e-3)


def test_the_example_sae_of_gpt2_links_its_latents_to_neuronpedia(gpt2_standin):
    from saetools.latents import gather_latent_data
    from saetools.saes import example_sae
    from saetools.widgets import latent_html

    sae = example_sae("gpt2")
    assert example_sae("pythia-70m") is None
    tokens = gpt2_standin.to_tokens(["When Mary and John went to the store, John gave a drink to"])
    data = gather_latent_data(gpt2_standin, sae, tokens, latents=[5, 17])
    assert data.neuronpedia_id == sae.cfg.metadata.neuronpedia_id and data.neuronpedia_id  # from sae-lens's directory
    url = data.neuronpedia_url(17)
    assert url == f"https://neuronpedia.org/{data.neuronpedia_id}/17" and url in latent_html(data, 17).html


def test_webtext_attention_saes_load_for_gpt2_nodes(gpt2_standin):
    from saetools.dictionaries import Node, webtext_attention_saes

    (d,) = webtext_attention_saes([Node(9, "z", "END")]).values()
    assert d.node == Node(9, "z", "END") and d.sae.cfg.d_sae == 24576


def test_a_hub_dataset_is_read_from_the_cache_offline(gpt2_standin):
    from saetools.models.text import DatasetUnavailableError, dataset_tokens

    tokens, keep = dataset_tokens(gpt2_standin, "NeelNanda/pile-10k", n_rows=6, context_size=32)
    assert tokens.shape == (6, 32) and (tokens[:, 0] == 50256).all() and not keep[:, 0].any()
    with pytest.raises(DatasetUnavailableError, match="Skylion007/openwebtext.*cache"):
        dataset_tokens(gpt2_standin, "Skylion007/openwebtext", n_rows=2)


def _shrunk(cfg, **sizes):
    """A full profile's configuration with small sizes: the same code path (releases, datasets,
    circuits) at test scale."""
    return dataclasses.replace(cfg, **sizes)


def test_the_full_profiles_code_paths_run_on_gpt2(gpt2_standin):
    """Every full profile that reads a release or a dataset, at the smallest sizes."""
    from saetools.experiments import engels2024_dark_matter as dm
    from saetools.experiments import lee2025_top_afa as lee
    from saetools.experiments import mudide2024_switch_sae as switch
    from saetools.experiments.protocol import ClaimFailed

    runs = {
        lee: _shrunk(lee.Config.profile("full"), n_documents=24, n_eval_documents=6, d_sae=64, context_size=64,
                     total_samples=1024, batch_size=256, k_values=(8,), afa_coefficients=(1 / 32,),
                     toy_samples=600, toy_superposition_h=96),
        switch: _shrunk(switch.Config.profile("full"), n_documents=24, n_eval_documents=6, width=64, k_values=(4,),
                        flop_matched_experts=(2,), width_matched_experts=(2,), width_matched_k=4,
                        balance_alphas=(0.0,), balance_experts=2, total_samples=1024, batch_size=256,
                        context_size=64),
        dm: _shrunk(dm.Config.profile("full"), pretrained_ids=dm.FEATURE_SPLITTING[:3], n_rows=240, context_size=32,
                    n_splice_rows=2, drop_first=2, noise_ablate_fractions=(0.0, 0.5), noise_sigmas=(0.0, 1.0)),
    }
    results = {}
    for experiment, cfg in runs.items():
        results[experiment] = result = experiment.run(gpt2_standin, cfg)
        experiment.figures(result)
        try:
            experiment.check(result)
        except ClaimFailed:
            pass  # random weights: the claims need not hold; the path ran to the check
    assert "gpt2-small-res-jb blocks.8.hook_resid_pre" in set(results[lee].table["sae"])
    assert len(results[dm].table) == 3 and results[dm].meta["hook_name"] == "blocks.8.hook_resid_pre"
