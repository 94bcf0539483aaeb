"""Region Proposal Network (Faster R-CNN, Ren et al. 2015; with FPN, Lin et al. 2017), paper §3.

A small head slides over every FPN level and predicts, for each of A anchors per location, an
objectness logit and 4 box deltas. Training labels anchors by IoU with the ground truth (>= 0.7
positive, < 0.3 negative, plus each GT's best anchor), samples 256 per image at up to 50% positives,
and applies sigmoid cross-entropy and smooth L1 (:func:`~minimaskrcnn.model.losses.rpn_loss_forward`).
Proposals are the decoded boxes of the top-scoring anchors per level, clipped, NMS'd at 0.7 across each
level, and cut to the best ``post_nms_top_n``.

Proposals are constants for the rest of the network ("approximate joint training"): no gradient flows
through the box decoding, only through the objectness and delta predictions.
"""
from __future__ import annotations

import numpy as np

from typing import NamedTuple

from .. import nn
from ..backend import device_of, get_xp
from ..nn.activation import relu_backward, relu_forward, sigmoid
from ..ops.boxes import BoxCoder, batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes
from ..ops.matcher import Matcher
from ..ops.sampler import BalancedPositiveNegativeSampler
from .losses import RPNLossCache, batch_totals, rpn_loss_backward, rpn_loss_forward


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then two sibling 1x1 convs: ``cls_logits`` (A channels) and ``bbox_pred`` (4A).

    The same weights run on every level; the module tape takes the levels back in reverse order.
    Names follow torchvision (``conv.0.0``, ``cls_logits``, ``bbox_pred``); init N(0, 0.01), zero bias.
    """

    def __init__(self, in_channels, num_anchors, conv_depth=1, dtype="float32"):
        super().__init__()
        self.conv = nn.Sequential(*[nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1, dtype=dtype))
                                    for _ in range(conv_depth)])
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1, dtype=dtype)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1, dtype=dtype)
        for _, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data = nn.init.normal(m.weight.shape, 0.01, dtype)
                m.bias.data[...] = 0

    def forward(self, features):
        """features: list of (N, C, H, W). Returns (logits list of (N, A, H, W), deltas list of (N, 4A, H, W))."""
        logits, deltas, relu_masks = [], [], []
        for f in features:
            t = f
            for block in self.conv:
                t, relu_mask = relu_forward(block(t))
                relu_masks.append(relu_mask)
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        self.save_for_backward(relu_masks)
        return logits, deltas

    def backward(self, d_logits, d_deltas):
        """Gradients for each level's logits and deltas -> gradients for each level's features."""
        relu_masks = self.saved()
        depth = len(self.conv)
        d_feats = []
        for level in range(len(d_logits) - 1, -1, -1):  # reverse order of the forward's levels
            d = self.cls_logits.backward(d_logits[level]) + self.bbox_pred.backward(d_deltas[level])
            for k in range(depth - 1, -1, -1):
                d = self.conv[k].backward(relu_backward(d, relu_masks[level * depth + k]))
            d_feats.append(d)
        return d_feats[::-1]


def flatten_level(x, N, A, C):
    """(N, A*C, H, W) -> (N, H*W*A, C): one row per anchor, in the anchor generator's order
    (location-major, then the A anchors of a location)."""
    _, _, H, W = x.shape
    return x.reshape(N, A, C, H, W).transpose(0, 3, 4, 1, 2).reshape(N, H * W * A, C)


def unflatten_level(d, N, A, C, H, W):
    """Inverse of :func:`flatten_level`: (N, H*W*A, C) -> (N, A*C, H, W)."""
    return d.reshape(N, H, W, A, C).transpose(0, 3, 4, 1, 2).reshape(N, A * C, H, W)


class RPNCache(NamedTuple):
    """What :meth:`RegionProposalNetwork.backward` needs from the training forward pass."""
    level_shapes: list         # (N, A, H, W) of each level's logits
    num_anchors: int           # A, anchors per location
    anchors_per_level: list    # H * W * A of each level
    loss: RPNLossCache


class RegionProposalNetwork(nn.Module):
    """Anchors, head, proposals and the RPN loss (torchvision's ``RegionProposalNetwork``, same defaults).

    ``forward(features, image_sizes, batch_shape, targets=None, rng=None)`` returns
    ``(proposals, losses)``: per image an (P, 4) array of proposals in the padded batch's pixel
    coordinates, and in training ``{'loss_objectness', 'loss_rpn_box_reg'}``. ``backward()`` then returns
    the gradient of the sum of the two losses for every feature level. ``rng``: a Generator, or one per
    image (:class:`~minimaskrcnn.ops.sampler.BalancedPositiveNegativeSampler`).

    ``comm`` (None, or set by ``engine.distributed.distribute_model``): the processes the batch is split
    over; the losses then divide by the sampled anchors of the whole batch (``model/losses.py``).
    """

    def __init__(self, anchor_generator, head, fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256,
                 positive_fraction=0.5, pre_nms_top_n=(2000, 1000), post_nms_top_n=(2000, 1000), nms_thresh=0.7,
                 score_thresh=0.0, min_size=1e-3, box_loss_beta=1.0 / 9):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_top_n = dict(zip(("training", "testing"), pre_nms_top_n))
        self.post_nms_top_n = dict(zip(("training", "testing"), post_nms_top_n))
        self.nms_thresh, self.score_thresh, self.min_size = nms_thresh, score_thresh, min_size
        self.box_loss_beta = box_loss_beta
        self.comm = None

    def _mode(self):
        return "training" if self.training else "testing"

    def forward(self, features, image_sizes, batch_shape, targets=None, rng=None):
        N = features[0].shape[0]
        logits, deltas = self.head(features)
        anchors = self.anchor_generator(batch_shape, [f.shape[-2:] for f in features], dtype=features[0].dtype,
                                        device=device_of(features[0]))                   # (sum H*W*A, 4)
        A = logits[0].shape[1]
        anchors_per_level = [lg.shape[2] * lg.shape[3] * A for lg in logits]
        objectness = self._cat([flatten_level(lg, N, A, 1)[..., 0] for lg in logits])    # (N, sum)
        pred_bbox_deltas = self._cat([flatten_level(d, N, A, 4) for d in deltas])         # (N, sum, 4)
        xp = get_xp(objectness)
        if not (bool(xp.isfinite(objectness).all()) and bool(xp.isfinite(pred_bbox_deltas).all())):
            # NaN boxes would fail much later and far from the cause (a diverged network or input)
            raise FloatingPointError("the RPN's objectness or box deltas are not finite: the weights or the "
                                     "input hold NaN or inf (training diverged?)")
        proposals = self.filter_proposals(objectness, pred_bbox_deltas, anchors, anchors_per_level, image_sizes)
        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("RegionProposalNetwork: training needs targets")
            labels, regression_targets = self.assign_targets_to_anchors(anchors, targets, objectness.dtype)
            labels = self.sample(labels, rng)
            (num_sampled,) = batch_totals([(labels >= 0).sum()], self.comm)
            (loss_objectness, loss_box), loss_cache = rpn_loss_forward(
                objectness.reshape(-1), pred_bbox_deltas.reshape(-1, 4), labels, regression_targets,
                self.box_loss_beta, normalizer=num_sampled)
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}
            self.save_for_backward(RPNCache([lg.shape for lg in logits], A, anchors_per_level, loss_cache))
        return proposals, losses

    @staticmethod
    def _cat(parts):
        return get_xp(parts[0]).concatenate(parts, axis=1)

    def filter_proposals(self, objectness, pred_bbox_deltas, anchors, anchors_per_level, image_sizes):
        """Per image: top-k anchors per level by objectness, decode, clip, drop tiny boxes, NMS per level,
        keep the best ``post_nms_top_n``. Returns a list of (P_i, 4) proposal arrays."""
        xp = get_xp(objectness)
        N = objectness.shape[0]
        pre_n, post_n = self.pre_nms_top_n[self._mode()], self.post_nms_top_n[self._mode()]
        # Indices of the top-k logits of each level (k = min(pre_nms_top_n, anchors in the level)).
        starts = np.cumsum([0] + anchors_per_level)
        top_per_level = []
        for level, n in enumerate(anchors_per_level):
            k = min(pre_n, n)
            part = objectness[:, starts[level]:starts[level] + n]
            top = xp.argpartition(-part, k - 1, axis=1)[:, :k] if k < n else xp.broadcast_to(xp.arange(n), (N, n))
            order = xp.argsort(-xp.take_along_axis(part, top, axis=1), axis=1, kind="stable")
            top_per_level.append(xp.take_along_axis(top, order, axis=1) + starts[level])
        level_of_top = xp.concatenate([xp.full(t.shape[1], level) for level, t in enumerate(top_per_level)])
        top = xp.concatenate(top_per_level, axis=1)                                       # (N, K)
        out = []
        for i in range(N):
            selected = top[i]
            boxes = self.box_coder.decode(pred_bbox_deltas[i, selected], anchors[selected])
            scores = sigmoid(objectness[i, selected])
            boxes = clip_boxes_to_image(boxes, image_sizes[i])
            keep = remove_small_boxes(boxes, self.min_size)
            boxes, scores, levels = boxes[keep], scores[keep], level_of_top[keep]
            keep = xp.nonzero(scores >= self.score_thresh)[0]
            boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
            keep = batched_nms(boxes, scores, levels, self.nms_thresh, max_keep=post_n)
            out.append(boxes[keep])
        return out

    def assign_targets_to_anchors(self, anchors, targets, dtype):
        """Label every anchor of every image: 1 (IoU >= 0.7 with a GT box, or a GT box's best anchor), 0
        (IoU < 0.3 with all), -1 (in between: ignored); and encode its matched GT box as regression target.
        Returns (N * A_total,) labels and (N * A_total, 4) targets, the images one after the other."""
        xp = get_xp(anchors)
        labels, regression_targets = [], []
        for t in targets:
            gt = t["boxes"].astype(anchors.dtype)
            if gt.shape[0] == 0:
                labels.append(xp.zeros(anchors.shape[0], np.int64))
                regression_targets.append(xp.zeros(anchors.shape, dtype))
                continue
            matched = self.matcher(box_iou(gt, anchors))
            image_labels = (matched >= 0).astype(np.int64)
            image_labels[matched == Matcher.BETWEEN_THRESHOLDS] = -1
            labels.append(image_labels)
            regression_targets.append(self.box_coder.encode(gt[xp.maximum(matched, 0)], anchors).astype(dtype))
        return labels, xp.concatenate(regression_targets)

    def sample(self, labels, rng):
        """256 anchors per image, up to half positive (§3.1): the labels with every anchor that was not
        sampled set to -1, concatenated over the images."""
        xp = get_xp(labels[0])
        positive, negative = self.sampler(labels, rng)
        positive, negative = xp.concatenate(positive), xp.concatenate(negative)
        return xp.where(positive, 1, xp.where(negative, 0, -1))

    def backward(self, scale: float = 1.0):
        """Gradient of ``scale * (loss_objectness + loss_rpn_box_reg)`` for each feature level."""
        cache: RPNCache = self.saved()
        d_objectness, d_deltas = rpn_loss_backward((scale, scale), cache.loss)
        N, A = cache.level_shapes[0][0], cache.num_anchors
        d_objectness, d_deltas = d_objectness.reshape(N, -1), d_deltas.reshape(N, -1, 4)
        starts = np.cumsum([0] + cache.anchors_per_level)
        d_logits, d_pred_deltas = [], []
        for level, (n, (_, _, H, W)) in enumerate(zip(cache.anchors_per_level, cache.level_shapes)):
            a, b = starts[level], starts[level] + n
            d_logits.append(unflatten_level(d_objectness[:, a:b, None], N, A, 1, H, W))
            d_pred_deltas.append(unflatten_level(d_deltas[:, a:b], N, A, 4, H, W))
        return self.head.backward(d_logits, d_pred_deltas)
