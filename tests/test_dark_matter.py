"""SAE dark matter: regressions against closed-form answers on planted data.

See ``docs/engels2024_dark_matter.md``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_standard_sae

from saetools.diagnostics import dark_matter as dm
from saetools.hooks import attached_hook_count

R2_TOL = 0.03  # sampling error of an R^2 on ~2-4k held-out tokens


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- R^2 definitions and least squares ---------------------------------------------------------

def test_r2_definitions_by_hand():
    y = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    y_hat = torch.tensor([[1.0, 12.0], [2.0, 20.0], [3.0, 28.0]])
    torch.testing.assert_close(dm.r2_per_dim(y, y_hat), torch.tensor([1.0, 1 - 8 / 200], dtype=torch.float64))
    assert dm.vector_r2(y, y_hat) == pytest.approx((1 + 0.96) / 2)  # every dimension counts equally
    assert dm.pooled_r2(y, y_hat) == pytest.approx(1 - 8 / (2 + 200))  # dominated by the big dimension
    assert torch.isnan(dm.r2_per_dim(torch.ones(3, 1), torch.ones(3, 1))).all()  # constant target


@pytest.mark.parametrize(("intercept", "ridge"), [(False, 0.0), (True, 0.0), (True, 2.5)])
def test_fit_linear_matches_the_closed_form(intercept, ridge):
    g = _gen(1)
    x = torch.randn(300, 5, generator=g, dtype=torch.float64) + 2
    y = torch.randn(300, 3, generator=g, dtype=torch.float64)
    fit = dm.fit_linear(x, y, intercept=intercept, ridge=ridge, chunk=64)  # chunked Gram accumulation
    xc, yc = (x - x.mean(0), y - y.mean(0)) if intercept else (x, y)
    w = torch.linalg.solve(xc.T @ xc + ridge * torch.eye(5, dtype=torch.float64), xc.T @ yc)
    torch.testing.assert_close(fit.weight, w)
    torch.testing.assert_close(fit.predict(x), xc @ w + (y.mean(0) if intercept else 0))
    scalar = dm.fit_linear(x, y[:, 0], intercept=intercept, ridge=ridge)
    assert scalar.weight.shape == (5,) and scalar.predict(x).shape == (300,)


def test_planted_linear_error_is_recovered_with_the_known_r2():
    """SaeError = x W + sigma eps (x standard normal): W* -> W, per-dim R^2 = |W_j|^2 / (|W_j|^2 + sigma^2)."""
    g = _gen(2)
    n, d, sigma = 8000, 8, 0.5
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    W = torch.randn(d, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 1.0, d, dtype=torch.float64)
    err = x @ W + sigma * torch.randn(n, d, generator=g, dtype=torch.float64)
    dec = dm.decompose_reconstruction(x, x - err, seed=0)
    fit_idx, eval_idx = dec.fit_idx, dec.eval_idx
    w_lstsq = torch.linalg.lstsq(x[fit_idx], err[fit_idx]).solution  # the paper's solver, no intercept
    torch.testing.assert_close(dec.linear.weight, w_lstsq)
    torch.testing.assert_close(dec.linear.weight, W, atol=0.05, rtol=0)
    signal = W.pow(2).sum(0)
    assert dec.vector_r2 == pytest.approx(float((signal / (signal + sigma**2)).mean()), abs=R2_TOL)
    assert dec.pooled_r2 == pytest.approx(float(signal.sum() / (signal.sum() + d * sigma**2)), abs=R2_TOL)
    # x = Sae + LinearError + NonlinearError exactly; the nonlinear error is the planted noise
    torch.testing.assert_close(dec.sae_out + dec.linear_error + dec.nonlinear_error, x)
    total_var = x[eval_idx].var(0, unbiased=False).sum()
    assert dec.fvu_sae_linear() == pytest.approx(float(d * sigma**2 / total_var), rel=0.05)
    assert dec.fvu_sae_nonlinear() == pytest.approx(float(signal.sum() / total_var), rel=0.05)
    assert len(fit_idx) == len(eval_idx) == n // 2 and not set(fit_idx.tolist()) & set(eval_idx.tolist())


def test_norm_r2_on_a_planted_quadratic_norm():
    """||err||^2 = 1 + x.v + eta with x, eta ~ U[0, 1]: norm R^2 = |v|^2 / (|v|^2 + 1), vector R^2 small."""
    g = _gen(3)
    n, d = 8000, 6
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    v = torch.rand(d, generator=g, dtype=torch.float64)
    v = v / v.norm()  # |v| = 1: R^2 = 1/2
    eta = torch.rand(n, generator=g, dtype=torch.float64)
    sign = torch.where(torch.rand(n, d, generator=g) < 0.5, -1.0, 1.0).double()
    err = sign * (1 + x @ v + eta)[:, None].sqrt() / d**0.5  # random signs: the vector is unpredictable
    fit_idx, eval_idx = dm.split_halves(n, seed=0)
    r2, fit = dm.norm_r2(x, err, fit_idx, eval_idx)
    assert r2 == pytest.approx(0.5, abs=R2_TOL)
    torch.testing.assert_close(fit.weight, v, atol=0.05, rtol=0)
    dec = dm.decompose_reconstruction(x, x - err, split=(fit_idx, eval_idx), norm_intercept=True)
    assert dec.norm_r2 == pytest.approx(r2) and dec.vector_r2 < 0.02
    plain = dm.decompose_reconstruction(x, x - err, split=(fit_idx, eval_idx))  # the paper's: no intercept
    assert plain.norm_r2 == pytest.approx(dm.norm_r2(x, err, fit_idx, eval_idx, intercept=False)[0])


def test_norm_r2_matrix_against_a_pairwise_reference():
    g = _gen(4)
    n = 3000
    base = torch.rand(n, generator=g, dtype=torch.float64)
    norms = torch.stack([base + 0.1 * torch.randn(n, generator=g, dtype=torch.float64) for _ in range(3)])
    extra = torch.randn(3, n, generator=g, dtype=torch.float64)
    norms[2] = norms[2] + extra[0]  # model 2's norm = its own part + model 0's extra regressor
    fit_idx, eval_idx = dm.split_halves(n, seed=1)
    got = dm.norm_r2_matrix(norms, fit_idx, eval_idx)
    for i in range(3):
        for j in range(3):
            a, c = np.polyfit(norms[i, fit_idx].numpy(), norms[j, fit_idx].numpy(), 1)
            y = norms[j, eval_idx].numpy()
            pred = a * norms[i, eval_idx].numpy() + c
            assert got[i, j] == pytest.approx(1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum(), abs=1e-9)
    np.testing.assert_allclose(np.diag(got), 1.0, atol=1e-12)
    with_extra = dm.norm_r2_matrix(norms, fit_idx, eval_idx, extra=extra)
    assert with_extra[0, 2] > got[0, 2] + 0.5  # the planted regressor explains model 2's norm
    assert with_extra[0, 2] == pytest.approx(1 - 0.01 / float(norms[2].var()), abs=0.02)


def test_component_regressions_on_planted_sources():
    g = _gen(5)
    n = 4000
    s = torch.randn(n, 4, generator=g, dtype=torch.float64)
    A = torch.randn(4, 3, generator=g, dtype=torch.float64)
    targets = {"exact": s @ A + 3.0, "noise": torch.randn(n, 3, generator=g, dtype=torch.float64)}
    sources = {"s": s, "unrelated": torch.randn(n, 2, generator=g, dtype=torch.float64)}
    fit_idx, eval_idx = dm.split_halves(n, seed=2)
    t = dm.component_regressions(sources, targets, fit_idx, eval_idx).set_index(["source", "target"])
    assert t.loc[("s", "exact"), "vector_r2"] == pytest.approx(1.0, abs=1e-9)  # intercept included
    assert abs(t.loc[("unrelated", "exact"), "vector_r2"]) < 0.01
    assert abs(t.loc[("s", "noise"), "pooled_r2"]) < 0.01
    assert t.loc[("s", "exact"), "d_source"] == 4
    with pytest.raises(ValueError, match="same n"):
        dm.component_regressions({"s": s[:10]}, targets, fit_idx, eval_idx)


# ---- power law and stacked regions ---------------------------------------------------------------

WIDTHS = [64, 128, 256, 512, 1024, 2048, 4096]


@pytest.mark.parametrize("use_scipy", [True, False])
def test_power_law_recovers_planted_parameters(use_scipy):
    c, a, m = 0.08, 3.0, -0.6
    fit = dm.fit_power_law(WIDTHS, [c + a * w**m for w in WIDTHS], use_scipy=use_scipy)
    tol = 1e-6 if use_scipy else 5e-3  # the grid alone is exact to its step in m (0.005)
    assert (fit.c, fit.a, fit.m) == pytest.approx((c, a, m), rel=tol * 20, abs=tol)
    assert ("curve_fit" in fit.method) == use_scipy
    np.testing.assert_allclose(fit(WIDTHS), [c + a * w**m for w in WIDTHS], rtol=1e-2)


def test_power_law_with_noise_and_a_flat_series():
    rng = np.random.default_rng(0)
    y = [0.1 + 2.0 * w**-0.5 + 1e-4 * rng.standard_normal() for w in WIDTHS]
    fit = dm.fit_power_law(WIDTHS, y)
    assert fit.c == pytest.approx(0.1, abs=0.01) and fit.m == pytest.approx(-0.5, abs=0.05)
    flat = dm.fit_power_law(WIDTHS, [0.3] * len(WIDTHS))
    assert flat.c == pytest.approx(0.3) and flat.a == pytest.approx(0.0) and flat.rmse < 1e-12


@pytest.mark.parametrize(("widths", "values"), [([1, 2], [1, 2]), ([1, -2, 3], [1, 2, 3]),
                                                ([1, 2, 3], [1, 2]), ([1, 2, 3], [1, float("nan"), 3])])
def test_power_law_refuses_bad_points(widths, values):
    with pytest.raises(ValueError, match="positive widths"):
        dm.fit_power_law(widths, values)


def test_scaling_regions_by_hand():
    r = dm.scaling_regions([0.5, 0.3], [0.2, 0.18], [0.15, 0.17], asymptote=0.25)
    np.testing.assert_allclose(r.sum(1), [0.5, 0.3])
    np.testing.assert_allclose(r.loc[0], [0.15, 0.05, 0.05, 0.25])  # nonlinear, encoder, linear, absent
    assert list(r.columns) == ["nonlinear", "encoder", "linear", "absent"]
    with pytest.raises(ValueError, match="one value per width"):
        dm.scaling_regions([0.5], [0.2, 0.1], [0.1], 0.2)


# ---- tokens, collection, SAE decomposition ---------------------------------------------------------

def test_position_mask_rule(user_view):
    tokens = torch.zeros(2, 6, dtype=torch.long)
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[1, 4] = False
    m = dm.position_mask(tokens, drop_first=2, keep=keep)
    assert m.tolist() == [[False, False, True, True, True, True], [False, False, True, True, False, True]]
    for bad in (-1, 6):
        with pytest.raises(ValueError, match="drop_first"):
            dm.position_mask(tokens, drop_first=bad)
    with pytest.raises(ValueError, match="keep"):
        dm.position_mask(tokens, drop_first=1, keep=keep[:, :3])


def test_collect_hooks_aligns_rows_and_flattens_heads(random_model):
    tokens = torch.randint(0, 100, (3, 10), generator=_gen(6))
    mask = dm.position_mask(tokens, drop_first=2)
    names = ["blocks.1.hook_resid_pre", "blocks.0.attn.hook_z"]
    got = dm.collect_hooks(random_model, tokens, names, mask, batch_size=2)
    _, cache = random_model.run_with_cache(tokens)
    torch.testing.assert_close(got[names[0]], cache[names[0]][mask])
    torch.testing.assert_close(got[names[1]], cache[names[1]].flatten(-2)[mask])
    with pytest.raises(KeyError, match="nearest valid"):
        dm.collect_hooks(random_model, tokens, ["blocks.1.hook_resid_prre"], mask)


def test_decompose_equals_decomposing_the_sae_reconstruction():
    sae = random_standard_sae(d_in=8, d_sae=32)
    x = torch.randn(400, 8, generator=_gen(7))
    dec = dm.decompose(sae, x, seed=3)
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
    ref = dm.decompose_reconstruction(x, x_hat, seed=3)
    torch.testing.assert_close(dec.sae_out, x_hat)
    torch.testing.assert_close(dec.l0, (f != 0).sum(-1))
    assert dec.summary()["vector_r2"] == pytest.approx(ref.vector_r2)
    assert dec.summary()["l0"] == pytest.approx(float((f != 0).sum(-1).double().mean()))


def test_decompose_refuses_bad_input(user_view):
    x = torch.randn(100, 8)
    with pytest.raises(ValueError, match="both be"):
        dm.decompose_reconstruction(x, x[:, :4])
    with pytest.raises(ValueError, match="overfit"):
        dm.decompose_reconstruction(x[:40], x[:40])
    with pytest.raises(ValueError, match="same n"):
        dm.fit_linear(x, x[:50])
    with pytest.raises(ValueError, match="d_in=8"):
        dm.decompose(random_standard_sae(d_in=8), torch.randn(50, 6))


# ---- downstream splice -------------------------------------------------------------------------------

def _zero_fit(d):
    return dm.LinearFit(weight=torch.zeros(d, d, dtype=torch.float64), bias=torch.zeros(d, dtype=torch.float64),
                        ridge=0.0, intercept=False)


def test_splice_ce_parts_against_known_identities(random_model):
    sae = random_standard_sae(d_in=32, hook="blocks.1.hook_resid_pre")
    tokens = torch.randint(0, 1000, (4, 12), generator=_gen(8))
    mask = dm.position_mask(tokens, drop_first=3)
    out = dm.splice_ce(random_model, sae, _zero_fit(32), tokens, mask, parts=dm.PARTS, batch_size=3)
    # with W* = 0: Sae + LinearError = Sae, and Sae + NonlinearError = x (the clean run)
    assert out["sae+linear"] == pytest.approx(out["sae"], abs=1e-6)
    assert out["sae+nonlinear"] == pytest.approx(out["clean"], abs=1e-5)
    assert out["all"] == pytest.approx(out["clean"], abs=1e-5)
    assert abs(out["delta_sae"]) > 1e-3  # the random SAE does change the model
    # clean CE over the scored predictions, by hand
    with torch.no_grad():
        loss = random_model(tokens, return_type="loss", loss_per_token=True)
    assert out["clean"] == pytest.approx(float(loss[mask[:, :-1] & mask[:, 1:]].mean()), abs=1e-6)
    assert attached_hook_count(random_model) == 0


def test_splice_ce_removes_its_hooks_after_an_exception(random_model):
    sae = random_standard_sae(d_in=32, hook="blocks.1.hook_resid_pre")
    tokens = torch.randint(0, 1000, (2, 8), generator=_gen(9))
    before = attached_hook_count(random_model)
    with pytest.raises(ValueError, match="width 5"):  # raised inside the hook, mid forward pass
        dm.splice_ce(random_model, sae, _zero_fit(5), tokens, dm.position_mask(tokens, drop_first=1),
                     parts=("sae+linear",))
    assert attached_hook_count(random_model) == before
    logits = random_model(tokens)
    assert torch.isfinite(logits).all()


def test_splice_ce_refuses_bad_input(user_view, random_model):
    sae = random_standard_sae(d_in=32, hook="blocks.1.hook_resid_pre")
    tokens = torch.randint(0, 1000, (2, 8), generator=_gen(10))
    mask = dm.position_mask(tokens, drop_first=1)
    with pytest.raises(ValueError, match="mask must have"):
        dm.splice_ce(random_model, sae, _zero_fit(32), tokens, mask[:, :4])
    with pytest.raises(ValueError, match="parts"):
        dm.splice_ce(random_model, sae, _zero_fit(32), tokens, mask, parts=("linear",))
    with pytest.raises(ValueError, match="consecutive"):
        dm.splice_ce(random_model, sae, _zero_fit(32), tokens, torch.zeros_like(mask))


def test_decomposition_hook_on_head_activations():
    sae = random_standard_sae(d_in=32, d_sae=16)
    act = torch.randn(2, 5, 4, 8, generator=_gen(11))
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[:, 2:] = True
    hook = type("H", (), {"name": "blocks.0.attn.hook_z"})()
    torch.testing.assert_close(dm.decomposition_hook(sae, _zero_fit(32), "sae+nonlinear", mask)(act, hook), act)
    out = dm.decomposition_hook(sae, _zero_fit(32), "sae", mask)(act, hook)
    torch.testing.assert_close(out[:, :2], act[:, :2])
    with torch.no_grad():
        torch.testing.assert_close(out[mask], sae(act[mask].flatten(1)).reshape(-1, 4, 8))


# ---- synthetic noise injection ---------------------------------------------------------------------

def _planted_sae(d=12, h=24, seed=12):
    """A StandardSAE whose decoder rows are unit features and whose encoder reads them off."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    g = _gen(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=h, metadata=SAEMetadata(hook_name="blocks.0.hook_resid_pre")))
    W = torch.randn(h, d, generator=g)
    W = W / W.norm(dim=1, keepdim=True)
    with torch.no_grad():
        sae.W_dec.copy_(W)
        sae.W_enc.copy_(W.T)
        sae.b_enc.fill_(-0.3)
        sae.b_dec.zero_()
    return sae.eval()


