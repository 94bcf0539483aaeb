"""conv2d's fast path for 3x3 stride-1 convolutions: Winograd's F(2, 3) down the kernel's columns, the row
shifts of ``_conv_rowshift.py`` across its rows, and 2/3 of the multiplications.

Read :func:`minimaskrcnn.nn.conv.conv2d_forward_im2col` first: this path computes the same convolution to
float32 round-off, with fewer multiplications. Winograd's minimal filtering (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", CVPR 2016) gives two outputs of a 3-tap filter ``g`` from four inputs ``d``
with 4 multiplications instead of 6:

    y0 = g0 d0 + g1 d1 + g2 d2 = m0 + m1 + m2       m0 = g0 (d0 - d2)              m1 = (g0+g1+g2)/2 (d1 + d2)
    y1 = g0 d1 + g1 d2 + g2 d3 = m1 - m2 - m3       m2 = (g0-g1+g2)/2 (d2 - d1)    m3 = g2 (d1 - d3)

Here the 3 taps are one column of the 3x3 kernel, ``d0..d3`` four input rows (2s .. 2s+3 of the padded
image) and ``y0, y1`` the output rows 2s and 2s+1. Summed over input channels and the kernel's 3 columns, each
``m_k`` is one GEMM:

    M_k = U_k @ V_k         U_k: (C_out, 3*C_in), the column combination of the weights above
                            V_k: (3*C_in, pixels), the row combination of the input (d0 - d2, d1 + d2, ...),
                                 3 times over, shifted by each kernel column as in row_shifts

so the forward is four GEMMs with 2/3 of the direct GEMM's multiply-adds, plus a few cheap additions before
(the ``V_k``) and after (``y0 = M0 + M1 + M2``, ``y1 = M1 - M2 - M3``). F(2, 3) in 2-D (F(2x2, 3x3), 16
GEMMs with K = C_in) saves more multiplications on paper and loses here: its GEMMs are too short and its
transforms too many passes over memory (``bench/conv_winograd.py`` measures it).

Every step is linear, so the backward is the same algebra transposed: ``dM_k`` from ``dout``
(``dm0 = dy0, dm1 = dy0 + dy1, dm2 = dy0 - dy1, dm3 = -dy1``), ``dU_k = dM_k @ V_k^T`` and the weights'
column combination undone for ``dw``; ``dx`` is the convolution of ``dout`` with the flipped kernel, which
takes this path too.

Layout. Even and odd padded rows are split into two arrays (``E``, ``O``), each image's ``Ht + 1`` rows of
``Wp`` padded pixels stacked into one long row per channel, so ``d0 .. d3`` of every tile are the same
array slid by a constant: ``E[p]``, ``O[p]``, ``E[p + Wp]``, ``O[p + Wp]``, and kernel column ``j`` slides
them ``j`` further. The pixels ``p`` that fall in a row's last 2 columns or an image's last tile row are
computed and dropped (6% of the GEMMs on 64x64 maps, 12% on 32x32). The backward recomputes ``V`` from the
input rather than keep it (6x the input's memory), and images go through in groups whose ``V`` fits in cache.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import as_strided, get_xp


# Where the path wins (see use_winograd): channels in and out, and output pixels per call.
MIN_CHANNELS = 128
MIN_CHANNELS_WIDE_MAPS = 64     # ... on maps at least WIDE_MAP outputs wide
WIDE_MAP = 64
MIN_PIXELS = 1024
# The transformed input V is 6x the input's size, so images go through in groups whose V stays under
# CHUNK_BYTES (the GEMMs then read it from cache); an image whose V alone exceeds MAX_IMAGE_BYTES takes the
# row-shift path instead (3x the input; the FPN's stride-4 and stride-8 maps at 800 px).
CHUNK_BYTES = 16 * 2 ** 20
MAX_IMAGE_BYTES = 64 * 2 ** 20


class Conv2dWinogradCache(NamedTuple):
    """What :func:`conv2d_backward_winograd` needs: the input ``x`` (its transform is recomputed: keeping it
    would cost 6x the input's memory), the weights, whether there was a bias, and the padding (h, w)."""
    x: object
    w: object
    has_bias: bool
    padding: tuple


def use_winograd(x_shape, w_shape, stride, padding, dilation, groups, itemsize=4) -> bool:
    """Whether :func:`conv2d_forward` takes this path: a 3x3 kernel, stride 1, no dilation, one group, padding
    at most 2 (dx's is 2 - p), one image's transform under MAX_IMAGE_BYTES, and where it was measured to win.

    The saving (a third of the GEMMs) grows with C_in * C_out * pixels; the costs are the transforms (a few
    passes over the input and output, growing with C_in + C_out), the weights' transform (C_in * C_out, paid
    once per call) and the pixels computed and dropped (2 columns per row, a row pair per image). Forward +
    backward against the row-shift path, 1 thread (``bench/layers.py``'s machine, time ratios):

    - 256 channels: 0.83 at 32x32 (2 images), 0.90 at 16x16 (4), 0.86 at 14x14 (64 RoIs), 1.01 at 8x8 (4);
    - 128 channels: 0.93 at 32x32 (4), 0.94 at 14x14 (64), 1.00 at 16x16 and 8x8 (4);
    - 64 channels: 0.95 at 64x64 (2), 1.04 at 48x48 (2) and 32x32 (4), 1.09-1.17 below;
    - 512 channels on 2 images: 1.03 at 14x14, 1.34 at 8x8 (too few pixels for the weights' transform).

    So: at least MIN_CHANNELS in and out (or MIN_CHANNELS_WIDE_MAPS on maps WIDE_MAP wide), at least
    MIN_PIXELS output pixels in the batch, and at least 8x8 outputs (on smaller maps the dropped pixels are
    a third of the work or more).
    """
    N, _, H, W = x_shape
    c_out, c_in, kh, kw = w_shape
    if not (kh == kw == 3 and stride == (1, 1) and dilation == (1, 1) and groups == 1 and max(padding) <= 2):
        return False
    g = _geometry(H, W, 1, padding)
    channels = min(c_in, c_out)
    return (g.Ho >= 8 and g.Wo >= 8 and N * g.Ho * g.Wo >= MIN_PIXELS
            and (channels >= MIN_CHANNELS or (channels >= MIN_CHANNELS_WIDE_MAPS and g.Wo >= WIDE_MAP))
            and _image_bytes(c_in, g, itemsize) <= MAX_IMAGE_BYTES)


class _Geometry(NamedTuple):
    Ho: int     # output rows
    Wo: int     # output columns
    Ht: int     # tile rows per image: ceil(Ho / 2)
    Wp: int     # padded width
    R: int      # one image's stretch of a long row: (Ht + 1) * Wp
    L: int      # pixels computed: up to the last image's last output pixel


def _geometry(H, W, N, padding):
    Ho, Wo = H + 2 * padding[0] - 2, W + 2 * padding[1] - 2
    Ht, Wp = (Ho + 1) // 2, W + 2 * padding[1]
    R = (Ht + 1) * Wp
    return _Geometry(Ho, Wo, Ht, Wp, R, (N - 1) * R + (Ht - 1) * Wp + Wo)


def _image_bytes(c_in, g: _Geometry, itemsize):
    """The size of one image's transformed input V: 4 x 3*C_in x R values."""
    return 4 * 3 * c_in * g.R * itemsize


def _chunks(x, padding):
    """(start, stop) image ranges whose transformed input stays under CHUNK_BYTES (at least one image)."""
    N, C, H, W = x.shape
    per_image = _image_bytes(C, _geometry(H, W, 1, padding), x.itemsize)
    step = max(1, CHUNK_BYTES // per_image)
    return [(n, min(N, n + step)) for n in range(0, N, step)]


def split_rows(x, padding, g: _Geometry):
    """The zero-padded ``x`` (N, C, H, W), its even and odd rows apart: (2, C, N*(Ht+1)*Wp), where
    ``[e, c, n*R + s*Wp + u] = x_pad[n, c, 2s + e, u]`` for the Ht + 1 row pairs that the tiles read."""
    xp = get_xp(x)
    N, C, H, W = x.shape
    ph, pw = padding
    rows = xp.empty((2, C, N, g.Ht + 1, g.Wp), dtype=x.dtype)
    for e in (0, 1):
        # padded row 2s + e is image row 2s + e - ph: rows [lo, hi) of the pairs hold image rows
        lo = max(0, (ph - e + 1) // 2)
        hi = max(lo, min(g.Ht + 1, (H - 1 + ph - e) // 2 + 1))
        dst = rows[e]
        dst[:, :, :lo] = 0
        dst[:, :, hi:] = 0
        dst[:, :, lo:hi, :pw] = 0
        dst[:, :, lo:hi, pw + W:] = 0
        first = 2 * lo + e - ph
        dst[:, :, lo:hi, pw:pw + W] = x[:, :, first:first + 2 * (hi - lo) - 1:2].transpose(1, 0, 2, 3)
    return rows.reshape(2, C, -1)


def input_transform(rows, g: _Geometry):
    """``V_k`` from :func:`split_rows`: (4, 3*C, L), row ``j*C + c`` the channel ``c`` slid by kernel column ``j``:

    ``V0 = d0 - d2, V1 = d1 + d2, V2 = d2 - d1, V3 = d1 - d3`` with ``d0..d3 = E[p], O[p], E[p+Wp], O[p+Wp]``.
    """
    xp = get_xp(rows)
    C, L, Wp = rows.shape[1], g.L, g.Wp
    E, O = rows[0], rows[1]
    V = xp.empty((4, 3, C, L), dtype=rows.dtype)
    for j in range(3):
        d0, d1, d2, d3 = E[:, j:j + L], O[:, j:j + L], E[:, Wp + j:Wp + j + L], O[:, Wp + j:Wp + j + L]
        xp.subtract(d0, d2, out=V[0, j])
        xp.add(d1, d2, out=V[1, j])
        xp.subtract(d2, d1, out=V[2, j])
        xp.subtract(d1, d3, out=V[3, j])
    return V.reshape(4, 3 * C, L)


def weight_transform(wt):
    """``U_k`` from the weights as (3 rows i, C_out, 3 columns j, C_in): a list of four (C_out, 3*C_in),
    ``U0 = g0, U1 = (g0 + g1 + g2)/2, U2 = (g0 - g1 + g2)/2, U3 = g2`` for each column ``g`` of the kernel."""
    c_out = wt.shape[1]
    g0, g1, g2 = wt[0], wt[1], wt[2]
    outer = g0 + g2
    return [u.reshape(c_out, -1) for u in (g0, (outer + g1) * 0.5, (outer - g1) * 0.5, g2)]


def _tile_rows(tall, rows, N, g: _Geometry):
    """Each image's first ``rows`` tile rows of a (C, L) array, as a view (N, C, rows, Wo)."""
    item = tall.itemsize
    return as_strided(tall, (N, tall.shape[0], rows, g.Wo), (g.R * item, tall.strides[0], g.Wp * item, item))


def _transformed(x, padding):
    """``V`` (4, 3*C_in, L) of the images ``x`` (N, C_in, H, W), and their geometry."""
    N, _, H, W = x.shape
    g = _geometry(H, W, N, padding)
    return input_transform(split_rows(x, padding, g), g), g


def _winograd_conv(x, wt, b, padding):
    """The convolution of ``x`` (N, C_in, H, W) by the weights ``wt`` (3, C_out, 3, C_in) (see
    :func:`weight_transform`) and bias ``b``: (N, C_out, Ho, Wo), a group of images at a time."""
    xp = get_xp(x, wt, b)
    N, _, H, W = x.shape
    c_out = wt.shape[1]
    U = weight_transform(wt)
    out = xp.empty((N, c_out, H + 2 * padding[0] - 2, W + 2 * padding[1] - 2), dtype=x.dtype)
    for n0, n1 in _chunks(x, padding):
        V, g = _transformed(x[n0:n1], padding)
        M = xp.empty((4, c_out, g.L), dtype=x.dtype)
        for k in range(4):
            xp.matmul(U[k], V[k], out=M[k])
        del V
        if b is not None:                   # m1 appears in both y0 and y1 with sign +
            M[1] += b[:, None]
        S = xp.add(M[1], M[2])              # y0 = m0 + (m1 + m2),  y1 = (m1 - m2) - m3
        D = xp.subtract(M[1], M[2], out=M[1])
        n = n1 - n0
        xp.add(_tile_rows(M[0], g.Ht, n, g), _tile_rows(S, g.Ht, n, g), out=out[n0:n1, :, 0::2])
        xp.subtract(_tile_rows(D, g.Ho // 2, n, g), _tile_rows(M[3], g.Ho // 2, n, g), out=out[n0:n1, :, 1::2])
    return out


def conv2d_forward_winograd(x, w, b, padding):
    """3x3 stride-1 conv2d by F(2, 3); arguments as ``conv2d_forward`` (checked there), ``padding`` an (h, w)
    pair that satisfies :func:`use_winograd`.

    Returns:
        out (N, C_out, Ho, Wo); a :class:`Conv2dWinogradCache`.
    """
    xp = get_xp(x, w, b)
    wt = xp.ascontiguousarray(w.transpose(2, 0, 3, 1))                      # (3 rows, C_out, 3 cols, C_in)
    return _winograd_conv(x, wt, b, padding), Conv2dWinogradCache(x, w, b is not None, padding)


def conv2d_backward_winograd(dout, cache: Conv2dWinogradCache, need_dx=True):
    """Gradients of :func:`conv2d_forward_winograd`: ``(dx, dw, db)`` (dx None if not ``need_dx``)."""
    x, w, has_bias, padding = cache
    xp = get_xp(dout, w)
    C, c_out = x.shape[1], w.shape[0]
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    dU = None                                   # (4, 3*C_in, C_out): dU_k = dM_k @ V_k^T, summed over groups
    for n0, n1 in _chunks(x, padding):
        V, g = _transformed(x[n0:n1], padding)
        n = n1 - n0
        # dy0, dy1 (the even and odd output rows) laid out like M_k, zero at the pixels the forward dropped
        dy = xp.zeros((2, c_out, n, g.Ht + 1, g.Wp), dtype=dout.dtype)
        dy[0, :, :, :g.Ht, :g.Wo] = dout[n0:n1, :, 0::2].transpose(1, 0, 2, 3)
        dy[1, :, :, :g.Ho // 2, :g.Wo] = dout[n0:n1, :, 1::2].transpose(1, 0, 2, 3)
        dy = dy.reshape(2, c_out, -1)[..., :g.L]
        dm = (dy[0], dy[0] + dy[1], dy[0] - dy[1], dy[1])          # dm3 is -dy1: its sign is taken below
        # computed transposed: (3*C, L) @ (L, C_out) runs faster than (C_out, L) @ (L, 3*C)
        part = xp.stack([xp.matmul(V[k], dm[k].T) for k in range(4)])
        dU = part if dU is None else xp.add(dU, part, out=dU)
        del V, dy, dm
    half = (dU[1] + dU[2]) * 0.5
    dwt = xp.stack([dU[0] + half, (dU[1] - dU[2]) * 0.5, half - dU[3]])        # (3 rows i, 3*C_in, C_out)
    dw = xp.ascontiguousarray(dwt.reshape(3, 3, C, c_out).transpose(3, 2, 0, 1))
    if not need_dx:
        return None, dw, db
    # dx: dout convolved with the kernel flipped in space and transposed in channels, padded by 2 - p
    wt_flip = xp.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(2, 1, 3, 0))  # (3, C_in, 3, C_out)
    return _winograd_conv(dout, wt_flip, None, (2 - padding[0], 2 - padding[1])), dw, db
