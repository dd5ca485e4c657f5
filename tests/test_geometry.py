"""Decoder geometry (saetools.diagnostics.geometry) against naive loops and planted duplicates."""

from __future__ import annotations

import math

import pytest
import torch

from saetools.diagnostics.geometry import (
    duplicate_fraction,
    geometry_table,
    group_similarity,
    nearest_neighbours,
)


def _w(n=60, d=8, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_nearest_neighbours_equal_a_naive_loop_with_any_chunking():
    w = _w() * torch.rand(60, 1, generator=torch.Generator().manual_seed(1)) * 5  # norms must not matter
    naive = [max((_cos(w[i], w[j]), j) for j in range(60) if j != i) for i in range(60)]
    for chunk in (7, 60, 1024):
        cos, idx = nearest_neighbours(w, chunk_size=chunk)
        torch.testing.assert_close(cos, torch.tensor([c for c, _ in naive]), atol=1e-6, rtol=1e-6)
        assert idx.tolist() == [j for _, j in naive]


def test_planted_duplicates_are_counted():
    base = torch.linalg.qr(_w(32, 32, seed=2))[0][:20]  # 20 orthonormal latents
    gen = torch.Generator().manual_seed(3)
    copies = 2.0 * base[:4] + 0.01 * torch.randn(4, 32, generator=gen)  # near-copies of 4, rescaled
    w = torch.cat([base, copies])
    assert duplicate_fraction(w) == pytest.approx(8 / 24)  # both members of each pair count
    assert duplicate_fraction(w, threshold=0.99999) == 0.0
    assert duplicate_fraction(base) == 0.0
    with pytest.raises(ValueError, match="threshold"):
        duplicate_fraction(w, threshold=1.5)


def test_group_similarity_equals_a_naive_loop_and_the_permuted_control():
    w = _w(48, 6, seed=4)
    n_groups, width = 4, 12
    naive = torch.zeros(n_groups, n_groups)
    for i in range(n_groups):
        for j in range(n_groups):
            naive[i, j] = sum(max(_cos(w[a], w[b]) for b in range(j * width, (j + 1) * width) if b != a)
                              for a in range(i * width, (i + 1) * width)) / width
    for chunk in (5, 1024):
        torch.testing.assert_close(group_similarity(w, n_groups, chunk_size=chunk), naive, atol=1e-5, rtol=1e-5)
    # the control permutes the latents first: same as the plain function on the permuted matrix
    perm = torch.randperm(48, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(group_similarity(w, n_groups, permute_seed=9), group_similarity(w[perm], n_groups))
    with pytest.raises(ValueError, match="divisor"):
        group_similarity(w, 5)


def test_experts_that_relearn_the_same_features_are_fully_similar():
    feats = torch.linalg.qr(_w(16, 16, seed=5))[0][:6]
    w = feats.repeat(3, 1)  # three experts with the same six features
    s = group_similarity(w, 3)
    off = s[~torch.eye(3, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.ones(6), atol=1e-6, rtol=0)
    torch.testing.assert_close(s.diagonal(), torch.zeros(3), atol=1e-6, rtol=0)  # orthogonal inside an expert
    assert duplicate_fraction(w) == 1.0
    assert math.isnan(group_similarity(torch.eye(4), 4)[0, 0].item())  # one-latent groups


def test_geometry_table_takes_saes_and_matrices():
    from saetools.saes.switch import SwitchSAE, SwitchSAEConfig

    sae = SwitchSAE(SwitchSAEConfig(d_in=8, d_sae=32, n_experts=4, k=2))
    t = geometry_table({"switch": sae, "matrix": _w(32, 8)}, n_groups={"switch": 4}).set_index("name")
    cos, _ = nearest_neighbours(sae.W_dec)
    assert t.loc["switch", "nn_cos_mean"] == pytest.approx(cos.mean().item())
    assert t.loc["switch", "n_groups"] == 4 and not math.isnan(t.loc["switch", "inter_group_sim"])
    assert t.loc["matrix", "n_groups"] == 1 and math.isnan(t.loc["matrix", "inter_group_sim"])
    with pytest.raises(ValueError, match=r"\[n_latents, d\]"):
        nearest_neighbours(torch.zeros(5))
    with pytest.raises(TypeError, match="W_dec"):
        nearest_neighbours("not a decoder")


def test_sixteen_thousand_latents_in_chunks():
    w = _w(16384, 16, seed=6)
    cos, idx = nearest_neighbours(w, chunk_size=2048)
    # spot-check a few rows against a direct computation
    u = w / w.norm(dim=-1, keepdim=True)
    for i in (0, 5000, 16383):
        sims = u @ u[i]
        sims[i] = -2
        assert cos[i].item() == pytest.approx(sims.max().item(), abs=1e-5)
        assert idx[i].item() == int(sims.argmax())
    s = group_similarity(w, 8, chunk_size=2048)
    assert s.shape == (8, 8) and torch.isfinite(s).all()
