"""Train the bundled ``tiny-rotary`` model (LM-Infinite reproduction, ``docs/han2023_lm_infinite.md``).

``tiny-rotary`` is ``tiny-ioi``'s architecture with rotary positions instead of learned ones,
trained at a short context (``train_ctx`` tokens). Every training row starts at BOS (so
attention sinks form, as in models pretrained on documents) and holds either the start of a
long synthetic document (tiny-ioi corpus sentences run together) or a passkey document (the
protocol of Mohtashami & Jaggi 2023 that LM-Infinite evaluates: filler sentences, the key line
at a uniformly random depth, the question and its answer) followed by document text. Its
``n_ctx`` is ``eval_factor * train_ctx``: TransformerLens grows the rotary table only up to
``n_ctx``, and rotary positions have no parameters, so a large ``n_ctx`` is free and lets us
evaluate far past the training length.

Run ``python scripts/build_rotary_model.py`` to train, measure and install the model.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from saetools.models.build.tiny_ioi import make_optimizer, train_step, warmup_cosine_lr
from saetools.models.corpus import long_document, passkey_document, passkey_fit

__all__ = [
    "RotaryTrainConfig",
    "training_rows",
    "rotary_config",
    "train_tiny_rotary",
]

@dataclass(frozen=True, kw_only=True)
class RotaryTrainConfig:
    """Hyperparameters of the ``tiny-rotary`` training run."""

    seed: int = 0
    """Seeds the documents, the initialisation and the batch order."""
    steps: int = 3000
    """Optimizer steps."""
    batch_size: int = 32
    """Rows per step."""
    train_ctx: int = 128
    """Training length L_train in tokens (each row is BOS + ``train_ctx - 1`` tokens)."""
    eval_factor: int = 32
    """``n_ctx = eval_factor * train_ctx``: the longest length the model will be evaluated at."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    warmup: int = 100
    """Warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    n_layers: int = 3
    """Transformer blocks (induction-style copying of the key needs two)."""
    d_model: int = 128
    """Residual stream width."""
    n_heads: int = 4
    """Attention heads per layer (d_head = d_model / n_heads = rotary_dim)."""
    passkey_frac: float = 0.5
    """Fraction of rows that start with a passkey document."""

    def __post_init__(self) -> None:
        for field in ("steps", "batch_size", "train_ctx", "eval_factor", "n_layers", "d_model", "n_heads"):
            if getattr(self, field) <= 0:
                raise ValueError(f"RotaryTrainConfig.{field} must be positive")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError("RotaryTrainConfig.d_model / n_heads must be an even integer (rotary pairs)")
        if not 0.0 <= self.passkey_frac <= 1.0:
            raise ValueError("RotaryTrainConfig.passkey_frac must be in [0, 1]")


def training_rows(tokenizer, n_rows: int, *, n_ctx: int, seed: int, passkey_frac: float) -> torch.Tensor:
    """``[n_rows, n_ctx]`` rows, each BOS + (a passkey document, with probability
    ``passkey_frac``, then) the start of its own long document.

    A passkey document has between 1 and as many filler sentences as fit in the row (uniformly),
    so the key is recalled from every distance up to the training length."""
    rng = np.random.default_rng(seed)
    max_filler = max(1, passkey_fit(tokenizer, n_ctx, answer=" 12345."))
    n_sentences = max(4, n_ctx // 8)
    texts = []
    for s in rng.integers(1 << 62, size=n_rows):
        head = passkey_document(rng, int(rng.integers(1, max_filler + 1))) if rng.random() < passkey_frac else ""
        texts.append(head + long_document(n_sentences, seed=int(s)))
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    rows = [[bos] + x[: n_ctx - 1] for x in ids if len(x) >= n_ctx - 1]
    return torch.tensor(rows, dtype=torch.long)


def rotary_config(d_vocab: int, cfg: RotaryTrainConfig):
    """The ``HookedTransformerConfig`` of ``tiny-rotary`` for a training config."""
    from saetools.models.configs import tiny_ioi_config

    d_head = cfg.d_model // cfg.n_heads
    return tiny_ioi_config(
        d_vocab, n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=d_head,
        d_mlp=4 * cfg.d_model, n_ctx=cfg.eval_factor * cfg.train_ctx,
        positional_embedding_type="rotary", rotary_dim=d_head, rotary_base=10000,
        model_name="tiny-rotary",
        train_seq_length=cfg.train_ctx,
    )


def train_tiny_rotary(cfg: RotaryTrainConfig, out_dir: str | Path, tokenizer_dir: str | Path) -> dict:
    """Train ``tiny-rotary`` with the tokenizer in ``tokenizer_dir``; save it to ``out_dir``.

    Returns the training log (also written to ``out_dir/train_log.json``).
    """
    from saetools.models.loading import build_model, save_model
    from saetools.models.tokenizer import load_tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    load_tokenizer(tokenizer_dir).save_pretrained(out_dir)
    tokenizer = load_tokenizer(out_dir)  # TransformerLens re-reads it from name_or_path

    tokens = training_rows(tokenizer, cfg.steps * cfg.batch_size // 2, n_ctx=cfg.train_ctx,
                           seed=cfg.seed + 1, passkey_frac=cfg.passkey_frac)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = build_model(rotary_config(len(tokenizer), cfg), tokenizer)
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    log = {"config": asdict(cfg), "n_rows": int(tokens.shape[0]), "loss": []}
    epochs = -(-cfg.steps * cfg.batch_size // tokens.shape[0])
    order = torch.cat([torch.randperm(tokens.shape[0], generator=gen) for _ in range(epochs)])
    bar = tqdm(range(cfg.steps), desc="train tiny-rotary")
    for step in bar:
        idx = order[step * cfg.batch_size: (step + 1) * cfg.batch_size]
        lr = warmup_cosine_lr(step, lr=cfg.lr, warmup=cfg.warmup, steps=cfg.steps)
        loss = train_step(model, opt, tokens[idx], mask[idx], lr=lr)
        if step % 50 == 0:
            log["loss"].append((step, float(loss.detach())))
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    model.eval()
    log["train_seconds"] = time.perf_counter() - t0
    log["train_cpu_seconds"] = time.process_time() - c0  # unaffected by other jobs' load
    save_model(model, out_dir)
    (out_dir / "train_log.json").write_text(json.dumps(log, indent=1))
    return log
