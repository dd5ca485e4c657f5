"""The bundled model's claims (model card, issue 2), measured afresh on every run."""

import json

import pytest
import torch

from saetools.circuits import ablation
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


def test_ablating_the_top_heads_halves_the_logit_difference(bundled_model_shared, heldout):
    spec, batch, _ = heldout
    ref = ioi.render(bundled_model_shared, ablation.abc_counterpart(spec, seed=1, names=heldout_names()))
    reps = ablation.head_z_replacements(bundled_model_shared, batch, method="mean", reference=ref)
    sweep = ablation.head_ablation_sweep(bundled_model_shared, batch, method="mean", replacements=reps)
    top = list(zip(sweep["layer"][:3], sweep["head"][:3]))
    ld = ablation.head_ablated_logit_diff(bundled_model_shared, batch, top, replacements=reps)
    assert ld.mean() <= 0.5 * sweep.attrs["clean_logit_diff"]


def test_model_card_numbers_match_the_shipped_metrics():
    d = bundled_model_dir("tiny-ioi")
    metrics = json.loads((d / "metrics.json").read_text())
    card = (d / "MODEL_CARD.md").read_text()
    assert f"{metrics['heldout']['accuracy']:.3f}" in card
    assert f"{metrics['heldout']['logit_diff']:.2f}" in card


def test_shipped_files_are_under_8_mb():
    d = bundled_model_dir("tiny-ioi")
    assert sum(f.stat().st_size for f in d.iterdir()) < 8_000_000
