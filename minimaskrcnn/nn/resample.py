"""Nearest-neighbour upsampling: FPN's top-down path doubles each coarser map before adding it to the
lateral connection of the finer one (Lin et al. 2017, Fig. 3)."""
from __future__ import annotations

from ..backend import get_xp
from ._checks import check_float_array, pair


def _nearest_index(xp, out_len, in_len, scale_factor):
    # PyTorch's 'nearest': src = floor(dst * in/out), or floor(dst / scale_factor) when a factor is given.
    scale = in_len / out_len if scale_factor is None else 1.0 / scale_factor
    return xp.minimum(xp.floor(xp.arange(out_len) * scale).astype(xp.int64), in_len - 1)


def upsample_nearest_forward(x, size=None, scale_factor=None):
    """Repeat pixels: ``out[n, c, y, x] = x[n, c, floor(y * H/Ho), floor(x * W/Wo)]``.

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
    if Ho % H == 0 and Wo % W == 0 and (fy is None or fy == Ho // H) and (fx is None or fx == Wo // W):
        ry, rx = Ho // H, Wo // W  # integer factors: a broadcast view, reshaped (the common FPN case)
        out = xp.broadcast_to(x[:, :, :, None, :, None], (N, C, H, ry, W, rx)).reshape(N, C, Ho, Wo)
        return out, ("int", x.shape, ry, rx)
    iy = _nearest_index(xp, Ho, H, fy)
    ix = _nearest_index(xp, Wo, W, fx)
    return x[:, :, iy[:, None], ix[None, :]], ("index", x.shape, iy, ix)


def upsample_nearest_backward(dout, cache):
    """Each input pixel collects the gradients of all the output pixels that copied it."""
    kind, (N, C, H, W), a, b = cache
    xp = get_xp(dout)
    if kind == "int":
        return dout.reshape(N, C, H, a, W, b).sum(axis=(3, 5))
    iy, ix = a, b
    # Sum rows, then columns, through one-hot matrices: (H, Ho) @ dout @ (Wo, W).
    Ry = (iy[None, :] == xp.arange(H)[:, None]).astype(dout.dtype)
    Rx = (ix[:, None] == xp.arange(W)[None, :]).astype(dout.dtype)
    return xp.matmul(xp.matmul(Ry, dout), Rx)
