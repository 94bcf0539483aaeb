"""What RoIPool, RoIWarp and RoIAlign share: argument checks, C-style rounding, the channels-last layout
and the chunked "gather rows, then reduce" loop their NumPy versions are built on.

Private to ``minimaskrcnn.ops``: the public functions live in roi_align.py, roi_warp.py and roi_pool.py.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_xp, is_cupy, to_numpy

# Feature-map coordinates beyond this are refused: the kernels convert them to C ``int`` and float32
# holds every integer only up to 2**24, so larger values could neither be rounded nor indexed safely.
MAX_COORDINATE = float(2 ** 24)

# Bytes of gathered features per chunk: small enough to stay in the CPU's cache between the gather
# and the reduction that follows it (measured: 2 MiB chunks run ~4x faster than one big gather).
CHUNK_BYTES = 2 ** 21


def output_size_pair(output_size, op: str) -> tuple[int, int]:
    """``output_size`` as ``(height, width)``: an int ``s`` means ``(s, s)``; both must be >= 1."""
    if isinstance(output_size, (int, np.integer)) and not isinstance(output_size, bool):
        output_size = (output_size, output_size)
    try:
        ph, pw = output_size
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (ph, pw))
    except (TypeError, ValueError):
        ok = False
    if not ok or ph < 1 or pw < 1:
        raise ValueError(f"{op}: output_size must be a positive int or a pair (height, width) of "
                         f"positive ints, got {output_size!r}")
    return int(ph), int(pw)


def check_roi_inputs(features, rois, output_size, spatial_scale, sampling_ratio, aligned, impl,
                     mode=None, op: str = "roi_op"):
    """Validate the shared signature; return ``(rois, (PH, PW))`` with ``rois`` cast to ``features.dtype``.

    Every problem is a ``ValueError`` that names the argument: a NaN coordinate or an out-of-range batch
    index must never reach a kernel, where it would read outside the array instead of failing.
    """
    if not (isinstance(features, np.ndarray) or is_cupy(features)):
        raise ValueError(f"{op}: features must be a NumPy or CuPy array, got {type(features).__name__}")
    if features.ndim != 4 or features.dtype not in (np.float32, np.float64):
        raise ValueError(f"{op}: features must be a float32 or float64 array of shape (N, C, H, W), "
                         f"got dtype {features.dtype} and shape {tuple(features.shape)}")
    N, C, H, W = features.shape
    if C < 1 or H < 1 or W < 1:
        raise ValueError(f"{op}: features must have C, H, W >= 1, got shape {tuple(features.shape)}")
    if not (isinstance(rois, np.ndarray) or is_cupy(rois)):
        raise ValueError(f"{op}: rois must be an array of shape (K, 5), got {type(rois).__name__}")
    get_xp(features, rois)  # raises TypeError when NumPy and CuPy arrays are mixed
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"{op}: rois must have shape (K, 5) with rows (batch_index, x1, y1, x2, y2), "
                         f"got shape {tuple(rois.shape)}")
    if not (np.issubdtype(rois.dtype, np.floating) or np.issubdtype(rois.dtype, np.integer)):
        raise ValueError(f"{op}: rois must be a real-valued array, got dtype {rois.dtype}")
    ph, pw = output_size_pair(output_size, op)
    real_number = (int, float, np.integer, np.floating)
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, real_number) \
            or not (np.isfinite(spatial_scale) and spatial_scale > 0):
        raise ValueError(f"{op}: spatial_scale must be a finite positive number, got {spatial_scale!r}")
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, (int, np.integer)):
        raise ValueError(f"{op}: sampling_ratio must be an int (<= 0: adaptive), got {sampling_ratio!r}")
    if not isinstance(aligned, (bool, np.bool_)):
        raise ValueError(f"{op}: aligned must be True or False, got {aligned!r}")
    if impl not in ("numpy", "simple", "kernel"):
        raise ValueError(f"{op}: impl must be 'numpy', 'simple' or 'kernel', got {impl!r}")
    if mode is not None and mode not in ("avg", "max"):
        raise ValueError(f"{op}: mode must be 'avg' or 'max', got {mode!r}")

    xp = get_xp(features)
    rois = rois.astype(features.dtype)  # a contiguous copy in the kernels' element type
    finite = xp.isfinite(rois).all(axis=1)
    if not bool(finite.all()):
        bad = np.flatnonzero(~to_numpy(finite))[:5].tolist()
        raise ValueError(f"{op}: rois has NaN or infinite values in rows {bad}")
    batch = rois[:, 0]
    bad_batch = (batch != xp.floor(batch)) | (batch < 0) | (batch >= N)
    if bool(bad_batch.any()):
        rows = np.flatnonzero(to_numpy(bad_batch))[:5].tolist()
        raise ValueError(f"{op}: rois[:, 0] must be integer batch indices in [0, {N}) (features has "
                         f"N={N}), got {to_numpy(batch)[rows].tolist()} in rows {rows}")
    too_far = xp.abs(rois[:, 1:]).max(axis=1) * spatial_scale > MAX_COORDINATE
    if bool(too_far.any()):
        rows = np.flatnonzero(to_numpy(too_far))[:5].tolist()
        raise ValueError(f"{op}: rois in rows {rows} have coordinates whose magnitude times spatial_scale "
                         f"exceeds {MAX_COORDINATE:.0f} feature-map cells")
    return rois, (ph, pw)


def check_dout(dout, cache, op: str) -> None:
    """``dout`` must have the forward output's shape ``(K, C, PH, PW)`` and dtype (the cache's RoIs carry it)."""
    expected = (cache.rois.shape[0], cache.features_shape[1], *cache.output_size)
    if tuple(dout.shape) != expected or dout.dtype != cache.rois.dtype:
        raise ValueError(f"{op}: dout must have shape {expected} and dtype {cache.rois.dtype} (the forward "
                         f"output's), got shape {tuple(dout.shape)} and dtype {dout.dtype}")


def check_int32_sizes(*sizes):
    """The kernels index with C ``int``: arrays beyond 2**31 - 1 elements would wrap around."""
    if max(sizes) >= 2 ** 31:
        raise ValueError(f"arrays of {max(sizes)} elements are too large for the kernels' int32 indices; "
                         "split the RoIs or use impl='numpy'")


def round_half_away_from_zero(x):
    """C's ``round``: halves go away from zero (2.5 -> 3, -2.5 -> -3), unlike ``np.round`` (2.5 -> 2).

    ``x - trunc(x)`` is exact in floating point, so the comparison with 0.5 sees the true fraction
    (``floor(x + 0.5)`` would not: 0.49999997 + 0.5 rounds up to 1 in float32).
    """
    xp = get_xp(x)
    whole = xp.trunc(x)
    return whole + xp.where(xp.abs(x - whole) >= 0.5, xp.sign(x), 0).astype(x.dtype)


def channels_last(features):
    """``(N, C, H, W) -> (N*H*W, C)``: row ``(n*H + y)*W + x`` holds every channel of one pixel, so the
    gathers below read ``C`` contiguous values per index instead of ``C`` values ``H*W`` apart."""
    xp = get_xp(features)
    N, C, H, W = features.shape
    return xp.ascontiguousarray(features.transpose(0, 2, 3, 1)).reshape(N * H * W, C)


def chunks_by_size(sizes, bytes_per_unit: int, budget: int = CHUNK_BYTES):
    """Split ``range(len(sizes))`` into index arrays, smallest ``sizes`` first, each chunk's cost
    ``len(chunk) * max(sizes[chunk]) * bytes_per_unit`` staying near ``budget``, with at least one item
    per chunk.

    Chunks are padded to their largest member; sorting by size first keeps that padding small.
    """
    sizes = np.asarray(sizes)
    order = np.argsort(sizes, kind="stable")
    sorted_sizes = np.maximum(sizes[order], 1)
    start = 0
    while start < len(order):
        # Largest count n with n * sorted_sizes[start + n - 1] * bytes_per_unit <= budget.
        cost = np.arange(1, len(order) - start + 1) * sorted_sizes[start:] * bytes_per_unit
        n = max(1, int(np.searchsorted(cost, budget, side="right")))
        yield order[start:start + n]
        start += n


def device_chunks(sizes, bytes_per_unit: int, *extents):
    """:func:`chunks_by_size` for a loop over device arrays: yields ``(ks, maxima)``, the chunk's indices as an
    array of ``sizes``' kind and the chunk's maximum of each of ``extents`` (arrays shaped like ``sizes``) as
    ints. Sizes and extents are read back together once and all indices copied over once: per chunk, each
    read-back would wait for the GPU."""
    xp = get_xp(sizes)
    host = to_numpy(xp.stack([sizes, *extents]))
    chunks = list(chunks_by_size(host[0], bytes_per_unit))
    indices = xp.asarray(np.concatenate(chunks)) if chunks else None
    start = 0
    for chunk in chunks:
        yield indices[start:start + len(chunk)], [int(e[chunk].max()) for e in host[1:]]
        start += len(chunk)


def bins_to_kchw(rows, PH: int, PW: int):
    """``(k*PH*PW, C)`` rows, one per bin, -> ``(k, C, PH, PW)``: the operators' output layout (a view)."""
    return rows.reshape(-1, PH, PW, rows.shape[-1]).transpose(0, 3, 1, 2)


