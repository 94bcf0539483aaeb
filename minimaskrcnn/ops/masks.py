"""Masks: the m x m training targets of the mask branch, and pasting predicted masks into the image.

Mask R-CNN §3: "The mask target is the intersection between an RoI and its associated ground-truth mask"
(cropped and resized to m x m, m = 28 for FPN); at inference "the m x m floating-number mask output is
then resized to the RoI size, and binarized at a threshold of 0.5".

Both functions follow torchvision's ``models.detection.roi_heads`` (``project_masks_on_boxes``,
``paste_masks_in_image``).
"""
from __future__ import annotations

import numpy as np

from ..backend import get_xp, to_numpy
from .boxes import check_boxes
from .resize import resize_bilinear
from .roi_align import roi_align_forward


def project_masks_on_boxes(gt_masks, boxes, matched_idxs, M: int, impl: str = "numpy"):
    """Mask targets: each RoI's ground-truth mask, cropped to the RoI and resampled to ``M x M``.

    Args:
        gt_masks: (G, H, W) ground-truth masks of one image (0/1, any real dtype).
        boxes: (K, 4) positive RoIs (proposals), image coordinates.
        matched_idxs: (K,) index in ``[0, G)`` of the GT box each RoI is matched to.
        M: output size (28 in the paper's FPN head).
        impl: RoIAlign implementation, ``"numpy"`` or ``"kernel"`` (see :mod:`minimaskrcnn.ops.roi_align`).
    Returns:
        (K, M, M) soft targets in [0, 1], in the float dtype of ``boxes``.

    The resampling is RoIAlign itself, run over the stack of GT masks with each RoI pointing at its own
    mask (RoI row ``(matched_idx, x1, y1, x2, y2)`` over a ``(G, 1, H, W)`` "batch"), with torchvision's
    defaults (``spatial_scale=1``, ``sampling_ratio=-1``, ``aligned=False``). So no (K, H, W) copy of the
    masks is ever made: only the G masks, viewed as a batch.
    """
    if not hasattr(gt_masks, "ndim") or gt_masks.ndim != 3:
        raise ValueError(f"gt_masks must have shape (G, H, W), got "
                         f"{getattr(gt_masks, 'shape', type(gt_masks).__name__)}")
    check_boxes(boxes, "boxes")
    if not hasattr(matched_idxs, "ndim") or matched_idxs.shape != (boxes.shape[0],) \
            or not np.issubdtype(matched_idxs.dtype, np.integer):
        raise ValueError(f"matched_idxs must be an integer array of shape ({boxes.shape[0]},), one GT index "
                         f"per box, got {getattr(matched_idxs, 'shape', type(matched_idxs).__name__)} "
                         f"{getattr(matched_idxs, 'dtype', '')}")
    if int(M) != M or M < 1:
        raise ValueError(f"M must be a positive int, got {M!r}")
    xp = get_xp(gt_masks, boxes, matched_idxs)
    dtype = boxes.dtype if np.issubdtype(boxes.dtype, np.floating) else np.dtype(np.float32)
    if boxes.shape[0] == 0:
        return xp.zeros((0, M, M), dtype=dtype)
    if bool(((matched_idxs < 0) | (matched_idxs >= gt_masks.shape[0])).any()):
        raise ValueError(f"matched_idxs must lie in [0, {gt_masks.shape[0]}) (one of the "
                         f"G = {gt_masks.shape[0]} gt_masks), got values in "
                         f"[{int(matched_idxs.min())}, {int(matched_idxs.max())}]")
    ### BEGIN SOLUTION
    rois = xp.concatenate([matched_idxs[:, None].astype(dtype), boxes.astype(dtype, copy=False)], axis=1)
    features = gt_masks.astype(dtype, copy=False)[:, None]  # (G, 1, H, W): one "image" per GT mask
    out, _ = roi_align_forward(features, rois, (int(M), int(M)), spatial_scale=1.0, sampling_ratio=-1,
                               aligned=False, impl=impl)
    # RoIAlign of a 0/1 mask lies in [0, 1]; float32 round-off can step past 1 by an ulp
    return xp.clip(out[:, 0], 0, 1)
    ### END SOLUTION


