"""Numerical gradient checks by central differences, shared by the tests and the notebooks.

The idea (CS231n): for a scalar loss ``L(x)``, ``dL/dx_i ~ (L(x + h e_i) - L(x - h e_i)) / 2h`` with an error
of order ``h^2``. Run in float64: with float32's 7 significant digits the rounding error of ``L``,
divided by ``2h``, swamps the truncation error and no ``h`` gives more than ~3 correct digits.

A backward pass is a vector-Jacobian product ``dout -> dL/dx`` for ``L = sum(f(x) * dout)``; all checks
here use that form, so any ``f`` with array output can be checked against its backward.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..backend import get_xp, to_numpy


def rel_error(x, y) -> float:
    """``max |x - y| / max(|x| + |y|)`` over all entries: the relative error of one array against another.

    Normalising by the largest magnitude of the whole array (not entry by entry) keeps entries that
    are near zero, where only the absolute error means anything, from dominating. About 1e-7 or
    less means two float64 computations of the same gradient agree; 1e-2 or more means a bug.
    """
    x = to_numpy(x).astype(np.float64)
    y = to_numpy(y).astype(np.float64)
    if x.shape != y.shape:
        raise ValueError(f"rel_error: shapes differ, {x.shape} vs {y.shape}")
    if x.size == 0:
        return 0.0
    num = np.max(np.abs(x - y))
    den = max(np.max(np.abs(x) + np.abs(y)), 1e-12)
    return float(num / den)


def numerical_gradient(f: Callable, x, dout=None, h: float = 1e-6, indices=None):
    """Central-difference estimate of ``d sum(f(x) * dout) / dx``.

    Args:
        f: a function of ``x`` alone (close over the other inputs) returning an array or a scalar.
            ``x`` is modified in place and restored, so ``f`` must read it afresh on every call.
        x: float64 array, the point at which to differentiate.
        dout: upstream gradient with ``f(x)``'s shape (default: ones, i.e. the gradient of ``sum(f)``).
        h: step.
        indices: optional iterable of flat indices to check (a random subset for large tensors);
            entries not checked are left at 0 in the result.

    Returns:
        array of ``x``'s shape.
    """
    xp = get_xp(x)
    if x.dtype != xp.float64:
        raise ValueError(f"numerical_gradient: x must be float64 for a meaningful check, got {x.dtype}")
    grad = xp.zeros_like(x)
    if not x.flags.c_contiguous:
        raise ValueError("numerical_gradient: x must be C-contiguous (it is perturbed through a flat view)")
    flat_x = x.reshape(-1)  # a view, because x is contiguous
    flat_g = grad.reshape(-1)
    if indices is None:
        indices = range(x.size)
    for i in indices:
        old = float(flat_x[i])
        flat_x[i] = old + h
        fp = f(x)
        flat_x[i] = old - h
        fm = f(x)
        flat_x[i] = old
        if dout is None:
            diff = xp.sum(xp.asarray(fp) - xp.asarray(fm))
        else:
            diff = xp.sum((xp.asarray(fp) - xp.asarray(fm)) * dout)
        flat_g[i] = diff / (2 * h)
    return grad


def random_indices(size: int, count: int, seed: int = 0):
    """``count`` distinct flat indices in ``range(size)`` (all of them if ``count >= size``)."""
    if count >= size:
        return np.arange(size)
    return np.random.default_rng(seed).choice(size, count, replace=False)


def check_gradient(f: Callable, x, analytic, dout=None, h: float = 1e-6, max_checks: int | None = None,
                   seed: int = 0) -> float:
    """Relative error between an analytic gradient and central differences, on all or ``max_checks``
    randomly chosen entries of ``x``. Returns the relative error over the entries checked."""
    idx = None if max_checks is None else random_indices(x.size, max_checks, seed)
    num = numerical_gradient(f, x, dout, h, idx)
    if idx is None:
        return rel_error(analytic, num)
    return rel_error(to_numpy(analytic).reshape(-1)[idx], to_numpy(num).reshape(-1)[idx])


def check_directional(loss: Callable[[], float], params: dict, grads: dict, h: float = 1e-6,
                      seed: int = 0) -> float:
    """Directional derivative check for a whole model, where entry-by-entry checks are too slow.

    Picks one random direction ``v`` (a unit-variance array per parameter), and compares
    ``<grad, v>`` with ``(L(p + h v) - L(p - h v)) / 2h``. ``params`` maps names to float64 arrays that
    ``loss()`` reads afresh on each call; they are modified in place and restored.

    Returns the relative error ``|a - n| / max(|a| + |n|)`` of the two scalars.
    """
    for name, p in params.items():
        if p.dtype != np.float64:
            raise ValueError(f"check_directional: parameter {name!r} is {p.dtype}; use float64 "
                             "(model.astype('float64')) for a meaningful check")
    rng = np.random.default_rng(seed)
    dirs = {}
    analytic = 0.0
    for name, p in params.items():
        xp = get_xp(p)
        v = xp.asarray(rng.standard_normal(p.shape))
        dirs[name] = v
        analytic += float(xp.sum(grads[name] * v))
    for name, p in params.items():
        p += h * dirs[name]
    lp = loss()
    for name, p in params.items():
        p -= 2 * h * dirs[name]
    lm = loss()
    for name, p in params.items():
        p += h * dirs[name]
    numeric = (lp - lm) / (2 * h)
    return abs(analytic - numeric) / max(abs(analytic) + abs(numeric), 1e-12)
