"""Tables as a reader sees them: column names in words.

saetools's result tables keep short code names (``loss_recovered_zero``, ``via_nm_q``) so they
are easy to index in code. :func:`human_column_names` turns them into words for display, and
:func:`show_human_column_names` makes a notebook display every DataFrame that way (the data
keep their code names).
"""

from __future__ import annotations

import re

import pandas as pd

__all__ = ["COLUMN_NAMES", "human_column_name", "human_column_names", "show_human_column_names"]

COLUMN_NAMES = {
    "l0": "L0", "fvu": "FVU", "mse": "MSE", "d_sae": "latents", "param": "sparsity parameter",
    "loss_recovered_zero": "loss recovered (vs zero-ablation)", "loss_recovered_mean": "loss recovered (vs mean-ablation)",
    "kl_spliced": "KL (spliced vs clean)", "ce_spliced": "CE loss (spliced)", "ce_clean": "CE loss (clean)",
    "dead_frac": "dead latents", "dense_frac": "dense latents", "l2_ratio": "reconstruction norm / input norm",
    "gamma_saelens": "shrinkage gamma (sae-lens)", "gamma_proj": "shrinkage gamma (projection)",
    "logit_diff": "logit difference", "frac_drop": "share of the logit difference lost",
    "fraction_of_clean": "share of the clean logit difference", "ld_recovered": "logit difference recovered",
    "variance_explained": "variance explained", "weight_removed": "weight removed",
    "same_attributes": "patch from same attributes", "same_attributes_distance": "distance (same attributes)",
    "agrees_with_patch": "agrees with patching", "norm_ratio": "code-norm ratio", "best_f1": "best latent F1",
    "f1_dense": "F1 of a dense latent", "best_single_f1": "best single-latent F1", "final_union_f1": "F1 of the union",
    "n_candidates": "candidate latents", "group_size": "group size", "grouped_f1": "F1 of the group",
    "single_f1": "best single F1", "eps_lbo": "ε (LBO)", "zf_eps_lbo": "ε (LBO, ZF)",
    "zf_eps_lbo_p90": "ε (LBO, ZF, 90th pct.)", "zf_frac_over_activated": "over-activated share (ZF)",
    "zf_ratio_median": "median norm ratio (ZF)", "zf_recon_error_median": "median reconstruction error (ZF)",
    "nmse_standardised": "normalised MSE (standardised)", "encoder_flops": "encoder FLOPs per token",
    "load_balance": "load balance", "max_load": "max expert load", "min_load": "min expert load",
    "n_experts": "experts", "duplicate_frac": "duplicate latents", "inter_group_sim": "similarity between experts",
    "n_groups": "groups", "n_latents": "latents", "nn_cos_mean": "mean nearest-neighbour cosine",
    "nn_cos_median": "median nearest-neighbour cosine", "norm_r2": "R² of the error norm",
    "vector_r2": "R² of the error vector", "fvu_sae": "FVU (SAE)", "fvu_sae_linear": "FVU (SAE + linear error)",
    "fvu_sae_nonlinear": "FVU (SAE + nonlinear error)", "fvu_pursuit": "FVU (gradient pursuit)",
    "fvu_pursuit_linear": "FVU (pursuit + linear error)", "pursuit_l0": "pursuit L0", "peak_mb": "peak MiB",
    "in_length": "inside the training length", "end_s2": "attention END->S2", "end_io": "attention END->IO",
    "end_s1": "attention END->S1", "end_s": "attention END->S", "via_nm_q": "via name movers' queries",
    "via_si_v": "via S-inhibition values", "dla_frac": "direct logit attribution (share)",
}
"""Explicit display names; other names are spelled out word by word (:data:`_WORDS`)."""

_WORDS = {
    "frac": "share", "ld": "logit difference", "fvu": "FVU", "l0": "L0", "kl": "KL", "ce": "CE", "mse": "MSE",
    "sae": "SAE", "io": "IO", "s": "S", "pos": "Pos", "nn": "nearest-neighbour", "cos": "cosine", "sim": "similarity",
    "n": "number of", "r2": "R²", "ve": "variance explained", "cv": "coefficient of variation", "acc": "accuracy",
    "lbo": "LBO", "eps": "epsilon", "b": "B", "a": "A", "p5": "5th pct.", "p95": "95th pct.", "p90": "90th pct.",
    "nm": "name mover", "si": "S-inhibition", "topk": "TopK", "afa": "AFA", "zf": "ZF", "mb": "MiB", "f1": "F1",
}


_PHRASES = {"n_global": "global tokens", "n_local": "local window", "topk_signed": "signed TopK",
            "name_mover": "name mover", "s_suppression": "S-suppression", "io_mover": "IO mover"}


def human_column_name(name):
    """One column label in words: an explicit name from :data:`COLUMN_NAMES`, else each
    ``_``-separated word spelled out; labels that are not strings, or have no ``_``, stay."""
    if not isinstance(name, str):
        return name
    if name in COLUMN_NAMES:
        return COLUMN_NAMES[name]
    if "_" not in name:
        return name
    def words(m):
        phrase = m.group(0)
        return _PHRASES.get(phrase) or " ".join(_WORDS.get(w.lower(), w) for w in phrase.split("_"))

    return re.sub(r"[A-Za-z0-9.]+(?:_[A-Za-z0-9.]+)+", words, name)


def human_column_names(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with column labels (every level) and index names in words."""
    out = df.copy(deep=False)
    if isinstance(out.columns, pd.MultiIndex):
        out.columns = pd.MultiIndex.from_tuples([tuple(human_column_name(v) for v in t) for t in out.columns],
                                                names=[human_column_name(n) for n in out.columns.names])
    else:
        out.columns = pd.Index([human_column_name(c) for c in out.columns], name=human_column_name(out.columns.name))
    out.index = out.index.set_names([human_column_name(n) for n in out.index.names])
    return out


def show_human_column_names() -> None:
    """In a notebook, display every DataFrame with :func:`human_column_names` (the data are
    unchanged: index them by their code names as before). Does nothing outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None:
        return
    ip.display_formatter.formatters["text/html"].for_type(pd.DataFrame, lambda df: human_column_names(df)._repr_html_())
