"""conv2d's fast path for stride 1: the same GEMMs as im2col, from 3x fewer copied bytes.

:func:`minimaskrcnn.nn.conv.conv2d_forward` takes this path for every stride-1 convolution with a kernel
taller than one row (ResNet's and the FPN's 3x3s, the mask head's four 3x3s); the plain im2col path
(:func:`minimaskrcnn.nn.conv.conv2d_forward_im2col`) gives the same result to round-off and is the one to
read first. Here is why this one is faster on a memory-bound CPU:

im2col copies every receptive field, kh*kw times the input. At stride 1, :func:`row_shifts` copies only the
kw horizontally shifted images, because the kh vertical shifts of a row-major image are just offsets into
it: kernel row ``i`` reads the rows ``i*dh`` further down, a contiguous slice of the same matrix (a view).
With the N images stacked vertically into one tall image, each kernel row is one GEMM over the whole batch
(or, for narrow layers, one GEMM serves every kernel row: see :func:`conv2d_forward_rowshift`).
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import as_strided, get_xp


# Up to this many stacked kernel-row outputs (kh * C_out/groups), one GEMM serves every kernel row: on 2 cores
# it took 0.87-0.98x the time (forward + backward) of one GEMM per row for 16-64 channels, 1.0x at 128, and
# 1.06-1.10x at 256 channels (3x3, 1 and 2 BLAS threads).
ONE_GEMM_ROWS = 384


class Conv2dRowShiftCache(NamedTuple):
    """What :func:`conv2d_backward_rowshift` needs: the row-shifted input (G, Cg*kw, N*Hp*Wo), the weights,
    whether there was a bias, the input's shape, padding and dilation ((h, w) pairs) and the groups."""
    shifted: object
    w: object
    has_bias: bool
    x_shape: tuple
    padding: tuple
    dilation: tuple
    groups: int


def use_row_shifts(w_shape, stride, padding, dilation, height=None) -> bool:
    """Stride 1, a kernel taller than one row, padding that the flipped-kernel backward can mirror, and (given
    the input's ``height``) more than 4 output rows per image: on 4x4 maps (the FPN's top levels, ResNet's last
    stage at 128 px) the dh*(kh-1) rows dropped per image are a third of the work and im2col's single GEMM
    wins (measured 0.8-0.9x the time forward + backward)."""
    _, _, kh, kw = w_shape
    if height is not None and height + 2 * padding[0] - dilation[0] * (kh - 1) <= 4:
        return False
    return (stride == (1, 1) and kh > 1 and padding[0] <= dilation[0] * (kh - 1)
            and padding[1] <= dilation[1] * (kw - 1))


def row_shifts(x, kw, padding=(0, 0), dilation=(1, 1)):
    """The stride-1 alternative to im2col: ``kw`` horizontally shifted copies of the padded batch,
    with the N images stacked vertically into one tall image.

    ``out[c, j, n, y, x] = x_pad[n, c, y, x + j*dw]`` for the ``Wo`` output columns, stored row-major as
    (C*kw, N*Hp*Wo). Kernel row ``i`` then needs the same rows ``i*dh`` further down, which in row-major
    order is the contiguous slice starting at ``i*dh*Wo``: the kh vertical taps cost no copy at all. Near
    the bottom of each image that slice runs into the next image's (padding) rows; those outputs are the
    ones :func:`conv2d_forward_rowshift` drops (a waste of dh*(kh-1) rows in Hp, 2 in 16 for 14x14 RoIs).

    Returns:
        (C*kw, N*Hp*Wo) with Hp the padded height.
    """
    xp = get_xp(x)
    N, C, H, W = x.shape
    (ph, pw), (_, dw) = padding, dilation
    Hp, Wp = H + 2 * ph, W + 2 * pw
    Wo = Wp - dw * (kw - 1)
    # Every element is written once: the image, or a zero where the padding is (a zero-filled buffer would
    # write the whole of it twice).
    out = xp.empty((C, kw, N, Hp, Wo), dtype=x.dtype)
    out[:, :, :, :ph] = 0
    out[:, :, :, ph + H:] = 0
    xc = x.transpose(1, 0, 2, 3)                                   # (C, N, H, W): channels outermost
    for j in range(kw):
        # columns of x that land in output columns [lo, hi) for horizontal tap j
        lo, hi = max(0, pw - j * dw), min(Wo, W + pw - j * dw)
        rows = out[:, j, :, ph:ph + H]
        rows[..., :lo] = 0
        rows[..., hi:] = 0
        rows[..., lo:hi] = xc[:, :, :, lo + j * dw - pw:hi + j * dw - pw]
    return out.reshape(C * kw, N * Hp * Wo)


