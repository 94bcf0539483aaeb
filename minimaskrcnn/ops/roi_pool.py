"""RoIPool (Fast R-CNN, Girshick 2015): the RoI layer Mask R-CNN replaces (Table 2c/2d, first row).

RoIPool turns a RoI of any size into a fixed ``PH x PW`` grid by max pooling, with two roundings
("quantizations", Mask R-CNN §3):

1. the RoI's corners are rounded to whole feature cells, ``round(x1 * spatial_scale)``, and the RoI
   covers cells ``start .. end`` inclusive;
2. its bins are widened to whole cells: bin ``ph`` covers rows ``floor(ph * bin_h) .. ceil((ph + 1)
   * bin_h) - 1`` of the RoI (so neighbouring bins may share a row).

Each output is the max over its bin's cells; the backward pass routes the gradient to that one cell.
With a stride of 16, rounding 1 alone moves the RoI by up to 8 image pixels: harmless for
classification, harmful for 28x28 masks (-3 mask AP at stride 16, -7 at stride 32).

Follows ``torchvision.ops.roi_pool`` exactly. ``sampling_ratio`` and ``aligned`` are accepted so that
all three RoI operators share one signature, and ignored: RoIPool reads whole cells, it does not
sample, and has no half-pixel convention. ``mode`` must be ``"max"``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import get_xp, scatter_add
from ._roi_common import (
    bins_to_kchw,
    channels_last,
    check_int32_sizes,
    check_dout,
    check_roi_inputs,
    device_chunks,
    max_and_argmax,
    output_size_pair,
    round_half_away_from_zero,
)
from .rawkernel import get_kernel, launch_1d


class RoIPoolCache(NamedTuple):
    """The forward's arguments and, per output, the cell that won the max: ``argmax`` (K, C, PH, PW)
    int32, the position ``h * W + w`` inside the channel plane, -1 for an empty bin."""
    features_shape: tuple
    rois: object
    output_size: tuple
    impl: str
    argmax: object


def roi_pool_forward(features, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False,
                     mode="max", impl="numpy"):
    """RoIPool: ``out[k, c, ph, pw]`` = max of ``features[b_k, c]`` over the cells of bin ``(ph, pw)`` of
    the rounded RoI ``k``; 0 for a bin that lies entirely outside the map.

    Args:
        features: (N, C, H, W) float32 or float64, NumPy or CuPy.
        rois: (K, 5) rows ``(batch_index, x1, y1, x2, y2)`` in image pixels.
        output_size: int or ``(PH, PW)``.
        spatial_scale: feature cells per image pixel.
        sampling_ratio, aligned: ignored (see the module docstring).
        mode: must be ``"max"``.
        impl: ``"numpy"`` or ``"kernel"`` (``kernels/roi_pool.cu``: CuPy, or the CPU emulator).
            ``"simple"``, which RoIAlign offers as its readable NumPy version, is ``"numpy"`` here: RoIPool's
            NumPy path already is a plain gather and max (chunked only to bound its memory).

    Returns:
        out (K, C, PH, PW); cache for :func:`roi_pool_backward`.
    """
    op = "roi_pool_forward"
    rois, (PH, PW) = check_roi_inputs(features, rois, output_size, spatial_scale, sampling_ratio, aligned,
                                      impl, mode, op)
    if mode != "max":
        raise ValueError(f"{op}: RoIPool is max pooling (mode='max'), got mode={mode!r}; "
                         "RoIWarp and RoIAlign offer 'avg'")
    forward = _kernel_forward if impl == "kernel" else _numpy_forward
    out, argmax = forward(features, rois, (PH, PW), spatial_scale)
    return out, RoIPoolCache(tuple(features.shape), rois, (PH, PW), impl, argmax)


def roi_pool_backward(dout, cache: RoIPoolCache):
    """Gradient for ``features`` (N, C, H, W): ``dout[k, c, ph, pw]`` is added to the one cell that won
    the max of its bin (cells shared by overlapping bins or RoIs collect several)."""
    check_dout(dout, cache, "roi_pool_backward")
    if cache.impl == "kernel":
        return _kernel_backward(dout, cache)
    ### BEGIN SOLUTION
    N, C, H, W = cache.features_shape
    xp = get_xp(dout)
    K = cache.rois.shape[0]
    batch = cache.rois[:, 0].astype(np.int64)[:, None, None, None]
    plane = (batch * C + xp.arange(C)[None, :, None, None]) * (H * W)              # (K, C, 1, 1)
    won = cache.argmax >= 0                                                        # False: empty bin
    dF = xp.zeros(N * C * H * W, dtype=dout.dtype)
    if K:
        scatter_add(dF, (plane + cache.argmax)[won], dout[won])
    return dF.reshape(N, C, H, W)
    ### END SOLUTION


def roi_pool_cells(roi, output_size, spatial_scale, height: int, width: int):
    """Which cells each RoIPool bin takes its max over, for one RoI: for pictures.

    Args:
        roi: ``(x1, y1, x2, y2)`` in image pixels; height, width: the feature map's size.
    Returns:
        ``(rows, cols)``: (PH, 2) and (PW, 2) int arrays; bin ``(ph, pw)`` covers rows
        ``rows[ph, 0] <= i < rows[ph, 1]`` and columns ``cols[pw, 0] <= j < cols[pw, 1]``.
    """
    rois = np.concatenate([[0.0], np.asarray(roi, dtype=np.float64)])[None]
    (h0, h1), (w0, w1) = _bins(rois, spatial_scale, output_size_pair(output_size, "roi_pool_cells"), height,
                               width)
    return np.stack([h0[0], h1[0]], axis=1), np.stack([w0[0], w1[0]], axis=1)


def _bins(rois, spatial_scale, output_size, height, width):
    """Each bin's cell range, after both roundings: hstart, hend (K, PH); wstart, wend (K, PW)."""
    ### BEGIN SOLUTION
    xp = get_xp(rois)
    dtype = rois.dtype.type
    corners = round_half_away_from_zero(rois[:, 1:] * dtype(spatial_scale)).astype(np.int64)
    PH, PW = output_size
    y = _bin_edges(corners[:, 1], corners[:, 3], PH, height, dtype, xp)
    x = _bin_edges(corners[:, 0], corners[:, 2], PW, width, dtype, xp)
    return y, x
    ### END SOLUTION


