"""top-AFA training step time vs a sae-lens TopK step at the same width, in the same process.

Usage: ``python bench/bench_topafa.py [--d-in 768 --d-sae 16384 --batch 4096 --steps 20 --k 64]``
(defaults shrink to a CPU-sized job when no GPU is present). Target: top-AFA step <= 1.5x TopK.

One step = ``training_forward_pass`` (encode, decode, losses incl. AuxK with a fixed set of dead
latents) + backward + Adam, exactly what sae-lens's ``SAETrainer`` runs per batch, minus its
bookkeeping (identical for both). The data are correlated Gaussians, so top-AFA's per-token k
comes from the AFA rule (it is printed: the step cost grows with k); TopK uses ``--k``.
Both run alternately, best of ``--repeats`` timings each, so contention hits them alike.
"""

from __future__ import annotations

import argparse
import time

import torch
from sae_lens import TopKTrainingSAEConfig, TrainingSAE
from sae_lens.saes.sae import SAEMetadata, TrainStepInput

import saetools.saes  # noqa: F401  (registers topafa)
from saetools.saes.topafa import TopAFATrainingSAEConfig


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make(cfg, seed: int) -> tuple[TrainingSAE, torch.optim.Optimizer]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sae = TrainingSAE.from_dict(cfg.to_dict())
    sae.to(cfg.device).train()
    return sae, torch.optim.Adam(sae.parameters(), lr=1e-4)


def run_steps(sae, opt, batches, dead, device: str) -> tuple[float, float]:
    """Seconds for all ``batches``, and the mean L0 of the last one."""
    sync(device)
    t = time.perf_counter()
    for x in batches:
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={"afa": 1 / 32}, dead_neuron_mask=dead,
                                                       n_training_steps=0, is_logging_step=False))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t, (out.feature_acts != 0).sum(-1).float().mean().item()


def main() -> None:
    gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--d-in", type=int, default=768 if gpu else 128)
    ap.add_argument("--d-sae", type=int, default=16384 if gpu else 4096)
    ap.add_argument("--batch", type=int, default=4096 if gpu else 1024)
    ap.add_argument("--steps", type=int, default=20 if gpu else 5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--k", type=int, default=64, help="TopK's k")
    ap.add_argument("--standardise", action="store_true", help="top-AFA with per-token standardisation")
    args = ap.parse_args()
    device = "cuda" if gpu else "cpu"
    b, d, m = args.batch, args.d_in, args.d_sae
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(d, d, generator=gen) / d**0.5
    batches = [(torch.randn(b, d, generator=gen) @ mix + 0.1).to(device) for _ in range(args.steps)]
    dead = torch.zeros(m, dtype=torch.bool, device=device)
    dead[: m // 8] = True  # AuxK active in both
    meta = SAEMetadata(hook_name="x")
    topk, opt_k = make(TopKTrainingSAEConfig(d_in=d, d_sae=m, k=args.k, metadata=meta, device=device), 0)
    afa, opt_a = make(TopAFATrainingSAEConfig(d_in=d, d_sae=m, metadata=meta, device=device,
                                              normalize_activations="layer_norm" if args.standardise else "none"), 0)
    run_steps(topk, opt_k, batches[:2], dead, device)  # warm-up
    run_steps(afa, opt_a, batches[:2], dead, device)
    t_k, t_a, k_afa = float("inf"), float("inf"), 0.0
    for _ in range(args.repeats):
        t_k = min(t_k, run_steps(topk, opt_k, batches, dead, device)[0])
        t, k_afa = run_steps(afa, opt_a, batches, dead, device)
        t_a = min(t_a, t)
    ms_k, ms_a = t_k / args.steps * 1e3, t_a / args.steps * 1e3
    print(f"device={device} threads={torch.get_num_threads()} d_in={d} d_sae={m} batch={b} steps={args.steps}")
    print(f"TopK k={args.k} step            : {ms_k:8.2f} ms")
    print(f"top-AFA step (mean k {k_afa:6.1f}) : {ms_a:8.2f} ms")
    print(f"ratio top-AFA / TopK           : {ms_a / ms_k:.2f}  (target <= 1.50)")


if __name__ == "__main__":
    main()
