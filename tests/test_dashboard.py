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
    panel = latent_browser({"a": data, "b": data})
    sae_pick, latent_pick = panel.children[0].children
    latent_pick.value = data.latents[1]
    assert f"latent {data.latents[1]}" in panel.children[1].value
