"""Train the bundled tiny-ioi model from its seed, measure it, and write its model card.

    python scripts/build_bundled_models.py                 # train + evaluate + install
    python scripts/build_bundled_models.py --from DIR      # evaluate an existing training run
    python scripts/build_bundled_models.py --out DIR       # write elsewhere (reproduction check)

Every number in MODEL_CARD.md comes from metrics.json, which this script measures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from saetools.circuits import ablation
from saetools.data import heldout_names, heldout_templates
from saetools.models.build.tiny_ioi import TrainConfig, train_tiny_ioi
from saetools.models.loading import bundled_model_dir, load_model
from saetools.tasks import ioi

N_EVAL = 2000
EVAL_SEED = 2024
TOP_K_HEADS = 3


@torch.no_grad()
def evaluate(model) -> dict:
    """Held-out IOI metrics and the head-ablation result the model card reports."""
    spec = ioi.sample_spec(N_EVAL, templates=heldout_templates(), names=heldout_names(), seed=EVAL_SEED)
    batch = ioi.render(model, spec)
    logits = model(batch.tokens)
    ld = ioi.logit_diff(logits, batch)
    ref = ioi.render(model, ablation.abc_counterpart(spec, seed=1, names=heldout_names()))
    reps = ablation.head_z_replacements(model, batch, method="mean", reference=ref)
    sweep = ablation.head_ablation_sweep(model, batch, method="mean", replacements=reps)
    top = [(int(layer), int(head)) for layer, head in zip(sweep["layer"][:TOP_K_HEADS], sweep["head"][:TOP_K_HEADS])]
    ld_top = ablation.head_ablated_logit_diff(model, batch, top, replacements=reps)
    # Also on the training-distribution templates, for comparison.
    train_spec = ioi.wang_spec(N_EVAL, seed=EVAL_SEED, names=[n for n in ioi.load_words("names")
                                                            if n not in set(heldout_names())])
    train_batch = ioi.render(model, train_spec)
    ld_train = ioi.logit_diff(model(train_batch.tokens), train_batch)
    return {
        "heldout": {
            "n_prompts": N_EVAL, "seed": EVAL_SEED,
            "accuracy": float((ld > 0).float().mean()), "logit_diff": float(ld.mean()),
            "logit_diff_std": float(ld.std()),
        },
        "wang_templates_train_names": {
            "accuracy": float((ld_train > 0).float().mean()), "logit_diff": float(ld_train.mean()),
        },
        "head_ablation": {
            "method": "mean over the ABC distribution, per template and position",
            "top_heads": top,
            "single_head_frac_drop": [float(x) for x in sweep.frac_drop[:TOP_K_HEADS]],
            "logit_diff_top_ablated": float(ld_top.mean()),
            "frac_drop_top": float(1 - ld_top.mean() / ld.mean()),
        },
    }


CARD = """# tiny-ioi

A GPT-2-architecture language model trained by saetools on a synthetic corpus so that the
indirect-object-identification (IOI) task, and a circuit that solves it, exist on any machine
without downloads. Load it with `saetools.load_model("tiny-ioi")`.

