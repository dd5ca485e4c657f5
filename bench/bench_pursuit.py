"""Gradient pursuit: the batched implementation vs the per-token reference loop, same run.

Both encode the same tokens with the same dictionary at the same heterogeneous per-token L0
(docs/engels2024_dark_matter.md), first on a small problem, then on the bundled SAE's decoder
(``resid2-topk16``, 1024 latents x 128 dims) with tiny-ioi activations. The results are
compared (max weight difference) before the times are trusted.

Usage: ``python bench/bench_pursuit.py [--tokens 512] [--variant nonzero]``. Prints both times
and the ratio reference / batched. Times on a shared machine are contended; read the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

import saetools
from saetools.activations import collect_activations
from saetools.diagnostics.dark_matter import position_mask
from saetools.diagnostics.dark_matter.pursuit import (
    effective_decoder,
    gradient_pursuit,
    gradient_pursuit_reference,
)
from saetools.models.text import corpus_tokens


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench(name: str, x, D, b, l0, variant: str) -> None:
    batched, t_batched = timed(lambda: gradient_pursuit(x, D, l0, bias=b, variant=variant, progress=False))
    (ref_w, _), t_ref = timed(lambda: gradient_pursuit_reference(x, D, l0, bias=b, variant=variant))
    diff = (batched.to_dense(D.shape[0]) - ref_w).abs().max().item()
    print(f"{name:34s} tokens={x.shape[0]:5d} d_sae={D.shape[0]:5d} mean L0={l0.double().mean():5.1f} | "
          f"reference {t_ref * 1e3:9.1f} ms | batched {t_batched * 1e3:8.1f} ms | "
          f"ratio {t_ref / t_batched:6.1f}x | max |weight diff| {diff:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--variant", default="nonzero", choices=["nonzero", "persistent"])
    args = ap.parse_args()
    print(f"threads={torch.get_num_threads()} variant={args.variant}")
    g = torch.Generator().manual_seed(0)
    D = torch.randn(256, 32, generator=g)
    D = D / D.norm(dim=1, keepdim=True)
    bench("random dictionary", torch.randn(args.tokens, 32, generator=g), D, None,
          torch.randint(1, 17, (args.tokens,), generator=g), args.variant)

    model = saetools.load_model("tiny-ioi", device="cpu")
    sae = saetools.load_bundled_sae("resid2-topk16")
    tokens, keep = corpus_tokens(model, 200, seed=0)
    x = collect_activations(model, tokens, sae.cfg.metadata.hook_name,
                            mask=position_mask(tokens, drop_first=4, keep=keep))[: args.tokens]
    D, b = effective_decoder(sae)
    with torch.no_grad():
        l0 = (sae.encode(x) != 0).sum(-1)
    # heterogeneous budgets: the SAE's own L0 minus a per-token offset in [0, 8)
    l0 = (l0 - torch.randint(0, 8, l0.shape, generator=g)).clamp(min=0)
    bench("bundled resid2-topk16 decoder", x, D, b, l0, args.variant)


if __name__ == "__main__":
    main()
