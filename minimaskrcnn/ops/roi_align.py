"""RoIAlign (Mask R-CNN §3): a fixed-size feature grid for every RoI, with no rounding anywhere.

RoIPool rounds the RoI to whole feature cells and its bins to whole cells again; at stride 16 a
one-cell error is 16 image pixels, enough to spoil a 28x28 mask. RoIAlign keeps ``x / 16`` as it is,
splits the RoI into ``PH x PW`` equal bins, reads ``sampling_ratio x sampling_ratio`` regularly spaced
points in each bin by bilinear interpolation and averages them (or takes their max). Table 2c: +3
mask AP over RoIPool at stride 16, +7 at stride 32 (Table 2d), most of it at AP75.

Two implementations with one signature and identical results (to round-off):

* ``impl="numpy"`` (this file): vectorised over RoIs, bins and samples. The averaging RoIAlign is a
  *linear* map of the features, ``out = S @ F``, with ``S`` a sparse ``(K*PH*PW) x (N*H*W)`` matrix of
  bilinear weights; forward multiplies by ``S``, backward by ``S.T``. ``S`` factorises per RoI and
  bin into a y-part times an x-part, so it is built from small 1-D tables. The products gather
  feature rows in chunks of RoIs sized to stay in the CPU cache (~2 MiB each): the only Python loop,
  over groups of many RoIs.
* ``impl="kernel"``: the CUDA kernel ``kernels/roi_align.cu`` (cupy.RawKernel on CuPy arrays; the CPU
  emulator of :mod:`minimaskrcnn.ops.rawkernel` on NumPy arrays), one thread per output value.

Geometry, border rules and defaults follow ``torchvision.ops.roi_align`` exactly, so weights trained
with torchvision behave the same here. RoIWarp (roi_warp.py) reuses this file with ``quantize=True``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import get_xp, to_numpy
from ._roi_common import (
    bins_to_kchw,
    channels_last,
    check_int32_sizes,
    check_dout,
    check_roi_inputs,
    chunks_by_size,
    kchw_to_bins,
    max_and_argmax,
    output_size_pair,
    round_half_away_from_zero,
    sparse_rows_matmul,
)
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
        impl: ``"numpy"`` or ``"kernel"`` (see the module docstring).

    Returns:
        out: (K, C, PH, PW), ``features.dtype``; cache for :func:`roi_align_backward`.

    Samples more than one cell outside the map read 0; samples in that one-cell margin are clamped
    onto the border. Without ``aligned`` a RoI is at least 1x1 cell. Empty bins give 0.
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
    elif mode == "avg":
        out, argmax = _numpy_avg_forward(features, cache), None
    else:
        out, argmax = _numpy_max_forward(features, cache)
    return out, cache._replace(argmax=argmax)


def bilinear_roi_backward(dout, cache: RoIAlignCache, op: str):
    """Gradient for ``features`` of :func:`bilinear_roi_forward`."""
    check_dout(dout, cache, op)
    if cache.impl == "kernel":
        return _kernel_backward(dout, cache)
    if cache.mode == "avg":
        return _numpy_avg_backward(dout, cache)
    return _numpy_max_backward(dout, cache)


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


def _merge(axis: _Axis):
    """Per (RoI, bin): the distinct cells its points touch, with their weights summed.

    Neighbouring points of a bin often share a cell; merging first means each cell is read once.
    Returns idx, w (K, B, L) with the ``n`` (K, B) distinct cells first, then zero-weight padding.
    """
    xp = get_xp(axis.w)
    K, B = axis.idx.shape[:2]
    idx, w = axis.idx.reshape(K, B, -1), axis.w.reshape(K, B, -1)
    unused = np.iinfo(np.int64).max                          # sorts after every real cell
    idx = xp.where(w != 0, idx, unused)
    order = xp.argsort(idx, axis=-1)
    idx, w = xp.take_along_axis(idx, order, -1), xp.take_along_axis(w, order, -1)
    first = xp.ones(idx.shape, dtype=bool)                   # first entry of each run of equal cells
    first[..., 1:] = idx[..., 1:] != idx[..., :-1]
    run = xp.cumsum(first.reshape(-1)) - 1
    run_sum = xp.bincount(run, weights=w.reshape(-1).astype(np.float64))[run].reshape(w.shape)
    keep = first & (idx != unused)
    idx = xp.where(keep, idx, unused)
    order = xp.argsort(idx, axis=-1)                         # kept cells first
    idx = xp.take_along_axis(idx, order, -1)
    w = xp.take_along_axis(xp.where(keep, run_sum, 0).astype(w.dtype), order, -1)
    n = keep.sum(-1)
    L = max(int(n.max()) if n.size else 1, 1)
    return xp.where(idx == unused, 0, idx)[..., :L], w[..., :L], n


def _avg_blocks(rois, cache: RoIAlignCache, row_bytes: int):
    """Yield ``(ks, pix, wts)`` for chunks of RoIs ``ks``: every bin's distinct cells as rows of the
    channels-last feature matrix (``(n*H + y)*W + x``) and their weights, ``(len(ks), PH, PW, Ly, Lx)``.

    These are the rows of the sparse matrix ``S`` (``out = S @ F``), chunked so that the features they
    gather (``row_bytes`` per cell) stay near the cache-sized budget.
    """
    xp = get_xp(rois)
    N, C, H, W = cache.features_shape
    PH, PW = cache.output_size
    y, x, count = _geometry(rois, cache.spatial_scale, cache.output_size, cache.sampling_ratio,
                            cache.aligned, cache.quantize, H, W)
    yi, yw, ny = _merge(y)
    xi, xw, nx = _merge(x)
    batch = rois[:, 0].astype(np.int64)
    cells = PH * PW * ny.max(axis=1) * nx.max(axis=1)          # gathered cells per RoI after padding
    for ks in chunks_by_size(to_numpy(cells), row_bytes):
        ks = xp.asarray(ks)
        Ly, Lx = int(ny[ks].max()), int(nx[ks].max())
        rows = (batch[ks, None, None] * H + yi[ks, :, :Ly]) * W                      # (k, PH, Ly)
        pix = rows[:, :, None, :, None] + xi[ks, None, :, None, :Lx]                # (k, PH, PW, Ly, Lx)
        wts = yw[ks, :, None, :Ly, None] * xw[ks, None, :, None, :Lx] / count[ks, None, None, None, None]
        yield ks, pix, wts


def _numpy_avg_forward(features, cache):
    xp = get_xp(features)
    N, C, H, W = features.shape
    K, (PH, PW) = cache.rois.shape[0], cache.output_size
    F = channels_last(features)                                  # (N*H*W, C)
    out = xp.zeros((K, C, PH, PW), dtype=features.dtype)
    for ks, pix, wts in _avg_blocks(cache.rois, cache, C * features.itemsize):
        n = pix.shape[0] * PH * PW
        block = xp.take(F, pix.reshape(n, -1), axis=0)           # (bins, cells, C)
        # (bins, 1, cells) @ (bins, cells, C): each bin's weighted sum of its cells' channel vectors.
        out[ks] = bins_to_kchw(xp.matmul(wts.reshape(n, 1, -1), block)[:, 0], PH, PW)
    return out


def _numpy_avg_backward(dout, cache):
    """``dF = S.T @ dout``: the same sparse matrix, transposed, as COO triplets."""
    xp = get_xp(dout)
    N, C, H, W = cache.features_shape
    K, (PH, PW) = cache.rois.shape[0], cache.output_size
    if K == 0:
        return xp.zeros((N, C, H, W), dtype=dout.dtype)
    rows, cols, vals = [], [], []
    for ks, pix, wts in _avg_blocks(cache.rois, cache, 8):
        bins = (ks[:, None, None] * PH + xp.arange(PH)[:, None]) * PW + xp.arange(PW)  # (k, PH, PW)
        keep = wts != 0
        rows.append(xp.broadcast_to(bins[..., None, None], pix.shape)[keep])
        cols.append(pix[keep])
        vals.append(wts[keep])
    dout_rows = kchw_to_bins(dout)                             # (K*PH*PW, C)
    dF = xp.zeros((N, C, H * W), dtype=dout.dtype)
    for pix, grad in sparse_rows_matmul(xp.concatenate(cols), xp.concatenate(rows), xp.concatenate(vals),
                                        dout_rows):
        dF[pix // (H * W), :, pix % (H * W)] = grad          # (pixels, C) rows into (N, C, H*W)
    return dF.reshape(N, C, H, W)


def _max_blocks(rois, cache, row_bytes):
    """Yield ``(ks, pix, wts, real, grids)`` per chunk of RoIs ``ks``, with ``n = len(ks)*PH*PW`` bins of
    ``S = Gy * Gx`` (padded) sample points each: the four neighbours of every point as rows of the
    channels-last features, ``pix`` (n, S, 4), their weights ``wts`` (n, S, 4), which points are real
    (not padding) ``real`` (n, S), and ``grids = (Gx, grid_x)``, with each bin's true ``grid_x``
    (n, 1), to renumber point ``iy * Gx + ix`` as the kernel's ``iy * grid_x + ix``."""
    xp = get_xp(rois)
    N, C, H, W = cache.features_shape
    PH, PW = cache.output_size
    y, x, _ = _geometry(rois, cache.spatial_scale, cache.output_size, cache.sampling_ratio,
                        cache.aligned, cache.quantize, H, W)
    batch = rois[:, 0].astype(np.int64)
    for ks in chunks_by_size(to_numpy(PH * PW * 4 * xp.maximum(y.grid * x.grid, 1)), row_bytes):
        ks = xp.asarray(ks)
        k, Gy, Gx = len(ks), max(int(y.grid[ks].max()), 1), max(int(x.grid[ks].max()), 1)
        rows = (batch[ks, None, None, None] * H + y.idx[ks, :, :Gy]) * W           # (k, PH, Gy, 2)
        pix = rows[:, :, None, :, None, :, None] + x.idx[ks, None, :, None, :Gx, None, :]
        wts = y.w[ks, :, None, :Gy, None, :, None] * x.w[ks, None, :, None, :Gx, None, :]
        real = (xp.arange(Gy)[None, :, None] < y.grid[ks, None, None]) & \
               (xp.arange(Gx)[None, None, :] < x.grid[ks, None, None])              # (k, Gy, Gx)
        real = xp.broadcast_to(real.reshape(k, 1, 1, Gy * Gx), (k, PH, PW, Gy * Gx))
        n, S = k * PH * PW, Gy * Gx
        grid_x = xp.repeat(x.grid[ks], PH * PW)[:, None]
        yield ks, pix.reshape(n, S, 4), wts.reshape(n, S, 4), real.reshape(n, S), (Gx, grid_x)


