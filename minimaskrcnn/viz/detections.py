"""Pictures of the task and of the results: instances over an image, GT vs prediction grids, loss curves,
precision-recall curves.

Every function draws into ``ax`` (or ``axes``) when given, else into a new ``matplotlib.figure.Figure``
(made without pyplot: nothing stays open, no display is needed, and no backend has to be chosen), returns
the figure, and writes it as a PNG when ``save_path`` is given. In a notebook, show a returned figure with
``display(fig)`` or by making it the cell's last expression.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

PALETTE = np.array([(0.12, 0.47, 0.71), (1.00, 0.50, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16),
                    (0.58, 0.40, 0.74), (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.50, 0.50, 0.50),
                    (0.74, 0.74, 0.13), (0.09, 0.75, 0.81)])          # matplotlib's tab10


def class_color(label: int) -> np.ndarray:
    """The RGB colour (floats in [0, 1]) of a class label, the same in every picture."""
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def _new_axes(ax, figsize, nrows=1, ncols=1):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False) if (nrows, ncols) != (1, 1) else fig.subplots()


def _finish(fig, save_path):
    if save_path is not None:
        fig.savefig(save_path, dpi=100)
    return fig


def mask_contour(mask) -> np.ndarray:
    """The inner outline of a binary mask: its pixels with at least one 4-neighbour outside it (the
    image's edge counts as outside). (H, W) bool -> (H, W) bool, a one-pixel-wide subset of the mask."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def draw_instances(image, boxes=None, labels=None, masks=None, scores=None, class_names=None, ax=None,
                   score_thresh: float = 0.0, alpha: float = 0.45, contours: bool = True,
                   title: str | None = None, save_path=None):
    """Draw an image with instances: translucent masks with opaque outlines, boxes and "name score" tags,
    coloured by class.

    Args:
        image: (H, W, 3) uint8 RGB (or floats in [0, 1]).
        boxes: (N, 4) x1, y1, x2, y2 in pixels.
        labels: (N,) class labels 1..K (colours and names); all drawn in one colour when None.
        masks: (N, H, W) binary, or floats thresholded at 0.5.
        scores: (N,) confidences: shown in the tags, and instances below ``score_thresh`` are hidden.
        class_names: names indexed by label (``CocoDataset.class_names``: index 0 is the background).
        alpha: opacity of the mask fills.
        contours: also draw each mask's one-pixel outline (:func:`mask_contour`), opaque, as Detectron2's
            Visualizer draws mask edges: a faint fill alone is hard to see on a busy image, and the outline
            shows where two instances meet.

    Returns:
        the figure. The axes holds the image plus one overlay image (when there are masks), one
        Rectangle patch and one text per drawn box.
    """
    fig, ax = _new_axes(ax, (4, 4))
    image = np.asarray(image)
    n = len(boxes) if boxes is not None else len(masks) if masks is not None else 0
    labels = np.ones(n, np.int64) if labels is None else np.asarray(labels)
    keep = np.ones(n, bool) if scores is None else np.asarray(scores) >= score_thresh
    ax.imshow(image)
    if masks is not None and keep.any():
        masks = np.asarray(masks)[keep]
        masks = masks > 0.5 if masks.dtype.kind == "f" else masks.astype(bool)
        # One RGBA layer for all masks (later instances on top): a single artist however many instances.
        # The outlines go in the same layer, pixel-exact, so they line up with the fills at any zoom.
        overlay = np.zeros(image.shape[:2] + (4,))
        for mask, label in zip(masks, labels[keep], strict=True):
            overlay[mask] = (*class_color(label), alpha)
            if contours:
                overlay[mask_contour(mask)] = (*class_color(label), 1.0)
        ax.imshow(overlay)
    if boxes is not None:
        for i in np.flatnonzero(keep):
            x1, y1, x2, y2 = np.asarray(boxes[i], dtype=float)
            color = class_color(labels[i])
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.5))
            tag = class_names[labels[i]] if class_names is not None else str(int(labels[i]))
            if scores is not None:
                tag += f" {float(scores[i]):.2f}"
            ax.text(x1, y1, tag, fontsize=7, color="white", va="bottom",
                    bbox=dict(facecolor=color, edgecolor="none", pad=1, alpha=0.8))
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim(image.shape[0] - 0.5, -0.5)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return _finish(fig, save_path)


def draw_target(image, target: dict, class_names=None, ax=None, **kwargs):
    """:func:`draw_instances` for a target or prediction dict ('boxes', 'labels', 'masks', 'scores')."""
    return draw_instances(image, target.get("boxes"), target.get("labels"), target.get("masks"),
                          target.get("scores"), class_names, ax=ax, **kwargs)


