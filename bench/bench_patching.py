"""Benchmark: the full per-head patching sweep over 500 IOI prompts, vectorised vs per prompt.

Both sides compute the same table (``saetools.patching.patch_heads``, denoising ``hook_z`` of
every head at every position); the baseline calls it once per prompt, the vectorised version
once for the whole batch. Prints both times and the ratio (target >= 20x).

    python bench/bench_patching.py [--model tiny-ioi] [--n 500]
"""

from __future__ import annotations

import argparse
import time

import torch
from tqdm.auto import tqdm

from saetools import load_model, patching
from saetools.data import load_words
from saetools.tasks import ioi


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-ioi")
    p.add_argument("--n", type=int, default=500)
    args = p.parse_args(argv)

    model = load_model(args.model)
    names = ioi.single_token_words(model, load_words("names"))
    clean = ioi.render(model, ioi.wang_spec(args.n, seed=0, names=names))
    corrupted = patching.default_corruption(model, clean, seed=1)
    patching.patch_heads(model, clean[:8], corrupted[:8])  # warm-up

    t0 = time.perf_counter()
    fast = patching.patch_heads(model, clean, corrupted)
    t_vec = time.perf_counter() - t0

    t0 = time.perf_counter()
    per_prompt = [patching.patch_heads(model, clean[i : i + 1], corrupted[i : i + 1]).logit_diff.to_numpy()
                  for i in tqdm(range(len(clean)), desc="per-prompt baseline")]
    t_loop = time.perf_counter() - t0

    # The same numbers: the mean over prompts of the per-prompt logit differences.
    slow = torch.tensor(sum(per_prompt) / len(per_prompt))
    torch.testing.assert_close(torch.tensor(fast.logit_diff.to_numpy()), slow, atol=1e-3, rtol=0)
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    print(f"model {model.cfg.model_name}: {n_heads} heads x {len(clean)} prompts, device {model.cfg.device}, "
          f"{torch.get_num_threads()} threads")
    print(f"vectorised:          {t_vec:8.2f} s")
    print(f"per-prompt baseline: {t_loop:8.2f} s")
    print(f"speed-up:            {t_loop / t_vec:8.1f}x (target >= 20x)")
    return t_loop / t_vec


if __name__ == "__main__":
    main()
