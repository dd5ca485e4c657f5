"""Train the bundled tiny-rotary model from its seed, measure it, and write its model card.

    python scripts/build_rotary_model.py                 # train + measure + install
    python scripts/build_rotary_model.py --from DIR      # measure an existing training run
    python scripts/build_rotary_model.py --out DIR       # write elsewhere (reproduction check)

Every number in MODEL_CARD.md comes from metrics.json, which this script measures with
saetools.experiments.han2023_lm_infinite.run (the same code as notebook 07).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

from saetools.experiments.han2023_lm_infinite import (
    BUNDLED_EXPECTED_FAILURES,
    Config,
    check,
    run,
    target_status,
)
from saetools.models.build.tiny_rotary import RotaryTrainConfig, train_tiny_rotary
from saetools.models.loading import bundled_model_dir, load_model

FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json")

CARD = """# tiny-rotary

A small language model with **rotary** positions, trained by saetools at a short context so that
LM-Infinite (Han et al. 2023; docs/han2023_lm_infinite.md) can be reproduced on any machine: how vanilla attention
and LM-Infinite's Lambda mask + distance cap behave past the training length is measured below
(including whether LM-Infinite stays within 10% of its in-length NLL). Load it with
`saetools.load_model("tiny-rotary")`; notebook `07_han2023_lm_infinite.ipynb` uses it.

