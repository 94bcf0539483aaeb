"""The RoI heads of Mask R-CNN (paper §3, Fig. 4): per proposal, a box branch (classify + refine the box)
and, in parallel, a mask branch (a small FCN predicting an m x m binary mask for every class).

Training (§3.1): proposals plus the GT boxes are matched to GT (IoU >= 0.5 is foreground), 512 are
sampled per image at 25% foreground; ``L = L_cls + L_box + L_mask`` where L_mask is the mean per-pixel
sigmoid cross-entropy on the mask of the RoI's *ground-truth class only*, over positive RoIs.
Inference: softmax scores, class-specific box decoding, score threshold 0.05, per-class NMS 0.5, the top
100 detections; then the mask branch runs on those boxes only and the predicted class picks the mask.

:class:`RoIHeads` has one job per method: :meth:`~RoIHeads.select_training_samples` (sampling),
:meth:`~RoIHeads.pool` (RoIAlign or an ablation's operator), the two branches' training passes
(:meth:`~RoIHeads.box_branch`, :meth:`~RoIHeads.mask_branch`, with the losses of ``model/losses.py``) and
:meth:`~RoIHeads.postprocess_detections` / :meth:`~RoIHeads.predict_masks` (inference). The sub-networks
are in ``model/heads.py``; the C4 variant (Fig. 4 left) has no ``mask_head``: its mask predictor reads the
box head's res5 output (see ``model/mask_rcnn_c4.py``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import nn
from ..backend import get_xp
from ..nn.activation import softmax
from ..ops.boxes import BoxCoder, batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes
from ..ops.masks import project_masks_on_boxes
from ..ops.matcher import Matcher
from ..ops.poolers import infer_scale, multiscale_roi_backward, multiscale_roi_forward
from ..ops.sampler import BalancedPositiveNegativeSampler
from .keypoint_head import heatmaps_to_keypoints, keypoints_to_heatmap
from .losses import (MASK_LOSSES, FastRCNNLossCache, KeypointRCNNLossCache, MaskRCNNLossCache, batch_totals,
                     fastrcnn_loss_backward, fastrcnn_loss_forward, keypointrcnn_loss_backward,
                     keypointrcnn_loss_forward, mask_probs, maskrcnn_loss_backward, maskrcnn_loss_forward)


def infer_scales(features, image_sizes):
    """Spatial scale of each level (:func:`~minimaskrcnn.ops.poolers.infer_scale`), measured against the
    largest image of the batch, as torchvision's ``MultiScaleRoIAlign`` does."""
    max_size = (max(int(h) for h, _ in image_sizes), max(int(w) for _, w in image_sizes))
    return [infer_scale(f.shape[-2:], max_size) for f in features]


def boxes_to_rois(boxes_per_image, xp):
    """List of (K_i, 4) boxes -> (sum K_i, 5) RoIs ``(batch_index, x1, y1, x2, y2)``."""
    rois = [xp.concatenate([xp.full((b.shape[0], 1), i, dtype=b.dtype), b], axis=1)
            for i, b in enumerate(boxes_per_image)]
    return xp.concatenate(rois, axis=0)


class SampledRoIs(NamedTuple):
    """One image's sampled RoIs (torchvision's ``select_training_samples``, per image). Constants for the
    backward pass (the paper's approximate joint training)."""
    proposals: object            # (S, 4) boxes in the batch's pixels
    matched_idxs: object         # (S,) index of the matched GT box (0 for images without objects)
    labels: object               # (S,) class of the matched GT box; 0 = background
    regression_targets: object   # (S, 4) the matched GT box encoded against the proposal


class MaskBranchCache(NamedTuple):
    pool: object                 # the RoI pooling's cache; None when the mask branch reads the box head (C4)
    loss: MaskRCNNLossCache
    positive: object             # (P,) rows of the positive RoIs among the sampled ones


class KeypointBranchCache(NamedTuple):
    pool: object                 # the 14x14 RoI pooling's cache
    loss: KeypointRCNNLossCache


