import pytest
import torch
from conftest import shape_checks_off

from saetools.circuits import ablation
from saetools.hooks import HookNameError, attached_hook_count, replace_heads_hook, scoped_hooks
from saetools.tasks import ioi


def test_template_means_average_within_templates():
    import pandas as pd

    acts = torch.tensor([[1.0], [3.0], [10.0]])
    out = ablation.template_means(acts, pd.Series(["a", "a", "b"]))
    torch.testing.assert_close(out, torch.tensor([[2.0], [2.0], [10.0]]))


def test_mean_ablation_of_no_heads_is_identity_and_of_all_heads_changes(random_model):
    spec = ioi.wang_spec(16, seed=0)
    batch = ioi.render(random_model, spec)
    ref = ioi.render(random_model, ablation.abc_counterpart(spec, seed=1))
    reps = ablation.head_z_replacements(random_model, batch, method="mean", reference=ref)
    with torch.no_grad():
        clean = random_model(batch.tokens)
    torch.testing.assert_close(ablation.run_with_head_ablation(random_model, batch, [], replacements=reps), clean)
    all_heads = [(l, h) for l in range(2) for h in range(4)]
    out = ablation.run_with_head_ablation(random_model, batch, all_heads, replacements=reps)
    assert (out - clean).abs().max() > 1e-3


def test_zero_ablation_hook_zeroes_exactly_the_heads():
    act = torch.ones(2, 3, 4, 5)
    out = replace_heads_hook([1, 3], None)(act, None)
    assert out[:, :, [1, 3]].abs().sum() == 0 and (out[:, :, [0, 2]] == 1).all()


def test_sweep_table_is_tidy(random_model):
    spec = ioi.wang_spec(16, seed=0)
    batch = ioi.render(random_model, spec)
    df = ablation.head_ablation_sweep(random_model, batch, method="zero")
    assert list(df.columns) == ["layer", "head", "logit_diff", "delta", "frac_drop"]
    assert len(df) == 8 and df.frac_drop.is_monotonic_decreasing


def test_sweep_equals_full_runs_per_head(random_model):
    # the sweep starts each run at the ablated head's layer; compare with whole-model runs
    spec = ioi.wang_spec(24, seed=3)
    batch = ioi.render(random_model, spec)
    ref = ioi.render(random_model, ablation.abc_counterpart(spec, seed=4))
    reps = ablation.head_z_replacements(random_model, batch, method="mean", reference=ref)
    df = ablation.head_ablation_sweep(random_model, batch, method="mean", replacements=reps).set_index(["layer", "head"])
    clean = float(ablation.head_ablated_logit_diff(random_model, batch, [], replacements=reps).mean())
    assert df.attrs["clean_logit_diff"] == pytest.approx(clean, abs=1e-5)
    for (layer, head), row in df.iterrows():
        full = float(ablation.head_ablated_logit_diff(random_model, batch, [(layer, head)], replacements=reps).mean())
        assert row.logit_diff == pytest.approx(full, abs=1e-5), (layer, head)
    assert df.delta.abs().max() > 1e-4  # ablation does something on this model
    assert attached_hook_count(random_model) == 0


def test_no_hook_survives_an_exception(random_model):
    before = attached_hook_count(random_model)

    def boom(act, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with scoped_hooks(random_model, [("blocks.0.attn.hook_z", boom)]):
            random_model(torch.zeros(1, 3, dtype=torch.long))
    assert attached_hook_count(random_model) == before
    with pytest.raises(RuntimeError, match="boom"):
        random_model.run_with_hooks(torch.zeros(1, 3, dtype=torch.long), fwd_hooks=[("blocks.1.hook_resid_pre", boom)])
    assert attached_hook_count(random_model) == before


def test_unknown_hook_name_suggests_nearest(random_model):
    with pytest.raises(HookNameError, match="blocks.0.attn.hook_z"):
        with scoped_hooks(random_model, [("blocks.0.attn.hook_zz", lambda a, hook: a)]):
            pass


def test_zero_replacements_are_zeros_and_the_sweep_uses_them(random_model):
    batch = ioi.render(random_model, ioi.wang_spec(12, seed=0))
    reps = ablation.head_z_replacements(random_model, batch, method="zero")
    assert set(reps) == set(range(random_model.cfg.n_layers)) and all((r == 0).all() for r in reps.values())
    # replacements given: the sweep zero-ablates, whatever its default method
    zero = ablation.head_ablation_sweep(random_model, batch, replacements=reps).set_index(["layer", "head"])
    ld = ablation.head_ablated_logit_diff(random_model, batch, [(1, 2)], replacements=reps).mean()
    torch.testing.assert_close(torch.tensor(zero.loc[(1, 2), "logit_diff"]), ld.double(), atol=1e-5, rtol=1e-5)
    with shape_checks_off(), pytest.raises(ValueError, match="'zero', 'mean' or 'resample'"):
        ablation.head_z_replacements(random_model, batch, method="meen")


def test_fast_ablated_logit_diff_matches_full_logits(random_model):
    spec = ioi.wang_spec(12, seed=0)
    batch = ioi.render(random_model, spec)
    reps = ablation.head_z_replacements(random_model, batch, method="zero")
    for heads in ([], [(0, 1), (1, 3)]):
        full = ioi.logit_diff(ablation.run_with_head_ablation(random_model, batch, heads, replacements=reps), batch)
        fast = ablation.head_ablated_logit_diff(random_model, batch, heads, replacements=reps)
        torch.testing.assert_close(fast, full, atol=1e-4, rtol=1e-4)
