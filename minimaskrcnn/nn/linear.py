"""Fully connected layer: ``out = x @ w.T + b`` (the box head's two 1024-d layers, paper Fig. 4)."""
from __future__ import annotations

from . import init
from ._checks import check_float_array
from .module import Module, Parameter


def linear_forward(x, w, b=None):
    """Affine map.

    Args:
        x: (N, D_in). w: (D_out, D_in) (PyTorch's layout). b: (D_out,) or None.
    Returns:
        out: (N, D_out); cache (x, w, has_bias).
    """
    op = "linear_forward"
    check_float_array(x, "x", 2, op)
    check_float_array(w, "w", 2, op)
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"{op}: x has {x.shape[1]} features (shape {tuple(x.shape)}) but w expects "
                         f"{w.shape[1]} (shape {tuple(w.shape)})")
    if x.dtype != w.dtype:
        raise ValueError(f"{op}: x and w must have the same dtype, got {x.dtype} and {w.dtype}")
    out = x @ w.T
    if b is not None:
        check_float_array(b, "b", 1, op)
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"{op}: b must have shape ({w.shape[0]},), got {tuple(b.shape)}")
        out += b
    return out, (x, w, b is not None)


def linear_backward(dout, cache):
    """``dx = dout @ w``, ``dw = dout.T @ x``, ``db = sum_n dout``."""
    x, w, has_bias = cache
    return dout @ w, dout.T @ x, (dout.sum(axis=0) if has_bias else None)


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True, dtype="float32"):
        super().__init__()
        self.weight = Parameter(init.default_weight((out_features, in_features), dtype))
        self.bias = Parameter(init.default_bias(out_features, in_features, dtype)) if bias else None

    def forward(self, x):
        out, cache = linear_forward(x, self.weight.data, None if self.bias is None else self.bias.data)
        self.save_for_backward(cache)
        return out

    def backward(self, dout):
        dx, dw, db = linear_backward(dout, self.saved())
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}"


class Flatten(Module):
    """(N, ...) -> (N, prod(...)); backward restores the shape."""

    def forward(self, x):
        self.save_for_backward(x.shape)
        return x.reshape(x.shape[0], -1)

    def backward(self, dout):
        shape = self.saved()
        return dout.reshape(shape)
