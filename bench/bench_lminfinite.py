"""Time and peak CPU memory of one forward pass vs length: full attention vs the lean
LM-Infinite path (Han et al. 2023; saetools.lminfinite.lean_attention). Prints ratios.

    python bench/bench_lminfinite.py [--lengths 512 1024 2048 4096] [--model tiny-rotary]

Peak memory is the high-water mark of CPU tensor bytes allocated during the forward pass, from
the PyTorch profiler's allocator events (saetools.lminfinite.evaluation.peak_cpu_bytes).
"""

from __future__ import annotations

import argparse

from saetools.lminfinite import LMInfiniteConfig
from saetools.lminfinite.evaluation import time_and_memory
from saetools.models.loading import load_model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-rotary")
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--n-global", type=int, default=4)
    a = p.parse_args(argv)
    model = load_model(a.model, device="cpu")
    n_local = model.cfg.train_seq_length or 64
    df = time_and_memory(model, a.lengths, LMInfiniteConfig(n_local=n_local, n_global=a.n_global))
    wide = df.pivot(index="length", columns="path", values=["seconds", "peak_mb"])
    wide["time full/lean", ""] = wide["seconds", "full"] / wide["seconds", "lean"]
    wide["memory full/lean", ""] = wide["peak_mb", "full"] / wide["peak_mb", "lean"]
    wide["lean MiB per 1k tokens", ""] = wide["peak_mb", "lean"] / wide.index * 1000
    print(f"{a.model}: n_local = L_cap = {n_local}, n_global = {a.n_global}, batch 1, CPU")
    print(wide.round(3).to_string())


if __name__ == "__main__":
    main()
