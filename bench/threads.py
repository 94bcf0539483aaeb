"""BLAS threads and a busy machine: the tiny config's training iteration with 1 and 2 BLAS threads, on a quiet
machine and beside competing busy processes. The figures choose ``minimaskrcnn.engine.threads.DEFAULT_THREADS``.

    python bench/threads.py                       # 30 timed iterations per case, 1 competing process
    python bench/threads.py --iters 2 --warmup 1  # a quick check that it runs

Run it on an otherwise idle machine: the "quiet" rows are only quiet if nothing else runs. Each case times
``Trainer.step`` (forward, backward, SGD update; a batch of 4 shapes images at 128 px from the DataLoader) after
``--warmup`` untimed iterations, with the thread count set by threadpoolctl, and reports the median seconds.
The cases are interleaved (quiet 1, quiet 2, loaded 1, loaded 2 per round) so that a drift of the machine's speed
spreads over all of them. The competing processes are plain Python busy loops, one per ``--busy``.
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

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)


def make_trainer(work):
    from minimaskrcnn import config
    from minimaskrcnn.data.coco import CocoDataset
    from minimaskrcnn.data.shapes import make_shapes_dataset
    from minimaskrcnn.data.transforms import DataLoader
    from minimaskrcnn.engine.trainer import Trainer
    from minimaskrcnn.model import build_model

    root = make_shapes_dataset(os.path.join(work, "shapes"), num_train=32, num_val=0, progress=False)
    data = CocoDataset(root, "train")
    cfg = config.tiny(num_classes=len(data.class_names), class_names=tuple(data.class_names))
    loader = DataLoader(data, cfg.images_per_batch, seed=cfg.seed, hflip_prob=cfg.hflip_prob)
    return Trainer(build_model(cfg), loader, os.path.join(work, "run"), checkpoint_every=0, progress=False)


def time_steps(trainer, threads, iters, warmup):
    from minimaskrcnn.engine.threads import blas_threads

    times = []
    with blas_threads(threads):
        for i in range(warmup + iters):
            batch = next(trainer.loader)
            t = time.perf_counter()
            trainer.step(*batch)
            if i >= warmup:
                times.append(time.perf_counter() - t)
    return times


def busy_processes(n):
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="BLAS thread counts to compare")
    ap.add_argument("--iters", type=int, default=30, help="timed iterations per case and round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed iterations before each case")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds over all cases")
    ap.add_argument("--busy", type=int, default=1, help="competing busy processes in the loaded cases")
    args = ap.parse_args()

    times = {(load, n): [] for load in ("quiet", "loaded") for n in args.threads}
    with tempfile.TemporaryDirectory() as work:
        trainer = make_trainer(work)
        trainer.model.train()
        for _ in range(args.rounds):
            for load in ("quiet", "loaded"):
                procs = busy_processes(args.busy) if load == "loaded" else []
                try:
                    for n in args.threads:
                        times[load, n] += time_steps(trainer, n, args.iters, args.warmup)
                finally:
                    for p in procs:
                        p.kill()
                        p.wait()
    medians = {f"{load}, {n} thread{'s' * (n > 1)}": round(float(np.median(t)), 4) for (load, n), t in times.items()}
    print(f"tiny config, training iteration (batch of 4 at 128 px), median seconds over {args.rounds} x "
          f"{args.iters} iterations; cpu_count {os.cpu_count()}, loaded = {args.busy} busy process(es)")
    print(f"{'BLAS threads':>12} {'quiet':>9} {'loaded':>9} {'loaded/quiet':>13}")
    for n in args.threads:
        q, b = float(np.median(times["quiet", n])), float(np.median(times["loaded", n]))
        print(f"{n:>12} {q:>9.3f} {b:>9.3f} {b / q:>13.2f}")
    print(json.dumps({"cpu_count": os.cpu_count(), "busy": args.busy, "iters": args.iters, "rounds": args.rounds,
                      "median_seconds_per_iter": medians}))


if __name__ == "__main__":
    main()
