"""``python -m minimaskrcnn demo | train | evaluate | predict | classroom``.

Errors a user can cause (a malformed annotation file, a missing image, a bad checkpoint, a diverged
run) end with one line naming the file and the problem and a non-zero exit code; ``--debug`` shows the
traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


# Relative to where the command runs (the README runs it from the repository root; notebooks, run from
# notebooks/, join them to the root themselves).
DEFAULT_DATA = Path("data") / "shapes"
DEFAULT_OUT = Path("runs") / "demo"


class UserError(Exception):
    """A problem with the user's input, reported in one line."""


# ---- building blocks shared by the commands -----------------------------------------------------------
def build_model(config, device="cpu"):
    from .model import build_model as build
    return build(config).to(device)


def load_checkpoint_model(path, device="cpu", config_name=None, num_classes=None):
    """A model from a checkpoint: a training checkpoint carries its config; a plain weights file (e.g. a
    converted torchvision model) needs ``config_name`` and ``num_classes``."""
    from .config import MaskRCNNConfig, get_config
    from .engine.trainer import load_state_checked, read_checkpoint

    if not os.path.exists(path):
        raise UserError(f"{path}: checkpoint not found")
    meta, state, _ = read_checkpoint(path)
    if meta is not None:
        config = MaskRCNNConfig.from_dict(meta["config"])
    else:
        if config_name is None or num_classes is None:
            raise UserError(f"{path}: a weights-only file; give --config and --num-classes to build its model")
        config = get_config(config_name, num_classes)
    model = build_model(config, device)
    load_state_checked(model, state, path)
    return model


def open_dataset(root, split):
    from .data.coco import CocoDataset

    if not (Path(root) / "annotations" / f"instances_{split}.json").exists():
        raise UserError(f"{Path(root) / 'annotations' / f'instances_{split}.json'}: annotation file not found "
                        f"(expected COCO layout: <data>/annotations/instances_<split>.json and <data>/<split>/)")
    return CocoDataset(root, split)


def train_model(config, train_set, out_dir, device="cpu", resume=False, eval_set=None, eval_every=0,
                checkpoint_every=100, progress=True):
    """Train ``config`` (its ``max_iters``, its ``seed`` for the batches) on ``train_set``, into ``out_dir``."""
    from .data.transforms import DataLoader
    from .engine.inference import evaluate_model
    from .engine.trainer import Trainer

    model = build_model(config, device)
    loader = DataLoader(train_set, config.images_per_batch, seed=config.seed, hflip_prob=config.hflip_prob)

    def eval_fn(m):
        metrics, _, _ = evaluate_model(m, eval_set, verbose=False, progress=progress)
        return {t: {k: v for k, v in s.items() if k != "per_class_AP"} for t, s in metrics.items()}

    trainer = Trainer(model, loader, out_dir, eval_fn=eval_fn if eval_set is not None else None,
                      eval_every=eval_every, checkpoint_every=checkpoint_every, progress=progress)
    if resume:
        if not os.path.exists(trainer.checkpoint_path):
            raise UserError(f"--resume: no checkpoint at {trainer.checkpoint_path}")
        trainer.load()
        print(f"resumed from {trainer.checkpoint_path} at iteration {trainer.iteration}")
    trainer.train()
    return model, trainer


def save_plots(out_dir, model, dataset, log, evaluator=None, predictions=None, num_images=8):
    """Loss curves, PR curves and a grid of predictions next to the ground truth, as PNG files."""
    import matplotlib
    matplotlib.use("Agg")
    from .viz.detections import draw_comparison_grid, loss_history, plot_losses, plot_pr_curves

    out_dir = Path(out_dir)
    files = []
    if log and log.get("losses"):
        plot_losses(loss_history(log), log_scale=True, save_path=out_dir / "losses.png")
        files.append(out_dir / "losses.png")
    if evaluator is not None:
        for t in evaluator.precision:
            plot_pr_curves(evaluator.precision[t], evaluator.recall_thresholds, evaluator.iou_thresholds,
                           dataset.class_names, title=f"{t} precision-recall", save_path=out_dir / f"pr_{t}.png")
            files.append(out_dir / f"pr_{t}.png")
    n = min(num_images, len(dataset))
    images = [dataset.load_image(i) for i in range(n)]
    targets = [dataset.get_target(i) for i in range(n)]
    preds = predictions[:n] if predictions is not None else model.predict(images)
    draw_comparison_grid(images, targets, preds, dataset.class_names, save_path=out_dir / "predictions.png")
    files.append(out_dir / "predictions.png")
    return files


# ---- commands -----------------------------------------------------------------------------------------
def cmd_demo(args):
    from .config import get_config
    from .data.shapes import ensure_shapes_dataset
    from .engine.inference import evaluate_model

    root = ensure_shapes_dataset(args.data, num_train=args.num_train, num_val=args.num_val, progress=True)
    train_set, val_set = open_dataset(root, "train"), open_dataset(root, "val")
    config = get_config("tiny", num_classes=len(train_set.class_names), class_names=tuple(train_set.class_names))
    overrides = {}
    if args.iters is not None:
        overrides.update(max_iters=args.iters)
    config = config.replace(**overrides)
    print(f"data: {root} ({train_set.summary()})")
    print(f"training the 'tiny' config for {config.max_iters} iterations on {args.device}; outputs in {args.out}")
    model, trainer = train_model(config, train_set, args.out, args.device, resume=args.resume,
                                 checkpoint_every=args.checkpoint_every)
    metrics, evaluator, preds = evaluate_model(model, val_set, out_dir=args.out)
    files = save_plots(args.out, model, val_set, trainer.log, evaluator, preds)
    with open(Path(args.out) / "metrics.json", "w") as f:
        json.dump(metrics, f, indent=1)
    print(f"\nmask AP {metrics['segm']['AP']:.3f} (AP50 {metrics['segm']['AP50']:.3f}, "
          f"AP75 {metrics['segm']['AP75']:.3f}); box AP {metrics['bbox']['AP']:.3f}")
    print("wrote " + ", ".join(str(f) for f in files))


