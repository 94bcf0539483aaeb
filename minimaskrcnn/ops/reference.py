"""RoIAlign and RoIPool as plain loops, straight from their definitions: the oracle for the tests, and the
version to read (or write) first.

One RoI, one bin, one sample point at a time, in Python floats (float64), like the ``expected_fn`` of
torchvision's own operator tests. Slow on purpose: use them on a few small RoIs. The real operators
(roi_align.py, roi_pool.py and the CUDA kernels) compute the same numbers, vectorised.

Coordinates: cell ``(i, j)`` of a feature map holds the value at the point ``(y, x) = (i, j)``; a RoI
``(x1, y1, x2, y2)`` in image pixels lies at ``x1 * spatial_scale ...`` in cells.
"""
from __future__ import annotations

import math

import numpy as np


def bilinear_interpolate(plane, y: float, x: float) -> float:
    """The value of ``plane`` (H, W) at the real point ``(y, x)``, from its four neighbouring cells.

    Border rules (torchvision's): a point more than one cell outside the map reads 0; a point in that
    one-cell margin is moved onto the border first.
    """
    H, W = plane.shape
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= H - 1:                      # on or past the last row: read that row only
        y_low = y_high = H - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= W - 1:
        x_low = x_high = W - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low           # how far past the low neighbour, in [0, 1)
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * plane[y_low, x_low] + hy * lx * plane[y_low, x_high]
            + ly * hx * plane[y_high, x_low] + ly * lx * plane[y_high, x_high])


def roi_align_reference(features, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False,
                        mode="avg"):
    """RoIAlign (Mask R-CNN §3), one output value at a time.

    Args:
        features: (N, C, H, W). rois: (K, 5) rows ``(batch_index, x1, y1, x2, y2)`` in image pixels.
        output_size: int or ``(PH, PW)``; sampling_ratio: points per bin and axis, ``<= 0`` for
        ``ceil(bin size)``; aligned: shift the RoI by -0.5 cell; mode: ``"avg"`` or ``"max"`` of the points.
    Returns:
        (K, C, PH, PW) float64.
    """
    PH, PW = (output_size, output_size) if np.isscalar(output_size) else output_size
    features = np.asarray(features, dtype=np.float64)
    C = features.shape[1]
    out = np.zeros((len(rois), C, PH, PW))
    offset = 0.5 if aligned else 0.0
    for k, roi in enumerate(np.asarray(rois, dtype=np.float64)):
        n = int(roi[0])
        x1, y1, x2, y2 = (v * spatial_scale - offset for v in roi[1:])
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:                     # the paper's version: every RoI at least 1 x 1 cell
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / PH, roi_w / PW
        grid_h = sampling_ratio if sampling_ratio > 0 else max(math.ceil(bin_h), 0)
        grid_w = sampling_ratio if sampling_ratio > 0 else max(math.ceil(bin_w), 0)
        for c in range(C):
            for ph in range(PH):
                for pw in range(PW):
                    values = []
                    for iy in range(grid_h):
                        y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                        for ix in range(grid_w):
                            x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                            values.append(bilinear_interpolate(features[n, c], y, x))
                    if mode == "avg":
                        out[k, c, ph, pw] = sum(values) / max(len(values), 1)   # an empty bin gives 0
                    else:
                        out[k, c, ph, pw] = max(values, default=0.0)
    return out


def c_round(v: float) -> int:
    """C's ``round``: halves away from zero (2.5 -> 3, -2.5 -> -3), unlike Python's (2.5 -> 2)."""
    whole = math.trunc(v)
    return whole + (int(math.copysign(1, v)) if abs(v - whole) >= 0.5 else 0)


def roi_pool_reference(features, rois, output_size, spatial_scale=1.0):
    """RoIPool (Fast R-CNN), one output value at a time, with its two roundings.

    1. The RoI's corners are rounded to whole cells (C's ``round``), and it covers cells ``start .. end``
       inclusive (at least one cell).
    2. Bin ``p`` covers cells ``floor(p * bin) .. ceil((p + 1) * bin) - 1`` of the RoI, clipped to the map.
    Each output is the max of its bin's cells; 0 for a bin entirely outside the map.

    Args:
        features: (N, C, H, W). rois: (K, 5) rows ``(batch_index, x1, y1, x2, y2)`` in image pixels.
        output_size: int or ``(PH, PW)``.
    Returns:
        (K, C, PH, PW) float64.
    """
    PH, PW = (output_size, output_size) if np.isscalar(output_size) else output_size
    features = np.asarray(features, dtype=np.float64)
    _, C, H, W = features.shape
    out = np.zeros((len(rois), C, PH, PW))
    for k, roi in enumerate(np.asarray(rois, dtype=np.float64)):
        n = int(roi[0])
        x1, y1, x2, y2 = (c_round(v * spatial_scale) for v in roi[1:])            # rounding 1
        bin_h = max(y2 - y1 + 1, 1) / PH
        bin_w = max(x2 - x1 + 1, 1) / PW
        for ph in range(PH):
            h0 = min(max(y1 + math.floor(ph * bin_h), 0), H)                       # rounding 2
            h1 = min(max(y1 + math.ceil((ph + 1) * bin_h), 0), H)
            for pw in range(PW):
                w0 = min(max(x1 + math.floor(pw * bin_w), 0), W)
                w1 = min(max(x1 + math.ceil((pw + 1) * bin_w), 0), W)
                if h1 > h0 and w1 > w0:
                    out[k, :, ph, pw] = features[n, :, h0:h1, w0:w1].max(axis=(1, 2))
    return out
