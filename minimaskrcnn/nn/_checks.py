"""Argument checks shared by the layers: each failure is a ValueError naming the argument and its shape."""
from __future__ import annotations

import numpy as np


def check_float_array(a, name: str, ndim: int | None = None, op: str = "") -> None:
    """``a`` must be a NumPy/CuPy floating-point array, of rank ``ndim`` if given."""
    where = f"{op}: " if op else ""
    if not hasattr(a, "dtype") or not hasattr(a, "shape"):
        raise ValueError(f"{where}{name} must be an array, got {type(a).__name__}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{where}{name} must be a floating-point array, got dtype {a.dtype} "
                         f"with shape {tuple(a.shape)}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{where}{name} must have {ndim} dimensions, got shape {tuple(a.shape)}")


def pair(v, name: str, minimum: int = 0, op: str = "") -> tuple[int, int]:
    """An int or a pair of ints as ``(a, b)``, each at least ``minimum``."""
    where = f"{op}: " if op else ""
    if isinstance(v, (int, np.integer)):
        v = (int(v), int(v))
    try:
        a, b = (int(t) for t in v)
        if (a, b) != tuple(v):
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(f"{where}{name} must be an int or a pair of ints, got {v!r}") from None
    if a < minimum or b < minimum:
        raise ValueError(f"{where}{name} must be >= {minimum}, got {v!r}")
    return a, b
