"""AFA quantities (saetools.diagnostics.afa), the toy superposition generator (saetools.diagnostics.toy) and the lee2025
experiment's config: hand-computed cases, the theorem on ground truth, agreement between the SAE
path and the raw-codes path, and clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata

from saetools.diagnostics.afa import (
    afa,
    afa_bounds,
    eps_lbo,
    eps_lbo_table,
    zf_data,
    zf_data_from_codes,
    zf_plot,
)
from saetools.diagnostics.toy import ToyConfig, ToySuperposition

EXACT = {"rtol": 1e-12, "atol": 1e-12}  # float64 arithmetic on hand-picked values
F32 = {"rtol": 1e-5, "atol": 1e-5}  # float32 SAE forward passes


def _hand_case():
    """Two unit directions at cosine 0.5, codes (1, 2): ||z||^2 = 1 + 4 + 2*1*2*0.5 = 7, ||f||^2 = 5."""
    W = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2]], dtype=torch.float64)
    f = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    return W, f, f @ W


def test_eps_lbo_hand_computed():
    _W, f, z = _hand_case()
    torch.testing.assert_close(z.pow(2).sum(), torch.tensor(7.0, dtype=torch.float64), **EXACT)
    # |7 - 5| / ((h - 1) * 5) with h = 2, and L0 = 2
    torch.testing.assert_close(eps_lbo(z, f), torch.tensor([0.4], dtype=torch.float64), **EXACT)
    torch.testing.assert_close(eps_lbo(z, f, denominator="active"), torch.tensor([0.4], dtype=torch.float64), **EXACT)
    # exact cross-term bound: ||f||_1^2 - ||f||_2^2 = 9 - 5 = 4 -> 0.5 = the true coherence (tight: one positive pair)
    torch.testing.assert_close(eps_lbo(z, f, denominator="l1"), torch.tensor([0.5], dtype=torch.float64), **EXACT)
    # norms instead of vectors, and a larger dictionary: (h - 1) = 9
    torch.testing.assert_close(eps_lbo(z.norm(dim=-1), f, h=10), torch.tensor([2 / 45], dtype=torch.float64), **EXACT)


def test_zf_data_from_codes_hand_computed_with_bias_and_decoder_norms():
    W, f, z = _hand_case()
    b = torch.tensor([0.0, 3.0], dtype=torch.float64)
    d = zf_data_from_codes(z, f, 2 * W, b)  # rows of norm 2: f~ = (2, 4, ||b|| = 3)
    np.testing.assert_allclose(d.z_norm, [math.sqrt(7)], rtol=1e-12)
    np.testing.assert_allclose(d.f_norm, [math.sqrt(4 + 16 + 9)], rtol=1e-12)
    np.testing.assert_allclose(d.eps_lbo, [abs(7 - 29) / (1 * 29)], rtol=1e-12)  # h = 2 latents, bias not counted
    np.testing.assert_allclose(d.l0, [2])
    z_hat = f @ (2 * W) + b
    np.testing.assert_allclose(d.recon_error, [float((z - z_hat).pow(2).sum() / 7)], rtol=1e-12)
    no_bias = zf_data_from_codes(z, f, 2 * W, b, include_bias=False)
    np.testing.assert_allclose(no_bias.f_norm, [math.sqrt(20)], rtol=1e-12)
    assert d.include_bias and not no_bias.include_bias


def test_afa_and_bounds_hand_computed():
    z = torch.tensor([[3.0, 4.0]])
    torch.testing.assert_close(afa(z), torch.tensor([5.0]))
    torch.testing.assert_close(afa(z, torch.tensor([3.0, 0.0])), torch.tensor([4.0]))
    lo, hi = afa_bounds([2.0, 2.0], [0.5, 1.0])
    np.testing.assert_allclose(lo, [2 / math.sqrt(1.5), 2 / math.sqrt(2.0)], rtol=1e-12)
    np.testing.assert_allclose(hi[0], 2 / math.sqrt(0.5), rtol=1e-12)
    assert np.isinf(hi[1])  # c >= 1: no upper limit
    with pytest.raises(ValueError, match="must be >= 0"):
        afa_bounds(1.0, -0.1)


def test_eps_lbo_denominators_are_ordered_and_nan_when_undefined():
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(200, 30, generator=gen).relu() * (torch.rand(200, 30, generator=gen) < 0.3)
    z = torch.randn(200, 16, generator=gen) * 2
    f[0] = 0
    f[0, 3] = 1.5  # one active latent: active / l1 denominators are 0
    dic, act, l1 = (eps_lbo(z, f, denominator=d) for d in ("dictionary", "active", "l1"))
    ok = torch.isfinite(l1)
    assert torch.equal(ok, (f != 0).sum(-1) >= 2)  # defined exactly where two latents are active
    assert torch.isnan(act[0]) and torch.isfinite(dic[0])
    assert (dic[ok] <= act[ok] * (1 + 1e-12)).all() and (act[ok] <= l1[ok] * (1 + 1e-12)).all()


def test_eps_lbo_bad_input(user_view):
    z, f = torch.randn(4, 3), torch.randn(5, 6)
    with pytest.raises(ValueError, match="4 tokens but f_tilde has 5"):
        eps_lbo(z, f)
    with pytest.raises(ValueError, match="denominator must be"):
        eps_lbo(z, f[:4], denominator="max")
    with pytest.raises(ValueError, match=r"f_tilde \[n, m\]"):
        eps_lbo(z, f[:4, 0])
    with pytest.raises(ValueError, match="h >= 2"):
        eps_lbo(z, f[:4, :1])
    with pytest.raises(ValueError, match=r"need z \[n, d\], f \[n, h\], W_dec \[h, d\]"):
        zf_data_from_codes(z, f[:4], torch.randn(5, 3))


def _sae(cls, cfg_cls, seed=0, **kw):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sae = cls(cfg_cls(d_in=12, d_sae=40, metadata=SAEMetadata(hook_name="blocks.0.hook_resid_pre"), **kw))
        for p in sae.parameters():
            p.data.normal_(0, 0.4)
    return sae.eval()


@pytest.mark.parametrize("which", ["standard", "topk_rescaled", "standard_layer_norm"])
def test_zf_data_of_an_sae_matches_its_codes(which):
    """The SAE path (decoder norms, rescale_acts_by_decoder_norm, normalisation) equals the raw-codes path."""
    if which == "topk_rescaled":
        sae = _sae(TopKSAE, TopKSAEConfig, k=5, rescale_acts_by_decoder_norm=True)
    else:
        sae = _sae(StandardSAE, StandardSAEConfig,
                   normalize_activations="layer_norm" if which.endswith("layer_norm") else "none")
    x = torch.randn(300, 12, generator=torch.Generator().manual_seed(1)) * 3 + 1
    got = zf_data(sae, x, batch_size=128)  # several batches
    with torch.no_grad():
        f = sae.encode(x)
    W = sae.W_dec.detach()
    if which == "topk_rescaled":  # effective decoder rows are unit: W_dec[i] / ||W_dec[i]||
        W = W / W.norm(dim=-1, keepdim=True)
    z = x
    if which.endswith("layer_norm"):
        xc = x - x.mean(-1, keepdim=True)
        z = xc / (xc.std(-1, keepdim=True) + 1e-5)
    want = zf_data_from_codes(z, f, W, sae.b_dec.detach())
    for key in ("z_norm", "f_norm", "eps_lbo", "l0", "recon_error"):
        np.testing.assert_allclose(getattr(got, key), getattr(want, key), rtol=1e-4, atol=1e-6, err_msg=key)
    with torch.no_grad():  # the SAE's own reconstruction, mapped into its space, gives the same error
        x_hat = sae(x)
    if which != "standard_layer_norm":
        np.testing.assert_allclose(got.recon_error, ((x - x_hat).pow(2).sum(-1) / x.pow(2).sum(-1)).numpy(),
                                   rtol=1e-4, atol=1e-6)


def test_zf_data_bad_input_and_table_and_plot():
    sae = _sae(StandardSAE, StandardSAEConfig)
    with pytest.raises(ValueError, match=r"acts must be \[n, d_in=12\]"):
        zf_data(sae, torch.randn(10, 11))
    d = zf_data(sae, torch.randn(50, 12, generator=torch.Generator().manual_seed(0)), name="s")
    table = eps_lbo_table({"s": d})
    assert list(table.index) == ["s"]
    assert table.loc["s", "eps_lbo"] == pytest.approx(float(np.nanmedian(d.eps_lbo)))
    assert table.loc["s", "n_tokens"] == 50
    assert 0 <= table.loc["s", "in_band_0.25"] <= table.loc["s", "in_band_0.5"] <= table.loc["s", "in_band_1"] <= 1
    fig = zf_plot([d, d], ncols=3)
    assert sum(ax.get_visible() for ax in fig.axes) == 2
    import matplotlib.pyplot as plt

    plt.close(fig)


# ------------------------------------------------------------------------------ toy generator


def test_toy_guarantees():
    toy = ToySuperposition(ToyConfig(d=32, h=20, overlap=0.1, firing_probability=0.2, noise_std=0.05,
                                     bias_norm=2.0, seed=3))
    torch.testing.assert_close(toy.W.norm(dim=-1), torch.ones(20), **F32)
    assert toy.coherence == pytest.approx(0.1, abs=1e-6)  # h < d: every pair at cosine = overlap
    gram = toy.W.double() @ toy.W.double().T
    torch.testing.assert_close(gram, 0.9 * torch.eye(20, dtype=torch.float64) + 0.1, rtol=0, atol=1e-6)
    torch.testing.assert_close(toy.bias.norm(), torch.tensor(2.0), **F32)
    b = toy.sample(5000, seed=0)
    assert (b.f >= 0).all()
    rate = (b.f > 0).double().mean().item()  # Bernoulli(0.2) x P(ReLU(N(1, 0.5)) > 0) ~ 0.2 * 0.977
    assert abs(rate - 0.2 * 0.977) < 0.01
    torch.testing.assert_close(b.z, b.f @ toy.W + toy.bias + b.noise, **F32)
    assert b.noise.std().item() == pytest.approx(0.05, rel=0.05)
    again, other = toy.sample(5000, seed=0), toy.sample(5000, seed=1)
    assert torch.equal(again.z, b.z) and not torch.equal(other.f, b.f)
    assert torch.equal(ToySuperposition(toy.cfg).W, toy.W)  # directions depend on the seed only


def test_toy_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    toy = ToySuperposition(ToyConfig(d=16, h=40, seed=1))  # h > d: sae-lens orthogonalisation path
    toy.sample(10, seed=2)
    assert torch.equal(torch.get_rng_state(), state)


def test_toy_orthonormal_dictionary_has_zero_eps_lbo_and_theorem_holds():
    for overlap in (0.0, 0.05, 0.3):
        toy = ToySuperposition(ToyConfig(d=24, h=16, overlap=overlap, firing_probability=0.3, seed=0))
        f = toy.sample(2000, seed=1).f
        W = toy.W.double() / toy.W.double().norm(dim=-1, keepdim=True)  # unit in float64, as the theorem assumes
        z = f.double() @ W
        d = zf_data_from_codes(z, f, W, include_bias=False)
        l1 = eps_lbo(z, f.double(), denominator="l1")
        if overlap == 0:
            assert np.nanmax(d.eps_lbo) < 1e-6
        assert torch.nanquantile(l1, 1.0).item() <= toy.coherence * (1 + 1e-9) + 1e-12


def test_toy_bad_config(user_view):
    with pytest.raises(ValueError, match="ToyConfig.overlap"):
        ToyConfig(overlap=1.0)
    with pytest.raises(ValueError, match="ToyConfig.firing_probability"):
        ToyConfig(firing_probability=0)
    with pytest.raises(ValueError, match="ToyConfig.noise_std"):
        ToyConfig(noise_std=-1)
    with pytest.raises(ValueError, match="ToyConfig.d and ToyConfig.h"):
        ToyConfig(d=0)
    with pytest.raises(ValueError, match="n must be positive"):
        ToySuperposition(ToyConfig(d=4, h=3)).sample(0, seed=0)


def test_lee2025_config_validation():
    from saetools.experiments.lee2025_top_afa import Config

    with pytest.raises(ValueError, match="toy_overlaps must start at 0"):
        Config(toy_overlaps=(0.1, 0.2))
    with pytest.raises(ValueError, match="toy_h"):
        Config(toy_h=64, toy_d=64)
    with pytest.raises(ValueError, match="Config.d_sae"):
        Config(d_sae=0)
    with pytest.raises(ValueError, match="unknown profile"):
        Config.profile("medium")
    assert Config.profile("full").pretrained == (("gpt2-small-res-jb", "blocks.8.hook_resid_pre"),)
