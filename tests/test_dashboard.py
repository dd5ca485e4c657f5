"""Latent dashboard: data gathering on a model, offline rendering, the ipywidgets browser."""

import socket

import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata

from saetools.latents import gather_latent_data
from saetools.widgets import dashboard_html, latent_browser, latent_html


@pytest.fixture
def data(random_model):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        sae = TopKSAE(TopKSAEConfig(d_in=32, d_sae=64, k=4, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_pre")))
        for p in sae.parameters():
            p.data.normal_(0, 0.3)
    tokens = random_model.to_tokens(["Then, Mary and John went to the store.", "Then, Bob and Amy went home."])
    return gather_latent_data(random_model, sae, tokens, n_latents=3, k_contexts=4, name="topk")


def test_gathered_data_is_consistent(data):
    assert len(data.latents) == 3
    j = data.latents[0]
    ctx = data.contexts[j]
    assert ctx and ctx[0].max_act == max(c.max_act for c in ctx)
    assert ctx[0].max_act in ctx[0].acts  # the centre token is in the window
    assert len(data.promoted[j]) == 8 and data.promoted[j][0][1] >= data.promoted[j][-1][1]
    counts, edges = data.histogram[j]
    assert sum(counts) > 0 and len(edges) == len(counts) + 1


def test_dashboard_renders_offline_and_browser_switches(data, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    j = data.latents[0]
    page = latent_html(data, j)._repr_html_()
    assert "<svg" in page and "promotes" in page and "unpkg" not in page
    assert data.contexts[j][0].tokens[0] in page or "colored" in page.lower()
    assert len(dashboard_html({"a": data}).html) > len(page)
    with pytest.raises(ValueError, match="not gathered"):
        latent_html(data, 10_000)
    panel = latent_browser({"a": data, "b": data}).widget()
    sae_pick, latent_pick = panel.children[0].children
    latent_pick.value = data.latents[1]
    shown = panel.children[1].value
    # an ipywidgets.HTML value does not run scripts: the page (and circuitsvis's script) is in an iframe
    assert shown.startswith("<iframe srcdoc=") and f"latent {data.latents[1]}" in shown
    assert "CircuitsVis.render(" in shown and "ColoredTokens" in shown


def test_display_sends_the_live_widget_and_the_static_fallback(data):
    bundle = latent_browser(data)._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    page = bundle["text/html"]
    assert all(f"latent {j}" in page for j in data.latents)
    assert page.count("var CircuitsVis=") == 1  # one bundle for all latents' contexts
    assert page.count("CircuitsVis.render(") == sum(bool(data.contexts[j]) for j in data.latents)


def test_histograms_have_labelled_axes(data, random_model):
    page = latent_html(data, data.latents[0]).html
    assert ">activation</text>" in page and ">count</text>" in page
    assert ">logit effect of the decoder direction</text>" in page
    counts, edges = data.logit_histogram[data.latents[0]]
    assert sum(counts) == random_model.cfg.d_vocab  # one value per vocabulary token


def test_neuronpedia_links_only_for_saes_that_have_pages(data):
    assert data.neuronpedia_url(3) is None and "neuronpedia" not in latent_html(data, data.latents[0]).html.lower()
    data.neuronpedia_id = "gpt2-small/7-res-jb"
    assert data.neuronpedia_url(3) == "https://neuronpedia.org/gpt2-small/7-res-jb/3"
    assert f"https://neuronpedia.org/gpt2-small/7-res-jb/{data.latents[0]}" in latent_html(data, data.latents[0]).html


def test_default_selection_skips_dead_dense_and_bos_latents():
    from saetools.latents import select_latents

    acts = torch.zeros(4, 40, 6)
    acts[:, :, 0] = 1.0  # dense: fires everywhere
    acts[:, 0, 1] = 5.0  # BOS-dominated
    acts[0, 3, 1] = 0.1
    acts[1, 4, 2] = 2.0  # rare, fine
    acts[:2, 5, 3] = 1.0  # fine, more frequent
    acts[0, 6, 4] = 1.0  # fine
    # latent 5 is dead
    first = torch.zeros(4, 40, dtype=torch.bool)
    first[:, 0] = True
    latents, skipped = select_latents(acts, first, n=2)
    assert skipped == {"dead": 1, "dense": 1, "bos": 1}
    assert latents == [3, 4] or latents == [3, 2]  # most frequent first, spread to the rarest
    assert sorted(select_latents(acts, first, n=10)[0]) == [2, 3, 4]
