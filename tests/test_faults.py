"""Faults while writing or running: interrupts and a full disk during a save, a checkpoint, a
store write and a report write. Nothing already saved is lost, every run can be resumed or
restarted, no temporary file is left behind, and no hook stays attached."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from conftest import random_model_with_bundled_tokenizer, random_standard_sae
from sae_lens import StandardSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import SAEMetadata

import saetools
from saetools.data import files
from saetools.hooks import attached_hook_count
from saetools.saes import load_sae, save_sae
from saetools.tasks import ioi

HOOK = "blocks.1.hook_resid_pre"
FAULTS = [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()]
IDS = ["disk full", "interrupt"]


def _leftovers(folder):
    return sorted(
        p.name for p in folder.iterdir() if p.name.startswith(".") and (".tmp" in p.name or p.name.endswith(".old"))
    )


@pytest.mark.parametrize("fault", FAULTS, ids=IDS)
def test_a_failed_save_keeps_the_sae_already_there(tmp_path, monkeypatch, fault):
    old, new = (
        random_standard_sae(d_in=32, hook=HOOK, seed=0),
        random_standard_sae(d_in=32, hook=HOOK, seed=1),
    )
    path = save_sae(old, tmp_path / "sae")

    def partial_then_fail(self, folder, *a, **k):
        (folder / "cfg.json").write_text('{"architecture": "stan')  # half written
        raise fault

    monkeypatch.setattr(StandardSAE, "save_model", partial_then_fail)
    with pytest.raises(type(fault)):
        save_sae(new, path)
    monkeypatch.undo()
    kept = load_sae(path)
    torch.testing.assert_close(kept.W_dec, old.W_dec, atol=0, rtol=0)
    assert _leftovers(tmp_path) == []
    save_sae(new, path)  # and the next save replaces it
    torch.testing.assert_close(load_sae(path).W_dec, new.W_dec, atol=0, rtol=0)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("fault", FAULTS, ids=IDS)
def test_a_failed_store_write_keeps_the_store_already_there(tmp_path, monkeypatch, fault):
    acts = torch.randn(3000, 8, generator=torch.Generator().manual_seed(0))
    first = saetools.ActivationStore.in_memory(acts).save(tmp_path / "store", shard_rows=1000)
    calls = []

    import saetools.activations as act

    def save_twice_then_fail(path, arr):
        calls.append(path)
        if len(calls) == 2:
            raise fault
        return original(path, arr)

    original = act.np.save
    monkeypatch.setattr(act.np, "save", save_twice_then_fail)
    with pytest.raises(type(fault)):
        saetools.ActivationStore.in_memory(2 * acts).save(tmp_path / "store", shard_rows=1000)
    monkeypatch.undo()
    again = saetools.ActivationStore.open(tmp_path / "store")
    assert len(again) == len(first) == 3000
    torch.testing.assert_close(next(again.batches(3000, seed=0)), next(first.batches(3000, seed=0)))
    assert _leftovers(tmp_path) == []


def test_an_interrupted_collection_writes_nothing(tmp_path, monkeypatch):
    import saetools.activations as act

    model = random_model_with_bundled_tokenizer()
    batch = ioi.render(model, ioi.wang_spec(16, seed=0))

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(act, "collect_activations", interrupt)
    with pytest.raises(KeyboardInterrupt):
        saetools.ActivationStore.from_model(model, batch.tokens, HOOK, path=tmp_path / "store")
    assert not (tmp_path / "store").exists() and _leftovers(tmp_path) == []
    assert attached_hook_count(model) == 0


@pytest.mark.parametrize("fault", FAULTS, ids=IDS)
def test_a_failed_checkpoint_resumes_from_the_one_before(tmp_path, monkeypatch, fault):
    import saetools.training as training

    acts = torch.randn(4096, 16, generator=torch.Generator().manual_seed(0))
    cfg = TopKTrainingSAEConfig(d_in=16, d_sae=64, k=4, metadata=SAEMetadata(hook_name=HOOK))
    kw = dict(total_samples=128 * 40, batch_size=128, lr=3e-3, seed=5, n_checkpoints=3)
    full = saetools.train_sae(acts, cfg, checkpoint_dir=tmp_path / "a", **kw)
    writes = []
    original = training.atomic_write_text

    def fail_at_the_second_checkpoint(path, text):
        writes.append(path)
        if len(writes) == 2:
            raise fault
        return original(path, text)

    monkeypatch.setattr(training, "atomic_write_text", fail_at_the_second_checkpoint)
    with pytest.raises(type(fault)):
        saetools.train_sae(acts, cfg, checkpoint_dir=tmp_path / "b", **kw)
    monkeypatch.undo()
    states = sorted((tmp_path / "b").glob(f"*/{training.STATE_FILE}"))
    assert len(states) == 1 and json.loads(states[0].read_text())["batches_consumed"] > 0
    resumed = saetools.train_sae(acts, cfg, checkpoint_dir=tmp_path / "b", resume_from=tmp_path / "b", **kw)
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(q, p, atol=0, rtol=0, msg=f"{name} differs after resume")


def test_a_failed_report_write_keeps_the_report_already_there(tmp_path, monkeypatch):
    from saetools.reproduce import NotebookResult, write_index

    result = NotebookResult("00_quickstart", True, 1.0, tmp_path / "00_quickstart.ipynb", None)
    write_index([result], tmp_path, {"model_name": "tiny-ioi"})
    before = (tmp_path / "index.html").read_text()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_index([result, result], tmp_path, {"model_name": "tiny-ioi"})
    monkeypatch.undo()
    assert (tmp_path / "index.html").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("fault", [RuntimeError("boom"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_a_fault_inside_a_spliced_run_detaches_everything(fault):
    model = random_model_with_bundled_tokenizer()
    sae = random_standard_sae(d_in=32, hook=HOOK)
    tokens = ioi.render(model, ioi.wang_spec(4, seed=0)).tokens
    with torch.no_grad():
        clean = model(tokens)

    def failing(act, hook):
        raise fault

    with pytest.raises(type(fault)):
        with saetools.splice(model, sae, interventions=[(sae, failing)]):
            model(tokens)
    assert attached_hook_count(model) == 0 and not model._acts_to_saes
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), clean, atol=0, rtol=0)


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(ValueError), files.atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        raise ValueError
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    with files.atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"] and _leftovers(tmp_path) == []


@pytest.mark.parametrize("fault", FAULTS, ids=IDS)
def test_a_failed_model_save_keeps_the_model_already_there(tmp_path, monkeypatch, fault):
    import safetensors.torch

    from saetools.models.loading import load_model, save_model

    model = random_model_with_bundled_tokenizer()
    save_model(model, tmp_path)
    model.tokenizer.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def partial_then_fail(state, filename, *a, **k):
        open(filename, "wb").write(b"\x00" * 10)
        raise fault

    monkeypatch.setattr(safetensors.torch, "save_file", partial_then_fail)
    with pytest.raises(type(fault)):
        save_model(model, tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "model.safetensors").read_bytes() == before and _leftovers(tmp_path) == []
    load_model(str(tmp_path), device="cpu")


def test_an_interrupted_notebook_run_keeps_the_previous_executed_notebook(tmp_path, monkeypatch):
    import papermill

    from saetools.reproduce import execute_notebook

    nb = tmp_path / "nb.ipynb"
    nb.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "nb.ipynb").write_text("previous run")

    def interrupted(input_path, output_path, **kw):
        open(output_path, "w").write('{"cells": [')  # papermill writes as it goes
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    with pytest.raises(KeyboardInterrupt):
        execute_notebook(nb, tmp_path / "out", {}, write_html=False)
    assert (tmp_path / "out" / "nb.ipynb").read_text() == "previous run"
    assert _leftovers(tmp_path / "out") == []
