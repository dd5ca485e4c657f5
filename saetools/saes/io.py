"""Saving and loading SAEs in sae-lens's format, and sae-lens pretrained releases.

Everything saved here loads with ``sae_lens.SAE.load_from_disk`` (the sae-lens inference format: ``cfg.json`` and ``sae_weights.safetensors``).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from saetools.data.files import atomic_dir

__all__ = ["PretrainedSAEUnavailableError", "load_pretrained_sae", "load_sae", "release_model_name", "save_sae"]


class PretrainedSAEUnavailableError(RuntimeError):
    """A pretrained SAE cannot be loaded (no network and nothing cached)."""


def save_sae(sae, path: str | Path) -> Path:
    """Write ``sae`` to ``path`` as an inference SAE (``cfg.json`` + ``sae_weights.safetensors``).

    Training SAEs are converted by sae-lens (``save_inference_model``): e.g. BatchTopK and
    Matryoshka save as JumpReLU with their learned global threshold.

    The write is atomic: the files are written to a temporary folder beside ``path`` and moved
    into place at the end, so a save that fails part-way (an interrupt, a full disk) leaves an
    SAE already at ``path`` loadable and unchanged.
    """
    from sae_lens import SAE, TrainingSAE

    if not isinstance(sae, SAE | TrainingSAE):
        raise TypeError(f"save_sae needs a sae-lens SAE, got {type(sae).__name__}")
    path = Path(path)
    with atomic_dir(path) as tmp:
        (sae.save_inference_model if isinstance(sae, TrainingSAE) else sae.save_model)(tmp)
    return path


def load_sae(path: str | Path, *, device: str = "cpu"):
    """``SAE.load_from_disk(path)`` with a clear error for a missing folder."""
    from sae_lens import SAE

    path = Path(path)
    if not (path / "cfg.json").is_file():
        raise FileNotFoundError(f"{path} is not an SAE folder (no cfg.json); write one with saetools.saes.save_sae")
    _check_sae_files(path)
    try:
        return SAE.load_from_disk(str(path), device=device).eval()
    except TypeError as err:  # a cfg.json whose fields do not fit its architecture
        raise ValueError(f"{path / 'cfg.json'} does not describe a valid SAE ({err}); re-save the SAE "
                         "with saetools.saes.save_sae, or repair the listed fields") from err


def _check_sae_files(path: Path) -> None:
    """Clear errors for an SAE folder whose files are damaged (before sae-lens reads them)."""
    from safetensors import safe_open

    cfg_file, weights = path / "cfg.json", path / "sae_weights.safetensors"
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_file} is not valid JSON ({err}); the SAE folder is damaged: re-save it with "
                         "saetools.saes.save_sae") from err
    missing = [k for k in ("architecture", "d_in", "d_sae") if k not in cfg]
    if missing:
        raise ValueError(f"{cfg_file} lacks the fields {missing}; re-save the SAE with saetools.saes.save_sae")
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; the SAE folder is incomplete: re-save it with "
                                "saetools.saes.save_sae")
    try:
        with safe_open(str(weights), framework="pt") as f:
            f.keys()
    except Exception as err:  # safetensors raises its own error type for damaged files
        raise ValueError(f"{weights} is damaged or truncated ({err}); re-save the SAE with "
                         "saetools.saes.save_sae") from err


def release_model_name(release: str) -> str:
    """The model a sae-lens release's SAEs were trained on (``"gpt2-small"``, ...), from sae-lens's
    directory of releases (offline).

    Raises:
        ValueError: an unknown release (naming the nearest).
    """
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        near = difflib.get_close_matches(release, list(directory), n=3)
        raise ValueError(f"unknown sae-lens release {release!r}; nearest: {near}")
    return directory[release].model


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
