"""Benchmark: the full per-head patching sweep over 500 IOI prompts, vectorised vs per prompt.

Both sides compute the same table (``saetools.circuits.patching.patch_heads``, denoising ``hook_z`` of
every head at every position); the baseline calls it once per prompt -- the loop a user would
write -- the vectorised version once for the whole batch. Both go through the same code (the
incremental path of ``saetools.circuits.incremental`` where the model supports it), so the ratio
measures batching alone. Prints wall and CPU time of both sides, the ratio (target >= 20x) and
the matrix-product FLOPs of each side (``torch.utils.flop_counter``, counted in extra untimed
runs; the per-prompt side is extrapolated from its first ``--flop-sample`` prompts).

CPU time (``time.process_time``) is printed next to wall time because on a shared machine
wall time also counts the time other processes hold the cores. Run with ``OMP_NUM_THREADS=1``
for a fair single-core comparison.

    python bench/bench_patching.py [--model tiny-ioi] [--n 500]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from saetools import load_model
from saetools.circuits import incremental, patching
from saetools.data import load_words
from saetools.tasks import ioi


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-ioi")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--flop-sample", type=int, default=25, help="per-prompt calls counted for FLOPs")
    args = p.parse_args(argv)

    model = load_model(args.model)
    names = ioi.single_token_words(model, load_words("names"))
    clean = ioi.render(model, ioi.wang_spec(args.n, seed=0, names=names))
    corrupted = patching.default_corruption(model, clean, seed=1)
    patching.patch_heads(model, clean[:8], corrupted[:8])  # warm-up

    fast, t_vec, c_vec = _timed(lambda: patching.patch_heads(model, clean, corrupted))

    def loop():
        return [patching.patch_heads(model, clean[i : i + 1], corrupted[i : i + 1]).logit_diff.to_numpy()
                for i in tqdm(range(len(clean)), desc="per-prompt baseline")]

    per_prompt, t_loop, c_loop = _timed(loop)

    # The same numbers: the mean over prompts of the per-prompt logit differences.
    slow = torch.tensor(sum(per_prompt) / len(per_prompt))
    torch.testing.assert_close(torch.tensor(fast.logit_diff.to_numpy()), slow, atol=1e-3, rtol=0)

    f_vec = _flops(lambda: patching.patch_heads(model, clean, corrupted))
    k = min(args.flop_sample, len(clean))
    f_loop = _flops(lambda: [patching.patch_heads(model, clean[i : i + 1], corrupted[i : i + 1])
                             for i in range(k)]) * len(clean) / k

    n_heads = model.cfg.n_layers * model.cfg.n_heads
    path = incremental.unsupported(model) or "incremental"
    print(f"model {model.cfg.model_name}: {n_heads} heads x {len(clean)} prompts, device {model.cfg.device}, "
          f"{torch.get_num_threads()} threads, path: {path}")
    print(f"vectorised:          {t_vec:8.2f} s wall {c_vec:8.2f} s CPU  {f_vec / 1e9:7.1f} GFLOP")
    print(f"per-prompt baseline: {t_loop:8.2f} s wall {c_loop:8.2f} s CPU  {f_loop / 1e9:7.1f} GFLOP "
          f"(extrapolated from {k} prompts)")
    print(f"speed-up:            {t_loop / t_vec:8.1f}x wall {c_loop / c_vec:6.1f}x CPU (target >= 20x)")
    print(f"vectorised throughput: {f_vec / 1e9 / c_vec:.1f} GFLOP per CPU second")
    return t_loop / t_vec


if __name__ == "__main__":
    main()
