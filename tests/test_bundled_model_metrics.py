"""The bundled model's behaviour claims (its model card), measured afresh on every run."""

import json

import pytest
import torch

from saetools.data import heldout_names, heldout_templates
from saetools.models.loading import bundled_model_dir
from saetools.tasks import ioi


@pytest.fixture(scope="module")
def heldout(bundled_model_shared):
    spec = ioi.sample_spec(2000, templates=heldout_templates(), names=heldout_names(), seed=2024)
    batch = ioi.render(bundled_model_shared, spec)
    with torch.no_grad():
        logits = bundled_model_shared(batch.tokens)
    return spec, batch, logits


def test_mean_logit_difference_on_heldout_templates_and_names(heldout):
    _, batch, logits = heldout
    assert ioi.logit_diff(logits, batch).mean() >= 3.0


def test_accuracy_target_on_heldout_templates_and_names(heldout):
    _, batch, logits = heldout
    assert ioi.accuracy(logits, batch).mean() >= 0.95


def test_accuracy_on_heldout_templates_and_names_matches_the_card(heldout):
    _, batch, logits = heldout
    metrics = json.loads((bundled_model_dir("tiny-ioi") / "metrics.json").read_text())
    assert abs(float(ioi.accuracy(logits, batch).mean()) - metrics["heldout"]["accuracy"]) < 1e-6


def test_new_name_after_the_subject_does_not_fool_it(bundled_model_shared, heldout):
    """With a new name right after S2 (a phrase never seen in training), the model still prefers
    IO over both S and that name: it found the repeated name, not the last one mentioned."""
    spec, _, _ = heldout
    model = bundled_model_shared
    batch = ioi.render(model, ioi.distractor_spec(spec[:1000], seed=2025, names=heldout_names()))
    assert "together with" in batch.texts[0]
    with torch.no_grad():
        logits = model(batch.tokens)
    vs_s = ioi.logit_diff(logits, batch) > 0
    vs_c = ioi.distractor_logit_diff(model, logits, batch) > 0
    assert float((vs_s & vs_c).float().mean()) >= 0.9


def test_direct_logit_attribution_adds_up_to_the_logit_difference(bundled_model_shared, heldout):
    from saetools.circuits.mechanism import direct_logit_attribution

    _, batch, logits = heldout
    dla = direct_logit_attribution(bundled_model_shared, batch[:200])
    assert abs(dla.dla.sum() - float(ioi.logit_diff(logits[:200], batch[:200]).mean())) < 1e-3
    assert len(dla) == 1 + 1 + bundled_model_shared.cfg.n_layers * (bundled_model_shared.cfg.n_heads + 2) + 1


def test_model_card_numbers_match_the_shipped_metrics():
    d = bundled_model_dir("tiny-ioi")
    metrics = json.loads((d / "metrics.json").read_text())
    card = (d / "MODEL_CARD.md").read_text()
    assert f"{metrics['heldout']['accuracy']:.3f}" in card
    assert f"{metrics['heldout']['logit_diff']:.2f}" in card


def test_shipped_files_are_under_8_mb():
    d = bundled_model_dir("tiny-ioi")
    assert sum(f.stat().st_size for f in d.iterdir()) < 8_000_000