def _kernel_rows(w, G):
    """(C_out, Cg, kh, kw) -> (G, kh*C_out/G, Cg*kw): each group's kernel rows stacked, matching row_shifts."""
    c_out, cg, kh, kw = w.shape
    return get_xp(w).ascontiguousarray(w.reshape(G, c_out // G, cg, kh, kw).transpose(0, 3, 1, 2, 4)
                                       .reshape(G, kh * (c_out // G), cg * kw))


def _images(tall, start, N, Hp, Ho, Wo):
    """A tall array's output rows, image by image: the view (N, G, C/G, Ho*Wo) of ``tall`` (G, C/G, ...)
    from element ``start`` on, image n's Ho rows (of Wo) starting ``n*Hp*Wo`` elements further."""
    item = tall.itemsize
    return as_strided(tall[..., start:], (N,) + tall.shape[:2] + (Ho * Wo,),
                      (Hp * Wo * item,) + tall.strides[:2] + (item,))


def _conv_rows(shifted, w, b, N, Hp, Wo, dh):
    """The convolution whose :func:`row_shifts` are ``shifted`` (G, Cg*kw, N*Hp*Wo), with weights ``w``
    (C_out, Cg, kh, kw), bias ``b`` (C_out,) or None, and vertical dilation ``dh``.

    Returns:
        (N, C_out, Ho, Wo), Ho = Hp - dh*(kh-1).
    """
    xp = get_xp(shifted, w, b)
    G = shifted.shape[0]
    c_out, cg, kh, kw = w.shape
    cog = c_out // G
    Ho = Hp - dh * (kh - 1)
    L = ((N - 1) * Hp + Ho) * Wo            # the tall image's output rows, up to the last image's last
    out = xp.empty((N, c_out, Ho, Wo), dtype=shifted.dtype)
    images = out.reshape(N, G, cog, Ho * Wo)
    w_rows = _kernel_rows(w, G)                                                  # (G, kh*Co/G, Cg*kw)
    # Each kernel row's product is a tall image, and image n's output is the sum over kernel rows i of the
    # product's rows from n*Hp + i*dh on (the dh*(kh-1) rows after each image's straddle two images: they
    # are dropped). The sums read the products through strided views and write the output in place.
    if kh * cog <= ONE_GEMM_ROWS:
        # Shift the products rather than the input: one GEMM for every kernel row at once. Narrow layers
        # gain (one pass over the input instead of kh); wide ones lose (kh times the output's memory).
        prods = xp.matmul(w_rows, shifted).reshape(G, kh, cog, -1)                # (G, kh, Co/G, N*Hp*Wo)
        rows = [_images(prods[:, i], i * dh * Wo, N, Hp, Ho, Wo) for i in range(kh)]
        xp.add(rows[0], rows[1], out=images)                                     # kh >= 2
        for r in rows[2:]:
            images += r
    else:
        # Kernel row i reads the rows i*dh further down: a contiguous slice of the input (a view, no copy).
        w_rows = w_rows.reshape(G, kh, cog, cg * kw)
        part = [xp.matmul(w_rows[:, i], shifted[..., i * dh * Wo:i * dh * Wo + L]) for i in (0, 1)]
        xp.add(_images(part[0], 0, N, Hp, Ho, Wo), _images(part[1], 0, N, Hp, Ho, Wo), out=images)
        for i in range(2, kh):              # one buffer takes each further row's product (no page faults)
            xp.matmul(w_rows[:, i], shifted[..., i * dh * Wo:i * dh * Wo + L], out=part[0])
            images += _images(part[0], 0, N, Hp, Ho, Wo)
    if b is not None:
        images += b.reshape(1, G, cog, 1)
    return out


def conv2d_forward_rowshift(x, w, b, padding, dilation, groups):
    """Stride-1 conv2d through :func:`row_shifts`; arguments as ``conv2d_forward`` (checked there), with
    ``padding`` and ``dilation`` as (h, w) pairs that satisfy :func:`use_row_shifts`.

    Returns:
        out (N, C_out, Ho, Wo); a :class:`Conv2dRowShiftCache`.
    """
    N, C, H, W = x.shape
    cg, kw = w.shape[1], w.shape[3]
    # The whole batch as one tall image: images stacked vertically, each with its padding rows, so each
    # kernel row is a single GEMM over every image at once.
    shifted = row_shifts(x, kw, padding, dilation).reshape(groups, cg * kw, -1)  # (G, Cg*kw, N*Hp*Wo)
    out = _conv_rows(shifted, w, b, N, H + 2 * padding[0], W + 2 * padding[1] - dilation[1] * (kw - 1),
                     dilation[0])
    return out, Conv2dRowShiftCache(shifted, w, b is not None, tuple(x.shape), padding, dilation, groups)


def conv2d_backward_rowshift(dout, cache: Conv2dRowShiftCache, need_dx=True):
    """Gradients of :func:`conv2d_forward_rowshift`: ``(dx, dw, db)`` (dx None if not ``need_dx``).

    ``dw``: each kernel row's GEMM again, against the same shifted rows. ``dx`` is itself a stride-1
    convolution: of ``dout`` with the kernel flipped in space and transposed in channels, padded by
    ``d(k-1) - p`` (each input pixel collects from every output it fed), so it takes this path too.
    """
    shifted, w, has_bias, x_shape, padding, dilation, G = cache
    xp = get_xp(dout, w)
    N, _, H, W = x_shape
    c_out, cg, kh, kw = w.shape
    cog = c_out // G
    Ho, Wo = dout.shape[2], dout.shape[3]
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    Hp = H + 2 * padding[0]
    L = ((N - 1) * Hp + Ho) * Wo
    pad = (dilation[0] * (kh - 1) - padding[0], dilation[1] * (kw - 1) - padding[1])
    d_shifted = row_shifts(dout, kw, pad, dilation).reshape(G, cog, kw, -1) if need_dx else None
    # dout laid out like the tall output: each image's Ho rows, then zero rows where outputs were dropped.
    # With "same" padding that is one of dx's row shifts (the unshifted one, from its first image row on).
    if need_dx and Ho + 2 * pad[0] == Hp and W == Wo and pad[1] % dilation[1] == 0:
        d_tall = d_shifted[:, :, pad[1] // dilation[1], pad[0] * Wo:pad[0] * Wo + L]       # (G, Co/G, L)
    elif N == 1:
        d_tall = dout.reshape(G, cog, L)
    else:
        d_tall = xp.empty((c_out, N, Hp, Wo), dtype=dout.dtype)
        d_tall[:, :, :Ho] = dout.transpose(1, 0, 2, 3)
        d_tall[:, :, Ho:] = 0
        d_tall = d_tall.reshape(G, cog, N * Hp * Wo)[..., :L]
    # dw for kernel row i, transposed: (Cg*kw, L) @ (L, Co/G), the long pixel axis as the GEMM's inner one
    # (a small output; this way round runs 15% faster than (Co/G, L) @ (L, Cg*kw) at 64 channels).
    d_cols = d_tall.swapaxes(-1, -2)
    rows = [xp.matmul(shifted[..., i * dilation[0] * Wo:i * dilation[0] * Wo + L], d_cols) for i in range(kh)]
    dw = xp.stack(rows).reshape(kh, G, cg, kw, cog).transpose(1, 4, 2, 0, 3).reshape(w.shape)
    if not need_dx:
        return None, dw, db
    w_flip = w[:, :, ::-1, ::-1].reshape(G, cog, cg, kh, kw).transpose(0, 2, 1, 3, 4)
    w_flip = xp.ascontiguousarray(w_flip.reshape(G * cg, cog, kh, kw))
    dx = _conv_rows(d_shifted.reshape(G, cog * kw, -1), w_flip, None, N, Ho + 2 * pad[0], W, dilation[0])
    return dx, dw, db
