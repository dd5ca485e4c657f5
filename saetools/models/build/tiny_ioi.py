"""Train the bundled ``tiny-ioi`` model from its seed.

Run ``python -m saetools.models.build.tiny_ioi --out DIR`` (see ``--help``). The script trains the
tokenizer and the model on the synthetic corpus of :mod:`saetools.models.corpus`, then writes
``model.safetensors``, ``config.json``, the tokenizer files and ``metrics.json`` to ``DIR``.
``scripts/build_bundled_models.py`` turns the metrics into the model card.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from saetools.models.corpus import CorpusConfig, generate_documents, pack_documents, tokenizer_training_text
from saetools.models.tokenizer import SPECIAL_TOKEN, load_tokenizer, train_tokenizer

__all__ = ["TrainConfig", "make_optimizer", "warmup_cosine_lr", "train_step", "train_tiny_ioi"]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyperparameters of the bundled model's training run."""

    seed: int = 0
    """Seeds the corpus, the tokenizer corpus, the initialisation and the batch order."""
    steps: int = 3000
    """Optimizer steps."""
    batch_size: int = 64
    """Rows per step."""
    n_ctx: int = 64
    """Row length in tokens (each row starts with BOS and holds whole documents)."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    warmup: int = 100
    """Warm-up steps."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    vocab_size: int = 2048
    """Upper bound on the BPE vocabulary (the corpus saturates it earlier)."""
    n_layers: int = 4
    """Transformer blocks."""
    d_model: int = 128
    """Residual stream width."""
    n_heads: int = 4
    """Attention heads per layer (d_head = d_model / n_heads)."""
    ema_decay: float | None = 0.998
    """Decay of an exponential moving average of the weights, kept from ``ema_start`` on; the
    saved model is the average (None: the last step's weights). Held-out IOI accuracy of the
    raw weights oscillates by about +-0.03 between checkpoints 250 steps apart (the card's
    attempts); the average smooths over that. 0.998 averages about the last 500 steps."""
    ema_start: int = 2000
    """First step whose weights enter the average (held-out accuracy passes 0.9 from about step 1000)."""
    tie_embeddings: bool = True
    """Tie the unembedding to the embedding (``W_U = W_E.T``), as GPT-2 does. The saved model
    has TransformerLens's separate ``W_E`` / ``W_U`` with ``W_U`` equal to ``W_E.T``."""

    def __post_init__(self) -> None:
        for field in ("steps", "batch_size", "n_ctx", "vocab_size", "n_layers", "d_model", "n_heads"):
            if getattr(self, field) <= 0:
                raise ValueError(f"TrainConfig.{field} must be positive")
        if self.ema_decay is not None and not (0.0 < self.ema_decay < 1.0):
            raise ValueError("TrainConfig.ema_decay must be in (0, 1) or None")
        if not 0 <= self.ema_start < self.steps:
            raise ValueError("TrainConfig.ema_start must be in [0, steps)")
        if self.d_model % self.n_heads:
            raise ValueError("TrainConfig.d_model must be divisible by n_heads")


def make_optimizer(model, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases and norm gains are not decayed)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.98),
    )


def tie_unembedding(model) -> None:
    """Tie ``W_U`` to ``W_E.T`` (GPT-2's weight tying) for training.

    The ``W_U`` parameter is replaced by a transposed *view* of ``W_E``, so it follows every
    update of ``W_E`` and gradients from the unembedding reach ``W_E``. Undo with
    :func:`untie_unembedding` before saving.
    """
    model.unembed._parameters.pop("W_U", None)
    model.unembed.W_U = model.embed.W_E.T


def untie_unembedding(model) -> None:
    """Turn a tied ``W_U`` back into a parameter equal to ``W_E.T`` (TransformerLens layout)."""
    w_u = model.embed.W_E.detach().T.clone()
    del model.unembed.W_U
    model.unembed.W_U = torch.nn.Parameter(w_u)


