"""Training on in-memory and on-disk stores, every architecture, checkpoints and resume,
save/load in sae-lens's format, the faithful Gated loss, the suppression fix, offline errors."""

import time

import pytest
import torch
from sae_lens import (
    SAE,
    BatchTopKTrainingSAEConfig,
    GatedTrainingSAEConfig,
    JumpReLUTrainingSAEConfig,
    MatryoshkaBatchTopKTrainingSAEConfig,
    StandardTrainingSAEConfig,
    TopKTrainingSAEConfig,
)
from sae_lens.saes.sae import SAEMetadata, TrainStepInput

from saetools import evals
from saetools.activations import ActivationStore
from saetools.saes import (
    FaithfulGatedTrainingSAEConfig,
    PretrainedSAEUnavailableError,
    load_pretrained_sae,
    load_sae,
    refit_decoder,
    save_sae,
)
from saetools.training import train_sae

META = SAEMetadata(hook_name="blocks.0.hook_resid_pre")


def _acts(n=4096, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(48, d, generator=gen), dim=-1)
    codes = torch.rand(n, 48, generator=gen) * (torch.rand(n, 48, generator=gen) < 0.08)
    return codes @ dirs + 0.01 * torch.randn(n, d, generator=gen)


class _Interrupting(ActivationStore):
    """A store whose stream dies after ``fail_at`` batches (a crash mid-run)."""

    def __init__(self, base, fail_at):
        super().__init__(base.shards)
        self.fail_at = fail_at

    def batches(self, *a, **kw):
        for k, b in enumerate(super().batches(*a, **kw)):
            if k == self.fail_at:
                raise RuntimeError("interrupted")
            yield b


def test_disk_store_streams_every_row_once_per_epoch(tmp_path):
    acts = _acts(1000)
    mem = ActivationStore.in_memory(acts)
    disk = mem.save(tmp_path / "store", shard_rows=300)
    assert len(disk.shards) == 4 and len(disk) == 1000
    epoch = torch.cat([b for _, b in zip(range(10), disk.batches(100, seed=1))])
    assert torch.unique(epoch, dim=0).shape[0] == 1000  # a permutation of the rows
    one = mem.save(tmp_path / "one", shard_rows=1000)  # one shard: the same stream as in memory
    for a, b in zip(range(5), zip(mem.batches(64, seed=3), one.batches(64, seed=3))):
        torch.testing.assert_close(b[0], b[1])
    skipped = next(disk.batches(100, seed=1, start=7))
    torch.testing.assert_close(skipped, epoch[700:800])


@pytest.mark.parametrize("on_disk", [False, True])
def test_resumed_run_ends_where_the_uninterrupted_run_ends(tmp_path, on_disk):
    store = ActivationStore.in_memory(_acts())
    if on_disk:
        store = store.save(tmp_path / "acts", shard_rows=1500)
    cfg = TopKTrainingSAEConfig(d_in=16, d_sae=64, k=4, metadata=META)
    kw = dict(total_samples=128 * 40, batch_size=128, lr=3e-3, seed=5, n_checkpoints=3, lr_decay_steps=10)
    full = train_sae(store, cfg, checkpoint_dir=tmp_path / "a", **kw)
    with pytest.raises(RuntimeError, match="interrupted"):
        train_sae(_Interrupting(store, fail_at=27), cfg, checkpoint_dir=tmp_path / "b", **kw)
    resumed = train_sae(store, cfg, checkpoint_dir=tmp_path / "b", resume_from=tmp_path / "b", **kw)
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(q, p, atol=0, rtol=0, msg=f"{name} differs after resume")