def test_noise_injection_on_a_planted_sae():
    sae = _planted_sae()
    g = _gen(13)
    codes = torch.rand(6000, 24, generator=g) * (torch.rand(6000, 24, generator=g) < 0.2)
    x = codes @ sae.W_dec.detach()
    t = dm.noise_injection(sae, x, ablate_fractions=(0.0, 0.5), act_sigmas=(0.0, 0.5),
                           recon_sigmas=(0.0, 0.5), seed=0)
    assert len(t) == 7  # 2 x 2 x 2 grid without the error-free point
    row = t.set_index(["ablate_fraction", "act_sigma", "recon_sigma"])
    # error introduced by the SAE itself is not linearly predictable, in vector or in norm
    recon_only = row.loc[(0.0, 0.0, 0.5)]
    assert abs(recon_only.vector_r2) < 0.01 and abs(recon_only.norm_r2) < 0.01
    # dense noise in the activation is: per-dim R^2 = sigma^2 [(M + sigma^2 I)^-1]_jj (raw second moments M)
    with torch.no_grad():
        true = sae.decode(sae.encode(x)).double()
    sigma2 = float(0.5**2 * true.var(0).mean())
    M = true.T @ true / true.shape[0]
    want = float((sigma2 * torch.linalg.inv(M + sigma2 * torch.eye(12, dtype=torch.float64)).diagonal()).mean())
    assert row.loc[(0.0, 0.5, 0.0)].vector_r2 == pytest.approx(want, abs=R2_TOL)
    # features the SAE has not learned are linearly predictable too
    assert row.loc[(0.5, 0.0, 0.0)].vector_r2 > 0.2
    assert row.loc[(0.5, 0.0, 0.5)].vector_r2 < row.loc[(0.5, 0.0, 0.0)].vector_r2
    with pytest.raises(ValueError, match="act_sigmas"):
        dm.noise_injection(sae, x, act_sigmas=(-1.0,))


def test_experiment_config_validation(user_view):
    from saetools.experiments.engels2024_dark_matter import Config

    assert Config.profile("full").source == "pretrained"
    for kw, match in (({"widths": (256, 128, 512)}, "increasing"), ({"widths": (128, 256)}, ">= 3 SAEs"),
                      ({"k": 0}, "k must be positive"), ({"pursuit_variant": "greedy"}, "pursuit_variant"),
                      ({"drop_first": -1}, "drop_first"),
                      ({"noise_ablate_fractions": (0.0,), "noise_sigmas": (0.0,)}, "error-free point")):
        with pytest.raises(ValueError, match=match):
            Config(**kw)
    with pytest.raises(ValueError, match="unknown profile"):
        Config.profile("medium")
