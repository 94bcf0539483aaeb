"""Boxes: area, IoU, the box coder (Faster R-CNN Eq. 2), clipping, small-box removal and NMS.

Convention (stated once for the whole package): a box is ``(x1, y1, x2, y2)`` in continuous input-image
pixel coordinates, and its width is ``x2 - x1`` with no "+1" (torchvision and Detectron2; the old
Detectron/py-faster-rcnn code used ``x2 - x1 + 1``). A set of boxes is an ``(N, 4)`` array.

Every function here reproduces the torchvision operator of the same name (``torchvision.ops.*`` and
``torchvision.models.detection._utils.BoxCoder``), including the order of the floating-point operations
where that decides ties, so that our results can be held against committed torchvision fixtures.
All functions take NumPy or CuPy arrays (``xp = get_xp(...)``) and return arrays of the same kind.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_xp, to_numpy


def check_boxes(boxes, name: str = "boxes", ordered: bool = True) -> None:
    """Raise ``ValueError`` unless ``boxes`` is an ``(N, 4)`` real array without NaN (and x1 <= x2, y1 <= y2).

    ``ordered=False`` skips the ``x1 <= x2, y1 <= y2`` check (e.g. for boxes about to be clipped).
    On CuPy the NaN and order checks read one boolean back from the device.
    """
    if not hasattr(boxes, "shape") or not hasattr(boxes, "dtype"):
        raise ValueError(f"{name} must be an (N, 4) array, got {type(boxes).__name__}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) with rows (x1, y1, x2, y2), "
                         f"got shape {tuple(boxes.shape)}")
    if not (np.issubdtype(boxes.dtype, np.floating) or np.issubdtype(boxes.dtype, np.integer)):
        raise ValueError(f"{name} must be a real-valued array, got dtype {boxes.dtype}")
    if boxes.shape[0] == 0:
        return
    xp = get_xp(boxes)
    floating = np.issubdtype(boxes.dtype, np.floating)
    flags = [xp.isnan(boxes).any()] if floating else []
    if ordered:
        flags.append(((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any())
    if not flags or not bool(xp.stack(flags).any()):      # one read-back for both checks (a wait on a GPU)
        return
    if floating and bool(xp.isnan(boxes).any()):
        raise ValueError(f"{name} contains NaN coordinates (shape {tuple(boxes.shape)})")
    if ordered and bool(((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any()):
        bad = int(xp.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))[0])
        raise ValueError(f"{name} must have x1 <= x2 and y1 <= y2; row {bad} is {boxes[bad].tolist()}")


def _check_vector(v, n: int, name: str, like: str) -> None:
    if not hasattr(v, "shape") or v.ndim != 1 or v.shape[0] != n:
        shape = tuple(v.shape) if hasattr(v, "shape") else type(v).__name__
        raise ValueError(f"{name} must have shape ({n},), one value per row of {like}, got {shape}")


def _upcast(boxes):
    """``boxes`` in a type wide enough for differences and areas: float16 -> float32, every integer type
    -> int64; float32 and float64 are returned as they are.

    torchvision's ``_upcast`` does the same before its products (it stops at int32): int8 boxes of side
    100 have area 10000, which int8 arithmetic wraps to 16, and float16 overflows (inf) above 65504, so a
    300x300 box's IoU would be inf / inf = NaN. int64 also keeps the differences of unsigned coordinates
    (``min(x2) - max(x1)`` of disjoint boxes) negative instead of wrapping around.
    """
    dtype = boxes.dtype
    if np.issubdtype(dtype, np.floating):
        return boxes if dtype.itemsize >= 4 else boxes.astype(np.float32)
    if np.issubdtype(dtype, np.integer):
        return boxes if dtype == np.int64 else boxes.astype(np.int64)
    raise ValueError(f"boxes must be a real-valued array (floats or integers), got dtype {dtype}")


def box_area(boxes):
    """Area ``(x2 - x1) * (y2 - y1)`` of each box: ``(..., 4) -> (...)``, in the :func:`_upcast` type
    (float32 for float16 boxes, int64 for integer boxes), like ``torchvision.ops.box_area``."""
    if not hasattr(boxes, "shape") or boxes.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape (..., 4), got "
                         f"{getattr(boxes, 'shape', type(boxes).__name__)}")
    boxes = _upcast(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1, boxes2):
    """Intersection over union of every pair of boxes: ``(N, 4), (M, 4) -> (N, M)``.

    ``IoU = |A n B| / |A u B|``. Like ``torchvision.ops.box_iou``, two zero-area boxes have IoU
    ``0 / 0 = NaN``. Computed in the :func:`_upcast` type: float16 boxes give float32 IoUs, integer
    boxes float64 ones.
    """
    check_boxes(boxes1, "boxes1")
    check_boxes(boxes2, "boxes2")
    xp = get_xp(boxes1, boxes2)
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    # Intersection rectangle of every pair, one coordinate at a time: (N, 1) against (M,) -> (N, M).
    # (Per coordinate rather than an (N, M, 2) block: the anchors-vs-GT matrix can be 200k x 100.)
    w = xp.minimum(boxes1[:, None, 2], boxes2[:, 2]) - xp.maximum(boxes1[:, None, 0], boxes2[:, 0])
    h = xp.minimum(boxes1[:, None, 3], boxes2[:, 3]) - xp.maximum(boxes1[:, None, 1], boxes2[:, 1])
    inter = xp.maximum(w, 0) * xp.maximum(h, 0)  # disjoint boxes have negative w or h
    union = area1[:, None] + area2 - inter
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 for pairs of empty boxes, as torchvision
        return inter / union


class BoxCoder:
    """Encode boxes as regression targets relative to reference boxes, and decode them back.

    Faster R-CNN Eq. (2), with the weights of the Detectron/torchvision implementations::

        tx = wx (x - xa) / wa     ty = wy (y - ya) / ha     tw = ww log(w / wa)     th = wh log(h / ha)

    where ``(x, y, w, h)`` is the centre and size of the target box and ``(xa, ya, wa, ha)`` those of the
    reference box (an anchor for the RPN, a proposal for the box head). The weights scale the targets to
    a similar magnitude: ``(1, 1, 1, 1)`` for the RPN and ``(10, 10, 5, 5)`` for the box head
    (torchvision's defaults). Box regression losses (smooth L1) are computed on these encoded deltas, so
    no gradient flows through :meth:`decode`.

    ``bbox_xform_clip`` caps ``dw`` and ``dh`` (after dividing by the weights) before ``exp`` in
    :meth:`decode`, so that a wild prediction cannot produce a box more than 1000/16 times its reference.
    """

    def __init__(self, weights=(1.0, 1.0, 1.0, 1.0), bbox_xform_clip: float = math.log(1000.0 / 16)):
        if len(weights) != 4 or not all(float(w) > 0 for w in weights):
            raise ValueError(f"weights must be 4 positive numbers (wx, wy, ww, wh), got {weights!r}")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = float(bbox_xform_clip)

    def __repr__(self):
        return f"BoxCoder(weights={self.weights}, bbox_xform_clip={self.bbox_xform_clip:.4f})"

    def encode(self, reference_boxes, proposals):
        """Regression targets that move each proposal onto its matched reference (GT) box.

        Args:
            reference_boxes: (K, 4) target boxes (the matched ground truth), positive width and height.
            proposals: (K, 4) boxes the targets are relative to (anchors or proposals), positive size.
        Returns:
            (K, 4) deltas ``(dx, dy, dw, dh)`` in the dtype of ``reference_boxes``.

        This is torchvision's ``BoxCoder.encode_single``; the per-image lists of torchvision's ``encode``
        are simply concatenated by the caller.
        """
        check_boxes(reference_boxes, "reference_boxes")
        check_boxes(proposals, "proposals")
        if reference_boxes.shape != proposals.shape:
            raise ValueError(f"reference_boxes and proposals must have the same shape (K, 4), got "
                             f"{tuple(reference_boxes.shape)} and {tuple(proposals.shape)}")
        xp = get_xp(reference_boxes, proposals)
        for name, b in (("reference_boxes", reference_boxes), ("proposals", proposals)):
            if b.shape[0] and bool(((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any()):
                raise ValueError(f"{name} must have positive width and height (the deltas divide by them "
                                 f"and take their log); remove empty boxes first")
        dtype = reference_boxes.dtype if np.issubdtype(reference_boxes.dtype, np.floating) else np.float32
        wx, wy, ww, wh = (xp.asarray(w, dtype=dtype) for w in self.weights)
        reference_boxes = reference_boxes.astype(dtype, copy=False)
        proposals = proposals.astype(dtype, copy=False)

        ### BEGIN SOLUTION
        ex_widths = proposals[:, 2] - proposals[:, 0]
        ex_heights = proposals[:, 3] - proposals[:, 1]
        ex_ctr_x = proposals[:, 0] + 0.5 * ex_widths
        ex_ctr_y = proposals[:, 1] + 0.5 * ex_heights

        gt_widths = reference_boxes[:, 2] - reference_boxes[:, 0]
        gt_heights = reference_boxes[:, 3] - reference_boxes[:, 1]
        gt_ctr_x = reference_boxes[:, 0] + 0.5 * gt_widths
        gt_ctr_y = reference_boxes[:, 1] + 0.5 * gt_heights

        dx = wx * (gt_ctr_x - ex_ctr_x) / ex_widths
        dy = wy * (gt_ctr_y - ex_ctr_y) / ex_heights
        dw = ww * xp.log(gt_widths / ex_widths)
        dh = wh * xp.log(gt_heights / ex_heights)
        return xp.stack((dx, dy, dw, dh), axis=1)
        ### END SOLUTION

    def decode(self, rel_codes, boxes):
        """Apply predicted deltas to reference boxes (the inverse of :meth:`encode`).

        Args:
            rel_codes: (K, 4 * C) deltas; for class-specific regression (the box head) the row holds
                ``C`` groups ``(dx, dy, dw, dh)``, one per class, class-major:
                ``[dx0, dy0, dw0, dh0, dx1, ...]``.
            boxes: (K, 4) reference boxes (anchors or proposals).
        Returns:
            (K, 4 * C) boxes ``(x1, y1, x2, y2)`` in the same layout as ``rel_codes`` and its dtype:
            ``out.reshape(K, C, 4)[:, c]`` is the box for class ``c``. (torchvision's ``decode_single``;
            its list-taking ``decode`` returns that ``(K, C, 4)`` view.)
        """
        if not hasattr(rel_codes, "ndim") or rel_codes.ndim != 2 or rel_codes.shape[1] % 4 != 0:
            raise ValueError(f"rel_codes must have shape (K, 4 * num_classes), got "
                             f"{getattr(rel_codes, 'shape', type(rel_codes).__name__)}")
        check_boxes(boxes, "boxes")
        if boxes.shape[0] != rel_codes.shape[0]:
            raise ValueError(f"rel_codes and boxes must have the same number of rows, got "
                             f"{tuple(rel_codes.shape)} and {tuple(boxes.shape)}")
        xp = get_xp(rel_codes, boxes)
        boxes = boxes.astype(rel_codes.dtype, copy=False)

        ### BEGIN SOLUTION
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights

        wx, wy, ww, wh = self.weights
        dx = rel_codes[:, 0::4] / wx  # (K, C): one column per class
        dy = rel_codes[:, 1::4] / wy
        dw = xp.minimum(rel_codes[:, 2::4] / ww, self.bbox_xform_clip)  # keep exp() finite
        dh = xp.minimum(rel_codes[:, 3::4] / wh, self.bbox_xform_clip)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        half_w = 0.5 * (xp.exp(dw) * widths[:, None])
        half_h = 0.5 * (xp.exp(dh) * heights[:, None])

        out = xp.stack((pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h),
                       axis=2)  # (K, C, 4)
        return out.reshape(rel_codes.shape)
        ### END SOLUTION


def clip_boxes_to_image(boxes, size):
    """Clip ``(..., 4)`` boxes to an image of ``size = (height, width)``: x into [0, W], y into [0, H]."""
    if not hasattr(boxes, "shape") or boxes.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape (..., 4), got "
                         f"{getattr(boxes, 'shape', type(boxes).__name__)}")
    if len(size) != 2 or min(size) < 0:
        raise ValueError(f"size must be (height, width) with non-negative entries, got {size!r}")
    xp = get_xp(boxes)
    height, width = size
    out = boxes.copy()
    out[..., 0::2] = xp.clip(boxes[..., 0::2], 0, width)
    out[..., 1::2] = xp.clip(boxes[..., 1::2], 0, height)
    return out


def remove_small_boxes(boxes, min_size: float):
    """Indices (int64, increasing) of the boxes whose width and height are both ``>= min_size``."""
    check_boxes(boxes, "boxes", ordered=False)
    xp = get_xp(boxes)
    ws = boxes[:, 2] - boxes[:, 0]
    hs = boxes[:, 3] - boxes[:, 1]
    return xp.flatnonzero((ws >= min_size) & (hs >= min_size)).astype(xp.int64)


def nms(boxes, scores, iou_threshold: float, max_keep: int | None = None):
    """Greedy non-maximum suppression.

    Visit the boxes by decreasing score; keep a box unless a box kept before it overlaps it with
    IoU ``> iou_threshold``. Computed a block of boxes at a time (:func:`_greedy_walk`): one IoU matrix
    against the boxes kept so far, one inside the block, and a few matrix-vector products to settle it.

    Args:
        boxes: (N, 4) boxes with x1 <= x2, y1 <= y2.
        scores: (N,) scores.
        iou_threshold: boxes overlapping a kept box with IoU strictly above this are discarded.
        max_keep: stop after this many kept boxes. Boxes are kept in decreasing score order, so this is
            exactly ``nms(...)[:max_keep]``, minus the work (the RPN keeps only its top 1000 or 2000).
    Returns:
        (K,) int64 indices of the kept boxes, by decreasing score.

    Same result as ``torchvision.ops.nms`` (same float operations; IoU compared to the threshold in float64,
    as its C++ kernel does). Ties in score are visited in index order (a stable sort). torchvision's CPU sort
    is only stable for N <= 16, so with tied scores on larger inputs it may visit tied boxes in another
    order; its documentation leaves the order of ties unspecified. A pair of zero-area boxes has IoU
    0/0 = NaN and does not suppress, as in torchvision.

    Narrow boxes are computed in the :func:`_upcast` type (float16 areas overflow and int8 ones wrap
    around), and a NaN ``iou_threshold`` (with which no box would be suppressed) is refused.
    """
    check_boxes(boxes, "boxes")
    _check_scores(scores, boxes.shape[0])
    _check_iou_threshold(iou_threshold)
    return _greedy_nms(_upcast(boxes), scores, iou_threshold, max_keep)


def _check_scores(scores, n: int) -> None:
    _check_vector(scores, n, "scores", "boxes")
    if bool(get_xp(scores).isnan(scores).any()):
        raise ValueError("scores contains NaN")


def _check_iou_threshold(iou_threshold) -> None:
    # "iou > nan" is always False: a NaN threshold would silently suppress nothing.
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float, np.integer, np.floating)) \
            or math.isnan(iou_threshold):
        raise ValueError(f"iou_threshold must be a number (an IoU, e.g. 0.5), got {iou_threshold!r}")


def _greedy_nms(boxes, scores, iou_threshold, max_keep):
    """:func:`nms` on arguments already checked."""
    xp = get_xp(boxes, scores)
    if boxes.shape[0] == 0 or (max_keep is not None and max_keep <= 0):
        return xp.zeros((0,), dtype=xp.int64)
    order = xp.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[order, k] for k in range(4))  # coordinates in visiting order
    areas = (x2 - x1) * (y2 - y1)
    if xp is not np:
        return order[xp.asarray(_greedy_nms_on_host(x1, y1, x2, y2, areas, iou_threshold, max_keep))]

    def over(rows, cols):
        return _iou_over(x1, y1, x2, y2, areas, rows, cols, iou_threshold)
    return order[_greedy_walk(over, order.shape[0], max_keep)]


def _iou_over(x1, y1, x2, y2, areas, rows, cols, iou_threshold):
    """``IoU > iou_threshold`` for every pair of the boxes at positions ``rows`` against ``cols``: (R, C) bool.

    The float operations of torchvision's kernel, in its order (so the same pairs pass the threshold);
    the IoU is compared in float64, and a NaN IoU (two empty boxes) does not suppress."""
    xp = get_xp(x1)
    w = xp.maximum(xp.minimum(x2[rows, None], x2[None, cols]) - xp.maximum(x1[rows, None], x1[None, cols]), 0)
    h = xp.maximum(xp.minimum(y2[rows, None], y2[None, cols]) - xp.maximum(y1[rows, None], y1[None, cols]), 0)
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (areas[rows, None] + areas[None, cols] - inter)
    return iou.astype(xp.float64) > iou_threshold


def _greedy_walk(over, n, max_keep, block=128):
    """Greedy NMS's kept positions (int64, increasing) among ``n`` boxes in visiting order, a block at a time.

    ``over(rows, cols)`` gives the (R, C) "IoU > threshold" matrix of positions ``rows`` against ``cols``
    (index arrays). For each block of ``block`` consecutive positions: drop those that a box kept in an
    earlier block overlaps (one matrix), then settle the block itself. Inside it, box ``i`` is kept iff no
    kept ``j < i`` of the block overlaps it; with ``U`` the block's strictly upper-triangular overlap matrix
    that is the fixed point of ``alive = not (alive @ U)``, iterated from "all alive". After ``t`` rounds the
    first ``t`` boxes are settled (each depends only on earlier ones), so it stops within ``block`` rounds,
    and in practice after 2-4 (only chains of suppressions take longer). Exactly the box-by-box greedy
    result, without a Python step per box.
    """
    kept = np.zeros(0, dtype=np.int64)
    for start in range(0, n, block):
        cand = np.arange(start, min(n, start + block))
        if kept.size:
            cand = cand[~over(kept, cand).any(axis=0)]
        if cand.size == 0:
            continue
        upper = np.triu(over(cand, cand), 1).astype(np.float32)  # counts of suppressors: exact in float32
        alive = np.ones(cand.size, dtype=np.float32)
        while True:
            settled = ((alive @ upper) == 0).astype(np.float32)
            if np.array_equal(settled, alive):
                break
            alive = settled
        kept = np.concatenate([kept, cand[alive > 0]])
        if max_keep is not None and kept.size >= max_keep:
            return kept[:max_keep]
    return kept


def _greedy_nms_on_host(x1, y1, x2, y2, areas, iou_threshold, max_keep, block_bytes=1 << 26):
    """The positions (int64, in visiting order) that greedy NMS keeps, for device arrays: walking box by box
    on the device would read a mask back once per kept box. Here every pair's "IoU > threshold" is computed
    on the device (:func:`_iou_over`, rows in blocks of ~``block_bytes``), packed to bits, read back once, and
    :func:`_greedy_walk` runs on the host over that matrix (torchvision's CUDA NMS also walks on the host)."""
    xp = get_xp(x1)
    n = x1.shape[0]
    rows = max(1, block_bytes // (8 * n))
    everything = xp.arange(n)
    over = [_iou_over(x1, y1, x2, y2, areas, everything[s:s + rows], everything, iou_threshold)
            for s in range(0, n, rows)]
    over = np.unpackbits(to_numpy(xp.packbits(xp.concatenate(over))), count=n * n).reshape(n, n).astype(bool)
    return _greedy_walk(lambda r, c: over[np.ix_(r, c)], n, max_keep)


def batched_nms(boxes, scores, idxs, iou_threshold: float, max_keep: int | None = None):
    """NMS within each category: boxes with different ``idxs`` never suppress each other.

    The coordinate-offset trick of torchvision: shift the boxes of category ``c`` by ``c * (max + 1)``
    along both axes so that different categories cannot overlap, then run one :func:`nms`. This needs
    non-negative coordinates (clip the boxes to the image first) and non-negative ``idxs``.

    Args:
        boxes: (N, 4) boxes, coordinates >= 0.
        scores: (N,) scores.
        idxs: (N,) integer category (or FPN level) of each box, >= 0.
        iou_threshold, max_keep: as in :func:`nms`.
    Returns:
        (K,) int64 indices of the kept boxes, by decreasing score.
    """
    check_boxes(boxes, "boxes")
    _check_scores(scores, boxes.shape[0])
    _check_vector(idxs, boxes.shape[0], "idxs", "boxes")
    _check_iou_threshold(iou_threshold)
    xp = get_xp(boxes, scores, idxs)
    boxes = _upcast(boxes)  # the offsets below reach (max + 1) * max(idxs): too far for float16 or int8
    if boxes.shape[0] == 0:
        return xp.zeros((0,), dtype=xp.int64)
    if not np.issubdtype(idxs.dtype, np.integer) or bool((idxs < 0).any()):
        raise ValueError(f"idxs must be non-negative integers, got dtype {idxs.dtype}, min {idxs.min()}")
    if bool((boxes < 0).any()):
        raise ValueError("boxes must have non-negative coordinates for the per-category offset trick; "
                         "clip them with clip_boxes_to_image first")
    max_coordinate = boxes.max()
    offsets = idxs.astype(boxes.dtype) * (max_coordinate + xp.asarray(1, dtype=boxes.dtype))
    return _greedy_nms(boxes + offsets[:, None], scores, iou_threshold, max_keep)
