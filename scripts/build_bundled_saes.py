"""Train the SAEs bundled with saetools for ``tiny-ioi`` and write their card of measured metrics.

Usage: ``python scripts/build_bundled_saes.py [--model tiny-ioi|PATH] [--samples N]``

Writes ``saetools/saes/bundled/<name>/`` (sae-lens format: ``cfg.json`` +
``sae_weights.safetensors``), ``card.json`` and ``CARD.md``. Deterministic given the seeds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sae_lens import StandardTrainingSAEConfig, TopKTrainingSAEConfig
from sae_lens.saes.sae import SAEMetadata

import saetools
from saetools.activations import collect_activations
from saetools.evals import evaluate_saes
from saetools.models.text import corpus_tokens
from saetools.saes import load_sae, save_sae

OUT = Path(__file__).parents[1] / "saetools" / "saes" / "bundled"
LAYER = 2
HOOK = f"blocks.{LAYER}.hook_resid_pre"


def configs(d_in: int) -> dict:
    # Training sees activations scaled to unit mean squared norm (sae-lens folds the scale back
    # into the saved weights), so the L1 coefficient means the same as in notebook 02's sweep,
    # where 2-5 gives L0 of about 15-25 at this hook, comparable to k=16.
    common = {"d_in": d_in, "d_sae": 1024, "normalize_activations": "expected_average_only_in",
                  "metadata": SAEMetadata(hook_name=HOOK, model_name="tiny-ioi", context_size=64, prepend_bos=True)}
    return {
        f"resid{LAYER}-topk16": TopKTrainingSAEConfig(k=16, **common),
        f"resid{LAYER}-standard": StandardTrainingSAEConfig(l1_coefficient=3.0, **common),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny-ioi")
    ap.add_argument("--documents", type=int, default=40_000)
    ap.add_argument("--samples", type=int, default=3_000_000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    model = saetools.load_model(args.model, device="cpu")
    tokens, keep = corpus_tokens(model, args.documents, seed=101)
    acts = collect_activations(model, tokens, HOOK, mask=keep)
    eval_spec = {"documents": 3000, "seed": 202, "rows": 1000, "batch_size": 64}  # held-out documents
    eval_tokens = corpus_tokens(model, eval_spec["documents"], seed=eval_spec["seed"])[0][: eval_spec["rows"]]
    print(f"{acts.shape[0]} training activations, {eval_tokens.shape[0]} eval rows")
    OUT.mkdir(parents=True, exist_ok=True)
    saes = {}
    for i, (name, cfg) in enumerate(configs(acts.shape[1]).items()):
        sae = saetools.train_sae(acts, cfg, total_samples=args.samples, batch_size=4096, lr=2e-3, seed=i,
                                 lr_decay_steps=args.samples // 4096 // 5)
        save_sae(sae, OUT / name)
        saes[name] = load_sae(OUT / name)
    table = evaluate_saes(model, saes, eval_tokens, batch_size=eval_spec["batch_size"])
    size = sum(f.stat().st_size for name in saes for f in (OUT / name).iterdir() if f.is_file())
    card = {"model": "tiny-ioi", "hook_name": HOOK, "train_activations": int(acts.shape[0]),
            "train_samples": args.samples, "total_bytes": size,
            "eval": {**eval_spec, "description": "held-out corpus rows (corpus_tokens(model, documents, "
                     "seed)[:rows]), special tokens ignored"},
            "metrics": table.set_index("sae").drop(columns=["hook_name"]).to_dict(orient="index")}
    (OUT / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    cols = ["architecture", "d_sae", "l0", "explained_variance", "loss_recovered_zero", "loss_recovered_mean",
            "kl_spliced", "gamma_saelens", "gamma_proj", "dead_frac"]
    md = ["# Bundled SAEs for tiny-ioi", "",
          (f"Trained by `scripts/build_bundled_saes.py` on {acts.shape[0]:,} activations of `{HOOK}` "
          f"(bundled corpus, BOS/padding excluded), {args.samples:,} samples each. Metrics from "
          f"`saetools.evals.evaluate_saes` on {eval_spec['rows']:,} held-out corpus rows "
          f"({int(table.n_tokens.iloc[0]):,} tokens; definitions in its docstrings). Load one with "
          "`saetools.saes.load_bundled_sae(name)`."), "",
          "```", table.set_index("sae")[cols].to_string(float_format="{:.3f}".format), "```", "",
          f"Total size of the bundled SAE files: {size / 1e6:.2f} MB ({size:,} bytes)."]
    (OUT / "CARD.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
