"""How many threads the BLAS library (OpenBLAS, MKL) behind NumPy's matrix products may use.

The convolutions are im2col + one GEMM, so BLAS does most of the arithmetic. With two threads on a
2-core machine, one other busy process is enough for the two BLAS threads to spend their time waiting on
each other: training was seen ~9x slower beside another job and ~3x beside a plain busy loop (issue 9). One
thread cannot fall into that; what it gives up on an idle machine is what ``bench/threads.py`` measures (1 vs
2 threads, quiet and with a competing process). The commands use ``DEFAULT_THREADS`` unless ``--threads``
says otherwise. threadpoolctl sets the count at run time, for whichever
BLAS NumPy was built with (environment variables such as ``OPENBLAS_NUM_THREADS`` only work before NumPy is
imported).
"""
from __future__ import annotations

import contextlib

# The robust choice on a busy 2-core machine (see the module docstring); bench/threads.py gives the figures
# for 1 vs 2 threads, quiet and loaded, from which this default is chosen (bench/RESULTS.md: 2 threads win 19%
# quiet and lose 2.6x beside one busy process; 1 thread loses 17% there).
DEFAULT_THREADS = 1


@contextlib.contextmanager
def blas_threads(n: int | None = DEFAULT_THREADS):
    """Inside the ``with`` block, BLAS uses at most ``n`` threads (None: leave it as it is); restored after."""
    if n is None:
        yield
        return
    if int(n) != n or n < 1:
        raise ValueError(f"the number of BLAS threads must be a positive integer, got {n!r}")
    import numpy  # noqa: F401  (threadpoolctl finds the BLAS libraries that are loaded: NumPy's first)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=int(n), user_api="blas"):
        yield


def blas_thread_counts() -> dict:
    """{BLAS library (e.g. 'openblas'): its current number of threads}, for reports and tests."""
    import numpy  # noqa: F401
    from threadpoolctl import threadpool_info

    return {info["internal_api"]: info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}