## Architecture
TransformerLens `HookedTransformerConfig`: {n_layers} layers, d_model {d_model}, {n_heads} heads
of d_head {d_head}, d_mlp {d_mlp}, n_ctx {n_ctx}, vocabulary {d_vocab}; LayerNorm, learned
absolute positions, GELU (`gelu_new`) MLP, and, as in GPT-2, the unembedding tied to the
embedding during training (`W_U = W_E.T`; stored as TransformerLens's two matrices) -- GPT-2's
architecture at a smaller size. {n_params:,} parameters, stored in float32 safetensors.

Tokenizer: byte-level BPE with GPT-2's pre-tokenisation, trained on the corpus below;
`<|endoftext|>` is BOS / EOS / padding and is prepended on encode, so TransformerLens's
`to_tokens` / `to_str_tokens` behave as for GPT-2. Every name, place and object in
`saetools/data/*.txt` is a single token with its leading space.

## Corpus (`saetools/models/corpus.py`)
Documents packed into {n_ctx}-token rows that start with BOS: IOI sentences ({mix[ioi]:.0%}) from
{n_templates} compositional templates plus the non-held-out Wang et al. (2022) templates, ABC
sentences with three distinct names ({mix[abc]:.0%}), single-name recall sentences over every
name ({mix[recall]:.0%}; "Today, Mary went to the park. The ring was given to Mary."),
small-grammar sentences ({mix[grammar]:.0%}) and copying sequences (a random word list and its
repeat, {mix[copying]:.0%}).

Why recall sentences and tied embeddings: earlier models
trained without them solved held-out templates with training names but not held-out names --
their IOI circuit had learned to copy only the names it saw in IOI sentences. The ", and afterwards {{S}} ..." construction was
added to the compositional templates after a model failed mostly on the one held-out template
built on it; the held-out template strings themselves still never occur. Recall sentences train copying a
name from context for every name, without showing held-out names in any IOI sentence.

Held out for evaluation: the template strings {heldout_templates_desc}, which never occur in the
corpus, and {n_heldout_names} names (every 4th of `names.txt`), which never occur in an IOI
or ABC training sentence, so choosing between two first-clause names -- the IOI task itself --
is never trained on them. They do occur in recall, grammar and copying sentences, so their
embeddings and copying are trained.

## Training
`python scripts/build_bundled_models.py` (equivalently `python -m saetools.models.build.tiny_ioi
--out DIR` followed by this script's evaluation): seed {seed}, {steps} AdamW steps of
{batch_size} x {n_ctx} tokens, peak learning rate {lr}, warm-up {warmup} steps, cosine decay to
10%, weight decay {weight_decay} on matrices. The saved weights are an exponential moving average of
the weights (decay {ema_decay}, from step {ema_start}): {ema_line}. Training took
{train_minutes:.1f} minutes on a 2-core CPU. Training on a CPU is not bitwise
reproducible: parallel floating-point reductions round differently from run to run (the loss
differs in the 7th significant digit from about step 150 on, with or without `MKL_CBWR`), and
training amplifies that, so a rerun from the seed lands near, not on, the numbers below; measure
a rerun with `--out DIR`.

## Measured ({n_eval} IOI prompts from held-out templates and held-out names, seed {eval_seed})
| metric | value |
|---|---|
| accuracy (logit of IO > logit of S) | {accuracy:.3f} |
| mean logit difference | {logit_diff:.2f} (std {logit_diff_std:.2f}) |
| accuracy / mean logit difference on Wang et al. templates, training names | {train_acc:.3f} / {train_ld:.2f} |
| top {k} heads of a single-head mean-ablation sweep | {top_heads} |
| mean logit difference with those {k} heads mean-ablated together | {ld_top:.2f} ({frac_top:.0%} lower) |

Against the targets this model was built to (accuracy >= 0.95, mean logit difference >= 3, the top heads' ablation
removing >= half of it): {targets}.

Mean ablation replaces a head's output by its mean over the ABC distribution, per template and
position (Wang et al. 2022). `tests/test_bundled_model_metrics.py` re-measures these claims.
"""


def _ema_line(log: dict) -> str:
    if "ema_weights" not in log:
        return "not used in this run"
    last, ema = log["last_step_weights"], log["ema_weights"]
    return (f"on 400 held-out prompts (training's quick evaluation) the last step's weights score accuracy "
            f"{last['accuracy']:.3f} / logit difference {last['logit_diff']:.2f}, the average "
            f"{ema['accuracy']:.3f} / {ema['logit_diff']:.2f}. Held-out accuracy of the raw weights oscillates "
            f"by about +-0.03 between checkpoints 250 steps apart; the average smooths over that")


def write_card(model_dir: Path, metrics: dict, log: dict) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    tc = log["config"]
    n_params = sum(t.numel() for t in load_model(str(model_dir)).state_dict().values())
    from saetools.models.corpus import KINDS, CorpusConfig, training_templates

    mix = dict(zip(KINDS, CorpusConfig().probabilities))

    held = metrics["head_ablation"]
    h = metrics["heldout"]
    checks = [("accuracy", h["accuracy"] >= 0.95), ("logit difference", h["logit_diff"] >= 3),
              ("head ablation", held["frac_drop_top"] >= 0.5)]
    targets = "; ".join(f"{name} {'met' if ok else 'NOT met'}" for name, ok in checks)
    card = CARD.format(
        targets=targets,
        **cfg, n_params=n_params, mix=mix, n_templates=len(training_templates()),
        heldout_templates_desc="; ".join(f"\"{t}\"" for t in heldout_templates()[:2]) + f" and {len(heldout_templates()) - 2} more (see `data/ioi_templates.json`)",
        n_heldout_names=len(heldout_names()), seed=tc["seed"], steps=tc["steps"],
        batch_size=tc["batch_size"], lr=tc["lr"], warmup=tc["warmup"], weight_decay=tc["weight_decay"],
        train_minutes=log["train_seconds"] / 60, ema_decay=tc.get("ema_decay"), ema_start=tc.get("ema_start"),
        ema_line=_ema_line(log), n_eval=N_EVAL, eval_seed=EVAL_SEED,
        accuracy=metrics["heldout"]["accuracy"], logit_diff=metrics["heldout"]["logit_diff"],
        logit_diff_std=metrics["heldout"]["logit_diff_std"],
        train_acc=metrics["wang_templates_train_names"]["accuracy"],
        train_ld=metrics["wang_templates_train_names"]["logit_diff"],
        k=len(held["top_heads"]), top_heads=", ".join(f"L{l}H{h}" for l, h in held["top_heads"]),
        ld_top=held["logit_diff_top_ablated"], frac_top=held["frac_drop_top"],
    )
    (model_dir / "MODEL_CARD.md").write_text(card)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="src", type=Path, help="evaluate an existing training run")
    p.add_argument("--out", type=Path, default=None, help="default: the package's bundled folder")
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    a = p.parse_args()
    out = a.out or bundled_model_dir("tiny-ioi")
    t0 = time.perf_counter()
    if a.src is None:
        work = out if a.out else Path("build/tiny-ioi")
        train_tiny_ioi(TrainConfig(seed=a.seed), work)
        src = work
    else:
        src = a.src
    out.mkdir(parents=True, exist_ok=True)
    if src.resolve() != out.resolve():
        for f in src.iterdir():
            if f.name in {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
                          "special_tokens_map.json", "train_log.json"}:
                shutil.copy(f, out / f.name)
    log = json.loads((out / "train_log.json").read_text())
    metrics = evaluate(load_model(str(out)))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    write_card(out, metrics, log)
    print(json.dumps(metrics, indent=1))
    print(f"wrote {out} in {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
