"""The full profiles' heavy steps, timed on the device at hand (a GPU when present):

1. Makelov et al.'s per-node SAEs: 35 nodes of GPT-2 small's head width trained as one batch
   (``train_sae_batch``, what ``train_node_saes`` does) vs one after another -- the ratio;
2. GPT-2-small forward passes (random weights): tokens per second;
3. one training step of a GPT-2-width TopK SAE: FLOP rate.

The measured rates then replace the estimates' assumed ones (``saetools.experiments.budget``),
giving each full profile's time on this device next to the A100 estimate.

Usage: ``python bench/bench_full_profiles.py [--reps 3]``.
"""

from __future__ import annotations

import argparse
import importlib

import torch
from _timing import best_time

from saetools.dictionaries.ioi_saes import IOISAEConfig, train_sae_batch
from saetools.experiments import EXPERIMENTS, budget
from saetools.experiments.protocol import tf32_on_cuda
from saetools.models.configs import gpt2_small_config
from saetools.models.loading import random_gpt2_small


def node_saes(device: str, reps: int, sync) -> tuple[float, float, IOISAEConfig]:
    """Seconds per epoch for 35 node SAEs (d = 64): batched, and one after another."""
    n_nodes, n, d = 35, 2048 if device == "cpu" else 20_000, 64
    gen = torch.Generator().manual_seed(0)
    acts = [torch.randn(n, d, generator=gen).to(device) for _ in range(n_nodes)]
    cfg = IOISAEConfig(epochs=2, resample_at=(), batch_size=512)
    batched = best_time(lambda: train_sae_batch(acts, "topk", cfg, nodes=[None] * n_nodes,
                                                seeds=list(range(n_nodes))), reps, sync)
    one_by_one = best_time(lambda: [train_sae_batch([a], "topk", cfg, nodes=[None], seeds=[i])
                                    for i, a in enumerate(acts)], 1, sync)
    return batched / cfg.epochs * (20_000 / n), one_by_one / cfg.epochs * (20_000 / n), cfg


def forward_rate(device: str, reps: int, sync) -> float:
    """GPT-2-small tokens per second, forward only."""
    model = random_gpt2_small(device=device)
    batch, pos = (8, 128) if device == "cpu" else (32, 1024)
    tokens = torch.randint(0, 50257, (batch, pos), device=device)

    def run():
        with torch.no_grad():
            model(tokens)

    return batch * pos / best_time(run, reps, sync)


def sae_flop_rate(device: str, reps: int, sync) -> float:
    """FLOPs per second of a TopK SAE training step at GPT-2 width (d_in 768, d_sae 24,576)."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    d_in, d_sae, batch = 768, 24_576, 256 if device == "cpu" else 4096
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=32)).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    x = torch.randn(batch, d_in, device=device)

    def step():
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None,
                                                       n_training_steps=0, is_logging_step=False))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return 12 * d_in * d_sae * batch / best_time(tf32_on_cuda(step), reps, sync)  # as the experiments run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    batched, one_by_one, cfg = node_saes(device, args.reps, sync)
    print(f"35 node SAEs, one epoch of 20,000 prompts: batched {batched:.3f} s, one after another "
          f"{one_by_one:.3f} s (x{one_by_one / batched:.1f})")
    rate = forward_rate(device, args.reps, sync)
    flops = sae_flop_rate(device, args.reps, sync)
    print(f"GPT-2-small forward: {rate:,.0f} tokens/s; SAE training: {flops / 1e12:.2f} TFLOP/s")

    dims = budget.model_dims(gpt2_small_config())
    print(f"\n{'notebook':40s} {'A100 estimate':>14s} {'this device':>14s}")
    for i, exp in enumerate(EXPERIMENTS[:-1]):  # LM-Infinite's full profile runs on tiny-rotary
        full = importlib.import_module(f"saetools.experiments.{exp}").Config.profile("full")
        work = budget.workload(exp, full, dims)
        a100, _ = budget.estimate(work, dims, budget.GPUS["A100"])
        if exp == "makelov2024_supervised_dictionaries":  # the measured epochs of the batched SAEs
            train = len(full.saes.variants) * full.saes.epochs * batched
        else:  # the measured FLOP rate, and the estimate's per-step overhead on a GPU
            train = work.train_flops / flops + (work.train_steps * budget.STEP_OVERHEAD_S if device != "cpu" else 0)
        here = work.forward_tokens / rate + train
        print(f"{i:02d} {exp:37s} {a100 / 60:11.1f} min {here / 60:11.1f} min")


if __name__ == "__main__":
    main()