def warmup_cosine_lr(step: int, *, lr: float, warmup: int, steps: int) -> float:
    """Linear warm-up to ``lr``, then cosine decay to 10% of it at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train_step(model, opt, x: torch.Tensor, m: torch.Tensor, *, lr: float) -> torch.Tensor:
    """One optimizer step on next-token NLL; ``m[r, t]`` says whether predicting ``x[r, t+1]`` counts."""
    for g in opt.param_groups:
        g["lr"] = lr
    logits = model(x, return_type="logits")
    logp = logits[:, :-1].log_softmax(-1)
    nll = -logp.gather(-1, x[:, 1:, None])[..., 0]
    loss = (nll * m[:, :-1]).sum() / m[:, :-1].sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss


def train_tiny_ioi(cfg: TrainConfig, out_dir: str | Path, *, eval_every: int = 500) -> dict:
    """Train tokenizer and model, save them to ``out_dir``, return the training log."""
    from saetools.models.configs import tiny_ioi_config
    from saetools.models.loading import build_model, save_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(tokenizer_training_text(seed=cfg.seed), vocab_size=cfg.vocab_size)
    tokenizer.save_pretrained(out_dir)
    # Reload from disk: TransformerLens re-reads the tokenizer from its ``name_or_path``.
    tokenizer = load_tokenizer(out_dir)
    bos = tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN)

    # Enough documents for every step (about 2.5 documents fit in a 64-token row).
    n_docs = int(cfg.steps * cfg.batch_size * cfg.n_ctx / 20)
    docs = generate_documents(n_docs, seed=cfg.seed + 1, config=CorpusConfig())
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    tokens, mask = pack_documents(ids, n_ctx=cfg.n_ctx, bos=bos)

    model_cfg = tiny_ioi_config(
        len(tokenizer), n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads,
        d_head=cfg.d_model // cfg.n_heads, d_mlp=4 * cfg.d_model, n_ctx=cfg.n_ctx,
    )
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = build_model(model_cfg, tokenizer)
    model.train()
    if cfg.tie_embeddings:
        tie_unembedding(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        return warmup_cosine_lr(step, lr=cfg.lr, warmup=cfg.warmup, steps=cfg.steps)

    log = {"config": asdict(cfg), "n_rows": int(tokens.shape[0]), "loss": [], "eval": []}
    params = list(model.parameters())
    ema: list[torch.Tensor] | None = None
    order = torch.randperm(tokens.shape[0], generator=gen)
    bar = tqdm(range(cfg.steps), desc="train tiny-ioi")
    for step in bar:
        lo = (step * cfg.batch_size) % (tokens.shape[0] - cfg.batch_size)
        idx = order[lo : lo + cfg.batch_size]
        x, m = tokens[idx], mask[idx]
        loss = train_step(model, opt, x, m, lr=lr_at(step))
        if cfg.ema_decay is not None and step >= cfg.ema_start:
            with torch.no_grad():
                if ema is None:
                    ema = [p.detach().clone() for p in params]
                else:
                    torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - cfg.ema_decay)
        if step % 50 == 0:
            log["loss"].append((step, float(loss.detach())))
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if eval_every and (step + 1) % eval_every == 0:
            model.eval()
            log["eval"].append({"step": step + 1, **quick_eval(model, n=400)})
            bar.write(f"step {step + 1}: {log['eval'][-1]}")
            model.train()
    model.eval()
    if ema is not None:
        log["last_step_weights"] = quick_eval(model, n=400)
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
        log["ema_weights"] = quick_eval(model, n=400)
        bar.write(f"last step {log['last_step_weights']}, weight average {log['ema_weights']}")
    if cfg.tie_embeddings:
        untie_unembedding(model)
    log["train_seconds"] = time.perf_counter() - t0
    save_model(model, out_dir)
    (out_dir / "train_log.json").write_text(json.dumps(log, indent=1))
    return log


@torch.no_grad()
def quick_eval(model, *, n: int, seed: int = 12345) -> dict:
    """IOI accuracy and mean logit difference on held-out templates and names."""
    from saetools.data import heldout_names, heldout_templates
    from saetools.tasks import ioi

    spec = ioi.sample_spec(n, templates=heldout_templates(), names=heldout_names(), seed=seed)
    batch = ioi.render(model, spec)
    logits = model(batch.tokens, return_type="logits")
    ld = ioi.logit_diff(logits, batch)
    return {"accuracy": float((ld > 0).float().mean()), "logit_diff": float(ld.mean())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--n-layers", type=int, default=TrainConfig.n_layers)
    p.add_argument("--d-model", type=int, default=TrainConfig.d_model)
    p.add_argument("--eval-every", type=int, default=500)
    a = p.parse_args(argv)
    cfg = TrainConfig(seed=a.seed, steps=a.steps, lr=a.lr, batch_size=a.batch_size,
                      n_layers=a.n_layers, d_model=a.d_model)
    np.seterr(all="raise")
    log = train_tiny_ioi(cfg, a.out, eval_every=a.eval_every)
    print(json.dumps({"train_seconds": round(log["train_seconds"], 1), "final": log["eval"][-1:]}))


if __name__ == "__main__":
    main()
