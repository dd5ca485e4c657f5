"""top-AFA SAEs (saetools.saes.topafa, docs/lee2025_top_afa.md): the vectorised selection against a naive
per-token reference, a hand-computed selection, the encoder against the paper's steps, the
training losses, save / ``SAE.load_from_disk`` round trip, folding invariances, splicing into
the bundled model with the error-term invariance, training with saetools.train_sae, bad input."""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE, HookedSAETransformer, TrainingSAE
from sae_lens.saes.sae import SAEMetadata, TrainStepInput

import saetools
from saetools.models.text import corpus_tokens
from saetools.saes.topafa import (
    LAST_PREFIX_SENTINEL,
    TopAFASAE,
    TopAFASAEConfig,
    TopAFATrainingSAE,
    TopAFATrainingSAEConfig,
    topafa_mask,
)
from saetools.splicing import splice

F32 = {"rtol": 1e-5, "atol": 1e-5}  # float32 forward passes of small SAEs
HOOK = "blocks.2.hook_resid_pre"


def naive_topafa_mask(acts: torch.Tensor, decoder_norms: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """docs/lee2025_top_afa.md steps 4-6 literally, one token at a time, with a full descending sort,
    and the authors' sentinel: the last *squared* prefix sum is set to 1e8 before the square root."""
    flat, t = acts.reshape(-1, acts.shape[-1]), target.reshape(-1)
    out = torch.zeros_like(flat, dtype=torch.bool)
    for i in range(flat.shape[0]):
        scores = (flat[i] * decoder_norms).square()
        order = torch.argsort(scores, descending=True)
        cum = scores[order].cumsum(0)
        cum[-1] = LAST_PREFIX_SENTINEL
        cum = cum.sqrt()
        k = int((cum - t[i]).abs().argmin()) + 1
        out[i, order[:k]] = True
    return out.reshape(acts.shape)


@pytest.mark.parametrize("h", [5, 40, 300, 3000])
def test_topafa_mask_matches_naive_reference(h):
    gen = torch.Generator().manual_seed(h)
    acts = (torch.randn(4, 30, h, generator=gen) * torch.rand(4, 30, 1, generator=gen) * 3).relu()
    norms = torch.rand(h, generator=gen) + 0.5
    full = (acts * norms).norm(dim=-1)
    # targets below, inside and beyond every prefix (beyond: the all-latents prefix is excluded)
    target = full * torch.rand(4, 30, generator=gen) * 1.5
    target[0, :3] = 0.0
    target[1, :3] = full[1, :3] * 10
    got = topafa_mask(acts, norms, target)
    want = naive_topafa_mask(acts, norms, target)
    assert torch.equal(got.sum(-1), want.sum(-1))  # the same k per token
    positive = acts > 0  # ties among zero scores may be broken differently; those latents output 0 anyway
    assert torch.equal(got & positive, want & positive)
    assert torch.equal(topafa_mask(acts, norms, target, start_k=h), got)  # the search start is performance only


@pytest.mark.parametrize(("target", "k"), [(4000.0, 2), (9000.0, 3)])
def test_sentinel_is_the_authors_squared_sum(target, k):
    """The authors set the last squared prefix sum to 1e8 (a norm of 1e4): a target nearer 1e4 than
    every shorter prefix keeps every latent; one nearer the last real prefix does not."""
    acts = torch.tensor([[3.0, 2.0, 1.0]])
    got = topafa_mask(acts, torch.ones(3), torch.tensor([target]))
    assert int(got.sum()) == k


def test_auxk_residual_is_not_detached_unless_asked():
    """As in the authors' code, AuxK's gradient also reaches the live latents through x_hat;
    ``aux_detach=True`` (sae-lens's TopK convention) stops it there."""
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(3))
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:10] = True
    grads = {}
    for detach in (False, True):
        sae = _training_sae(afa_coefficient=0.0, aux_k=4, aux_coefficient=1.0, aux_detach=detach)
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={"afa": 0.0}, dead_neuron_mask=dead,
                                                       n_training_steps=0, is_logging_step=False))
        out.losses["auxiliary_reconstruction_loss"].backward()
        grads[detach] = sae.W_enc.grad[:, 10:].abs().sum().item()  # the live latents' encoder columns
    assert grads[False] > 0 and grads[True] == 0


