"""Weight initialisation, from one seedable random generator so that models are reproducible.

``manual_seed(s)`` resets the generator; every module built afterwards gets the same weights.
"""
from __future__ import annotations

import math

import numpy as np

_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    global _rng
    _rng = np.random.default_rng(seed)


def fan_in(shape) -> int:
    """Inputs feeding one output: ``in`` for a (out, in) weight, ``C_in/groups * kh * kw`` for a conv."""
    return int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])


def uniform(shape, bound: float, dtype=np.float32) -> np.ndarray:
    return _rng.uniform(-bound, bound, size=shape).astype(dtype)


def default_weight(shape, dtype=np.float32) -> np.ndarray:
    """PyTorch's default for Linear/Conv weights (kaiming-uniform with a=sqrt(5)): U(-1/sqrt(fan_in), +)."""
    return uniform(shape, 1.0 / math.sqrt(max(fan_in(shape), 1)), dtype)


def default_bias(n: int, fan: int, dtype=np.float32) -> np.ndarray:
    """PyTorch's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return uniform((n,), 1.0 / math.sqrt(max(fan, 1)), dtype)


def normal(shape, std: float, dtype=np.float32) -> np.ndarray:
    return (_rng.standard_normal(shape) * std).astype(dtype)


def kaiming_normal(shape, mode: str = "fan_out", dtype=np.float32) -> np.ndarray:
    """He et al. 2015 for ReLU: N(0, 2 / fan), fan = fan_out (out * kh * kw) as torchvision's ResNet uses."""
    fan = fan_in(shape) if mode == "fan_in" else int(shape[0] * np.prod(shape[2:]))
    return normal(shape, math.sqrt(2.0 / fan), dtype)


def kaiming_uniform(shape, a: float = 1.0, dtype=np.float32) -> np.ndarray:
    """U(-b, b) with b = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2)) (torchvision's FPN uses a=1)."""
    gain = math.sqrt(2.0 / (1 + a * a))
    return uniform(shape, gain * math.sqrt(3.0 / fan_in(shape)), dtype)
