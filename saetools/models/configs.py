"""Model configurations: the bundled tiny models and GPT-2 small's exact shape."""

from __future__ import annotations

from transformer_lens import HookedTransformerConfig

__all__ = ["gpt2_small_config", "tiny_ioi_config"]


def gpt2_small_config(**overrides) -> HookedTransformerConfig:
    """GPT-2 small's architecture as TransformerLens loads it (random weights when built).

    Used to run GPT-2 code paths (hook names, head indices, shapes, memory) without weights.
    """
    kw = dict(
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024,
        d_vocab=50257, act_fn="gelu_new", normalization_type="LN",
        positional_embedding_type="standard", original_architecture="GPT2LMHeadModel",
        default_prepend_bos=True, model_name="gpt2-random",
    )
    kw.update(overrides)
    return HookedTransformerConfig(**kw)


def tiny_ioi_config(d_vocab: int, **overrides) -> HookedTransformerConfig:
    """``tiny-ioi``: GPT-2 architecture (LayerNorm, learned absolute positions, GELU MLP)."""
    kw = dict(
        n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, n_ctx=64,
        d_vocab=d_vocab, act_fn="gelu_new", normalization_type="LN",
        positional_embedding_type="standard", original_architecture="GPT2LMHeadModel",
        default_prepend_bos=True, model_name="tiny-ioi",
    )
    kw.update(overrides)
    return HookedTransformerConfig(**kw)
