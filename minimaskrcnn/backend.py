"""The one array-module switch: ``xp`` is numpy or cupy, chosen from the arrays themselves.

Every function in minimaskrcnn that does array work starts with ``xp = get_xp(x, ...)`` and then only
calls ``xp.*``. Nothing here copies an array between host and device unless asked to by name
(:func:`to_numpy`, :func:`to_device`): a silent copy would hide a slow path, so mixing a NumPy and a
CuPy array in one call raises instead.

This is the only module that imports cupy; ``import minimaskrcnn`` works without it. Tests put a strict
stand-in in CuPy's place with :func:`use_fake_cupy` (``minimaskrcnn.testing.fakecupy``).
"""
from __future__ import annotations

import contextlib

import numpy as np

try:  # CuPy is optional: the whole package runs on NumPy alone.
    import cupy as _cupy
    import cupyx as _cupyx
except Exception:  # ImportError, or a CuPy without a usable CUDA runtime
    _cupy = None
    _cupyx = None


@contextlib.contextmanager
def use_fake_cupy(module):
    """Test hook: inside ``with use_fake_cupy(fakecupy):``, ``module`` takes CuPy's place ('cuda' arrays are
    its arrays; ``is_cupy``, ``get_xp``, ``to_device``, ``scatter_add`` use it). Never used outside tests."""
    global _cupy, _cupyx
    saved = _cupy, _cupyx
    _cupy, _cupyx = module, module.cupyx
    try:
        yield module
    finally:
        _cupy, _cupyx = saved


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def is_cupy(x) -> bool:
    return _cupy is not None and isinstance(x, _cupy.ndarray)


def get_xp(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``.

    ``None`` and Python scalars are ignored. Mixing NumPy and CuPy arrays raises ``TypeError``:
    the caller must move data explicitly with :func:`to_device`.
    """
    has_np = has_cp = False
    for a in arrays:
        if is_cupy(a):
            has_cp = True
        elif isinstance(a, np.ndarray):
            has_np = True
    if has_cp and has_np:
        raise TypeError("mixed NumPy and CuPy arrays in one call; move them with "
                        "minimaskrcnn.backend.to_device(x, 'cuda' or 'cpu') first")
    return _cupy if has_cp else np


def device_of(x) -> str:
    """'cuda' for a CuPy array, 'cpu' otherwise."""
    return "cuda" if is_cupy(x) else "cpu"


def to_numpy(x):
    """The array as a NumPy array (a device-to-host copy for CuPy arrays, a no-op for NumPy)."""
    if is_cupy(x):
        return _cupy.asnumpy(x)
    return np.asarray(x)


def to_device(x, device: str):
    """Move an array to ``'cpu'`` (NumPy) or ``'cuda'`` (CuPy). A no-op when it is already there."""
    if device == "cpu":
        return to_numpy(x)
    if device == "cuda":
        if _cupy is None:
            raise RuntimeError("device 'cuda' needs CuPy: pip install cupy-cuda12x")
        return _cupy.asarray(x)
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def get_module_for_device(device: str):
    """numpy for 'cpu', cupy for 'cuda'."""
    if device == "cpu":
        return np
    if device == "cuda":
        if _cupy is None:
            raise RuntimeError("device 'cuda' needs CuPy: pip install cupy-cuda12x")
        return _cupy
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def scatter_add(a, indices, values) -> None:
    """In place ``a[indices] += values`` where repeated indices accumulate.

    ``np.add.at`` on NumPy, ``cupyx.scatter_add`` on CuPy (the two libraries spell this differently).
    Not ``np.bincount(..., minlength=a.size)``: that makes a float64 temporary the size of ``a`` (for RoIPool's
    backward, all the features), which costs more than the scatter when the indices touch a small part.
    """
    if is_cupy(a):
        _cupyx.scatter_add(a, indices, values)
    else:
        np.add.at(a, indices, values)


def as_strided(x, shape, strides):
    """``numpy.lib.stride_tricks.as_strided`` for either library (a view; never write through it)."""
    if is_cupy(x):
        return _cupy.lib.stride_tricks.as_strided(x, shape=shape, strides=strides)
    return np.lib.stride_tricks.as_strided(x, shape=shape, strides=strides, writeable=False)
