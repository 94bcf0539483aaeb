"""SGD with momentum and weight decay, and the warm-up + step learning-rate schedule (paper §3.1).

Mask R-CNN trains with SGD, momentum 0.9, weight decay 1e-4, a learning rate that is ramped up
linearly over the first iterations (Detectron's 500-iteration warm-up) and divided by 10 at fixed steps.
"""
from __future__ import annotations

from ..backend import get_xp


class SGD:
    """``v = momentum * v + (g + weight_decay * w);  w -= lr * v`` (PyTorch's formulation).

    Args:
        named_params: iterable of ``(name, Parameter)``; frozen parameters are skipped.
        lr, momentum, weight_decay: as in paper §3.1 (0.02, 0.9, 1e-4 for batch 16).
    """

    def __init__(self, named_params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        self.params = [(n, p) for n, p in named_params if p.requires_grad]
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.velocity = {}

    def step(self) -> None:
        for name, p in self.params:
            if p.grad is None:
                # a zero gradient must come from the backward pass (e.g. a loss that is constant 0); a
                # missing one means the backward never reached the parameter: a bug, not a zero
                raise RuntimeError(f"SGD.step: parameter {name!r} has no gradient: the backward pass did not "
                                   "reach it (freeze it with requires_grad=False if that is intended)")
        ### BEGIN SOLUTION
        for name, p in self.params:
            g = p.grad
            if self.weight_decay:
                g = g + self.weight_decay * p.data
            if self.momentum:
                v = self.velocity.get(name)
                if v is None:
                    v = g.copy()  # PyTorch starts the buffer at the first gradient
                else:
                    v *= self.momentum
                    v += g
                self.velocity[name] = v
                g = v
            p.data -= self.lr * g
        ### END SOLUTION

    def zero_grad(self) -> None:
        for _, p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        """Momentum buffers keyed ``velocity.<param name>``, ready for :func:`save_npz`."""
        return {f"velocity.{k}": v for k, v in self.velocity.items()}

    def load_state_dict(self, state: dict) -> None:
        names = {n for n, _ in self.params}
        self.velocity = {}
        for k, v in state.items():
            if not k.startswith("velocity."):
                continue
            name = k[len("velocity."):]
            if name not in names:
                raise ValueError(f"SGD.load_state_dict: momentum for unknown parameter {name!r}")
            ref = dict(self.params)[name].data
            xp = get_xp(ref)
            self.velocity[name] = xp.asarray(v, dtype=ref.dtype).copy()


class WarmupMultiStepLR:
    """Learning rate at iteration ``it``: ``base_lr * warmup(it) * gamma ** (number of steps <= it)``.

    ``warmup`` rises linearly from ``warmup_factor`` at iteration 0 to 1 at ``warmup_iters``
    (Goyal et al.'s gradual warm-up, as in Detectron).
    """

    def __init__(self, base_lr: float, steps=(), gamma: float = 0.1, warmup_iters: int = 0,
                 warmup_factor: float = 1e-3):
        if list(steps) != sorted(steps):
            raise ValueError(f"WarmupMultiStepLR: steps must be increasing, got {steps}")
        self.base_lr = base_lr
        self.steps = tuple(steps)
        self.gamma = gamma
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor

    def __call__(self, it: int) -> float:
        ### BEGIN SOLUTION
        factor = 1.0
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            factor = self.warmup_factor * (1 - alpha) + alpha
        drops = sum(1 for s in self.steps if it >= s)
        return self.base_lr * factor * self.gamma ** drops
        ### END SOLUTION
