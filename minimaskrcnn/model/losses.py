"""The losses of Mask R-CNN as functional pairs (paper §3): ``L = L_cls + L_box + L_mask`` on the sampled RoIs,
plus the RPN's two losses (Faster R-CNN, Ren et al. 2015, eq. 1), which Mask R-CNN trains jointly.

Each ``*_forward`` takes predictions and *sampled* targets (sampling is random and lives in the RPN and RoI
heads; these functions are deterministic) and returns ``(losses, cache)`` with Python-float losses;
``*_backward(dlosses, cache)`` returns the gradient for each prediction, scaled by ``dlosses`` (1.0 for a loss
that is summed directly). Normalisations are torchvision's (``models/detection/{rpn,roi_heads}.py``):

    rpn_loss        loss_objectness   sigmoid BCE, mean over the sampled anchors
                    loss_rpn_box_reg  smooth L1 (beta 1/9) summed over the positive anchors / sampled anchors
    fastrcnn_loss   loss_classifier   softmax cross-entropy, mean over the sampled RoIs
                    loss_box_reg      smooth L1 (beta 1/9) of the GT class's deltas, summed over the positive
                                      RoIs / sampled RoIs
    maskrcnn_loss   loss_mask         mean per-pixel sigmoid BCE of the GT class's mask (§3), or a per-pixel
                                      softmax over classes (Table 2b), over the positive RoIs

Data-parallel training (``engine/distributed.py``) splits the batch over processes; each loss then takes a
``normalizer``: the count it divides by, totalled over every process (sampled anchors, sampled RoIs, positive
RoIs of the *whole* batch). Each process's loss is its share ``sum over its own samples / count of the whole
batch``, so the processes' losses, and their gradients, add up to the loss and gradient of the whole batch
in one process, exactly (up to the order of floating-point additions). A per-process mean, averaged over
the processes, would not be: processes sample different numbers of anchors and RoIs.

The building blocks (cross-entropy, smooth L1, sigmoid BCE) are :mod:`minimaskrcnn.nn.losses`.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import get_xp
from ..nn.activation import sigmoid, softmax
from ..nn.losses import (binary_cross_entropy_with_logits_backward, binary_cross_entropy_with_logits_forward,
                         smooth_l1_backward, smooth_l1_forward, softmax_cross_entropy_backward,
                         softmax_cross_entropy_forward)

MASK_LOSSES = ("sigmoid", "softmax")


def batch_totals(counts, comm=None) -> list:
    """Counts of this process's images (e.g. sampled anchors) -> the same counts for the whole batch: summed
    over the processes of ``comm`` (data-parallel training; one allreduce), or as they are without one."""
    counts = [int(c) for c in counts]
    if comm is None:
        return counts
    return [int(round(float(c))) for c in comm.allreduce(np.asarray(counts, np.float64))]


# ---- the RPN (Faster R-CNN eq. 1) ------------------------------------------------------------------------------
class RPNLossCache(NamedTuple):
    sampled: object            # (S,) indices of the sampled anchors (positive or negative)
    positive: object           # (S+,) indices of the positive anchors
    objectness_cache: tuple    # sigmoid BCE's cache
    box_cache: tuple           # smooth L1's cache
    num_anchors: int           # A


def rpn_loss_forward(objectness, pred_bbox_deltas, labels, regression_targets, beta: float = 1.0 / 9,
                     normalizer=None):
    """The RPN's two losses on its sampled anchors.

    Args:
        objectness: (A,) logits, one per anchor of the batch (the images' anchors one after the other).
        pred_bbox_deltas: (A, 4) predicted (dx, dy, dw, dh) of each anchor.
        labels: (A,) integers: 1 a sampled positive, 0 a sampled negative, -1 not sampled (no loss).
        regression_targets: (A, 4) each anchor's matched GT box encoded against it (only positives are read).
        beta: smooth L1's switch from quadratic to linear (torchvision 1/9; 0 is plain L1).
        normalizer: S, the number of sampled anchors of the whole batch (over every process); None: those
            of ``labels``.
    Returns:
        ``(loss_objectness, loss_rpn_box_reg)``, cache. ``loss_objectness`` is the mean sigmoid
        cross-entropy over the S sampled anchors; ``loss_rpn_box_reg`` sums smooth L1 over the positives and
        divides by S (torchvision; the paper's eq. 1 divides by the number of anchor locations, ~2400, and
        weights it by lambda = 10, which is about the same).
    """
    ### BEGIN SOLUTION
    xp = get_xp(objectness)
    sampled = xp.nonzero(labels >= 0)[0]
    positive = xp.nonzero(labels == 1)[0]
    S = max(int(sampled.shape[0]) if normalizer is None else int(normalizer), 1)
    loss_objectness, objectness_cache = binary_cross_entropy_with_logits_forward(
        objectness[sampled], labels[sampled].astype(objectness.dtype), normalizer=S)
    loss_box, box_cache = smooth_l1_forward(pred_bbox_deltas[positive], regression_targets[positive], beta,
                                            normalizer=S)
    return (loss_objectness, loss_box), RPNLossCache(sampled, positive, objectness_cache, box_cache,
                                                     int(objectness.shape[0]))
    ### END SOLUTION


def rpn_loss_backward(dlosses, cache: RPNLossCache):
    """``dlosses = (d loss_objectness, d loss_rpn_box_reg)`` -> ``(d_objectness (A,), d_pred_bbox_deltas (A, 4))``;
    anchors that were not sampled (and, for the deltas, not positive) get zero."""
    ### BEGIN SOLUTION
    d_loss_objectness, d_loss_box = dlosses
    d_sampled = binary_cross_entropy_with_logits_backward(d_loss_objectness, cache.objectness_cache)
    xp = get_xp(d_sampled)
    d_objectness = xp.zeros(cache.num_anchors, d_sampled.dtype)
    d_objectness[cache.sampled] = d_sampled
    d_deltas = xp.zeros((cache.num_anchors, 4), d_sampled.dtype)
    d_deltas[cache.positive] = smooth_l1_backward(d_loss_box, cache.box_cache)
    return d_objectness, d_deltas
    ### END SOLUTION


# ---- the box branch (Fast R-CNN) ----------------------------------------------------------------------------
class FastRCNNLossCache(NamedTuple):
    classifier_cache: tuple    # softmax cross-entropy's cache
    box_cache: tuple           # smooth L1's cache
    positive: object           # (R+,) indices of the positive RoIs
    positive_labels: object    # (R+,) their classes, which pick their deltas
    box_regression_shape: tuple


def fastrcnn_loss_forward(class_logits, box_regression, labels, regression_targets, beta: float = 1.0 / 9,
                          normalizer=None):
    """L_cls and L_box of the sampled RoIs (paper §3; Fast R-CNN eq. 1).

    Args:
        class_logits: (R, K) scores of K classes, background (0) first, for the R sampled RoIs.
        box_regression: (R, 4K) class-specific deltas: four per class.
        labels: (R,) each RoI's class, 0 for background.
        regression_targets: (R, 4) the matched GT box encoded against the RoI (read for positives only).
        beta: smooth L1's switch point (torchvision 1/9).
        normalizer: the number of sampled RoIs of the whole batch (over every process); None: R.
    Returns:
        ``(loss_classifier, loss_box_reg)``, cache. ``loss_classifier`` is the mean cross-entropy over R;
        ``loss_box_reg`` sums smooth L1 of the *GT class's* four deltas over the positive RoIs and divides by
        R (torchvision's ``fastrcnn_loss``), so background RoIs count in the mean but have no box loss.
    """
    xp = get_xp(class_logits)
    R = max(int(labels.shape[0]) if normalizer is None else int(normalizer), 1)
    loss_classifier, classifier_cache = softmax_cross_entropy_forward(class_logits, labels, normalizer=R)
    positive = xp.nonzero(labels > 0)[0]
    positive_labels = labels[positive]
    K = class_logits.shape[1]
    deltas = box_regression.reshape(-1, K, 4)[positive, positive_labels]
    loss_box, box_cache = smooth_l1_forward(deltas, regression_targets[positive], beta, normalizer=R)
    return (loss_classifier, loss_box), FastRCNNLossCache(classifier_cache, box_cache, positive, positive_labels,
                                                          box_regression.shape)


def fastrcnn_loss_backward(dlosses, cache: FastRCNNLossCache):
    """``dlosses = (d loss_classifier, d loss_box_reg)`` -> ``(d_class_logits (R, K), d_box_regression (R, 4K))``;
    only the GT class's four deltas of each positive RoI get a gradient."""
    d_loss_classifier, d_loss_box = dlosses
    d_class_logits = softmax_cross_entropy_backward(d_loss_classifier, cache.classifier_cache)
    xp = get_xp(d_class_logits)
    R, K = d_class_logits.shape
    d_box_regression = xp.zeros((R, K, 4), d_class_logits.dtype)
    d_box_regression[cache.positive, cache.positive_labels] = smooth_l1_backward(d_loss_box, cache.box_cache)
    return d_class_logits, d_box_regression.reshape(cache.box_regression_shape)


# ---- the mask branch (paper §3, "Mask Representation"; Table 2b) ----------------------------------------------
class MaskRCNNLossCache(NamedTuple):
    mode: str                  # 'sigmoid' or 'softmax'
    loss_cache: tuple          # sigmoid BCE's or softmax cross-entropy's cache
    channels: object           # (P,) the channel each RoI's loss reads ('sigmoid')
    mask_logits_shape: tuple


def mask_channels(labels, num_channels: int):
    """The output channel of each RoI's mask: its class, or 0 for class-agnostic masks (one channel)."""
    xp = get_xp(labels)
    return labels if num_channels > 1 else xp.zeros_like(labels)


def maskrcnn_loss_forward(mask_logits, mask_targets, labels, mode: str = "sigmoid", normalizer=None):
    """L_mask of the positive RoIs.

    Args:
        mask_logits: (P, C, M, M) the mask branch's output for P positive RoIs: C = K class-specific masks, or
            C = 1 for class-agnostic masks (§4.2).
        mask_targets: (P, M, M) each RoI's GT mask resampled to the M x M grid (values in [0, 1]).
        labels: (P,) each RoI's GT class (1..K-1).
        mode: 'sigmoid' (the paper): binary cross-entropy of the GT class's mask only (other classes' masks
            get no loss, so classes do not compete); 'softmax' (Table 2b): each pixel is a multinomial over
            the C channels, the target being the GT class inside the mask (target >= 0.5) and background
            (channel 0) outside.
        normalizer: the number of positive RoIs of the whole batch (over every process); None: P. The sum
            over pixels is divided by ``normalizer * M * M``.
    Returns:
        loss_mask (float; the mean over the P x M x M pixels, 0.0 when P = 0), cache.
    """
    if mode not in MASK_LOSSES:
        raise ValueError(f"maskrcnn_loss_forward: mode must be one of {MASK_LOSSES}, got {mode!r}")
    xp = get_xp(mask_logits)
    P, C, M, _ = mask_logits.shape
    channels = mask_channels(labels, C)
    pixels = None if normalizer is None else int(normalizer) * M * M
    if mode == "softmax":
        if C == 1:
            raise ValueError("maskrcnn_loss_forward: the softmax mask loss needs one channel per class, got 1")
        flat = mask_logits.transpose(0, 2, 3, 1).reshape(-1, C)                  # one row per pixel
        pixel_labels = (mask_targets >= 0.5).astype(np.int64) * labels[:, None, None]
        loss, loss_cache = softmax_cross_entropy_forward(flat, pixel_labels.reshape(-1), normalizer=pixels)
    else:
        ### BEGIN SOLUTION
        loss, loss_cache = binary_cross_entropy_with_logits_forward(mask_logits[xp.arange(P), channels],
                                                                    mask_targets, normalizer=pixels)
        ### END SOLUTION
    return loss, MaskRCNNLossCache(mode, loss_cache, channels, mask_logits.shape)


def maskrcnn_loss_backward(dloss, cache: MaskRCNNLossCache):
    """``d loss_mask`` -> ``d_mask_logits (P, C, M, M)``: with 'sigmoid', zero outside each RoI's own channel."""
    P, C, M, N = cache.mask_logits_shape
    if cache.mode == "softmax":
        d = softmax_cross_entropy_backward(dloss, cache.loss_cache)
        return d.reshape(P, M, N, C).transpose(0, 3, 1, 2)
    ### BEGIN SOLUTION
    d_selected = binary_cross_entropy_with_logits_backward(dloss, cache.loss_cache)
    xp = get_xp(d_selected)
    d = xp.zeros(cache.mask_logits_shape, d_selected.dtype)
    d[xp.arange(P), cache.channels] = d_selected
    return d
    ### END SOLUTION


def mask_probs(mask_logits, labels, mode: str = "sigmoid"):
    """Inference: (D, C, M, M) logits -> (D, M, M) probabilities of each detection's predicted class, as the
    loss of ``mode`` defines them (sigmoid of the class's own map, or its share of the per-pixel softmax)."""
    xp = get_xp(mask_logits)
    D = mask_logits.shape[0]
    if mode == "softmax":
        return softmax(mask_logits, axis=1)[xp.arange(D), labels]
    return sigmoid(mask_logits[xp.arange(D), mask_channels(labels, mask_logits.shape[1])])


# ---- the keypoint branch (paper §5: "a keypoint is a one-hot mask") ------------------------------------------
class KeypointRCNNLossCache(NamedTuple):
    loss_cache: tuple | None   # softmax cross-entropy's cache; None when no keypoint is valid
    logits_shape: tuple        # (P, K, m, m)
    like: object               # an empty slice of the logits: their array module and dtype


def keypointrcnn_loss_forward(keypoint_logits, heatmaps, valid, normalizer=None):
    """L_kp: for each labelled keypoint of each positive RoI, cross-entropy of an m^2-way softmax over its map's
    cells with the one-hot target (§5), averaged over those keypoints (torchvision's ``keypointrcnn_loss``).

    Unlike the mask loss (independent per-pixel sigmoids), the cells of one keypoint's map compete: exactly
    one is the keypoint. The K keypoint types are still independent of each other.

    Args:
        keypoint_logits: (P, K, m, m). heatmaps: (P, K) int target cells ``y * m + x``
            (:func:`~minimaskrcnn.model.keypoint_head.keypoints_to_heatmap`); valid: (P, K) bool.
        normalizer: the number of valid keypoints of the whole batch (over every process); None: these.
    Returns:
        loss_keypoint (float; 0.0 when nothing is valid), cache.
    """
    xp = get_xp(keypoint_logits)
    P, K, M, N = keypoint_logits.shape
    if M != N:
        raise ValueError(f"keypointrcnn_loss_forward: keypoint maps must be square, got {M}x{N}")
    like = keypoint_logits.reshape(-1)[:0]
    if not bool(valid.any()):
        return 0.0, KeypointRCNNLossCache(None, keypoint_logits.shape, like)
    labels = xp.where(valid, heatmaps, -1).reshape(-1).astype(np.int64)
    loss, cache = softmax_cross_entropy_forward(keypoint_logits.reshape(P * K, M * N), labels, ignore_index=-1,
                                                normalizer=normalizer)
    return loss, KeypointRCNNLossCache(cache, keypoint_logits.shape, like)


def keypointrcnn_loss_backward(dloss, cache: KeypointRCNNLossCache):
    """``d loss_keypoint`` -> d_keypoint_logits (P, K, m, m): ``(softmax - one_hot) / n_valid`` on the valid
    maps, zero on the others (and everywhere when none is valid, torchvision's ``logits.sum() * 0``)."""
    if cache.loss_cache is None:
        return get_xp(cache.like).zeros(cache.logits_shape, cache.like.dtype)
    return softmax_cross_entropy_backward(dloss, cache.loss_cache).reshape(cache.logits_shape)
