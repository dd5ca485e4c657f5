"""Occlusion and over-splitting (saetools.dictionaries.occlusion): planted answers and naive references."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from saetools.dictionaries import f1_scores, fit_supervised
from saetools.dictionaries.occlusion import (
    ToyOcclusionConfig,
    best_latent_f1,
    code_norms,
    greedy_union,
    occlusion_table,
    over_splitting,
    toy_occlusion_data,
    toy_occlusion_sweep,
)

ATOL = 1e-5  # float32 sums of a few thousand terms


def planted_over_split(m: int, *, n: int = 1200, n_noise: int = 30, seed: int = 0):
    """Activity where value "BAB" is split over latents 3..3+m-1 (disjoint, equal slices of the
    BAB prompts: precision 1, recall 1/m each), plus a dense latent 0 (fires everywhere) and
    random sparse noise latents."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2 == 1
    pos_rank = torch.cumsum(y.long(), 0) - 1
    act = torch.zeros(n, 3 + m + n_noise)
    act[:, 0] = 1.0
    for i in range(m):  # planting only: m columns
        act[:, 3 + i] = (y & (pos_rank % m == i)).float() * (1 + torch.rand(n, generator=g))
    act[:, 3 + m:] = (torch.rand(n, n_noise, generator=g) < 0.05).float()
    return act, np.where(y.numpy(), "BAB", "ABB")


@pytest.mark.parametrize("m", [3, 5])
def test_planted_over_split_count_is_m(m):
    act, labels = planted_over_split(m)
    res = over_splitting(act, labels, values=["BAB"])
    assert res.count == {"BAB": float(m)}
    members = res.curve.latent.tolist()
    assert sorted(members) == list(range(3, 3 + m))  # the dense latent and the noise never join
    torch.testing.assert_close(torch.tensor(res.curve.union_f1.to_numpy()),
                               torch.tensor([2 * k / (m + k) for k in range(1, m + 1)], dtype=torch.float64),
                               atol=ATOL, rtol=0)
    row = res.summary.iloc[0]
    assert row.f1_dense == pytest.approx(2 / 3, abs=1e-6)
    assert row.best_single_f1 == pytest.approx(2 / 3, abs=1e-6)  # the dense latent: why the floor exists


def test_count_follows_the_closed_form_for_many_slices():
    # equal slices: after k of m latents the union has precision 1, recall k/m, F1 2k/(m+k)
    m = 10
    act, labels = planted_over_split(m, n=2000)
    expected = min(k for k in range(1, m + 1) if 2 * k / (m + k) >= 0.9)
    assert over_splitting(act, labels, values=["BAB"]).count["BAB"] == expected == 9


def test_without_the_precision_floor_the_dense_latent_traps_the_greedy_union():
    act, labels = planted_over_split(4)
    trapped = over_splitting(act, labels, values=["BAB"], min_precision=0.0)
    assert trapped.curve.latent.iloc[0] == 0 and math.isnan(trapped.count["BAB"])
    assert over_splitting(act, labels, values=["BAB"]).count["BAB"] == 4


def naive_greedy(active: np.ndarray, y: np.ndarray, max_latents: int, min_precision: float):
    def f1(mask):
        tp, size, pos = (mask & y).sum(), mask.sum(), y.sum()
        return 0.0 if tp == 0 else 2 * tp / (size + pos)

    union, chosen, best, out = np.zeros(len(y), bool), [], 0.0, []
    for _ in range(max_latents):
        cand = None
        for j in range(active.shape[1]):
            prec = (active[:, j] & y).sum() / max(active[:, j].sum(), 1)
            if j in chosen or prec < min_precision:
                continue
            s = f1(union | active[:, j])
            if cand is None or s > cand[1]:
                cand = (j, s)
        if cand is None or cand[1] <= best:
            break
        chosen.append(cand[0])
        union, best = union | active[:, cand[0]], cand[1]
        out.append((cand[0], best, (union & y).sum() / union.sum(), (union & y).sum() / y.sum()))
    return out


