"""Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions, forward and backward, measured against our conv2d.

    python bench/conv_winograd.py [--repeats 7] [--threads 1]

An experiment the package does not use: on this machine it lost to the row-shift path on every shape the
models have (bench/RESULTS.md has the run). What the package uses for wide 3x3 layers is Winograd in one
dimension, F(2, 3) down the kernel's columns with the row-shift copies across them
(``minimaskrcnn/nn/_conv_winograd.py``): 4 GEMMs with K = 3 C_in instead of 16 with K = C_in, and 5 passes over
memory for its transforms instead of 36. This one is kept because it is correct, short, and the natural
first idea, so the next person can measure it rather than write it again. "Our conv2d" below is
``conv2d_forward`` as dispatched (the 1-D Winograd path at 64 channels and more, the row-shift path below).

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016). Cut the output into 2x2 tiles;
each needs the 4x4 input tile ``d`` under it. Then, for one channel pair,

    y = A^T [ (G g G^T) * (B^T d B) ] A          (``*``: elementwise over the 4x4 "Winograd domain")

with the 3x3 kernel ``g`` and the constant matrices below: 16 multiplications per tile instead of the 36 of
the direct sum (9 taps x 4 outputs). Over channels the elementwise product becomes 16 independent GEMMs,
one per Winograd-domain position ``xi``:

    M[xi] = U[xi] @ V[xi]        U = G g G^T: (16, C_out, C_in),  V = B^T d B: (16, C_in, T tiles)

and the backward is the same algebra transposed (every step is linear, so its adjoint is exact):

    dM[xi] = (A dY A^T)[xi]      dU = dM @ V^T,  dw = G^T dU G     dV = U^T @ dM,  dx = overlap-add of B dV B^T

B^T and A^T hold only 0 and +-1, so the transforms are additions of strided views of the image: no tile is
ever copied out. The GEMMs have K = C_in instead of the row-shift path's 3 C_in (and im2col's 9 C_in): GEMMs
that short run well below the machine's peak, and the transforms' passes over memory cost more than the
multiplications they save. Results agree with im2col's to float32 round-off (checked on every case).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NamedTuple

import numpy as np
from _timing import median_time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from minimaskrcnn.backend import get_xp  # noqa: E402
from minimaskrcnn.engine.threads import blas_threads  # noqa: E402
from minimaskrcnn.nn.conv import (conv2d_backward, conv2d_backward_im2col, conv2d_forward,  # noqa: E402
                                  conv2d_forward_im2col)

# F(2x2, 3x3)'s matrices (Lavin & Gray, Eq. 7-8), as nested tuples: the code below reads them as sums.
BT = ((1, 0, -1, 0),       # V = B^T d B: the input transform (4x4 tile -> 4x4)
      (0, 1, 1, 0),
      (0, -1, 1, 0),
      (0, 1, 0, -1))
G_MAT = ((1.0, 0.0, 0.0),  # U = G g G^T: the kernel transform (3x3 -> 4x4)
         (0.5, 0.5, 0.5),
         (0.5, -0.5, 0.5),
         (0.0, 0.0, 1.0))
AT = ((1, 1, 1, 0),        # Y = A^T M A: the output transform (4x4 -> 2x2 outputs)
      (0, 1, -1, -1))


class Conv2dWinogradCache(NamedTuple):
    """What :func:`conv2d_backward_winograd` needs: the transformed input ``V`` (16, C_in, T), the transformed
    kernel ``U`` (16, C_out, C_in), the weights' shape, whether there was a bias, the input's shape and the
    padding (one int, the same on every side)."""
    V: object
    U: object
    w_shape: tuple
    has_bias: bool
    x_shape: tuple
    padding: int


def _combine(coeffs, views, out):
    """``out = sum_k coeffs[k] * views[k]`` for coefficients in {-1, 0, 1}: adds and subtracts only."""
    xp = get_xp(out)
    started = False
    for c, v in zip(coeffs, views):
        if c == 0:
            continue
        if not started:
            xp.copyto(out, v) if c == 1 else xp.negative(v, out=out)
            started = True
        else:
            (xp.add if c == 1 else xp.subtract)(out, v, out=out)
    return out


def _transform_along(mat, views, make):
    """Apply the small matrix ``mat`` (r x 4) across the list of 4 equally shaped ``views``: returns the r
    arrays ``sum_k mat[i][k] * views[k]``, each written into ``make()`` (a fresh array or a view to fill)."""
    return [_combine(row, views, make(i)) for i, row in enumerate(mat)]


def kernel_transform(w):
    """U = G g G^T for every (C_out, C_in) pair: (C_out, C_in, 3, 3) -> (16, C_out, C_in), position-major."""
    xp = get_xp(w)
    g = xp.asarray(G_MAT, dtype=w.dtype)
    return xp.einsum("ai,ocij,bj->aboc", g, w, g).reshape(16, w.shape[0], w.shape[1])


def input_transform(x, padding, tiles):
    """V = B^T d B for every 4x4 input tile: (N, C, H, W) -> (16, C, N*th*tw), position-major.

    The image is padded (``padding`` on every side, zeros below and right to fill whole tiles) into channel-major
    order (C, N, 2th+2, 2tw+2); tile (i, j) is rows 2i..2i+3 and columns 2j..2j+3, so "row k of every tile" is the
    strided view ``rows[k::2]``: B^T is applied to 4 such views at once, then along the columns the same way.
    """
    xp = get_xp(x)
    N, C, H, W = x.shape
    th, tw = tiles
    xpad = xp.zeros((C, N, 2 * th + 2, 2 * tw + 2), dtype=x.dtype)
    xpad[:, :, padding:padding + H, padding:padding + W] = x.transpose(1, 0, 2, 3)
    rows = [xpad[:, :, k:k + 2 * th:2, :] for k in range(4)]                  # (C, N, th, Wp) each
    t = _transform_along(BT, rows, lambda i: xp.empty(rows[0].shape, x.dtype))
    V = xp.empty((4, 4, C, N, th, tw), dtype=x.dtype)
    for a in range(4):
        cols = [t[a][..., k:k + 2 * tw:2] for k in range(4)]                  # (C, N, th, tw) each
        _transform_along(BT, cols, lambda b: V[a, b])
    return V.reshape(16, C, N * th * tw)


def output_transform(M, out_shape, tiles):
    """Y = A^T M A for every tile: (16, C_out, N*th*tw) -> (N, C_out, Ho, Wo) (the tiles' 2x2 outputs, cropped)."""
    xp = get_xp(M)
    N, c_out, Ho, Wo = out_shape
    th, tw = tiles
    m = M.reshape(4, 4, c_out, N, th, tw)
    s = [_transform_along(AT, [m[a, b] for a in range(4)], lambda p: xp.empty(m.shape[2:], M.dtype))
         for b in range(4)]                                                   # s[b][p]: (C_out, N, th, tw)
    y = xp.empty((N, c_out, 2 * th, 2 * tw), dtype=M.dtype)
    yc = y.transpose(1, 0, 2, 3)                                              # written channel-major
    for p in range(2):
        _transform_along(AT, [s[b][p] for b in range(4)], lambda q: yc[:, :, p::2, q::2])
    return y if (2 * th, 2 * tw) == (Ho, Wo) else y[:, :, :Ho, :Wo].copy()


def conv2d_forward_winograd(x, w, b, padding):
    """3x3 stride-1 conv2d by F(2x2, 3x3); ``padding`` one int (arguments checked by ``conv2d_forward``).

    Returns:
        out (N, C_out, Ho, Wo); a :class:`Conv2dWinogradCache`.
    """
    xp = get_xp(x, w, b)
    N, C, H, W = x.shape
    Ho, Wo = H + 2 * padding - 2, W + 2 * padding - 2
    tiles = ((Ho + 1) // 2, (Wo + 1) // 2)
    U = kernel_transform(w)                                                   # (16, C_out, C)
    V = input_transform(x, padding, tiles)                                    # (16, C, T)
    out = output_transform(xp.matmul(U, V), (N, w.shape[0], Ho, Wo), tiles)
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out, Conv2dWinogradCache(V, U, tuple(w.shape), b is not None, tuple(x.shape), padding)


def conv2d_backward_winograd(dout, cache: Conv2dWinogradCache):
    """Gradients of :func:`conv2d_forward_winograd`: ``(dx, dw, db)``, each forward step's adjoint in reverse."""
    V, U, w_shape, has_bias, x_shape, padding = cache
    xp = get_xp(dout, U)
    N, C, H, W = x_shape
    c_out = w_shape[0]
    Ho, Wo = dout.shape[2:]
    th, tw = (Ho + 1) // 2, (Wo + 1) // 2
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    # dM = A dY A^T: tile output (p, q) feeds position (a, b) with weight AT[p][a] * AT[q][b]
    dy = xp.zeros((c_out, N, 2 * th, 2 * tw), dtype=dout.dtype)
    dy[:, :, :Ho, :Wo] = dout.transpose(1, 0, 2, 3)
    A = tuple(zip(*AT))                                                       # (4 x 2)
    dM = xp.empty((4, 4, c_out, N, th, tw), dtype=dout.dtype)
    # along the columns first: half[p][b] = sum_q A[b][q] dy[p, q]; then along the rows into dM[a, b]
    half = [_transform_along(A, [dy[:, :, p::2, q::2] for q in range(2)],
                             lambda b: xp.empty((c_out, N, th, tw), dout.dtype)) for p in range(2)]
    for b in range(4):
        _transform_along(A, [half[p][b] for p in range(2)], lambda a: dM[a, b])
    dM = dM.reshape(16, c_out, N * th * tw)
    # dU = dM V^T, then dw = G^T dU G (the kernel transform's adjoint)
    dU = xp.matmul(dM, V.swapaxes(1, 2)).reshape(4, 4, c_out, C)
    g = xp.asarray(G_MAT, dtype=dout.dtype)
    dw = xp.einsum("ai,aboc,bj->ocij", g, dU, g)
    # dV = U^T dM, then dd = B dV B^T added back onto the (overlapping) tiles it came from
    dV = xp.matmul(U.swapaxes(1, 2), dM).reshape(4, 4, C, N, th, tw)
    B = tuple(zip(*BT))                                                       # (4 x 4)
    dxpad = xp.zeros((C, N, 2 * th + 2, 2 * tw + 2), dtype=dout.dtype)
    for a in range(4):
        f = _transform_along(B, [dV[a, b] for b in range(4)], lambda j: xp.empty((C, N, th, tw), dout.dtype))
        for k in range(4):                 # tile row k gets B[k][a] * f: rows 2i + k, columns 2j + l
            for l_ in range(4):
                if B[k][a]:
                    view = dxpad[:, :, k:k + 2 * th:2, l_:l_ + 2 * tw:2]
                    (xp.add if B[k][a] == 1 else xp.subtract)(view, f[l_], out=view)
    dx = dxpad[:, :, padding:padding + H, padding:padding + W].transpose(1, 0, 2, 3).copy()
    return dx, dw.astype(dout.dtype, copy=False), db


# (N, C_in, C_out, H=W): ResNet's 3x3s (bench/layers.py) and the tiny config's (demo, 128 px images, batch 4)
CASES = [(2, 64, 64, 64), (2, 256, 256, 32), (2, 128, 128, 32), (2, 512, 512, 8),
         (4, 64, 64, 32), (4, 64, 64, 16), (60, 32, 32, 14), (4, 16, 16, 32), (4, 32, 32, 16), (4, 64, 64, 8)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1, as each rank of the demo)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    with blas_threads(args.threads):
        for N, C, Co, H in CASES:
            x = rng.standard_normal((N, C, H, H), dtype=np.float32)
            w = rng.standard_normal((Co, C, 3, 3), dtype=np.float32) * 0.05
            b = rng.standard_normal(Co, dtype=np.float32)
            ref, ref_cache = conv2d_forward_im2col(x, w, b, (1, 1), (1, 1), (1, 1), 1)
            out, cache = conv2d_forward_winograd(x, w, b, 1)
            dout = rng.standard_normal(out.shape, dtype=np.float32)
            worst = max(float(np.abs(a - r).max() / np.abs(r).max()) for a, r in
                        zip((out, *conv2d_backward_winograd(dout, cache)),
                            (ref, *conv2d_backward_im2col(dout, ref_cache))))
            assert worst < 1e-5, f"Winograd differs from im2col by {worst:.1e} (relative) on {(N, C, Co, H)}"
            _, ours_cache = conv2d_forward(x, w, b, 1, 1)
            t_ours = (median_time(lambda: conv2d_forward(x, w, b, 1, 1), args.repeats)
                      + median_time(lambda: conv2d_backward(dout, ours_cache), args.repeats))
            t_wino = (median_time(lambda: conv2d_forward_winograd(x, w, b, 1), args.repeats)
                      + median_time(lambda: conv2d_backward_winograd(dout, cache), args.repeats))
            rows.append({"case": f"N={N} {C}->{Co} @{H}x{H}", "conv2d_fwd_bwd_ms": round(t_ours * 1e3, 2),
                         "winograd_fwd_bwd_ms": round(t_wino * 1e3, 2),
                         "winograd_over_conv2d": round(t_wino / t_ours, 2),
                         "max_relative_difference": float(f"{worst:.1e}")})
    print(json.dumps({"threads": args.threads, "repeats": args.repeats, "cases": rows}, indent=2))


if __name__ == "__main__":
    main()
