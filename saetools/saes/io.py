"""Saving and loading SAEs in sae-lens's format, and sae-lens pretrained releases.

Everything saved here loads with ``sae_lens.SAE.load_from_disk`` (the sae-lens inference format: ``cfg.json`` and ``sae_weights.safetensors``).
"""

from __future__ import annotations

import difflib
from pathlib import Path

__all__ = ["PretrainedSAEUnavailableError", "load_pretrained_sae", "load_sae", "save_sae"]


class PretrainedSAEUnavailableError(RuntimeError):
    """A pretrained SAE cannot be loaded (no network and nothing cached)."""


def save_sae(sae, path: str | Path) -> Path:
    """Write ``sae`` to ``path`` as an inference SAE (``cfg.json`` + ``sae_weights.safetensors``).

    Training SAEs are converted by sae-lens (``save_inference_model``): e.g. BatchTopK and
    Matryoshka save as JumpReLU with their learned global threshold.
    """
    from sae_lens import TrainingSAE

    path = Path(path)
    (sae.save_inference_model if isinstance(sae, TrainingSAE) else sae.save_model)(path)
    return path


def load_sae(path: str | Path, *, device: str = "cpu"):
    """``SAE.load_from_disk(path)`` with a clear error for a missing folder."""
    from sae_lens import SAE

    path = Path(path)
    if not (path / "cfg.json").is_file():
        raise FileNotFoundError(f"{path} is not an SAE folder (no cfg.json); write one with saetools.saes.save_sae")
    return SAE.load_from_disk(str(path), device=device).eval()


def load_pretrained_sae(release: str, sae_id: str, *, device: str = "cpu"):
    """A sae-lens pretrained SAE (``SAE.from_pretrained``), e.g. ``("gpt2-small-res-jb", "blocks.8.hook_resid_pre")``.

    Raises:
        ValueError: unknown release or SAE id (checked offline against sae-lens's directory).
        PretrainedSAEUnavailableError: the hub is unreachable and the weights are not cached.
    """
    import huggingface_hub.constants as hf_constants
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from saetools.models.loading import hub_reachable

    directory = get_pretrained_saes_directory()
    if release not in directory:
        near = difflib.get_close_matches(release, list(directory), n=3)
        raise ValueError(f"unknown sae-lens release {release!r}; nearest: {near}")
    ids = list(directory[release].saes_map)
    if sae_id not in ids:
        raise ValueError(f"release {release!r} has no SAE {sae_id!r}; nearest: "
                         f"{difflib.get_close_matches(sae_id, ids, n=3)}")
    online = hub_reachable()
    previous = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = previous or not online  # cached files only, no retries
    try:
        return SAE.from_pretrained(release, sae_id, device=device).eval()
    except Exception as err:
        if online:
            raise
        raise PretrainedSAEUnavailableError(
            f"cannot load {release}/{sae_id}: the Hugging Face hub is unreachable and the SAE is not "
            "in the local cache. Use a bundled SAE (saetools.saes.load_bundled_sae) or train one "
            "(saetools.train_sae), or download it once on a machine with internet access."
        ) from err
    finally:
        hf_constants.HF_HUB_OFFLINE = previous