@pytest.mark.parametrize("min_precision", [0.0, 0.6])
def test_greedy_union_matches_a_naive_loop(min_precision):
    g = torch.Generator().manual_seed(3)
    n, d = 300, 25
    y = torch.rand(n, generator=g) < 0.4
    active = torch.rand(n, d, generator=g) < torch.rand(d, generator=g) * 0.3
    active[:, :6] |= y[:, None] & (torch.rand(n, 6, generator=g) < 0.4)  # a few precise-ish latents
    got = greedy_union(active, y, max_latents=12, min_precision=min_precision)
    ref = naive_greedy(active.numpy(), y.numpy(), 12, min_precision)
    assert got.latent.tolist() == [r[0] for r in ref]
    for col, i in (("union_f1", 1), ("union_precision", 2), ("union_recall", 3)):
        np.testing.assert_allclose(got[col].to_numpy(), [r[i] for r in ref], atol=1e-6)


def test_scatter_matches_per_latent_precision_recall():
    act, labels = planted_over_split(3)
    res = over_splitting(act, labels)
    sc = res.scatter[res.scatter.value == "ABB"].set_index("latent")
    y = labels == "ABB"
    for j in [0, 3, 4, 10, 20]:  # naive reference for a sample of latents
        a = act[:, j].numpy() != 0
        assert sc.loc[j, "precision"] == pytest.approx((a & y).sum() / a.sum(), abs=1e-6)
        assert sc.loc[j, "recall"] == pytest.approx((a & y).sum() / y.sum(), abs=1e-6)
    assert set(sc.index) == set(np.flatnonzero((act != 0).any(0).numpy()))  # latents that fire
    assert res.scatter[res.scatter.union_step.notna()].shape[0] == len(res.curve)


def planted_node(n: int = 600, seed: int = 0):
    """Activations with planted codes: IO (6 names) with norm 2, Pos with norm 0.5, S with norm 1."""
    g = torch.Generator().manual_seed(seed)
    names = [f"N{i}" for i in range(6)]
    rng = np.random.default_rng(seed)
    spec = pd.DataFrame({"io": rng.choice(names, n), "s": rng.choice(names, n), "pattern": rng.choice(["ABB", "BAB"], n)})

    def codes(k, norm):
        c = torch.randn(k, 16, generator=g)
        c = c - c.mean(0)  # balanced values: mean-centred codes
        return norm * c / c.norm(dim=-1, keepdim=True)

    u_io, u_s = codes(6, 2.0), codes(6, 1.0)
    u_pos = torch.stack([torch.ones(16), -torch.ones(16)]) * 0.5 / 4.0  # norm 0.5, exactly centred
    idx = {c: torch.as_tensor(pd.factorize(spec[c], sort=True)[0]) for c in ("io", "s", "pattern")}
    acts = 3.0 + u_io[idx["io"]] + u_s[idx["s"]] + u_pos[idx["pattern"]]
    return acts, spec, idx


def test_code_norms_match_a_naive_per_prompt_reference():
    acts, spec, _ = planted_node()
    sup = fit_supervised(acts, spec)
    got = code_norms(sup, spec).set_index("attribute")
    for g in sup.groups:
        u = sup.code(spec, g)
        rms = math.sqrt(sum(float(u[i] @ u[i]) for i in range(len(spec))) / len(spec))
        assert got.loc[g[0], "rms_norm"] == pytest.approx(rms, rel=1e-5)
    flat = code_norms(sup).set_index("attribute")  # no spec: values weigh equally
    assert flat.loc["pos", "mean_norm"] == pytest.approx(float(sup.codes[("pos",)].norm(dim=-1).mean()), rel=1e-6)


