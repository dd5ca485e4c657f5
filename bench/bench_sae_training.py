"""SAE training throughput: achieved GFLOP/s vs this machine's matmul GFLOP/s, and our
``train_sae`` vs sae-lens's plain ``SAETrainer`` loop on the same data.

Usage: ``python bench/bench_sae_training.py [--d-in 768 --d-sae 16384 --batch 4096 --steps 5]``
(the GPU target shape; defaults shrink to a CPU-sized job when no GPU is present).

FLOPs per step of a standard SAE, counting only the four dense matmuls:
forward ``2 B d_in d_sae`` (encode) + ``2 B d_in d_sae`` (decode), backward twice that:
``12 B d_in d_sae``.
"""

from __future__ import annotations

import argparse
import time

import torch
from sae_lens import StandardTrainingSAEConfig, TrainingSAE
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes.sae import SAEMetadata
from sae_lens.training.sae_trainer import SAETrainer

from saetools.training import train_sae


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_gflops(b: int, d_in: int, d_sae: int, device: str, reps: int = 5) -> float:
    """Best-of GFLOP/s of the SAE's own encoder matmul shape ``[B, d_in] @ [d_in, d_sae]``."""
    x, w = torch.randn(b, d_in, device=device), torch.randn(d_in, d_sae, device=device)
    x @ w
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        x @ w
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * b * d_in * d_sae / best / 1e9


def timed(fn, device: str) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def main() -> None:
    gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--d-in", type=int, default=768 if gpu else 256)
    ap.add_argument("--d-sae", type=int, default=16384 if gpu else 4096)
    ap.add_argument("--batch", type=int, default=4096 if gpu else 1024)
    ap.add_argument("--steps", type=int, default=50 if gpu else 6)
    args = ap.parse_args()
    device = "cuda" if gpu else "cpu"
    b, d, m = args.batch, args.d_in, args.d_sae
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(b * (args.steps + 2), d, generator=gen).to(device)
    cfg = StandardTrainingSAEConfig(d_in=d, d_sae=m, l1_coefficient=1.0, metadata=SAEMetadata(hook_name="x"),
                                    device=device)
    total = b * args.steps
    flops = 12 * b * d * m * args.steps

    def ours():
        train_sae(acts, cfg, total_samples=total, batch_size=b, lr=1e-4, seed=0, device=device)

    def plain():  # sae-lens's trainer fed by the simplest possible iterator over the same data
        sae = TrainingSAE.from_dict(cfg.to_dict())
        batches = (acts[i * b : (i + 1) * b] for i in range(args.steps + 2))
        SAETrainer(cfg=SAETrainerConfig(total_training_samples=total, train_batch_size_samples=b, lr=1e-4,
                                        lr_end=1e-5, device=device, logger=LoggingConfig(log_to_wandb=False)),
                   sae=sae, data_provider=batches).fit()

    ours()  # warm-up (allocations, kernels)
    peak = matmul_gflops(b, d, m, device)
    t_ours = min(timed(ours, device) for _ in range(2))
    t_plain = min(timed(plain, device) for _ in range(2))
    peak = max(peak, matmul_gflops(b, d, m, device))
    g_ours, g_plain = flops / t_ours / 1e9, flops / t_plain / 1e9
    print(f"device={device} threads={torch.get_num_threads()} d_in={d} d_sae={m} batch={b} steps={args.steps}")
    print(f"matmul peak (same shape)     : {peak:8.1f} GFLOP/s")
    print(f"saetools.train_sae           : {g_ours:8.1f} GFLOP/s  ({t_ours / args.steps * 1e3:.1f} ms/step)")
    print(f"sae-lens SAETrainer, plain   : {g_plain:8.1f} GFLOP/s  ({t_plain / args.steps * 1e3:.1f} ms/step)")
    print(f"ratio ours / matmul peak     : {g_ours / peak:.2f}  (target >= 0.50)")
    print(f"ratio ours / sae-lens plain  : {g_ours / g_plain:.2f}  (target >= 1.00, noise ~5%)")


if __name__ == "__main__":
    main()
