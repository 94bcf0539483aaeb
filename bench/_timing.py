"""What the benchmarks share: a median of wall-clock times (this machine is noisy; a median ignores the
odd slow run that a mean would average in)."""
import time

import numpy as np


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``repeats`` calls of ``fn()``, after ``warmup`` untimed calls (first-call costs:
    allocations, BLAS threads starting, caches filling)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))
