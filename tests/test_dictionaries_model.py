"""Dictionaries on the bundled tiny-ioi model: nodes and the NodeRunner fast path, sufficiency /
necessity and edits against naive per-prompt references, attribute patching, the no-ReLU TopK
SAE (save / load / splice), per-node SAE training and the webtext loader's offline error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import shape_checks_off

from saetools import circuits, dictionaries
from saetools.data import load_words
from saetools.dictionaries import (
    CrossSection,
    IOISAEConfig,
    Node,
    NodeRunner,
    SAEDictionary,
    approximation,
    cross_sections,
    edit_cross_section,
    fit_supervised,
    node_acts,
    run_with_nodes,
    train_node_sae,
    webtext_attention_saes,
)
from saetools.dictionaries.ioi_saes import lr_multiplier, resample_dead
from saetools.tasks import ioi

TOL = {"atol": 2e-4, "rtol": 2e-4}
NODES = (Node(0, "z", "END", 0), Node(1, "z", "END", 3))


@pytest.fixture(scope="module")
def setup(_bundled):
    model = _bundled
    names = ioi.single_token_words(model, load_words("names"))[:40]
    train = ioi.render(model, ioi.makelov_spec(400, seed=0, names=names), equal_length=True)
    clean = ioi.render(model, ioi.makelov_spec(12, seed=1, names=names[:20]), equal_length=True)
    cf = ioi.render(model, ioi.counterfactual(clean.spec, "io", seed=2, names=names[20:]), equal_length=True)
    return model, names, train, clean, cf


def naive_end_logits(model, batch, replacements):
    """One prompt at a time, the node's vector written at its position in a hooked run."""
    out = []
    for i in range(len(batch)):
        sub = batch[i : i + 1]
        reps = {n: (r if callable(r) else r[i : i + 1]) for n, r in replacements.items()}
        out.append(ioi.end_logits(run_with_nodes(model, sub, reps), sub)[0])
    return torch.stack(out)


def naive_ld(model, batch, replacements) -> float:
    end = naive_end_logits(model, batch, replacements)
    return float(np.mean([float(end[i, batch.io_ids[i]] - end[i, batch.s_ids[i]]) for i in range(len(batch))]))


def test_node_validation_and_reading(setup):
    model, _, _, clean, _ = setup
    with pytest.raises(ValueError, match="position"):
        Node(0, "z", "MIDDLE", 0)
    with pytest.raises(ValueError, match="needs a head"):
        Node(0, "q", "END")
    with pytest.raises(ValueError, match="has no head"):
        Node(0, "resid_post", "END", 1)
    with pytest.raises(ValueError, match="out of range"):
        Node(0, "z", "END", 9).check(model)
    acts = node_acts(model, clean, [NODES[0], Node(0, "z", "S2"), Node(1, "resid_post", "IO")])
    _, cache = model.run_with_cache(clean.tokens)
    for i in range(len(clean)):
        end, s2, io = (int(clean.positions[k][i]) for k in ("END", "S2", "IO"))
        torch.testing.assert_close(acts[NODES[0]][i], cache["blocks.0.attn.hook_z"][i, end, 0])
        torch.testing.assert_close(acts[Node(0, "z", "S2")][i], cache["blocks.0.attn.hook_z"][i, s2].flatten())
        torch.testing.assert_close(acts[Node(1, "resid_post", "IO")][i], cache["blocks.1.hook_resid_post"][i, io])


def test_node_runner_fast_path_equals_full_runs_and_cleans_up(setup):
    model, _, _, clean, cf = setup
    cf_acts = node_acts(model, cf, NODES)
    runner = NodeRunner(model, clean, batch_size=5)  # several chunks, each with its own prefix cache
    reps = {NODES[0]: cf_acts[NODES[0]], NODES[1]: lambda v: 2 * v}
    torch.testing.assert_close(runner(reps), naive_end_logits(model, clean, reps), **TOL)
    torch.testing.assert_close(runner({}), ioi.end_logits(model(clean.tokens), clean).detach(), **TOL)
    s2 = Node(0, "z", "S2", 1)  # not at END: the full-run path
    rep = {s2: torch.zeros(len(clean), 32)}
    torch.testing.assert_close(runner(rep), naive_end_logits(model, clean, rep), **TOL)
    with pytest.raises(ValueError, match="expected"):
        runner({NODES[0]: torch.zeros(3, 32)})

    def boom(v):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        runner({NODES[1]: boom})
    assert not any(hp._forward_hooks for hp in model.hook_dict.values())