def test_occlusion_table_on_a_planted_node():
    acts, spec, idx = planted_node()
    sup = fit_supervised(acts, spec)
    # a planted "SAE": one latent per IO name, one per S name, and no Pos latent at all
    f = torch.cat([torch.nn.functional.one_hot(idx["io"], 6), torch.nn.functional.one_hot(idx["s"], 6)], 1).float()
    tables = {a: f1_scores(f, spec[c].to_numpy()) for a, c in (("io", "io"), ("s", "s"), ("pos", "pattern"))}
    acc = pd.DataFrame({"node": ["n0"], "attribute": ["pos"], "accuracy_sae_aware": [0.25]})
    out = occlusion_table({"n0": sup}, {"n0": tables}, spec=spec, edit_accuracy=acc).set_index("attribute")
    norms = code_norms(sup, spec).set_index("attribute").rms_norm
    assert out.loc["pos", "strongest_other"] == "io"
    assert out.loc["pos", "norm_ratio"] == pytest.approx(norms["pos"] / norms["io"], rel=1e-6)
    assert out.loc["pos", "norm_ratio"] == pytest.approx(0.25, abs=0.03)  # planted 0.5 / 2 (sampling)
    assert out.loc["io", "best_f1"] == pytest.approx(1.0) and out.loc["io", "norm_ratio"] > 1
    assert out.loc["pos", "best_f1"] < out.loc["pos", "f1_dense"]  # no latent for Pos: occluded
    assert out.loc["pos", "accuracy_sae_aware"] == 0.25 and math.isnan(out.loc["io", "accuracy_sae_aware"])
    with pytest.raises(ValueError, match="f1_tables has no entry"):
        occlusion_table({"n0": sup, "n1": sup}, {"n0": tables})


def test_best_latent_f1_matches_a_naive_loop():
    g = torch.Generator().manual_seed(1)
    f = (torch.rand(200, 12, generator=g) < 0.3).float()
    labels = np.array(["a", "b", "c", "d"])[torch.randint(4, (200,), generator=g).numpy()]
    got = best_latent_f1(f1_scores(f, labels))
    best = []
    for v in "abcd":
        y = labels == v
        scores = []
        for j in range(12):
            a = f[:, j].numpy() != 0
            tp = (a & y).sum()
            scores.append(0.0 if tp == 0 else 2 * tp / (a.sum() + y.sum()))
        best.append(max(scores))
    assert got["best_f1"] == pytest.approx(np.mean(best), abs=1e-6)
    assert got["best_f1_min"] == pytest.approx(min(best), abs=1e-6)


def test_toy_data_uses_common_draws_and_the_ratio():
    cfg = ToyOcclusionConfig(noise_std=0.0, n_values_a=4, d=8)
    x1, va1, vb1 = toy_occlusion_data(cfg, 0.5, n=50, seed=3)
    x2, va2, vb2 = toy_occlusion_data(cfg, 2.0, n=50, seed=3)
    assert torch.equal(va1, va2) and torch.equal(vb1, vb2)
    torch.testing.assert_close(x1.norm(dim=-1).mean(), torch.tensor(8**0.5))
    # same B value, different A values: the difference is alpha (e_A[i] - e_A[j]) * scale
    i, j = next((i, j) for i in range(50) for j in range(50) if vb1[i] == vb1[j] and va1[i] != va1[j])
    k = next(k for k in range(50) if va1[k] == va1[i] and vb1[k] != vb1[i])
    # A-differences scale with alpha * scale, B-differences with beta * scale; the per-dataset
    # scale cancels in the ratio of ratios: (alpha/beta at r=0.5) / (alpha/beta at r=2)
    ra = (x1[i] - x1[j]).norm() / (x2[i] - x2[j]).norm()
    rb = (x1[i] - x1[k]).norm() / (x2[i] - x2[k]).norm()
    assert float(ra / rb) == pytest.approx(0.5 / 2.0, rel=1e-4)


def test_toy_sweep_shows_the_collapse():
    cfg = ToyOcclusionConfig(ratios=(0.5, 2.0), n_train=4096, n_eval=2048, epochs=8)
    t = toy_occlusion_sweep(cfg, progress=False).table.set_index("ratio")
    # B dominant: a B latent exists; A dominant: B's best latent is far below a dense latent's F1
    assert t.loc[0.5, "best_f1_b"] > 0.8, t
    assert t.loc[2.0, "best_f1_b"] < 0.4, t
    assert t.loc[2.0, "best_f1_a"] > t.loc[0.5, "best_f1_a"] + 0.3, t
    assert (t.l0 == 1).all()


