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

from saetools.data import heldout_names, heldout_templates
from saetools.experiments import wang2022_ioi
from saetools.models.build.tiny_ioi import TrainConfig, train_tiny_ioi
from saetools.models.loading import bundled_model_dir, load_model
from saetools.tasks import ioi

N_EVAL = 2000
EVAL_SEED = 2024


@torch.no_grad()
def evaluate(model) -> dict:
    """Held-out behaviour, and the mechanism measured as notebook 01 measures it (full profile)."""
    names = heldout_names()
    spec = ioi.sample_spec(N_EVAL, templates=heldout_templates(), names=names, seed=EVAL_SEED)
    batch = ioi.render(model, spec)
    ld = ioi.logit_diff(model(batch.tokens), batch)
    dist = ioi.render(model, ioi.distractor_spec(spec, seed=EVAL_SEED + 1, names=names))
    logits = model(dist.tokens)
    vs_s, vs_c = ioi.logit_diff(logits, dist), ioi.distractor_logit_diff(model, logits, dist)
    train_spec = ioi.wang_spec(N_EVAL, seed=EVAL_SEED, names=[n for n in ioi.load_words("names")
                                                            if n not in set(names)])
    train_batch = ioi.render(model, train_spec)
    ld_train = ioi.logit_diff(model(train_batch.tokens), train_batch)
    with torch.enable_grad():  # run() manages its own gradient state
        result = wang2022_ioi.run(model, wang2022_ioi.Config.profile("full"))
    mech = result.mechanism
    return {
        "heldout": {
            "n_prompts": N_EVAL, "seed": EVAL_SEED,
            "accuracy": float((ld > 0).float().mean()), "logit_diff": float(ld.mean()),
            "logit_diff_std": float(ld.std()),
        },
        "heldout_distractor": {
            "phrase": ioi.ioi_template_data()["distractors"]["heldout"],
            "accuracy_vs_s": float((vs_s > 0).float().mean()),
            "accuracy_vs_distractor": float((vs_c > 0).float().mean()),
            "accuracy_vs_both": float(((vs_s > 0) & (vs_c > 0)).float().mean()),
        },
        "wang_templates_train_names": {
            "accuracy": float((ld_train > 0).float().mean()), "logit_diff": float(ld_train.mean()),
        },
        "mechanism": {
            "n_prompts": len(result.clean), "logit_diff": mech.logit_diff,
            "roles": {r: [list(h) for h in hs] for r, hs in result.circuit.roles.items()},
            "targets": mech.targets().to_dict("records"),
            "heads": mech.heads.round(4).to_dict("records"),
            "mlp_dla": {c: float(v) for c, v in zip(mech.components.component, mech.components.dla)
                        if c.startswith("MLP")},
            "kept": result.faithfulness.kept, "removed": result.faithfulness.removed,
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

Tokenizer: byte-level BPE with GPT-2's pre-tokenisation (except that digits are split one by
one), trained on the corpus below; `<|endoftext|>` is BOS / EOS / padding and is prepended on
encode, so TransformerLens's `to_tokens` / `to_str_tokens` behave as for GPT-2. Every name,
place and object in `saetools/data/*.txt` is a single token with its leading space.

## Corpus (`saetools/models/corpus.py`)
Documents packed into {n_ctx}-token rows that start with BOS. Every IOI-like sentence is
answered by the first-clause name that is not repeated:
- IOI sentences ({mix[ioi]:.0%}) from {n_templates} compositional templates plus the
  non-held-out Wang et al. (2022) templates;
- distractor sentences ({mix[distractor]:.0%}): a third, new name next to the subject in the
  second clause, never the answer, after it ("John, with Kevin, gave a ring to Mary") or before
  it ("Kevin said that John gave a ring to Mary");
- triple-S sentences ({mix[triple]:.0%}: "... John was happy, and John gave a ring to Mary");
- single-name recall sentences over every name ({mix[recall]:.0%}; "Today, Mary went to the
  park. The ring was given to Mary."), small-grammar sentences ({mix[grammar]:.0%}) and copying
  sequences (a random word list and its repeat, {mix[copying]:.0%}).

Why: a model trained only on plain IOI (and on ABC sentences, whose answer is one of the first
two names) can answer "the first-clause name that is not the last name mentioned" -- a recency
shortcut that ignores the repetition. With a new name after the subject that shortcut fails;
with one before it, "not the first name of the second clause" fails. There are no ABC training
sentences. Copying sequences are plain repeats, the format in which
`circuits.copying_scores` probes induction and duplicate-token heads.

Held out for evaluation: the template strings {heldout_templates_desc}, which never occur in the
corpus; the distractor phrase "{heldout_phrase}"; and {n_heldout_names} names (every 4th of
`names.txt`), which never occur in an IOI training sentence, so choosing between two
first-clause names -- the IOI task itself -- is never trained on them. They do occur in recall,
grammar and copying sentences, so their embeddings and copying are trained.

## Training
`python scripts/build_bundled_models.py` (equivalently `python -m saetools.models.build.tiny_ioi
--out DIR` followed by this script's evaluation): seed {seed}, {steps} AdamW steps of
{batch_size} x {n_ctx} tokens, peak learning rate {lr}, warm-up {warmup} steps, cosine decay to
10%, weight decay {weight_decay} on matrices. The saved weights are an exponential moving average of
the weights (decay {ema_decay}, from step {ema_start}): {ema_line}. Training took
{train_minutes:.1f} minutes on a 2-core CPU. Training on a CPU is not bitwise
reproducible: parallel floating-point reductions round differently from run to run, and
training amplifies that, so a rerun from the seed lands near, not on, the numbers below; measure
a rerun with `--out DIR`.

## Behaviour ({n_eval} IOI prompts from held-out templates and held-out names, seed {eval_seed})
| metric | value |
|---|---|
| accuracy (logit of IO > logit of S) | {accuracy:.3f} |
| mean logit difference | {logit_diff:.2f} (std {logit_diff_std:.2f}) |
| with the held-out distractor phrase after S2: accuracy against S / against the new name / both | {d_s:.3f} / {d_c:.3f} / {d_both:.3f} |
| accuracy / mean logit difference on Wang et al. templates, training names | {train_acc:.3f} / {train_ld:.2f} |

## Mechanism ({n_mech} prompts of Wang et al.'s templates, as notebook 01 measures them at its `full` profile)
`saetools.circuits.discover_circuit` finds: {roles}.

Checked with plain measurements (`saetools.circuits.mechanism`: direct logit attribution through
the frozen final LayerNorm scale, attention, single-head mean ablation over the ABC
distribution, Pos patching):

{targets_table}

Direct logit attribution of the MLPs (of a mean logit difference of {mech_ld:.2f}): {mlp_dla}.

Targets this model was built to: behaviour (held-out accuracy >= 0.95, mean logit difference >= 3,
distractor accuracy against both names >= 0.9): {behaviour_targets}; mechanism: the table above.

Mean ablation replaces a head's output by its mean over the ABC distribution, per template and
position (Wang et al. 2022). `tests/test_bundled_model_metrics.py` re-measures the behaviour,
and notebook 01's check the mechanism.
"""


def _ema_line(log: dict) -> str:
    if "ema_weights" not in log:
        return "not used in this run"
    last, ema = log["last_step_weights"], log["ema_weights"]
    return (f"on 400 held-out prompts (training's quick evaluation) the last step's weights score accuracy "
            f"{last['accuracy']:.3f} / logit difference {last['logit_diff']:.2f}, the average "
            f"{ema['accuracy']:.3f} / {ema['logit_diff']:.2f}. Held-out accuracy of the raw weights oscillates "
            f"by about +-0.03 between checkpoints 250 steps apart; the average smooths over that")


def _md(records: list[dict]) -> str:
    cols = list(records[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(("yes" if v is True else "NO" if v is False else str(v)) for v in r.values()) + " |"
              for r in records]
    return "\n".join(lines)


def write_card(model_dir: Path, metrics: dict, log: dict) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    tc = log["config"]
    n_params = sum(t.numel() for t in load_model(str(model_dir)).state_dict().values())
    from saetools.models.corpus import KINDS, CorpusConfig, training_templates

    mix = dict(zip(KINDS, CorpusConfig().probabilities))
    h, d, m = metrics["heldout"], metrics["heldout_distractor"], metrics["mechanism"]
    checks = [("accuracy", h["accuracy"] >= 0.95), ("logit difference", h["logit_diff"] >= 3),
              ("distractor", d["accuracy_vs_both"] >= 0.9)]
    roles = "; ".join(f"{r.replace('_', ' ')} {', '.join(f'L{l}H{hh}' for l, hh in hs)}"
                      for r, hs in m["roles"].items() if hs) or "no roles"
    card = CARD.format(
        behaviour_targets="; ".join(f"{name} {'met' if ok else 'NOT met'}" for name, ok in checks),
        **cfg, n_params=n_params, mix=mix, n_templates=len(training_templates()),
        heldout_templates_desc="; ".join(f"\"{t}\"" for t in heldout_templates()[:2]) + f" and {len(heldout_templates()) - 2} more (see `data/ioi_templates.json`)",
        heldout_phrase=d["phrase"].replace("{C}", "Kevin"),
        n_heldout_names=len(heldout_names()), seed=tc["seed"], steps=tc["steps"],
        batch_size=tc["batch_size"], lr=tc["lr"], warmup=tc["warmup"], weight_decay=tc["weight_decay"],
        train_minutes=log["train_seconds"] / 60, ema_decay=tc.get("ema_decay"), ema_start=tc.get("ema_start"),
        ema_line=_ema_line(log), n_eval=N_EVAL, eval_seed=EVAL_SEED,
        accuracy=h["accuracy"], logit_diff=h["logit_diff"], logit_diff_std=h["logit_diff_std"],
        d_s=d["accuracy_vs_s"], d_c=d["accuracy_vs_distractor"], d_both=d["accuracy_vs_both"],
        train_acc=metrics["wang_templates_train_names"]["accuracy"],
        train_ld=metrics["wang_templates_train_names"]["logit_diff"],
        n_mech=m["n_prompts"], roles=roles, targets_table=_md(m["targets"]), mech_ld=m["logit_diff"],
        mlp_dla=", ".join(f"{k} {v:+.2f}" for k, v in m["mlp_dla"].items()),
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
