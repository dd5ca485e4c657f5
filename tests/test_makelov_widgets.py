"""Makelov widgets (saetools.widgets.makelov): construction, callbacks and static HTML, no browser."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from saetools.dictionaries.occlusion import over_splitting
from saetools.widgets.makelov import EditPlayground, OverSplittingExplorer, edit_table, oversplitting_figure

pytest.importorskip("ipywidgets")


def _split(m: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = 400
    y = torch.arange(n) % 2 == 1
    rank = torch.cumsum(y.long(), 0) - 1
    act = (torch.rand(n, 12, generator=g) < 0.05).float()
    for i in range(m):
        act[:, i] = (y & (rank % m == i)).float()
    return over_splitting(act, np.where(y.numpy(), "BAB", "ABB"))


@pytest.fixture
def explorer():
    results = {("L1H0.z@END", "pos"): _split(3), ("L1H0.z@END", "io"): _split(2, seed=1),
               ("L2.resid_post@END", "pos"): _split(5, seed=2)}
    occ = pd.DataFrame({"node": ["L1H0.z@END"], "attribute": ["pos"], "norm_ratio": [0.123456], "best_f1": [0.5]})
    return OverSplittingExplorer(results, occlusion=occ)


def test_explorer_widget_updates_on_every_control(explorer):
    box = explorer.widget()
    c = box.controls
    assert c["node"].options == ("L1H0.z@END", "L2.resid_post@END")
    assert c["attribute"].options == ("pos", "io")
    first = c["figure"].value
    assert first.startswith("<svg") and "0.123" in c["info"].value  # occlusion row of the selection
    assert c["value"].value == "ABB" and "ABB: per-latent" in first
    c["value"].value = "BAB"
    assert "BAB: per-latent" in c["figure"].value and "union reaches F1 &gt;= 0.9: 3 latents" in c["figure"].value
    c["node"].value = "L2.resid_post@END"
    assert c["attribute"].options == ("pos",) and c["value"].value == "BAB"  # a still-valid value is kept
    assert "L2.resid_post@END" in c["info"].value and "0.123" not in c["info"].value
    assert "union reaches F1 &gt;= 0.9: 5 latents" in c["figure"].value  # 5 planted slices
    c["node"].value = "L1H0.z@END"
    c["attribute"].value = "io"
    assert "attribute <b>io</b>" in c["info"].value and "0.123" not in c["info"].value


def test_explorer_html_fallback_and_errors(explorer):
    page = explorer.html("L1H0.z@END", "io", "BAB").html
    assert "<svg" in page and "L1H0.z@END" in page and "<table" in page
    assert explorer.html().html.count("<svg") == 1
    with pytest.raises(KeyError, match="no result"):
        explorer.html("nope", "pos")
    with pytest.raises(ValueError, match="empty"):
        OverSplittingExplorer({})
    with pytest.raises(TypeError, match="over_splitting"):
        OverSplittingExplorer({("a", "b"): object()})


def test_oversplitting_figure_marks_the_union():
    import matplotlib.pyplot as plt

    res = _split(3)
    fig = oversplitting_figure(res, "BAB")
    ax_scatter, ax_curve = fig.axes[:2]
    ys = np.asarray(ax_curve.lines[0].get_ydata(), dtype=float)
    np.testing.assert_allclose(ys, res.curve[res.curve.value == "BAB"].union_f1.to_numpy())
    assert len(ax_scatter.collections[1].get_offsets()) == 3  # three union members highlighted
    plt.close(fig)


def edit_rows() -> pd.DataFrame:
    rows = []
    for prompt in ("Then, Ann and Bob went ... to", "Then, Bob and Ann went ... to"):
        for attr, values in (("io", ["Cid", "Dan"]), ("pos", ["BAB"])):
            for value in values:
                for edit, shift, top in (("clean", 0.0, "Ann"), ("patch", 2.0, value), ("supervised arithmetic", 1.5, value),
                                         ("topk aware n=2", 0.5, "Ann")):
                    for tok, base in (("Ann", 3.0), ("Bob", 1.0), (value, 0.0)):
                        rows.append({"prompt": prompt, "attribute": attr, "value": value, "edit": edit, "token": tok,
                                     "logit": base + (shift if tok == value else -shift), "top": top})
    return pd.DataFrame(rows)


def test_edit_table_against_a_hand_computed_case():
    d = edit_rows()
    sel = d[(d.prompt == d.prompt[0]) & (d.attribute == "io") & (d.value == "Cid")]
    t = edit_table(sel).set_index("edit")
    assert list(t.index) == ["clean", "patch", "supervised arithmetic", "topk aware n=2"]
    assert t.loc["supervised arithmetic", "change Cid"] == pytest.approx(1.5)
    assert t.loc["supervised arithmetic", "change Ann"] == pytest.approx(-1.5)
    assert t.loc["patch", "logit Cid"] == pytest.approx(2.0)
    assert t.agrees_with_patch.tolist() == [False, True, True, False]
    assert (t.filter(like="change").loc["clean"] == 0).all()
    with pytest.raises(ValueError, match="lacks columns"):
        edit_table(sel.drop(columns="logit"))


def test_edit_playground_from_data_updates_on_every_control():
    pg = EditPlayground(edit_rows())
    box = pg.widget()
    c = box.controls
    assert c["attribute"].options == ("io", "pos") and c["value"].options == ("Cid", "Dan")
    assert "Cid" in c["output"].value and "<table" in c["output"].value
    c["value"].value = "Dan"
    assert "Dan" in c["output"].value and "Cid" not in c["output"].value
    c["attribute"].value = "pos"
    assert c["value"].options == ("BAB",) and "BAB" in c["output"].value
    c["prompt"].value = pg.prompts[1]
    assert "Bob and Ann" in c["output"].value
    page = pg.html(pg.prompts[0], "io", "Dan").html
    assert "supervised arithmetic" in page and "+1.500" in page


def test_edit_playground_with_a_callable():
    calls = []

    def fn(prompt, attribute, value):
        calls.append((prompt, attribute, value))
        return pd.DataFrame({"edit": ["clean", "patch", "sae"], "token": [value] * 3, "logit": [0.0, 1.0, 0.25]})

    pg = EditPlayground(fn, prompts=["p0", "p1"], values={"io": ["X", "Y"], "s": ["Z"]})
    box = pg.widget()
    c = box.controls
    assert calls[-1] == ("p0", "io", "X")
    c["value"].value = "Y"
    assert calls[-1] == ("p0", "io", "Y") and "+0.250" in c["output"].value
    c["attribute"].value = "s"
    assert calls[-1] == ("p0", "s", "Z")
    c["prompt"].value = "p1"
    assert calls[-1] == ("p1", "s", "Z")
    with pytest.raises(ValueError, match="prompts"):
        EditPlayground(fn)


def test_a_bad_callable_result_is_shown_not_raised():
    pg = EditPlayground(lambda p, a, v: pd.DataFrame({"edit": ["clean"]}), prompts=["p"], values={"io": ["X"]})
    assert "lacks columns" in pg.widget().controls["output"].value


def test_widgets_import_no_model_code():
    import ast
    import inspect

    import saetools.widgets.makelov as mod

    imported = set()
    for node in ast.walk(ast.parse(inspect.getsource(mod))):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    model_code = {m for m in imported if m.split(".")[0] in ("torch", "transformer_lens", "sae_lens")
                  or m.startswith(("saetools.dictionaries", "saetools.diagnostics", "saetools.models"))}
    assert not model_code, model_code
    assert "saetools.widgets.html" in imported  # sanity: the walk sees the imports


def test_toy_and_occlusion_figures_plot_the_table():
    import matplotlib.pyplot as plt

    from saetools.widgets.makelov import occlusion_figure, toy_occlusion_figure

    toy = pd.DataFrame({"ratio": [0.5, 1.0, 2.0], "best_f1_a": [0.1, 0.4, 0.9], "best_f1_b": [1.0, 0.6, 0.1],
                        "f1_dense_b": [2 / 3] * 3})
    fig = toy_occlusion_figure(toy)
    np.testing.assert_allclose(np.asarray(fig.axes[0].lines[1].get_ydata(), float), toy.best_f1_b)
    plt.close(fig)
    occ = pd.DataFrame({"node": ["a", "a", "b"], "attribute": ["io", "pos", "pos"], "norm_ratio": [2.0, 0.1, 0.8],
                        "best_f1": [0.9, 0.66, 0.95], "f1_dense": [0.01, 2 / 3, 2 / 3]})
    fig = occlusion_figure(occ)
    pos = fig.axes[0].collections[2].get_offsets()  # io, its dense marks, then pos
    np.testing.assert_allclose(np.asarray(pos), [[0.1, 0.66], [0.8, 0.95]])
    plt.close(fig)
    with pytest.raises(ValueError, match="not in the occlusion table"):
        occlusion_figure(occ, y="accuracy")