class RoIHeadsCache(NamedTuple):
    num_levels: int              # feature maps given to forward_train (the gradient has one per map)
    box_pool: object             # the box branch's RoI pooling cache
    box_loss: FastRCNNLossCache
    mask: MaskBranchCache | None  # None: no mask branch, or no positive RoI in the batch
    keypoint: KeypointBranchCache | None = None   # likewise for the keypoint branch (paper §5)


class RoIHeads(nn.Module):
    """Box and mask branches on top of the pooled RoI features, with their losses and post-processing.

    Args (defaults are torchvision's and the paper's):
        box_head, box_predictor, mask_head, mask_predictor: the sub-networks (no mask predictor for
            Faster R-CNN). ``mask_head=None`` with a mask predictor shares the box head (C4, Fig. 4 left;
            Detectron's ``SHARE_RES5``): in training the mask predictor reads the box head's output for
            the positive RoIs, at inference the box head runs again on the detections' RoIs (pooled
            ``mask_pool_size``, which must then equal ``box_pool_size``).
        box_pool_size, mask_pool_size, sampling_ratio: RoIAlign 7x7 and 14x14 with 2x2 samples per bin.
        roi_op, roi_mode, aligned, impl: which RoI operator pools the features ('align' | 'warp' | 'pool',
            'avg' | 'max', half-pixel offset, 'numpy' | 'kernel'): the paper's Table 2c ablation.
        mask_loss: 'sigmoid' (per-class binary masks, the paper) or 'softmax' (per-pixel multinomial over
            classes, Table 2b). Class-agnostic masks: give a predictor with one output channel.
        mask_resolution: side of the predicted masks (28; 14 for C4), used for the shape of empty outputs.
        keypoint_head, keypoint_predictor, keypoint_pool_size: the keypoint branch (paper §5; torchvision's
            ``KeypointRCNNHeads`` / ``KeypointRCNNPredictor``) on RoIAlign 14x14 of the positive RoIs (training)
            or the detections (inference), alone or beside the mask branch (Table 5); None: no keypoints.
        featmap_levels: which of the backbone's feature maps (finest first) the RoIs are pooled from, as
            torchvision's ``MultiScaleRoIAlign(featmap_names)``: P2..P5 of FPN's P2..P6 (P6 only serves the
            RPN's largest anchors), or the one C4 map.
    """

    def __init__(self, box_head, box_predictor, mask_head=None, mask_predictor=None, box_pool_size=7,
                 mask_pool_size=14, sampling_ratio=2, roi_op="align", roi_mode="avg", aligned=False, impl="numpy",
                 fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=512, positive_fraction=0.25,
                 bbox_reg_weights=(10.0, 10.0, 5.0, 5.0), score_thresh=0.05, nms_thresh=0.5, detections_per_img=100,
                 box_loss_beta=1.0 / 9, mask_loss="sigmoid", mask_resolution=28, featmap_levels=(0, 1, 2, 3),
                 keypoint_head=None, keypoint_predictor=None, keypoint_pool_size=14):
        super().__init__()
        if mask_loss not in MASK_LOSSES:
            raise ValueError(f"mask_loss must be 'sigmoid' or 'softmax', got {mask_loss!r}")
        self.box_head, self.box_predictor = box_head, box_predictor
        self.mask_head, self.mask_predictor = mask_head, mask_predictor
        self.keypoint_head, self.keypoint_predictor = keypoint_head, keypoint_predictor
        self.keypoint_pool_size = keypoint_pool_size
        self.box_pool_size, self.mask_pool_size, self.sampling_ratio = box_pool_size, mask_pool_size, sampling_ratio
        self.roi_op, self.roi_mode, self.aligned, self.impl = roi_op, roi_mode, aligned, impl
        self.featmap_levels = tuple(featmap_levels)
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder(bbox_reg_weights)
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.box_loss_beta, self.mask_loss, self.mask_resolution = box_loss_beta, mask_loss, mask_resolution
        self.comm = None     # data-parallel: the processes the batch is split over (losses' normalisers)

    @property
    def has_mask(self):
        return self.mask_predictor is not None

    @property
    def has_keypoint(self):
        return self.keypoint_predictor is not None

    @property
    def shares_box_head(self):
        """The mask predictor reads the box head's features (C4) instead of having a head of its own."""
        return self.has_mask and self.mask_head is None

    # ---- pooling -------------------------------------------------------------------------------------------
    def pooled_levels(self, features):
        """The feature maps the RoIs are pooled from (``featmap_levels`` of the backbone's list)."""
        if max(self.featmap_levels) >= len(features):
            raise ValueError(f"RoIHeads pools feature levels {self.featmap_levels}, got {len(features)} maps")
        return [features[i] for i in self.featmap_levels]

    def pool(self, features, rois, size, scales):
        """(R, 5) RoIs -> (R, C, size, size) features, each RoI from its FPN level (or the one C4 map)."""
        return multiscale_roi_forward(features, rois, size, scales, self.sampling_ratio, self.aligned,
                                      op=self.roi_op, mode=self.roi_mode, impl=self.impl)

    # ---- sampling ------------------------------------------------------------------------------------------
    def select_training_samples(self, proposals, targets, rng):
        """Add the GT boxes to the proposals, match (IoU >= 0.5 foreground), sample 512 at 25% foreground.
        Returns one :class:`SampledRoIs` per image."""
        xp = get_xp(proposals[0])
        matched_idxs, labels, candidates, gt_boxes = [], [], [], []
        for p, t in zip(proposals, targets):
            gt = t["boxes"].astype(p.dtype)
            p = xp.concatenate([p, gt], axis=0)
            candidates.append(p)
            gt_boxes.append(gt)
            if gt.shape[0] == 0:
                matched_idxs.append(xp.zeros(p.shape[0], np.int64))
                labels.append(xp.zeros(p.shape[0], np.int64))
                continue
            matched = self.matcher(box_iou(gt, p))
            image_labels = xp.asarray(t["labels"], dtype=np.int64)[xp.maximum(matched, 0)]
            image_labels[matched == Matcher.BELOW_LOW_THRESHOLD] = 0
            image_labels[matched == Matcher.BETWEEN_THRESHOLDS] = -1
            matched_idxs.append(xp.maximum(matched, 0))
            labels.append(image_labels)
        positive, negative = self.sampler(labels, rng)
        samples = []
        for p, matched, image_labels, pos, neg, gt in zip(candidates, matched_idxs, labels, positive, negative,
                                                          gt_boxes):
            keep = xp.nonzero(pos | neg)[0]
            p, matched, image_labels = p[keep], matched[keep], image_labels[keep]
            # (an image without objects has only background samples: their regression targets are unused)
            regression_targets = self.box_coder.encode(gt[matched], p) if gt.shape[0] else xp.zeros_like(p)
            samples.append(SampledRoIs(p, matched, image_labels, regression_targets))
        return samples

    # ---- training: the two branches and their losses ---------------------------------------------------------
    def forward_train(self, features, proposals, image_sizes, targets, rng):
        """Losses ``loss_classifier``, ``loss_box_reg`` and (with a mask branch) ``loss_mask``.

        Args:
            features: the backbone's feature maps, (N, C, H_l, W_l) finest first; ``featmap_levels`` of them
                are pooled (P2..P5 of P2..P6).
            proposals: per image (P_i, 4), constants. targets: per image {'boxes', 'labels', 'masks'}.
        """
        levels = self.pooled_levels(features)
        scales = infer_scales(levels, image_sizes)
        samples = self.select_training_samples(proposals, targets, rng)
        # the losses' normalisers: sampled and positive RoIs of the whole batch (over every process)
        num_rois, num_positive = batch_totals([sum(s.labels.shape[0] for s in samples),
                                               sum((s.labels > 0).sum() for s in samples)], self.comm)
        losses, box_features, box_pool, box_loss = self.box_branch(levels, samples, scales, num_rois)
        mask = None
        if self.has_mask:
            losses["loss_mask"], mask = self.mask_branch(levels, samples, targets, scales, box_features,
                                                         num_positive)
        keypoint = None
        if self.has_keypoint:
            losses["loss_keypoint"], keypoint = self.keypoint_branch(levels, samples, targets, scales)
        self.save_for_backward(RoIHeadsCache(len(features), box_pool, box_loss, mask, keypoint))
        return losses

    def box_branch(self, levels, samples, scales, normalizer=None):
        """Pool the sampled RoIs 7x7, run the box head and predictor, and L_cls + L_box (divided by
        ``normalizer``, the sampled RoIs of the whole batch; None: these). Returns (losses, the box head's
        output, the pooling's cache, the loss's cache)."""
        xp = get_xp(levels[0])
        labels = xp.concatenate([s.labels for s in samples])
        regression_targets = xp.concatenate([s.regression_targets for s in samples])
        rois = boxes_to_rois([s.proposals for s in samples], xp)
        pooled, pool_cache = self.pool(levels, rois, self.box_pool_size, scales)
        box_features = self.box_head(pooled)
        class_logits, box_regression = self.box_predictor(box_features)
        (loss_classifier, loss_box), loss_cache = fastrcnn_loss_forward(class_logits, box_regression, labels,
                                                                        regression_targets, self.box_loss_beta,
                                                                        normalizer)
        return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box}, box_features, pool_cache, loss_cache

    def mask_branch(self, levels, samples, targets, scales, box_features=None, normalizer=None):
        """L_mask on the positive sampled RoIs: pool them 14x14, run the mask head and predictor (or, C4, the
        predictor on their rows of ``box_features``), and compare with their GT masks RoIAligned to the
        M x M grid of the logits (§3); the sum over pixels is divided by ``normalizer`` (the positive RoIs of
        the whole batch; None: these) x M x M. Returns (loss, cache); the cache is None when no RoI is
        positive."""
        xp = get_xp(levels[0])
        keep = [xp.nonzero(s.labels > 0)[0] for s in samples]
        labels = xp.concatenate([s.labels[k] for s, k in zip(samples, keep)])
        if labels.shape[0] == 0:  # no foreground RoI in the batch: L_mask = 0 (see backward)
            return 0.0, None
        boxes = [s.proposals[k] for s, k in zip(samples, keep)]
        positive = xp.nonzero(xp.concatenate([s.labels for s in samples]) > 0)[0]
        if self.shares_box_head:  # C4: the positives' rows of the box head's output (images, then samples)
            pool_cache, mask_logits = None, self.mask_predictor(box_features[positive])
        else:
            pooled, pool_cache = self.pool(levels, boxes_to_rois(boxes, xp), self.mask_pool_size, scales)
            mask_logits = self.mask_predictor(self.mask_head(pooled))             # (P, K or 1, M, M)
        M = mask_logits.shape[-1]
        mask_targets = xp.concatenate([
            project_masks_on_boxes(t["masks"], b, s.matched_idxs[k], M, impl=self.impl)
            for b, s, k, t in zip(boxes, samples, keep, targets)]).astype(levels[0].dtype)
        loss, loss_cache = maskrcnn_loss_forward(mask_logits, mask_targets, labels, self.mask_loss, normalizer)
        return loss, MaskBranchCache(pool_cache, loss_cache, positive)

    def backward(self, scale: float = 1.0):
        """Gradient of ``scale * (sum of the RoI losses)`` for each feature map given to :meth:`forward_train`
        (None for the maps not pooled, e.g. P6)."""
        cache: RoIHeadsCache = self.saved()
        d_class_logits, d_box_regression = fastrcnn_loss_backward((scale, scale), cache.box_loss)
        d_box_features = self.box_predictor.backward(d_class_logits, d_box_regression)
        d_mask_levels = None
        if cache.mask is not None:
            d_mask_features = self.mask_predictor.backward(maskrcnn_loss_backward(scale, cache.mask.loss))
            if self.shares_box_head:  # C4: both branches read the box head's output; their gradients add
                d_box_features[cache.mask.positive] += d_mask_features
            else:
                d_mask_levels = multiscale_roi_backward(self.mask_head.backward(d_mask_features), cache.mask.pool)
        elif self.has_mask:
            self._zero_mask_branch_grads()
        d_levels = multiscale_roi_backward(self.box_head.backward(d_box_features), cache.box_pool)
        if d_mask_levels is not None:
            d_levels = [a + b for a, b in zip(d_levels, d_mask_levels)]
        if cache.keypoint is not None:
            d_kp = self.keypoint_predictor.backward(keypointrcnn_loss_backward(scale, cache.keypoint.loss))
            d_kp_levels = multiscale_roi_backward(self.keypoint_head.backward(d_kp), cache.keypoint.pool)
            d_levels = [a + b for a, b in zip(d_levels, d_kp_levels)]
        elif self.has_keypoint:   # no positive RoI: L_kp = 0, zero gradients as for the mask branch
            for p in [*self.keypoint_head.parameters(), *self.keypoint_predictor.parameters()]:
                p.accumulate(get_xp(p.data).zeros_like(p.data))
        d_features = [None] * cache.num_levels
        for level, d in zip(self.featmap_levels, d_levels):
            d_features[level] = d
        return d_features

    def _zero_mask_branch_grads(self):
        """No positive RoI in the batch: L_mask is the constant 0, so its gradient for the mask branch's
        parameters is zero. Set explicitly (torchvision's ``mask_logits.sum() * 0``) so weight decay and
        momentum treat them as every other parameter; there are no RoIs to run the branch backward on."""
        branch = [self.mask_predictor] if self.shares_box_head else [self.mask_head, self.mask_predictor]
        for module in branch:
            for p in module.parameters():
                p.accumulate(get_xp(p.data).zeros_like(p.data))

    # ---- inference -------------------------------------------------------------------------------------------
    def predict(self, features, proposals, image_sizes):
        """Detections per image: {'boxes' (D, 4), 'scores' (D,), 'labels' (D,), 'mask_probs' (D, M, M)} in the
        padded batch's coordinates (the caller maps them back to each original image)."""
        xp = get_xp(features[0])
        levels = self.pooled_levels(features)
        scales = infer_scales(levels, image_sizes)
        pooled, _ = self.pool(levels, boxes_to_rois(proposals, xp), self.box_pool_size, scales)
        class_logits, box_regression = self.box_predictor(self.box_head(pooled))
        results = self.postprocess_detections(class_logits, box_regression, proposals, image_sizes)
        if self.has_mask:
            self.predict_masks(levels, results, scales)
        if self.has_keypoint:
            self.predict_keypoints(levels, results, scales)
        return results

    def postprocess_detections(self, class_logits, box_regression, proposals, image_sizes):
        """Softmax scores, one decoded box per (proposal, class), clipped; then score threshold, tiny boxes
        dropped, per-class NMS and the best ``detections_per_img`` per image."""
        xp = get_xp(class_logits)
        K = class_logits.shape[1]
        probs = softmax(class_logits, axis=1)
        starts = np.cumsum([0] + [p.shape[0] for p in proposals])
        results = []
        for i, p in enumerate(proposals):
            a, b = starts[i], starts[i + 1]
            boxes = self.box_coder.decode(box_regression[a:b], p).reshape(-1, K, 4)   # one box per class
            boxes = clip_boxes_to_image(boxes, image_sizes[i])
            # drop the background column, then one candidate per (proposal, class)
            boxes = boxes[:, 1:].reshape(-1, 4)
            scores = probs[a:b, 1:].reshape(-1)
            labels = xp.broadcast_to(xp.arange(1, K), (b - a, K - 1)).reshape(-1)
            keep = xp.nonzero(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(boxes, 1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh, max_keep=self.detections_per_img)
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results

    def predict_masks(self, levels, results, scales):
        """Add 'mask_probs' (D, M, M) to each image's detections: the mask branch on the detected boxes, the
        predicted class's map (§3.1 "Inference")."""
        xp = get_xp(levels[0])
        counts = [r["boxes"].shape[0] for r in results]
        if sum(counts) == 0:
            for r in results:
                r["mask_probs"] = xp.zeros((0, self.mask_resolution, self.mask_resolution), levels[0].dtype)
            return
        pooled, _ = self.pool(levels, boxes_to_rois([r["boxes"] for r in results], xp), self.mask_pool_size,
                              scales)
        head = self.box_head if self.shares_box_head else self.mask_head   # C4: res5 again, on the detections
        probs = mask_probs(self.mask_predictor(head(pooled)), xp.concatenate([r["labels"] for r in results]),
                           self.mask_loss)
        starts = np.cumsum([0] + counts)
        for i, r in enumerate(results):
            r["mask_probs"] = probs[starts[i]:starts[i + 1]]

    # ---- the keypoint branch (paper §5) ------------------------------------------------------------------------
    def keypoint_branch(self, levels, samples, targets, scales):
        """L_kp on the positive sampled RoIs (torchvision: the same positives as the mask branch): pool them
        14x14, run the keypoint head and predictor, and compare with the matched GT keypoints discretised on
        the m x m grid of each RoI. Returns (loss, cache); the cache is None when no RoI is positive."""
        xp = get_xp(levels[0])
        if any("keypoints" not in t for t in targets):
            raise ValueError("a model with a keypoint branch needs targets with 'keypoints' (G, K, 3) [x, y, v]")
        K = self.keypoint_predictor.out_channels
        if any(t["keypoints"].shape[1] != K for t in targets):
            raise ValueError(f"the keypoint branch predicts {K} keypoints; the targets have "
                             f"{[int(t['keypoints'].shape[1]) for t in targets]}")
        keep = [xp.nonzero(s.labels > 0)[0] for s in samples]
        boxes = [s.proposals[k] for s, k in zip(samples, keep)]
        M = self.keypoint_predictor.up_scale * 2 * self.keypoint_pool_size      # 14 -> 28 -> 56
        targets_on_grid = [keypoints_to_heatmap(xp.asarray(t["keypoints"], b.dtype)[s.matched_idxs[k]], b, M)
                           for b, s, k, t in zip(boxes, samples, keep, targets)]
        heatmaps = xp.concatenate([h for h, _ in targets_on_grid])
        valid = xp.concatenate([v for _, v in targets_on_grid])
        # the loss's normaliser: the labelled keypoints of the whole batch (over every process); every process
        # takes part in the count, also one without positive RoIs
        (num_valid,) = batch_totals([int(valid.sum())], self.comm)
        if heatmaps.shape[0] == 0:
            return 0.0, None
        pooled, pool_cache = self.pool(levels, boxes_to_rois(boxes, xp), self.keypoint_pool_size, scales)
        logits = self.keypoint_predictor(self.keypoint_head(pooled))                      # (P, K, m, m)
        loss, loss_cache = keypointrcnn_loss_forward(logits, heatmaps, valid, normalizer=num_valid)
        return loss, KeypointBranchCache(pool_cache, loss_cache)

    def predict_keypoints(self, levels, results, scales):
        """Add 'keypoints' (D, K, 3) ``[x, y, 1]`` and 'keypoints_scores' (D, K) to each image's detections:
        the keypoint branch on the detected boxes, decoded by
        :func:`~minimaskrcnn.model.keypoint_head.heatmaps_to_keypoints`."""
        xp = get_xp(levels[0])
        K = self.keypoint_predictor.out_channels
        counts = [r["boxes"].shape[0] for r in results]
        if sum(counts) == 0:
            for r in results:
                r["keypoints"], r["keypoints_scores"] = np.zeros((0, K, 3), np.float32), np.zeros((0, K), np.float32)
            return
        pooled, _ = self.pool(levels, boxes_to_rois([r["boxes"] for r in results], xp), self.keypoint_pool_size,
                              scales)
        logits = self.keypoint_predictor(self.keypoint_head(pooled))
        starts = np.cumsum([0] + counts)
        for i, r in enumerate(results):
            r["keypoints"], r["keypoints_scores"] = heatmaps_to_keypoints(logits[starts[i]:starts[i + 1]], r["boxes"])
