"""Our metrics agree with sae-lens's ``run_evals`` on the same SAE and tokens, and the
definitions behave as documented on hand-built cases."""

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.evals import get_eval_everything_config, run_evals
from sae_lens.saes.sae import SAEMetadata
from sae_lens.training.activation_scaler import ActivationScaler

from saetools import evals

HOOK = "blocks.1.hook_resid_pre"
AGREE = dict(atol=1e-5, rtol=1e-4)  # float32 forward passes, float64 accumulation on our side


class _FixedTokens:
    """The part of sae-lens's ActivationsStore that run_evals uses, serving fixed tokens."""

    def __init__(self, tokens):
        self.tokens, self.context_size, self.store_batch_size_prompts = tokens, tokens.shape[1], tokens.shape[0]

    def get_batch_tokens(self, n):
        return self.tokens[:n]

    def reset_input_dataset(self):
        pass


def _saes():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        std = StandardSAE(StandardSAEConfig(d_in=32, d_sae=96, metadata=SAEMetadata(hook_name=HOOK)))
        topk = TopKSAE(TopKSAEConfig(d_in=32, d_sae=96, k=8, metadata=SAEMetadata(hook_name="blocks.0.hook_mlp_out")))
        for sae in (std, topk):
            for p in sae.parameters():
                p.data.normal_(0, 0.2)
    return {"standard": std, "topk": topk}


@pytest.fixture
def tokens(random_model):
    gen = torch.Generator().manual_seed(0)
    toks = torch.randint(5, random_model.cfg.d_vocab, (12, 20), generator=gen)
    toks[:, 0] = random_model.tokenizer.bos_token_id
    return toks


def test_metrics_agree_with_sae_lens_run_evals(random_model, tokens):
    saes = _saes()
    ours = evals.evaluate_saes(random_model, saes, tokens, batch_size=12).set_index("sae")
    for name, sae in saes.items():
        cfg = get_eval_everything_config(batch_size_prompts=12, n_eval_reconstruction_batches=1,
                                         n_eval_sparsity_variance_batches=1)
        theirs, _ = run_evals(sae, _FixedTokens(tokens), random_model, ActivationScaler(), cfg,
                              exclude_special_tokens=True)
        flat = {k: v for group in theirs.values() for k, v in group.items()}
        pairs = {
            "ce_clean": "ce_loss_without_sae", "ce_spliced": "ce_loss_with_sae",
            "ce_zero_ablated": "ce_loss_with_ablation", "loss_recovered_zero": "ce_loss_score",
            "kl_spliced": "kl_div_with_sae", "kl_zero_ablated": "kl_div_with_ablation",
            "kl_score": "kl_div_score", "explained_variance": "explained_variance", "mse": "mse",
            "l0": "l0", "l1": "l1", "l2_ratio": "l2_ratio", "gamma_saelens": "relative_reconstruction_bias",
        }
        for col, key in pairs.items():
            torch.testing.assert_close(float(ours.loc[name, col]), float(flat[key]), **AGREE,
                                       msg=lambda m, c=col, n=name: f"{n}.{c}: {m}")


def test_gamma_definitions_on_a_known_shrinkage():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 16, generator=gen)
    torch.testing.assert_close(evals.gamma_saelens(x, 0.7 * x), 0.7)
    torch.testing.assert_close(evals.gamma_proj(x, 0.7 * x), 0.7)
    noisy = 0.7 * x + 0.5 * torch.randn(1000, 16, generator=gen)
    assert evals.gamma_saelens(x, noisy) > evals.gamma_proj(x, noisy)  # not reciprocal in general
    torch.testing.assert_close(evals.l2_ratio(x, 0.7 * x), 0.7)
    torch.testing.assert_close(evals.explained_variance(x, x), 1.0)
    torch.testing.assert_close(evals.explained_variance(x, x.mean(0).expand_as(x)), 0.0, atol=1e-12, rtol=0)


def test_dead_dense_and_mean_ablation_columns(random_model, tokens):
    sae = _saes()["standard"]
    with torch.no_grad():
        sae.b_enc[:10] = -100.0  # dead
        sae.b_enc[10:20] = 100.0  # fire everywhere
    row = evals.evaluate_saes(random_model, sae, tokens).iloc[0]
    assert row.dead_frac >= 10 / 96 and row.dense_frac >= 10 / 96
    assert set(evals.METRIC_COLUMNS) <= set(row.index)
    torch.testing.assert_close(row.fvu, 1 - row.explained_variance)
    # mean ablation, by hand: the hook's mean over non-BOS tokens, at every position
    with torch.no_grad():
        _, cache = random_model.run_with_cache(tokens, names_filter=HOOK)
        mean = cache[HOOK][:, 1:].reshape(-1, 32).mean(0)
        ce = random_model.run_with_hooks(tokens, return_type="loss", loss_per_token=True,
                                         fwd_hooks=[(HOOK, lambda a, hook: mean.expand_as(a))])
    torch.testing.assert_close(row.ce_mean_ablated, ce[:, 1:].mean().item(), **AGREE)
