"""COCO box AP from scratch: the numbers pycocotools' COCOeval prints, in three small steps.

Mask R-CNN reports COCO's AP (§4): for each category and each IoU threshold t in 0.50, 0.55, ..., 0.95,

1. **match** (:func:`match_detections`): in each image, the detections, in decreasing score order, each
   take the best still-unmatched ground-truth box with IoU >= t. A detection matched to a *crowd* region
   is ignored (neither a true nor a false positive); a crowd region may absorb any number of detections.
2. pool the detections of all images, sort them by score and accumulate true and false positives into a
   precision-recall curve; make precision non-increasing (**the envelope**, :func:`precision_envelope`);
3. read the envelope at **101 recall points** 0, 0.01, ..., 1 (:func:`interpolated_precision`): at each,
   the precision of the first point of the curve whose recall reaches it (0 if none does).

AP is the mean of those 101 values over thresholds and categories (categories without ground truth are
left out). AP50 and AP75 fix t. This module follows COCOeval's ``evaluateImg`` and ``accumulate`` to the
letter (ties broken by the same stable sorts), so the numbers are equal, not just close; it covers
``iouType='bbox'`` with every object area and 100 detections per image (``stats[0:3]``).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)    # as COCOeval: np.linspace(.5, .95, round((.95 - .5) / .05) + 1)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)


def box_iou_xywh(dets, gts, crowd):
    """IoU of (D, 4) detections with (G, 4) ground-truth boxes, both COCO ``[x, y, w, h]``; for a crowd
    box the union is the detection's own area (pycocotools' ``bbIou``). Returns (D, G)."""
    dets, gts = np.asarray(dets, np.float64).reshape(-1, 4), np.asarray(gts, np.float64).reshape(-1, 4)
    iw = np.minimum(dets[:, None, 0] + dets[:, None, 2], gts[None, :, 0] + gts[None, :, 2]) \
        - np.maximum(dets[:, None, 0], gts[None, :, 0])
    ih = np.minimum(dets[:, None, 1] + dets[:, None, 3], gts[None, :, 1] + gts[None, :, 3]) \
        - np.maximum(dets[:, None, 1], gts[None, :, 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    det_area = (dets[:, 2] * dets[:, 3])[:, None]
    union = np.where(np.asarray(crowd, bool)[None, :], det_area, det_area + (gts[:, 2] * gts[:, 3])[None, :] - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def match_detections(ious, gt_ignore, gt_crowd, iou_threshold):
    """Greedy matching of one image's detections of one category at one IoU threshold (COCOeval).

    Args:
        ious: (D, G) IoU of each detection (rows sorted by decreasing score) with each ground-truth box
            (columns sorted with the non-ignored boxes first).
        gt_ignore: (G,) bool, boxes whose matches are ignored (crowd regions).
        gt_crowd: (G,) bool, crowd regions: they may be matched by any number of detections.
        iou_threshold: a match needs IoU >= this.
    Returns:
        dt_match: (D,) int, the column matched by each detection, -1 for none.
        dt_ignore: (D,) bool, detections matched to an ignored box (neither true nor false positives).

    Each detection in turn takes the unmatched (or crowd) box of highest IoU >= the threshold. Once it
    has a non-ignored candidate, it does not move on to ignored boxes: a real match beats a crowd match.
    """
    D, G = ious.shape
    dt_match = np.full(D, -1, dtype=np.int64)
    dt_ignore = np.zeros(D, dtype=bool)
    ### BEGIN SOLUTION
    gt_taken = np.zeros(G, dtype=bool)
    for d in range(D):
        best_iou = min(iou_threshold, 1 - 1e-10)
        m = -1
        for g in range(G):
            if gt_taken[g] and not gt_crowd[g]:
                continue
            if m > -1 and not gt_ignore[m] and gt_ignore[g]:
                break   # the boxes are sorted non-ignored first: only ignored ones are left
            if ious[d, g] < best_iou:
                continue
            best_iou = ious[d, g]
            m = g
        if m == -1:
            continue
        dt_match[d] = m
        dt_ignore[d] = gt_ignore[m]
        gt_taken[m] = True
    ### END SOLUTION
    return dt_match, dt_ignore


def precision_envelope(precision):
    """The precision-recall curve made non-increasing: ``out[i] = max(precision[i:])``.

    Args:
        precision: (n,) precision after each detection, in score order.
    Returns:
        (n,) float array, the envelope (COCOeval's backward loop ``pr[i-1] = max(pr[i-1], pr[i])``).
    """
    ### BEGIN SOLUTION
    precision = np.asarray(precision, dtype=np.float64)
    return np.maximum.accumulate(precision[::-1])[::-1].copy()
    ### END SOLUTION


def interpolated_precision(recall, envelope, recall_thresholds=RECALL_THRESHOLDS):
    """The envelope read at each recall threshold: the precision of the first point whose recall is
    >= the threshold, 0 where the curve never reaches it.

    Args:
        recall: (n,) non-decreasing recall after each detection. envelope: (n,) from
            :func:`precision_envelope`. recall_thresholds: (R,) (COCO's 101 points by default).
    Returns:
        (R,) float array.
    """
    ### BEGIN SOLUTION
    recall = np.asarray(recall, dtype=np.float64)
    envelope = np.asarray(envelope, dtype=np.float64)
    idx = np.searchsorted(recall, recall_thresholds, side="left")
    q = np.zeros(len(recall_thresholds))
    reached = idx < len(recall)
    q[reached] = envelope[idx[reached]]
    return q
    ### END SOLUTION


def evaluate_bbox(gt: dict, results: list, max_dets: int = 100, iou_thresholds=IOU_THRESHOLDS):
    """COCO box AP of ``results`` (COCO result dicts: image_id, category_id, bbox [x, y, w, h], score)
    against ``gt`` (a COCO annotation dict: images, annotations, categories).

    Returns a dict: ``AP``, ``AP50``, ``AP75`` (as ``COCOeval.stats[0:3]``) and ``precision``, a
    (T, 101, K) array with -1 for categories without ground truth (COCOeval's ``eval['precision']``
    at area 'all' and ``max_dets``).
    """
    image_ids = sorted(im["id"] for im in gt["images"])
    cat_ids = sorted(c["id"] for c in gt["categories"])
    gts, dts = defaultdict(list), defaultdict(list)
    for ann in gt["annotations"]:
        gts[ann["image_id"], ann["category_id"]].append(ann)
    for res in results:
        dts[res["image_id"], res["category_id"]].append(res)
    T, R, K = len(iou_thresholds), len(RECALL_THRESHOLDS), len(cat_ids)
    precision = -np.ones((T, R, K))
    for k, cat in enumerate(cat_ids):
        scores, matched, ignored, n_gt = [], [], [], 0
        for image in image_ids:
            g, d = gts.get((image, cat), []), dts.get((image, cat), [])
            if not g and not d:
                continue
            crowd = np.array([bool(a.get("iscrowd", 0)) for a in g], dtype=bool)
            ignore = crowd   # for boxes COCOeval ignores exactly the crowd regions (area range 'all')
            g_order = np.argsort(ignore, kind="mergesort")     # non-ignored boxes first
            d_order = np.argsort([-r["score"] for r in d], kind="mergesort")[:max_dets]
            ious = box_iou_xywh([d[i]["bbox"] for i in d_order], [g[i]["bbox"] for i in g_order], crowd[g_order])
            n_gt += int((~ignore).sum())
            per_t = [match_detections(ious, ignore[g_order], crowd[g_order], t) for t in iou_thresholds]
            scores.append(np.array([d[i]["score"] for i in d_order], dtype=np.float64))
            matched.append(np.array([m >= 0 for m, _ in per_t], dtype=bool).reshape(T, -1))
            ignored.append(np.array([ig for _, ig in per_t], dtype=bool).reshape(T, -1))
        if n_gt == 0:
            continue
        s = np.concatenate(scores)
        order = np.argsort(-s, kind="mergesort")
        tps = np.concatenate(matched, axis=1)[:, order] & ~np.concatenate(ignored, axis=1)[:, order]
        fps = ~np.concatenate(matched, axis=1)[:, order] & ~np.concatenate(ignored, axis=1)[:, order]
        tp_sum, fp_sum = np.cumsum(tps, axis=1).astype(float), np.cumsum(fps, axis=1).astype(float)
        for t in range(T):
            recall = tp_sum[t] / n_gt
            prec = tp_sum[t] / (fp_sum[t] + tp_sum[t] + np.spacing(1))
            precision[t, :, k] = interpolated_precision(recall, precision_envelope(prec))

    def mean(p):
        p = p[p > -1]
        return float(p.mean()) if p.size else -1.0

    t50, t75 = (int(np.argmin(np.abs(np.asarray(iou_thresholds) - v))) for v in (0.5, 0.75))
    return {"AP": mean(precision), "AP50": mean(precision[t50]), "AP75": mean(precision[t75]), "precision": precision}
