"""RoIAlign's and RoIWarp's NumPy path (``impl="numpy"``), tuned for the CPU's cache.

The same numbers as the readable version in roi_align.py (``impl="simple"``), from the same geometry
tables (its ``_geometry``: the two neighbouring cells of every sample point, per axis, and their bilinear
weights); what differs is how the memory is walked:

* Averaging RoIAlign is a *linear* map of the features, ``out = S @ F``, with ``S`` a sparse
  ``(K*PH*PW) x (N*H*W)`` matrix of bilinear weights: forward multiplies by ``S``, backward by ``S.T``.
  ``S`` factorises per RoI and bin into a y-part times an x-part, so its rows are built from the 1-D
  tables, after merging the points of a bin that share a cell (:func:`_merge`), so each cell is read once.
* Features are gathered channels-last (one row of ``C`` values per pixel), in chunks of RoIs sized to stay
  in the CPU cache (~2 MiB each; ``_roi_common.chunks_by_size``): the only Python loop, over groups of many
  RoIs. The backward products go through ``_roi_common.sparse_rows_matmul`` (``np.add.at`` is ~15x slower).
* Max mode evaluates every point's value (its four neighbours added in the kernel's order, so both pick the
  same winner) and keeps the first maximum with ``_roi_common.max_and_argmax``.

Private to ``minimaskrcnn.ops``; called by ``roi_align.bilinear_roi_forward`` / ``bilinear_roi_backward``.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_xp, to_numpy
from ._roi_common import bins_to_kchw, channels_last, device_chunks, kchw_to_bins, max_and_argmax, sparse_rows_matmul


def _merge(axis):
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


def _avg_blocks(rois, cache, geometry, row_bytes: int):
    """Yield ``(ks, pix, wts)`` for chunks of RoIs ``ks``: every bin's distinct cells as rows of the
    channels-last feature matrix (``(n*H + y)*W + x``) and their weights, ``(len(ks), PH, PW, Ly, Lx)``.

    These are the rows of the sparse matrix ``S`` (``out = S @ F``), chunked so that the features they
    gather (``row_bytes`` per cell) stay near the cache-sized budget.
    """
    N, C, H, W = cache.features_shape
    PH, PW = cache.output_size
    y, x, count = geometry
    yi, yw, ny = _merge(y)
    xi, xw, nx = _merge(x)
    batch = rois[:, 0].astype(np.int64)
    cells = PH * PW * ny.max(axis=1) * nx.max(axis=1)          # gathered cells per RoI after padding
    for ks, (Ly, Lx) in device_chunks(cells, row_bytes, ny.max(axis=1), nx.max(axis=1)):
        rows = (batch[ks, None, None] * H + yi[ks, :, :Ly]) * W                      # (k, PH, Ly)
        pix = rows[:, :, None, :, None] + xi[ks, None, :, None, :Lx]                # (k, PH, PW, Ly, Lx)
        wts = yw[ks, :, None, :Ly, None] * xw[ks, None, :, None, :Lx] / count[ks, None, None, None, None]
        yield ks, pix, wts


# When the dense path (below) is taken: its cost per bin row, ``W * (H + PW) * C`` multiply-adds, over the sparse
# path's, ``PW * (Gy + 1) * (Gx + 1) * (C + 16)`` gathered values (the 16: per-bin overhead, which dominates at
# C = 1), must be at most this. Measured on the tiny model (ratios: box head 15.8, mask head 9.4, mask targets
# 4.6): the forward wins 1.7-5x at 9.4 and below and loses at 15.8 (its (K, PH, C, W) intermediate is big); the
# backward, which also saves the sparse path's scatter, wins 1.4-2x at both.
DENSE_LIMIT = {"forward": 12.0, "backward": 30.0}


def use_dense(features_shape, output_size, geometry, direction: str) -> bool:
    """Whether the dense separable path (:func:`_dense_tables`) is the cheaper one: small feature maps (the tiny
    model's 32x32 P2) or one channel (mask targets), where whole-map GEMMs beat gathering every bin's cells."""
    _, C, H, W = features_shape
    PH, PW = output_size
    y, x, _ = geometry
    if y.grid.shape[0] == 0:
        return False
    gy, gx = to_numpy(get_xp(y.grid).stack([y.grid.max(), x.grid.max()]))    # one read-back on a device
    cells = (int(gy) + 1) * (int(gx) + 1)
    return W * (H + PW) * C <= DENSE_LIMIT[direction] * PW * cells * (C + 16)


def _dense_tables(cache, geometry, dtype):
    """``S`` factorised per RoI into dense 1-D interpolation matrices: ``Ay`` (K, PH, H) and ``Ax`` (K, PW, W),
    ``Ay[k, ph, y]`` the summed bilinear weight of cell row ``y`` over the points of bin row ``ph`` (divided by
    the bin's point count), so ``out[k, c] = Ay[k] @ F[b_k, c] @ Ax[k].T`` (every point is a pair of a y-point
    and an x-point, and its weight the product of theirs)."""
    xp = get_xp(cache.rois)
    N, C, H, W = cache.features_shape
    PH, PW = cache.output_size
    y, x, count = geometry
    K = cache.rois.shape[0]

    def table(axis, bins, size):
        rows = (xp.arange(K)[:, None] * bins + xp.arange(bins)[None, :]) * size            # (K, bins)
        flat = (rows[:, :, None, None] + axis.idx).reshape(-1)
        return xp.bincount(flat, weights=axis.w.reshape(-1).astype(np.float64),
                           minlength=K * bins * size).reshape(K, bins, size)
    ay = table(y, PH, H) / count.astype(np.float64)[:, None, None]
    return ay.astype(dtype), table(x, PW, W).astype(dtype)


def _per_image(cache, rows: int):
    """Yield ``(n, ks)``: each image's RoIs, ``rows`` bin rows' worth (of ``PH`` each) at a time, so that the
    intermediate (len(ks), PH, C, W) block stays small."""
    xp = get_xp(cache.rois)
    batch = to_numpy(cache.rois[:, 0]).astype(np.int64)
    step = max(1, rows // cache.output_size[0])
    for n in np.unique(batch):
        ks = np.flatnonzero(batch == n)
        for s in range(0, len(ks), step):
            yield int(n), xp.asarray(ks[s:s + step])


def dense_avg_forward(features, cache, geometry):
    """Averaging RoIAlign/RoIWarp on a small map: per image, ``Ay @ F`` for all its RoIs in one GEMM over the
    map's rows, then each RoI's ``(PH*C, W) @ Ax[k].T``. Same numbers as :func:`avg_forward` to round-off."""
    xp = get_xp(features)
    N, C, H, W = features.shape
    K, (PH, PW) = cache.rois.shape[0], cache.output_size
    ay, ax = _dense_tables(cache, geometry, features.dtype)
    rows_first = xp.ascontiguousarray(features.transpose(0, 2, 1, 3)).reshape(N, H, C * W)   # (N, H, C*W)
    out = xp.empty((K, PH, C, PW), dtype=features.dtype)
    for n, ks in _per_image(cache, 512):
        t = xp.matmul(ay[ks].reshape(-1, H), rows_first[n]).reshape(len(ks), PH * C, W)
        out[ks] = xp.matmul(t, ax[ks].transpose(0, 2, 1)).reshape(len(ks), PH, C, PW)
    return out.transpose(0, 2, 1, 3)


def dense_avg_backward(dout, cache, geometry):
    """The adjoint of :func:`dense_avg_forward`: ``dF[b] = sum_k Ay[k].T @ dout[k] @ Ax[k]``, the sum over RoIs
    done inside one GEMM per image (no scatter)."""
    xp = get_xp(dout)
    N, C, H, W = cache.features_shape
    PH, PW = cache.output_size
    ay, ax = _dense_tables(cache, geometry, dout.dtype)
    d = xp.ascontiguousarray(dout.transpose(0, 2, 1, 3))                                       # (K, PH, C, PW)
    dF = xp.zeros((N, H, C * W), dtype=dout.dtype)
    for n, ks in _per_image(cache, 512):
        t = xp.matmul(d[ks].reshape(len(ks), PH * C, PW), ax[ks])                            # (k, PH*C, W)
        dF[n] += xp.matmul(ay[ks].reshape(-1, H).T, t.reshape(-1, C * W))
    return xp.ascontiguousarray(dF.reshape(N, H, C, W).transpose(0, 2, 1, 3))


def avg_forward(features, cache, geometry):
    """Averaging RoIAlign/RoIWarp: ``out = S @ F``, chunk by chunk of RoIs."""
    xp = get_xp(features)
    N, C, H, W = features.shape
    K, (PH, PW) = cache.rois.shape[0], cache.output_size
    if use_dense(features.shape, (PH, PW), geometry, "forward"):
        return dense_avg_forward(features, cache, geometry)
    F = channels_last(features)                                  # (N*H*W, C)
    out = xp.zeros((K, C, PH, PW), dtype=features.dtype)
    for ks, pix, wts in _avg_blocks(cache.rois, cache, geometry, C * features.itemsize):
        n = pix.shape[0] * PH * PW
        block = xp.take(F, pix.reshape(n, -1), axis=0)           # (bins, cells, C)
        # (bins, 1, cells) @ (bins, cells, C): each bin's weighted sum of its cells' channel vectors.
        out[ks] = bins_to_kchw(xp.matmul(wts.reshape(n, 1, -1), block)[:, 0], PH, PW)
    return out


def avg_backward(dout, cache, geometry):
    """``dF = S.T @ dout``: the same sparse matrix, transposed, as COO triplets."""
    xp = get_xp(dout)
    N, C, H, W = cache.features_shape
    K, (PH, PW) = cache.rois.shape[0], cache.output_size
    if K == 0:
        return xp.zeros((N, C, H, W), dtype=dout.dtype)
    if use_dense(cache.features_shape, (PH, PW), geometry, "backward"):
        return dense_avg_backward(dout, cache, geometry)
    rows, cols, vals = [], [], []
    for ks, pix, wts in _avg_blocks(cache.rois, cache, geometry, 8):
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


def _max_blocks(rois, cache, geometry, row_bytes):
    """Yield ``(ks, pix, wts, real, grids)`` per chunk of RoIs ``ks``, with ``n = len(ks)*PH*PW`` bins of
    ``S = Gy * Gx`` (padded) sample points each: the four neighbours of every point as rows of the
    channels-last features, ``pix`` (n, S, 4), their weights ``wts`` (n, S, 4), which points are real
    (not padding) ``real`` (n, S), and ``grids = (Gx, grid_x)``, with each bin's true ``grid_x``
    (n, 1), to renumber point ``iy * Gx + ix`` as the kernel's ``iy * grid_x + ix``."""
    xp = get_xp(rois)
    N, C, H, W = cache.features_shape
    PH, PW = cache.output_size
    y, x, _ = geometry
    batch = rois[:, 0].astype(np.int64)
    for ks, (Gy, Gx) in device_chunks(PH * PW * 4 * xp.maximum(y.grid * x.grid, 1), row_bytes, y.grid, x.grid):
        k, Gy, Gx = len(ks), max(Gy, 1), max(Gx, 1)
        rows = (batch[ks, None, None, None] * H + y.idx[ks, :, :Gy]) * W           # (k, PH, Gy, 2)
        pix = rows[:, :, None, :, None, :, None] + x.idx[ks, None, :, None, :Gx, None, :]
        wts = y.w[ks, :, None, :Gy, None, :, None] * x.w[ks, None, :, None, :Gx, None, :]
        real = (xp.arange(Gy)[None, :, None] < y.grid[ks, None, None]) & \
               (xp.arange(Gx)[None, None, :] < x.grid[ks, None, None])              # (k, Gy, Gx)
        real = xp.broadcast_to(real.reshape(k, 1, 1, Gy * Gx), (k, PH, PW, Gy * Gx))
        n, S = k * PH * PW, Gy * Gx
        grid_x = xp.repeat(x.grid[ks], PH * PW)[:, None]
        yield ks, pix.reshape(n, S, 4), wts.reshape(n, S, 4), real.reshape(n, S), (Gx, grid_x)


def max_forward(features, cache, geometry):
    """Max-mode RoIAlign/RoIWarp: every point's bilinear value, then the max per bin and channel."""
    xp = get_xp(features)
    N, C, H, W = features.shape
    K, (PH, PW) = cache.rois.shape[0], cache.output_size
    F = channels_last(features)
    out = xp.zeros((K, C, PH, PW), dtype=features.dtype)
    argmax = xp.full((K, C, PH, PW), -1, dtype=np.int32)
    for ks, pix, wts, real, (Gx, grid_x) in _max_blocks(cache.rois, cache, geometry, C * features.itemsize):
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


def max_backward(dout, cache, geometry):
    """Route each ``dout[k, c, ph, pw]`` to the four cells of its winning point.

    Every channel has its own winner, so ``dout`` is first spread over the points, ``(S, bins, C)``
    with zeros except at the winner; then it is ``S.T @ that``, as in the avg backward.
    """
    xp = get_xp(dout)
    N, C, H, W = cache.features_shape
    PH, PW = cache.output_size
    dF = xp.zeros((N, C, H * W), dtype=dout.dtype)
    for ks, pix, wts, _, (Gx, grid_x) in _max_blocks(cache.rois, cache, geometry, C * dout.itemsize):
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