def test_config_errors_name_the_field(user_view):
    with pytest.raises(ValueError, match="ratios"):
        ToyOcclusionConfig(ratios=())
    with pytest.raises(ValueError, match="architecture"):
        ToyOcclusionConfig(architecture="gated")
    with pytest.raises(ValueError, match="n_values_b"):
        ToyOcclusionConfig(n_values_b=1)
    with pytest.raises(ValueError, match="do not occur"):
        over_splitting(torch.ones(4, 2), ["a", "b", "a", "b"], values=["c"])
    with pytest.raises(ValueError, match="target"):
        over_splitting(torch.ones(4, 2), ["a", "b", "a", "b"], target=1.5)


def test_node_edit_accuracy_matches_edit_cross_section(bundled_model_shared):
    from saetools.dictionaries import (
        CrossSection,
        Node,
        SAEDictionary,
        attribute_values,
        edit_cross_section,
        node_acts,
    )
    from saetools.dictionaries.occlusion import node_edit_accuracy
    from saetools.saes import load_bundled_sae
    from saetools.tasks import ioi

    model = bundled_model_shared
    spec = ioi.makelov_spec(48, seed=0)
    cf_specs = {a: ioi.counterfactual(spec, a, seed=1) for a in ("io", "pos")}
    batch = ioi.render(model, spec)
    cf_batches = {a: ioi.render(model, s) for a, s in cf_specs.items()}
    nodes = [Node(2, "resid_pre", "END"), Node(2, "resid_pre", "S2")]
    acts, cf_acts = node_acts(model, batch, nodes), {a: node_acts(model, b, nodes) for a, b in cf_batches.items()}
    both = pd.concat([spec, *cf_specs.values()], ignore_index=True)  # every clean and counterfactual value
    sup = {n: fit_supervised(torch.cat([acts[n], cf_acts["io"][n], cf_acts["pos"][n]]), both) for n in nodes}
    sae = SAEDictionary(load_bundled_sae("resid2-topk16"))
    tables = {n: {a: f1_scores(sae.encode(torch.cat([acts[n], cf_acts[a][n]])),
                               np.concatenate([attribute_values(spec, a), attribute_values(cf_specs[a], a)]))
                  for a in ("io", "pos")} for n in nodes}
    kw = {"supervised_methods": ("arithmetic",), "ns_aware": (1, 2), "ns_greedy": (2,)}
    got = node_edit_accuracy(model, batch, cf_batches, nodes, acts=acts, cf_acts=cf_acts, supervised=sup,
                             saes={"topk": {n: sae for n in nodes}}, f1_tables={"topk": tables}, **kw)
    assert len(got) == 4 and set(got.node) == {str(n) for n in nodes}
    node, attr = nodes[1], "pos"  # reference: the one-node cross-section run directly
    ref = edit_cross_section(model, batch, cf_batches[attr], CrossSection("ref", attr, (node,)), acts=acts,
                             cf_acts=cf_acts[attr], supervised=sup, saes={"topk": {node: sae}},
                             f1_tables={"topk": {node: tables[node][attr]}}, **kw)
    row = got.set_index(["node", "attribute"]).loc[(str(node), attr)]
    assert row.accuracy_patch_patch == 1.0
    assert row.accuracy_supervised_arithmetic == pytest.approx(ref.accuracy[ref.dictionary == "supervised"].max())
    assert row.accuracy_topk_aware == pytest.approx(ref.accuracy[ref.method == "aware"].max())
    assert row.accuracy_topk_greedy == pytest.approx(ref.accuracy[ref.method == "greedy"].max())
    assert row.accuracy_none_none == pytest.approx(ref.accuracy[ref.method == "none"].iloc[0])