def cmd_train(args):
    from .config import get_config

    train_set = open_dataset(args.data, args.train_split)
    val_set = open_dataset(args.data, args.val_split) if args.eval_every else None
    overrides = {"max_iters": args.iters, "class_names": tuple(train_set.class_names)}
    if args.lr is not None:
        overrides["lr"] = args.lr
    if args.batch_size is not None:
        overrides["images_per_batch"] = args.batch_size
    config = get_config(args.config, num_classes=len(train_set.class_names), **overrides)
    train_model(config, train_set, args.out, args.device, resume=args.resume, eval_set=val_set,
                eval_every=args.eval_every, checkpoint_every=args.checkpoint_every)
    print(f"wrote {Path(args.out) / 'last.npz'} and {Path(args.out) / 'log.json'}")


def cmd_evaluate(args):
    from .engine.inference import evaluate_model

    model = load_checkpoint_model(args.checkpoint, args.device, args.config, args.num_classes)
    dataset = open_dataset(args.data, args.split)
    out = args.out or str(Path(args.checkpoint).resolve().parent)
    metrics, evaluator, preds = evaluate_model(model, dataset, out_dir=out)
    if args.plots:
        save_plots(out, model, dataset, None, evaluator, preds)
    return metrics


def cmd_predict(args):
    import matplotlib
    matplotlib.use("Agg")

    from .data.coco import read_rgb_image
    from .viz.detections import draw_instances

    model = load_checkpoint_model(args.checkpoint, args.device, args.config, args.num_classes)
    names = list(model.config.class_names) or None
    os.makedirs(args.out, exist_ok=True)
    for path in args.images:
        image = read_rgb_image(path)
        pred = model.predict([image], score_threshold=args.score_threshold)[0]
        out = Path(args.out) / (Path(path).stem + "_pred.png")
        fig = draw_instances(image, pred["boxes"], pred["labels"], pred["masks"], pred["scores"], names)
        fig.savefig(out, dpi=100)
        print(f"{path}: {len(pred['scores'])} detections -> {out}")


def make_parser():
    p = argparse.ArgumentParser(prog="python -m minimaskrcnn", description="Mask R-CNN in NumPy.")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True)

    def common(s, device=True):
        if device:
            s.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
        s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    d = sub.add_parser("demo", help="generate the shapes set, train the tiny model, evaluate, draw results")
    d.add_argument("--data", default=str(DEFAULT_DATA), help="shapes data folder (generated if absent)")
    d.add_argument("--out", default=str(DEFAULT_OUT))
    d.add_argument("--iters", type=int, default=None, help="training iterations (default: the tiny config's)")
    d.add_argument("--num-train", type=int, default=2000)
    d.add_argument("--num-val", type=int, default=200)
    d.add_argument("--checkpoint-every", type=int, default=250)
    d.add_argument("--resume", action="store_true", help="continue from <out>/last.npz")
    common(d)

    t = sub.add_parser("train", help="train on a COCO-format folder")
    t.add_argument("--data", required=True, help="folder with annotations/instances_<split>.json and <split>/")
    t.add_argument("--config", default="tiny", help="tiny | resnet18_fpn | r50_fpn")
    t.add_argument("--iters", type=int, required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--train-split", default="train")
    t.add_argument("--val-split", default="val")
    t.add_argument("--eval-every", type=int, default=0)
    t.add_argument("--checkpoint-every", type=int, default=100)
    common(t)

    e = sub.add_parser("evaluate", help="COCO AP of a checkpoint on a data split")
    e.add_argument("--data", required=True)
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--split", default="val")
    e.add_argument("--out", default=None, help="where results JSON goes (default: beside the checkpoint)")
    e.add_argument("--plots", action="store_true", help="also draw PR curves and predictions")
    e.add_argument("--config", default=None, help="for weights-only files")
    e.add_argument("--num-classes", type=int, default=None, help="for weights-only files")
    common(e)

    r = sub.add_parser("predict", help="draw a checkpoint's detections on images")
    r.add_argument("--checkpoint", required=True)
    r.add_argument("images", nargs="+")
    r.add_argument("--out", default="runs/predict")
    r.add_argument("--score-threshold", type=float, default=0.5)
    r.add_argument("--config", default=None)
    r.add_argument("--num-classes", type=int, default=None)
    common(r)

    from .classroom.cli import add_parser as add_classroom_parser
    add_classroom_parser(sub, common)
    return p


def cmd_classroom(args):
    from .classroom import ClassroomError
    from .classroom.cli import run
    try:
        return run(args)
    except ClassroomError as e:
        raise UserError(str(e)) from None


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "classroom": cmd_classroom}


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    from .data.coco import DatasetError
    from .engine.trainer import CheckpointError, TrainingDiverged

    try:
        if getattr(args, "device", "cpu") == "cuda":
            from .backend import cupy_available
            if not cupy_available():
                raise UserError("--device cuda needs CuPy and a CUDA GPU (pip install cupy-cuda12x)")
        COMMANDS[args.command](args)
    except (UserError, DatasetError, CheckpointError, TrainingDiverged, FileNotFoundError, FileExistsError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"minimaskrcnn {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nminimaskrcnn {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
