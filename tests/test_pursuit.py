"""Gradient pursuit: the batched version against the literal per-token rule.

See ``docs/engels2024_dark_matter.md``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from saetools.diagnostics.dark_matter.pursuit import (
    effective_decoder,
    gradient_pursuit,
    gradient_pursuit_reference,
    sae_gradient_pursuit,
)

WEIGHT_ATOL = 1e-5  # the tolerance on weights (float64 inputs, so selections cannot flip on ties)


def _problem(n=120, d=12, h=48, seed=0, correlated=False):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(h, d, generator=g, dtype=torch.float64)
    if correlated:  # a shared direction makes clipping to zero (and so the two variants' sets) differ
        D = D + 0.6 * torch.randn(1, d, generator=g, dtype=torch.float64)
    D = D / D.norm(dim=1, keepdim=True) * (0.5 + torch.rand(h, 1, generator=g, dtype=torch.float64))
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    bias = 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    l0 = torch.randint(0, 15, (n,), generator=g)  # heterogeneous, including 0
    return x, D, bias, l0


@pytest.mark.parametrize("variant", ["nonzero", "persistent"])
@pytest.mark.parametrize("correlated", [False, True])
def test_batched_matches_per_token_reference(variant, correlated):
    x, D, bias, l0 = _problem(correlated=correlated)
    # a small max_elements forces many chunks of tokens with different budgets
    got = gradient_pursuit(x, D, l0, bias=bias, variant=variant, max_elements=600, progress=False)
    want_w, want_picks = gradient_pursuit_reference(x, D, l0, bias=bias, variant=variant)
    for t in range(x.shape[0]):  # same selections, in the same order
        assert got.picks[t, : int(l0[t])].tolist() == want_picks[t], f"token {t}"
        assert (got.picks[t, int(l0[t]) :] == -1).all()
        assert got.selected(t) == set(torch.nonzero(want_w[t]).flatten().tolist()), f"token {t}"
    torch.testing.assert_close(got.to_dense(D.shape[0]), want_w, atol=WEIGHT_ATOL, rtol=0)
    torch.testing.assert_close(got.reconstruction, want_w @ D + bias, atol=1e-9, rtol=0)
    assert (got.l0 <= l0).all() and (got.values >= 0).all()
    torch.testing.assert_close(got.l0, (want_w != 0).sum(-1))


def test_variants_differ_where_latents_are_clipped():
    """The test above must see both code paths: on the correlated dictionary some tokens drop a
    clipped latent from the set ("nonzero") and others keep it ("persistent")."""
    x, D, _, l0 = _problem(correlated=True)
    a = gradient_pursuit(x, D, l0, variant="nonzero", progress=False).to_dense(D.shape[0])
    b = gradient_pursuit(x, D, l0, variant="persistent", progress=False).to_dense(D.shape[0])
    assert ((a - b).abs().amax(1) > 1e-6).sum() >= 1


def test_orthonormal_dictionary_recovers_planted_codes_exactly():
    g = torch.Generator().manual_seed(1)
    d, n, k = 16, 50, 4
    D = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0].T  # orthonormal atoms
    codes = torch.zeros(n, d, dtype=torch.float64)
    for t in range(n):
        codes[t, torch.randperm(d, generator=g)[:k]] = 1 + torch.rand(k, generator=g, dtype=torch.float64)
    bias = torch.randn(d, generator=g, dtype=torch.float64)
    x = codes @ D + bias
    for variant in ("nonzero", "persistent"):
        res = gradient_pursuit(x, D, torch.full((n,), k), bias=bias, variant=variant, progress=False)
        torch.testing.assert_close(res.to_dense(d), codes, atol=1e-10, rtol=0)
        torch.testing.assert_close(res.reconstruction, x, atol=1e-10, rtol=0)
        assert (res.l0 == k).all()


def test_zero_budget_gives_the_bias():
    x, D, bias, _ = _problem(n=5)
    res = gradient_pursuit(x, D, torch.zeros(5, dtype=torch.long), bias=bias, progress=False)
    torch.testing.assert_close(res.reconstruction, bias.expand_as(x))
    assert (res.values == 0).all() and (res.l0 == 0).all()


def _topk_sae(d_in=16, d_sae=64, k=5, seed=0):
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, rescale_acts_by_decoder_norm=True,
                                    metadata=SAEMetadata(hook_name="blocks.0.hook_resid_pre")))
        for p in sae.parameters():
            p.data.normal_(0, 0.3)
    return sae.eval()


def test_effective_decoder_reproduces_decode():
    sae = _topk_sae()  # decoder-norm rescaling: decode is not f @ W_dec + b_dec
    D, b = effective_decoder(sae)
    f = torch.rand(7, sae.cfg.d_sae) * (torch.rand(7, sae.cfg.d_sae) < 0.2)
    torch.testing.assert_close(f @ D + b, sae.decode(f), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(D, sae.W_dec, atol=1e-3)


@pytest.mark.parametrize("seed", range(20))
def test_effective_decoder_rejects_a_nonaffine_decode(seed):
    W = torch.randn(8, 4, generator=torch.Generator().manual_seed(seed))
    fake = SimpleNamespace(cfg=SimpleNamespace(d_sae=8), W_dec=W, decode=lambda f: torch.relu(f @ W - 0.5))
    with pytest.raises(ValueError, match="not affine"):
        effective_decoder(fake)


def test_sae_gradient_pursuit_uses_each_tokens_sae_l0():
    sae = _topk_sae(k=5)
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(2))
    res = sae_gradient_pursuit(sae, x, progress=False)
    with torch.no_grad():
        target = (sae.encode(x) != 0).sum(-1)
    assert ((res.picks >= 0).sum(-1) == target).all()
    assert (res.l0 <= target).all()
    D, b = effective_decoder(sae)
    torch.testing.assert_close(res.reconstruction, res.to_dense(sae.cfg.d_sae) @ D + b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"x": torch.randn(3, 5)}, "dictionary"),
        ({"l0": torch.ones(4)}, "integer tensor"),
        ({"l0": torch.ones(3, dtype=torch.long)}, r"l0 must be an integer tensor \[n\] = \[4\]"),
        ({"l0": -torch.ones(4, dtype=torch.long)}, "non-negative"),
        ({"variant": "greedy"}, "variant"),
        ({"bias": torch.zeros(3)}, "bias"),
    ],
)
def test_bad_input_is_refused_clearly(user_view, kwargs, match):
    args = {"x": torch.randn(4, 6), "dictionary": torch.randn(10, 6), "l0": torch.ones(4, dtype=torch.long)}
    rest = {k: kwargs.pop(k) for k in ("variant", "bias") if k in kwargs}
    args.update(kwargs)
    for fn in (gradient_pursuit, gradient_pursuit_reference):
        with pytest.raises(ValueError, match=match):
            fn(args["x"], args["dictionary"], args["l0"], **rest)
