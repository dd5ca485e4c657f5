"""Stand-ins for what users download from the Hugging Face hub, laid out as the hub's cache holds
them, so that the real loading code runs offline in the tests:

- ``gpt2``: GPT-2's real ``config.json`` and tokenizer (OpenAI's vocabulary and merges, in
  ``tests/data/gpt2``) with seeded random weights in ``model.safetensors``;
- sae-lens releases (``gpt2-small-res-jb``, ``gpt2-small-res-jb-feature-splitting``,
  ``gpt2-small-hook-z-kk``): each SAE's files named as in the release's repository, with the
  fields sae-lens's loaders read, and random weights;
- text datasets (``NeelNanda/pile-10k``): a few documents, prepared in the ``datasets`` cache
  format that ``load_dataset`` reads offline.

Random weights give shapes, hook names, time and memory, never science.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"
GPT2_COMMIT = "607a30d783dfa663caf39e06633721c8d4cfcd7e"

# GPT-2's config.json as the hub serves it
GPT2_CONFIG = {
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
    "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12,
    "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": None,
    "summary_first_dropout": 0.1, "summary_proj_to_labels": True, "summary_type": "cls_index",
    "summary_use_proj": True, "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": 50257,
}


def _repo_dir(cache: Path, kind: str, repo_id: str, commit: str) -> Path:
    root = cache / f"{kind}s--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def _put(snapshot: Path, filename: str, data: bytes) -> None:
    """A file of the snapshot as the hub cache stores it: the bytes in ``blobs/``, a relative
    symlink in the snapshot."""
    blobs = snapshot.parents[1] / "blobs"
    blobs.mkdir(exist_ok=True)
    blob = blobs / hashlib.sha256(data).hexdigest()
    if not blob.exists():
        blob.write_bytes(data)
    link = snapshot / filename
    if link.is_symlink():
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})


def gpt2_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """GPT-2's parameters as the hub's ``model.safetensors`` names them, with GPT-2's init
    (normal, std 0.02; layer norms at 1 and 0)."""
    d, n_layer, vocab, n_pos = GPT2_CONFIG["n_embd"], GPT2_CONFIG["n_layer"], GPT2_CONFIG["vocab_size"], GPT2_CONFIG["n_positions"]
    gen = torch.Generator().manual_seed(seed)

    def normal(*shape):
        return torch.randn(*shape, generator=gen) * 0.02

    w = {"wte.weight": normal(vocab, d), "wpe.weight": normal(n_pos, d),
         "ln_f.weight": torch.ones(d), "ln_f.bias": torch.zeros(d)}
    for i in range(n_layer):
        p = f"h.{i}."
        w |= {p + "ln_1.weight": torch.ones(d), p + "ln_1.bias": torch.zeros(d),
              p + "ln_2.weight": torch.ones(d), p + "ln_2.bias": torch.zeros(d),
              p + "attn.c_attn.weight": normal(d, 3 * d), p + "attn.c_attn.bias": torch.zeros(3 * d),
              p + "attn.c_proj.weight": normal(d, d), p + "attn.c_proj.bias": torch.zeros(d),
              p + "mlp.c_fc.weight": normal(d, 4 * d), p + "mlp.c_fc.bias": torch.zeros(4 * d),
              p + "mlp.c_proj.weight": normal(4 * d, d), p + "mlp.c_proj.bias": torch.zeros(d)}
    return w


def gpt2_tokenizer_json() -> bytes:
    """``tokenizer.json`` for GPT-2, built by ``tokenizers`` from the vocabulary and merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.BPE.from_file(str(DATA / "gpt2" / "encoder.json"), str(DATA / "gpt2" / "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens(["<|endoftext|>"])
    return tok.to_str().encode()


def add_gpt2(cache: Path, *, seed: int = 0) -> None:
    """The ``gpt2`` model repository: real config and tokenizer, random weights."""
    snap = _repo_dir(cache, "model", "gpt2", GPT2_COMMIT)
    _put(snap, "config.json", json.dumps(GPT2_CONFIG, indent=2).encode())
    _put(snap, "generation_config.json",
         json.dumps({"_from_model_config": True, "bos_token_id": 50256, "eos_token_id": 50256}).encode())
    _put(snap, "vocab.json", (DATA / "gpt2" / "encoder.json").read_bytes())
    _put(snap, "merges.txt", (DATA / "gpt2" / "vocab.bpe").read_bytes())
    _put(snap, "tokenizer.json", gpt2_tokenizer_json())
    _put(snap, "tokenizer_config.json", json.dumps({"model_max_length": 1024}).encode())
    _put(snap, "model.safetensors", _safetensors_bytes(gpt2_weights(seed)))


def _sae_weights(d_in: int, d_sae: int, seed: int, live: int = 32) -> dict[str, torch.Tensor]:
    """Unit-norm random decoder rows, the encoder their transpose, and all but ``live`` latents
    switched off by their bias: an L0 of about ``live / 2``, the sparsity of trained SAEs (a
    random ReLU SAE would fire half its latents, which no analysis of real SAEs expects)."""
    gen = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_sae, d_in, generator=gen)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    b_enc = torch.full((d_sae,), -100.0)
    b_enc[torch.randperm(d_sae, generator=gen)[:live]] = 0.0
    return {"W_enc": w_dec.T.clone(), "W_dec": w_dec, "b_enc": b_enc, "b_dec": torch.zeros(d_in)}


def _jb_cfg(hook: str, d_sae: int) -> dict:
    """A sae-lens cfg.json of the pre-6.0 format these releases were saved in."""
    layer = int(hook.split(".")[1])
    return {"model_name": "gpt2-small", "hook_point": hook, "hook_point_layer": layer,
            "hook_point_head_index": None, "dataset_path": "Skylion007/openwebtext",
            "is_dataset_tokenized": False, "context_size": 128, "d_in": 768, "d_sae": d_sae,
            "expansion_factor": d_sae // 768, "activation_fn_str": "relu", "apply_b_dec_to_input": True,
            "normalize_activations": False, "prepend_bos": True, "dtype": "torch.float32",
            "device": "cpu", "seed": 42}


def add_sae_release(cache: Path, release: str, sae_ids: list[str], *, seed: int = 0) -> None:
    """The SAEs ``sae_ids`` of the sae-lens ``release``, in its repository's layout."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    info = get_pretrained_saes_directory()[release]
    snap = _repo_dir(cache, "model", info.repo_id, hashlib.sha1(info.repo_id.encode()).hexdigest())
    for i, sae_id in enumerate(sae_ids):
        path = info.saes_map[sae_id]
        if release == "gpt2-small-hook-z-kk":  # connor_rob_hook_z: a torch file and a *_cfg.json
            layer = int(sae_id.split(".")[1])
            d_sae = int(path.split("_ds")[1].split("_")[0])
            cfg = {"act_size": 768, "dict_size": d_sae, "act_name": f"blocks.{layer}.attn.hook_z", "layer": layer,
                   "site": "z", "model_name": "gpt2-small", "seq_len": 128, "l1_coeff": 1.0}
            _put(snap, path.split(".pt")[0] + "_cfg.json", json.dumps(cfg).encode())
            buf = _torch_bytes(_sae_weights(768, d_sae, seed + i))
            _put(snap, path, buf)
            continue
        m = re.fullmatch(r"(.+)_(\d+)", sae_id)  # the feature-splitting series: <hook>_<width>
        hook, d_sae = (m.group(1), int(m.group(2))) if m else (sae_id, 24576)
        _put(snap, f"{path}/cfg.json", json.dumps(_jb_cfg(hook, d_sae)).encode())
        _put(snap, f"{path}/sae_weights.safetensors", _safetensors_bytes(_sae_weights(768, d_sae, seed + i)))
        _put(snap, f"{path}/sparsity.safetensors", _safetensors_bytes({"sparsity": torch.full((d_sae,), -3.0)}))


def _torch_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def add_text_dataset(datasets_cache: Path, repo_id: str, texts: list[str]) -> None:
    """A text dataset prepared in the ``datasets`` cache as ``load_dataset(repo_id)`` leaves it
    (``<namespace>___<name>/default/0.0.0/<hash>/``: the Arrow file of the split and
    ``dataset_info.json``), which ``load_dataset`` reads back offline."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    name = repo_id.split("/")[-1]
    out = (datasets_cache / "___".join(repo_id.split("/")) / "default" / "0.0.0"
           / hashlib.sha1(repo_id.encode()).hexdigest()[:16])
    out.mkdir(parents=True, exist_ok=True)
    features = datasets.Features({"text": datasets.Value("string")})
    with ArrowWriter(features=features, path=str(out / f"{name}-train.arrow")) as writer:
        writer.write_batch({"text": texts})
        n_rows, n_bytes = writer.finalize()
    splits = datasets.SplitDict(dataset_name=name)
    splits.add(datasets.SplitInfo(name="train", num_bytes=n_bytes, num_examples=n_rows, dataset_name=name))
    datasets.DatasetInfo(features=features, splits=splits, config_name="default", dataset_name=name,
                         builder_name="parquet", version="0.0.0").write_to_directory(str(out))


@contextmanager
def offline_hub(hub_cache: Path, datasets_cache: Path):
    """Point the hub, transformers, sae-lens and datasets at the stand-in caches, offline, in this
    process and in every process it starts (notebook kernels)."""
    import datasets.config
    import huggingface_hub.constants as hf

    env = {"HF_HUB_CACHE": str(hub_cache), "HF_DATASETS_CACHE": str(datasets_cache), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    saved_env = {k: os.environ.get(k) for k in env}
    saved = (hf.HF_HUB_CACHE, hf.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_CACHE, datasets.config.HF_HUB_OFFLINE)
    os.environ.update(env)
    hf.HF_HUB_CACHE, hf.HF_HUB_OFFLINE = str(hub_cache), True
    datasets.config.HF_DATASETS_CACHE, datasets.config.HF_HUB_OFFLINE = Path(datasets_cache), True
    try:
        yield
    finally:
        hf.HF_HUB_CACHE, hf.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_CACHE, datasets.config.HF_HUB_OFFLINE = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
