"""One command for whoever first gets a GPU: ``tools/gpu_check.sh`` (= ``python tools/gpu_check.py``).

On a machine with CuPy and a CUDA device, from a clone of the repository, it runs, and reports each step's result:

1. the GPU-marked tests (``pytest -m gpu``) and the CuPy stand-in's tests (``tests/test_fakecupy.py``);
2. the demo for ``--iters`` iterations (default 300) with ``--device cuda``, in a temporary folder;
3. RoIAlign forward and backward on the box head's sizes: ``impl='kernel'`` (the ``.cu`` kernel through
   ``cupy.RawKernel``) and ``impl='numpy'`` on CuPy arrays, against torchvision's CUDA ``roi_align`` when torch
   is installed (same inputs; also the largest difference of the outputs).

Exit status 0 when every step passed. Not yet run on a real GPU: the first run is the first real test of the
CuPy path outside the stand-in (``minimaskrcnn.testing.fakecupy``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run_tests() -> bool:
    tests = os.path.join(ROOT, "tests")
    if not os.path.isdir(tests):
        print(f"[tests] skipped: no tests/ folder beside the package ({ROOT}); run from a clone")
        return True
    ok = True
    for selection in (["-m", "gpu", tests], [os.path.join(tests, "test_fakecupy.py")]):
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-o", "addopts=-ra", *selection]
        print("[tests]", " ".join(cmd), flush=True)
        ok = subprocess.run(cmd, cwd=ROOT).returncode == 0 and ok
    return ok


def run_demo(iters: int) -> bool:
    with tempfile.TemporaryDirectory(prefix="minimaskrcnn-gpu-") as tmp:
        cmd = [sys.executable, "-m", "minimaskrcnn", "demo", "--device", "cuda", "--iters", str(iters),
               "--data", os.path.join(tmp, "shapes"), "--out", os.path.join(tmp, "run"), "--num-train", "200",
               "--num-val", "20", "--checkpoint-every", str(max(iters // 2, 1))]
        print("[demo]", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        ok = subprocess.run(cmd, cwd=ROOT).returncode == 0
        print(f"[demo] {'passed' if ok else 'FAILED'} in {time.perf_counter() - t0:.0f} s", flush=True)
        return ok


def roi_align_timing(xp, synchronize, repeat: int = 10, rois: int = 1000, channels: int = 256, size=(200, 304),
                     torch_too: bool = True) -> dict:
    """Median seconds of RoIAlign forward and backward (7x7, sampling_ratio 2, 1/4 scale) on ``xp`` arrays, per
    impl, and torchvision's CUDA roi_align when ``torch_too`` and torch with CUDA are present."""
    from minimaskrcnn.backend import to_numpy
    from minimaskrcnn.ops.roi_align import roi_align_backward, roi_align_forward

    rng = np.random.default_rng(0)
    H, W = size
    features = rng.standard_normal((1, channels, H, W)).astype(np.float32)
    xy = rng.uniform(0, [4 * W, 4 * H], (rois, 2))
    boxes = np.concatenate([np.zeros((rois, 1)), xy, xy + rng.uniform(16, 300, (rois, 2))], 1).astype(np.float32)
    dout = rng.standard_normal((rois, channels, 7, 7)).astype(np.float32)
    f, b, d = xp.asarray(features), xp.asarray(boxes), xp.asarray(dout)

    def median(fn):
        fn()
        synchronize()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            synchronize()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    result, outputs = {}, {}
    for impl in ("kernel", "numpy"):
        out, cache = roi_align_forward(f, b, 7, 0.25, 2, False, impl=impl)
        outputs[impl] = to_numpy(out)
        result[impl] = {"forward_s": median(lambda impl=impl: roi_align_forward(f, b, 7, 0.25, 2, False, impl=impl)),
                        "backward_s": median(lambda cache=cache: roi_align_backward(d, cache))}
    result["kernel_vs_numpy_max_abs_diff"] = float(np.abs(outputs["kernel"] - outputs["numpy"]).max())
    try:
        import torch
        import torchvision
        has_cuda = torch_too and torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        result["torchvision"] = "not run (torch with CUDA not installed)"
        return result
    tf = torch.from_numpy(features).cuda().requires_grad_(True)
    tb, td = torch.from_numpy(boxes).cuda(), torch.from_numpy(dout).cuda()
    op = torchvision.ops.roi_align

    def tv_forward():
        with torch.no_grad():
            return op(tf, tb, 7, 0.25, 2, False)

    def tv_backward():
        tf.grad = None
        op(tf, tb, 7, 0.25, 2, False).backward(td)

    result["torchvision"] = {"forward_s": median(tv_forward), "backward_s": median(tv_backward)}
    torch.cuda.synchronize()
    result["torchvision_vs_kernel_max_abs_diff"] = float(np.abs(tv_forward().cpu().numpy() - outputs["kernel"]).max())
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=300, help="demo iterations")
    p.add_argument("--skip", default="", help="comma-separated steps to skip: tests, demo, timing")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))

    from minimaskrcnn.backend import cupy_available, get_module_for_device
    if not cupy_available():
        print("gpu_check: CuPy with a CUDA device is needed (pip install cupy-cuda12x, on a machine with a GPU)")
        return 2
    cupy = get_module_for_device("cuda")

    ok = {}
    if "tests" not in skip:
        ok["tests"] = run_tests()
    if "demo" not in skip:
        ok["demo"] = run_demo(args.iters)
    if "timing" not in skip:
        try:
            timing = roi_align_timing(cupy, cupy.cuda.Device().synchronize)
            print("[timing] RoIAlign 1000 RoIs x 256 channels -> 7x7:", json.dumps(timing, indent=1))
            ok["timing"] = timing["kernel_vs_numpy_max_abs_diff"] < 1e-4
        except Exception as e:        # report it and go on: the other steps' results still count
            print(f"[timing] FAILED: {type(e).__name__}: {e}")
            ok["timing"] = False
    print("gpu_check:", ", ".join(f"{k} {'passed' if v else 'FAILED'}" for k, v in ok.items()))
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
