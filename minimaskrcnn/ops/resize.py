"""Bilinear resizing of the last two axes, as ``torch.nn.functional.interpolate(mode='bilinear',
align_corners=False)``.

Used to resize predicted masks to their box when pasting them into the image (Mask R-CNN §3,
"Inference": "The m x m floating-number mask output is then resized to the RoI size, and binarized at a
threshold of 0.5") and by the data pipeline to resize images.

Output pixel ``i`` of an axis resized from ``n_in`` to ``n_out`` samples the input at the continuous
coordinate ``src = (i + 0.5) * n_in / n_out - 0.5`` (pixel centres line up, "align_corners=False"),
clamped below at 0, and interpolates linearly between its two neighbours ``floor(src)`` and
``floor(src) + 1`` (the last pixel is repeated at the far edge). As in PyTorch's CPU kernel, the
coordinates, weights and sums are computed in the input's float dtype, and for float32 the
multiply-adds are fused (rounded once), as in its compiled code: the float32 weights equal torch's bit
for bit, and the results agree to about one unit in the last place (where exactly torch rounds depends
on how its loop was vectorised). ``minimaskrcnn.model.transform`` resizes images the same way.

No anti-aliasing: shrinking by more than 2x skips input pixels, exactly like ``F.interpolate``. torchvision's
detection transform resizes with ``recompute_scale_factor=True``, i.e. with the ratio ``n_in / n_out``
of the integer sizes used here.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_xp


def _muladd(a, b, c):
    """``a * b + c`` in ``a``'s dtype; for float32 rounded once, like a fused multiply-add (the float64
    product of two float32 numbers is exact). Float64 is not fused here: it differs by round-off."""
    if a.dtype == np.float32:
        return (a.astype(np.float64) * b + c).astype(np.float32)
    return a * b + c


def linear_resize_weights(in_size: int, out_size: int, dtype=np.float32, xp=np):
    """Neighbour indices and weights of a 1-D linear resize ``in_size -> out_size`` (align_corners=False).

    Returns ``(i0, i1, w0, w1)``, each ``(out_size,)``: output ``k`` is
    ``w0[k] * x[i0[k]] + w1[k] * x[i1[k]]``.
    """
    if int(in_size) < 1 or int(out_size) < 1:
        raise ValueError(f"in_size and out_size must be >= 1, got {in_size} and {out_size}")
    dtype = np.dtype(dtype)
    scale = dtype.type(in_size) / dtype.type(out_size)
    src = _muladd(xp.arange(out_size, dtype=dtype) + dtype.type(0.5), scale, dtype.type(-0.5))
    src = xp.maximum(src, dtype.type(0))  # output pixels near the border sample the border pixel
    i0 = xp.minimum(xp.floor(src).astype(xp.int64), in_size - 1)
    w1 = xp.clip(src - i0.astype(dtype), 0, 1)
    i1 = i0 + (i0 < in_size - 1)  # at the last pixel both neighbours are the same pixel
    return i0, i1, 1 - w1, w1


def resize_bilinear(x, out_h: int, out_w: int):
    """Resize the last two axes of ``x`` (..., h, w) to (..., out_h, out_w) by bilinear interpolation.

    Matches ``F.interpolate(x, size=(out_h, out_w), mode='bilinear', align_corners=False)`` (for
    ``(N, C, h, w)`` input; any number of leading axes is allowed here). ``x`` must be floating point;
    the result has its dtype.
    """
    if not hasattr(x, "ndim") or x.ndim < 2:
        raise ValueError(f"x must have shape (..., h, w), got {getattr(x, 'shape', type(x).__name__)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"x must be a floating-point array, got dtype {x.dtype} "
                         f"(convert masks with .astype)")
    if int(out_h) != out_h or int(out_w) != out_w or out_h < 1 or out_w < 1:
        raise ValueError(f"out_h and out_w must be positive ints, got {out_h!r} and {out_w!r}")
    xp = get_xp(x)
    h, w = x.shape[-2:]
    if h == 0 or w == 0:
        raise ValueError(f"x must have non-empty spatial axes, got shape {tuple(x.shape)}")
    y0, y1, wy0, wy1 = linear_resize_weights(h, int(out_h), x.dtype, xp)
    x0, x1, wx0, wx1 = linear_resize_weights(w, int(out_w), x.dtype, xp)
    cols = _muladd(x[..., x0], wx0, x[..., x1] * wx1)  # (..., h, out_w): along the width first
    return _muladd(cols[..., y0, :], wy0[:, None], cols[..., y1, :] * wy1[:, None])  # (..., out_h, out_w)


def _cubic_weights(t, a: float = -0.75):
    """Keys' cubic convolution weights of the 4 taps around a sample at fraction ``t`` (PyTorch's
    ``get_cubic_upsample_coefficients``, A = -0.75)."""
    def near(x):   # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):    # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return far(t + 1), near(t), near(1 - t), far(2 - t)


def bicubic_matrix(in_size: int, out_size: int, dtype=np.float32, xp=np):
    """(out_size, in_size) matrix of a 1-D bicubic resize as ``F.interpolate(mode='bicubic',
    align_corners=False)``: ``src = (k + 0.5) * in / out - 0.5`` (not clamped), taps ``floor(src) - 1 ..
    floor(src) + 2`` clamped to the array (the border repeats), Keys' weights with A = -0.75."""
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    i = np.floor(src).astype(np.int64)
    weights = _cubic_weights(src - i)
    m = np.zeros((out_size, in_size), np.float64)
    for k, w in enumerate(weights):
        np.add.at(m, (np.arange(out_size), np.clip(i - 1 + k, 0, in_size - 1)), w)
    return xp.asarray(m.astype(dtype))


def resize_bicubic(x, out_h: int, out_w: int):
    """Resize the last two axes of ``x`` (..., h, w) bicubically (torchvision's keypoint decoding resizes each
    RoI's heatmaps this way): ``My @ x @ Mx^T`` with :func:`bicubic_matrix`; the result may over- or
    undershoot the input's range, as cubic interpolation does."""
    xp = get_xp(x)
    h, w = x.shape[-2:]
    return xp.matmul(xp.matmul(bicubic_matrix(h, out_h, x.dtype, xp), x), bicubic_matrix(w, out_w, x.dtype, xp).T)
