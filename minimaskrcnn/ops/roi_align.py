"""RoIAlign (Mask R-CNN §3): a fixed-size feature grid for every RoI, with no rounding anywhere.

RoIPool rounds the RoI to whole feature cells and its bins to whole cells again; at stride 16 a
one-cell error is 16 image pixels, enough to spoil a 28x28 mask. RoIAlign keeps ``x / 16`` as it is,
splits the RoI into ``PH x PW`` equal bins, reads ``sampling_ratio x sampling_ratio`` regularly spaced
points in each bin by bilinear interpolation and averages them (or takes their max). Table 2c: +3
mask AP over RoIPool at stride 16, +7 at stride 32 (Table 2d), most of it at AP75.

Read it in three steps:

1. ``ops/reference.py``: the definition as plain loops, one RoI, bin and sample point at a time.
2. This file: the geometry of every sample point as small tables (:func:`_sample_points`,
   :func:`_neighbours`), and ``impl="simple"``, which uses them to gather every point's four neighbouring
   cells in one step and to scatter the gradient back in one step (:func:`_simple_forward`).
3. The fast versions, same numbers: ``impl="numpy"`` (the default; ``_roi_align_fast.py``, the same tables
   walked in cache-sized chunks as a sparse matrix product) and ``impl="kernel"``, the CUDA kernel
   ``kernels/roi_align.cu`` (cupy.RawKernel on CuPy arrays; on NumPy arrays the CPU emulator of
   :mod:`minimaskrcnn.ops.rawkernel`), one thread per output value.

RoIWarp (roi_warp.py) reuses this file with ``quantize=True``: the RoI's corners rounded first.

Parity notes (torchvision's ``roi_align``, so that its weights behave the same here):

* Cell ``i``'s value sits at coordinate ``i``. ``aligned=False`` (torchvision's default, the paper's)
  reads the RoI half a cell off; ``aligned=True`` (Detectron2) subtracts 0.5 from its corners.
* Without ``aligned``, a RoI is at least 1x1 cell. Adaptive sampling (``sampling_ratio <= 0``) takes
  ``ceil(bin size)`` points per axis, none for an inverted ``aligned`` RoI; an empty bin gives 0.
* A point more than one cell outside the map reads 0; a point in that one-cell margin is clamped onto
  the border.
* The tables are computed with the kernel's arithmetic, in the same order and precision, so that in float32
  all three implementations pick the same cells. Max mode: ties keep the first point, numbered
  ``iy * grid_w + ix`` as the kernel numbers them.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import get_xp, scatter_add
from . import _roi_align_fast as fast
from ._roi_common import check_dout, check_int32_sizes, check_roi_inputs, output_size_pair, round_half_away_from_zero
from .rawkernel import get_kernel, launch_1d


class RoIAlignCache(NamedTuple):
    """What the backward pass needs: the forward's (validated) arguments, and for ``mode="max"`` the
    winning sample of every output (``(K, C, PH, PW)`` int32, ``iy * grid_w + ix``, -1 for none)."""
    features_shape: tuple
    rois: object
    output_size: tuple
    spatial_scale: float
    sampling_ratio: int
    aligned: bool
    quantize: bool
    mode: str
    impl: str
    argmax: object


def roi_align_forward(features, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False,
                      mode="avg", impl="numpy"):
    """RoIAlign: ``out[k, c, ph, pw]`` = mean (or max) of ``features[b_k, c]`` read by bilinear
    interpolation at the sampling points of bin ``(ph, pw)`` of RoI ``k``.

    Args:
        features: (N, C, H, W) float32 or float64, NumPy or CuPy.
        rois: (K, 5) rows ``(batch_index, x1, y1, x2, y2)`` in image pixels (cast to ``features.dtype``).
        output_size: ``PH = PW = s`` for an int ``s``, or ``(PH, PW)``.
        spatial_scale: feature cells per image pixel (1/16 for a stride-16 map).
        sampling_ratio: sample points per bin along each axis; ``<= 0``: adaptive, ``ceil(bin size)``.
        aligned: shift the scaled RoI by -0.5 cell. Cell ``i`` covers ``[i, i + 1)`` of the scaled
            image but its value is read at ``i``; the shift lines the two up (Detectron2's fix). False,
            torchvision's default, reproduces the paper.
        mode: ``"avg"`` (the paper's default) or ``"max"`` over a bin's points (Table 2c compares both).
        impl: ``"numpy"``, ``"simple"`` or ``"kernel"`` (see the module docstring).

    Returns:
        out: (K, C, PH, PW), ``features.dtype``; cache for :func:`roi_align_backward`.
    """
    return bilinear_roi_forward(features, rois, output_size, spatial_scale, sampling_ratio, aligned, mode,
                                impl, quantize=False, op="roi_align_forward")


def roi_align_backward(dout, cache: RoIAlignCache):
    """Gradient for ``features`` (N, C, H, W): each ``dout[k, c, ph, pw]`` goes back to the four cells
    around every sample point of its bin, with the same bilinear weights (divided by the number of
    points for ``avg``; only the winning point for ``max``)."""
    return bilinear_roi_backward(dout, cache, op="roi_align_backward")


# ----------------------------------------------------------------------------------------------------
# Shared by RoIAlign and RoIWarp.

def bilinear_roi_forward(features, rois, output_size, spatial_scale, sampling_ratio, aligned, mode, impl,
                         quantize: bool, op: str):
    """RoIAlign (``quantize=False``) or RoIWarp (``quantize=True``); see :func:`roi_align_forward`."""
    rois, (PH, PW) = check_roi_inputs(features, rois, output_size, spatial_scale, sampling_ratio, aligned,
                                      impl, mode, op)
    cache = RoIAlignCache(tuple(features.shape), rois, (PH, PW), float(spatial_scale), int(sampling_ratio),
                          bool(aligned), quantize, mode, impl, None)
    if impl == "kernel":
        out, argmax = _kernel_forward(features, cache)
    elif len(rois) == 0:
        xp = get_xp(features)
        out = xp.zeros((0, features.shape[1], PH, PW), dtype=features.dtype)
        argmax = xp.zeros(out.shape, dtype=np.int32) if mode == "max" else None
    elif impl == "simple":
        out, argmax = _simple_forward(features, cache)
    elif mode == "avg":
        out, argmax = fast.avg_forward(features, cache, _geometry_of(cache)), None
    else:
        out, argmax = fast.max_forward(features, cache, _geometry_of(cache))
    return out, cache._replace(argmax=argmax)


def bilinear_roi_backward(dout, cache: RoIAlignCache, op: str):
    """Gradient for ``features`` of :func:`bilinear_roi_forward`."""
    check_dout(dout, cache, op)
    if cache.impl == "kernel":
        return _kernel_backward(dout, cache)
    if cache.impl == "simple" or len(cache.rois) == 0:
        return _simple_backward(dout, cache)
    if cache.mode == "avg":
        return fast.avg_backward(dout, cache, _geometry_of(cache))
    return fast.max_backward(dout, cache, _geometry_of(cache))


# ----------------------------------------------------------------------------------------------------
# Geometry: where each RoI's sample points are, as 1-D tables per axis (the kernel's arithmetic, in the
# same order and precision, so that both pick the same cells).

class _Axis(NamedTuple):
    """The sample points of every RoI along one axis (y or x).

    grid: (K,) points per bin. idx, w: (K, B, G, 2) the two neighbouring cells of point ``g`` of bin
    ``b`` and their bilinear weights (0 for points outside the map and for padding ``g >= grid``).
    """
    grid: object
    idx: object
    w: object


def _sample_points(rois, spatial_scale, output_size, sampling_ratio, aligned, quantize):
    """Where every RoI's sample points lie: see ``roi_geometry`` in kernels/roi_align.cu.

    Returns ``(corners, (grid_y, y), (grid_x, x))``: the RoIs as sampled, (K, 4) ``x1, y1, x2, y2`` in
    feature-map cells (cell ``i``'s value sits at coordinate ``i``); per axis the points per bin
    ``grid`` (K,) and the coordinates (K, bins, G) of point ``g`` of each bin (padding for ``g >= grid``).
    """
    xp = get_xp(rois)
    dtype = rois.dtype.type
    corners = rois[:, 1:] * dtype(spatial_scale)               # (K, 4) x1, y1, x2, y2 in cells
    if quantize:                                               # RoIWarp: RoIPool's rounding
        corners = round_half_away_from_zero(corners)
    corners = corners - dtype(0.5 if aligned else 0.0)
    size = corners[:, 2:] - corners[:, :2]                     # (K, 2) width, height
    if not aligned:                                            # legacy: at least 1x1 cell
        size = xp.maximum(size, dtype(1))
    PH, PW = output_size
    y = _axis_points(corners[:, 1], size[:, 1], PH, sampling_ratio)
    x = _axis_points(corners[:, 0], size[:, 0], PW, sampling_ratio)
    return xp.concatenate([corners[:, :2], corners[:, :2] + size], axis=1), y, x


def _axis_points(start, length, n_bins: int, sampling_ratio: int):
    xp = get_xp(start)
    dtype = start.dtype.type
    bin_size = length / dtype(n_bins)
    if sampling_ratio > 0:
        grid = xp.full(start.shape, sampling_ratio, dtype=np.int64)
    else:  # adaptive: ceil(bin size) points, none for an inverted (aligned) RoI
        grid = xp.maximum(xp.ceil(bin_size), 0).astype(np.int64)
    G = max(int(grid.max()) if grid.size else 1, 1)
    # coord[k, b, g] = start + b * bin + (g + 0.5) * bin / grid, evaluated left to right as in C.
    b = xp.arange(n_bins, dtype=start.dtype)[None, :, None]
    g = (xp.arange(G) + 0.5).astype(start.dtype)[None, None, :]
    bin3 = bin_size[:, None, None]
    per_point = xp.maximum(grid, 1).astype(start.dtype)[:, None, None]
    return grid, start[:, None, None] + b * bin3 + g * bin3 / per_point


def _geometry(rois, spatial_scale, output_size, sampling_ratio, aligned, quantize, height, width):
    """``(y_axis, x_axis, count)`` for every RoI: the sample points' neighbouring cells and weights."""
    xp = get_xp(rois)
    _, (grid_y, y), (grid_x, x) = _sample_points(rois, spatial_scale, output_size, sampling_ratio, aligned,
                                                 quantize)
    count = xp.maximum(grid_y * grid_x, 1).astype(rois.dtype)  # points per bin
    return _neighbours(grid_y, y, height), _neighbours(grid_x, x, width), count


def _neighbours(grid, coord, size: int) -> _Axis:
    """The two cells around each point along one axis and their bilinear weights, with torchvision's
    border rules: a point more than one cell outside reads 0; one in that margin is clamped."""
    xp = get_xp(coord)
    dtype = coord.dtype.type
    G = coord.shape[-1]
    outside = (coord < -1) | (coord > size) | (xp.arange(G)[None, None, :] >= grid[:, None, None])
    coord = xp.maximum(coord, dtype(0))
    low = coord.astype(np.int64)
    edge = low >= size - 1
    low = xp.where(edge, size - 1, low)
    high = xp.where(edge, size - 1, low + 1)
    frac = xp.where(edge, dtype(0), coord - low.astype(coord.dtype))
    inside = (~outside).astype(coord.dtype)
    w = xp.stack([(dtype(1) - frac) * inside, frac * inside], axis=-1)
    return _Axis(grid, xp.stack([low, high], axis=-1), w)


def roi_sample_points(roi, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False,
                      quantize=False) -> dict:
    """Where RoIAlign (or RoIWarp, ``quantize=True``) reads the feature map for one RoI: for pictures.

    Args:
        roi: ``(x1, y1, x2, y2)`` in image pixels. The rest: as :func:`roi_align_forward`.
    Returns:
        dict of NumPy float64 arrays in feature-map cells, where cell ``(i, j)``'s value sits at
        ``(y, x) = (i, j)`` (as ``plt.imshow`` draws it): ``box`` (4,) the RoI as sampled;
        ``y_edges`` (PH + 1,), ``x_edges`` (PW + 1,) the bin boundaries; ``y`` (PH, grid_h) and
        ``x`` (PW, grid_w) the coordinates of the sample points of each bin row / column (a bin's
        points are all pairs).
    """
    rois = np.concatenate([[0.0], np.asarray(roi, dtype=np.float64)])[None]
    PH, PW = output_size_pair(output_size, "roi_sample_points")
    box, (gy, y), (gx, x) = _sample_points(rois, spatial_scale, (PH, PW), sampling_ratio, aligned, quantize)
    x1, y1, x2, y2 = box[0]
    return {"box": box[0], "y_edges": y1 + (y2 - y1) * np.arange(PH + 1) / PH,
            "x_edges": x1 + (x2 - x1) * np.arange(PW + 1) / PW, "y": y[0, :, :gy[0]], "x": x[0, :, :gx[0]]}


def _geometry_of(cache: RoIAlignCache):
    """:func:`_geometry` of the forward's RoIs and arguments: ``(y_axis, x_axis, count)``."""
    N, C, H, W = cache.features_shape
    return _geometry(cache.rois, cache.spatial_scale, cache.output_size, cache.sampling_ratio, cache.aligned,
                     cache.quantize, H, W)


# ----------------------------------------------------------------------------------------------------
# impl="simple": the tables used directly. Every (RoI, bin, point) reads its 2 x 2 neighbouring cells:
# one gather of K*PH*PW*Gy*Gx*4 channel vectors (fine for small problems; the NumPy path chunks it).

def _point_reads(cache: RoIAlignCache):
    """For every RoI ``k``, bin ``(ph, pw)``, point ``(gy, gx)`` and neighbour ``(a, b)``: the flat index of
    the neighbouring cell ``(n*H + row)*W + col`` and its bilinear weight, both (K, PH, PW, Gy, Gx, 2, 2);
    which points are real (K, 1, 1, Gy, Gx) (the tables pad every RoI to the largest grid); the points per
    bin ``count`` (K,) and along x ``grid_x`` (K,), by which the kernel numbers a point ``iy * grid_x + ix``."""
    ### BEGIN SOLUTION
    xp = get_xp(cache.rois)
    N, C, H, W = cache.features_shape
    y, x, count = _geometry_of(cache)            # y.idx, y.w: (K, PH, Gy, 2); x.idx, x.w: (K, PW, Gx, 2)
    batch = cache.rois[:, 0].astype(np.int64)[:, None, None, None, None, None, None]
    rows = y.idx[:, :, None, :, None, :, None]   # -> (K, PH, 1, Gy, 1, 2, 1)
    cols = x.idx[:, None, :, None, :, None, :]   # -> (K, 1, PW, 1, Gx, 1, 2)
    cell = (batch * H + rows) * W + cols
    weight = y.w[:, :, None, :, None, :, None] * x.w[:, None, :, None, :, None, :]
    Gy, Gx = y.idx.shape[2], x.idx.shape[2]
    real = (xp.arange(Gy)[None, :, None] < y.grid[:, None, None]) & \
           (xp.arange(Gx)[None, None, :] < x.grid[:, None, None])
    return cell, weight, real[:, None, None], count, x.grid
    ### END SOLUTION


def _simple_forward(features, cache: RoIAlignCache):
    """``(out, argmax)``: every point's value from its four neighbours, then the mean (or the first max)
    over each bin's points. ``argmax`` (max mode only) numbers the winner ``iy * grid_x + ix``."""
    ### BEGIN SOLUTION
    xp = get_xp(features)
    N, C, H, W = features.shape
    cell, weight, real, count, grid_x = _point_reads(cache)
    pixels = features.transpose(0, 2, 3, 1).reshape(N * H * W, C)          # row (n*H + y)*W + x: a pixel
    # each point's value: its four neighbours, weighted (added in the kernel's order: w1 v1 + ... + w4 v4)
    reads = weight[..., None] * pixels[cell]                                # (K, PH, PW, Gy, Gx, 2, 2, C)
    value = reads[..., 0, 0, :] + reads[..., 0, 1, :] + reads[..., 1, 0, :] + reads[..., 1, 1, :]
    K, PH, PW, Gy, Gx = value.shape[:5]
    if cache.mode == "avg":
        out = value.sum(axis=(3, 4)) / count[:, None, None, None]           # (K, PH, PW, C)
        return xp.ascontiguousarray(out.transpose(0, 3, 1, 2)), None
    value = xp.where(real[..., None], value, -xp.inf).reshape(K, PH, PW, Gy * Gx, C)
    best = value.argmax(axis=3)                                             # first maximum: as the kernel
    out = xp.take_along_axis(value, best[:, :, :, None], axis=3)[:, :, :, 0]
    has_points = real.reshape(K, 1, 1, Gy * Gx).any(axis=3)[..., None]      # (K, 1, 1, 1)
    argmax = xp.where(has_points, (best // Gx) * grid_x[:, None, None, None] + best % Gx, -1)
    return (xp.ascontiguousarray(xp.where(has_points, out, 0).transpose(0, 3, 1, 2)),
            xp.ascontiguousarray(argmax.transpose(0, 3, 1, 2)).astype(np.int32))
    ### END SOLUTION


def _simple_backward(dout, cache: RoIAlignCache):
    """Every (RoI, bin, point, neighbour) sends ``dout * weight`` (divided by the points per bin for
    ``avg``; only the winning point's for ``max``) back to its cell: one scatter-add."""
    ### BEGIN SOLUTION
    xp = get_xp(dout)
    N, C, H, W = cache.features_shape
    dF = xp.zeros((N * H * W, C), dtype=dout.dtype)                         # channels-last, like the gather
    if len(cache.rois):
        cell, weight, _, count, grid_x = _point_reads(cache)
        K, PH, PW, Gy, Gx = weight.shape[:5]
        d = dout.transpose(0, 2, 3, 1)[:, :, :, None, None, None, None, :]  # (K, PH, PW, 1, 1, 1, 1, C)
        if cache.mode == "avg":
            grads = d * (weight / count[:, None, None, None, None, None, None])[..., None]
        else:
            g = xp.maximum(grid_x, 1)[:, None, None, None]
            a = cache.argmax.transpose(0, 2, 3, 1).astype(np.int64)         # (K, PH, PW, C), -1: none
            won = (a // g)[:, :, :, None, None, :] * Gx + (a % g)[:, :, :, None, None, :]
            point = (xp.arange(Gy)[:, None] * Gx + xp.arange(Gx))[None, None, None, :, :, None]
            mask = (won == point) & (a >= 0)[:, :, :, None, None, :]        # (K, PH, PW, Gy, Gx, C)
            grads = d * weight[..., None] * mask[:, :, :, :, :, None, None, :]
        scatter_add(dF, cell.reshape(-1), grads.reshape(-1, C))
    return dF.reshape(N, H, W, C).transpose(0, 3, 1, 2).copy()
    ### END SOLUTION


# ----------------------------------------------------------------------------------------------------
# The CUDA kernel (GPU through CuPy, or the CPU emulator).

def _kernel_forward(features, cache):
    xp = get_xp(features)
    N, C, H, W = features.shape
    K, (PH, PW) = cache.rois.shape[0], cache.output_size
    check_int32_sizes(features.size, K * C * PH * PW)
    dtype = features.dtype.type
    suffix = "f32" if features.dtype == np.float32 else "f64"
    use_max = cache.mode == "max"
    out = xp.empty((K, C, PH, PW), dtype=features.dtype)
    argmax = xp.empty((K, C, PH, PW) if use_max else (1,), dtype=np.int32)
    kernel = get_kernel("roi_align.cu", f"roi_align_forward_{suffix}", xp)
    launch_1d(kernel, out.size, (
        np.int32(out.size), xp.ascontiguousarray(features), cache.rois, np.int32(C), np.int32(H), np.int32(W),
        np.int32(PH), np.int32(PW), dtype(cache.spatial_scale), np.int32(cache.sampling_ratio),
        np.int32(cache.aligned), np.int32(cache.quantize), np.int32(use_max), out, argmax))
    return out, argmax if use_max else None


def _kernel_backward(dout, cache):
    xp = get_xp(dout)
    N, C, H, W = cache.features_shape
    PH, PW = cache.output_size
    dtype = dout.dtype.type
    suffix = "f32" if dout.dtype == np.float32 else "f64"
    use_max = cache.mode == "max"
    argmax = cache.argmax if use_max else xp.empty(1, dtype=np.int32)
    dF = xp.zeros((N, C, H, W), dtype=dout.dtype)
    kernel = get_kernel("roi_align.cu", f"roi_align_backward_{suffix}", xp)
    launch_1d(kernel, dout.size, (
        np.int32(dout.size), xp.ascontiguousarray(dout), cache.rois, argmax, np.int32(C), np.int32(H),
        np.int32(W), np.int32(PH), np.int32(PW), dtype(cache.spatial_scale), np.int32(cache.sampling_ratio),
        np.int32(cache.aligned), np.int32(cache.quantize), np.int32(use_max), dF))
    return dF
