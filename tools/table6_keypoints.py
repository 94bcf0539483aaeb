"""Table 6 of the paper on the synthetic pose set: RoIAlign vs RoIPool for keypoints.

    python tools/table6_keypoints.py [--data data/poses] [--out runs/table6] [--iters N]

Trains ``tiny_keypoints`` once per RoI operator (the same seed, so the same weights at start and the same
batches; every RoI head pools with the operator, as in the paper), evaluates keypoint AP (OKS) on the val split,
and prints a Markdown table beside the paper's (R-50-FPN on COCO minival: RoIPool 59.8, RoIAlign 64.2 AP^kp).
Writes ``<out>/<op>/`` (each run's checkpoint, log and metrics) and ``<out>/table6.json``. Each run takes about as
long as the keypoint demo's training (``python -m minimaskrcnn demo --task keypoints``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

PAPER = {"pool": 59.8, "align": 64.2}                         # Table 6, AP^kp on COCO minival, R-50-FPN
NAMES = {"pool": "RoIPool", "align": "RoIAlign"}


def run(data, out, iters=None, ops=("pool", "align"), num_train=2000, num_val=200, progress=True) -> dict:
    """Train and evaluate one model per RoI operator; returns {op: keypoint metrics}."""
    from minimaskrcnn.data.poses import ensure_poses_dataset
    from minimaskrcnn.engine.inference import evaluate_model
    from minimaskrcnn.engine.run import open_dataset, run_config, train_model

    root = ensure_poses_dataset(data, num_train=num_train, num_val=num_val, progress=progress, report=print)
    train_set, val_set = open_dataset(root, "train"), open_dataset(root, "val")
    results = {}
    for op in ops:
        config = run_config(train_set.class_names, "tiny_keypoints", iters=iters,
                            keypoints=(train_set.keypoint_names, train_set.skeleton)).replace(roi_op=op)
        print(f"training tiny_keypoints with {NAMES[op]} for {config.max_iters} iterations")
        model, _ = train_model(config, train_set, Path(out) / op, progress=progress)
        metrics, _, _ = evaluate_model(model, val_set, out_dir=Path(out) / op, verbose=False, progress=progress)
        results[op] = metrics["keypoints"]
    return results


def table(results: dict) -> str:
    lines = ["| RoI op | AP^kp | AP^kp_50 | AP^kp_75 | paper (COCO, R-50-FPN) |", "|---|---|---|---|---|"]
    for op, m in results.items():
        lines.append(f"| {NAMES[op]} | {100 * m['AP']:.1f} | {100 * m['AP50']:.1f} | {100 * m['AP75']:.1f} | "
                     f"{PAPER[op]} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/poses", help="the pose set (generated if absent)")
    p.add_argument("--out", default="runs/table6")
    p.add_argument("--iters", type=int, default=None, help="default: tiny_keypoints' max_iters")
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--num-val", type=int, default=200)
    args = p.parse_args(argv)
    for op in ("pool", "align"):
        if (Path(args.out) / op / "last.npz").exists():
            print(f"table6: {Path(args.out) / op} already holds a run; choose another --out", file=sys.stderr)
            return 1
    results = run(args.data, args.out, args.iters, num_train=args.num_train, num_val=args.num_val)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "table6.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
