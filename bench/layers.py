"""Throughput of our conv2d (forward and backward) against NumPy's own float32 GEMM, and against torch's
conv (oneDNN) where torch is installed, on the same machine and at the same thread count.

    python bench/layers.py [--repeats 9] [--threads 1 2] [--quick]
    /path/to/python-with-torch bench/layers.py     # adds torch's times (pip install torch==2.14.1)

Prints JSON. For each thread count (BLAS threads for us, set with threadpoolctl; ``torch.set_num_threads``
for torch) and each ResNet-like shape: the conv's GFLOP/s (2 * C_out * C_in/g * kh * kw * N * Ho * Wo
multiply-adds per forward; twice that for backward, which computes both dx and dw), the GFLOP/s of
``A @ B`` for the very GEMM the conv reduces to (C_out x K times K x N*Ho*Wo), the ratios, and with torch its
forward and backward times (``torch.autograd.grad`` of the same output for x, w and b) and ours / torch's
forward + backward. A large square GEMM gives the machine's peak for reference. All figures are medians of
``--repeats`` runs.

Timing that GEMM first also warms glibc's malloc: freeing its 16 MiB result raises the mmap threshold, so the
convolutions after it (ours and torch's) reuse memory instead of faulting in fresh pages for every array, much
as in a training process (``minimaskrcnn/engine/allocator.py``). Without it our 64-channel case took 28 ms
instead of 21.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import numpy as np
from _timing import median_time   # bench/ is on sys.path: these scripts run as python bench/<name>.py

try:                                # optional: torch's conv beside ours
    import torch
except ImportError:
    torch = None

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from minimaskrcnn.engine.threads import blas_threads  # noqa: E402
from minimaskrcnn.nn.functional import conv2d_backward, conv2d_forward  # noqa: E402

CASES = [
    # name, N, C_in, C_out, k, stride, H(=W)
    ("3x3 64->64 @64x64", 2, 64, 64, 3, 1, 64),
    ("3x3 256->256 @32x32", 2, 256, 256, 3, 1, 32),
    ("1x1 256->64 @64x64", 2, 256, 64, 1, 1, 64),
    ("3x3/2 128->256 @64x64", 2, 128, 256, 3, 2, 64),
]


def torch_times(N, C, Co, k, s, H, reps, threads):
    """torch's conv2d forward and backward (dx, dw, db) seconds on float32, or None without torch."""
    if torch is None:
        return None
    torch.set_num_threads(threads)
    conv = torch.nn.Conv2d(C, Co, k, s, k // 2)
    x = torch.randn(N, C, H, H, requires_grad=True)
    with torch.no_grad():
        t_fwd = median_time(lambda: conv(x), reps)
    y = conv(x)
    dy = torch.randn_like(y)
    t_bwd = median_time(lambda: torch.autograd.grad(y, (x, conv.weight, conv.bias), dy, retain_graph=True), reps)
    return t_fwd, t_bwd


def measure(threads, reps, rng):
    n = 2048
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    peak = 2 * n ** 3 / median_time(lambda: A @ B, reps) / 1e9

    results = []
    for name, N, C, Co, k, s, H in CASES:
        x = rng.standard_normal((N, C, H, H), dtype=np.float32)
        w = rng.standard_normal((Co, C, k, k), dtype=np.float32) * 0.05
        b = rng.standard_normal(Co, dtype=np.float32)
        p = k // 2
        out, cache = conv2d_forward(x, w, b, s, p)
        P = out.shape[2] * out.shape[3]
        K = C * k * k
        flops = 2.0 * Co * K * N * P
        t_fwd = median_time(lambda: conv2d_forward(x, w, b, s, p), reps)
        dout = rng.standard_normal(out.shape, dtype=np.float32)
        t_bwd = median_time(lambda: conv2d_backward(dout, cache), reps)
        Wm = rng.standard_normal((Co, K), dtype=np.float32)
        cols = rng.standard_normal((K, N * P), dtype=np.float32)
        gemm = flops / median_time(lambda: Wm @ cols, reps) / 1e9
        fwd, bwd = flops / t_fwd / 1e9, 2 * flops / t_bwd / 1e9
        row = {"case": name, "fwd_ms": round(t_fwd * 1e3, 2), "bwd_ms": round(t_bwd * 1e3, 2),
               "fwd_gflops": round(fwd, 1), "bwd_gflops": round(bwd, 1),
               "same_shape_gemm_gflops": round(gemm, 1),
               "fwd_vs_same_gemm": round(fwd / gemm, 3), "bwd_vs_same_gemm": round(bwd / gemm, 3),
               "fwd_vs_peak_gemm": round(fwd / peak, 3), "bwd_vs_peak_gemm": round(bwd / peak, 3)}
        theirs = torch_times(N, C, Co, k, s, H, reps, threads)
        if theirs is not None:
            row.update(torch_fwd_ms=round(theirs[0] * 1e3, 2), torch_bwd_ms=round(theirs[1] * 1e3, 2),
                       ours_vs_torch_fwd_bwd=round((t_fwd + t_bwd) / sum(theirs), 3))
        results.append(row)
    report = {"threads": threads, "peak_gemm_gflops_2048": round(peak, 1), "cases": results,
              "median_fwd_vs_same_gemm": round(float(np.median([r["fwd_vs_same_gemm"] for r in results])), 3),
              "median_bwd_vs_same_gemm": round(float(np.median([r["bwd_vs_same_gemm"] for r in results])), 3)}
    if all("ours_vs_torch_fwd_bwd" in r for r in results):
        report["ours_vs_torch_fwd_bwd_3x3_stride1"] = [r["ours_vs_torch_fwd_bwd"] for r in results
                                                      if r["case"].startswith("3x3 ")]
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count()],
                    help="thread counts to measure at (default: 1 and every core)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke test")
    args = ap.parse_args()
    reps = 2 if args.quick else args.repeats
    rng = np.random.default_rng(0)
    runs = []
    for threads in dict.fromkeys(args.threads):
        with blas_threads(threads):
            runs.append(measure(threads, reps, rng))
    report = {
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
                    "torch": None if torch is None else torch.__version__},
        "repeats": reps,
        "runs": runs,
        "goal": "forward >= 0.70 and backward >= 0.60 of GEMM throughput; 3x3 forward + backward <= 1.2x torch's",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
