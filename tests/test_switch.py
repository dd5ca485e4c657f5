"""Switch SAEs (saetools.saes.switch): the routed path against the authors' dense-and-mask
computation, the balancing loss by hand, save / load / splice, training, and config errors."""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.sae import SAEMetadata, TrainStepInput

import saetools
from saetools.models.text import corpus_tokens
from saetools.saes import load_sae, save_sae
from saetools.saes.switch import (
    SwitchSAE,
    SwitchSAEConfig,
    SwitchTrainingSAE,
    SwitchTrainingSAEConfig,
    decoder_flops_per_token,
    encoder_flops_per_token,
    geometric_median,
    load_balance_loss,
    masked_dense_forward,
)

TOL = {"atol": 1e-5, "rtol": 1e-5}  # the 1e-5, float32 on random inputs
HOOK = "blocks.2.hook_resid_pre"


def _random_switch(*, d_in=16, d_sae=64, n_experts=4, k=5, routing="softmax", seed=0, training=False,
                   hook=HOOK, **extra):
    cls, cfg_cls = (SwitchTrainingSAE, SwitchTrainingSAEConfig) if training else (SwitchSAE, SwitchSAEConfig)
    cfg = cfg_cls(d_in=d_in, d_sae=d_sae, n_experts=n_experts, k=k, routing=routing,
                  metadata=SAEMetadata(hook_name=hook), **extra)
    gen = torch.Generator().manual_seed(seed)
    sae = cls(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return sae


def _x(n=300, d=16, seed=1):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("routing", ["softmax", "heaviside"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_routed_forward_equals_masked_dense_reference(routing, apply_b_dec):
    sae = _random_switch(routing=routing, apply_b_dec_to_input=apply_b_dec)
    x = _x()
    acts_ref, out_ref = masked_dense_forward(sae, x)
    torch.testing.assert_close(sae(x), out_ref, **TOL)
    torch.testing.assert_close(sae.encode(x), acts_ref, **TOL)
    torch.testing.assert_close(sae.decode(sae.encode(x)), out_ref, **TOL)
    idx, vals = sae.sparse_encode(x)
    dense = torch.zeros_like(acts_ref).scatter(-1, idx, vals)
    torch.testing.assert_close(dense, acts_ref, **TOL)
    # every token's latents live in its own expert's block only
    expert, probs = sae.route(x)
    assert torch.equal(idx // sae.cfg.expert_width, expert[:, None].expand_as(idx))
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(x)))
    # leading dimensions are kept
    torch.testing.assert_close(sae(x.view(10, 30, 16)), out_ref.view(10, 30, 16), **TOL)


@pytest.mark.parametrize("routing", ["softmax", "heaviside"])
def test_routed_gradients_equal_masked_dense_reference(routing):
    sae = _random_switch(routing=routing)
    x = _x().requires_grad_(True)
    r = torch.randn(300, 16, generator=torch.Generator().manual_seed(2))

    def grads(fn):
        sae.zero_grad()
        x.grad = None
        (fn() * r).sum().backward()
        return {"x": x.grad.clone(), **{n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                                        for n, p in sae.named_parameters()}}

    routed, ref = grads(lambda: sae(x)), grads(lambda: masked_dense_forward(sae, x)[1])
    assert set(routed) == {"x", "W_enc", "b_enc", "W_dec", "b_dec", "W_router", "b_router"}
    for name in routed:
        torch.testing.assert_close(routed[name], ref[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")
    # the router is trained through the p-scaling only with softmax routing
    assert (ref["W_router"].abs().max() > 0) == (routing == "softmax")


def _naive_train_loss(sae, x, alpha):
    """MSE + alpha d L_lb from the dense reference and a one-hot balancing loss."""
    _, out = masked_dense_forward(sae, x)
    probs = ((x - sae.b_router) @ sae.W_router).softmax(-1)
    frac = torch.nn.functional.one_hot(probs.argmax(-1), sae.cfg.n_experts).float().mean(0)
    lb = sae.cfg.n_experts * (frac * probs.mean(0)).sum()
    return (out - x).pow(2).sum(-1).mean() + alpha * sae.cfg.d_in * lb


def test_training_pass_loss_and_gradients_equal_naive_reference():
    sae = _random_switch(training=True, geometric_median_init=False, load_balance_coefficient=0.5)
    x = _x()
    step = TrainStepInput(sae_in=x, coefficients={"load_balance": 0.5}, dead_neuron_mask=None,
                          n_training_steps=3, is_logging_step=False)
    out = sae.training_forward_pass(step)  # renormalises the decoder rows first
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(64), **TOL)
    out.loss.backward()
    routed = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    ref_loss = _naive_train_loss(sae, x, 0.5)
    ref_loss.backward()
    ref = {n: p.grad.clone() for n, p in sae.named_parameters()}
    w = sae.W_dec.detach()
    ref["W_dec"] = ref["W_dec"] - (ref["W_dec"] * w).sum(-1, keepdim=True) * w  # unit-norm constraint
    torch.testing.assert_close(out.loss, ref_loss, **TOL)
    for name in ref:
        torch.testing.assert_close(routed[name], ref[name], atol=1e-4, rtol=1e-4,
                                   msg=lambda m, n=name: f"{n}: {m}")
    dense = out.feature_acts.to_dense()
    assert dense.shape == (300, 64) and int((dense != 0).sum(-1).max()) <= 5
    assert set(out.metrics) == {"load_balance", "max_expert_load_over_uniform"}


def test_load_balance_loss_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    expert = probs.argmax(-1)  # [0, 1, 0, 2]: F = [1/2, 1/4, 1/4]; P = [0.4, 0.375, 0.225]
    expected = 3 * (0.5 * 0.4 + 0.25 * 0.375 + 0.25 * 0.225)  # = 1.05
    torch.testing.assert_close(load_balance_loss(probs, expert), torch.tensor(expected))
    uniform = torch.full((8, 4), 0.25)
    torch.testing.assert_close(load_balance_loss(uniform, torch.arange(8) % 4), torch.tensor(1.0))
    collapsed = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(8, 1)
    torch.testing.assert_close(load_balance_loss(collapsed, torch.zeros(8, dtype=torch.long)), torch.tensor(4.0))


def test_geometric_median_is_optimal_and_robust():
    pts = torch.randn(400, 3, generator=torch.Generator().manual_seed(3)) + torch.tensor([5.0, -2.0, 1.0])
    m = geometric_median(pts, tol=1e-9)
    unit = (pts - m) / (pts - m).norm(dim=-1, keepdim=True)
    assert unit.sum(0).norm() < 1e-2 * len(pts)  # first-order optimality: the unit vectors cancel
    # one far outlier moves the mean a lot and the median hardly at all
    far = torch.cat([pts, torch.tensor([[1e4, 0.0, 0.0]])])
    assert (geometric_median(far) - m).norm() < 0.05 < (far.mean(0) - pts.mean(0)).norm()
    with pytest.raises(ValueError, match="non-empty"):
        geometric_median(torch.zeros(0, 3))


def test_flop_counts_by_hand():
    # the paper's FLOP-matched N = 8 (expert width 24,576) costs a 24,576-wide TopK plus the router
    assert encoder_flops_per_token(768, 8 * 24576, 8) == 2 * 768 * 24576 + 2 * 768 * 8
    assert encoder_flops_per_token(768, 24576) == 2 * 768 * 24576
    assert decoder_flops_per_token(768, k=64) == 2 * 768 * 64
    assert decoder_flops_per_token(768, d_sae=24576) == 2 * 768 * 24576
    with pytest.raises(ValueError, match="multiple"):
        encoder_flops_per_token(768, 100, 3)
    with pytest.raises(ValueError, match="exactly one"):
        decoder_flops_per_token(768)


def test_decode_gradient_reaches_zero_latents():
    sae = _random_switch()
    f = sae.encode(_x(20)).detach().requires_grad_(True)
    r = torch.randn(20, 16, generator=torch.Generator().manual_seed(4))
    (sae.decode(f) * r).sum().backward()
    torch.testing.assert_close(f.grad, r @ sae.W_dec.detach().T, **TOL)


def test_latent_hooks_see_full_width_and_interventions_act():
    sae = _random_switch()
    x = _x(40)
    clean = sae(x)
    _, cache = sae.run_with_cache(x)
    pre, post = cache["hook_sae_acts_pre"], cache["hook_sae_acts_post"]
    assert pre.shape == post.shape == (40, 64)
    torch.testing.assert_close(cache["hook_sae_output"], clean, **TOL)
    expert, _ = sae.route(x)
    outside = torch.ones(40, 4, 16, dtype=torch.bool)
    outside[torch.arange(40), expert] = False
    assert (pre.view(40, 4, 16)[outside] == 0).all() and (post.view(40, 4, 16)[outside] == 0).all()
    # zero-ablating one active latent moves the output by exactly -a_j W_dec[j]
    t, j = 0, int(post[0].argmax())
    ablated = sae.run_with_hooks(x, fwd_hooks=[("hook_sae_acts_post", lambda a, hook: a.index_put(
        (torch.tensor([t]), torch.tensor([j])), torch.zeros(1)))])
    torch.testing.assert_close(ablated[t] - clean[t], -post[t, j] * sae.W_dec[j], **TOL)
    torch.testing.assert_close(ablated[1:], clean[1:], **TOL)


def test_folds_keep_the_function():
    sae = _random_switch(training=True)
    x = _x()
    c = 2.5
    scaled_out = sae(c * x).detach()
    sae.fold_activation_norm_scaling_factor(c)
    torch.testing.assert_close(sae(x), scaled_out / c, **TOL)
    sae = _random_switch()
    gen = torch.Generator().manual_seed(5)
    m = torch.randn(16, 16, generator=gen) / 4 + torch.eye(16)
    mean = torch.randn(16, generator=gen)
    white_out = sae((x - mean) @ m).detach()
    sae.fold_activation_whitening(mean, m, torch.linalg.inv(m))
    torch.testing.assert_close(sae(x), white_out @ torch.linalg.inv(m) + mean, atol=1e-4, rtol=1e-4)
    with pytest.raises(NotImplementedError, match="TopK"):
        _random_switch().fold_W_dec_norm()  # random rows: norms differ inside an expert
    unit = _random_switch()
    with torch.no_grad():
        unit.W_dec /= unit.W_dec.norm(dim=-1, keepdim=True) / 3.0
    before = unit(x).detach()
    unit.fold_W_dec_norm()
    torch.testing.assert_close(unit(x), before, **TOL)


def test_save_load_and_splice_into_the_bundled_model(bundled_model, tmp_path):
    sae = _random_switch(d_in=128, d_sae=256, n_experts=8, k=4, seed=7)
    with torch.no_grad():
        sae.W_router.mul_(0.1)
    path = save_sae(sae, tmp_path / "switch")
    for loaded in (load_sae(path), SAE.load_from_disk(str(path))):
        assert type(loaded) is SwitchSAE and loaded.cfg.n_experts == 8 and loaded.cfg.routing == "softmax"
        x = _x(50, 128)
        torch.testing.assert_close(loaded(x), sae(x), **TOL)
    tokens = torch.randint(1, bundled_model.cfg.d_vocab, (4, 20), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        clean = bundled_model(tokens)
        with saetools.splice(bundled_model, loaded, use_error_term=True):
            with_err, cache = bundled_model.run_with_cache(tokens, names_filter=lambda n: "hook_sae" in n)
        with saetools.splice(bundled_model, loaded):
            spliced = bundled_model(tokens)
    torch.testing.assert_close(with_err, clean, atol=1e-4, rtol=1e-4)  # the error-term invariance
    assert (spliced - clean).abs().max() > 1e-2
    acts = cache[f"{HOOK}.hook_sae_acts_post"]
    assert acts.shape == (4, 20, 256) and int((acts != 0).sum(-1).max()) <= 4
    assert bundled_model._acts_to_saes == {}  # splice removed it


def test_train_sae_trains_a_switch_sae(bundled_model, tmp_path):
    tokens, keep = corpus_tokens(bundled_model, 60, seed=0)
    acts = saetools.collect_activations(bundled_model, tokens, HOOK, mask=keep)
    cfg = SwitchTrainingSAEConfig(d_in=128, d_sae=512, n_experts=4, k=8, metadata=SAEMetadata(hook_name=HOOK),
                                  normalize_activations="expected_average_only_in")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        untrained = SwitchTrainingSAE(cfg)
    untrained.initialize_biases_from_data(acts)
    sae = saetools.train_sae(acts, cfg, total_samples=12 * 512, batch_size=512, lr=3e-3, seed=0)
    assert type(sae) is SwitchTrainingSAE and sae.cfg.normalize_activations == "none"  # scale folded in
    with torch.no_grad():
        mse_trained = (sae(acts) - acts).pow(2).sum(-1).mean()
        mse_init = (untrained(acts) - acts).pow(2).sum(-1).mean()
    assert mse_trained < 0.8 * mse_init, (mse_trained, mse_init)
    expert, _ = sae.route(acts)
    assert torch.bincount(expert, minlength=4).min() > 0  # alpha = 3 keeps every expert in use
    loaded = load_sae(save_sae(sae, tmp_path / "trained"))
    assert type(loaded) is SwitchSAE
    torch.testing.assert_close(loaded(acts[:100]), sae(acts[:100]), **TOL)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"d_sae": 60, "n_experts": 8}, r"d_sae=60 must be a multiple of n_experts=8"),
    ({"k": 20}, r"k=20 must be between 1 and the expert width .* = 16"),
    ({"n_experts": 0}, r"n_experts must be >= 1"),
    ({"routing": "top2"}, r"routing must be 'softmax' or 'heaviside', got 'top2'"),
    ({"load_balance_coefficient": -1.0}, r"load_balance_coefficient must be >= 0"),
    ({"decoder_init_norm": 0.1}, r"decoder_init_norm must be None"),
])
def test_bad_configs_are_clear_errors(user_view, kwargs, match):
    base = {"d_in": 16, "d_sae": 64, "n_experts": 4, "k": 4}
    with pytest.raises(ValueError, match=match):
        SwitchTrainingSAEConfig(**{**base, **kwargs})
    inference_only = {k: v for k, v in kwargs.items() if k not in ("load_balance_coefficient", "decoder_init_norm")}
    if inference_only:
        with pytest.raises(ValueError, match=match):
            SwitchSAEConfig(**{**base, **inference_only})
