"""Head-ablation sweep: runs that start at the ablated head's layer vs whole-model runs, same run.

``saetools.circuits.ablation.head_ablation_sweep`` caches the clean residual stream once and starts each
single-head ablation at that head's layer (the layers before it are unchanged); the baseline
reruns the whole model per head (``head_ablated_logit_diff``), as the sweep did before. Both use
the same mean-ablation values; the per-head logit differences are compared before the times
are trusted.

Usage: ``python bench/bench_ablation.py [--prompts 2000] [--model tiny-ioi]``. Prints both times
and the ratio. Times on a shared machine are contended; read the ratio.
"""

from __future__ import annotations

import argparse
import time

import saetools
from saetools.circuits import ablation
from saetools.data import heldout_names, heldout_templates
from saetools.tasks import ioi


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=2000)
    p.add_argument("--model", default="tiny-ioi")
    a = p.parse_args()
    model = saetools.load_model(a.model)
    spec = ioi.sample_spec(a.prompts, templates=heldout_templates(), names=heldout_names(), seed=2024)
    batch = ioi.render(model, spec)
    ref = ioi.render(model, ablation.abc_counterpart(spec, seed=1, names=heldout_names()))
    reps = ablation.head_z_replacements(model, batch, method="mean", reference=ref)
    heads = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]

    t = time.perf_counter()
    sweep = ablation.head_ablation_sweep(model, batch, method="mean", replacements=reps)
    t_sweep = time.perf_counter() - t
    t = time.perf_counter()
    full = {hd: float(ablation.head_ablated_logit_diff(model, batch, [hd], replacements=reps).mean()) for hd in heads}
    t_full = time.perf_counter() - t

    diff = max(abs(r.logit_diff - full[(r.layer, r.head)]) for r in sweep.itertuples())
    print(f"{a.model}, {a.prompts} prompts, {len(heads)} heads | whole-model runs {t_full:7.2f} s | "
          f"sweep from the head's layer {t_sweep:7.2f} s | ratio {t_full / t_sweep:4.2f}x | "
          f"max |logit diff difference| {diff:.1e}")


if __name__ == "__main__":
    main()
