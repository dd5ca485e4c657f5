"""Where saetools follows the papers' authors' code, or offers their convention as an option:
Switch SAEs' tied biases and AuxK, train_sae's optimiser and schedule arguments, dark matter's
intercept-free norm regression and cross-width gain (the top-AFA sentinel and AuxK are in
test_topafa.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sae_lens import TrainingSAE
from sae_lens.saes.sae import SAEMetadata, TrainStepInput

from saetools.diagnostics import dark_matter as dm
from saetools.saes import load_sae, save_sae
from saetools.saes.switch import SwitchTrainingSAE, SwitchTrainingSAEConfig
from saetools.training import train_sae


def _switch(**kw) -> SwitchTrainingSAE:
    cfg = SwitchTrainingSAEConfig(d_in=16, d_sae=64, n_experts=4, k=4, metadata=SAEMetadata(hook_name="h"), **kw)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return TrainingSAE.from_dict(cfg.to_dict())


def test_switch_tied_biases_are_one_parameter_through_training_and_saving(tmp_path):
    x = torch.randn(2048, 16, generator=torch.Generator().manual_seed(0)) * 4 + 1
    sae = train_sae(x, SwitchTrainingSAEConfig(d_in=16, d_sae=64, n_experts=4, k=4, metadata=SAEMetadata(hook_name="h"),
                                               tied_biases=True, normalize_activations="expected_average_only_in"),
                    total_samples=2048, batch_size=256, lr=1e-3)
    assert sae.b_router is sae.b_dec
    assert sum(p is sae.b_dec for p in sae.parameters()) == 1  # the optimizer steps it once
    loaded = load_sae(save_sae(sae, tmp_path / "sae"))  # safetensors stores no tensor twice: written as a copy
    torch.testing.assert_close(loaded(x), sae(x), rtol=1e-5, atol=1e-4)  # the input scale folded into it once
    untied = _switch()
    assert untied.b_router is not untied.b_dec


def test_switch_auxk_trains_dead_latents_of_each_tokens_expert():
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True
    step = TrainStepInput(sae_in=x, coefficients={"load_balance": 0.0}, dead_neuron_mask=dead, n_training_steps=1,
                          is_logging_step=False)
    off = _switch().training_forward_pass(step)
    assert "auxiliary_reconstruction_loss" not in off.losses  # the authors: no auxiliary loss
    sae = _switch(aux_loss_coefficient=1.0)
    out = sae.training_forward_pass(step)
    aux = out.losses["auxiliary_reconstruction_loss"]
    assert aux > 0
    aux.backward()
    grad = sae.W_enc.grad.abs().sum(0)
    assert grad[dead].sum() > 0 and grad[~dead].sum() == 0  # only dead latents are pulled, residual detached
    none_dead = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=torch.zeros_like(dead),
                                                         n_training_steps=1, is_logging_step=False))
    assert none_dead.losses["auxiliary_reconstruction_loss"] == 0


def test_train_sae_takes_the_authors_optimiser_and_schedule():
    from sae_lens import TopKTrainingSAEConfig

    x = torch.randn(2048, 16, generator=torch.Generator().manual_seed(2))
    cfg = TopKTrainingSAEConfig(d_in=16, d_sae=32, k=4, metadata=SAEMetadata(hook_name="h"))
    seen = {}
    import sae_lens.training.sae_trainer as trainer_module

    original = trainer_module.SAETrainer.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen["betas"] = self.optimizer.param_groups[0]["betas"]
        seen["window"] = self.cfg.dead_feature_window
        seen["lr_end"] = self.cfg.lr_end

    trainer_module.SAETrainer.__init__ = spy
    try:
        train_sae(x, cfg, total_samples=2048, batch_size=256, lr=1e-3, adam_betas=(0.9, 0.99), dead_feature_window=5,
                  lr_decay_steps=2, lr_end=0.0)
    finally:
        trainer_module.SAETrainer.__init__ = original
    assert seen == {"betas": (0.9, 0.99), "window": 5, "lr_end": 0.0}
    for bad, match in (({"adam_betas": (0.9, 1.0)}, "adam_betas"), ({"dead_feature_window": 0}, "dead_feature_window"),
                       ({"lr_end": 1.0}, "lr_end")):
        with pytest.raises(ValueError, match=match):
            train_sae(x, cfg, total_samples=2048, batch_size=256, lr=1e-3, **bad)


def test_norm_r2_has_no_intercept_by_default_as_in_the_paper():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4000, 8, generator=gen, dtype=torch.float64)
    err = 0.3 * x + 0.1 * torch.randn(4000, 8, generator=gen, dtype=torch.float64) + 2.0  # an offset in the norm
    split = dm.split_halves(4000, seed=0)
    without = dm.decompose_reconstruction(x, x - err, split=split)
    with_ = dm.decompose_reconstruction(x, x - err, split=split, norm_intercept=True)
    direct, _ = dm.norm_r2(x, err, *split, intercept=False)
    assert without.norm_r2 == pytest.approx(direct)
    assert with_.norm_r2 > without.norm_r2


def test_cross_width_gain_is_the_authors_share_of_the_unexplained():
    from saetools.experiments.engels2024_dark_matter import cross_width_gain

    r = np.array([[1.0, 0.6], [0.5, 1.0]])
    extra = np.array([[1.0, 0.8], [0.75, 1.0]])
    gain = cross_width_gain(r, extra)
    np.testing.assert_allclose(gain[0, 1], (0.8 - 0.6) / 0.4)
    np.testing.assert_allclose(gain[1, 0], (0.75 - 0.5) / 0.5)