def _numpy_max_forward(features, cache):
    xp = get_xp(features)
    N, C, H, W = features.shape
    K, (PH, PW) = cache.rois.shape[0], cache.output_size
    F = channels_last(features)
    out = xp.zeros((K, C, PH, PW), dtype=features.dtype)
    argmax = xp.full((K, C, PH, PW), -1, dtype=np.int32)
    for ks, pix, wts, real, (Gx, grid_x) in _max_blocks(cache.rois, cache, C * features.itemsize):
        # Every point's value w1*v1 + w2*v2 + w3*v3 + w4*v4, added in the kernel's order.
        value = wts[:, :, 0, None] * xp.take(F, pix[:, :, 0], axis=0)              # (n, S, C)
        for q in range(1, 4):
            value += wts[:, :, q, None] * xp.take(F, pix[:, :, q], axis=0)
        value = xp.where(real[:, :, None], value, -xp.inf)                         # padding never wins
        best, s = max_and_argmax(value)                                            # (n, C)
        has_points = real.any(axis=1)[:, None]
        out[ks] = bins_to_kchw(xp.where(has_points, best, 0), PH, PW)
        argmax[ks] = bins_to_kchw(xp.where(has_points, (s // Gx) * grid_x + s % Gx, -1), PH, PW)
    return out, argmax


def _numpy_max_backward(dout, cache):
    """Route each ``dout[k, c, ph, pw]`` to the four cells of its winning point.

    Every channel has its own winner, so ``dout`` is first spread over the points, ``(S, bins, C)``
    with zeros except at the winner; then it is ``S.T @ that``, as in the avg backward.
    """
    xp = get_xp(dout)
    N, C, H, W = cache.features_shape
    PH, PW = cache.output_size
    dF = xp.zeros((N, C, H * W), dtype=dout.dtype)
    for ks, pix, wts, _, (Gx, grid_x) in _max_blocks(cache.rois, cache, C * dout.itemsize):
        n, S = pix.shape[:2]
        a = kchw_to_bins(cache.argmax[ks]).astype(np.int64)                        # (n, C)
        g = xp.maximum(grid_x, 1)
        s = xp.where(a >= 0, (a // g) * Gx + a % g, -1)                            # chunk's numbering
        spread = xp.where(s[None] == xp.arange(S)[:, None, None], kchw_to_bins(dout[ks])[None], 0)
        col = xp.broadcast_to(xp.arange(S)[None, :, None] * n + xp.arange(n)[:, None, None], pix.shape)
        keep = wts != 0
        for p, grad in sparse_rows_matmul(pix[keep], col[keep], wts[keep], spread.reshape(S * n, C)):
            dF[p // (H * W), :, p % (H * W)] += grad
    return dF.reshape(N, C, H, W)


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
