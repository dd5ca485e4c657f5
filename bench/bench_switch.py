"""Switch SAE (routed, saetools) vs dense TopK of the same total width (sae-lens): speed and memory.

Same batch, same process, same threads: encoder + decoder forward (no grad) and one training
step (forward, backward, Adam) for

* ``switch``: :class:`saetools.saes.switch.SwitchSAE` / ``SwitchTrainingSAE`` (routed: each token
  runs only its expert's encoder block, sparse decode, sparse backward);
* ``topk``: sae-lens's ``TopKSAE`` / ``TopKTrainingSAE`` with the same ``d_sae`` and ``k`` (dense
  encoder, dense decode) -- the baseline the speed-up is measured against;
* ``masked``: the authors' dense-and-mask Switch computation (forward only;
  :func:`saetools.saes.switch.masked_dense_forward`).

Peak memory is measured per variant in a fresh subprocess (so the allocator starts clean): on
CPU the peak resident-set size during the call minus the RSS before it (psutil, sampled every
0.5 ms); on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation before the call.

Usage: ``OMP_NUM_THREADS=1 python bench/bench_switch.py [--batch 4096 --d-in 768 --d-sae 16384
--experts 8 --k 32 --reps 3 --device cpu|cuda]``. Prints times, speed-ups and memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

import torch
from _timing import best_time  # noqa: E402  (bench/ is on sys.path when run as a script)
from sae_lens import TopKSAE, TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import SAEMetadata, TrainStepInput

from saetools.saes.switch import (
    SwitchSAE,
    SwitchSAEConfig,
    SwitchTrainingSAE,
    SwitchTrainingSAEConfig,
    masked_dense_forward,
)

VARIANTS = ("switch-forward", "topk-forward", "masked-forward", "switch-train", "topk-train")


def build(variant: str, a) -> tuple:
    """``(module, step_fn)`` for a variant; ``step_fn()`` runs the measured call once."""
    common = {"d_in": a.d_in, "d_sae": a.d_sae, "device": a.device, "metadata": SAEMetadata(hook_name="bench")}
    gen = torch.Generator(device=a.device).manual_seed(0)
    x = torch.randn(a.batch, a.d_in, generator=gen, device=a.device)
    with torch.random.fork_rng(devices=[] if a.device == "cpu" else None):
        torch.manual_seed(0)
        if variant.endswith("forward"):
            sae = (TopKSAE(TopKSAEConfig(k=a.k, **common)) if variant.startswith("topk")
                   else SwitchSAE(SwitchSAEConfig(n_experts=a.experts, k=a.k, **common)))
        elif variant == "topk-train":
            sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=a.k, **common))
        else:
            sae = SwitchTrainingSAE(SwitchTrainingSAEConfig(n_experts=a.experts, k=a.k, geometric_median_init=False,
                                                            **common))
    if variant.endswith("forward"):
        sae.eval()
        fn = (lambda: masked_dense_forward(sae, x)) if variant.startswith("masked") else (lambda: sae(x))
        return sae, torch.no_grad()(fn)
    sae.train()
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    step_in = TrainStepInput(sae_in=x, coefficients=sae.get_coefficients(), n_training_steps=1,
                             dead_neuron_mask=torch.zeros(a.d_sae, dtype=torch.bool, device=a.device),
                             is_logging_step=False)

    def step():
        out = sae.training_forward_pass(step_in)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return sae, step


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_memory(variant: str, a) -> int:
    """Bytes of extra memory at the peak of one call (run this in a fresh process)."""
    _, fn = build(variant, a)
    if variant.endswith("train"):
        fn()  # Adam's state is allocated on the first step: measure a steady-state step
    if a.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    import psutil

    proc = psutil.Process()
    before = proc.memory_info().rss
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.0005)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(peak[0], proc.memory_info().rss) - before


def memory_in_subprocess(variant: str, a) -> int:
    args = [sys.executable, __file__, "--memory-of", variant, "--batch", str(a.batch), "--d-in", str(a.d_in),
            "--d-sae", str(a.d_sae), "--experts", str(a.experts), "--k", str(a.k), "--device", a.device]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["bytes"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=16384, help="total width, all experts together")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    ap.add_argument("--memory-of", choices=VARIANTS, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.memory_of:
        print(json.dumps({"bytes": peak_memory(a.memory_of, a)}))
        return
    print(f"device={a.device} threads={torch.get_num_threads()} batch={a.batch} d_in={a.d_in} "
          f"d_sae={a.d_sae} experts={a.experts} (width {a.d_sae // a.experts} each) k={a.k}")
    times = {}
    for variant in VARIANTS:
        _, fn = build(variant, a)
        times[variant] = best_time(fn, a.reps, lambda: _sync(a.device))
        del fn
        print(f"  {variant:15s} {times[variant] * 1e3:9.1f} ms (best of {a.reps})", flush=True)
    fwd = times["topk-forward"] / times["switch-forward"]
    print(f"speed-up, forward (encoder + decoder): switch is {fwd:.1f}x faster than dense TopK "
          f"({times['masked-forward'] / times['switch-forward']:.1f}x faster than the dense-and-mask Switch)")
    print(f"speed-up, training step: switch is {times['topk-train'] / times['switch-train']:.1f}x faster than dense TopK")
    if not a.no_memory:
        mem = {v: memory_in_subprocess(v, a) for v in VARIANTS}
        for v, b in mem.items():
            print(f"  peak extra memory {v:15s} {b / 2**20:9.1f} MiB")
        print(f"memory ratio, forward: dense TopK / switch = {mem['topk-forward'] / max(mem['switch-forward'], 1):.1f}x; "
              f"training step: {mem['topk-train'] / max(mem['switch-train'], 1):.1f}x")
    print("RESULT " + json.dumps({"forward_speedup": fwd, "times_s": times}))


if __name__ == "__main__":
    main()
