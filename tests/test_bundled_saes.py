"""The bundled SAEs (built by scripts/build_bundled_saes.py): they load from the installed
package, splice into the bundled model without changing its logits, and their card's numbers
are reproduced by a fresh measurement."""

import pytest
import torch

from saetools import evals
from saetools.activations import collect_activations
from saetools.models.text import corpus_tokens
from saetools.saes import bundled_sae_card, bundled_saes, load_bundled_sae
from saetools.splicing import splice

NAMES = bundled_saes()
SPLICE_ATOL = 1e-5  # float32: x_hat + (x - x_hat) is x up to rounding
CARD_TOL = {"atol": 1e-4, "rtol": 1e-4}  # same tokens, weights and definitions; float32 batching differs


def test_bundled_saes_and_card_are_shipped():
    card = bundled_sae_card()
    assert NAMES and set(NAMES) == set(card["metrics"])
    assert card["total_bytes"] < 3_000_000


@pytest.fixture(scope="module")
def eval_tokens(bundled_model_shared):
    card = bundled_sae_card()["eval"]
    tokens, _ = corpus_tokens(bundled_model_shared, card["documents"], seed=card["seed"])
    return tokens[: card["rows"]]


@pytest.mark.parametrize("name", NAMES)
def test_bundled_sae_splices_with_error_term_without_changing_logits(bundled_model, eval_tokens, name):
    sae = load_bundled_sae(name)
    assert sae.cfg.metadata.hook_name == bundled_sae_card()["hook_name"]
    tokens = eval_tokens[:16]
    with torch.no_grad():
        clean = bundled_model(tokens)
        with splice(bundled_model, sae, use_error_term=True):
            spliced = bundled_model(tokens)
        with splice(bundled_model, sae):
            no_error = bundled_model(tokens)
    torch.testing.assert_close(spliced, clean, atol=SPLICE_ATOL, rtol=0)
    assert (no_error - clean).abs().max() > SPLICE_ATOL  # the SAE is really in the forward pass
    assert bundled_model._acts_to_saes == {}


@pytest.mark.parametrize("name", NAMES)
def test_bundled_sae_card_metrics_are_reproduced(bundled_model_shared, eval_tokens, name):
    """L0, explained variance and gamma, re-measured from the card's evaluation tokens with the
    same metric functions (the card's CE columns come from the same run; see evaluate_saes)."""
    from sae_lens.util import get_special_token_ids

    card = bundled_sae_card()
    special = torch.tensor(sorted(get_special_token_ids(bundled_model_shared.tokenizer)))
    keep = ~torch.isin(eval_tokens, special)
    x = collect_activations(bundled_model_shared, eval_tokens, card["hook_name"], drop_bos=False, mask=keep)
    assert x.shape[0] == card["metrics"][name]["n_tokens"]
    sae = load_bundled_sae(name)
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
    measured = {"l0": evals.l0(f), "explained_variance": evals.explained_variance(x, x_hat),
                "gamma_saelens": evals.gamma_saelens(x, x_hat)}
    for metric, value in measured.items():
        torch.testing.assert_close(value, float(card["metrics"][name][metric]), **CARD_TOL,
                                   msg=lambda m, k=metric: f"{name}.{k}: {m}")


def test_unknown_bundled_sae_names_the_available_ones():
    with pytest.raises(ValueError, match="available"):
        load_bundled_sae("no-such-sae")