def _bin_edges(start, end, n_bins, size, dtype, xp):
    """Rounding 2 along one axis: bin ``p`` of RoIs covering cells ``start .. end`` (inclusive, (K,) ints)
    spans ``[lo, hi)`` with ``lo = start + floor(p * bin)``, ``hi = start + ceil((p + 1) * bin)``, clipped to
    ``[0, size]``; ``bin = max(end - start + 1, 1) / n_bins`` in ``dtype``. Returns ``lo, hi`` (K, n_bins)."""
    ### BEGIN SOLUTION
    length = xp.maximum(end - start + 1, 1).astype(dtype)                 # whole cells, at least 1
    bin_size = (length / dtype(n_bins))[:, None]
    p = xp.arange(n_bins, dtype=dtype)[None, :]
    lo = xp.floor(p * bin_size).astype(np.int64) + start[:, None]
    hi = xp.ceil((p + 1) * bin_size).astype(np.int64) + start[:, None]
    return xp.clip(lo, 0, size), xp.clip(hi, 0, size)
    ### END SOLUTION


def _numpy_forward(features, rois, output_size, spatial_scale):
    """RoIPool in NumPy (``impl="numpy"`` and ``"simple"``): ``(out, argmax)``, both (K, C, PH, PW).

    ``out[k, c, ph, pw]`` is the max of ``features[b_k, c]`` over the cells of bin ``(ph, pw)`` (see
    :func:`_bins`), 0 for an empty bin; ``argmax`` (int32) is the winning cell ``h * W + w`` within its
    channel plane (the first one in row-major order on a tie), -1 for an empty bin."""
    ### BEGIN SOLUTION
    xp = get_xp(features)
    N, C, H, W = features.shape
    K, (PH, PW) = rois.shape[0], output_size
    (h0, h1), (w0, w1) = _bins(rois, spatial_scale, output_size, H, W)
    F = channels_last(features)
    out = xp.zeros((K, C, PH, PW), dtype=features.dtype)
    argmax = xp.full((K, C, PH, PW), -1, dtype=np.int32)
    batch = rois[:, 0].astype(np.int64)
    cells = PH * PW * xp.maximum((h1 - h0).max(axis=1), 1) * xp.maximum((w1 - w0).max(axis=1), 1)
    for ks, (Lh, Lw) in device_chunks(cells, C * features.itemsize, (h1 - h0).max(axis=1), (w1 - w0).max(axis=1)):
        Lh, Lw = max(Lh, 1), max(Lw, 1)
        # A bin's rows/columns, padded by repeating its last one: a repeat never changes the max, and
        # comes after the cell it copies, so the first maximal cell in row-major order still wins.
        rows = xp.clip(xp.minimum(h0[ks, :, None] + xp.arange(Lh), h1[ks, :, None] - 1), 0, H - 1)
        cols = xp.clip(xp.minimum(w0[ks, :, None] + xp.arange(Lw), w1[ks, :, None] - 1), 0, W - 1)
        cell = (rows[:, :, None, :, None] * W + cols[:, None, :, None, :]).reshape(-1, Lh * Lw)  # (bins, L)
        pix = (batch[ks] * (H * W)).repeat(PH * PW)[:, None] + cell                          # rows of F
        best, first = max_and_argmax(xp.take(F, pix, axis=0))                               # (bins, C)
        empty = ((h1[ks] <= h0[ks])[:, :, None] | (w1[ks] <= w0[ks])[:, None, :]).reshape(-1, 1)
        out[ks] = bins_to_kchw(xp.where(empty, 0, best), PH, PW)
        argmax[ks] = bins_to_kchw(xp.where(empty, -1, xp.take_along_axis(cell, first, axis=1)), PH, PW)
    return out, argmax
    ### END SOLUTION


