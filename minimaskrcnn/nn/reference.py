"""Plain-loop versions of the layers, written straight from their definitions.

They are slow on purpose: each is a few lines a student can check by hand, and the tests hold the fast
im2col/GEMM versions in ``minimaskrcnn.nn`` against them on tiny inputs. NumPy only.
"""
from __future__ import annotations

import numpy as np


def conv2d_naive(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """``out[n, o, y, x] = b[o] + sum_{c, i, j} w[o, c, i, j] x_pad[n, g*Cg + c, y*s + i*d, x*s + j*d]``."""
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    ph, pw = (padding, padding) if np.isscalar(padding) else padding
    dh, dw = (dilation, dilation) if np.isscalar(dilation) else dilation
    N, C, H, W = x.shape
    Co, Cg, kh, kw = w.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((N, Co, Ho, Wo), dtype=x.dtype)
    per_group = Co // groups
    for n in range(N):
        for o in range(Co):
            g = o // per_group
            for y in range(Ho):
                for xx in range(Wo):
                    total = 0.0 if b is None else b[o]
                    for c in range(Cg):
                        for i in range(kh):
                            for j in range(kw):
                                total += w[o, c, i, j] * xpad[n, g * Cg + c, y * sh + i * dh, xx * sw + j * dw]
                    out[n, o, y, xx] = total
    return out


def conv_transpose2d_naive(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1):
    """Scatter ``x[n, c, y, x] * w[c, o, i, j]`` to ``out[n, g*Og + o, y*s - p + i, x*s - p + j]``."""
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    ph, pw = (padding, padding) if np.isscalar(padding) else padding
    oph, opw = (output_padding, output_padding) if np.isscalar(output_padding) else output_padding
    N, C, H, W = x.shape
    _, Og, kh, kw = w.shape
    Ho = (H - 1) * sh - 2 * ph + kh + oph
    Wo = (W - 1) * sw - 2 * pw + kw + opw
    Cg = C // groups
    full = np.zeros((N, Og * groups, Ho + 2 * ph + kh, Wo + 2 * pw + kw), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            g = c // Cg
            for y in range(H):
                for xx in range(W):
                    for o in range(Og):
                        for i in range(kh):
                            for j in range(kw):
                                full[n, g * Og + o, y * sh + i, xx * sw + j] += x[n, c, y, xx] * w[c, o, i, j]
    out = full[:, :, ph:ph + Ho, pw:pw + Wo].copy()
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def max_pool2d_naive(x, kernel_size, stride=None, padding=0):
    k = kernel_size
    s = k if stride is None else stride
    N, C, H, W = x.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=-np.inf)
    Ho = (H + 2 * padding - k) // s + 1
    Wo = (W + 2 * padding - k) // s + 1
    out = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    for y in range(Ho):
        for xx in range(Wo):
            out[:, :, y, xx] = xpad[:, :, y * s:y * s + k, xx * s:xx * s + k].max(axis=(2, 3))
    return out


def upsample_nearest_naive(x, out_h, out_w):
    """``out[:, :, y, x] = x[:, :, sy, sx]`` with ``sy = min(floor(y * H / out_h), H - 1)`` (and ``sx``
    alike) computed in float32, as PyTorch does: ``H / out_h`` rounded to float32, times ``y``, rounded."""
    N, C, H, W = x.shape
    out = np.empty((N, C, out_h, out_w), dtype=x.dtype)
    step_y = np.float32(H) / np.float32(out_h)
    step_x = np.float32(W) / np.float32(out_w)
    for y in range(out_h):
        for xx in range(out_w):
            sy = min(int(np.floor(np.float32(y) * step_y)), H - 1)
            sx = min(int(np.floor(np.float32(xx) * step_x)), W - 1)
            out[:, :, y, xx] = x[:, :, sy, sx]
    return out


def batch_norm_naive(x, gamma, beta, eps=1e-5):
    """Training-mode BN, one channel at a time."""
    out = np.empty_like(x)
    for c in range(x.shape[1]):
        v = x[:, c]
        out[:, c] = gamma[c] * (v - v.mean()) / np.sqrt(v.var() + eps) + beta[c]
    return out


def group_norm_naive(x, gamma, beta, num_groups, eps=1e-5):
    N, C = x.shape[:2]
    out = np.empty_like(x)
    cg = C // num_groups
    for n in range(N):
        for g in range(num_groups):
            v = x[n, g * cg:(g + 1) * cg]
            out[n, g * cg:(g + 1) * cg] = (v - v.mean()) / np.sqrt(v.var() + eps)
    return out * gamma.reshape(1, -1, *([1] * (x.ndim - 2))) + beta.reshape(1, -1, *([1] * (x.ndim - 2)))


def softmax_cross_entropy_naive(logits, labels, ignore_index=-1):
    total, n = 0.0, 0
    for row, y in zip(logits, labels):
        if y == ignore_index:
            continue
        p = np.exp(row - row.max())
        total += -np.log(p[y] / p.sum())
        n += 1
    return total / max(n, 1)


def smooth_l1_naive(pred, target, beta, normalizer):
    total = 0.0
    for d in (pred - target).ravel():
        total += 0.5 * d * d / beta if abs(d) < beta else abs(d) - 0.5 * beta
    return total / normalizer


def bce_with_logits_naive(logits, targets):
    """Straight from the definition (overflows for large |x|, which is why the real one is rewritten)."""
    s = 1 / (1 + np.exp(-logits))
    return float(np.mean(-targets * np.log(s) - (1 - targets) * np.log(1 - s)))
