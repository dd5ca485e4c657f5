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
