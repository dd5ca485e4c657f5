"""Supervised dictionaries and their metrics on synthetic nodes with planted codes (Makelov et al.
2024): recovery of the planted codes, edits that reproduce the counterfactual
activation, and a naive per-prompt / per-latent reference for every vectorised metric."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from saetools.dictionaries import (
    SAEDictionary,
    agreement_score,
    attribute_values,
    edit_accuracy,
    f1_scores,
    fit_supervised,
    grouped_f1,
    latent_weights,
    mean_max_cosine,
    sae_edit_aware,
    sae_edit_greedy,
    shared_residual,
)
from saetools.dictionaries.control import supervised_weight
from saetools.dictionaries.nodes import Node
from tests.conftest import random_standard_sae

EXACT = {"atol": 1e-4, "rtol": 1e-4}
NAMES = ["Ann", "Bob", "Cat", "Dan", "Eve"]


def factorial_spec(reps: int = 2) -> pd.DataFrame:
    """Every (io, s, pattern) combination ``reps`` times: a balanced design (labels only)."""
    rows = [{"io": a, "s": b, "s1": b, "pattern": p, "template": "t", "place": "x", "object": "y"}
            for a, b, p in itertools.product(NAMES, NAMES, ["ABB", "BAB"])] * reps
    return pd.DataFrame(rows)


def planted(spec: pd.DataFrame, *, d: int = 12, coupled: bool = False, seed: int = 0):
    """Activations ``bias + sum of planted codes`` (independent or coupled), no noise."""
    g = torch.Generator().manual_seed(seed)
    bias = torch.randn(d, generator=g)
    if coupled:
        keys = {"io": [f"{n}|{p}" for n in NAMES for p in ("ABB", "BAB")]}
        keys["s"] = keys["io"]
        u = {k: dict(zip(v, torch.randn(len(v), d, generator=g))) for k, v in keys.items()}
        x = torch.stack([bias + u["io"][f"{r.io}|{r.pattern}"] + u["s"][f"{r.s}|{r.pattern}"] for r in spec.itertuples()])
    else:
        u = {"io": dict(zip(NAMES, torch.randn(5, d, generator=g))), "s": dict(zip(NAMES, torch.randn(5, d, generator=g))),
             "pos": dict(zip(["ABB", "BAB"], torch.randn(2, d, generator=g)))}
        x = torch.stack([bias + u["io"][r.io] + u["s"][r.s] + u["pos"][r.pattern] for r in spec.itertuples()])
    return x, u


def counterfactual_spec(spec: pd.DataFrame, attribute: str) -> pd.DataFrame:
    out = spec.copy()
    if attribute == "pos":
        out["pattern"] = np.where(spec.pattern == "ABB", "BAB", "ABB")
    else:
        out[attribute] = [NAMES[(NAMES.index(v) + 1) % 5] for v in spec[attribute]]
    return out


# ---- supervised dictionaries: planted recovery and edits -----------------------------------------------

@pytest.mark.parametrize("method", ["mean", "lstsq"])
def test_independent_codes_are_recovered_and_reconstruct_exactly(method):
    spec = factorial_spec()
    x, u = planted(spec)
    d = fit_supervised(x, spec, method=method)
    torch.testing.assert_close(d.reconstruct(spec), x, **EXACT)
    torch.testing.assert_close(d.b_dec, x.mean(0), **EXACT)
    for attr, values in (("io", NAMES), ("s", NAMES), ("pos", ["ABB", "BAB"])):
        planted_codes = torch.stack([u[attr][v] for v in values])
        # balanced design: the recovered codes are the planted ones minus their mean
        torch.testing.assert_close(d.codes[(attr,)], planted_codes - planted_codes.mean(0), **EXACT)
        assert d.values[(attr,)] == sorted(values)


@pytest.mark.parametrize("method", ["mean", "lstsq"])
@pytest.mark.parametrize("parametrization", ["independent", "coupled"])
@pytest.mark.parametrize("attribute", ["io", "s", "pos"])
def test_arithmetic_edit_reproduces_the_counterfactual_activation(method, parametrization, attribute):
    spec = factorial_spec()
    x, _ = planted(spec, coupled=parametrization == "coupled")
    d = fit_supervised(x, spec, method=method, parametrization=parametrization)
    torch.testing.assert_close(d.reconstruct(spec), x, **EXACT)
    cf = counterfactual_spec(spec, attribute)
    row_of = {tuple(r): i for i, r in enumerate(spec[["io", "s", "pattern"]].itertuples(index=False))}
    x_cf = x[[row_of[tuple(r)] for r in cf[["io", "s", "pattern"]].itertuples(index=False)]]
    torch.testing.assert_close(d.edit(x, spec, cf, attribute), x_cf, **EXACT)


def test_subspace_edits_match_a_per_prompt_reference():
    spec = factorial_spec(1)
    x, _ = planted(spec)
    x = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    d = fit_supervised(x, spec)
    cf = counterfactual_spec(spec, "io")
    for method in ("zero_ablate_subspace", "mean_ablate_subspace"):
        got = d.edit(x, spec, cf, "io", method)
        for i in range(len(spec)):
            old = d.codes[("io",)][d.values[("io",)].index(spec.io[i])]
            new = d.codes[("io",)][d.values[("io",)].index(cf.io[i])]
            unit = old / old.norm()
            keep = float(d.b_dec @ unit) if method == "mean_ablate_subspace" else 0.0
            want = x[i] - (float(x[i] @ unit) - keep) * unit + new
            torch.testing.assert_close(got[i], want, **EXACT)


def test_feature_weights_match_per_prompt_formula_and_sum_to_one():
    spec = factorial_spec(1)
    x, _ = planted(spec)
    d = fit_supervised(x, spec)
    w = d.feature_weights(spec)
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)
    for i in (0, 7, 33):
        r = d.reconstruct(spec.iloc[[i]])[0] - d.b_dec
        for g in d.groups:
            code = d.codes[g][d.values[g].index(str(spec.iloc[i][{"io": "io", "s": "s", "pos": "pattern"}[g[0]]]))]
            assert w[",".join(g)][i] == pytest.approx(float(code @ r / (r @ r)), abs=1e-5)
    torch.testing.assert_close(supervised_weight(d, spec, "io"), torch.tensor(w["io"].to_numpy(), dtype=torch.float32))


def test_variance_explained_and_encode_decode_interface():
    spec = factorial_spec(1)
    x, _ = planted(spec)
    d = fit_supervised(x, spec)
    assert d.variance_explained(x, spec) == pytest.approx(1.0, abs=1e-5)
    f = d.encode(None, spec)
    assert f.shape == (len(spec), d.d_sae) and torch.equal(f.sum(1), torch.full((len(spec),), 3.0))
    torch.testing.assert_close(d.decode(f), d.reconstruct(spec))
    assert len(d.feature_names) == d.d_sae and d.feature_names[0].startswith("io=")


def test_supervised_errors_are_clear(user_view):
    spec = factorial_spec(1)
    x, _ = planted(spec)
    with pytest.raises(ValueError, match="n_prompts"):
        fit_supervised(x[:-1], spec)
    with pytest.raises(ValueError, match="NaN"):
        fit_supervised(x.clone().fill_(float("nan")), spec)
    with pytest.raises(ValueError, match="parametrization"):
        fit_supervised(x, spec, parametrization="joint")
    with pytest.raises(ValueError, match="method"):
        fit_supervised(x, spec, method="adam")
    d = fit_supervised(x, spec)
    with pytest.raises(ValueError, match="not seen"):
        d.reconstruct(spec.assign(io="Zed"))
    with pytest.raises(ValueError, match="method"):
        d.edit(x, spec, spec, "io", "rotate")
    with pytest.raises(ValueError, match="attribute"):
        attribute_values(spec, "place")
    io_only = fit_supervised(x, spec, parametrization=[("io",)])
    with pytest.raises(ValueError, match="no group with attribute 'pos'"):
        io_only.edit(x, spec, spec, "pos")


# ---- interpretability: naive references -------------------------------------------------------------------

def naive_f1(active: np.ndarray, labels: np.ndarray, j: int, v: str) -> tuple[float, float, float]:
    on = {i for i in range(len(labels)) if active[i, j]}
    pos = {i for i in range(len(labels)) if labels[i] == v}
    tp = len(on & pos)
    p = tp / len(on) if on else 0.0
    r = tp / len(pos) if pos else 0.0
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


@pytest.fixture
def activity():
    g = torch.Generator().manual_seed(0)
    labels = np.array(list("abcde"))[torch.randint(0, 5, (80,), generator=g).numpy()]
    acts = torch.relu(torch.randn(80, 12, generator=g))
    acts[:, 3] = 0.0  # a latent that never fires
    acts[:, 5] = torch.as_tensor(labels == "b").float()  # a perfect latent for "b"
    return acts, labels


def test_f1_scores_match_a_naive_loop(activity):
    acts, labels = activity
    t = f1_scores(acts, labels)
    active = (acts != 0).numpy()
    assert t.values == list("abcde")
    for j in range(acts.shape[1]):
        for k, v in enumerate(t.values):
            p, r, f = naive_f1(active, labels, j, v)
            assert (float(t.precision[j, k]), float(t.recall[j, k]), float(t.f1[j, k])) == pytest.approx((p, r, f), abs=1e-6)
    assert float(t.f1[5, 1]) == pytest.approx(1.0) and float(t.f1[3].abs().sum()) == 0.0
    assert t.best().set_index("value").loc["b", "latent"] == 5
    torch.testing.assert_close(f1_scores(acts != 0, labels).f1, t.f1)  # boolean activity gives the same table


def test_grouped_f1_matches_a_naive_union(activity):
    acts, labels = activity
    t = f1_scores(acts, labels)
    got = grouped_f1(t, max_group=3)
    active = (acts != 0).numpy()
    for j in range(acts.shape[1]):
        order = sorted(range(5), key=lambda k: (-float(t.f1[j, k]), k))
        best, size = 0.0, 1
        for m in range(1, 4):
            group = {t.values[k] for k in order[:m]}
            target = np.isin(labels, list(group))
            tp = float((active[:, j] & target).sum())
            f = 2 * tp / (active[:, j].sum() + target.sum()) if tp > 0 else 0.0
            if f > best + 1e-9:
                best, size = f, m
        assert got.grouped_f1[j] == pytest.approx(best, abs=1e-6)
        if best > 0:
            assert got.group_size[j] == size


def test_mean_max_cosine_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    codes, dec = torch.randn(6, 8, generator=g), torch.randn(20, 8, generator=g)
    dec[7] = 3 * codes[2]  # a decoder row aligned with code 2
    got = mean_max_cosine(codes, dec)
    want = torch.tensor([max(float(torch.cosine_similarity(c, r, dim=0)) for r in dec) for c in codes])
    torch.testing.assert_close(got, want, **EXACT)
    assert float(got[2]) == pytest.approx(1.0, abs=1e-6)


# ---- control: naive references --------------------------------------------------------------------------

@pytest.fixture
def sae_setup():
    sae = random_standard_sae(d_in=16, d_sae=48, seed=3)
    d = SAEDictionary(sae)
    g = torch.Generator().manual_seed(4)
    x, x_cf = torch.randn(10, 16, generator=g), torch.randn(10, 16, generator=g)
    return d, x, x_cf


def test_latent_weights_match_the_per_latent_formula_and_sum_to_one(sae_setup):
    d, x, _ = sae_setup
    f = d.encode(x)
    w = latent_weights(d, f)
    for i in range(3):
        r = d.decode(f[i : i + 1])[0] - d.b_dec
        for j in range(d.d_sae):
            assert float(w[i, j]) == pytest.approx(float(f[i, j] * (d.W_dec[j] @ r) / (r @ r)), abs=1e-5)
    torch.testing.assert_close(w.sum(1), torch.ones(10), **EXACT)
    torch.testing.assert_close(d.decode(f), d.sae.decode(f.to(d.sae.W_dec.dtype)).detach(), **EXACT)


def test_greedy_edit_matches_a_per_prompt_search(sae_setup):
    d, x, x_cf = sae_setup
    for n in (1, 3, 6):
        got, removed = sae_edit_greedy(d, x, x_cf, n)
        f, f_cf = d.encode(x), d.encode(x_cf)
        w = latent_weights(d, f)
        for i in range(len(x)):
            delta, total, chosen = x_cf[i] - x[i], torch.zeros(16), []
            for _ in range(n):
                best, best_j = (total - delta).norm(), None
                for j in range(d.d_sae):
                    c = f_cf[i, j] - f[i, j]
                    if j in chosen or c == 0:
                        continue
                    dist = (total + c * d.W_dec[j] - delta).norm()
                    if dist < best - 1e-7:
                        best, best_j = dist, j
                if best_j is None:
                    break
                chosen.append(best_j)
                total = total + (f_cf[i, best_j] - f[i, best_j]) * d.W_dec[best_j]
            torch.testing.assert_close(got[i], x[i] + total, **EXACT)
            assert float(removed[i]) == pytest.approx(float(w[i, chosen].sum()), abs=1e-5)


def test_aware_edit_matches_a_per_prompt_reference(sae_setup):
    d, x, x_cf = sae_setup
    g = torch.Generator().manual_seed(5)
    labels = np.array(list("pqr"))[torch.randint(0, 3, (40,), generator=g).numpy()]
    table = f1_scores(d.encode(torch.randn(40, 16, generator=g)), labels)
    values, cf_values = labels[:10], labels[10:20]
    for n in (1, 2, 4):
        got, removed = sae_edit_aware(d, x, x_cf, table, values, cf_values, n)
        f, f_cf = d.encode(x), d.encode(x_cf)
        w = latent_weights(d, f)
        for i in range(len(x)):
            def pick(acts, value, n=n):
                col = table.values.index(value)
                ranked = [int(j) for j in table.ranking(value)]
                return [j for j in ranked if float(table.f1[j, col]) > 0 and acts[j] != 0][:n]
            rm, add = pick(f[i], values[i]), pick(f_cf[i], cf_values[i])
            want = x[i] - sum((f[i, j] * d.W_dec[j] for j in rm), torch.zeros(16)) \
                + sum((f_cf[i, j] * d.W_dec[j] for j in add), torch.zeros(16))
            torch.testing.assert_close(got[i], want, **EXACT)
            assert float(removed[i]) == pytest.approx(float(w[i, rm].sum()), abs=1e-5)
    with pytest.raises(ValueError, match="no F1 column"):
        sae_edit_aware(d, x, x_cf, table, np.array(["zz"] * 10), cf_values, 1)


def test_edit_accuracy_and_agreement_score_match_naive_definitions():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, 7, generator=g), torch.randn(30, 7, generator=g)
    b[:12] = a[:12] + 0.01  # same argmax on (at least) the first 12
    naive = sum(int(torch.argmax(a[i]) == torch.argmax(b[i])) for i in range(30)) / 30
    assert edit_accuracy(a, b) == pytest.approx(naive)
    assert agreement_score(0.7, acc_none=0.5, acc_supervised=0.9) == pytest.approx(0.5)
    assert agreement_score(0.2, acc_none=0.5, acc_supervised=0.9) == 0.0
    assert agreement_score(1.0, acc_none=0.9, acc_supervised=0.95) == 2.0
    assert np.isnan(agreement_score(0.7, acc_none=0.9, acc_supervised=0.9))


def test_sae_dictionary_errors_are_clear(sae_setup):
    d, _, _ = sae_setup
    with pytest.raises(ValueError, match="d_in=16"):
        d.encode(torch.randn(4, 9))
    with pytest.raises(TypeError, match="sae-lens SAE"):
        SAEDictionary(object())
    with pytest.raises(ValueError, match="rows but labels"):
        f1_scores(torch.ones(3, 2), ["a", "b"])


def test_coupled_mean_codes_backfit_to_the_least_squares_fit():
    # an unbalanced random design with noise: the backfitted coupled codes reach the MSE optimum
    g = torch.Generator().manual_seed(2)
    spec = factorial_spec(3).sample(frac=0.6, random_state=0).reset_index(drop=True)
    x, _ = planted(spec, coupled=True)
    x = x + 0.3 * torch.randn(x.shape, generator=g)
    mean = fit_supervised(x, spec, parametrization="coupled")
    lstsq = fit_supervised(x, spec, parametrization="coupled", method="lstsq")
    torch.testing.assert_close(mean.reconstruct(spec), lstsq.reconstruct(spec), atol=1e-3, rtol=1e-3)
    # independent groups stay the paper's one-pass conditional means
    ind = fit_supervised(x, spec)
    io = spec.io.to_numpy()
    for k, v in enumerate(ind.values[("io",)]):
        torch.testing.assert_close(ind.codes[("io",)][k], (x[io == v] - x.mean(0)).mean(0), **EXACT)


def test_experiment_falls_back_to_independent_codes_when_coupled_ones_miss_an_edit_value():
    """The Makelov experiment's per-node choice: coupled codes win on variance, but a
    counterfactual needs a joint (name, Pos) value the fit never saw -> independent codes."""
    from saetools.experiments.makelov2024_supervised_dictionaries import _supervised

    spec = factorial_spec(reps=3)
    x, _ = planted(spec, coupled=True)
    train = spec[~((spec.io == "Ann") & (spec.pattern == "BAB"))]
    x_train = x[torch.tensor(train.index.to_numpy())]
    train = train.reset_index(drop=True)
    node = Node(1, "z", "END", head=0)
    chosen, table = _supervised({node: x_train}, train, {node: x_train}, train)
    assert table.chosen.iloc[0] == "coupled" and bool(table.covered_coupled.iloc[0])
    cf = counterfactual_spec(train, "pos")  # flips (Ann, ABB) -> (Ann, BAB): never fitted
    chosen, table = _supervised({node: x_train}, train, {node: x_train}, train, [train, cf])
    assert table.chosen.iloc[0] == "independent"
    assert not bool(table.covered_coupled.iloc[0]) and bool(table.covered_independent.iloc[0])
    assert chosen[node].groups == fit_supervised(x_train, train, node=node).groups
    no_eve = train[(train.io != "Eve") & (train.s != "Eve")]  # a name the evaluation uses, never fitted
    with pytest.raises(ValueError, match="raise Config.n_train"):
        _supervised({node: x_train[torch.tensor(no_eve.index.to_numpy())]}, no_eve.reset_index(drop=True),
                    {node: x_train}, train)


def test_shared_residual_finds_a_planted_io_by_s_interaction():
    """Additive codes plus a planted IO x S term: independent codes leave exactly that term, which a
    twin with the same names keeps and a twin with another IO or another S loses."""
    spec = factorial_spec(reps=4)
    x, _ = planted(spec, seed=1)
    g = torch.Generator().manual_seed(7)
    pair = {(a, b): torch.randn(12, generator=g) for a in NAMES for b in NAMES}
    inter = lambda sp: torch.stack([pair[(r.io, r.s)] for r in sp.itertuples()])
    d = fit_supervised(x + inter(spec), spec)
    same = spec.assign(template="another template", place="z")  # same names and order, another context
    other_io, other_s = counterfactual_spec(spec, "io"), counterfactual_spec(spec, "s")
    x_of = lambda sp: planted(sp, seed=1)[0] + inter(sp)
    naive = []
    for twin in (same, other_io, other_s):
        r = x_of(spec) - d.reconstruct(spec)
        rt = x_of(twin) - d.reconstruct(twin)
        naive.append(1 - float(((r - rt) ** 2).sum(1).mean() / ((r**2).sum(1).mean() + (rt**2).sum(1).mean())))
        assert shared_residual(d, x_of(spec), spec, x_of(twin), twin) == pytest.approx(naive[-1], abs=1e-5)
    assert naive[0] == pytest.approx(1.0)  # the same names leave the same residual
    assert naive[1] < 0.3 and naive[2] < 0.3  # another IO or another S: a different pair, an unrelated residual
    with pytest.raises(ValueError, match="one twin per prompt"):
        shared_residual(d, x_of(spec), spec, x_of(spec)[:3], spec[:3])