def test_topafa_mask_hand_computed():
    acts = torch.tensor([[3.0, 0.0, 4.0, 1.0]] * 4)
    norms = torch.ones(4)
    # sorted scores 16, 9, 1, 0 -> prefix norms 4, 5, sqrt(26) ~ 5.10, (sentinel)
    target = torch.tensor([4.4, 4.6, 5.06, 100.0])
    mask = topafa_mask(acts, norms, target)
    want = torch.tensor([[False, False, True, False],  # |4 - 4.4| < |5 - 4.4|: k = 1
                         [True, False, True, False],  # 5 is closest to 4.6: k = 2
                         [True, False, True, True],  # sqrt(26) is closest to 5.06: k = 3
                         [True, False, True, True]])  # beyond all: the all-latents prefix is never chosen
    assert torch.equal(mask, want)
    # decoder norms scale the scores: latent 3 with norm 5 scores 25, the largest
    assert torch.equal(topafa_mask(acts[:1], torch.tensor([1.0, 1.0, 1.0, 5.0]), torch.tensor([5.0]))[0],
                       torch.tensor([False, False, False, True]))


def test_topafa_mask_bad_input(user_view):
    with pytest.raises(ValueError, match=r"target must have shape \(3,\)"):
        topafa_mask(torch.rand(3, 8), torch.ones(8), torch.ones(4))
    with pytest.raises(ValueError, match=r"decoder_norms must have shape \(8,\)"):
        topafa_mask(torch.rand(3, 8), torch.ones(7), torch.ones(3))


def _training_sae(seed=0, **kw) -> TopAFATrainingSAE:
    cfg = TopAFATrainingSAEConfig(d_in=kw.pop("d_in", 16), d_sae=kw.pop("d_sae", 64),
                                  metadata=SAEMetadata(hook_name=kw.pop("hook", HOOK)), **kw)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sae = TrainingSAE.from_dict(cfg.to_dict())
        sae.b_dec.data.normal_(0, 0.3)
    assert isinstance(sae, TopAFATrainingSAE)
    return sae


@pytest.mark.parametrize("norm", ["none", "layer_norm"])
def test_encode_follows_the_paper_steps(norm):
    sae = _training_sae(normalize_activations=norm)
    x = torch.randn(50, 16, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    xn = x
    if norm == "layer_norm":  # step 1, the paper's input_unit_norm
        xn = (x - x.mean(-1, keepdim=True)) / ((x - x.mean(-1, keepdim=True)).std(-1, keepdim=True) + 1e-5)
    xc = xn - sae.b_dec.detach()  # step 2
    a = (xc @ sae.W_enc.detach()).relu()
    mask = naive_topafa_mask(a, sae.W_dec.detach().norm(dim=-1), xc.norm(dim=-1))  # steps 3-6
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
    torch.testing.assert_close(f, a * mask, **F32)  # step 7: original values of the kept latents
    want = f @ sae.W_dec.detach() + sae.b_dec.detach()
    if norm == "layer_norm":  # undo the standardisation
        xm = x.mean(-1, keepdim=True)
        want = want * (x - xm).std(-1, keepdim=True) + xm
    torch.testing.assert_close(x_hat, want, **F32)


def test_training_losses_hand_computed_and_decoder_constraint():
    sae = _training_sae(afa_coefficient=0.5, aux_k=4, aux_coefficient=0.25)
    with torch.no_grad():
        sae.W_dec.mul_(3.0)  # the step renormalises rows first
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(2))
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:10] = True
    out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={"afa": 0.5}, dead_neuron_mask=dead,
                                                   n_training_steps=0, is_logging_step=False))
    W = sae.W_dec.detach()
    torch.testing.assert_close(W.norm(dim=-1), torch.ones(64), **F32)
    f = out.feature_acts.detach()
    recon = f @ W + sae.b_dec.detach()
    torch.testing.assert_close(out.losses["mse_loss"], (recon - x).pow(2).mean(), **F32)  # mean over batch and d
    # the authors' AFA loss compares ||f|| with the un-centred input norm
    torch.testing.assert_close(out.losses["afa_loss"], 0.5 * (f.norm(dim=-1) - x.norm(dim=-1)).pow(2).mean(), **F32)
    pre = out.hidden_pre.detach().relu()
    aux = torch.zeros_like(pre)
    dead_pre = torch.where(dead, pre, torch.tensor(-torch.inf))
    top = dead_pre.topk(4, dim=-1)
    aux.scatter_(-1, top.indices, top.values)
    torch.testing.assert_close(out.losses["auxiliary_reconstruction_loss"],
                               0.25 * (aux @ W - (x - recon)).pow(2).mean(), **F32)
    torch.testing.assert_close(out.loss, sum(out.losses.values()), **F32)
    out.loss.backward()
    # the decoder gradient has no component along its (unit) rows
    torch.testing.assert_close((sae.W_dec.grad * W).sum(-1), torch.zeros(64), rtol=0, atol=1e-6)


