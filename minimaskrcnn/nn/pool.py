"""Max pooling: the ResNet stem's 3x3/2 pool and FPN's P6 (a 1x1, stride-2 "pool" = subsampling).

Pooling reuses conv's im2col: the windows become columns, the max is taken down each column and its
position (the argmax) is kept, so the backward pass can route each output gradient to the one input
that won (col2im then adds routes that land on the same pixel from overlapping windows).
"""
from __future__ import annotations

from ..backend import get_xp
from ._checks import check_float_array, pair
from .conv import col2im, conv_output_size, im2col
from .module import Module


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """``out[n, c, y, x] = max over the kh x kw window at (y*sh - ph, x*sw - pw)`` (padding never wins).

    Args:
        x: (N, C, H, W). kernel_size, stride (default: kernel_size), padding: int or pair.
    Returns:
        out: (N, C, Ho, Wo); cache (argmax within each window, shapes).
    """
    op = "max_pool2d_forward"
    check_float_array(x, "x", 4, op)
    kh, kw = pair(kernel_size, "kernel_size", 1, op)
    sh, sw = pair(kernel_size if stride is None else stride, "stride", 1, op)
    ph, pw = pair(padding, "padding", 0, op)
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"{op}: padding {padding} must be at most half the kernel size {kernel_size}")
    xp = get_xp(x)
    N, C, H, W = x.shape
    Ho, Wo = conv_output_size(H, kh, sh, ph, 1), conv_output_size(W, kw, sw, pw, 1)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: input {H}x{W} is smaller than the kernel {kh}x{kw}")
    if ph or pw:  # pad with -inf so that padding never wins the max
        x = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-xp.inf)
    # (N*C, 1, Hp, Wp) -> (N*C, kh*kw, Ho*Wo): one column per window, as in conv2d.
    cols = im2col(x.reshape(N * C, 1, *x.shape[2:]), kh, kw, (sh, sw))
    arg = cols.argmax(axis=1)                                                      # (N*C, Ho*Wo)
    out = xp.take_along_axis(cols, arg[:, None, :], axis=1).reshape(N, C, Ho, Wo)
    return out, (arg, (N, C, H, W), (kh, kw), (sh, sw), (ph, pw))


def max_pool2d_backward(dout, cache):
    """Each output gradient goes to its window's argmax; overlapping windows add up."""
    arg, (N, C, H, W), (kh, kw), stride, padding = cache
    xp = get_xp(dout)
    dcols = xp.zeros((N * C, kh * kw, arg.shape[1]), dtype=dout.dtype)
    xp.put_along_axis(dcols, arg[:, None, :], dout.reshape(N * C, 1, -1), axis=1)
    dx = col2im(dcols, (N * C, 1, H, W), kh, kw, stride, padding)
    return dx.reshape(N, C, H, W)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, kernel_size if stride is None else stride, padding

    def forward(self, x):
        out, cache = max_pool2d_forward(x, self.kernel_size, self.stride, self.padding)
        self.save_for_backward(cache)
        return out

    def backward(self, dout):
        cache = self.saved()
        return max_pool2d_backward(dout, cache)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
