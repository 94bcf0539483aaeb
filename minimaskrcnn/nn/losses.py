"""The three losses of Mask R-CNN's multi-task objective ``L = L_cls + L_box + L_mask`` (paper §3).

Each ``*_forward`` returns ``(loss, cache)`` with a Python float loss; ``*_backward(dloss, cache)`` returns
the gradient for the predictions, scaled by ``dloss`` (1.0 for a loss that is summed directly).
"""
from __future__ import annotations

import numpy as np

from ..backend import get_xp
from ._checks import check_float_array
from .activation import sigmoid


def _check_normalizer(normalizer, op):
    if not normalizer > 0:
        raise ValueError(f"{op}: normalizer must be > 0, got {normalizer!r}")
    return normalizer


def softmax_cross_entropy_forward(logits, labels, ignore_index=-1, normalizer=None):
    """Mean over valid rows of ``-log softmax(logits)[label]`` (the classification loss L_cls).

    Args:
        logits: (N, K). labels: (N,) integers in [0, K), or ``ignore_index`` for rows that give no loss.
        normalizer: what the sum is divided by; None: the number of valid rows (the mean). Data-parallel
            training gives the valid rows of the whole batch, over every process, so that the processes'
            losses add up to the loss of the whole batch.
    Returns:
        loss (float; 0.0 when no row is valid), cache.
    """
    op = "softmax_cross_entropy_forward"
    check_float_array(logits, "logits", 2, op)
    xp = get_xp(logits, labels)
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{op}: labels must be an integer array of shape ({logits.shape[0]},), got "
                         f"{labels.dtype} {tuple(labels.shape)}")
    valid = labels != ignore_index
    K = logits.shape[1]
    if bool(((labels[valid] < 0) | (labels[valid] >= K)).any()):
        raise ValueError(f"{op}: labels must lie in [0, {K}) or equal ignore_index={ignore_index}")
    shifted = logits - logits.max(axis=1, keepdims=True)          # softmax is shift-invariant; avoids overflow
    log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    n = int(valid.sum()) if normalizer is None else _check_normalizer(normalizer, op)
    safe = xp.where(valid, labels, 0)
    picked = xp.take_along_axis(log_probs, safe[:, None], axis=1)[:, 0]
    loss = float(-(picked * valid).sum() / max(n, 1))
    return loss, (log_probs, safe, valid, n)


def softmax_cross_entropy_backward(dloss, cache):
    """``dlogits = (softmax - onehot(label)) / n_valid`` on valid rows, 0 on ignored rows."""
    log_probs, labels, valid, n = cache
    xp = get_xp(log_probs)
    d = xp.exp(log_probs)
    d[xp.arange(d.shape[0]), labels] -= 1
    d *= (valid / max(n, 1) * dloss)[:, None].astype(d.dtype)
    return d


def smooth_l1_forward(pred, target, beta=1.0, normalizer=1.0):
    """``sum(smooth_l1(pred - target)) / normalizer``: the box regression loss L_box (Fast R-CNN eq. 3).

    ``smooth_l1(d) = 0.5 d^2 / beta`` if ``|d| < beta`` else ``|d| - 0.5 beta``; ``beta = 0`` gives plain L1
    (Detectron2's choice). torchvision uses beta = 1/9 and divides the sum by the number of sampled
    anchors / RoIs, not by the number of positives.
    """
    op = "smooth_l1_forward"
    check_float_array(pred, "pred", op=op)
    if pred.shape != target.shape:
        raise ValueError(f"{op}: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if beta < 0 or normalizer <= 0:
        raise ValueError(f"{op}: need beta >= 0 and normalizer > 0, got beta={beta}, normalizer={normalizer}")
    xp = get_xp(pred, target)
    d = pred - target
    ad = xp.abs(d)
    if beta == 0:
        per = ad
    else:
        per = xp.where(ad < beta, 0.5 * d * d / beta, ad - 0.5 * beta)
    return float(per.sum() / normalizer), (d, beta, normalizer)


def smooth_l1_backward(dloss, cache):
    """``d/dpred = clip(d / beta, -1, 1) / normalizer`` (``sign(d)`` for beta = 0)."""
    d, beta, normalizer = cache
    xp = get_xp(d)
    g = xp.sign(d) if beta == 0 else xp.clip(d / beta, -1.0, 1.0)
    return g * (dloss / normalizer)


def l1_forward(pred, target, normalizer=1.0):
    """``sum |pred - target| / normalizer`` (smooth L1 with beta = 0)."""
    return smooth_l1_forward(pred, target, 0.0, normalizer)


l1_backward = smooth_l1_backward


def binary_cross_entropy_with_logits_forward(logits, targets, normalizer=None):
    """Mean per-element sigmoid cross-entropy: the mask loss L_mask ("average binary cross-entropy", §3).

    ``bce(x, t) = -t log s(x) - (1 - t) log(1 - s(x))`` is computed as ``max(x, 0) - x t + log(1 + e^-|x|)``,
    which never exponentiates a large positive number, so logits in the hundreds stay finite and exact.

    Args:
        logits, targets: same shape, e.g. (P, M, M) for P positive RoIs, each the mask of its GT class.
        normalizer: what the sum is divided by; None: the number of elements (the mean). Data-parallel
            training gives the elements of the whole batch, over every process.
    Returns:
        loss (float; 0.0 for empty input), cache.
    """
    op = "binary_cross_entropy_with_logits_forward"
    check_float_array(logits, "logits", op=op)
    if logits.shape != targets.shape:
        raise ValueError(f"{op}: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    xp = get_xp(logits, targets)
    t = targets.astype(logits.dtype, copy=False)
    n = logits.size if normalizer is None else _check_normalizer(normalizer, op)
    if logits.size == 0:
        return 0.0, (logits, t, 1)
    per = xp.maximum(logits, 0) - logits * t + xp.log1p(xp.exp(-xp.abs(logits)))
    return float(per.sum() / n), (logits, t, n)


def binary_cross_entropy_with_logits_backward(dloss, cache):
    """``dlogits = (sigmoid(x) - t) / n`` (:func:`~minimaskrcnn.nn.activation.sigmoid` does not overflow)."""
    logits, t, n = cache
    return (sigmoid(logits) - t) * (dloss / n)
