"""GPT-2 small with real weights: skipped with a reason when they cannot be had here."""

import pytest
import torch

from saetools.models.loading import hub_reachable, is_cached

GPT2_AVAILABLE = is_cached("gpt2") or hub_reachable()
pytestmark = [
    pytest.mark.gpt2,
    pytest.mark.skipif(not GPT2_AVAILABLE, reason="GPT-2 weights are not cached and the hub is unreachable"),
]


@pytest.fixture(scope="module")
def gpt2():
    import saetools

    return saetools.load_model("gpt2", device="cuda" if torch.cuda.is_available() else "cpu")


def test_gpt2_solves_ioi(gpt2):
    from saetools.data import load_words
    from saetools.tasks import ioi

    names = ioi.single_token_words(gpt2, load_words("names"))
    assert len(names) > 50
    batch = ioi.render(gpt2, ioi.wang_spec(200, seed=0, names=names))
    with torch.no_grad():
        logits = gpt2(batch.tokens.to(gpt2.cfg.device))
    # Wang et al. (2022) report a mean logit difference of about 3.5 on their distribution.
    assert ioi.logit_diff(logits, batch).mean() > 2.0
    assert ioi.accuracy(logits, batch).mean() > 0.8


def test_gpt2_loads_as_hooked_sae_transformer_in_eval_mode(gpt2):
    from sae_lens import HookedSAETransformer

    assert isinstance(gpt2, HookedSAETransformer) and not gpt2.training
    assert gpt2.cfg.n_layers == 12 and gpt2.cfg.n_heads == 12