def test_fold_activation_norm_scaling_factor_keeps_the_function():
    sae = _training_sae(seed=3).eval()
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(3)) * 7
    s = 0.37
    with torch.no_grad():
        before = sae(x * s) / s  # trained on s x
        latents = sae.encode(x * s)
        sae.fold_activation_norm_scaling_factor(s)
        after = sae(x)
    torch.testing.assert_close(after, before, **F32)
    torch.testing.assert_close(sae.encode(x).detach(), latents, **F32)


def test_train_save_load_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(4)
    acts = torch.randn(4096, 16, generator=gen) @ torch.randn(16, 16, generator=gen) + 1.0
    cfg = TopAFATrainingSAEConfig(d_in=16, d_sae=48, afa_coefficient=1 / 32, normalize_activations="layer_norm",
                                  metadata=SAEMetadata(hook_name=HOOK))
    sae = saetools.train_sae(acts, cfg, total_samples=4096, batch_size=256, lr=3e-3, seed=0)
    assert isinstance(sae, TopAFATrainingSAE)
    with torch.no_grad():
        x = acts[:200]
        fvu = (sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert fvu < 0.5  # it learned something in 16 steps
    saetools.saes.save_sae(sae, tmp_path / "topafa")
    loaded = SAE.load_from_disk(str(tmp_path / "topafa"))
    assert type(loaded) is TopAFASAE and isinstance(loaded.cfg, TopAFASAEConfig)
    assert loaded.cfg.normalize_activations == "layer_norm"
    torch.testing.assert_close(loaded.W_dec.norm(dim=-1), torch.ones(48), **F32)  # decoder norms folded
    with torch.no_grad():
        same = ((loaded.encode(x) != 0) == (sae.encode(x) != 0)).all(-1)
        # folding rescales W_enc / W_dec in float32: a token whose AFA target sits (to rounding) halfway
        # between two prefix norms may flip its k; everywhere else the kept latents and outputs agree
        assert same.float().mean() >= 0.99
        torch.testing.assert_close(loaded(x)[same], sae(x)[same], **F32)


def test_config_errors(user_view):
    meta = SAEMetadata(hook_name=HOOK)
    with pytest.raises(ValueError, match="covariance_whitening"):
        TopAFATrainingSAEConfig(d_in=4, d_sae=8, metadata=meta, normalize_activations="covariance_whitening")
    with pytest.raises(ValueError, match="apply_b_dec_to_input must be True"):
        TopAFASAEConfig(d_in=4, d_sae=8, metadata=meta, apply_b_dec_to_input=False)
    with pytest.raises(ValueError, match="afa_coefficient and aux_coefficient must be >= 0"):
        TopAFATrainingSAEConfig(d_in=4, d_sae=8, metadata=meta, afa_coefficient=-1)
    with pytest.raises(ValueError, match="aux_k must be positive"):
        TopAFATrainingSAEConfig(d_in=4, d_sae=8, metadata=meta, aux_k=0)
    with pytest.raises(ValueError, match="afa_loss_target must be 'input' or 'centred'"):
        TopAFATrainingSAEConfig(d_in=4, d_sae=8, metadata=meta, afa_loss_target="x")


def test_splice_into_bundled_model_error_term_invariance(bundled_model):
    assert isinstance(bundled_model, HookedSAETransformer)
    sae = _training_sae(seed=5, d_in=128, d_sae=256, hook=HOOK)
    inference = TopAFASAE.from_dict(sae.cfg.get_inference_sae_cfg_dict())
    inference.load_state_dict(sae.state_dict())
    inference.eval()
    tokens, _ = corpus_tokens(bundled_model, 4, seed=0)
    with torch.no_grad():
        clean = bundled_model(tokens)
        with splice(bundled_model, inference, use_error_term=True):
            same = bundled_model(tokens)
        with splice(bundled_model, inference):
            changed, cache = bundled_model.run_with_cache(tokens, names_filter=f"{HOOK}.hook_sae_acts_post")
    torch.testing.assert_close(same, clean, rtol=1e-4, atol=1e-4)
    assert (changed - clean).abs().max() > 1e-2  # without the error term the SAE does change the output
    k = (cache[f"{HOOK}.hook_sae_acts_post"] != 0).sum(-1)
    assert k.min() >= 1 and k.max() > k.min()  # a per-token k
    assert bundled_model._acts_to_saes == {}  # splice removed the SAE
    with pytest.raises(RuntimeError, match="boom"), splice(bundled_model, inference):
        raise RuntimeError("boom")
    assert bundled_model._acts_to_saes == {}
    with torch.no_grad():
        torch.testing.assert_close(bundled_model(tokens), clean, rtol=0, atol=0)
