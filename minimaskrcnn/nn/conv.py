"""2-D convolution and transposed convolution as im2col + GEMM.

A convolution is a matrix product in disguise. ``im2col`` copies every receptive field of the input into
one column of a matrix ``cols`` of shape ``(C*kh*kw, Ho*Wo)``; the output is then ``W @ cols`` with the
weights reshaped to ``(C_out, C*kh*kw)``. The backward pass is two more products:

    dW    = dout @ cols.T                   (C_out, C*kh*kw)
    dcols = W.T @ dout                      (C*kh*kw, Ho*Wo), then ``col2im`` adds each column back
                                            onto the input pixels it was copied from.

That is :func:`conv2d_forward_im2col` / :func:`conv2d_backward_im2col`, the path to read. :func:`conv2d_forward`
takes it for every stride > 1 and 1-row kernel, and faster routes to the same result for stride 1: the same
products from kw shifted copies of the input instead of kh*kw (``_conv_rowshift.py``), and for wide 3x3 layers,
Winograd's F(2, 3) with 2/3 of the multiplications (``_conv_winograd.py``).

Weights are in PyTorch's layout: ``(C_out, C_in/groups, kh, kw)`` for conv2d and
``(C_in, C_out/groups, kh, kw)`` for conv_transpose2d, so torchvision weights load unchanged.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import as_strided, get_xp
from . import init
from ._checks import check_float_array, pair
from ._conv_rowshift import (Conv2dRowShiftCache, conv2d_backward_rowshift, conv2d_forward_rowshift,
                             use_row_shifts)
from ._conv_winograd import Conv2dWinogradCache, conv2d_backward_winograd, conv2d_forward_winograd, use_winograd
from .module import Module, Parameter


def conv_output_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    """Output length along one axis: ``floor((size + 2p - d(k-1) - 1) / s) + 1``."""
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def im2col(x, kh, kw, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """Receptive fields as columns.

    Args:
        x: (N, C, H, W).
    Returns:
        cols: (N, C*kh*kw, Ho*Wo) with ``cols[n, (c*kh + i)*kw + j, oy*Wo + ox] =
        x_padded[n, c, oy*sh + i*dh, ox*sw + j*dw]``.
    """
    ### BEGIN SOLUTION
    xp = get_xp(x)
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    N, C, H, W = x.shape
    Ho = conv_output_size(H, kh, sh, ph, dh)
    Wo = conv_output_size(W, kw, sw, pw, dw)
    if kh == kw == 1 and ph == pw == 0:
        # 1x1 convolution: the columns are the (strided) pixels themselves; no copy at stride 1.
        return x[:, :, ::sh, ::sw].reshape(N, C, Ho * Wo)
    if ph or pw:
        x = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    s0, s1, s2, s3 = x.strides
    # A strided *view*: axes (n, c, i, j, oy, ox) address x_padded[n, c, oy*sh + i*dh, ox*sw + j*dw].
    # The reshape below is the one copy im2col makes.
    win = as_strided(x, (N, C, kh, kw, Ho, Wo), (s0, s1, s2 * dh, s3 * dw, s2 * sh, s3 * sw))
    return win.reshape(N, C * kh * kw, Ho * Wo)
    ### END SOLUTION


def col2im(cols, x_shape, kh, kw, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """The adjoint of :func:`im2col`: add every column entry back onto the input pixel it came from.

    Args:
        cols: (N, C*kh*kw, Ho*Wo).
        x_shape: (N, C, H, W) of the input to ``im2col``.
    Returns:
        (N, C, H, W). Overlapping receptive fields (stride < kernel) accumulate.
    """
    ### BEGIN SOLUTION
    xp = get_xp(cols)
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    N, C, H, W = x_shape
    Ho = conv_output_size(H, kh, sh, ph, dh)
    Wo = conv_output_size(W, kw, sw, pw, dw)
    cols = cols.reshape(N, C, kh, kw, Ho, Wo)
    if kh == kw == 1 and ph == pw == 0 and sh == sw == 1:
        return cols.reshape(N, C, H, W)
    out = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    # One strided add per kernel tap (kh*kw of them), each covering all pixels and channels at once.
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dh, j * dw
            out[:, :, y0:y0 + sh * (Ho - 1) + 1:sh, x0:x0 + sw * (Wo - 1) + 1:sw] += cols[:, :, i, j]
    return out[:, :, ph:ph + H, pw:pw + W]
    ### END SOLUTION


def _check_conv_args(x, w, b, groups, op, transposed=False):
    check_float_array(x, "x", 4, op)
    check_float_array(w, "w", 4, op)
    if x.dtype != w.dtype:
        raise ValueError(f"{op}: x and w must have the same dtype, got {x.dtype} and {w.dtype}")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    C = x.shape[1]
    c_in_w = w.shape[0] if transposed else w.shape[1] * groups
    if C != c_in_w:
        expect = "w.shape[0]" if transposed else "w.shape[1] * groups"
        raise ValueError(f"{op}: x has {C} channels (shape {tuple(x.shape)}) but {expect} = {c_in_w} "
                         f"(w shape {tuple(w.shape)}, groups={groups})")
    c_out = w.shape[1] * groups if transposed else w.shape[0]
    if C % groups or c_out % groups:
        raise ValueError(f"{op}: in ({C}) and out ({c_out}) channels must be divisible by groups={groups}")
    if b is not None:
        check_float_array(b, "b", 1, op)
        if b.shape[0] != c_out:
            raise ValueError(f"{op}: b must have shape ({c_out},), got {tuple(b.shape)}")
    return c_out


class Conv2dIm2colCache(NamedTuple):
    """What :func:`conv2d_backward_im2col` needs."""
    cols: object        # (N, G, K, Ho*Wo): im2col of the input, split by group (K = C_in/G * kh * kw)
    w: object           # (C_out, C_in/G, kh, kw)
    has_bias: bool
    x_shape: tuple      # (N, C_in, H, W)
    stride: tuple       # (h, w) pairs
    padding: tuple
    dilation: tuple
    groups: int


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation (what deep learning calls convolution), as GEMMs.

    ``out[n, o, y, x] = b[o] + sum_{c,i,j} w[o, c, i, j] * x_pad[n, g*C_g + c, y*sh + i*dh, x*sw + j*dw]``
    where ``g`` is the group of output channel ``o``.

    Checks the arguments, then takes one of three ways to the same result (to round-off):
    :func:`conv2d_forward_im2col`, the plain one, for any stride; at stride 1 with a kernel taller than one
    row, :func:`~minimaskrcnn.nn._conv_rowshift.conv2d_forward_rowshift`, the same GEMMs from 3x fewer copied
    bytes for a 3x3 kernel (what matters on a memory-bound CPU); and for wide 3x3 stride-1 layers (128
    channels and more; :func:`~minimaskrcnn.nn._conv_winograd.use_winograd` says exactly where),
    :func:`~minimaskrcnn.nn._conv_winograd.conv2d_forward_winograd`, GEMMs with 2/3 of the multiply-adds.

    Args:
        x: (N, C_in, H, W).
        w: (C_out, C_in/groups, kh, kw).
        b: (C_out,) or None.
        stride, padding, dilation: int or (h, w) pair.
        groups: split the channels into this many independent convolutions (ResNeXt, Xie et al. 2017).
    Returns:
        out: (N, C_out, Ho, Wo), Ho = floor((H + 2p - d(kh-1) - 1)/s) + 1.
        cache: for :func:`conv2d_backward` (the columns: kw or kh*kw times the input's memory).
    """
    op = "conv2d_forward"
    _check_conv_args(x, w, b, groups, op)
    stride = pair(stride, "stride", 1, op)
    padding = pair(padding, "padding", 0, op)
    dilation = pair(dilation, "dilation", 1, op)
    H, W = x.shape[2:]
    kh, kw = w.shape[2:]
    Ho = conv_output_size(H, kh, stride[0], padding[0], dilation[0])
    Wo = conv_output_size(W, kw, stride[1], padding[1], dilation[1])
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: input {H}x{W} is smaller than the dilated kernel {kh}x{kw} "
                         f"(padding={padding}, dilation={dilation}); x shape {tuple(x.shape)}")
    if use_winograd(x.shape, w.shape, stride, padding, dilation, groups, x.itemsize):
        return conv2d_forward_winograd(x, w, b, padding)
    if use_row_shifts(w.shape, stride, padding, dilation, H):
        return conv2d_forward_rowshift(x, w, b, padding, dilation, groups)
    return conv2d_forward_im2col(x, w, b, stride, padding, dilation, groups)