def kchw_to_bins(a):
    """``(k, C, PH, PW)`` -> ``(k*PH*PW, C)`` rows, one per bin (a copy)."""
    return get_xp(a).ascontiguousarray(a.transpose(0, 2, 3, 1)).reshape(-1, a.shape[1])


def max_and_argmax(block):
    """``block`` (n, L, C) -> its max over the middle axis and the index of the first maximum, both (n, C).

    ``block.argmax(axis=1)`` gives the same but walks the strided middle axis one lane at a time
    (~10x slower). Here: the max is a fast reduction, and the first maximum is found as the largest
    "rank" ``L - j`` among the maximal entries ``j``: one byte per entry, again a fast reduction.
    """
    xp = get_xp(block)
    L = block.shape[1]
    best = block.max(axis=1)
    rank = xp.arange(L, 0, -1, dtype=np.uint8 if L < 256 else np.int32)[None, :, None]   # L, L-1, ..., 1
    first = L - (xp.equal(block, best[:, None, :]) * rank).max(axis=1).astype(np.int64)
    return best, xp.minimum(first, L - 1)   # (a NaN is never "equal": keep its index in range)


def sparse_rows_matmul(rows, cols, vals, dense):
    """Yield ``(r, out_r)``: for each distinct ``r`` in ``rows``, ``out_r = sum over entries e with
    rows[e] == r of vals[e] * dense[cols[e]]``, in chunks (``r`` (n,) distinct, ``out_r`` (n, C)).

    The sparse matrix comes as COO triplets (any order, repeats allowed); ``dense`` is ``(M, C)``.
    Rows are grouped by their entry count, each group padded to its longest row, its ``dense`` rows
    gathered into a ``(rows, slots, C)`` block and reduced by one batched ``(1, slots) @ (slots, C)``
    matmul. (``np.add.at`` does the same ~15x slower.) The caller stores each chunk where it wants it,
    e.g. straight into an (N, C, H, W) array, which saves transposing a channels-last result.
    """
    xp = get_xp(dense, vals)
    if len(rows) == 0:
        return
    order = xp.argsort(rows, kind="stable")
    cols, vals = cols[order], vals[order].astype(dense.dtype)
    counts = xp.bincount(rows)
    starts = xp.cumsum(counts) - counts
    used = xp.flatnonzero(counts)
    for chunk, (longest,) in device_chunks(counts[used], dense.shape[1] * dense.itemsize, counts[used]):
        r = used[chunk]
        n = counts[r]
        slots = xp.arange(longest)
        valid = slots < n[:, None]                                        # (rows, slots)
        entry = xp.where(valid, starts[r][:, None] + slots, 0)
        w = xp.where(valid, vals[entry], 0)[:, None, :]                   # (rows, 1, slots)
        block = xp.take(dense, cols[entry], axis=0)                       # (rows, slots, C)
        yield r, xp.matmul(w, block)[:, 0]