def test_approximation_matches_per_prompt_reference(setup):
    model, _, train, clean, _ = setup
    tr = node_acts(model, train, NODES)
    acts = node_acts(model, clean, NODES)
    sup = {n: fit_supervised(tr[n], train.spec) for n in NODES}
    sae = SAEDictionary(train_node_sae(tr[NODES[1]], "topk", IOISAEConfig(epochs=3, k=4, expansion=2)))
    dicts = {NODES[0]: sup[NODES[0]], NODES[1]: sae}
    a = approximation(model, clean, dicts, acts=acts)
    means = {n: acts[n].mean(0, keepdim=True).expand_as(acts[n]) for n in NODES}
    rec0 = sup[NODES[0]].reconstruct(clean.spec)
    mean_rec1 = sae.reconstruct_acts(acts[NODES[1]]).mean(0)
    clean_ld, mean_ld = naive_ld(model, clean, {}), naive_ld(model, clean, means)
    rec_ld = naive_ld(model, clean, {NODES[0]: rec0, NODES[1]: sae.reconstruct_acts})
    nec_ld = naive_ld(model, clean, {NODES[0]: acts[NODES[0]] - (rec0 - rec0.mean(0)),
                                     NODES[1]: lambda v: v - (sae.reconstruct_acts(v) - mean_rec1)})
    assert (a.clean, a.mean_ablated, a.reconstructed, a.necessity_ablated) == pytest.approx(
        (clean_ld, mean_ld, rec_ld, nec_ld), abs=1e-3)
    assert a.sufficiency == pytest.approx((rec_ld - mean_ld) / (clean_ld - mean_ld), abs=1e-3)
    assert a.necessity == pytest.approx((clean_ld - nec_ld) / (clean_ld - mean_ld), abs=1e-3)
    with pytest.raises(ValueError, match="empty"):
        approximation(model, clean, {})


def test_edit_cross_section_matches_per_prompt_reference(setup):
    model, _, train, clean, cf = setup
    tr = node_acts(model, train, NODES)
    acts, cf_acts = node_acts(model, clean, NODES), node_acts(model, cf, NODES)
    sup = {n: fit_supervised(tr[n], train.spec) for n in NODES}
    ctx = ioi.render(model, ioi.resample_context(cf.spec, seed=3), equal_length=True)
    ctx_acts = node_acts(model, ctx, NODES)
    section = CrossSection("IO test", "io", NODES)
    df = edit_cross_section(model, clean, cf, section, acts=acts, cf_acts=cf_acts, supervised=sup,
                            supervised_methods=("arithmetic",), context_acts=ctx_acts).set_index("method")
    patched = naive_end_logits(model, clean, cf_acts).argmax(-1)
    edits = {n: sup[n].edit(acts[n], clean.spec, cf.spec, "io") for n in NODES}
    edited = naive_end_logits(model, clean, edits).argmax(-1)
    none = naive_end_logits(model, clean, {}).argmax(-1)
    same = naive_end_logits(model, clean, ctx_acts).argmax(-1)
    assert df.accuracy["arithmetic"] == pytest.approx(float((edited == patched).float().mean()))
    assert df.accuracy["none"] == pytest.approx(float((none == patched).float().mean()))
    assert df.accuracy["same attributes"] == pytest.approx(float((same == patched).float().mean()))
    assert df.accuracy["patch"] == 1.0

    def distance(reps):  # per prompt, over both nodes, relative to the clean-to-counterfactual distance
        d = [float(np.sqrt(sum(float((reps[n][i] - cf_acts[n][i]).pow(2).sum()) for n in NODES)
                           / sum(float((acts[n][i] - cf_acts[n][i]).pow(2).sum()) for n in NODES)))
             for i in range(len(clean))]
        return float(np.median(d))

    assert df.distance["patch"] == 0.0 and df.distance["none"] == pytest.approx(1.0)
    assert df.distance["arithmetic"] == pytest.approx(distance(edits), rel=1e-4)
    assert df.distance["same attributes"] == pytest.approx(distance(ctx_acts), rel=1e-4)
    with pytest.raises(ValueError, match="one counterfactual per prompt"):
        edit_cross_section(model, clean, cf[:3], section, acts=acts, cf_acts=cf_acts, supervised=sup)


