"""Nearest-neighbour resampling: FPN's top-down path doubles each coarser map before adding it to the
lateral connection of the finer one (Lin et al. 2017, Fig. 3), and the input transform resizes the
ground-truth masks with the same rule.

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
