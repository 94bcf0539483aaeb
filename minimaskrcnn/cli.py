"""``python -m minimaskrcnn demo | train | evaluate | predict | ablate | classroom``: parses the command line and calls
:mod:`minimaskrcnn.engine` (``engine.run`` holds the building blocks) or :mod:`minimaskrcnn.classroom`.

Errors a user can cause (a malformed annotation file, a missing image, a bad checkpoint, a diverged
run, an output folder that holds a run or cannot be written) end with one line naming the file and the
problem and a non-zero exit code; ``--debug`` shows the traceback instead.

``demo`` and ``train`` run data-parallel when started by ``mpiexec -n N`` (or ``srun``): see
:mod:`minimaskrcnn.engine.distributed`. ``demo`` started as one process does that by itself (``--procs``, default
``auto``: 2 processes on 2 cores; :mod:`minimaskrcnn.engine.launch`): it runs ``mpiexec -n P python -m minimaskrcnn
demo ... --procs 1``, passes Ctrl-C on, and returns that command's exit code; ``train`` leaves it to the user.
Rank 0 prints and writes; an error that every rank meets alike (options, set-up) is printed once and every rank
exits; an error of one rank (its data, a NaN, a failed write) is printed with the rank's number and ends every
rank through MPI's abort, so none waits forever.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .engine.ablate_tables import TABLE_CHOICES
from .engine.run import DEFAULT_DATA, DEFAULT_OUT, UserError
from .engine.threads import DEFAULT_THREADS

__all__ = ["DEFAULT_DATA", "DEFAULT_OUT", "UserError", "main", "make_parser"]


def cmd_demo(args):
    from .data.poses import ensure_poses_dataset
    from .data.shapes import ensure_shapes_dataset
    from .engine.distributed import launched_size
    from .engine.inference import evaluate_model
    from .engine.run import (check_run_folder, open_dataset, resume_config, run_config, save_plots, train_model,
                             writable_folder)

    keypoints = args.task == "keypoints"             # paper §5: the pose set and the keypoint model
    args.data = args.data or str(DEFAULT_DATA.parent / "poses" if keypoints else DEFAULT_DATA)
    args.out = args.out or str(DEFAULT_OUT.parent / "demo_keypoints" if keypoints else DEFAULT_OUT)
    name = "tiny_keypoints" if keypoints else "tiny"
    comm = args.comm
    main_rank = comm.rank == 0
    say = _printer(comm)
    check_run_folder(args.out, args.resume, args.force)
    launch = None
    if launched_size()[0] == 1:     # not started by mpiexec: --procs may start the demo in several processes
        from .engine.launch import batch_of_run, plan_processes
        batch = batch_of_run(name, Path(args.out) / "last.npz" if args.resume else None)
        launch = plan_processes(args.procs, batch, args.device, args.threads)
    writable_folder(args.out)
    if launch is not None:
        from .engine.launch import relaunch_command, relaunch_env, run_passing_signals, start_line
        print(start_line(launch, args.threads), flush=True)
        if launch.procs > 1:        # the ranks do the work (rank 0 prints and writes); this process only waits
            return run_passing_signals(relaunch_command(launch, args.argv), env=relaunch_env())
    ensure = ensure_poses_dataset if keypoints else ensure_shapes_dataset
    if main_rank:        # one rank generates the data; the others wait, then find it complete
        root = ensure(args.data, num_train=args.num_train, num_val=args.num_val, progress=True, report=say)
    comm.barrier()
    if not main_rank:
        root = ensure(args.data, num_train=args.num_train, num_val=args.num_val, progress=False)
    train_set, val_set = open_dataset(root, "train"), open_dataset(root, "val")
    if args.resume:
        config, _ = resume_config(Path(args.out) / "last.npz", train_set.class_names, iters=args.iters)
    else:
        config = run_config(train_set.class_names, name, iters=args.iters,
                            keypoints=(train_set.keypoint_names, train_set.skeleton))
    say(f"data: {root} ({train_set.summary()})")
    say(f"training the '{name}' config for {config.max_iters} iterations on {args.device}; outputs in {args.out}")
    model, trainer = train_model(config, train_set, args.out, args.device, resume=args.resume,
                                 checkpoint_every=args.checkpoint_every, comm=comm)
    if not main_rank:    # rank 0 evaluates and draws
        return
    metrics, evaluator, preds = evaluate_model(model, val_set, out_dir=args.out, keep_masks=8)
    files = save_plots(args.out, model, val_set, trainer.log, evaluator, preds)
    with open(Path(args.out) / "metrics.json", "w") as f:
        json.dump(metrics, f, indent=1)
    say("\n" + headline(metrics))
    say("wrote " + ", ".join(str(f) for f in files))


def headline(metrics) -> str:
    """One line: keypoint AP (OKS) when there is one, mask AP, box AP."""
    parts = []
    for t, what in (("keypoints", "keypoint AP (OKS)"), ("segm", "mask AP"), ("bbox", "box AP")):
        if t in metrics:
            m = metrics[t]
            parts.append(f"{what} {m['AP']:.3f} (AP50 {m['AP50']:.3f}, AP75 {m['AP75']:.3f})")
    return "; ".join(parts)


def cmd_train(args):
    from .engine.run import check_run_folder, open_dataset, resume_config, run_config, train_model, writable_folder

    if args.override and not args.resume:
        raise UserError("--override only applies with --resume")
    check_run_folder(args.out, args.resume, args.force)
    writable_folder(args.out)
    train_set = open_dataset(args.data, args.train_split)
    val_set = open_dataset(args.data, args.val_split) if args.eval_every else None
    options = dict(config_name=args.config, iters=args.iters, lr=args.lr, batch_size=args.batch_size)
    if args.resume:
        config, changes = resume_config(Path(args.out) / "last.npz", train_set.class_names, **options,
                                        override=args.override)
    else:
        config, changes = run_config(train_set.class_names, **options,
                                     keypoints=(train_set.keypoint_names, train_set.skeleton)), None
    train_model(config, train_set, args.out, args.device, resume=args.resume, eval_set=val_set,
                eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, overrides=changes, comm=args.comm)
    _printer(args.comm)(f"wrote {Path(args.out) / 'last.npz'} and {Path(args.out) / 'log.json'}")


def _printer(comm):
    """``print`` on rank 0, nothing on the other ranks (one copy of every message)."""
    return print if comm.rank == 0 else (lambda *args, **kwargs: None)


def cmd_evaluate(args):
    from .engine.checkpoint import load_checkpoint_model
    from .engine.inference import evaluate_model
    from .engine.run import check_class_names, open_dataset, save_plots, writable_folder

    model = load_checkpoint_model(args.checkpoint, args.device, args.config, args.num_classes)
    dataset = open_dataset(args.data, args.split)
    check_class_names(model, dataset, args.checkpoint)
    out = writable_folder(args.out or Path(args.checkpoint).resolve().parent)
    if model.roi_heads.has_keypoint:   # OKS needs sigmas: COCO's, or the user's (checked before predicting)
        from .data.keypoints import keypoint_sigmas
        try:
            keypoint_sigmas(dataset.keypoint_names or [""] * model.config.num_keypoints, args.kp_sigmas)
        except ValueError as e:
            raise UserError(f"--kp-sigmas: {e}") from None
    metrics, evaluator, preds = evaluate_model(model, dataset, out_dir=out, keep_masks=8 if args.plots else 0,
                                               keypoint_sigmas=args.kp_sigmas)
    if args.plots:
        save_plots(out, model, dataset, None, evaluator, preds)
    return metrics


def cmd_predict(args):
    from .engine.checkpoint import load_checkpoint_model
    from .engine.run import predict_images, writable_folder

    model = load_checkpoint_model(args.checkpoint, args.device, args.config, args.num_classes)
    out = writable_folder(args.out)
    failed = predict_images(model, args.images, out, args.score_threshold)
    if failed:
        raise UserError(f"{len(failed)} of {len(set(args.images))} images failed (each named above); "
                        "the others were drawn")


def cmd_ablate(args):
    from .engine.ablate import main_args
    main_args(args)


def _procs(value: str):
    """``--procs``: 'auto' or a positive number."""
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"'auto' or a positive number, not {value!r}")
    return int(value)


def make_parser():
    p = argparse.ArgumentParser(prog="python -m minimaskrcnn", description="Mask R-CNN in NumPy.")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True)

    def common(s, device=True):
        if device:
            s.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
        s.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                       help=f"BLAS threads for the matrix products (default {DEFAULT_THREADS}: robust when other "
                            "programs share the cores)")
        s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def run_options(s):
        g = s.add_mutually_exclusive_group()
        g.add_argument("--resume", action="store_true", help="continue the run in --out from its last.npz")
        g.add_argument("--force", action="store_true", help="replace the run that --out holds")

    d = sub.add_parser("demo", help="generate the shapes set, train the tiny model, evaluate, draw results")
    d.add_argument("--task", choices=("masks", "keypoints"), default="masks",
                   help="masks: the shapes set and 'tiny'; keypoints (paper §5): the pose set and 'tiny_keypoints'")
    d.add_argument("--data", default=None, help="data folder, generated if absent (default data/shapes, or "
                                                "data/poses with --task keypoints)")
    d.add_argument("--out", default=None, help="default runs/demo, or runs/demo_keypoints with --task keypoints")
    d.add_argument("--iters", type=int, default=None, help="training iterations (default: the tiny config's)")
    d.add_argument("--num-train", type=int, default=2000)
    d.add_argument("--num-val", type=int, default=200)
    d.add_argument("--checkpoint-every", type=int, default=250)
    d.add_argument("--procs", type=_procs, default="auto",
                   help="processes training data-parallel, each with --threads BLAS threads (default auto: as many "
                        "as the cores allow and divide the batch of 4, started through mpiexec; 1 where mpi4py, "
                        "mpiexec or a trial launch is missing, or with --device cuda)")
    run_options(d)
    common(d)

    t = sub.add_parser("train", help="train on a COCO-format folder",
                       description="Train on a COCO-format folder, in this process. Data-parallel on N processes: "
                                   "mpiexec -n N python -m minimaskrcnn train ... (the demo does this by itself: "
                                   "demo --procs).")
    t.add_argument("--data", required=True, help="folder with annotations/instances_<split>.json and <split>/")
    t.add_argument("--config", default=None, help="tiny (default) | resnet18_fpn | r50_fpn | r50_c4; "
                                                  "with --resume: the checkpoint's")
    t.add_argument("--iters", type=int, default=None, help="training iterations (default: the config's max_iters)")
    t.add_argument("--out", required=True)
    run_options(t)
    t.add_argument("--override", action="store_true",
                   help="with --resume: apply a --config, --lr, --batch-size or data that differ from the "
                        "checkpoint's (logged); without it they are refused")
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
    e.add_argument("--kp-sigmas", type=lambda v: [float(x) for x in v.split(",")], default=None,
                   help="OKS sigmas, comma-separated, one per keypoint (default: COCO's, for COCO's 17 person "
                        "keypoints only)")
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

    a = sub.add_parser("ablate", help="train the paper's ablations (Tables 2b-2e, 3, 6) in miniature, beside its "
                                      "numbers")
    a.add_argument("--table", choices=TABLE_CHOICES, default="all",
                   help="one table, or all: Tables 2b-3 (about 80-90 min with --jobs 2 on 2 quiet cores); Table 6 "
                        "(keypoints, about 25 min more) is not in 'all': run it with --table 6")
    a.add_argument("--data", default=None, help="a COCO-format folder, a keypoint set for --table 6 (default: the "
                                                "hard shapes set in data/shapes_hard, the pose set in data/poses "
                                                "for table 6, generated on first use)")
    a.add_argument("--seeds", type=int, default=None, help="seeds per variant (default: 3 for 2c and 2d, else 2)")
    a.add_argument("--iters", type=int, default=None, help="iterations per run (default: each table's own)")
    a.add_argument("--out", default="runs/ablations", help="results; finished runs there are not trained again")
    a.add_argument("--jobs", type=int, default=1, help="runs trained at a time (2 on 2 quiet cores)")
    a.add_argument("--image-size", type=int, default=None, help="the models' input size (default: the data's: "
                                                                "192 for the hard shapes, 128 for the poses)")
    a.add_argument("--estimate", action="store_true", help="time a few iterations of each variant and print the "
                                                           "projected wall time; trains nothing")
    common(a)

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
            "ablate": cmd_ablate, "classroom": cmd_classroom}


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)     # what ran (ablate records it), as given
    from .data.coco import DatasetError
    from .engine.allocator import keep_freed_memory
    from .engine.checkpoint import CheckpointError
    from .engine.distributed import DistributedError, SerialCommunicator, get_communicator, launched_rank
    from .engine.threads import blas_threads
    from .engine.trainer import TrainingDiverged

    keep_freed_memory()                 # 7.5% per training iteration: no page faults on recycled arrays
    args.comm = SerialCommunicator()
    try:
        if getattr(args, "device", "cpu") == "cuda":
            from .backend import cupy_available
            if not cupy_available():
                raise UserError("--device cuda needs CuPy and a CUDA GPU (pip install cupy-cuda12x)")
        if args.command in ("demo", "train"):   # mpiexec -n N: data-parallel; else this process alone
            args.comm = get_communicator(gpu=args.device == "cuda")
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, got {args.threads}")
        with blas_threads(args.threads):
            code = COMMANDS[args.command](args)
    except (UserError, DistributedError, DatasetError, CheckpointError, TrainingDiverged, FileNotFoundError,
            FileExistsError, FloatingPointError) as e:
        if getattr(args, "debug", False) and args.comm.size == 1:
            raise
        what = "the model's outputs are not finite numbers: " if isinstance(e, FloatingPointError) else ""
        every_rank = isinstance(e, (UserError, DistributedError))    # met by every rank alike: say it once
        if launched_rank() == 0 or not every_rank:
            rank = f"rank {args.comm.rank} of {args.comm.size}: " if args.comm.size > 1 and not every_rank else ""
            # one write for the whole line: with unbuffered output print writes its pieces separately, and
            # under mpiexec another rank's output can land between them
            sys.stderr.write(f"minimaskrcnn {args.command}: error: {rank}{what}{e}\n")
            sys.stderr.flush()
        if args.comm.size > 1 and not every_rank:
            args.comm.abort(1)          # the other ranks may be waiting for this one in a collective
        return 1
    except KeyboardInterrupt:        # (under mpiexec every rank gets the Ctrl-C: rank 0 says it)
        if launched_rank() == 0:
            print(f"\nminimaskrcnn {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        if args.comm.size > 1:      # a bug on one rank: show it, then end every rank instead of a hang
            import traceback
            traceback.print_exc()
            args.comm.abort(1)
        raise
    return code if args.command == "demo" and isinstance(code, int) else 0   # the demo's ranks' exit code
