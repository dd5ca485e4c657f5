"""``load_model``: GPT-2 from the Hugging Face hub, or a model bundled with saetools.

Bundled models live in ``saetools/models/bundled/<name>/`` as ``model.safetensors``,
``config.json`` (TransformerLens config fields) and the tokenizer files.
"""

from __future__ import annotations

import json
import math
import os
import socket
import warnings
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse

import torch
from sae_lens import HookedSAETransformer
from torch import Tensor
from transformer_lens import HookedTransformerConfig
from transformer_lens.components.mlps.mlp import MLP

from saetools.models.tokenizer import load_tokenizer

__all__ = [
    "BUNDLED_MODELS",
    "PRETRAINED_ALIASES",
    "pretrained_repo",
    "ModelUnavailableError",
    "load_model",
    "build_model",
    "check_model_name",
    "gelu_new",
    "save_model",
    "use_fast_gelu",
    "use_fast_unembed",
    "bundled_model_dir",
    "bundled_model_config",
    "random_gpt2_small",
    "hub_reachable",
    "is_cached",
]

BUNDLED_MODELS: tuple[str, ...] = ("tiny-ioi", "tiny-rotary")
PRETRAINED_ALIASES: dict[str, str] = {"gpt2": "gpt2", "gpt2-small": "gpt2"}
_CONFIG_FIELDS = (
    "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab", "act_fn",
    "normalization_type", "positional_embedding_type", "original_architecture",
    "default_prepend_bos", "model_name", "rotary_dim", "rotary_base", "train_seq_length",
)


class ModelUnavailableError(RuntimeError):
    """A pretrained model cannot be loaded (no network and nothing cached)."""