def _kernel_forward(features, rois, output_size, spatial_scale):
    xp = get_xp(features)
    N, C, H, W = features.shape
    K, (PH, PW) = rois.shape[0], output_size
    check_int32_sizes(features.size, K * C * PH * PW)
    suffix = "f32" if features.dtype == np.float32 else "f64"
    out = xp.empty((K, C, PH, PW), dtype=features.dtype)
    argmax = xp.empty((K, C, PH, PW), dtype=np.int32)
    kernel = get_kernel("roi_pool.cu", f"roi_pool_forward_{suffix}", xp)
    launch_1d(kernel, out.size, (np.int32(out.size), xp.ascontiguousarray(features), rois, np.int32(C),
                                 np.int32(H), np.int32(W), np.int32(PH), np.int32(PW),
                                 features.dtype.type(spatial_scale), out, argmax))
    return out, argmax


def _kernel_backward(dout, cache):
    xp = get_xp(dout)
    N, C, H, W = cache.features_shape
    PH, PW = cache.output_size
    suffix = "f32" if dout.dtype == np.float32 else "f64"
    dF = xp.zeros((N, C, H, W), dtype=dout.dtype)
    kernel = get_kernel("roi_pool.cu", f"roi_pool_backward_{suffix}", xp)
    launch_1d(kernel, dout.size, (np.int32(dout.size), xp.ascontiguousarray(dout), cache.rois, cache.argmax,
                                  np.int32(C), np.int32(H), np.int32(W), np.int32(PH), np.int32(PW), dF))
    return dF
