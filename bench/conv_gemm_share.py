"""How much of the Winograd conv path's time is its GEMMs, at 1 and 2 BLAS threads.

    python bench/conv_gemm_share.py [--repeats 15] [--threads 1 2]

For the two 3x3 stride-1 cases of ``bench/layers.py`` that take ``minimaskrcnn/nn/_conv_winograd.py``: the median
time of the path's 12 GEMMs alone (4 forward, 4 for dw, 4 for dx: the very products, on the path's own
operands) against its whole forward + backward, and the rest (transforms, sums, weight reshapes: NumPy
passes, which run on one thread whatever BLAS uses). Also whether the input transform, the largest of those
passes, gains from running on two Python threads (NumPy releases the GIL inside its loops). Prints JSON.

malloc is set as the commands set it (``engine/allocator.py``): with glibc's defaults this script's first
calls pay page faults on every fresh array, which ``bench/layers.py`` avoids by the large GEMM it times first.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from _timing import median_time   # bench/ is on sys.path: these scripts run as python bench/<name>.py

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from minimaskrcnn.engine.allocator import keep_freed_memory  # noqa: E402
from minimaskrcnn.engine.threads import blas_threads  # noqa: E402
from minimaskrcnn.nn import _conv_winograd as wg  # noqa: E402

CASES = [("3x3 64->64 @64x64", 2, 64, 64), ("3x3 256->256 @32x32", 2, 256, 32)]   # name, N, C, H (= W)


def transform_on_two_threads(pool, rows, g):
    """:func:`wg.input_transform` of each half of the channels, one half on another thread: the same work,
    in two arrays (4, 3, C/2, L)."""
    C = rows.shape[1]
    other = pool.submit(wg.input_transform, rows[:, C // 2:], g)
    first = wg.input_transform(rows[:, :C // 2], g)
    return [v.reshape(4, 3, -1, g.L) for v in (first, other.result())]


def measure(name, N, C, H, reps, rng, pool):
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    w = rng.standard_normal((C, C, 3, 3), dtype=np.float32) * 0.05
    b = rng.standard_normal(C, dtype=np.float32)
    assert wg.use_winograd(x.shape, w.shape, (1, 1), (1, 1), (1, 1), 1), name
    out, cache = wg.conv2d_forward_winograd(x, w, b, (1, 1))
    dout = rng.standard_normal(out.shape, dtype=np.float32)
    full = median_time(lambda: wg.conv2d_backward_winograd(dout, wg.conv2d_forward_winograd(x, w, b, (1, 1))[1]),
                       reps)
    U = wg.weight_transform(np.ascontiguousarray(w.transpose(2, 0, 3, 1)))
    V, g = wg._transformed(x, (1, 1))
    V_dout, _ = wg._transformed(dout, (1, 1))
    dm = rng.standard_normal((4, C, g.L), dtype=np.float32)
    M = np.empty((4, C, g.L), dtype=np.float32)

    def gemms():
        for k in range(4):
            np.matmul(U[k], V[k], out=M[k])          # forward
            np.matmul(V[k], dm[k].T)                 # dw
            np.matmul(U[k], V_dout[k], out=M[k])     # dx (same shapes: C_in = C_out here)

    t_gemm = median_time(gemms, reps)
    rows = wg.split_rows(x, (1, 1), g)
    halves = np.concatenate(transform_on_two_threads(pool, rows, g), axis=2).reshape(4, 3 * C, g.L)
    assert np.array_equal(halves, wg.input_transform(rows, g))
    t_serial = median_time(lambda: wg.input_transform(rows, g), reps)
    t_two = median_time(lambda: transform_on_two_threads(pool, rows, g), reps)
    return {"case": name, "fwd_bwd_ms": round(full * 1e3, 2), "gemms_ms": round(t_gemm * 1e3, 2),
            "rest_ms": round((full - t_gemm) * 1e3, 2), "gemm_share": round(t_gemm / full, 3),
            "input_transform_ms": round(t_serial * 1e3, 3), "input_transform_two_threads_ms": round(t_two * 1e3, 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    keep_freed_memory()
    rng = np.random.default_rng(0)
    runs = []
    with ThreadPoolExecutor(1) as pool:
        for threads in args.threads:
            with blas_threads(threads):
                runs.append({"threads": threads,
                             "cases": [measure(*case, args.repeats, rng, pool) for case in CASES]})
    print(json.dumps({"repeats": args.repeats, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
