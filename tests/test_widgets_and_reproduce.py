import socket

import nbformat
import pytest
import torch

from saetools import cli
from saetools.widgets import attention_heads_html, table_html


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_attention_html_is_offline_and_contains_tokens(no_network):
    pattern = torch.softmax(torch.randn(2, 3, 3), -1)
    html = attention_heads_html(["<|endoftext|>", " Mary", " John"], pattern, ["L0H0", "L0H1"])
    text = html._repr_html_()
    assert "Mary" in text and "unpkg.com" not in text and len(text) > 1000


def test_attention_html_checks_shapes():
    with pytest.raises(ValueError, match=r"\[head, 2, 2\]"):
        attention_heads_html(["a", "b"], torch.ones(1, 3, 3))


def test_table_html():
    import pandas as pd

    assert "<table" in table_html(pd.DataFrame({"a": [1.0]})).html


def _notebook(path, code):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('model_name = "x"\nprofile = "y"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_reproduce_reports_and_fails_on_a_failing_notebook(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "a_ok.ipynb", "assert model_name == 'tiny-ioi' and profile == 'smoke'")
    _notebook(nbs / "b_bad.ipynb", "assert False, 'own check failed'")
    out = tmp_path / "out"
    code = cli.main(["reproduce", "--notebooks", str(nbs), "--out", str(out)])
    assert code == 1
    index = (out / "index.html").read_text()
    assert "a_ok.html" in index and "b_bad.html" in index and "FAILED" in index
    assert (out / "a_ok.ipynb").exists() and (out / "a_ok.html").exists()
    printed = capsys.readouterr().out
    assert "index.html" in printed and "own check failed" in printed
    assert cli.main(["reproduce", "--notebooks", str(nbs), "--out", str(out), "--only", "a_ok"]) == 0


def test_reproduce_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["reproduce", "--notebooks", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "--notebooks" in err and "Traceback" not in err


def test_as_iframe_escapes_and_embeds_the_html():
    from saetools.widgets import OfflineHTML

    frame = OfflineHTML('<script>var a = "x";</script>').as_iframe(height=100)
    assert frame.startswith("<iframe srcdoc=") and "&lt;script&gt;" in frame and "&quot;x&quot;" in frame


def test_tables_show_column_names_in_words():
    import pandas as pd

    from saetools.widgets import human_column_names

    df = pd.DataFrame({"loss_recovered_zero": [0.9], "via_nm_q": [0.1], "l0": [3.0], "plain": [1]})
    shown = human_column_names(df.set_index("plain"))
    assert list(shown.columns) == ["loss recovered (vs zero-ablation)", "via name movers' queries", "L0"]
    assert shown.index.name == "plain" and list(df.columns)[0] == "loss_recovered_zero"  # the data keep code names
    wide = pd.DataFrame([[1.0]], columns=pd.MultiIndex.from_tuples([("best_f1_b_min", "topk_signed")]))
    assert list(human_column_names(wide).columns) == [("best F1 B min", "signed TopK")]


def test_notebooks_command_copies_and_keeps_existing_files(tmp_path, capsys):
    from saetools.reproduce import notebooks_dir

    assert cli.main(["notebooks", str(tmp_path / "nbs")]) == 0
    copied = sorted(p.name for p in (tmp_path / "nbs").glob("*.ipynb"))
    assert copied == sorted(p.name for p in notebooks_dir().glob("*.ipynb")) and len(copied) == 8
    (tmp_path / "nbs" / copied[0]).write_text("my edits")
    assert cli.main(["notebooks", str(tmp_path / "nbs")]) == 2
    err = capsys.readouterr().err
    assert copied[0] in err and "--overwrite" in err and "Traceback" not in err
    assert (tmp_path / "nbs" / copied[0]).read_text() == "my edits"  # nothing was written
    assert cli.main(["notebooks", str(tmp_path / "nbs"), "--overwrite"]) == 0
    assert (tmp_path / "nbs" / copied[0]).read_text() != "my edits"


def test_reproduce_without_its_extra_names_the_extra(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "papermill" else real(name, *a))
    assert cli.main(["reproduce", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "papermill" in err and 'pip install "saetools[reproduce]"' in err


def test_the_index_page_states_the_run(tmp_path):
    from saetools.reproduce import NotebookResult, write_index

    nb = nbformat.v4.new_notebook()
    from saetools.experiments.protocol import Claims, Headline

    claims = Claims({"b": "the model lacks it"}, headlines={"a": Headline("claim A", "0.9"), "b": Headline("claim B", "1")})
    claims("a", True, "0.95")
    claims("b", False, "0.1")
    claims.untestable("c", "too short", paper="2x")
    table = claims.table()
    cell = nbformat.v4.new_code_cell("claims = x.check(result)")
    cell.outputs = [nbformat.v4.new_output("display_data", data={"text/html": table.to_html(),
                                                                  **table._repr_mimebundle_()})]
    nb.cells = [cell]
    nbformat.write(nb, tmp_path / "01_x.ipynb")
    ok = NotebookResult("01_x", True, 12.5, tmp_path / "01_x.ipynb", None)
    bad = NotebookResult("02_y", False, 3.0, tmp_path / "02_y.ipynb", None, "ClaimFailed: no (cell 4)")
    page = write_index([ok, bad], tmp_path, {"model_name": "tiny-ioi", "profile": "smoke"}).read_text()
    for fact in ("date", "commit", "python", "torch", "sae-lens", "transformer-lens", "device", "tiny-ioi"):
        assert f">{fact}<" in page or fact in page, fact
    assert "12.5 s" in page and "15.5 s in all" in page and "1 of 2 passed" in page
    assert "claim A" in page and "ClaimFailed: no" in page
    assert "3 claims: 1 reproduced, 1 not reproduced, 1 not testable at this profile" in page
    import pandas as pd

    csv = pd.read_csv(tmp_path / "claims.csv", keep_default_na=False)
    assert list(csv.columns) == ["notebook", "key", "claim", "paper", "run", "verdict", "why"]
    assert csv.values.tolist() == [["01_x", "a", "claim A", "0.9", "0.95", "reproduced", ""],
                                   ["01_x", "b", "claim B", "1", "0.1", "not reproduced", "the model lacks it"],
                                   ["01_x", "c", "c", "2x", "", "not testable at this profile", "too short"]]


def test_environment_yml_installs_the_tested_pins_not_editable():
    import yaml

    from saetools.reproduce import notebooks_dir

    env = yaml.safe_load((notebooks_dir().parent / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "--constraint constraints/ci.txt" in pip and ".[lab,reproduce]" in pip
    assert not any(line.startswith(("-e", "--editable")) for line in pip)
