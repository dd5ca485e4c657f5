"""Shared fixtures: a small random model built from a config, and the bundled model."""

from __future__ import annotations

import contextlib
import copy
import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")

from transformer_lens import HookedTransformerConfig  # noqa: E402

from saetools.models.loading import build_model, load_model  # noqa: E402


def tiny_random_config(**overrides) -> HookedTransformerConfig:
    kw = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=64, d_vocab=1041,
              act_fn="gelu_new", normalization_type="LN")
    kw.update(overrides)
    return HookedTransformerConfig(**kw)


def random_standard_sae(*, d_in: int = 32, hook: str = "blocks.1.hook_resid_pre", seed: int = 0, d_sae: int = 64):
    """A sae-lens StandardSAE with seeded random weights (large enough to change outputs)."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook)))
        for p in sae.parameters():
            p.data.normal_(0, 0.3)
    return sae


def random_model_with_bundled_tokenizer(**overrides):
    """A seeded random model (``tiny_random_config(**overrides)``) with the bundled tokenizer."""
    from saetools.models.loading import bundled_model_dir
    from saetools.models.tokenizer import load_tokenizer

    tok = load_tokenizer(bundled_model_dir("tiny-ioi"))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(tiny_random_config(**{"d_vocab": len(tok), **overrides}), tok)
    return model.eval()


@pytest.fixture
def random_model():
    """A 2-layer random model with the bundled tokenizer (seeded, no download)."""
    return random_model_with_bundled_tokenizer()


@pytest.fixture(scope="session")
def _bundled():
    return load_model("tiny-ioi", device="cpu")


@pytest.fixture
def bundled_model(_bundled):
    """The bundled tiny-ioi model; a deep copy, so tests cannot contaminate each other."""
    return copy.deepcopy(_bundled)


@pytest.fixture(scope="session")
def bundled_model_shared(_bundled):
    """The bundled model shared read-only across tests (for expensive evaluations)."""
    return _bundled



@contextlib.contextmanager
def shape_checks_off():
    """Shape and type checks off, as for a user: for tests of saetools's own error messages on
    inputs of the wrong shape or type (under pytest, jaxtyping and beartype would reject them
    first, before the message a user sees)."""
    import jaxtyping

    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)


@pytest.fixture
def user_view():
    """:func:`shape_checks_off` for a whole test."""
    with shape_checks_off():
        yield


# SAEs of the sae-lens releases that the full profiles read, built in the stand-in hub cache
STANDIN_SAES = {
    "gpt2-small-res-jb": ["blocks.7.hook_resid_pre", "blocks.8.hook_resid_pre"],
    "gpt2-small-res-jb-feature-splitting": ["blocks.8.hook_resid_pre_768", "blocks.8.hook_resid_pre_1536",
                                            "blocks.8.hook_resid_pre_3072"],
    "gpt2-small-hook-z-kk": ["blocks.9.hook_z"],
}


@pytest.fixture(scope="session")
def _gpt2_hub_caches(tmp_path_factory):
    """Hub and datasets caches holding the stand-ins of ``tests/hub_standins.py`` (built once)."""
    import hub_standins

    from saetools.models.corpus import generate_documents

    root = tmp_path_factory.mktemp("hf")
    hub_standins.add_gpt2(root / "hub")
    for release, ids in STANDIN_SAES.items():
        hub_standins.add_sae_release(root / "hub", release, ids)
    hub_standins.add_text_dataset(root / "datasets", "NeelNanda/pile-10k", generate_documents(1500, seed=7))
    return root / "hub", root / "datasets"


@pytest.fixture
def gpt2_hub(_gpt2_hub_caches):
    """Offline, with the Hugging Face caches holding GPT-2 (real config and tokenizer, random
    weights), the sae-lens releases of ``STANDIN_SAES`` and ``NeelNanda/pile-10k``, laid out as
    the hub serves them; for this process and the notebook kernels it starts."""
    import hub_standins

    with hub_standins.offline_hub(*_gpt2_hub_caches):
        yield _gpt2_hub_caches


@pytest.fixture(scope="session")
def _gpt2_standin_model(_gpt2_hub_caches):
    import hub_standins

    with hub_standins.offline_hub(*_gpt2_hub_caches):
        return load_model("gpt2", device="cpu")


@pytest.fixture
def gpt2_standin(gpt2_hub, _gpt2_standin_model):
    """``load_model("gpt2")`` on the stand-in hub (loaded once per session; do not modify it)."""
    return _gpt2_standin_model