## Architecture
TransformerLens config: {n_layers} layers, d_model {d_model}, {n_heads} heads of d_head {d_head}
(rotary_dim {rotary_dim}, GPT-NeoX pairing, base {rotary_base}), d_mlp {d_mlp}, LayerNorm, GELU,
vocabulary {d_vocab} (the tiny-ioi byte-level BPE tokenizer, which splits digits one by one and
covers the passkey protocol's words). {n_params:,} parameters;
`model.safetensors` is {size_mb:.2f} MB (float32, rotary tables included).
`n_ctx = {n_ctx}` = {eval_factor} x the training length: TransformerLens grows its rotary table
only up to n_ctx (docs/han2023_lm_infinite.md), and rotary positions have no parameters, so this is free.
`train_seq_length = {train_ctx}` records the training length.

## Training
Rows of {train_ctx} tokens, each starting at BOS (as for models pretrained on documents, where
attention sinks form; whether this one relies on them is measured below): the start of a long
synthetic document (tiny-ioi corpus sentences run together), preceded in {passkey_pct:.0%} of
rows by a passkey document in the protocol of Mohtashami & Jaggi (2023) that LM-Infinite
evaluates: filler sentences ("The grass is green. The sky is blue. ..."), the line "The pass key
is 48213. Remember it. 48213 is the pass key." after a uniformly random number of them, the
question "What is the pass key? The pass key is" and the key. {steps} AdamW steps of batch
{batch_size}, peak lr {lr}, seed {seed}; final training loss {final_loss:.3f} nats/token.
Training took {train_seconds:.0f} s wall clock and {train_cpu_seconds} CPU seconds on the build
machine (2 CPU cores shared with other jobs).

## Measured (profile {profile}, seed {eval_seed}, {n_docs} held-out documents of {max_len} tokens)
Mean next-token NLL (nats) in position bins; `in_length` is the bin [L/2, L), the reference:

{nll_table}

Passkey retrieval (the protocol above: the key line at a uniformly random depth of the filler,
five digits decoded greedily, all correct; {n_passkey} prompts per length; `top-k` is LM-Infinite
plus top-k middle-token attention, top-{top_k} from layer {top_k_from_layer}):

{passkey_table}

Attention entropy (nats, last 16 queries, mean over heads and layers):

{entropy_table}

Full attention vs the lean Lambda path (one forward, batch 1; peak = CPU tensor bytes from the
PyTorch profiler's allocator events):

{cost_table}

Claims checked by `saetools.experiments.han2023_lm_infinite.check`: {check}.

{claims_table}

The length-generalisation target (LM-Infinite within {tol_pct:.0f}% of its in-length NLL at every factor up to
{eval_factor}x), from `saetools.experiments.han2023_lm_infinite.target_status`: **{target}** (worst bin
{worst_ratio:.3f}x the in-length NLL, at factor {worst_factor:g}).

Rebuild: `python scripts/build_rotary_model.py` (see its `--help`).
"""


def _md(df) -> str:
    """A DataFrame as a markdown table (index included; floats to 3 decimals)."""
    df = df.reset_index()
    fmt = lambda x: f"{x:.3f}" if isinstance(x, float) else str(x)
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def measure(run_dir: Path, log: dict, profile: str = "full") -> dict:
    model = load_model(str(run_dir), device="cpu")
    result = run(model, Config.profile(profile))
    try:
        claims = check(result, expected_failures=BUNDLED_EXPECTED_FAILURES)
        status = "passed (expected failures as listed)"
    except AssertionError as exc:
        claims, status = None, f"FAILED ({exc})"
    pk = result.passkey.pivot(index="length", columns="variant", values="accuracy")
    ent = result.entropy.pivot(index="length", columns="variant", values="entropy")
    cost = result.cost.pivot(index="length", columns="path", values=["seconds", "peak_mb"])
    cost.columns = [f"{a} {b}" for a, b in cost.columns]
    return {
        "n_params": sum(p.numel() for p in model.parameters()),
        "size_mb": (run_dir / "model.safetensors").stat().st_size / 1e6,
        "train_seconds": log["train_seconds"], "final_loss": log["loss"][-1][1],
        "train_cpu_seconds": log.get("train_cpu_seconds"),
        "config": {**result.config, "profile": profile}, "summary": result.summary().reset_index().to_dict("records"),
        "nll_bins": result.nll_bins.to_dict("records"), "passkey": result.passkey.to_dict("records"),
        "entropy": result.entropy.to_dict("records"), "cost": result.cost.to_dict("records"),
        "check": status, "target": target_status(result),
        "_tables": {"nll": _md(result.summary()), "passkey": _md(pk), "entropy": _md(ent), "cost": _md(cost),
                    "claims": "" if claims is None else _md(claims.set_index("claim"))},
    }


def write_card(out: Path, metrics: dict, log: dict, model_cfg: dict) -> None:
    t = metrics["_tables"]
    c = metrics["config"]
    fields = {**log["config"], **model_cfg}
    fields.update(
        n_params=metrics["n_params"], size_mb=metrics["size_mb"],
        train_seconds=metrics["train_seconds"], final_loss=metrics["final_loss"],
        train_cpu_seconds=("not recorded" if metrics["train_cpu_seconds"] is None
                           else f"{metrics['train_cpu_seconds']:.0f}"),
        profile=c["profile"], eval_seed=c["seed"], n_docs=c["n_docs"], max_len=c["max_len"],
        n_passkey=c["n_passkey"], train_ctx=c["train_ctx"], top_k=c["top_k"],
        top_k_from_layer=c["top_k_from_layer"], passkey_pct=log["config"]["passkey_frac"],
        nll_table=t["nll"], passkey_table=t["passkey"], entropy_table=t["entropy"],
        cost_table=t["cost"], check=metrics["check"], claims_table=t["claims"],
        target="met" if metrics["target"]["met"] else "NOT met",
        worst_ratio=metrics["target"]["worst_ratio"], worst_factor=metrics["target"]["worst_factor"],
        tol_pct=100 * metrics["target"]["tolerance"],
    )
    card = CARD.format(**fields)
    (out / "MODEL_CARD.md").write_text(card)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="install directory (default: the bundled model dir)")
    p.add_argument("--from", dest="from_dir", default=None, help="measure an existing training run")
    p.add_argument("--seed", type=int, default=RotaryTrainConfig.seed)
    p.add_argument("--steps", type=int, default=RotaryTrainConfig.steps)
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the bundled tiny-ioi's)")
    p.add_argument("--profile", default="full", choices=["smoke", "full"], help="measurement size")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out) if a.out else bundled_model_dir("tiny-rotary")
    if a.from_dir:
        run_dir = Path(a.from_dir)
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="tiny-rotary-"))
        train_tiny_rotary(RotaryTrainConfig(seed=a.seed, steps=a.steps), run_dir,
                          tokenizer_dir=a.tokenizer or bundled_model_dir("tiny-ioi"))
    log = json.loads((run_dir / "train_log.json").read_text())
    metrics = measure(run_dir, log, a.profile)
    out.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        if run_dir.resolve() != out.resolve():
            shutil.copy(run_dir / f, out / f)
    model_cfg = json.loads((run_dir / "config.json").read_text())
    write_card(out, metrics, log, {**model_cfg, "eval_factor": log["config"]["eval_factor"]})
    tables = metrics.pop("_tables")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(tables["nll"], tables["passkey"], tables["cost"], metrics["check"], metrics["target"],
          sep="\n\n")


if __name__ == "__main__":
    main()
