"""GPT-2's ``gelu_new`` as ``x sigmoid(2u)`` (what ``saetools.load_model`` installs) vs
TransformerLens's ``0.5 x (1 + tanh(u))``: a whole forward pass, on the bundled model and on a
randomly initialised GPT-2-small-shaped model, and with a gradient.

Usage: ``python bench/bench_gelu.py [--reps 5]``. Prints times and ratios (TransformerLens / ours).
"""

from __future__ import annotations

import argparse

import torch
from _timing import best_time
from transformer_lens.utilities.activation_functions import gelu_new as tl_gelu_new

import saetools
from saetools.models.loading import gelu_new, random_gpt2_small


def set_gelu(model, fn) -> None:
    for block in model.blocks:
        block.mlp.act_fn = fn


def bench(model, name: str, batch: int, pos: int, reps: int) -> None:
    tokens = torch.randint(1, model.cfg.d_vocab, (batch, pos), generator=torch.Generator().manual_seed(0))

    def forward():
        with torch.no_grad():
            model(tokens)

    def backward():
        model(tokens[: max(1, batch // 4)]).sum().backward()

    for label, fn in (("forward", forward), ("forward + backward", backward)):
        times = {}
        for impl, act in (("TransformerLens", tl_gelu_new), ("saetools", gelu_new)):
            set_gelu(model, act)
            times[impl] = best_time(fn, reps)
        print(
            f"{name:>12} {label:>18}: TransformerLens {times['TransformerLens']:.3f}s, saetools "
            f"{times['saetools']:.3f}s, ratio {times['TransformerLens'] / times['saetools']:.2f}x"
        )
    set_gelu(model, gelu_new)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()
    bench(saetools.load_model("tiny-ioi", device="cpu"), "tiny-ioi", batch=500, pos=20, reps=a.reps)
    bench(random_gpt2_small(), "gpt2-shaped", batch=8, pos=128, reps=max(1, a.reps // 2))


if __name__ == "__main__":
    main()
