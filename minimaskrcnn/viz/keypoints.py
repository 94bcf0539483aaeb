"""Skeletons over images (paper §5, Fig. 7): keypoints joined by their skeleton's limbs.

A ground-truth keypoint with ``v = 2`` (visible) is a filled dot, ``v = 1`` (labelled but occluded) a hollow
ring with dashed limbs, ``v = 0`` is not drawn. A predicted keypoint is drawn when its score (the heatmap's
logit at the argmax) is above ``kp_thresh`` (torchvision's and Detectron's visualisations use 0 or 2), as a
filled dot; a limb needs both ends. Same conventions as :mod:`minimaskrcnn.viz.detections`: draw into ``ax``
or a new figure, return it, save it with ``save_path``.
"""
from __future__ import annotations

import numpy as np

from .detections import _finish, _new_axes, class_color

LEFT, RIGHT, CENTRE = (0.1, 0.45, 1.0), (1.0, 0.35, 0.1), (0.2, 0.9, 0.3)


def _side_colour(name: str):
    return LEFT if name.startswith("left") else RIGHT if name.startswith("right") else CENTRE


def draw_skeletons(ax, keypoints, skeleton, names=None, kp_scores=None, kp_thresh: float = 0.0, linewidth=1.5):
    """Draw (P, K, 3) keypoints ``[x, y, v]`` and the 1-based ``skeleton`` pairs on ``ax`` (an image's axes).

    With ``kp_scores`` (P, K) (predictions) a keypoint shows when its score exceeds ``kp_thresh``; without,
    ``v`` decides (ground truth: 2 filled, 1 hollow and dashed, 0 hidden). Limbs of the person's left side are
    blue, right side orange, the middle green (``names`` say which is which; without them all are green).
    """
    keypoints = np.asarray(keypoints, np.float64).reshape(-1, *np.shape(keypoints)[-2:])
    K = keypoints.shape[1]
    names = list(names) if names is not None else [""] * K
    for p, kp in enumerate(keypoints):
        if kp_scores is not None:
            shown = np.asarray(kp_scores)[p] > kp_thresh
            occluded = np.zeros(K, bool)
        else:
            shown, occluded = kp[:, 2] > 0, kp[:, 2] == 1
        for a, b in skeleton:
            a, b = a - 1, b - 1
            if shown[a] and shown[b]:
                dashed = occluded[a] or occluded[b]
                ax.plot(kp[[a, b], 0], kp[[a, b], 1], color=_side_colour(names[b]), lw=linewidth,
                        ls="--" if dashed else "-", alpha=0.9)
        for k in np.nonzero(shown)[0]:
            colour = _side_colour(names[k])
            ax.plot(kp[k, 0], kp[k, 1], "o", ms=3.5, mfc="none" if occluded[k] else colour, mec=colour, mew=1.2)
    return ax


def draw_keypoint_grid(images, targets, predictions, skeleton, names=None, score_thresh: float = 0.5,
                       kp_thresh: float = 0.0, save_path=None):
    """Ground truth (top row) above predictions (bottom row, detections scoring >= ``score_thresh``) for a few
    images: boxes and skeletons."""
    from matplotlib.patches import Rectangle

    n = len(images)
    fig, axes = _new_axes(None, (2.2 * n, 4.6), 2, n)
    for i, (image, t, p) in enumerate(zip(images, targets, predictions, strict=True)):
        for row, title in ((0, "ground truth"), (1, f"predicted (score >= {score_thresh:g})")):
            ax = axes[row, i]
            ax.imshow(image)
            ax.set_axis_off()
            ax.set_title(title, fontsize=8)
            if row == 0:
                boxes, kps, scores = t["boxes"], t["keypoints"], None
            else:
                keep = np.asarray(p["scores"]) >= score_thresh
                boxes, kps, scores = p["boxes"][keep], p["keypoints"][keep], p["keypoints_scores"][keep]
            for (x1, y1, x2, y2) in np.asarray(boxes):
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=0.8, ec=class_color(1)))
            draw_skeletons(ax, kps, skeleton, names, scores, kp_thresh)
    return _finish(fig, save_path)
