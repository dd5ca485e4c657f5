"""Timing shared by the benchmarks (imported as ``from _timing import best_time``)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_time(fn: Callable[[], object], reps: int, sync: Callable[[], None] = lambda: None) -> float:
    """Best wall time of ``reps`` calls of ``fn`` after one warm-up call; ``sync`` waits for an
    accelerator to finish (e.g. ``torch.cuda.synchronize``)."""
    fn()
    sync()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best
