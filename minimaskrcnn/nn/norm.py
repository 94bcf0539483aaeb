"""Normalisation layers: BatchNorm (Ioffe & Szegedy 2015), its synchronized form for a batch split over
processes, the frozen BN of the paper's backbones, and GroupNorm (Wu & He 2018), which Detectron uses for
heads trained from scratch with small batches.

Batch statistics are taken over every axis but the channel axis 1, so the same code serves (N, C) and
(N, C, H, W) inputs.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import get_xp
from ._checks import check_float_array
from .module import Module, Parameter


def _channel_shape(x):
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _reduce_axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _check_affine(x, op, **vectors):
    check_float_array(x, "x", op=op)
    if x.ndim < 2:
        raise ValueError(f"{op}: x must have a channel axis 1, got shape {tuple(x.shape)}")
    for name, v in vectors.items():
        if v is not None and tuple(v.shape) != (x.shape[1],):
            raise ValueError(f"{op}: {name} must have shape ({x.shape[1]},) for x of shape {tuple(x.shape)}, "
                             f"got {tuple(v.shape)}")


def batch_statistics(x, comm=None):
    """Per-channel mean and biased variance of ``x`` over every axis but 1, and the count m per channel.

    Computed from the sums ``[sum x, sum x^2, m]``, accumulated in float64 (``var = E[x^2] - mean^2`` would
    lose digits in float32) and cast back to x's dtype. With ``comm`` (data-parallel: x is this process's
    slice of the batch) the sums are added over the processes by one ``comm.allreduce`` first, so the
    statistics are the whole batch's; the float64 sums differ from one process's only in the order of their
    additions, so after the cast the statistics are almost always the very same float32 numbers.
    Returns (mean (C,), var (C,), m).
    """
    xp = get_xp(x)
    axes, C = _reduce_axes(x), x.shape[1]
    sums = xp.concatenate([x.sum(axis=axes, dtype=np.float64), (x * x).sum(axis=axes, dtype=np.float64),
                           xp.asarray([x.size // C], dtype=np.float64)])
    if comm is not None:
        sums = comm.allreduce(sums)
    m = float(sums[-1])
    mean = sums[:C] / max(m, 1.0)
    var = xp.maximum(sums[C:2 * C] / max(m, 1.0) - mean * mean, 0.0)
    return mean.astype(x.dtype), var.astype(x.dtype), m


def batch_norm_forward(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1,
                       eps=1e-5):
    """``out = gamma * (x - mean) / sqrt(var + eps) + beta`` per channel.

    Training mode normalises with this batch's mean and (biased) variance and, if running statistics are
    given, updates them **in place** as PyTorch does: ``r = (1 - momentum) r + momentum * stat``, with the
    unbiased variance. Eval mode normalises with the running statistics.

    Args:
        x: (N, C) or (N, C, H, W). gamma, beta, running_mean, running_var: (C,).
    Returns:
        out (x's shape), cache.
    """
    op = "batch_norm_forward"
    _check_affine(x, op, gamma=gamma, beta=beta, running_mean=running_mean, running_var=running_var)
    ### BEGIN SOLUTION
    xp = get_xp(x)
    shape = _channel_shape(x)
    if training:
        m = x.size // x.shape[1]
        if m < 2:
            raise ValueError(f"{op}: training needs more than one value per channel, got x of shape {tuple(x.shape)}")
        mean, var, _ = batch_statistics(x)
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean
            running_var *= 1 - momentum
            running_var += momentum * var * (m / (m - 1))
    else:
        if running_mean is None or running_var is None:
            raise ValueError(f"{op}: eval mode needs running_mean and running_var")
        mean, var = running_mean, running_var
    inv_std = 1.0 / xp.sqrt(var + eps)
    xhat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
    out = xhat * gamma.reshape(shape) + beta.reshape(shape)
    return out, (xhat, gamma, inv_std, training)
    ### END SOLUTION


def batch_norm_backward(dout, cache):
    """Gradients of :func:`batch_norm_forward`.

    In training mode the mean and variance depend on x, which gives (m values per channel)
    ``dx = inv_std / m * (m * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat))`` with ``dxhat = dout * gamma``.
    Returns (dx, dgamma, dbeta).
    """
    ### BEGIN SOLUTION
    xhat, gamma, inv_std, training = cache
    shape, axes = _channel_shape(dout), _reduce_axes(dout)
    dgamma = (dout * xhat).sum(axis=axes)
    dbeta = dout.sum(axis=axes)
    dxhat = dout * gamma.reshape(shape)
    if not training:
        return dxhat * inv_std.reshape(shape), dgamma, dbeta
    m = dout.size // dout.shape[1]
    dx = (m * dxhat - dxhat.sum(axis=axes).reshape(shape)
          - xhat * (dxhat * xhat).sum(axis=axes).reshape(shape)) * (inv_std / m).reshape(shape)
    return dx, dgamma, dbeta
    ### END SOLUTION


class SyncBatchNormCache(NamedTuple):
    xhat: object               # (n, C, ...) normalised input of this process
    gamma: object              # (C,)
    inv_std: object            # (C,) 1 / sqrt(var + eps) of the whole batch
    m: float                   # values per channel in the whole batch (every process)
    comm: object               # the communicator the two gradient sums are reduced over


def sync_batch_norm_forward(x, gamma, beta, comm, running_mean=None, running_var=None, momentum=0.1, eps=1e-5):
    """Training-mode batch norm of a batch split over processes: each holds its slice ``x`` of the batch,
    and the statistics are those of the whole batch, as if one process held it (``SyncBatchNorm``).

    Why it is needed: with plain BN each process would normalise by the mean and variance of its own
    images, a different function of the data than one process on the whole batch (and noisier the fewer
    images a process has), so N processes would not train the same model as one.

    How: one ``comm.allreduce`` (a sum over the processes) of ``[sum x, sum x^2, m]`` per channel
    (:func:`batch_statistics`, as :func:`batch_norm_forward` computes them in one process) gives the whole
    batch's mean and biased variance. Running statistics are updated as :func:`batch_norm_forward` does,
    with the whole batch's m, so they stay equal on every process.

    Args:
        x: this process's (n, C) or (n, C, H, W) slice. gamma, beta, running_mean, running_var: (C,).
        comm: has ``allreduce(array) -> array`` summing over the processes (``engine/distributed.py``).
    Returns:
        out (x's shape), cache.
    """
    op = "sync_batch_norm_forward"
    _check_affine(x, op, gamma=gamma, beta=beta, running_mean=running_mean, running_var=running_var)
    xp = get_xp(x)
    shape = _channel_shape(x)
    mean, var, m = batch_statistics(x, comm)
    if m < 2:
        raise ValueError(f"{op}: training needs more than one value per channel, got {m:g} over the processes")
    if running_mean is not None:
        running_mean *= 1 - momentum
        running_mean += momentum * mean
        running_var *= 1 - momentum
        running_var += momentum * var * (m / (m - 1))
    inv_std = 1.0 / xp.sqrt(var + eps)
    xhat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
    out = xhat * gamma.reshape(shape) + beta.reshape(shape)
    return out, SyncBatchNormCache(xhat, gamma, inv_std, m, comm)


def sync_batch_norm_backward(dout, cache):
    """Gradients of :func:`sync_batch_norm_forward` for this process's slice.

    ``dx = inv_std * (dxhat - sum(dxhat) / m - xhat * sum(dxhat * xhat) / m)`` as in
    :func:`batch_norm_backward`, but the two sums run over the *whole* batch (one ``comm.allreduce``), since
    every value of the batch moved the mean and variance. ``dgamma`` and ``dbeta`` are this process's own
    sums: the trainer sums every parameter's gradient over the processes afterwards. Returns (dx, dgamma, dbeta).
    """
    xhat, gamma, inv_std, m, comm = cache
    xp = get_xp(dout)
    shape, axes = _channel_shape(dout), _reduce_axes(dout)
    C = dout.shape[1]
    dgamma = (dout * xhat).sum(axis=axes)
    dbeta = dout.sum(axis=axes)
    # sum(dxhat) = gamma * dbeta and sum(dxhat * xhat) = gamma * dgamma, summed over the processes
    total = comm.allreduce(xp.concatenate([dbeta, dgamma]).astype(np.float64))
    sum_dxhat = (gamma * total[:C]).astype(dout.dtype)
    sum_dxhat_xhat = (gamma * total[C:]).astype(dout.dtype)
    dxhat = dout * gamma.reshape(shape)
    dx = (dxhat - sum_dxhat.reshape(shape) / m - xhat * (sum_dxhat_xhat.reshape(shape) / m)) * inv_std.reshape(shape)
    return dx, dgamma, dbeta


def frozen_batch_norm_forward(x, weight, bias, running_mean, running_var, eps=1e-5):
    """BatchNorm with every statistic fixed: a per-channel affine map ``out = x * scale + shift``.

    Paper §3.1 / Detectron: ImageNet-pretrained backbones keep BN frozen because detection batches
    (2 images per GPU) are too small for batch statistics. torchvision's FrozenBatchNorm2d, eps = 1e-5.
    Returns (out, cache); :func:`frozen_batch_norm_backward` gives only ``dx`` (nothing here is trained).
    """
    _check_affine(x, "frozen_batch_norm_forward", weight=weight, bias=bias, running_mean=running_mean,
                  running_var=running_var)
    ### BEGIN SOLUTION
    xp = get_xp(x)
    shape = _channel_shape(x)
    scale = weight * (1.0 / xp.sqrt(running_var + eps))
    shift = bias - running_mean * scale
    return x * scale.reshape(shape) + shift.reshape(shape), scale.reshape(shape)
    ### END SOLUTION


def frozen_batch_norm_backward(dout, cache):
    """``dx = dout * scale``."""
    ### BEGIN SOLUTION
    return dout * cache
    ### END SOLUTION


def group_norm_forward(x, gamma, beta, num_groups, eps=1e-5):
    """GroupNorm: normalise each sample over groups of ``C / num_groups`` channels (and all pixels).

    Args:
        x: (N, C, ...). gamma, beta: (C,).
    Returns:
        out (x's shape), cache.
    """
    op = "group_norm_forward"
    _check_affine(x, op, gamma=gamma, beta=beta)
    N, C = x.shape[:2]
    if not isinstance(num_groups, (int, np.integer)) or num_groups < 1 or C % num_groups:
        raise ValueError(f"{op}: num_groups={num_groups!r} must be a positive int dividing C={C}")
    xp = get_xp(x)
    xg = x.reshape(N, num_groups, -1)
    mean = xg.mean(axis=2, keepdims=True)
    inv_std = 1.0 / xp.sqrt(xg.var(axis=2, keepdims=True) + eps)
    xhat = ((xg - mean) * inv_std).reshape(x.shape)
    shape = _channel_shape(x)
    return xhat * gamma.reshape(shape) + beta.reshape(shape), (xhat, gamma, inv_std, num_groups)


def group_norm_backward(dout, cache):
    """As batch norm's training-mode backward, but per (sample, group). Returns (dx, dgamma, dbeta)."""
    xhat, gamma, inv_std, G = cache
    shape, axes = _channel_shape(dout), _reduce_axes(dout)
    dgamma = (dout * xhat).sum(axis=axes)
    dbeta = dout.sum(axis=axes)
    N = dout.shape[0]
    dxhat = (dout * gamma.reshape(shape)).reshape(N, G, -1)
    xh = xhat.reshape(N, G, -1)
    m = xh.shape[2]
    dx = (m * dxhat - dxhat.sum(axis=2, keepdims=True)
          - xh * (dxhat * xh).sum(axis=2, keepdims=True)) * (inv_std / m)
    return dx.reshape(dout.shape), dgamma, dbeta


class BatchNorm2d(Module):
    """Trainable BN with running statistics (``weight``, ``bias``; buffers ``running_mean``, ``running_var``,
    ``num_batches_tracked`` as in PyTorch)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype="float32"):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = Parameter(np.ones(num_features, dtype))
        self.bias = Parameter(np.zeros(num_features, dtype))
        self.register_buffer("running_mean", np.zeros(num_features, dtype))
        self.register_buffer("running_var", np.ones(num_features, dtype))
        self.register_buffer("num_batches_tracked", np.zeros((), np.int64))

    def forward(self, x):
        out, cache = batch_norm_forward(x, self.weight.data, self.bias.data, self.running_mean, self.running_var,
                                        self.training, self.momentum, self.eps)
        if self.training:
            self.num_batches_tracked = self.num_batches_tracked + 1
        self.save_for_backward(cache)
        return out

    def backward(self, dout):
        cache = self.saved()
        dx, dg, db = batch_norm_backward(dout, cache)
        self.weight.accumulate(dg)
        self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        return f"{self.weight.shape[0]}, eps={self.eps}"


class SyncBatchNorm(BatchNorm2d):
    """:class:`BatchNorm2d` whose training-mode statistics are those of the whole batch, split over the
    processes of ``comm`` (:func:`sync_batch_norm_forward`); eval mode is BatchNorm2d's. Same parameters,
    buffers and state_dict names, so :func:`convert_sync_batchnorm` swaps it in for a trained BatchNorm2d."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype="float32", comm=None):
        super().__init__(num_features, eps, momentum, dtype)
        self.comm = comm

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        if self.comm is None:
            raise RuntimeError("SyncBatchNorm: no communicator (give comm=, or use BatchNorm2d in one process)")
        out, cache = sync_batch_norm_forward(x, self.weight.data, self.bias.data, self.comm, self.running_mean,
                                             self.running_var, self.momentum, self.eps)
        self.num_batches_tracked = self.num_batches_tracked + 1
        self.save_for_backward(cache)
        return out

    def backward(self, dout):
        cache = self.saved()
        # eval mode saved batch_norm_forward's cache (running statistics: nothing to synchronise)
        backward = sync_batch_norm_backward if isinstance(cache, SyncBatchNormCache) else batch_norm_backward
        dx, dg, db = backward(dout, cache)
        self.weight.accumulate(dg)
        self.bias.accumulate(db)
        return dx


def convert_sync_batchnorm(module: Module, comm) -> Module:
    """Replace every :class:`BatchNorm2d` inside ``module`` by a :class:`SyncBatchNorm` over ``comm`` that holds
    the same arrays (PyTorch's ``SyncBatchNorm.convert_sync_batchnorm``). Returns ``module``."""
    for _, parent in list(module.named_modules()):
        for name, child in list(parent._modules.items()):
            if type(child) is BatchNorm2d:
                sync = SyncBatchNorm(child.weight.shape[0], child.eps, child.momentum, comm=comm)
                sync.weight, sync.bias = child.weight, child.bias
                for b in ("running_mean", "running_var", "num_batches_tracked"):
                    setattr(sync, b, getattr(child, b))
                sync.train(child.training)
                setattr(parent, name, sync)
    return module


class FrozenBatchNorm2d(Module):
    """BN with fixed statistics and affine parameters, all stored as buffers (torchvision's layout: they
    appear in the state_dict but are not parameters)."""

    def __init__(self, num_features, eps=1e-5, dtype="float32"):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", np.ones(num_features, dtype))
        self.register_buffer("bias", np.zeros(num_features, dtype))
        self.register_buffer("running_mean", np.zeros(num_features, dtype))
        self.register_buffer("running_var", np.ones(num_features, dtype))

    def forward(self, x):
        out, scale = frozen_batch_norm_forward(x, self.weight, self.bias, self.running_mean, self.running_var,
                                               self.eps)
        self.save_for_backward(scale)
        return out

    def backward(self, dout):
        scale = self.saved()
        return frozen_batch_norm_backward(dout, scale)

    def extra_repr(self):
        return f"{self.weight.shape[0]}, eps={self.eps}"


class GroupNorm(Module):
    def __init__(self, num_groups, num_channels, eps=1e-5, dtype="float32"):
        super().__init__()
        self.num_groups, self.eps = num_groups, eps
        self.weight = Parameter(np.ones(num_channels, dtype))
        self.bias = Parameter(np.zeros(num_channels, dtype))

    def forward(self, x):
        out, cache = group_norm_forward(x, self.weight.data, self.bias.data, self.num_groups, self.eps)
        self.save_for_backward(cache)
        return out

    def backward(self, dout):
        cache = self.saved()
        dx, dg, db = group_norm_backward(dout, cache)
        self.weight.accumulate(dg)
        self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        return f"{self.num_groups}, {self.weight.shape[0]}"