def test_attribute_patching_matches_a_per_head_hook(setup):
    model, names, _, clean, _ = setup
    df = dictionaries.attribute_patching(model, clean, "io", seed=2, names=names[20:]).set_index(["layer", "head"])
    cf = ioi.render(model, ioi.counterfactual(clean.spec, "io", seed=2, names=names[20:]))
    base = ioi.end_logits(model(clean.tokens), clean).argmax(-1)
    for layer, head in [(1, 3), (0, 2)]:
        node = Node(layer, "z", "END", head)
        end = naive_end_logits(model, clean, {node: node_acts(model, cf, [node])[node]})
        assert df.changed[(layer, head)] == pytest.approx(float((end.argmax(-1) != base).float().mean()))
    with pytest.raises(ValueError, match="attribute"):
        dictionaries.attribute_patching(model, clean, "place")
    with pytest.raises(ValueError, match="position"):
        dictionaries.attribute_patching(model, clean, "io", position="S3")


def test_cross_sections_from_a_circuit():
    c = circuits.Circuit({"s_suppression": ((0, 0),), "io_mover": ((1, 3), (2, 1)), "previous_token": ((0, 1),)})
    secs = {s.name: s for s in cross_sections(c)}
    assert set(secs) == {"S in s_suppression z", "POS in s_suppression z", "IO in io_mover z", "POS in io_mover z"}
    assert secs["IO in io_mover z"].nodes == (Node(1, "z", "END", 3), Node(2, "z", "END", 1))


# ---- per-node SAEs and the no-ReLU TopK -------------------------------------------------------------

def test_lr_schedule_has_the_paper_shape():
    cfg = IOISAEConfig(epochs=2000)
    m = [lr_multiplier(e, cfg) for e in range(2000)]
    assert m[0] == 1.0 and m[499] == 1.0
    assert m[500] == pytest.approx(0.1) and m[1000] == pytest.approx(0.1)  # resampling at 25 % and 50 %
    assert m[550] == pytest.approx(0.55) and m[600] == 1.0  # warm-up over 100 epochs
    assert m[1499] == 1.0 and m[1750] == pytest.approx(0.5) and m[1999] == pytest.approx(1 / 500)
    with pytest.raises(ValueError, match="variants"):
        IOISAEConfig(variants=("jumprelu",))
    with pytest.raises(ValueError, match="resample_at"):
        IOISAEConfig(resample_at=(1.5,))


def test_resampling_rewrites_only_dead_latents():
    from sae_lens import TrainingSAE

    from saetools.saes.topk_signed import SignedTopKTrainingSAEConfig

    sae = TrainingSAE.from_dict(SignedTopKTrainingSAEConfig(d_in=8, d_sae=16, k=2).to_dict())
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[2, 9]] = True
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    assert resample_dead(sae, x, dead, generator=torch.Generator().manual_seed(1)) == 2
    torch.testing.assert_close(sae.W_dec[~dead], before["W_dec"][~dead])
    torch.testing.assert_close(sae.W_dec[dead].norm(dim=-1), torch.ones(2))
    alive_norm = before["W_enc"][:, ~dead].norm(dim=0).mean()
    torch.testing.assert_close(sae.W_enc[:, dead].norm(dim=0), torch.full((2,), 0.2 * float(alive_norm)))
    rows = [int(torch.argmax(torch.nn.functional.normalize(x, dim=-1) @ sae.W_dec[j])) for j in (2, 9)]
    for j, i in zip((2, 9), rows):  # each new decoder row is one input's direction
        torch.testing.assert_close(sae.W_dec[j], torch.nn.functional.normalize(x[i], dim=0))


