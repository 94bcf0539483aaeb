"""Benchmark the RoI operators: NumPy RoIPool / RoIWarp / RoIAlign, the emulated CUDA kernels, and
torchvision's CPU roi_align / roi_pool on the same inputs. Prints one JSON object.

    python bench/roi_ops.py                                          # NumPy + emulated kernels
    python bench/roi_ops.py --torch-python /tmp/torchenv/bin/python  # + NumPy vs torchvision, run there
    /tmp/torchenv/bin/python bench/roi_ops.py                        # or all in one interpreter

Cases (float32, the sizes of Mask R-CNN R50-FPN on an 800x1216 image, P2..P5 at strides 4..32):
  box:  1000 RoIs x 256 channels -> 7x7   (the box head's pooler)
  mask:  512 RoIs x 256 channels -> 14x14 (the mask head's pooler)
RoIs: centres uniform over the image, width and height uniform in 16..600 px, clipped to the image;
each RoI pooled from its FPN level (Eq. 1). sampling_ratio=2, aligned=False (torchvision's Mask R-CNN).
Times are medians over --repeat runs of all four levels; backward times the features' gradient only.
"vs_torchvision" times NumPy and torchvision alternately within each repeat, so that both see the same
machine load; "numpy_over_torchvision" < 1 means NumPy is faster.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _timing import median_time   # bench/ is on sys.path: these scripts run as python bench/<name>.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

IMAGE = (800, 1216)
STRIDES = (4, 8, 16, 32)
CASES = {"box": dict(rois=1000, output=7), "mask": dict(rois=512, output=14)}
SAMPLING_RATIO, ALIGNED, CHANNELS = 2, False, 256


def make_inputs(case: str, seed: int = 0) -> dict:
    """Features per level, and each level's RoIs (K_l, 5) as the FPN pooler hands them to the op."""
    from minimaskrcnn.ops.poolers import LevelMapper
    rng = np.random.default_rng(seed)
    H, W = IMAGE
    K = CASES[case]["rois"]
    size = rng.uniform(16, 600, (K, 2))
    centre = rng.uniform(0, 1, (K, 2)) * (W, H)
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, W)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, H)
    rois = np.concatenate([np.zeros((K, 1)), boxes], axis=1).astype(np.float32)
    levels = LevelMapper(2, 5)(rois)
    data = {}
    for i, s in enumerate(STRIDES):
        data[f"features{i}"] = rng.standard_normal((1, CHANNELS, H // s, W // s)).astype(np.float32)
        data[f"rois{i}"] = rois[levels == i]
        data[f"dout{i}"] = rng.standard_normal((int((levels == i).sum()), CHANNELS, CASES[case]["output"],
                                                CASES[case]["output"])).astype(np.float32)
    return data


def time_ours(data: dict, output: int, repeat: int, kernel_repeat: int) -> dict:
    from minimaskrcnn.ops import roi_align, roi_pool, roi_warp
    ops = {"roi_align": (roi_align.roi_align_forward, roi_align.roi_align_backward),
           "roi_warp": (roi_warp.roi_warp_forward, roi_warp.roi_warp_backward),
           "roi_pool": (roi_pool.roi_pool_forward, roi_pool.roi_pool_backward)}
    levels = range(len(STRIDES))
    result = {}
    for impl, reps in (("numpy", repeat), ("kernel", kernel_repeat)):
        for name, (forward, backward) in ops.items():
            if reps == 0:
                continue

            def fwd(forward=forward, impl=impl):
                return [forward(data[f"features{i}"], data[f"rois{i}"], output, 1 / STRIDES[i],
                                SAMPLING_RATIO, ALIGNED, impl=impl) for i in levels]
            caches = [c for _, c in fwd()]  # also warms up (and, for kernels, compiles)

            def bwd(backward=backward, caches=caches):
                return [backward(data[f"dout{i}"], caches[i]) for i in levels]
            result[f"{name}_{impl}"] = {"forward_s": median_time(fwd, reps, warmup=0),
                                        "backward_s": median_time(bwd, reps, warmup=0)}
    return result


def head_to_head(data: dict, output: int, repeat: int) -> dict:
    """NumPy RoIAlign / RoIPool against torchvision's CPU kernels (called through torch.ops, without
    autograd), timed alternately within each repeat so that both see the same machine load; for torch
    with one thread and with its default thread count."""
    import torch
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)

    from minimaskrcnn.ops import roi_align, roi_pool
    tv = torch.ops.torchvision
    levels = range(len(STRIDES))
    F, R, D = ([torch.from_numpy(data[f"{k}{i}"]) for i in levels] for k in ("features", "rois", "dout"))
    scale = [1 / s for s in STRIDES]
    ours = {"roi_align": (roi_align.roi_align_forward, roi_align.roi_align_backward),
            "roi_pool": (roi_pool.roi_pool_forward, roi_pool.roi_pool_backward)}

    def forward(op, i):
        return ours[op][0](data[f"features{i}"], data[f"rois{i}"], output, scale[i], SAMPLING_RATIO, ALIGNED)
    caches = {op: [forward(op, i)[1] for i in levels] for op in ours}

    def backward(op, i):
        return ours[op][1](data[f"dout{i}"], caches[op][i])
    pool_argmax = [tv.roi_pool(F[i], R[i], scale[i], output, output)[1] for i in levels]
    per_level = {
        ("roi_align", "forward_s", "numpy"): lambda i: forward("roi_align", i),
        ("roi_align", "forward_s", "torchvision"):
            lambda i: tv.roi_align(F[i], R[i], scale[i], output, output, SAMPLING_RATIO, ALIGNED),
        ("roi_align", "backward_s", "numpy"): lambda i: backward("roi_align", i),
        ("roi_align", "backward_s", "torchvision"):
            lambda i: tv._roi_align_backward(D[i], R[i], scale[i], output, output, *F[i].shape,
                                             SAMPLING_RATIO, ALIGNED),
        ("roi_pool", "forward_s", "numpy"): lambda i: forward("roi_pool", i),
        ("roi_pool", "forward_s", "torchvision"): lambda i: tv.roi_pool(F[i], R[i], scale[i], output, output),
        ("roi_pool", "backward_s", "numpy"): lambda i: backward("roi_pool", i),
        ("roi_pool", "backward_s", "torchvision"):
            lambda i: tv._roi_pool_backward(D[i], R[i], pool_argmax[i], scale[i], output, output,
                                            *F[i].shape),
    }
    runs = {key: (lambda fn=fn: [fn(i) for i in levels]) for key, fn in per_level.items()}
    result = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        times = {key: [] for key in runs}
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(repeat):
            for key, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
        table = {}
        for (op, phase, impl), ts in times.items():
            table.setdefault(op, {}).setdefault(phase, {})[impl] = float(np.median(ts))
        for phases in table.values():
            for v in phases.values():
                v["numpy_over_torchvision"] = round(v["numpy"] / v["torchvision"], 3)
        result[f"torch_threads_{threads}"] = table
    return result


def head_to_head_in(python: str, data: dict, output: int, repeat: int) -> dict:
    """Run :func:`head_to_head` in another interpreter (one with torch), on the same arrays."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "inputs.npz")
        np.savez(path, **data)
        proc = subprocess.run([python, __file__, "--head-to-head-worker", path, "--output", str(output),
                               "--repeat", str(repeat)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (median)")
    parser.add_argument("--kernel-repeat", type=int, default=3, help="runs of the emulated kernels (0: skip)")
    parser.add_argument("--cases", default="box,mask")
    parser.add_argument("--torch-python", help="an interpreter with torch + torchvision to time them in")
    parser.add_argument("--head-to-head-worker", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.head_to_head_worker:
        data = dict(np.load(args.head_to_head_worker))
        print(json.dumps(head_to_head(data, args.output, args.repeat)))
        return

    report = {"machine": {"python": platform.python_version(), "numpy": np.__version__,
                          "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
              "settings": {"image": IMAGE, "strides": STRIDES, "channels": CHANNELS, "dtype": "float32",
                           "sampling_ratio": SAMPLING_RATIO, "aligned": ALIGNED, "repeat": args.repeat}}
    for case in args.cases.split(","):
        output = CASES[case]["output"]
        data = make_inputs(case)
        entry = {"rois": CASES[case]["rois"], "output_size": output,
                 "rois_per_level": [int(len(data[f"rois{i}"])) for i in range(len(STRIDES))]}
        entry.update(time_ours(data, output, args.repeat, args.kernel_repeat))
        try:
            entry["vs_torchvision"] = head_to_head(data, output, args.repeat)
        except ImportError:
            if args.torch_python:
                entry["vs_torchvision"] = head_to_head_in(args.torch_python, data, output, args.repeat)
        report[case] = entry
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
