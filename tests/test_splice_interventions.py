"""Splicing: error-term invariance and latent interventions in every run mode, gradients
through the error node, and exact restoration after exceptions."""

import contextlib

import pytest
import torch
from conftest import random_standard_sae

import saetools
from saetools.hooks import HookNameError, attached_hook_count
from saetools.splicing import (
    ablate_latents,
    clamp_latents,
    latent_acts,
    latent_hook_name,
    patch_latents,
    steer_latents,
)

HOOK = "blocks.1.hook_resid_pre"
EXACT = 1e-5  # the tolerance for "logits unchanged"


def _sae(hook=HOOK, seed=0, d_in=32):
    return random_standard_sae(d_in=d_in, hook=hook, seed=seed)


def _run(model, tokens, mode, extra_hooks=()):
    if mode == "plain":
        return model(tokens)
    if mode == "cache":
        return model.run_with_cache(tokens)[0]
    return model.run_with_hooks(tokens, fwd_hooks=list(extra_hooks))


@pytest.fixture
def tokens(random_model):
    return random_model.to_tokens(["Then, Mary and John went to the store.", "Then, Bob and Amy went home."])


@pytest.mark.parametrize("error_grad", [False, True])
@pytest.mark.parametrize("mode", ["plain", "cache", "hooks"])
def test_error_term_is_exact_and_ablation_changes_logits(random_model, tokens, mode, error_grad):
    sae = _sae()
    with torch.no_grad():
        clean = random_model(tokens)
        with saetools.splice(random_model, sae, use_error_term=True, error_grad=error_grad):
            spliced = _run(random_model, tokens, mode)
        with saetools.splice(random_model, sae, use_error_term=True, error_grad=error_grad,
                             interventions=[(sae, ablate_latents())]):
            ablated = _run(random_model, tokens, mode)
        # the same intervention given as a run_with_hooks hook inside the splice
        with saetools.splice(random_model, sae, use_error_term=True, error_grad=error_grad):
            via_hooks = random_model.run_with_hooks(
                tokens, fwd_hooks=[(latent_hook_name(sae), ablate_latents())])
    torch.testing.assert_close(spliced, clean, atol=EXACT, rtol=0)
    assert (ablated - clean).abs().max() > 1e-2
    torch.testing.assert_close(via_hooks, ablated, atol=EXACT, rtol=0)
    assert attached_hook_count(random_model) == 0 and random_model.acts_to_saes == {}


def test_interventions_move_the_output_by_the_decoder_directions(random_model, tokens):
    sae = _sae()
    out = f"{HOOK}.hook_sae_output"
    with torch.no_grad(), saetools.splice(random_model, sae, use_error_term=True):
        _, base = random_model.run_with_cache(tokens, names_filter=out)
        with random_model.hooks(fwd_hooks=[(latent_hook_name(sae), steer_latents([3, 7], [2.0, -1.0]))]):
            _, steered = random_model.run_with_cache(tokens, names_filter=out)
        with random_model.hooks(fwd_hooks=[(latent_hook_name(sae), clamp_latents([5], 4.0, positions=[1]))]):
            _, clamped = random_model.run_with_cache(tokens, names_filter=out)
        f = latent_acts(random_model, sae, tokens)
    expected = 2.0 * sae.W_dec[3] - sae.W_dec[7]
    torch.testing.assert_close(steered[out] - base[out], expected.expand_as(base[out]), atol=1e-5, rtol=1e-4)
    delta = clamped[out] - base[out]
    torch.testing.assert_close(delta[:, 1], ((4.0 - f[:, 1, 5])[:, None] * sae.W_dec[5]), atol=1e-5, rtol=1e-4)
    assert delta[:, 0].abs().max() == 0 and delta[:, 2:].abs().max() == 0


def test_patching_latents_from_another_prompt(random_model):
    sae = _sae()
    a = random_model.to_tokens("Then, Mary and John went to the store.")
    b = random_model.to_tokens("Then, Bob and Amy went to the house.")
    assert a.shape == b.shape
    src = latent_acts(random_model, sae, b)
    with torch.no_grad(), saetools.splice(random_model, sae, interventions=[(sae, patch_latents(src))]):
        _, cache = random_model.run_with_cache(a, names_filter=latent_hook_name(sae))
        patched_logits = random_model(a)
    with torch.no_grad(), saetools.splice(random_model, sae):
        b_logits = random_model(b)
    torch.testing.assert_close(cache[latent_hook_name(sae)], src)
    # every latent patched, no error term, and the residual stream is the whole state: from
    # this layer on, the run on prompt a is the spliced run on prompt b
    torch.testing.assert_close(patched_logits, b_logits, atol=EXACT, rtol=0)


def _embed_grad(model, tokens, sae=None, **splice_kw):
    """Gradient of the LM loss with respect to the embedding output (optionally spliced)."""
    store = {}

    def keep(act, hook):
        act.retain_grad()
        store["embed"] = act
        return act

    with contextlib.ExitStack() as stack:
        if sae is not None:
            stack.enter_context(saetools.splice(model, sae, **splice_kw))
        model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", keep)], return_type="loss").backward()
    model.zero_grad(set_to_none=True)
    return store["embed"].grad


def test_error_grad_gives_clean_gradients_and_reaches_the_error_node(random_model, tokens):
    sae = _sae()
    clean = _embed_grad(random_model, tokens)
    with_grad = _embed_grad(random_model, tokens, sae, use_error_term=True, error_grad=True)
    detached = _embed_grad(random_model, tokens, sae, use_error_term=True)
    torch.testing.assert_close(with_grad, clean, atol=1e-5, rtol=1e-4)
    assert (detached - clean).abs().max() > 1e-4  # sae-lens's error term carries no gradient
    seen = {}
    with saetools.splice(random_model, sae, use_error_term=True, error_grad=True):
        with random_model.hooks(bwd_hooks=[(f"{HOOK}.hook_sae_error", lambda g, hook: seen.setdefault("g", g))]):
            random_model(tokens, return_type="loss").backward()
    random_model.zero_grad(set_to_none=True)
    assert seen["g"].abs().sum() > 0


def test_exact_restoration_after_an_exception(random_model, tokens):
    outer, inner = _sae(seed=1), _sae(seed=2)
    user_hook = lambda act, hook: act
    random_model.add_hook("blocks.0.hook_resid_post", user_hook)
    with saetools.splice(random_model, outer, use_error_term=True):
        wrapper = random_model._acts_to_saes[HOOK]
        n_hooks = attached_hook_count(random_model)
        with pytest.raises(RuntimeError, match="inside"):
            with saetools.splice(random_model, inner, use_error_term=True, error_grad=True,
                                 interventions=[(inner, ablate_latents([1]))]):
                assert random_model.acts_to_saes[HOOK] is inner
                raise RuntimeError("inside")
        assert random_model._acts_to_saes[HOOK] is wrapper  # the very same object
        assert attached_hook_count(random_model) == n_hooks
    assert random_model.acts_to_saes == {}
    assert attached_hook_count(random_model) == 1  # only the user's own hook survives
    random_model.reset_hooks()


def test_bad_interventions_and_flags_are_clear_errors(random_model):
    sae = _sae()
    with pytest.raises(ValueError, match="use_error_term"):
        with saetools.splice(random_model, sae, error_grad=True):
            pass
    with pytest.raises(HookNameError, match="nearest"):
        with saetools.splice(random_model, sae, interventions=[(f"{HOOK}.hook_sae_acts_pst", ablate_latents())]):
            pass
    assert random_model.acts_to_saes == {} and attached_hook_count(random_model) == 0
