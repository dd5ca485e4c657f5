"""Activation and path patching: equal to naive per-prompt references, exact limits, scoped."""

import numpy as np
import pytest
import torch

from saetools.circuits import incremental, patching
from saetools.hooks import attached_hook_count
from saetools.tasks import ioi

ATOL = 1e-4  # float32 rounding between a batched run and 1-prompt runs


@pytest.fixture
def pair(random_model):
    clean = ioi.render(random_model, ioi.wang_spec(10, seed=0))
    return clean, patching.default_corruption(random_model, clean, seed=1)


def _naive_ld(model, tokens, batch_i, hooks):
    """Logit difference of one prompt with ``hooks``, from the full logits."""
    return float(ioi.logit_diff(model.run_with_hooks(tokens, fwd_hooks=hooks), batch_i)[0])


@torch.no_grad()
def _naive_head_patch(model, clean, corrupted, layer, head, component, position):
    """Denoising patch of one head, one prompt at a time (the reference)."""
    name = f"blocks.{layer}.attn.hook_{component}"
    _, cache = model.run_with_cache(clean.tokens)
    out = []
    for i in range(len(clean)):
        def hook(act, hook, i=i):
            act = act.clone()
            if position == "all":
                act[0, :, head] = cache[name][i, :, head]
            else:
                act[0, corrupted.positions[position][i], head] = cache[name][i, clean.positions[position][i], head]
            return act
        answers = clean[i : i + 1]
        out.append(_naive_ld(model, corrupted.tokens[i : i + 1], answers, [(name, hook)]))
    return sum(out) / len(out)