@pytest.mark.parametrize("variant", ["standard", "gated", "topk_signed", "topk"])
def test_train_node_sae_folds_the_normalisation(variant):
    g = torch.Generator().manual_seed(0)
    x = 40 * torch.randn(600, 8, generator=g) + 5  # far from mean norm sqrt(d)
    sae = train_node_sae(x, variant, IOISAEConfig(epochs=4, batch_size=128, k=2, expansion=2, lr=3e-3))
    assert sae.scaling_factor == pytest.approx(8**0.5 / float(x.norm(dim=-1).mean()), rel=1e-5)
    with torch.no_grad():
        f = sae.encode(x)
        fvu = float((sae.decode(f) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert fvu < 1.0  # reads raw inputs: a wrong scale would give FVU >> 1
    if variant.startswith("topk"):
        assert torch.equal((f != 0).sum(1), torch.full((600,), 2))
    with shape_checks_off(), pytest.raises(ValueError, match="acts must be"):
        train_node_sae(x[0], variant, IOISAEConfig())


def test_topk_signed_keeps_negative_values_and_round_trips(tmp_path, bundled_model):
    from sae_lens import SAE, TopKTrainingSAEConfig, TrainingSAE

    from saetools import splice
    from saetools.saes import load_sae, save_sae
    from saetools.saes.topk_signed import SignedTopK, SignedTopKTrainingSAEConfig

    v = torch.tensor([[-1.0, -3.0, -2.0, -5.0]])
    torch.testing.assert_close(SignedTopK(2)(v), torch.tensor([[-1.0, 0.0, -2.0, 0.0]]))
    hook = "blocks.1.hook_resid_post"
    cfg = SignedTopKTrainingSAEConfig(d_in=128, d_sae=64, k=3)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        sae = TrainingSAE.from_dict({**cfg.to_dict(), "metadata": {"hook_name": hook}})
        relu = TrainingSAE.from_dict(TopKTrainingSAEConfig(d_in=128, d_sae=64, k=3).to_dict())
    sae.W_enc.data = -sae.W_enc.data.abs()
    relu.load_state_dict(sae.state_dict())
    assert not sae.b_enc.requires_grad and sae.cfg.aux_loss_coefficient == 0.0
    x = torch.rand(20, 128, generator=torch.Generator().manual_seed(0))  # every pre-activation negative
    with torch.no_grad():
        f = sae.encode(x)
    assert (f < 0).any() and torch.equal((f != 0).sum(1), torch.full((20,), 3))
    assert not (relu.encode(x) < 0).any()  # sae-lens TopK applies a ReLU
    path = save_sae(sae, tmp_path / "signed")
    loaded = load_sae(path)
    assert type(loaded).__name__ == "SignedTopKSAE" and isinstance(loaded, SAE)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), f)
        torch.testing.assert_close(loaded(x), sae(x))
    tokens = torch.randint(1, 100, (2, 10))
    clean = bundled_model(tokens)
    with splice(bundled_model, loaded, use_error_term=True):
        spliced = bundled_model(tokens)
    torch.testing.assert_close(spliced, clean, atol=1e-4, rtol=1e-4)
    assert not any(hp._forward_hooks for hp in bundled_model.hook_dict.values())


def test_webtext_saes_fail_clearly():
    with pytest.raises(ValueError, match="all heads"):
        webtext_attention_saes([Node(5, "z", "END", 1)])
    from saetools.models.loading import hub_reachable
    from saetools.saes import PretrainedSAEUnavailableError

    if hub_reachable():
        pytest.skip("the hub is reachable: the offline error cannot be tested")
    with pytest.raises(PretrainedSAEUnavailableError, match="unreachable"):
        webtext_attention_saes([Node(5, "z", "END")])


