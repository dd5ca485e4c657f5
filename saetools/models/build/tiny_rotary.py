"""Train the bundled ``tiny-rotary`` model (LM-Infinite reproduction, ``docs/han2023_lm_infinite.md``).

``tiny-rotary`` is ``tiny-ioi``'s architecture with rotary positions instead of learned ones,
trained at a short context (``train_ctx`` tokens) on windows at random offsets of one *long*
synthetic token stream (so position 1 is usually mid-sentence, as in a window far into a long
input): sentences of the tiny-ioi corpus run on without document breaks, interleaved with a
passkey pattern (``" The key is 48213."`` ... ``" The key is 48213."``) whose second copy can
only be predicted by attending back to the first. Its ``n_ctx`` is ``eval_factor * train_ctx``:
TransformerLens grows the rotary table only up to ``n_ctx``, and rotary positions have no
parameters, so a large ``n_ctx`` is free and lets us evaluate far past the training length.

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
from saetools.models.corpus import long_document, long_document_tokens

__all__ = [
    "RotaryTrainConfig",
    "training_rows",
    "random_window_rows",
    "rotary_config",
    "train_tiny_rotary",
]

@dataclass(frozen=True, kw_only=True)
class RotaryTrainConfig:
    """Hyperparameters of the ``tiny-rotary`` training run."""

    seed: int = 0
    """Seeds the documents, the initialisation and the batch order."""
    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 32
    """Rows per step."""
    train_ctx: int = 64
    """Training length L_train in tokens (each row is BOS + ``train_ctx - 1`` stream tokens)."""
    eval_factor: int = 32
    """``n_ctx = eval_factor * train_ctx``: the longest length the model will be evaluated at."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    warmup: int = 100
    """Warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    n_layers: int = 2
    """Transformer blocks (2 are enough for induction-style passkey copying)."""
    d_model: int = 96
    """Residual stream width."""
    n_heads: int = 4
    """Attention heads per layer (d_head = d_model / n_heads = rotary_dim)."""
    passkey_rate: float = 0.3
    """Probability that a sentence slot starts a passkey statement (recalled 0-2 sentences later)."""
    random_windows: bool = True
    """Rows are BOS + a window at a random offset of one long token stream (so the token after
    BOS is usually mid-sentence, as in a far-away LM-Infinite window); ``False``: BOS + the
    start of its own long document."""

    def __post_init__(self) -> None:
        for field in ("steps", "batch_size", "train_ctx", "eval_factor", "n_layers", "d_model", "n_heads"):
            if getattr(self, field) <= 0:
                raise ValueError(f"RotaryTrainConfig.{field} must be positive")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError("RotaryTrainConfig.d_model / n_heads must be an even integer (rotary pairs)")
        if not 0.0 <= self.passkey_rate <= 1.0:
            raise ValueError("RotaryTrainConfig.passkey_rate must be in [0, 1]")


def training_rows(tokenizer, n_rows: int, *, n_ctx: int, seed: int, passkey_rate: float) -> torch.Tensor:
    """``[n_rows, n_ctx]`` rows, each BOS + the start of its own long document."""
    rng = np.random.default_rng(seed)
    n_sentences = max(4, n_ctx // 8)
    texts = [long_document(n_sentences, seed=int(s), passkey_rate=passkey_rate)
             for s in rng.integers(1 << 62, size=n_rows)]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    rows = [[bos] + x[: n_ctx - 1] for x in ids if len(x) >= n_ctx - 1]
    return torch.tensor(rows, dtype=torch.long)


def random_window_rows(tokenizer, n_rows: int, *, n_ctx: int, seed: int,
                       passkey_rate: float) -> torch.Tensor:
    """``[n_rows, n_ctx]`` rows: BOS + ``n_ctx - 1`` tokens from a random offset of one long
    stream (a seeded :func:`long_document` of about ``n_rows * n_ctx / 4`` tokens)."""
    rng = np.random.default_rng(seed)
    n_stream = max(4 * n_ctx, n_rows * n_ctx // 4)
    stream = long_document_tokens(tokenizer, n_stream + 1, seed=int(rng.integers(1 << 31)),
                                  passkey_rate=passkey_rate)[1:]
    starts = torch.from_numpy(rng.integers(0, len(stream) - n_ctx + 1, size=n_rows))
    idx = starts[:, None] + torch.arange(n_ctx - 1)[None]
    bos = torch.full((n_rows, 1), tokenizer.bos_token_id, dtype=torch.long)
    return torch.cat([bos, stream[idx]], dim=1)


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

    make_rows = random_window_rows if cfg.random_windows else training_rows
    tokens = make_rows(tokenizer, cfg.steps * cfg.batch_size // 2, n_ctx=cfg.train_ctx,
                       seed=cfg.seed + 1, passkey_rate=cfg.passkey_rate)
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
