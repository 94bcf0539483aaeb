"""ReLU, the only nonlinearity Mask R-CNN uses inside the network (after every hidden conv and fc layer); the
sigmoid that turns objectness and mask logits into probabilities, and the softmax that does it for the
classifier's logits. The losses (``nn/losses.py``) and every probability in the model use these two."""
from __future__ import annotations

import numpy as np

from ..backend import get_xp
from ._checks import check_float_array
from .module import Module


def relu_forward(x):
    """``max(x, 0)`` elementwise. Returns (out, cache) where the cache is the boolean mask ``x > 0``."""
    check_float_array(x, "x", op="relu_forward")
    xp = get_xp(x)
    out = xp.maximum(x, 0)
    return out, out > 0


def relu_backward(dout, cache):
    """The gradient passes where the input was positive: ``dx = dout * (x > 0)``."""
    return dout * cache


class ReLU(Module):
    def forward(self, x):
        out, mask = relu_forward(x)
        self.save_for_backward(mask)
        return out

    def backward(self, dout):
        mask = self.saved()
        return relu_backward(dout, mask)


def softmax(x, axis: int = 1):
    """``exp(x) / sum(exp(x))`` along ``axis``, shifted by the maximum first (same result, no overflow)."""
    xp = get_xp(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x):
    """``1 / (1 + exp(-x))`` elementwise, in ``x``'s dtype, computed as written, as ``torch.sigmoid`` does, so
    probabilities (and the RPN's ranking of them) agree with torchvision's to the bit. Below x ~ -88 (float32;
    -709 in float64) ``exp(-x)`` overflows to inf and the result is 0, the correctly rounded value: NumPy's
    overflow warning is silenced."""
    xp = get_xp(x)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + xp.exp(-x))
