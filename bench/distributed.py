"""Data-parallel training on this machine: 1 vs 2 ranks, and an estimate for 8 and 64 ranks.

    python bench/distributed.py                       # 20 timed iterations per case
    python bench/distributed.py --iters 2 --warmup 1  # a quick check that it runs

Cases, each timing ``Trainer.step`` of the tiny config (a batch of 4 shapes images at 128 px) after
``--warmup`` untimed iterations, median seconds per iteration:

- ``1 process, 1 thread`` and ``1 process, 2 threads`` (BLAS threads, threadpoolctl);
- ``2 ranks x 1 thread``: ``mpiexec -n 2``, each rank 2 images, SyncBN, gradients summed by one Allreduce per
  bucket. Each rank also times its gradient Allreduce and every other collective (SyncBN, loss counts); a
  collective's time includes waiting for the slower rank, so on a busy machine it is mostly that.

Scaling efficiency (a fixed batch of 4, "strong scaling"): ``t(1 process, 1 thread) / (2 * t(2 ranks))``; 1.0
is perfect. The estimate for N ranks keeps 2 images per rank (the paper's 8 GPUs x 2 images, "weak
scaling"): ``t(N) = t_compute(2 images) + t_allreduce(N) + t_small(N)`` with

- ``t_allreduce = 2 (N-1)/N * P / bandwidth + 2 (N-1) * latency * buckets`` (a ring allreduce of the
  gradients: each rank sends and receives about twice the parameter bytes P per step);
- ``t_small = number of small collectives per step * 2 log2(N) * latency`` (SyncBN's two per BN layer, the
  loss normalisers: latency-bound, a tree of depth log2 N);

for two networks, stated in the output: 10 Gbit/s Ethernet (1.25 GB/s, 50 us) and 100 Gbit/s InfiniBand
(12.5 GB/s, 2 us). Speed-up = N * t_compute(2 images) / t(N), in images per second relative to one rank.
Run it on an otherwise idle machine with at least 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
NETWORKS = {"10 Gbit/s Ethernet": (1.25e9, 50e-6), "100 Gbit/s InfiniBand": (12.5e9, 2e-6)}


def dataset(work):
    from minimaskrcnn.data.coco import CocoDataset
    from minimaskrcnn.data.shapes import ensure_shapes_dataset

    return CocoDataset(ensure_shapes_dataset(os.path.join(work, "shapes"), num_train=32, num_val=1, progress=False),
                       "train")


class TimedComm:
    """A communicator that times its collectives: the gradient buckets apart from the small ones."""

    def __init__(self, comm):
        self.comm, self.rank, self.size = comm, comm.rank, comm.size
        self.seconds = {"gradients": 0.0, "small": 0.0}
        self.calls = {"gradients": 0, "small": 0}

    def allreduce(self, x, op="sum"):
        kind = "gradients" if x.size > 100_000 else "small"
        t = time.perf_counter()
        out = self.comm.allreduce(x, op)
        self.seconds[kind] += time.perf_counter() - t
        self.calls[kind] += 1
        return out

    def __getattr__(self, name):
        return getattr(self.comm, name)


def run_case(work, iters, warmup, threads, comm=None):
    from minimaskrcnn import config
    from minimaskrcnn.engine.distributed import GradientAllreduce, train_iterations
    from minimaskrcnn.model import build_model

    data = dataset(work)
    cfg = config.tiny(num_classes=len(data.class_names), class_names=tuple(data.class_names))
    timed = TimedComm(comm) if comm is not None else None
    _, _, seconds = train_iterations(cfg, data, warmup + iters, timed, threads=threads)
    steps = warmup + iters
    gradients = GradientAllreduce(build_model(cfg).named_parameters(), None)
    out = {"seconds": float(np.median(seconds[warmup:])), "images_per_batch": cfg.images_per_batch,
           "parameter_bytes": gradients.nbytes, "buckets": len(gradients.buckets)}
    if timed is not None:
        out.update({f"{k}_seconds": v / steps for k, v in timed.seconds.items()})
        out.update({f"{k}_calls": v / steps for k, v in timed.calls.items()})
    return out


def estimate(one_rank_seconds, images_per_batch, result2, ranks):
    """Speed-up at ``ranks`` ranks of 2 images each, per network (see the module docstring)."""
    compute = one_rank_seconds * 2 / images_per_batch            # 2 images on one rank, one thread
    P, buckets, small = result2["parameter_bytes"], result2["buckets"], result2["small_calls"]
    rows = {}
    for net, (bandwidth, latency) in NETWORKS.items():
        allreduce = 2 * (ranks - 1) / ranks * P / bandwidth + 2 * (ranks - 1) * latency * buckets
        small_time = small * 2 * np.log2(ranks) * latency
        t = compute + allreduce + small_time
        rows[net] = {"seconds": t, "allreduce_s": allreduce, "small_collectives_s": small_time,
                     "speedup": ranks * compute / t}
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--work", default=None, help="folder for the generated data (default: a temporary one)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)   # one rank under mpiexec
    p.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    if args.worker:
        from minimaskrcnn.engine.distributed import get_communicator
        comm = get_communicator()
        result = run_case(args.work, args.iters, args.warmup, 1, comm)
        if comm.rank == 0:
            print("RESULT " + json.dumps(result))
        return
    work = args.work or tempfile.mkdtemp(prefix="bench_distributed_")
    dataset(work)                                  # generated once, before the timed runs
    one_1 = run_case(work, args.iters, args.warmup, 1)
    one_2 = run_case(work, args.iters, args.warmup, 2)
    mpiexec = shutil.which("mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
    if mpiexec is None:
        sys.exit("bench/distributed.py: needs mpiexec (pip install -e .[mpi])")
    p2 = subprocess.run([mpiexec, "-n", "2", sys.executable, os.path.abspath(__file__), "--worker", "--work", work,
                         "--iters", str(args.iters), "--warmup", str(args.warmup)], capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=ROOT))
    lines = [line for line in p2.stdout.splitlines() if line.startswith("RESULT ")]
    if p2.returncode or not lines:
        sys.exit(f"bench/distributed.py: the 2-rank run failed:\n{p2.stdout}{p2.stderr}")
    two = json.loads(lines[0][len("RESULT "):])
    t1, t12, t2 = one_1["seconds"], one_2["seconds"], two["seconds"]
    print(f"tiny config, batch {one_1['images_per_batch']}, {args.iters} timed iterations (median s/iteration)")
    print(f"  1 process, 1 BLAS thread   {t1:8.3f}")
    print(f"  1 process, 2 BLAS threads  {t12:8.3f}   speed-up {t1 / t12:4.2f}")
    print(f"  2 ranks x 1 BLAS thread    {t2:8.3f}   speed-up {t1 / t2:4.2f}, scaling efficiency "
          f"{t1 / (2 * t2):4.2f}")
    print(f"    per step: gradient allreduce {two['gradients_seconds'] * 1e3:.2f} ms "
          f"({two['parameter_bytes'] / 1e6:.2f} MB in {two['buckets']} bucket(s)), "
          f"{two['small_calls']:.0f} small collectives {two['small_seconds'] * 1e3:.2f} ms")
    estimates = {n: estimate(t1, one_1["images_per_batch"], two, n) for n in (8, 64)}
    print("estimate, 2 images per rank (weak scaling), from the measured compute and the gradient bytes:")
    for n, rows in estimates.items():
        for net, r in rows.items():
            print(f"  {n:3d} ranks, {net:22s} {r['seconds']:7.3f} s/iteration (allreduce {r['allreduce_s'] * 1e3:6.2f} "
                  f"ms, small collectives {r['small_collectives_s'] * 1e3:5.2f} ms): speed-up {r['speedup']:5.1f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"one_process_1_thread": one_1, "one_process_2_threads": one_2, "two_ranks": two,
                       "estimates": estimates, "networks": NETWORKS}, f, indent=1)


if __name__ == "__main__":
    main()