ARCHS = {
    "standard": StandardTrainingSAEConfig(d_in=16, d_sae=64, l1_coefficient=0.05, metadata=META),
    "gated": GatedTrainingSAEConfig(d_in=16, d_sae=64, l1_coefficient=0.05, metadata=META),
    "gated_faithful": FaithfulGatedTrainingSAEConfig(d_in=16, d_sae=64, l1_coefficient=0.05, metadata=META),
    "jumprelu": JumpReLUTrainingSAEConfig(d_in=16, d_sae=64, l0_coefficient=0.1, metadata=META),
    "topk": TopKTrainingSAEConfig(d_in=16, d_sae=64, k=4, metadata=META),
    "batchtopk": BatchTopKTrainingSAEConfig(d_in=16, d_sae=64, k=4, metadata=META),
    "matryoshka_batchtopk": MatryoshkaBatchTopKTrainingSAEConfig(d_in=16, d_sae=64, k=4, matryoshka_widths=[16, 64],
                                                                 metadata=META),
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_architecture_trains_and_round_trips_through_load_from_disk(tmp_path, arch):
    acts = _acts(2048)
    sae = train_sae(acts, ARCHS[arch], total_samples=256 * 20, batch_size=256, lr=3e-3, seed=0)
    path = save_sae(sae, tmp_path / arch)
    loaded = SAE.load_from_disk(str(path))
    again = load_sae(path)
    with torch.no_grad():
        torch.testing.assert_close(again(acts[:64]), loaded(acts[:64]))
        if arch in ("standard", "gated", "gated_faithful", "jumprelu", "topk"):  # same inference forward
            torch.testing.assert_close(loaded(acts[:64]), sae(acts[:64]), atol=1e-5, rtol=1e-4)
        assert evals.explained_variance(acts, loaded(acts)) > 0.0  # it learned something


def test_faithful_gated_aux_loss_does_not_train_the_decoder():
    from sae_lens import TrainingSAE

    with torch.random.fork_rng():
        torch.manual_seed(0)
        faithful = TrainingSAE.from_dict(ARCHS["gated_faithful"].to_dict())
        live = TrainingSAE.from_dict(ARCHS["gated"].to_dict())
    live.load_state_dict(faithful.state_dict())
    x = _acts(256)
    for sae, expect_grad in ((faithful, False), (live, True)):
        step = TrainStepInput(sae_in=x, coefficients={"l1": 0.0}, dead_neuron_mask=None, n_training_steps=0,
                              is_logging_step=False)
        feats, pre = sae.encode_with_hidden_pre(x)
        aux = sae.calculate_aux_loss(step, feats, pre, sae.decode(feats))["auxiliary_reconstruction_loss"]
        grads = torch.autograd.grad(aux, [sae.W_dec], allow_unused=True)
        assert (grads[0] is not None and grads[0].abs().sum() > 0) == expect_grad
    assert type(faithful).__name__ == "FaithfulGatedTrainingSAE"


def test_refit_decoder_removes_shrinkage_and_keeps_the_pattern():
    acts = _acts(4096)
    sae = train_sae(acts, ARCHS["standard"], total_samples=256 * 60, batch_size=256, lr=3e-3, seed=0)
    fixed = refit_decoder(sae, acts)
    with torch.no_grad():
        before, after = sae(acts), fixed(acts)
        assert torch.equal(sae.encode(acts) != 0, fixed.encode(acts) != 0)
    assert evals.gamma_saelens(acts, before) < 0.97
    torch.testing.assert_close(evals.gamma_saelens(acts, after), 1.0, atol=1e-3, rtol=0)
    torch.testing.assert_close(evals.gamma_proj(acts, after), evals.gamma_saelens(acts, after) ** 0
                               * evals.gamma_proj(acts, after))
    assert evals.mse(acts, after) < evals.mse(acts, before)


def test_pretrained_sae_offline_is_a_clear_fast_error():
    with pytest.raises(ValueError, match="nearest"):
        load_pretrained_sae("gpt2-small-res-jbb", "blocks.8.hook_resid_pre")
    t0 = time.perf_counter()
    try:
        load_pretrained_sae("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    except PretrainedSAEUnavailableError as err:
        assert "unreachable" in str(err) and "load_bundled_sae" in str(err)
    else:
        pytest.skip("the hub is reachable or the SAE is cached here")
    assert time.perf_counter() - t0 < 30


def test_dataset_tokens_packs_a_local_dataset(random_model):
    from datasets import Dataset

    from saetools.models.text import dataset_tokens

    ds = Dataset.from_dict({"text": ["Then, Mary and John went to the store."] * 20})
    rows, keep = dataset_tokens(random_model, ds, n_rows=5, context_size=16)
    assert rows.shape == keep.shape == (5, 16) and (rows[:, 0] == random_model.tokenizer.bos_token_id).all()
    assert not keep[:, 0].any() and keep[:, 1:].all()
    ids = random_model.tokenizer("Then, Mary and John", add_special_tokens=False)["input_ids"]
    assert rows[0, 1 : 1 + len(ids)].tolist() == ids
    with pytest.raises(ValueError, match="tokens"):
        dataset_tokens(random_model, ds.select(range(1)), n_rows=5, context_size=16)


def test_named_dataset_offline_is_a_clear_fast_error(random_model, monkeypatch):
    import time

    from saetools.models.text import DatasetUnavailableError, dataset_tokens

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t0 = time.perf_counter()
    with pytest.raises(DatasetUnavailableError, match="corpus_tokens"):
        dataset_tokens(random_model, "NeelNanda/pile-10k", n_rows=2)
    assert time.perf_counter() - t0 < 10