@contextmanager
def _quiet():
    """Silence TransformerLens 3.x's deprecation warnings for HookedTransformer."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*HookedTransformer.*")
        yield


_GELU_C = 2.0 * math.sqrt(2.0 / math.pi)


def gelu_new(x: Tensor) -> Tensor:
    """GPT-2's ``gelu_new``, ``0.5 x (1 + tanh(u))`` with ``u = sqrt(2/pi) (x + 0.044715 x^3)``,
    computed as ``x sigmoid(2u)`` (the same function).

    On a CPU, ``tanh`` of the MLP's hidden activations costs as much as the MLP's matrix products
    on a small model, and ``sigmoid`` much less (``bench/bench_gelu.py`` times a whole forward
    pass both ways). It equals TransformerLens's ``gelu_new`` up to float rounding
    (``tests/test_models.py``). In place when no gradient is needed.
    """
    u = torch.addcmul(x, x * x, x, value=0.044715)
    if torch.is_grad_enabled() and x.requires_grad:
        return x * torch.sigmoid(_GELU_C * u)
    return u.mul_(_GELU_C).sigmoid_().mul_(x)


def use_fast_gelu(model) -> None:
    """Give every plain GELU MLP of ``model`` (``act_fn="gelu_new"``, GPT-2's) :func:`gelu_new`;
    :func:`load_model` and :func:`build_model` do this for every model they return."""
    if model.cfg.act_fn != "gelu_new" or model.cfg.is_layer_norm_activation():
        return
    for block in model.blocks:
        if type(block.mlp) is MLP:
            block.mlp.act_fn = gelu_new


def use_fast_unembed(model) -> None:
    """Store ``W_U`` so that TransformerLens's unembedding stops copying it on every forward pass.

    ``Unembed.forward`` computes ``F.linear(x, W_U.T.contiguous())``: with ``W_U`` laid out
    ``[d_model, d_vocab]`` row-major, that is a fresh copy of the whole matrix per call (150 MB
    and about 0.1 s on a CPU for GPT-2). Keeping the same values in column-major layout makes
    ``W_U.T`` contiguous already, so the copy is skipped; results are unchanged.
    :func:`load_model` and :func:`build_model` do this for every model they return.
    """
    W = model.unembed.W_U
    if not W.T.is_contiguous():
        model.unembed.W_U = torch.nn.Parameter(W.detach().T.contiguous().T, requires_grad=W.requires_grad)


def build_model(cfg: HookedTransformerConfig, tokenizer=None) -> HookedSAETransformer:
    """A randomly initialised ``HookedSAETransformer`` (uses the global torch RNG)."""
    with _quiet():
        model = HookedSAETransformer(cfg, tokenizer=tokenizer)
    use_fast_gelu(model)
    use_fast_unembed(model)
    return model


def save_model(model: HookedSAETransformer, out_dir: str | Path) -> None:
    """Save weights (safetensors) and config fields so :func:`load_model` can rebuild it.

    Each file is written atomically (a temporary file beside it, then one rename), so a save
    that fails part-way leaves the files already there intact.
    """
    from safetensors.torch import save_file

    from saetools.data.files import atomic_file, atomic_write_text, check_writable_dir

    out_dir = check_writable_dir(out_dir, what="the model")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
             if not k.endswith((".IGNORE", ".mask"))}
    with atomic_file(out_dir / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    fields = {k: getattr(model.cfg, k) for k in _CONFIG_FIELDS}
    atomic_write_text(out_dir / "config.json", json.dumps(fields, indent=1) + "\n")


def bundled_model_dir(name: str) -> Path:
    """Directory of a bundled model inside the installed package."""
    if name not in BUNDLED_MODELS:
        raise ValueError(f"unknown bundled model {name!r}; available: {list(BUNDLED_MODELS)}")
    return Path(str(resources.files("saetools.models").joinpath("bundled", name)))


def bundled_model_config(name: str) -> HookedTransformerConfig:
    """The ``HookedTransformerConfig`` of a bundled model (no weights loaded)."""
    fields = json.loads((bundled_model_dir(name) / "config.json").read_text())
    return HookedTransformerConfig(**fields, device="cpu")


def _load_from_dir(path: Path, *, device, dtype) -> HookedSAETransformer:
    from safetensors.torch import load_file

    for f in ("model.safetensors", "config.json", "tokenizer.json"):
        if not (path / f).is_file():
            raise FileNotFoundError(
                f"{path / f} is missing. Bundled models ship inside the saetools package; "
                "reinstall it (pip install -e .) or rebuild with scripts/build_bundled_models.py"
            )
    fields = json.loads((path / "config.json").read_text())
    cfg = HookedTransformerConfig(**fields, device=str(device) if device else "cpu")
    model = build_model(cfg, load_tokenizer(path))
    state = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    real_missing = [k for k in missing if not k.endswith((".IGNORE", ".mask"))]
    if real_missing or unexpected:
        raise ValueError(f"weights in {path} do not match the config: missing {real_missing}, "
                         f"unexpected {unexpected}")
    if dtype != torch.float32:
        model = model.to(dtype)
    return model.eval()


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face endpoint opens within ``timeout`` s."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", constants.ENDPOINT))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def is_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def pretrained_repo(name: str) -> str | None:
    """The Hugging Face repository of a TransformerLens pretrained model name or alias
    (``"gpt2"``, ``"gpt2-small"``, ``"pythia-70m-deduped"``, ``"gemma-2-2b"``, ...), or ``None``
    when TransformerLens does not know the name."""
    if name in PRETRAINED_ALIASES:
        return PRETRAINED_ALIASES[name]
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name)
    except ValueError:
        return None


def _load_pretrained(name: str, repo: str, *, device, dtype) -> HookedSAETransformer:
    online = hub_reachable()
    if not online and not is_cached(repo):
        raise ModelUnavailableError(
            f"cannot load {name!r}: the Hugging Face hub is unreachable and {repo} is not in the "
            "local cache. Use a bundled model instead: saetools.load_model('tiny-ioi'), or download "
            f"{repo} once on a machine with internet access (or set HF_HUB_CACHE to a copy of a cache "
            "that holds it)."
        )
    with _quiet(), _offline(not online):
        model = HookedSAETransformer.from_pretrained(name, device=device, dtype=dtype)
    use_fast_gelu(model)
    use_fast_unembed(model)
    return model.eval()


@contextmanager
def _offline(on: bool):
    """The hub's offline mode for the calls inside (read from the cache, no network attempts)."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or on
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def load_model(
    name: str = "tiny-ioi",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
) -> HookedSAETransformer:
    """Load a model as a ``HookedSAETransformer`` in eval mode.

    Args:
        name: a TransformerLens pretrained model name or alias (``"gpt2"``,
            ``"gpt2-medium"``, ``"pythia-70m-deduped"``, ``"gemma-2-2b"``, ...), loaded from the
            Hugging Face hub or its local cache; ``"tiny-ioi"`` / ``"tiny-rotary"``, the models
            bundled with saetools; or a path to a directory written by :func:`save_model`.
        device: where to put the model; default CUDA when available, else CPU.
        dtype: parameter dtype: a ``torch.dtype`` or its name (``"float32"``, ``"float16"``,
            ``"bfloat16"``, ``"float64"``).

    Raises:
        ModelUnavailableError: a pretrained model requested with no network and no cached
            copy (raised within seconds; names the bundled alternative).
        ValueError: an unknown name.
    """
    dtype = _dtype(dtype)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"invalid device {device!r}: use 'cpu', 'cuda', 'cuda:0' or a torch.device") from err
    check_model_name(name)
    if name not in BUNDLED_MODELS and not Path(name).is_dir():
        return _load_pretrained(name, pretrained_repo(name), device=device, dtype=dtype)
    return _load_from_dir(bundled_model_dir(name) if name in BUNDLED_MODELS else Path(name), device=device,
                          dtype=dtype)


def check_model_name(name: str) -> None:
    """Raise ``ValueError`` unless :func:`load_model` knows ``name`` (a bundled model, a
    TransformerLens pretrained name, or a folder); checks only the name, loads nothing."""
    if not isinstance(name, str):
        raise ValueError(f"the model name must be a string, got {type(name).__name__}")
    if name in BUNDLED_MODELS or Path(name).is_dir() or pretrained_repo(name) is not None:
        return
    import difflib

    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES, make_model_alias_map

    near = difflib.get_close_matches(name, [*BUNDLED_MODELS, *make_model_alias_map()], n=3)
    raise ValueError(
        f"unknown model {name!r}: use {list(BUNDLED_MODELS)} (bundled), a TransformerLens pretrained "
        f"name ({len(OFFICIAL_MODEL_NAMES)} known, e.g. 'gpt2', 'pythia-70m-deduped'; nearest to yours: "
        f"{near}), or a directory written by saetools.models.save_model"
    )


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
"""Parameter dtypes :func:`load_model` accepts by name."""


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"unsupported dtype {dtype!r}: use one of {list(DTYPES)} (or the torch.dtype itself)")


def random_gpt2_small(*, seed: int = 0, device: str = "cpu") -> HookedSAETransformer:
    """A GPT-2-small-shaped model with random weights and no tokenizer (tests, benchmarks)."""
    from saetools.models.configs import gpt2_small_config

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(gpt2_small_config(device=device))
    return model.eval()