@pytest.mark.parametrize("component,position", [("z", "all"), ("z", "S2"), ("q", "END"), ("k", "all"), ("v", "S2")])
def test_head_patching_equals_naive_per_prompt_reference(random_model, pair, component, position):
    clean, corrupted = pair
    df = patching.patch_heads(random_model, clean, corrupted, component=component, positions=position)
    assert list(df.columns) == ["layer", "head", "component", "position", "logit_diff", "score"]
    assert len(df) == random_model.cfg.n_layers * random_model.cfg.n_heads
    for layer, head in [(0, 1), (1, 2)]:
        got = df.query("layer == @layer and head == @head").logit_diff.item()
        want = _naive_head_patch(random_model, clean, corrupted, layer, head, component, position)
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_semantic_positions_follow_each_batch_when_the_layout_differs(random_model):
    """A Pos counterfactual moves IO and S1: each side is patched at its own semantic token."""
    spec = ioi.wang_spec(10, seed=3)
    clean = ioi.render(random_model, spec)
    flipped = ioi.render(random_model, ioi.counterfactual(spec, "pos", seed=0))
    assert (clean.positions["IO"] != flipped.positions["IO"]).all()
    df = patching.patch_heads(random_model, clean, flipped, component="z", positions="IO", heads=[(1, 3)])
    want = _naive_head_patch(random_model, clean, flipped, 1, 3, "z", "IO")
    torch.testing.assert_close(df.logit_diff.item(), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("direction,target", [("denoise", 1.0), ("noise", 0.0)])
def test_patching_the_whole_residual_stream_restores_the_other_run_exactly(random_model, pair, direction, target):
    clean, corrupted = pair
    df = patching.patch_resid(random_model, clean, corrupted, positions="all", direction=direction)
    want = df.attrs["clean_logit_diff"] if direction == "denoise" else df.attrs["corrupted_logit_diff"]
    assert len(df) == random_model.cfg.n_layers
    torch.testing.assert_close(torch.tensor(df.logit_diff.to_numpy()), torch.full((len(df),), want, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(df.score.to_numpy()), torch.full((len(df),), target, dtype=torch.float32),
                               atol=1e-3, rtol=0)


def test_resid_patching_at_a_semantic_position_equals_naive(random_model, pair):
    clean, corrupted = pair
    df = patching.patch_resid(random_model, clean, corrupted, positions=["S2", "END"])
    assert list(df.columns) == ["layer", "position", "logit_diff", "score"]
    name = "blocks.1.hook_resid_pre"
    with torch.no_grad():
        _, cache = random_model.run_with_cache(clean.tokens)
        lds = []
        for i in range(len(clean)):
            def hook(act, hook, i=i):
                act = act.clone()
                p = clean.positions["S2"][i]
                act[0, p] = cache[name][i, p]
                return act
            lds.append(_naive_ld(random_model, corrupted.tokens[i : i + 1], clean[i : i + 1], [(name, hook)]))
    got = df.query("layer == 1 and position == 'S2'").logit_diff.item()
    torch.testing.assert_close(got, sum(lds) / len(lds), atol=ATOL, rtol=0)


def test_path_patching_to_logits_from_the_last_layer_equals_activation_patching(random_model, pair):
    """No head sits downstream of the last layer, so its direct effect is its total effect."""
    clean, corrupted = pair
    last = random_model.cfg.n_layers - 1
    senders = [(last, h) for h in range(random_model.cfg.n_heads)]
    path = patching.path_patch(random_model, clean, corrupted, receivers="logits", senders=senders)
    act = patching.patch_heads(random_model, clean, corrupted, heads=senders, direction="noise")
    torch.testing.assert_close(torch.tensor(path.logit_diff.to_numpy()), torch.tensor(act.logit_diff.to_numpy()),
                               atol=ATOL, rtol=0)


@torch.no_grad()
def test_path_patching_to_receiver_queries_equals_naive(random_model, pair):
    clean, corrupted = pair
    sender, receiver = (0, 2), (1, 1)
    df = patching.path_patch(random_model, clean, corrupted, receivers=[receiver], receiver_input="q",
                             receiver_position="END", senders=[sender])
    _, cc = random_model.run_with_cache(clean.tokens)
    _, xc = random_model.run_with_cache(corrupted.tokens)
    lds = []
    for i in range(len(clean)):
        def freeze(act, hook, i=i):
            act = cc[hook.name][i : i + 1].clone()
            if hook.name == "blocks.0.attn.hook_z":
                act[0, :, sender[1]] = xc[hook.name][i, :, sender[1]]
            return act
        store = {}
        hooks = [(f"blocks.{l}.attn.hook_z", freeze) for l in range(2)]
        hooks.append(("blocks.1.attn.hook_q", lambda a, hook: store.update(q=a.clone())))
        random_model.run_with_hooks(clean.tokens[i : i + 1], fwd_hooks=hooks)

        def patch_q(act, hook, i=i):
            act = act.clone()
            end = clean.positions["END"][i]
            act[0, end, receiver[1]] = store["q"][0, end, receiver[1]]
            return act
        lds.append(_naive_ld(random_model, clean.tokens[i : i + 1], clean[i : i + 1], [("blocks.1.attn.hook_q", patch_q)]))
    torch.testing.assert_close(df.logit_diff.item(), sum(lds) / len(lds), atol=ATOL, rtol=0)


def test_no_hook_survives_an_exception_inside_patching(random_model, pair, monkeypatch):
    clean, corrupted = pair
    before = attached_hook_count(random_model)

    def boom(*args, **kwargs):
        def hook(act, hook):
            raise RuntimeError("boom")
        return hook

    monkeypatch.setattr(patching, "_copy_hook", boom)
    for call in (
        lambda: patching.patch_heads(random_model, clean, corrupted),
        lambda: patching.patch_resid(random_model, clean, corrupted),
        lambda: patching.path_patch(random_model, clean, corrupted, receivers=[(1, 0)]),
    ):
        with pytest.raises(RuntimeError, match="boom"):
            call()
        assert attached_hook_count(random_model) == before


def test_bad_inputs_name_the_fix(user_view, random_model, pair):
    clean, corrupted = pair
    with pytest.raises(ValueError, match="same token layout"):
        patching.patch_heads(random_model, clean, corrupted[:5])
    with pytest.raises(ValueError, match="unknown position 'S3'"):
        patching.patch_resid(random_model, clean, corrupted, positions="S3")
    with pytest.raises(ValueError, match="do not exist"):
        patching.patch_heads(random_model, clean, corrupted, heads=[(5, 0)])
    with pytest.raises(ValueError, match="component"):
        patching.patch_heads(random_model, clean, corrupted, component="o")
    with pytest.raises(ValueError, match="not before the last receiver"):
        patching.path_patch(random_model, clean, corrupted, receivers=[(0, 1)], senders=[(1, 0)])
    with pytest.raises(ValueError, match="direction"):
        patching.patch_resid(random_model, clean, corrupted, direction="sideways")


# --- the incremental path (saetools.circuits.incremental) against the hooked path and full runs ---

def _hooked_path(monkeypatch):
    """Force patch_heads onto its hooked full-forward path (the implementation before the fast one)."""
    monkeypatch.setattr(patching.incremental, "unsupported", lambda model: "forced by the test")


@pytest.mark.parametrize("component,positions,direction", [
    ("z", "all", "denoise"), ("z", ["IO", "S2", "END"], "noise"), ("q", "all", "noise"),
    ("k", "S1+1", "denoise"), ("v", "all", "denoise"), ("v", "END", "noise"),
])
def test_incremental_head_patching_equals_the_hooked_path(random_model, pair, monkeypatch, component, positions, direction):
    clean, corrupted = pair
    assert incremental.unsupported(random_model) is None
    fast = patching.patch_heads(random_model, clean, corrupted, component=component, positions=positions,
                                direction=direction)
    with monkeypatch.context() as m:
        _hooked_path(m)
        slow = patching.patch_heads(random_model, clean, corrupted, component=component, positions=positions,
                                    direction=direction)
    assert list(fast.columns) == list(slow.columns) and len(fast) == len(slow)
    assert (fast[["layer", "head", "position"]].to_numpy() == slow[["layer", "head", "position"]].to_numpy()).all()
    torch.testing.assert_close(torch.tensor(fast.logit_diff.to_numpy()), torch.tensor(slow.logit_diff.to_numpy()),
                               atol=ATOL, rtol=0)
    for key in ("clean_logit_diff", "corrupted_logit_diff"):
        torch.testing.assert_close(fast.attrs[key], slow.attrs[key], atol=ATOL, rtol=0)


@pytest.fixture
def deep_model():
    """A 4-layer random model (several layers after the patch, GPT-2 settings) with the bundled tokenizer."""
    from conftest import build_model, tiny_random_config

    from saetools.models.loading import bundled_model_dir
    from saetools.models.tokenizer import load_tokenizer

    tok = load_tokenizer(bundled_model_dir("tiny-ioi"))
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = build_model(tiny_random_config(n_layers=4, d_vocab=len(tok), scale_attn_by_inverse_layer_idx=True), tok)
    return model.eval()


def test_incremental_path_on_a_deeper_model_equals_naive_per_prompt_reference(deep_model):
    clean = ioi.render(deep_model, ioi.wang_spec(8, seed=5))
    corrupted = patching.default_corruption(deep_model, clean, seed=2)
    df = patching.patch_heads(deep_model, clean, corrupted, component="z", positions="all")
    for layer, head in [(0, 0), (1, 3), (2, 1), (3, 2)]:
        got = df.query("layer == @layer and head == @head").logit_diff.item()
        want = _naive_head_patch(deep_model, clean, corrupted, layer, head, "z", "all")
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@torch.no_grad()
def test_incremental_caches_equal_a_full_forward_pass_up_to_end(random_model, pair):
    clean, corrupted = pair
    n = random_model.cfg.n_layers
    end = torch.maximum(clean.positions["END"], corrupted.positions["END"])
    full = incremental.full_cache(random_model, clean.tokens, end)
    other = incremental.counterpart_cache(random_model, full, clean.tokens, corrupted.tokens, end)
    for tokens, cache in ((clean.tokens, full), (corrupted.tokens, other)):
        resid, ref = random_model.run_with_cache(tokens, stop_at_layer=n)
        ref = {**dict(ref.items()), f"blocks.{n - 1}.hook_resid_post": resid}
        for name, act in cache.items():
            for i in range(len(clean)):
                torch.testing.assert_close(act[i, : end[i] + 1], ref[name][i, : end[i] + 1], atol=1e-5, rtol=0)
    # Before the first differing token the two caches are the same numbers, bit for bit.
    first = (clean.tokens != corrupted.tokens).float().argmax(1)
    for name in full:
        for i in range(len(clean)):
            assert torch.equal(full[name][i, : first[i]], other[name][i, : first[i]])


def test_identical_prompts_make_every_patch_a_no_op(random_model, pair):
    """A corrupted batch equal to the clean one: every window is just END, every result the clean run."""
    clean, _ = pair
    df = patching.patch_heads(random_model, clean, clean, component="k", positions="all")
    torch.testing.assert_close(torch.tensor(df.logit_diff.to_numpy()),
                               torch.full((len(df),), df.attrs["clean_logit_diff"], dtype=torch.float64),
                               atol=ATOL, rtol=0)


def test_attached_hooks_send_patching_to_the_hooked_path(random_model, pair):
    """Hooks a user attached (or spliced SAEs) must act on every run: the fast path steps aside."""
    clean, corrupted = pair
    name = "blocks.1.hook_resid_pre"

    def scale(act, hook):
        return act * 1.5

    plain = patching.patch_heads(random_model, clean, corrupted, heads=[(0, 1)])
    with random_model.hooks(fwd_hooks=[(name, scale)]):
        assert "hooks" in incremental.unsupported(random_model)
        hooked = patching.patch_heads(random_model, clean, corrupted, heads=[(0, 1)])
        want = _naive_head_patch(random_model, clean, corrupted, 0, 1, "z", "all")
    assert incremental.unsupported(random_model) is None
    torch.testing.assert_close(hooked.logit_diff.item(), want, atol=ATOL, rtol=0)
    assert abs(hooked.logit_diff.item() - plain.logit_diff.item()) > 1e-3  # the hook mattered


@pytest.mark.parametrize("receivers", ["logits", [(3, 1)]])
def test_path_patching_from_a_later_layer_equals_a_run_from_the_embeddings(deep_model, receivers):
    """Path patching starts each sender's runs at the sender's layer from the cached residual
    stream; a whole run from the embeddings with the same frozen heads gives the same numbers."""
    clean = ioi.render(deep_model, ioi.wang_spec(8, seed=3))
    corrupted = patching.default_corruption(deep_model, clean, seed=1)
    senders = [(1, 2), (2, 0)]
    df = patching.path_patch(deep_model, clean, corrupted, receivers=receivers, senders=senders)
    _, cc = deep_model.run_with_cache(clean.tokens)
    _, xc = deep_model.run_with_cache(corrupted.tokens)
    n_layers = deep_model.cfg.n_layers
    for (layer, head), got in zip(senders, df.logit_diff):
        def freeze(act, hook, layer=layer, head=head):
            out = cc[hook.name].clone()
            if hook.name == f"blocks.{layer}.attn.hook_z":
                out[:, :, head] = xc[hook.name][:, :, head]
            return out

        hooks = [(f"blocks.{l}.attn.hook_z", freeze) for l in range(layer, n_layers)]
        if receivers == "logits":
            with torch.no_grad():
                want = ioi.logit_diff(deep_model.run_with_hooks(clean.tokens, fwd_hooks=hooks), clean).mean()
        else:
            store = {}
            with torch.no_grad():
                deep_model.run_with_hooks(clean.tokens, fwd_hooks=hooks + [
                    ("blocks.3.attn.hook_q", lambda a, hook: store.update(q=a.clone()))])
            rows, end = torch.arange(len(clean)), clean.positions["END"]

            def patch_q(act, hook):
                act = act.clone()
                act[rows, end, 1] = store["q"][rows, end, 1]
                return act

            with torch.no_grad():
                logits = deep_model.run_with_hooks(clean.tokens, fwd_hooks=[("blocks.3.attn.hook_q", patch_q)])
            want = ioi.logit_diff(logits, clean).mean()
        assert got == pytest.approx(float(want), abs=1e-4)


def test_direct_effects_without_hooked_runs_equal_the_hooked_path(bundled_model, monkeypatch):
    """Path patching to the logits recomputes only END through the MLPs (heads frozen); the
    hooked runs it replaces give the same numbers for every sender."""
    clean = ioi.render(bundled_model, ioi.wang_spec(24, seed=0, model=bundled_model))
    corrupted = patching.default_corruption(bundled_model, clean, seed=1)
    assert incremental.unsupported(bundled_model) is None
    fast = patching.path_patch(bundled_model, clean, corrupted)
    monkeypatch.setattr(incremental, "unsupported", lambda model: "forced onto the hooked path")
    hooked = patching.path_patch(bundled_model, clean, corrupted)
    assert len(fast) == bundled_model.cfg.n_layers * bundled_model.cfg.n_heads
    np.testing.assert_allclose(fast.logit_diff, hooked.logit_diff, atol=1e-5)
    np.testing.assert_allclose(fast.score, hooked.score, atol=1e-5)