def test_edit_targets_keep_the_carried_io_and_s_sections():
    """``edit_targets`` on a hand-made edits table (the end-to-end run is notebook 03's check)."""
    from types import SimpleNamespace

    from saetools.experiments import makelov2024_supervised_dictionaries as makelov

    rows = []
    for section, attr, none_acc, sup_acc in (("IO in a", "io", 0.80, 0.95), ("IO in b", "io", 0.95, 0.50),
                                             ("S in c", "s", 0.70, 0.85), ("POS in a", "pos", 0.50, 1.0)):
        rows += [dict(section=section, attribute=attr, dictionary="none", method="none", accuracy=none_acc),
                 dict(section=section, attribute=attr, dictionary="supervised", method="arithmetic", accuracy=sup_acc,
                      distance=0.2),
                 dict(section=section, attribute=attr, dictionary="supervised", method="zero_ablate_subspace",
                      accuracy=1.0, distance=0.1)]
    rows.append(dict(section="S in c", attribute="s", dictionary="patch", method="same attributes", accuracy=0.97,
                     distance=0.05))
    t = makelov.edit_targets(SimpleNamespace(edits=pd.DataFrame(rows)))
    # "IO in b": patching changes only 5 % of predictions (< CARRY_MIN), so it carries nothing; Pos is no target
    assert list(t.section) == ["IO in a", "S in c"]
    assert t.changed.round(6).tolist() == [0.2, 0.3] and t.accuracy.tolist() == [0.95, 0.85]
    assert t.distance.tolist() == [0.2, 0.2] and t.met.tolist() == [True, False]
    assert np.isnan(t.same_attributes[0]) and t.same_attributes[1] == 0.97 and t.same_attributes_distance[1] == 0.05
    whole = makelov.edit_targets(SimpleNamespace(edits=None, whole_circuit=pd.DataFrame(rows[3:])),
                                 whole_circuit=True)
    assert list(whole.section) == ["S in c"]


@pytest.mark.parametrize("variant", ["standard", "gated", "topk_signed", "topk"])
def test_node_saes_trained_as_one_batch_equal_each_trained_alone(variant):
    """train_sae_batch maps sae-lens's training step over stacked weights: every SAE keeps its own
    seed, batch order, clipping and resampling, so the batch gives the SAEs trained one by one."""
    from saetools.dictionaries.ioi_saes import train_sae_batch

    g = torch.Generator().manual_seed(1)
    acts = [s * torch.randn(300, 16, generator=g) + s for s in (1.0, 3.0, 10.0)]
    cfg = IOISAEConfig(epochs=8, batch_size=64, k=2, expansion=4, lr=3e-3, resample_at=(0.25, 0.5))
    batch = train_sae_batch(acts, variant, cfg, nodes=[None] * 3, seeds=[5, 6, 7])
    for sae, a, seed in zip(batch, acts, (5, 6, 7)):
        alone = train_node_sae(a, variant, cfg, seed=seed)
        assert sae.scaling_factor == alone.scaling_factor
        for name, p in alone.named_parameters():
            torch.testing.assert_close(dict(sae.named_parameters())[name], p, atol=1e-6, rtol=1e-5)
    assert type(batch[0].activation_fn) is type(alone.activation_fn)  # sae-lens's own activation again
    with shape_checks_off(), pytest.raises(ValueError, match="one shape"):
        train_sae_batch([acts[0], acts[1][:, :8]], variant, cfg, nodes=[None] * 2, seeds=[0, 1])


def test_train_node_saes_batches_nodes_by_width_and_keeps_the_seeds():
    from saetools.dictionaries.ioi_saes import train_node_saes

    g = torch.Generator().manual_seed(2)
    nodes = [Node(0, "z", "END", 0), Node(1, "z", "END", 1), Node(1, "resid_post", "END")]
    acts = {nodes[0]: torch.randn(200, 8, generator=g), nodes[1]: torch.randn(200, 8, generator=g),
            nodes[2]: torch.randn(200, 32, generator=g)}
    cfg = IOISAEConfig(variants=("topk", "standard"), epochs=3, batch_size=50, k=2, expansion=2, seed=4)
    out = train_node_saes(acts, cfg, progress=False)
    jobs = [(v, n) for v in cfg.variants for n in nodes]  # seed = cfg.seed + job index, as alone
    for i, (v, n) in enumerate(jobs):
        alone = train_node_sae(acts[n], v, cfg, node=n, seed=cfg.seed + i)
        torch.testing.assert_close(out[v][n].sae.W_dec, alone.W_dec, atol=1e-6, rtol=1e-5)
        assert out[v][n].sae.cfg.metadata.hook_name == n.hook_name
