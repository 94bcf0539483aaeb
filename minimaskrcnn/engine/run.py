"""What the commands (``python -m minimaskrcnn demo | train | evaluate | predict``) are made of: opening a data
set, choosing the config of a run (fresh or resumed), guarding output folders, training, drawing, predicting.

Every problem a user can cause raises :class:`UserError` (or ``DatasetError`` / ``CheckpointError``) with a
one-line message that names the file or option and what is wrong; ``minimaskrcnn.cli`` prints it.
"""
from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

from .checkpoint import class_names_difference, read_checkpoint

# Relative to where the command runs (the README runs it from the repository root; notebooks, run from
# notebooks/, join them to the root themselves).
DEFAULT_DATA = Path("data") / "shapes"
DEFAULT_OUT = Path("runs") / "demo"
RUN_FILES = ("last.npz", "log.json", "metrics.json")     # what makes a folder hold a run


class UserError(Exception):
    """A problem with the user's input, reported in one line."""


# ---- inputs -------------------------------------------------------------------------------------------
def open_dataset(root, split):
    """The :class:`~minimaskrcnn.data.coco.CocoDataset` of ``split`` under ``root``, with at least one image
    (annotations in ``instances_<split>.json``, or COCO's ``person_keypoints_<split>.json`` where there is none,
    as the reader takes them)."""
    from ..data.coco import CocoDataset, annotation_file

    ann_file = annotation_file(root, split)
    if not ann_file.exists():
        raise UserError(f"{ann_file}: annotation file not found "
                        f"(expected COCO layout: <data>/annotations/instances_<split>.json and <data>/<split>/)")
    dataset = CocoDataset(root, split)
    if len(dataset) == 0:
        raise UserError(f"{dataset.ann_file}: the '{split}' split has no images (\"images\" is empty)")
    return dataset


def check_class_names(model, dataset, checkpoint) -> None:
    """Refuse to evaluate a model on data with other classes (its AP would be printed under wrong names)."""
    names = list(model.config.class_names)
    if names:
        problem = class_names_difference(names, dataset.class_names)
    elif model.config.num_classes != len(dataset.class_names):
        problem = (f"the model has {model.config.num_classes - 1} classes, the data "
                   f"{len(dataset.class_names) - 1} ({', '.join(dataset.class_names[1:])})")
    else:
        return
    if problem:
        raise UserError(f"{checkpoint} does not fit {dataset.ann_file}: {problem}")