def draw_comparison_grid(images, targets, predictions, class_names=None, score_thresh: float = 0.5,
                         pairs_per_row: int = 2, save_path=None):
    """Ground truth next to predictions for several images: a grid of (GT | prediction) pairs.

    Args:
        images: list of N (H, W, 3) images; targets, predictions: lists of N dicts (see draw_target).
        pairs_per_row: image pairs per row (the grid has 2 * pairs_per_row columns).

    Returns:
        the figure, with 2N visible axes (unused cells of the last row are hidden).
    """
    n = len(images)
    if not n == len(targets) == len(predictions):
        raise ValueError(f"images, targets and predictions must have the same length, got {n}, "
                         f"{len(targets)} and {len(predictions)}")
    cols = 2 * min(pairs_per_row, n)
    rows = -(-2 * n // cols)
    fig, axes = _new_axes(None, (2.2 * cols, 2.3 * rows), rows, cols)
    axes = axes.ravel()
    for i, (image, target, prediction) in enumerate(zip(images, targets, predictions, strict=True)):
        draw_target(image, target, class_names, ax=axes[2 * i], title="ground truth")
        shown = int(np.sum(np.asarray(prediction.get("scores", [])) >= score_thresh))
        draw_target(image, prediction, class_names, ax=axes[2 * i + 1], score_thresh=score_thresh,
                    title=f"prediction ({shown} with score >= {score_thresh:g})")
    for ax in axes[2 * n:]:
        ax.set_visible(False)
    return _finish(fig, save_path)


def smooth(values, weight: float = 0.9) -> np.ndarray:
    """Exponential moving average with bias correction (TensorBoard's smoothing): the first points are
    not pulled towards 0. ``weight`` 0 returns the values unchanged."""
    values = np.asarray(values, dtype=np.float64)
    out, avg = np.empty_like(values), 0.0
    for i, v in enumerate(values):
        avg = weight * avg + (1 - weight) * v
        out[i] = avg / (1 - weight ** (i + 1))
    return out


def loss_history(log) -> dict:
    """``{'objectness': [...], ..., 'total': [...]}`` from a trainer's log (``log['losses']``: one dict of
    named losses per iteration), the form :func:`plot_losses` takes."""
    names = list(log["losses"][0]) if log["losses"] else []
    history = {n.replace("loss_", ""): [rec[n] for rec in log["losses"]] for n in names}
    history["total"] = [sum(rec.values()) for rec in log["losses"]]
    return history


def plot_losses(history, smoothing: float = 0.9, log_scale: bool = False, ax=None,
                title: str | None = "losses", save_path=None):
    """Several named losses against the iteration: raw values faint, smoothed values solid.

    Args:
        history: {name: values} (values at iterations 0, 1, ...), {name: (iterations, values)}, or a
            list of per-iteration dicts such as ``[{'iteration': 0, 'loss': 2.3, ...}, ...]``.
        smoothing: EMA weight of :func:`smooth`.
        log_scale: a logarithmic loss axis (losses of very different sizes side by side).

    Returns:
        the figure; its axes has two lines per loss (raw, smoothed).
    """
    if isinstance(history, (list, tuple)):
        names = [k for k in history[0] if k not in ("iteration", "iter", "epoch")]
        iters = np.array([rec.get("iteration", rec.get("iter", i)) for i, rec in enumerate(history)])
        history = {k: (iters, [rec[k] for rec in history]) for k in names}
    fig, ax = _new_axes(ax, (6, 3.5))
    for k, (name, series) in enumerate(history.items()):
        if isinstance(series, tuple) and len(series) == 2:
            x, y = np.asarray(series[0]), np.asarray(series[1], dtype=float)
        else:
            y = np.asarray(series, dtype=float)
            x = np.arange(len(y))
        color = PALETTE[k % len(PALETTE)]
        ax.plot(x, y, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(x, smooth(y, smoothing), color=color, linewidth=1.6, label=name)
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _finish(fig, save_path)


def plot_pr_curves(precision, recall_thresholds, iou_thresholds, class_names=None, at=(0.5, 0.75), axes=None,
                   title: str | None = None, save_path=None):
    """Precision-recall curves per class, one panel per IoU threshold, from COCOeval's arrays.

    Args:
        precision: (T, R, K) as ``CocoEvaluator.precision[iou_type]`` (-1 where a class has no GT).
        recall_thresholds: (R,) ``CocoEvaluator.recall_thresholds`` (0, 0.01, ..., 1).
        iou_thresholds: (T,) ``CocoEvaluator.iou_thresholds`` (0.5, 0.55, ..., 0.95).
        class_names: names indexed by label 1..K (``CocoDataset.class_names``).
        at: the IoU thresholds to draw, one panel each.
        axes: a sequence of ``len(at)`` axes to draw into.

    Returns:
        the figure; each panel has one line per class with ground truth plus a dashed mean, and the
        legend gives each curve's AP (the mean of its 101 precision samples, as COCOeval averages).
    """
    precision = np.asarray(precision)
    if axes is None:
        fig = Figure(figsize=(4 * len(at), 3.5), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(at)))
    else:
        fig = axes[0].figure
    for ax, iou in zip(axes, at, strict=True):
        t = int(np.argmin(np.abs(np.asarray(iou_thresholds) - iou)))
        if not np.isclose(iou_thresholds[t], iou):
            raise ValueError(f"IoU threshold {iou} is not among iou_thresholds {list(iou_thresholds)}")
        curves = []
        for k in range(precision.shape[2]):
            p = precision[t, :, k]
            if np.all(p < 0):
                continue                                   # no ground truth of this class
            name = class_names[k + 1] if class_names is not None else f"class {k + 1}"
            ax.plot(recall_thresholds, p, color=class_color(k + 1), label=f"{name} (AP {p.mean():.3f})")
            curves.append(p)
        if curves:
            mean = np.mean(curves, axis=0)
            ax.plot(recall_thresholds, mean, "k--", label=f"mean (AP{round(iou * 100)} {mean.mean():.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"IoU >= {iou:g}" + (f" - {title}" if title else ""), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    return _finish(fig, save_path)
