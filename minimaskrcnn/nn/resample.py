"""Resampling layers. Nearest neighbour: FPN's top-down path doubles each coarser map before adding it to the
lateral connection of the finer one (Lin et al. 2017, Fig. 3), and the input transform resizes the
ground-truth masks with the same rule. Bilinear: the keypoint predictor's 2x upsampling of its heatmaps to
56 x 56 (paper §5), :func:`upsample_bilinear_forward`.

The rule is PyTorch's ``mode="nearest"`` to the bit (ATen's ``nearest_idx``), so that torchvision's FPN
and ``GeneralizedRCNNTransform`` pick the same pixels: see :func:`nearest_indices`.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import get_xp
from ._checks import check_float_array, pair


def nearest_indices(in_size: int, out_size: int, xp=np, scale: float | None = None):
    """The input index each output index copies, along one axis: (out_size,) int64.

    ``src = min(floor(dst * s), in_size - 1)`` with ``s = in_size / out_size``, or ``1 / scale`` when a
    scale factor is given, exactly as ATen computes it (``nearest_idx``):

    * ``s`` and the product are **float32**. A float64 ``floor(dst * in / out)`` picks another pixel for
      about 3% of the (in, out) pairs: where ``dst * in / out`` is a whole number that float32 rounds
      just below it (in 2, out 82, dst 41: 0.99999994, so pixel 0, not 1).
    * ``out == in`` copies and ``out == 2 * in`` takes ``dst // 2``, whatever ``scale`` says
      (ATen's two special cases; they only matter when a ``scale`` disagrees with the sizes).

    Checked against torch over thousands of pairs (tests/fixtures/nearest.npz). The rule is the same for
    every dtype: torch's CPU forward on float64 tensors computes part of it in double and differs in a
    few pairs, but float64 only serves the gradient checks here, which need forward and backward to agree.
    """
    if out_size == in_size:
        return xp.arange(out_size, dtype=xp.int64)
    if out_size == 2 * in_size:
        return xp.arange(out_size, dtype=xp.int64) // 2
    step = np.float32(in_size) / np.float32(out_size) if scale is None else np.float32(1.0 / scale)
    src = xp.floor(xp.arange(out_size, dtype=xp.float32) * step).astype(xp.int64)
    return xp.minimum(src, in_size - 1)


class UpsampleNearestCache(NamedTuple):
    """``x_shape`` (N, C, H, W); ``repeat`` ``(ry, rx)`` when every pixel was repeated ry x rx times (a
    view, no gather), else None; ``iy`` (Ho,), ``ix`` (Wo,) the rows and columns each output copied."""
    x_shape: tuple
    repeat: tuple | None
    iy: object
    ix: object


def upsample_nearest_forward(x, size=None, scale_factor=None):
    """Repeat pixels: ``out[n, c, y, x] = x[n, c, iy[y], ix[x]]`` with ``iy``, ``ix`` from
    :func:`nearest_indices` (``floor(y * H / Ho)``, in float32 as PyTorch).

    Args:
        x: (N, C, H, W). Exactly one of ``size`` (Ho, Wo) or ``scale_factor`` (int or pair) is given;
        torchvision's FPN passes ``size`` (the lateral map's), which equals 2x for stride-32-padded inputs.
    Returns:
        out: (N, C, Ho, Wo); cache.
    """
    op = "upsample_nearest_forward"
    check_float_array(x, "x", 4, op)
    if (size is None) == (scale_factor is None):
        raise ValueError(f"{op}: give exactly one of size and scale_factor (got size={size}, "
                         f"scale_factor={scale_factor})")
    xp = get_xp(x)
    N, C, H, W = x.shape
    if size is not None:
        Ho, Wo = pair(size, "size", 1, op)
        fy = fx = None
    else:
        fy, fx = (scale_factor, scale_factor) if not isinstance(scale_factor, (tuple, list)) else scale_factor
        if fy <= 0 or fx <= 0:
            raise ValueError(f"{op}: scale_factor must be positive, got {scale_factor}")
        Ho, Wo = int(H * fy), int(W * fx)
    iy = nearest_indices(H, Ho, np, fy)
    ix = nearest_indices(W, Wo, np, fx)
    if Ho % H == 0 and Wo % W == 0:
        ry, rx = Ho // H, Wo // W
        if (iy == np.arange(Ho) // ry).all() and (ix == np.arange(Wo) // rx).all():
            # every pixel repeated ry x rx times (the common FPN case): a broadcast view, reshaped
            out = xp.broadcast_to(x[:, :, :, None, :, None], (N, C, H, ry, W, rx)).reshape(N, C, Ho, Wo)
            return out, UpsampleNearestCache(x.shape, (ry, rx), None, None)
    iy, ix = xp.asarray(iy), xp.asarray(ix)
    return x[:, :, iy[:, None], ix[None, :]], UpsampleNearestCache(x.shape, None, iy, ix)


def upsample_nearest_backward(dout, cache):
    """Each input pixel collects the gradients of all the output pixels that copied it."""
    N, C, H, W = cache.x_shape
    xp = get_xp(dout)
    if cache.repeat is not None:
        ry, rx = cache.repeat
        return dout.reshape(N, C, H, ry, W, rx).sum(axis=(3, 5))
    iy, ix = cache.iy, cache.ix
    # Sum rows, then columns, through one-hot matrices: (H, Ho) @ dout @ (Wo, W).
    Ry = (iy[None, :] == xp.arange(H)[:, None]).astype(dout.dtype)
    Rx = (ix[:, None] == xp.arange(W)[None, :]).astype(dout.dtype)
    return xp.matmul(xp.matmul(Ry, dout), Rx)


# ---- bilinear (the keypoint head, paper §5: "deconv ... followed by 2x bilinear upscaling") -------------------
def bilinear_matrix(in_size: int, out_size: int, scale: float, dtype, xp=np):
    """(out_size, in_size): row ``k`` holds the two weights of output ``k`` of a 1-D linear resize, as
    ``F.interpolate(mode='bilinear', align_corners=False)``: ``src = max((k + 0.5) * scale - 0.5, 0)``,
    neighbours ``floor(src)`` and the next (the last pixel repeats at the far edge), weights ``1 - frac``,
    ``frac``. ``scale`` is ``1 / scale_factor`` when a factor is given (torchvision's keypoint predictor,
    ``recompute_scale_factor=False``), else ``in / out``."""
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    w1 = np.clip(src - i0, 0.0, 1.0)
    i1 = i0 + (i0 < in_size - 1)
    m = np.zeros((out_size, in_size), np.float64)
    np.add.at(m, (np.arange(out_size), i0), 1.0 - w1)
    np.add.at(m, (np.arange(out_size), i1), w1)
    return xp.asarray(m.astype(dtype))


class UpsampleBilinearCache(NamedTuple):
    """``my`` (Ho, H) and ``mx`` (Wo, W): the interpolation matrices of the rows and the columns."""
    my: object
    mx: object


def upsample_bilinear_forward(x, scale_factor: int = 2, size=None):
    """Bilinear upsampling with ``align_corners=False``: ``out[n, c] = My @ x[n, c] @ Mx^T``.

    Every output pixel is a weighted mean of (at most) 2 x 2 input pixels around the point it maps back to;
    for 2x the weights are 0.75 / 0.25 along each axis (exact in float32). torchvision's
    ``KeypointRCNNPredictor`` upsamples its (R, K, 28, 28) logits this way to (R, K, 56, 56).

    Args:
        x: (N, C, H, W) float. scale_factor: integer factor (default 2), or ``size`` (Ho, Wo) instead.
    Returns:
        out (N, C, Ho, Wo), cache.
    """
    op = "upsample_bilinear_forward"
    check_float_array(x, "x", 4, op)
    xp = get_xp(x)
    H, W = x.shape[-2:]
    if size is not None:
        (Ho, Wo), sy, sx = pair(size, "size", 1, op), None, None
    else:
        if int(scale_factor) != scale_factor or scale_factor < 1:
            raise ValueError(f"{op}: scale_factor must be a positive integer, got {scale_factor!r}")
        Ho, Wo, sy = H * int(scale_factor), W * int(scale_factor), 1.0 / scale_factor
        sx = sy
    my = bilinear_matrix(H, Ho, H / Ho if sy is None else sy, x.dtype, xp)
    mx = bilinear_matrix(W, Wo, W / Wo if sx is None else sx, x.dtype, xp)
    return xp.matmul(xp.matmul(my, x), mx.T), UpsampleBilinearCache(my, mx)


def upsample_bilinear_backward(dout, cache: UpsampleBilinearCache):
    """The transpose: each input pixel collects ``weight * dout`` from the outputs that read it,
    ``dx = My^T @ dout @ Mx``."""
    xp = get_xp(dout)
    return xp.matmul(xp.matmul(cache.my.T, dout), cache.mx)