def conv2d_backward(dout, cache, need_dx=True):
    """Gradients of :func:`conv2d_forward`: ``(dx, dw, db)``, by the path the forward took.

    ``need_dx=False`` skips the input gradient (dx is None): a network's first conv, whose input is the image,
    spends half its backward there for a gradient nothing reads."""
    if isinstance(cache, Conv2dWinogradCache):
        return conv2d_backward_winograd(dout, cache, need_dx)
    if isinstance(cache, Conv2dRowShiftCache):
        return conv2d_backward_rowshift(dout, cache, need_dx)
    return conv2d_backward_im2col(dout, cache, need_dx)


def conv2d_forward_im2col(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """conv2d the plain way: :func:`im2col`, then one matrix product per image and group.

    ``out = W @ cols`` with the weights as a ``(C_out, C_in*kh*kw)`` matrix; with groups, each group's
    output channels multiply only its own rows of ``cols``.

    Args:
        x: (N, C_in, H, W); w: (C_out, C_in/groups, kh, kw); b: (C_out,) or None.
        stride, padding, dilation: (h, w) pairs; groups: int. (Unchecked: :func:`conv2d_forward` checks.)
    Returns:
        out: (N, C_out, Ho, Wo); a :class:`Conv2dIm2colCache`.
    """
    ### BEGIN SOLUTION
    xp = get_xp(x, w, b)
    N, C, H, W = x.shape
    c_out, cg, kh, kw = w.shape
    G, K = groups, cg * kh * kw                      # K: the length of one group's receptive field
    Ho = conv_output_size(H, kh, stride[0], padding[0], dilation[0])
    Wo = conv_output_size(W, kw, stride[1], padding[1], dilation[1])
    cols = im2col(x, kh, kw, stride, padding, dilation).reshape(N, G, K, Ho * Wo)
    # (G, C_out/G, K) @ (N, G, K, Ho*Wo) -> (N, G, C_out/G, Ho*Wo): one GEMM per image and group.
    out = xp.matmul(w.reshape(G, c_out // G, K), cols).reshape(N, c_out, Ho, Wo)
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out, Conv2dIm2colCache(cols, w, b is not None, tuple(x.shape), stride, padding, dilation, G)
    ### END SOLUTION


def conv2d_backward_im2col(dout, cache: Conv2dIm2colCache, need_dx=True):
    """Gradients of :func:`conv2d_forward_im2col`.

    Args:
        dout: (N, C_out, Ho, Wo).
    Returns:
        dx (N, C_in, H, W) = col2im(W^T @ dout); dw (C_out, C_in/groups, kh, kw) = sum_n dout_n @ cols_n^T;
        db (C_out,) = sum of dout over n, y, x (None if the forward had no bias). dx is None if not ``need_dx``.
    """
    ### BEGIN SOLUTION
    cols, w, has_bias, x_shape, stride, padding, dilation, G = cache
    xp = get_xp(dout, w)
    N = x_shape[0]
    c_out, cg, kh, kw = w.shape
    K, P = cg * kh * kw, dout.shape[2] * dout.shape[3]
    d3 = dout.reshape(N, G, c_out // G, P)
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    dw = xp.matmul(d3, cols.swapaxes(-1, -2)).sum(axis=0).reshape(w.shape)  # (G, C_out/G, K) summed over n
    if not need_dx:
        return None, dw, db
    dcols = xp.matmul(w.reshape(G, c_out // G, K).swapaxes(-1, -2), d3)     # (N, G, K, P)
    dx = col2im(dcols.reshape(N, G * K, P), x_shape, kh, kw, stride, padding, dilation)
    return dx, dw, db
    ### END SOLUTION


class ConvTranspose2dCache(NamedTuple):
    """What :func:`conv_transpose2d_backward` needs: the input, the weights, whether there was a bias,
    stride and padding ((h, w) pairs) and the groups."""
    x: object
    w: object
    has_bias: bool
    stride: tuple
    padding: tuple
    groups: int


def conv_transpose2d_forward(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1):
    """Transposed convolution: the adjoint (the input-gradient) of conv2d, used to upsample.

    Each input pixel scatters ``x[n, c, y, x] * w[c, o, :, :]`` onto a kh x kw patch of the output at
    ``(y*s - p, x*s - p)``. The mask head's 2x2, stride-2 "deconv" (paper Fig. 4) doubles the resolution
    with non-overlapping patches.

    Args:
        x: (N, C_in, H, W).
        w: (C_in, C_out/groups, kh, kw).
        b: (C_out,) or None.
    Returns:
        out: (N, C_out, Ho, Wo), Ho = (H - 1)*s - 2p + kh + output_padding.
        cache.
    """
    op = "conv_transpose2d_forward"
    c_out = _check_conv_args(x, w, b, groups, op, transposed=True)
    stride = pair(stride, "stride", 1, op)
    padding = pair(padding, "padding", 0, op)
    output_padding = pair(output_padding, "output_padding", 0, op)
    if output_padding[0] >= stride[0] or output_padding[1] >= stride[1]:
        raise ValueError(f"{op}: output_padding {output_padding} must be smaller than stride {stride}")
    xp = get_xp(x, w, b)
    N, C, H, W = x.shape
    _, og, kh, kw = w.shape
    G, K = groups, og * kh * kw
    Ho = (H - 1) * stride[0] - 2 * padding[0] + kh + output_padding[0]
    Wo = (W - 1) * stride[1] - 2 * padding[1] + kw + output_padding[1]
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: output would be {Ho}x{Wo} for input shape {tuple(x.shape)}")
    x3 = x.reshape(N, G, C // G, H * W)
    # (G, K, C/G) @ (N, G, C/G, HW) -> (N, G, K, HW): every input pixel's kh x kw patch, then scatter.
    cols = xp.matmul(w.reshape(G, C // G, K).swapaxes(-1, -2), x3)
    if (kh, kw) == stride and padding == (0, 0) and output_padding == (0, 0):
        # Patches exactly tile the output (the mask head's 2x2 / 2): no overlap, so the scatter is a
        # reshuffle, (N, C_out, kh, kw, H, W) -> (N, C_out, H, kh, W, kw).
        out = cols.reshape(N, c_out, kh, kw, H, W).transpose(0, 1, 4, 2, 5, 3).reshape(N, c_out, Ho, Wo)
    else:
        out = col2im(cols.reshape(N, G * K, H * W), (N, c_out, Ho, Wo), kh, kw, stride, padding, (1, 1))
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out, ConvTranspose2dCache(x, w, b is not None, stride, padding, groups)


def conv_transpose2d_backward(dout, cache):
    """Gradients of :func:`conv_transpose2d_forward`: ``dx`` is a plain conv2d of ``dout`` with ``w``.

    Returns:
        dx (N, C_in, H, W), dw (C_in, C_out/groups, kh, kw), db (C_out,) or None.
    """
    x, w, has_bias, stride, padding, G = cache
    xp = get_xp(dout, w)
    N, C, H, W = x.shape
    _, og, kh, kw = w.shape
    K = og * kh * kw
    dcols = im2col(dout, kh, kw, stride, padding, (1, 1)).reshape(N, G, K, H * W)  # patches back
    x3 = x.reshape(N, G, C // G, H * W)
    dx = xp.matmul(w.reshape(G, C // G, K), dcols).reshape(x.shape)
    dw = xp.matmul(x3, dcols.swapaxes(-1, -2)).sum(axis=0).reshape(w.shape)
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw, db


def _check_groups(in_channels, out_channels, groups, op):
    if not isinstance(groups, int) or groups < 1 or in_channels % groups or out_channels % groups:
        raise ValueError(f"{op}: in_channels={in_channels} and out_channels={out_channels} must both be divisible "
                         f"by groups={groups!r}")


class Conv2d(Module):
    """A conv2d layer with parameters ``weight`` (C_out, C_in/groups, kh, kw) and ``bias`` (C_out,).

    ``input_grad = False`` (an attribute) makes :meth:`backward` skip the input's gradient and return None:
    for a first layer whose input is data (ResNet's stem, when nothing asks for the image gradient)."""

    input_grad = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, dtype="float32"):
        super().__init__()
        kh, kw = pair(kernel_size, "kernel_size", 1, "Conv2d")
        _check_groups(in_channels, out_channels, groups, "Conv2d")
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.weight = Parameter(init.default_weight((out_channels, in_channels // groups, kh, kw), dtype))
        fan = in_channels // groups * kh * kw
        self.bias = Parameter(init.default_bias(out_channels, fan, dtype)) if bias else None

    def forward(self, x):
        b = self.bias.data if self.bias is not None else None
        out, cache = conv2d_forward(x, self.weight.data, b, self.stride, self.padding, self.dilation, self.groups)
        self.save_for_backward(cache)
        return out

    def backward(self, dout):
        dx, dw, db = conv2d_backward(dout, self.saved(), self.input_grad)
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        co, ci, kh, kw = self.weight.shape
        return (f"{ci * self.groups}, {co}, kernel_size=({kh}, {kw}), stride={self.stride}, padding={self.padding}"
                + (f", dilation={self.dilation}" if self.dilation != 1 else "")
                + (f", groups={self.groups}" if self.groups != 1 else "")
                + (", bias=False" if self.bias is None else ""))


class ConvTranspose2d(Module):
    """A transposed convolution with ``weight`` (C_in, C_out/groups, kh, kw) and ``bias`` (C_out,)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dtype="float32"):
        super().__init__()
        kh, kw = pair(kernel_size, "kernel_size", 1, "ConvTranspose2d")
        _check_groups(in_channels, out_channels, groups, "ConvTranspose2d")
        self.stride, self.padding, self.output_padding, self.groups = stride, padding, output_padding, groups
        # PyTorch computes fan_in from weight.shape[1] * kh * kw for transposed convs.
        self.weight = Parameter(init.default_weight((in_channels, out_channels // groups, kh, kw), dtype))
        fan = out_channels // groups * kh * kw
        self.bias = Parameter(init.default_bias(out_channels, fan, dtype)) if bias else None

    def forward(self, x):
        b = self.bias.data if self.bias is not None else None
        out, cache = conv_transpose2d_forward(x, self.weight.data, b, self.stride, self.padding,
                                              self.output_padding, self.groups)
        self.save_for_backward(cache)
        return out

    def backward(self, dout):
        dx, dw, db = conv_transpose2d_backward(dout, self.saved())
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        ci, co, kh, kw = self.weight.shape
        return (f"{ci}, {co * self.groups}, kernel_size=({kh}, {kw}), stride={self.stride}, padding={self.padding}"
                + (f", output_padding={self.output_padding}" if self.output_padding else "")
                + (f", groups={self.groups}" if self.groups != 1 else ""))
