"""Why detections fail: every detection and every missed object sorted into one kind of error.

AP says *how much* a detector falls short; this says *where*. In the spirit of COCO's ``analyze()``
(after Hoiem, Chodpathumwan and Dai, "Diagnosing Error in Object Detectors", ECCV 2012), each detection
is, in score order and image by image:

* ``correct``: matched at IoU >= ``iou_thresh`` to a not-yet-matched object of its class (COCOeval's greedy
  rule at one threshold);
* ``duplicate``: an object of its class overlaps it by >= ``iou_thresh`` but was already matched by a
  higher-scoring detection (what NMS should have removed);
* ``localization``: the right class, poorly placed: IoU in [``loc_thresh``, ``iou_thresh``) with an object
  of its class (COCO's "Loc" forgives these at IoU 0.1; Hoiem counts duplicates here too);
* ``confusion``: no object of its class nearby, but one of *another* class with IoU >= ``loc_thresh``
  (COCO's "Sim" and "Oth", merged: the shapes have no supercategories);
* ``background``: IoU < ``loc_thresh`` with every object: it fired on nothing;

and each object no ``correct`` detection matched is ``missed``. The kinds are tried in this order, as
COCO's analysis forgives localisation errors before class confusions.

A pure function of ground truth and predictions (NumPy, no model), so it can be tested on hand-made cases
and used on any detector's output.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..ops.boxes import box_iou

ERROR_KINDS = ("correct", "duplicate", "localization", "confusion", "background")


class DetectionOutcome(NamedTuple):
    """One detection and what it is. ``gt``: the object that decided its kind (index into its image's
    targets; -1 for ``background``); ``iou``: its IoU with that object (for ``background``: the largest IoU
    with any object)."""
    image: int
    index: int
    label: int
    score: float
    kind: str
    gt: int
    gt_label: int
    iou: float


class MissedObject(NamedTuple):
    """An object no correct detection found. ``best_det``: the detection (index into its image's
    prediction) overlapping it most, -1 when none does; ``best_iou`` and ``best_label``: that detection's IoU
    and class (0.0 and 0 when none)."""
    image: int
    index: int
    label: int
    area: float
    best_det: int
    best_iou: float
    best_label: int


class ErrorBreakdown(NamedTuple):
    detections: list   # [DetectionOutcome], image by image, in decreasing score within an image
    missed: list       # [MissedObject]
    counts: dict       # {kind: number} for the ERROR_KINDS and 'missed'
    num_objects: int

    def worst(self, n: int = 8) -> tuple[list, list]:
        """The ``n`` most confident wrong detections and the ``n`` largest missed objects."""
        wrong = sorted((d for d in self.detections if d.kind != "correct"), key=lambda d: -d.score)
        missed = sorted(self.missed, key=lambda m: -m.area)
        return wrong[:n], missed[:n]


def mask_iou(masks1, masks2) -> np.ndarray:
    """IoU of every pair of binary masks: ``(N, H, W), (M, H, W) -> (N, M)`` (0 where both are empty)."""
    a = np.asarray(masks1).reshape(len(masks1), -1).astype(np.float64) > 0.5
    b = np.asarray(masks2).reshape(len(masks2), -1).astype(np.float64) > 0.5
    inter = a.astype(np.float64) @ b.T.astype(np.float64)
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _last_argmax(values) -> int:
    return len(values) - 1 - int(np.argmax(values[::-1]))


def _ious(target, prediction, iou_type, order):
    if iou_type == "bbox":
        d = np.asarray(prediction["boxes"], np.float64).reshape(-1, 4)[order]
        g = np.asarray(target["boxes"], np.float64).reshape(-1, 4)
        return box_iou(d, g) if len(d) and len(g) else np.zeros((len(d), len(g)))
    d, g = np.asarray(prediction["masks"]), np.asarray(target["masks"])
    if d.ndim == 4 and d.shape[1] == 1:                     # torchvision's (D, 1, H, W)
        d = d[:, 0]
    if len(order) and len(g) and d.shape[1:] != g.shape[1:]:
        raise ValueError(f"predicted masks {d.shape[1:]} and target masks {g.shape[1:]} must be the same size")
    return mask_iou(d[order], g) if len(order) and len(g) else np.zeros((len(order), len(g)))


def error_breakdown(targets, predictions, iou_type: str = "segm", iou_thresh: float = 0.5,
                    loc_thresh: float = 0.1, score_thresh: float = 0.0) -> ErrorBreakdown:
    """Sort every detection into one of :data:`ERROR_KINDS` and list the missed objects.

    Args:
        targets: one dict per image, ``'labels'`` (G,) and ``'boxes'`` (G, 4) x1, y1, x2, y2 (``'bbox'``) or
            ``'masks'`` (G, H, W) binary (``'segm'``).
        predictions: one dict per image, ``'labels'`` (D,), ``'scores'`` (D,), and ``'boxes'`` or ``'masks'``
            (binary, or probabilities thresholded at 0.5) in the same pixels as the targets.
        iou_type: ``'segm'`` (mask IoU) or ``'bbox'`` (box IoU).
        iou_thresh: IoU of a correct detection (COCO's AP50 uses 0.5).
        loc_thresh: below this IoU a detection does not overlap an object at all (COCO's analysis: 0.1).
        score_thresh: detections scoring below it are left out (as if the detector had not made them).

    Returns:
        :class:`ErrorBreakdown`: one :class:`DetectionOutcome` per kept detection, one :class:`MissedObject`
        per object no correct detection matched, and the counts of each kind.
    """
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
    if not 0 < loc_thresh <= iou_thresh <= 1:
        raise ValueError(f"need 0 < loc_thresh <= iou_thresh <= 1, got {loc_thresh} and {iou_thresh}")
    if len(targets) != len(predictions):
        raise ValueError(f"targets and predictions must hold the same images, got {len(targets)} and "
                         f"{len(predictions)}")
    detections, missed, num_objects = [], [], 0
    for img, (target, prediction) in enumerate(zip(targets, predictions)):
        gt_labels = np.asarray(target["labels"]).reshape(-1)
        labels = np.asarray(prediction["labels"]).reshape(-1)
        scores = np.asarray(prediction["scores"], np.float64).reshape(-1)
        if len(labels) != len(scores):
            raise ValueError(f"image {img}: {len(labels)} labels but {len(scores)} scores")
        kept = np.flatnonzero(scores >= score_thresh)
        order = kept[np.argsort(-scores[kept], kind="stable")]
        ious = _ious(target, prediction, iou_type, order)                # (D, G), detections in score order
        same = labels[order][:, None] == gt_labels[None, :]
        taken = np.zeros(len(gt_labels), bool)
        for row, d in enumerate(order):
            iou_same = np.where(same[row], ious[row], -1.0)
            free = np.where(taken, -1.0, iou_same)
            if len(free) and free.max() >= iou_thresh:
                g, kind = _last_argmax(free), "correct"          # a tie goes to the later object, as in COCOeval
                taken[g] = True
            elif len(iou_same) and iou_same.max() >= iou_thresh:
                g, kind = int(np.argmax(iou_same)), "duplicate"
            elif len(iou_same) and iou_same.max() >= loc_thresh:
                g, kind = int(np.argmax(iou_same)), "localization"
            else:
                iou_other = np.where(same[row], -1.0, ious[row])
                if len(iou_other) and iou_other.max() >= loc_thresh:
                    g, kind = int(np.argmax(iou_other)), "confusion"
                else:
                    g, kind = -1, "background"
            iou = float(ious[row, g]) if g >= 0 else float(ious[row].max(initial=0.0))
            detections.append(DetectionOutcome(img, int(d), int(labels[d]), float(scores[d]), kind, g,
                                               int(gt_labels[g]) if g >= 0 else 0, iou))
        if iou_type == "segm":
            masks = np.asarray(target["masks"])
            areas = masks.astype(bool).sum(axis=(1, 2)) if masks.ndim == 3 else np.zeros(len(gt_labels))
        else:
            b = np.asarray(target["boxes"], np.float64).reshape(-1, 4)
            areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        for g in np.flatnonzero(~taken):
            best = int(np.argmax(ious[:, g])) if len(order) else -1
            has = best >= 0 and ious[best, g] > 0
            missed.append(MissedObject(img, int(g), int(gt_labels[g]), float(areas[g]),
                                       int(order[best]) if has else -1, float(ious[best, g]) if has else 0.0,
                                       int(labels[order[best]]) if has else 0))
        num_objects += len(gt_labels)
    counts = {k: sum(d.kind == k for d in detections) for k in ERROR_KINDS}
    counts["missed"] = len(missed)
    return ErrorBreakdown(detections, missed, counts, num_objects)
