"""Splice overhead: a forward pass with one SAE spliced in vs without, on the bundled model
and on a randomly initialised GPT-2-small-shaped model.

Usage: ``python bench/bench_splice.py [--reps 5]``. Prints times and ratios (spliced / clean).
"""

from __future__ import annotations

import argparse

import torch
from _timing import best_time
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

import saetools
from saetools.models.loading import random_gpt2_small


@torch.no_grad()
def bench(model, name: str, d_sae: int, batch: int, pos: int, reps: int) -> None:
    hook = f"blocks.{model.cfg.n_layers // 2}.hook_resid_pre"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        sae = StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook)))
        tokens = torch.randint(1, model.cfg.d_vocab, (batch, pos))
    clean = best_time(lambda: model(tokens), reps)
    out = {}
    for err in (False, True):
        with saetools.splice(model, sae, use_error_term=err):
            out[err] = best_time(lambda: model(tokens), reps)
    sae_flops = 4 * batch * pos * model.cfg.d_model * d_sae * (1 + 1)  # with error: encode+decode twice
    print(f"{name:18s} d_sae={d_sae:6d} tokens={batch * pos:5d}  clean {clean * 1e3:8.1f} ms | "
          f"spliced {out[False] * 1e3:8.1f} ms ({out[False] / clean:.2f}x) | "
          f"+error term {out[True] * 1e3:8.1f} ms ({out[True] / clean:.2f}x); SAE matmuls with error "
          f"{sae_flops / 1e9:.1f} GFLOP")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--model", default="tiny-ioi")
    args = ap.parse_args()
    print(f"threads={torch.get_num_threads()}")
    bench(saetools.load_model(args.model, device="cpu"), "tiny-ioi", 1024, 32, 64, args.reps)
    bench(random_gpt2_small(), "gpt2-small (rand)", 16384, 4, 128, max(2, args.reps // 2))


if __name__ == "__main__":
    main()