# ---- outputs ------------------------------------------------------------------------------------------
def writable_folder(path, option: str = "--out") -> Path:
    """Create ``path`` if needed and check that files can be written there (one-line errors otherwise)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except FileExistsError:
        raise UserError(f"{option} {path}: exists and is not a folder") from None
    except OSError as e:          # under a file (NotADirectoryError), read-only, no space, ...
        raise UserError(f"{option} {path}: cannot write there ({e.strerror or e})") from None
    return path


def check_run_folder(out, resume: bool, force: bool) -> None:
    """A new run never replaces an earlier one silently: ``out`` holding one needs ``--resume`` or ``--force``."""
    held = [name for name in RUN_FILES if (Path(out) / name).exists()]
    if held and not resume and not force:
        raise UserError(f"--out {out} already holds a run ({', '.join(held)}); add --resume to continue it, "
                        "--force to replace it, or choose another --out")


# ---- the config of a run ------------------------------------------------------------------------------
def run_config(data_class_names, config_name=None, iters=None, lr=None, batch_size=None, keypoints=None):
    """The config a fresh run asks for: ``config_name`` (default ``tiny``) for the data's classes, with the
    options given (``iters`` None: the config's own ``max_iters``). ``keypoints``: the data's keypoint names
    and skeleton (``CocoDataset.keypoint_names``, ``.skeleton``), required by a keypoint config."""
    from ..config import get_config

    overrides = {"class_names": tuple(data_class_names)}
    for field, value in (("max_iters", iters), ("lr", lr), ("images_per_batch", batch_size)):
        if value is not None:
            overrides[field] = value
    try:
        config = get_config(config_name or "tiny", num_classes=len(data_class_names), **overrides)
    except ValueError as e:
        raise UserError(f"--config: {e}") from None
    if config.keypoint_on:        # paper §5: as many heatmaps as the data has keypoints
        if not keypoints or not keypoints[0]:
            raise UserError(f"--config {config_name}: predicts keypoints, but the data's categories list no "
                            "'keypoints' names")
        names, skeleton = keypoints
        config = config.replace(num_keypoints=len(names), keypoint_names=tuple(names),
                                keypoint_skeleton=tuple(tuple(p) for p in skeleton))
    return config


def resume_config(checkpoint, data_class_names, config_name=None, iters=None, lr=None, batch_size=None,
                  override: bool = False):
    """The config to resume ``checkpoint`` with, and ``{field: [checkpoint's, now]}`` of what changes.

    Resuming reproduces the uninterrupted run only with the checkpoint's own config, so an option or data
    set that asks for another value (learning rate, batch size, config, classes) is refused, naming the
    values, unless ``override``; ``max_iters`` may always change (to train longer or shorter).
    """
    from ..config import MaskRCNNConfig

    if not os.path.exists(checkpoint):
        raise UserError(f"--resume: no checkpoint at {checkpoint}")
    meta, _, _ = read_checkpoint(checkpoint)
    if meta is None:
        raise UserError(f"{checkpoint}: not a training checkpoint (no meta.json entry); cannot resume from it")
    saved = MaskRCNNConfig.from_dict(meta["config"])
    base = saved if config_name is None else run_config(data_class_names, config_name)
    asked = {"class_names": tuple(data_class_names), "num_classes": len(data_class_names),
             "max_iters": iters if iters is not None else saved.max_iters}
    asked.update({k: v for k, v in (("lr", lr), ("images_per_batch", batch_size)) if v is not None})
    wanted = base.replace(**asked)
    old, new = saved.to_dict(), wanted.to_dict()
    changes = {k: [old[k], new[k]] for k in new if k != "max_iters" and old[k] != new[k]}
    if changes and not override:
        said = "; ".join(f"{k}: {_short(a)} in the checkpoint, {_short(b)} now" for k, (a, b) in changes.items())
        raise UserError(f"--resume {checkpoint}: this run differs from the checkpoint's ({said}); resume without "
                        "those options (or with the same data), or add --override to apply them (it is logged)")
    return (wanted if changes else saved.replace(max_iters=wanted.max_iters)), changes


def _short(value) -> str:
    text = repr(tuple(value) if isinstance(value, list) else value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---- training -----------------------------------------------------------------------------------------
def train_model(config, train_set, out_dir, device="cpu", resume=False, eval_set=None, eval_every=0,
                checkpoint_every=100, progress=True, overrides=None, comm=None):
    """Train ``config`` (its ``max_iters``, its ``seed`` for the batches) on ``train_set``, into ``out_dir``.

    ``overrides`` ({field: [old, new]}, from :func:`resume_config`) are written into the log when resuming.
    ``comm`` (``engine.distributed.get_communicator()``): the ranks that share each batch; None: this process.
    Every batch is full (an epoch's last, partial batch is dropped, whatever the number of ranks), so that
    it splits evenly and 1 or N ranks see the same batches.
    """
    from ..data.transforms import DataLoader
    from ..model import build_model
    from .distributed import SerialCommunicator, check_same_everywhere, distribute_model, split_batch
    from .inference import evaluate_model
    from .trainer import Trainer

    comm = SerialCommunicator() if comm is None else comm
    split_batch(config.images_per_batch, comm)
    if comm.size > 1 and len(train_set) < config.images_per_batch:
        raise UserError(f"the training set has {len(train_set)} images, fewer than a batch of "
                        f"{config.images_per_batch}: {comm.size} processes cannot share it")
    model = distribute_model(build_model(config).to(device), comm)
    loader = DataLoader(train_set, config.images_per_batch, seed=config.seed, hflip_prob=config.hflip_prob,
                        drop_last=len(train_set) >= config.images_per_batch, shard=(comm.rank, comm.size))

    def eval_fn(m):
        metrics, _, _ = evaluate_model(m, eval_set, verbose=False, progress=progress, keep_masks=0)
        return {t: {k: v for k, v in s.items() if k != "per_class_AP"} for t, s in metrics.items()}

    trainer = Trainer(model, loader, out_dir, eval_fn=eval_fn if eval_set is not None else None,
                      eval_every=eval_every, checkpoint_every=checkpoint_every, progress=progress, comm=comm)
    say = print if comm.rank == 0 else (lambda *a: None)
    if resume:
        if not os.path.exists(trainer.checkpoint_path):
            raise UserError(f"--resume: no checkpoint at {trainer.checkpoint_path}")
        trainer.load()
        say(f"resumed from {trainer.checkpoint_path} at iteration {trainer.iteration}")
        if overrides:
            trainer.log["overrides"].append({"iteration": trainer.iteration, "changes": overrides})
            say("--override: " + "; ".join(f"{k} {_short(a)} -> {_short(b)}" for k, (a, b) in overrides.items()))
    check_same_everywhere(comm, config, model)
    if comm.size > 1:
        say(f"data-parallel: {comm.size} processes, {config.images_per_batch // comm.size} images each per batch")
    trainer.train()
    return model, trainer


# ---- figures and predictions --------------------------------------------------------------------------
# The keypoint figure draws detections scoring >= 0.8, not 0.5: on the keypoint demo's validation split (200
# images, 390 persons) the boxes scoring 0.5-0.8 are mostly false positives that span two overlapping persons,
# whose skeletons then cross from one to the other (measured on a fresh-clone demo run: >= 0.5 draws 360 true
# and 83 false boxes, >= 0.8 draws 354 and 18). COCOeval ranks by score, so AP does not depend on this choice.
KEYPOINT_FIGURE_SCORE = 0.8


def save_plots(out_dir, model, dataset, log, evaluator=None, predictions=None, num_images=8):
    """Loss curves, PR curves and a grid of predictions next to the ground truth, as PNG files."""
    from ..viz.detections import draw_comparison_grid, loss_history, plot_losses, plot_pr_curves

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
    if preds and "keypoints" in preds[0] and getattr(dataset, "num_keypoints", 0):
        from ..viz.keypoints import draw_keypoint_grid
        draw_keypoint_grid(images, targets, preds, dataset.skeleton, dataset.keypoint_names,
                           score_thresh=KEYPOINT_FIGURE_SCORE, save_path=out_dir / "keypoints.png")
        files.append(out_dir / "keypoints.png")
    return files


def output_names(paths) -> list:
    """The drawing's file name for each input image: ``<stem>_pred.png``, with the folders and the extension
    spelled out where two inputs share a stem (``a/x.png``, ``b/x.png``, ``b/x.jpg`` -> ``a_x_png_pred.png``,
    ``b_x_png_pred.png``, ``b_x_jpg_pred.png``). The same file given twice gets one name."""
    resolved = [Path(os.path.abspath(p)) for p in paths]
    stems = Counter(p.stem for p in set(resolved))
    clashing = [p for p in set(resolved) if stems[p.stem] > 1]
    root = Path(os.path.commonpath([str(p.parent) for p in clashing])) if clashing else None
    names = []
    for p in resolved:
        if stems[p.stem] == 1:
            names.append(f"{p.stem}_pred.png")
        else:
            rel = p.relative_to(root)
            names.append("_".join([*rel.parent.parts, p.stem, p.suffix.lstrip(".")]).strip("_") + "_pred.png")
    return names


def predict_images(model, paths, out_dir, score_threshold=0.5, report=print) -> list:
    """Draw ``model``'s detections on each image into ``out_dir``; an image that cannot be read or drawn is
    reported (``report``, one line) and the others go on. Returns ``[(path, problem), ...]`` of the failures."""
    from ..data.coco import DatasetError, read_rgb_image
    from ..viz.detections import draw_instances

    names = list(model.config.class_names) or None
    failed, done = [], set()
    for path, name in zip(paths, output_names(paths), strict=True):
        if name in done:          # the same file twice
            continue
        out = Path(out_dir) / name
        try:
            image = read_rgb_image(path)
            pred = model.predict([image], score_threshold=score_threshold)[0]
            fig = draw_instances(image, pred["boxes"], pred["labels"], pred.get("masks"), pred["scores"], names)
            if "keypoints" in pred:                # paper §5: the skeletons over the detections
                from ..viz.keypoints import draw_skeletons
                draw_skeletons(fig.axes[0], pred["keypoints"], model.config.keypoint_skeleton,
                               model.config.keypoint_names or None, pred["keypoints_scores"])
            fig.savefig(out, dpi=100)
        except (DatasetError, OSError) as e:
            problem = str(e) if isinstance(e, DatasetError) else f"{path}: cannot write {out} ({e.strerror or e})"
            report(f"skipped: {problem}")
            failed.append((path, problem))
            continue
        done.add(name)
        report(f"{path}: {len(pred['scores'])} detections -> {out}")
    return failed
