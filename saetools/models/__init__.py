"""Models: ``load_model`` (GPT-2 or the bundled tiny models), configs, tokenizer, corpus."""

from saetools.models.loading import (
    BUNDLED_MODELS,
    ModelUnavailableError,
    bundled_model_dir,
    load_model,
    random_gpt2_small,
    save_model,
)

__all__ = [
    "BUNDLED_MODELS",
    "ModelUnavailableError",
    "bundled_model_dir",
    "load_model",
    "random_gpt2_small",
    "save_model",
]
