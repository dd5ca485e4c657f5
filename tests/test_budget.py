"""Time and memory estimates of the profiles, and ``reproduce --profile full``'s refusal."""

import re
from pathlib import Path

import pytest
import torch

from saetools.experiments import EXPERIMENTS, budget
from saetools.models.configs import gpt2_small_config

README = Path(__file__).parents[1] / "README.md"


@pytest.fixture(scope="module")
def full_rows():
    return {r["experiment"]: r for r in budget.profile_table(gpt2_small_config(model_name="gpt2"))}


def test_every_full_profile_is_estimated_within_30_minutes_on_an_a100(full_rows):
    assert set(full_rows) == set(EXPERIMENTS)
    slow = {e: round(r["A100 minutes"], 1) for e, r in full_rows.items() if r["A100 minutes"] > 30}
    assert not slow, f"full profiles estimated over 30 minutes on one A100: {slow}"
    assert all(r["A100 GiB"] < 79 for r in full_rows.values())


def test_the_readme_table_is_the_one_the_code_prints():
    table = re.search(r"(\| notebook \| model \|.*?)\n\n", README.read_text(), re.S).group(1)
    assert table == budget.readme_table()


def test_makelov_node_saes_train_as_one_batch_per_variant():
    from saetools.experiments import makelov2024_supervised_dictionaries as makelov

    cfg = makelov.Config.profile("full")
    dims = budget.model_dims(gpt2_small_config())
    work = budget._makelov(cfg, dims)
    steps_per_variant = cfg.saes.epochs * (cfg.n_train // cfg.saes.batch_size)  # full batches, as trained
    assert work.train_steps == len(cfg.saes.variants) * steps_per_variant == 4 * 78_000  # as the docs say
    from saetools.circuits import WANG_2022_GPT2_CIRCUIT
    from saetools.dictionaries import cross_sections

    nodes = {n for s in cross_sections(WANG_2022_GPT2_CIRCUIT, kinds=cfg.kinds) for n in s.nodes}
    assert len(nodes) == 35


def test_an_estimate_grows_with_the_work():
    dims = budget.model_dims(gpt2_small_config())
    small = budget.estimate(budget.Workload(forward_tokens=1e6), dims, budget.GPUS["A100"])
    large = budget.estimate(budget.Workload(forward_tokens=1e7, peak_bytes=2**30), dims, budget.GPUS["A100"])
    assert large[0] > 9 * small[0] and large[1] == pytest.approx(small[1] + 1)
    t4 = budget.estimate(budget.Workload(forward_tokens=1e7), dims, budget.GPUS["T4"])
    assert t4[0] > large[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the refusal on a machine without a GPU")
def test_the_full_profile_is_refused_without_a_gpu(tmp_path, capsys):
    from saetools.cli import main

    with pytest.raises(budget.ProfileTooLargeError, match=r"needs a CUDA GPU.*mudide2024_switch_sae.*--profile smoke"):
        budget.check_fits(["mudide2024_switch_sae"], "full", gpt2_small_config())
    assert main(["reproduce", "--model", "tiny-ioi", "--profile", "full", "--only", "05",
                 "--out", str(tmp_path / "out")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_the_full_profile_is_refused_on_a_gpu_too_small(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=4 * 2**30))
    with pytest.raises(budget.ProfileTooLargeError, match=r"this GPU's 4.0 GiB.*quickstart"):
        budget.check_fits(["quickstart", "wang2022_ioi"], "full", gpt2_small_config())
    budget.check_fits(["wang2022_ioi"], "full", gpt2_small_config())  # 3.5 GiB fits