def expand_boxes(boxes, scale: float):
    """Scale ``(D, 4)`` boxes about their centres by ``scale`` (computed in the boxes' dtype)."""
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    xp = get_xp(boxes)
    return xp.stack((x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half), axis=1)


def paste_masks_in_image(masks, boxes, image_shape, threshold: float | None = 0.5, padding: int = 1):
    """Resize each ``M x M`` mask to its box and paste it into an empty image.

    Args:
        masks: (D, M, M) mask probabilities (sigmoid of the predicted class's logits).
        boxes: (D, 4) detected boxes in image coordinates.
        image_shape: ``(H, W)`` of the output masks.
        threshold: ``None`` returns the pasted probabilities (what torchvision returns); a number returns
            the boolean masks ``probability > threshold`` (the paper binarizes at 0.5).
        padding: pixels of zero padding added around each mask before resizing.
    Returns:
        (D, H, W) masks: float in the dtype of ``masks``, or bool when ``threshold`` is given.

    As torchvision: each mask is padded by ``padding`` zero pixels and its box scaled by ``(M + 2p) / M``
    about its centre, so that the padded mask covers the grown box exactly; this lets the bilinear resize
    fade the mask out to 0 at the box edge instead of cutting it sharply. The grown box is truncated to
    integers ``(x0, y0, x1, y1)``, the padded mask resized to ``(y1 - y0 + 1) x (x1 - x0 + 1)`` pixels and
    written at ``[y0 : y1 + 1, x0 : x1 + 1]``, clipped at the image border. The loop runs over detections
    (at most 100 per image); the boxes are read to the host to size the slices.
    """
    if not hasattr(masks, "ndim") or masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
        raise ValueError(f"masks must have shape (D, M, M), got "
                         f"{getattr(masks, 'shape', type(masks).__name__)}")
    if not np.issubdtype(masks.dtype, np.floating):
        raise ValueError(f"masks must hold float probabilities, got dtype {masks.dtype}")
    check_boxes(boxes, "boxes")
    if boxes.shape[0] != masks.shape[0]:
        raise ValueError(f"masks and boxes must have one row per detection, got {tuple(masks.shape)} and "
                         f"{tuple(boxes.shape)}")
    if len(image_shape) != 2 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (H, W) with positive entries, got {image_shape!r}")
    if int(padding) != padding or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")
    xp = get_xp(masks, boxes)
    im_h, im_w = (int(v) for v in image_shape)
    num, m = masks.shape[0], masks.shape[-1]
    out = xp.zeros((num, im_h, im_w), dtype=masks.dtype if threshold is None else bool)

    padded = xp.pad(masks, ((0, 0), (padding, padding), (padding, padding)))
    scale = float(m + 2 * padding) / m
    # Truncation toward zero, as torch's .to(int64).
    int_boxes = to_numpy(expand_boxes(boxes, scale)).astype(np.int64)
    for i, (bx0, by0, bx1, by1) in enumerate(int_boxes.tolist()):
        w = max(bx1 - bx0 + 1, 1)  # integer box [x0, x1] covers x1 - x0 + 1 pixels
        h = max(by1 - by0 + 1, 1)
        x_0, x_1 = max(bx0, 0), min(bx1 + 1, im_w)
        y_0, y_1 = max(by0, 0), min(by1 + 1, im_h)
        if x_1 <= x_0 or y_1 <= y_0:  # entirely outside the image
            continue
        resized = resize_bilinear(padded[i], h, w)[y_0 - by0:y_1 - by0, x_0 - bx0:x_1 - bx0]
        out[i, y_0:y_1, x_0:x_1] = resized if threshold is None else resized > threshold
    return out
