"""Where a training iteration's time goes: NMS, conv, RoIAlign, linear, norm and the rest.

    python bench/profile_train.py                          # tiny, 20 iterations, batch of 4 shapes images at 128 px
    python bench/profile_train.py --config resnet18_fpn --iters 5
    python bench/profile_train.py --clock cpu              # CPU time of this process (steadier on a busy machine)
    python bench/profile_train.py --cprofile 25            # also cProfile's 25 most expensive functions (self time)
    python bench/profile_train.py --losses losses.json     # also write every iteration's losses (A/B exactness)
    python bench/profile_train.py --weights runs/demo/last.npz   # a trained model's iteration (see below)
    python bench/profile_train.py --default-malloc         # glibc's malloc untouched (the commands set it)

An iteration of a trained model costs more than one of a fresh model: as the RPN learns, more proposals match
objects, so more RoIs are positive and the mask branch (RoIAlign 14x14, mask head, 28x28 loss) runs on more of
them. On the demo, an iteration costs 0.23 s in the first 200 iterations and 0.32 s from iteration 400 on
(its log.json), so profile the weights the run ends with (``--weights``) to see where the demo's time goes.

Each iteration is what the trainer does (forward_train, zero_grad, backward, SGD step) on a fresh batch of
shapes images (seed = iteration number), so the RPN's NMS sees changing scores as the weights move. The
operators below are wrapped by timers in every module that imported them; a call made inside another timed
call (conv's backward running a forward conv for dx, say) counts towards the outer one, so the categories
add up to at most the total, and "other" is the rest (losses, anchors, matching, sampling, ReLU, pooling,
the SGD step, Python). Prints JSON: seconds per iteration and share of the total, per category.
"""
from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import os
import pstats
import sys
import time
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from model import shapes_batch  # noqa: E402  (bench/model.py: bench/ is on sys.path as the script's folder)

# category -> (module, function names); the first timer entered owns the time until it returns.
CATEGORIES = {
    "nms": ("minimaskrcnn.ops.boxes", ("_greedy_nms",)),
    "conv_forward": ("minimaskrcnn.nn.conv", ("conv2d_forward", "conv_transpose2d_forward")),
    "conv_backward": ("minimaskrcnn.nn.conv", ("conv2d_backward", "conv_transpose2d_backward")),
    "roi_align_forward": ("minimaskrcnn.ops.poolers", ("multiscale_roi_forward",)),
    "roi_align_backward": ("minimaskrcnn.ops.poolers", ("multiscale_roi_backward",)),
    "roi_forward_other": ("minimaskrcnn.ops.roi_align", ("roi_align_forward",)),   # e.g. mask targets
    "linear": ("minimaskrcnn.nn.linear", ("linear_forward", "linear_backward")),
    "norm": ("minimaskrcnn.nn.norm", ("batch_norm_forward", "batch_norm_backward", "frozen_batch_norm_forward",
                                      "frozen_batch_norm_backward", "group_norm_forward", "group_norm_backward")),
}


class Timers:
    """Wall or CPU seconds and call counts per category; nested timed calls count towards the outermost."""

    def __init__(self, clock):
        self.clock = clock
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self.active = False

    def wrap(self, fn, category):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if self.active:
                return fn(*args, **kwargs)
            self.active = True
            start = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[category] += self.clock() - start
                self.calls[category] += 1
                self.active = False
        return timed

    def install(self):
        """Replace each listed function by its timed wrapper wherever a minimaskrcnn module holds it."""
        import importlib
        import minimaskrcnn.model  # noqa: F401  (imports every module that binds the functions below)
        for category, (module, names) in CATEGORIES.items():
            mod = importlib.import_module(module)
            for name in names:
                original = getattr(mod, name)
                timed = self.wrap(original, category)
                for other in list(sys.modules.values()):
                    if getattr(other, "__name__", "").startswith("minimaskrcnn"):
                        for attr, value in list(vars(other).items()):
                            if value is original:
                                setattr(other, attr, timed)


def build(config_name, size, lr, weights=None):
    from minimaskrcnn import config
    from minimaskrcnn.engine.checkpoint import load_checkpoint_model
    from minimaskrcnn.model import build_model
    from minimaskrcnn.nn import SGD
    if weights:     # the checkpoint's own config (the demo's: tiny, 3 shape classes + background)
        model = load_checkpoint_model(weights)
    else:
        model = build_model(config.get_config(config_name, num_classes=4, min_size=size, max_size=size))
    model.train()
    return model, SGD(model.named_parameters(), lr=lr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2, help="untimed iterations first (allocations, caches)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: perf_counter; cpu: this process's CPU time (ignores time other processes take)")
    ap.add_argument("--cprofile", type=int, default=0, metavar="N", help="also print cProfile's top N by self time")
    ap.add_argument("--losses", metavar="PATH", help="write each timed iteration's losses here (JSON)")
    ap.add_argument("--weights", metavar="CKPT", help="start from a trained checkpoint (its config; --config ignored)")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's malloc as it is (the commands keep freed memory: engine/allocator.py)")
    args = ap.parse_args()
    if not args.default_malloc:
        from minimaskrcnn.engine.allocator import keep_freed_memory
        keep_freed_memory()

    clock = time.perf_counter if args.clock == "wall" else time.process_time
    timers = Timers(clock)
    timers.install()
    model, opt = build(args.config, args.size, args.lr, args.weights)
    batches = [shapes_batch(args.batch, args.size, seed=i) for i in range(args.warmup + args.iters)]

    def step(images, targets):
        losses = model.forward_train(images, targets)
        model.zero_grad()
        model.backward()
        opt.step()
        return losses

    for images, targets in batches[:args.warmup]:
        step(images, targets)
    timers.seconds.clear()
    timers.calls.clear()
    profiler = cProfile.Profile() if args.cprofile else None
    history = []
    start = clock()
    if profiler:
        profiler.enable()
    for images, targets in batches[args.warmup:]:
        history.append(step(images, targets))
    if profiler:
        profiler.disable()
    total = clock() - start

    n = args.iters
    rows = {k: timers.seconds.get(k, 0.0) for k in CATEGORIES}
    rows["other"] = total - sum(rows.values())
    report = {"config": args.weights or args.config, "clock": args.clock, "iters": n, "batch": args.batch,
              "size": args.size,
              "seconds_per_iter": round(total / n, 4),
              "breakdown": {k: {"seconds_per_iter": round(v / n, 4), "percent": round(100 * v / total, 1),
                                "calls_per_iter": round(timers.calls.get(k, 0) / n, 1)}
                            for k, v in rows.items()}}
    print(json.dumps(report, indent=2))
    if args.losses:
        with open(args.losses, "w") as f:
            json.dump([{k: float(v) for k, v in h.items()} for h in history], f)
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.cprofile)
        print(out.getvalue(), file=sys.stderr)


if __name__ == "__main__":
    main()
