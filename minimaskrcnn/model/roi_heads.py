"""The RoI heads of Mask R-CNN (paper §3, Fig. 4): per proposal, a box branch (classify + refine the box)
and, in parallel, a mask branch (a small FCN predicting an m x m binary mask for every class).

Training (§3.1): proposals plus the GT boxes are matched to GT (IoU >= 0.5 is foreground), 512 are
sampled per image at 25% foreground; ``L = L_cls + L_box + L_mask`` where L_mask is the mean per-pixel
sigmoid cross-entropy on the mask of the RoI's *ground-truth class only*, over positive RoIs.
Inference: softmax scores, class-specific box decoding, score threshold 0.05, per-class NMS 0.5, the top
100 detections; then the mask branch runs on those boxes only and the predicted class picks the mask.

Names follow torchvision: ``box_head.fc6/fc7``, ``box_predictor.cls_score/bbox_pred``,
``mask_head.<k>.0``, ``mask_predictor.conv5_mask/mask_fcn_logits``. Table 2e's MLP mask branch is
``mask_head.fc1/fc2`` + ``mask_predictor.mask_fc_logits``. The C4 variant (Fig. 4 left) has no
``mask_head``: its mask predictor reads the box head's res5 output (see ``model/mask_rcnn_c4.py``).
"""
from __future__ import annotations

import numpy as np

from .. import nn
from ..backend import get_xp
from ..nn.activation import relu_backward, relu_forward, softmax
from ..nn.losses import (binary_cross_entropy_with_logits_backward, binary_cross_entropy_with_logits_forward,
                         smooth_l1_backward, smooth_l1_forward, softmax_cross_entropy_backward,
                         softmax_cross_entropy_forward)
from ..ops.boxes import BoxCoder, batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes
from ..ops.masks import project_masks_on_boxes
from ..ops.matcher import Matcher
from ..ops.poolers import infer_scale, multiscale_roi_backward, multiscale_roi_forward
from ..ops.sampler import BalancedPositiveNegativeSampler


class TwoMLPHead(nn.Module):
    """Box head: flatten the 7x7 RoI features, then two fully connected layers of 1024 with ReLU."""

    def __init__(self, in_features, representation_size=1024, dtype="float32"):
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size, dtype=dtype)
        self.fc7 = nn.Linear(representation_size, representation_size, dtype=dtype)

    def forward(self, x):
        h, m6 = relu_forward(self.fc6(x.reshape(x.shape[0], -1)))
        h, m7 = relu_forward(self.fc7(h))
        self.save_for_backward((m6, m7, x.shape))
        return h

    def backward(self, dout):
        m6, m7, shape = self.saved()
        return self.fc6.backward(relu_backward(self.fc7.backward(relu_backward(dout, m7)), m6)).reshape(shape)


class FastRCNNPredictor(nn.Module):
    """``cls_score`` (K+1 logits, background first) and class-specific ``bbox_pred`` (4 (K+1) deltas)."""

    def __init__(self, in_features, num_classes, dtype="float32"):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes, dtype=dtype)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4, dtype=dtype)

    def forward(self, x):
        return self.cls_score(x), self.bbox_pred(x)

    def backward(self, d_logits, d_deltas):
        return self.cls_score.backward(d_logits) + self.bbox_pred.backward(d_deltas)


class MaskRCNNHeads(nn.Sequential):
    """The FCN mask head: ``len(layers)`` 3x3 convs with ReLU (4 x 256 in the paper), a Sequential of
    (conv, ReLU) pairs so that names are ``<k>.0.weight`` as in torchvision. He-normal init, zero bias."""

    def __init__(self, in_channels, layers=(256, 256, 256, 256), dtype="float32"):
        blocks, c = [], in_channels
        for width in layers:
            conv = nn.Conv2d(c, width, 3, padding=1, dtype=dtype)
            conv.weight.data = nn.init.kaiming_normal(conv.weight.shape, "fan_out", dtype)
            conv.bias.data[...] = 0
            blocks.append(nn.Sequential(conv, nn.ReLU()))
            c = width
        super().__init__(*blocks)
        self.out_channels = c


class MaskRCNNPredictor(nn.Module):
    """2x2 stride-2 deconvolution + ReLU (14 -> 28), then a 1x1 conv to one mask logit map per class."""

    def __init__(self, in_channels, dim_reduced, num_classes, dtype="float32"):
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2, dtype=dtype)
        self.relu = nn.ReLU()
        self.mask_fcn_logits = nn.Conv2d(dim_reduced, num_classes, 1, dtype=dtype)
        for m in (self.conv5_mask, self.mask_fcn_logits):
            m.weight.data = nn.init.kaiming_normal(m.weight.shape, "fan_out", dtype)
            m.bias.data[...] = 0

    def forward(self, x):
        return self.mask_fcn_logits(self.relu(self.conv5_mask(x)))

    def backward(self, dout):
        return self.conv5_mask.backward(self.relu.backward(self.mask_fcn_logits.backward(dout)))


class MaskMLPHead(nn.Module):
    """Table 2e's MLP mask head: flatten the (P, C, 14, 14) RoI features, then fully connected layers with
    ReLU (``fc1``, ``fc2``: 1024 -> 1024 in the paper) -> (P, 1024). Unlike the FCN it has no spatial
    layout: every output pixel is predicted from every input feature (paper §3, "Mask Representation")."""

    def __init__(self, in_features, layers=(1024, 1024), dtype="float32"):
        super().__init__()
        for k, width in enumerate(layers, start=1):
            self.add_module(f"fc{k}", nn.Linear(in_features, width, dtype=dtype))
            in_features = width
        self.out_features = in_features

    def forward(self, x):
        h, masks = x.reshape(x.shape[0], -1), []
        for fc in self.children():
            h, m = relu_forward(fc(h))
            masks.append(m)
        self.save_for_backward((masks, x.shape))
        return h

    def backward(self, dout):
        masks, shape = self.saved()
        for fc, m in zip(reversed(list(self.children())), reversed(masks)):
            dout = fc.backward(relu_backward(dout, m))
        return dout.reshape(shape)


class MaskMLPPredictor(nn.Module):
    """The MLP head's output layer ``mask_fc_logits``: (P, D) -> (P, K * m * m), viewed as (P, K, m, m)
    mask logits (Table 2e: fc to 80 x 28^2)."""

    def __init__(self, in_features, num_classes, resolution=28, dtype="float32"):
        super().__init__()
        self.mask_fc_logits = nn.Linear(in_features, num_classes * resolution * resolution, dtype=dtype)
        self.num_classes, self.resolution = num_classes, resolution

    def forward(self, x):
        return self.mask_fc_logits(x).reshape(x.shape[0], self.num_classes, self.resolution, self.resolution)

    def backward(self, dout):
        return self.mask_fc_logits.backward(dout.reshape(dout.shape[0], -1))


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
    """

    def __init__(self, box_head, box_predictor, mask_head=None, mask_predictor=None, box_pool_size=7,
                 mask_pool_size=14, sampling_ratio=2, roi_op="align", roi_mode="avg", aligned=False, impl="numpy",
                 fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=512, positive_fraction=0.25,
                 bbox_reg_weights=(10.0, 10.0, 5.0, 5.0), score_thresh=0.05, nms_thresh=0.5, detections_per_img=100,
                 box_loss_beta=1.0 / 9, mask_loss="sigmoid", mask_resolution=28):
        super().__init__()
        if mask_loss not in ("sigmoid", "softmax"):
            raise ValueError(f"mask_loss must be 'sigmoid' or 'softmax', got {mask_loss!r}")
        self.box_head, self.box_predictor = box_head, box_predictor
        self.mask_head, self.mask_predictor = mask_head, mask_predictor
        self.box_pool_size, self.mask_pool_size, self.sampling_ratio = box_pool_size, mask_pool_size, sampling_ratio
        self.roi_op, self.roi_mode, self.aligned, self.impl = roi_op, roi_mode, aligned, impl
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder(bbox_reg_weights)
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.box_loss_beta, self.mask_loss, self.mask_resolution = box_loss_beta, mask_loss, mask_resolution

    @property
    def has_mask(self):
        return self.mask_predictor is not None

    @property
    def shares_box_head(self):
        """The mask predictor reads the box head's features (C4) instead of having a head of its own."""
        return self.has_mask and self.mask_head is None

    def pool(self, features, rois, size, scales):
        return multiscale_roi_forward(features, rois, size, scales, self.sampling_ratio, self.aligned,
                                      op=self.roi_op, mode=self.roi_mode, impl=self.impl)

    # ---- training ------------------------------------------------------------------------------------
    def select_training_samples(self, proposals, targets, rng):
        """Add the GT boxes to the proposals, match (IoU >= 0.5 foreground), sample 512 at 25% foreground.

        Returns per image: sampled proposals (S, 4), their matched GT index (S,) and class label (S,;
        0 = background), and the regression targets (S, 4) for the matched GT boxes.
        """
        xp = get_xp(proposals[0])
        matched, labels = [], []
        props, gts = [], []
        for p, t in zip(proposals, targets):
            gt = t["boxes"].astype(p.dtype)
            p = xp.concatenate([p, gt], axis=0)
            props.append(p)
            gts.append(gt)
            if gt.shape[0] == 0:
                matched.append(xp.zeros(p.shape[0], np.int64))
                labels.append(xp.zeros(p.shape[0], np.int64))
                continue
            m = self.matcher(box_iou(gt, p))
            lab = xp.asarray(t["labels"], dtype=np.int64)[xp.maximum(m, 0)]
            lab[m == Matcher.BELOW_LOW_THRESHOLD] = 0
            lab[m == Matcher.BETWEEN_THRESHOLDS] = -1
            matched.append(xp.maximum(m, 0))
            labels.append(lab)
        pos, neg = self.sampler(labels, rng)
        out = []
        for p, m, lab, ps, ng, gt in zip(props, matched, labels, pos, neg, gts):
            keep = xp.nonzero(ps | ng)[0]
            p, m, lab = p[keep], m[keep], lab[keep]
            # (an image without objects has only background samples: their regression targets are unused)
            reg = self.box_coder.encode(gt[m], p) if gt.shape[0] else xp.zeros_like(p)
            out.append((p, m, lab, reg))
        return out

    def forward_train(self, features, proposals, image_sizes, targets, rng):
        """Losses ``loss_classifier``, ``loss_box_reg`` and (with a mask branch) ``loss_mask``.

        Args:
            features: FPN levels used for pooling, (N, C, H_l, W_l) finest first (P2..P5).
            proposals: per image (P_i, 4), constants. targets: per image {'boxes', 'labels', 'masks'}.
        """
        xp = get_xp(features[0])
        scales = infer_scales(features, image_sizes)
        samples = self.select_training_samples(proposals, targets, rng)
        boxes = [s[0] for s in samples]
        labels = xp.concatenate([s[2] for s in samples])
        reg_targets = xp.concatenate([s[3] for s in samples])
        pooled, box_pool_cache = self.pool(features, boxes_to_rois(boxes, xp), self.box_pool_size, scales)
        box_features = self.box_head(pooled)
        class_logits, box_regression = self.box_predictor(box_features)
        loss_cls, c_cls = softmax_cross_entropy_forward(class_logits, labels)
        pos = xp.nonzero(labels > 0)[0]
        K = class_logits.shape[1]
        deltas = box_regression.reshape(-1, K, 4)[pos, labels[pos]]
        loss_box, c_box = smooth_l1_forward(deltas, reg_targets[pos], self.box_loss_beta,
                                            normalizer=max(int(labels.shape[0]), 1))
        losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_box}
        cache = {"box": (box_pool_cache, c_cls, c_box, pos, labels, box_regression.shape)}
        if self.has_mask:
            # C4: the positives' rows of the box head's output (same order: images, then samples)
            shared = box_features[pos] if self.shares_box_head else None
            losses["loss_mask"], cache["mask"] = self._mask_loss(features, samples, targets, scales, shared)
        self.save_for_backward(cache)
        return losses

    def _mask_loss(self, features, samples, targets, scales, shared=None):
        xp = get_xp(features[0])
        pos = []
        for p, m, lab, _ in samples:
            keep = xp.nonzero(lab > 0)[0]
            pos.append((p[keep], m[keep], lab[keep]))
        pos_labels = xp.concatenate([lab for _, _, lab in pos])
        P = int(pos_labels.shape[0])
        if P == 0:  # no foreground RoI in the batch: the mask loss is 0 and sends no gradient
            return 0.0, None
        if shared is None:
            pooled, pool_cache = self.pool(features, boxes_to_rois([b for b, _, _ in pos], xp),
                                           self.mask_pool_size, scales)
            logits = self.mask_predictor(self.mask_head(pooled))                    # (P, K or 1, M, M)
        else:
            pool_cache, logits = None, self.mask_predictor(shared)
        # Mask targets: each positive RoI's GT mask, RoIAligned to the M x M grid of the logits (§3).
        M = logits.shape[-1]
        mask_targets = xp.concatenate([project_masks_on_boxes(t["masks"], b, m, M, impl=self.impl)
                                       for (b, m, _), t in zip(pos, targets)]).astype(features[0].dtype)
        if self.mask_loss == "softmax":  # Table 2b: one multinomial over classes per pixel, target class or bg
            K = logits.shape[1]
            flat = logits.transpose(0, 2, 3, 1).reshape(-1, K)
            pix_labels = (mask_targets >= 0.5).astype(np.int64) * pos_labels[:, None, None]
            loss, c = softmax_cross_entropy_forward(flat, pix_labels.reshape(-1))
        else:
            channel = pos_labels if logits.shape[1] > 1 else xp.zeros_like(pos_labels)
            loss, c = binary_cross_entropy_with_logits_forward(logits[xp.arange(P), channel], mask_targets)
        return loss, (pool_cache, c, logits.shape, pos_labels)

    def backward(self, scale: float = 1.0):
        """Gradient of ``scale * (sum of the RoI losses)`` for each pooled feature level."""
        cache = self.saved()
        box_pool_cache, c_cls, c_box, pos, labels, reg_shape = cache["box"]
        xp = get_xp(labels)
        d_logits = softmax_cross_entropy_backward(scale, c_cls)
        K = d_logits.shape[1]
        d_reg = xp.zeros((reg_shape[0], K, 4), d_logits.dtype)
        d_reg[pos, labels[pos]] = smooth_l1_backward(scale, c_box)
        d_box_features = self.box_predictor.backward(d_logits, d_reg.reshape(reg_shape))
        d_mask = None
        if cache.get("mask") is not None:
            pool_cache, c, shape, pos_labels = cache["mask"]
            P = shape[0]
            if self.mask_loss == "softmax":
                d_logits = softmax_cross_entropy_backward(scale, c)
                d_logits = d_logits.reshape(P, shape[2], shape[3], shape[1]).transpose(0, 3, 1, 2)
            else:
                d_logits = xp.zeros(shape, d_box_features.dtype)
                channel = pos_labels if shape[1] > 1 else xp.zeros_like(pos_labels)
                d_logits[xp.arange(P), channel] = binary_cross_entropy_with_logits_backward(scale, c)
            d_mask_features = self.mask_predictor.backward(d_logits)
            if self.shares_box_head:  # C4: both branches read the box head's output; their gradients add
                d_box_features[pos] += d_mask_features
            else:
                d_mask = multiscale_roi_backward(self.mask_head.backward(d_mask_features), pool_cache)
        elif self.has_mask:
            self._zero_mask_branch_grads()
        d_feats = multiscale_roi_backward(self.box_head.backward(d_box_features), box_pool_cache)
        if d_mask is not None:
            d_feats = [a + b for a, b in zip(d_feats, d_mask)]
        return d_feats

    def _zero_mask_branch_grads(self):
        """No positive RoI in the batch: L_mask is the constant 0, so its gradient for the mask branch's
        parameters is zero. Set explicitly (torchvision's ``mask_logits.sum() * 0``) so weight decay and
        momentum treat them as every other parameter; there are no RoIs to run the branch backward on."""
        branch = [self.mask_predictor] if self.shares_box_head else [self.mask_head, self.mask_predictor]
        for module in branch:
            for p in module.parameters():
                p.accumulate(get_xp(p.data).zeros_like(p.data))

    # ---- inference -------------------------------------------------------------------------------------
    def predict(self, features, proposals, image_sizes):
        """Detections per image: {'boxes' (D, 4), 'scores' (D,), 'labels' (D,), 'mask_probs' (D, M, M)} in the
        padded batch's coordinates (the caller maps them back to each original image)."""
        xp = get_xp(features[0])
        scales = infer_scales(features, image_sizes)
        pooled, _ = self.pool(features, boxes_to_rois(proposals, xp), self.box_pool_size, scales)
        class_logits, box_regression = self.box_predictor(self.box_head(pooled))
        K = class_logits.shape[1]
        probs = softmax(class_logits, axis=1)
        counts = [p.shape[0] for p in proposals]
        starts = np.cumsum([0] + counts)
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
        if self.has_mask:
            self._predict_masks(features, results, scales)
        return results

    def _predict_masks(self, features, results, scales):
        xp = get_xp(features[0])
        counts = [r["boxes"].shape[0] for r in results]
        if sum(counts) == 0:
            for r in results:
                r["mask_probs"] = xp.zeros((0, self.mask_resolution, self.mask_resolution), features[0].dtype)
            return
        pooled, _ = self.pool(features, boxes_to_rois([r["boxes"] for r in results], xp), self.mask_pool_size,
                              scales)
        head = self.box_head if self.shares_box_head else self.mask_head   # C4: res5 again, on the detections
        logits = self.mask_predictor(head(pooled))
        labels = xp.concatenate([r["labels"] for r in results])
        D = logits.shape[0]
        if self.mask_loss == "softmax":
            probs = softmax(logits, axis=1)[xp.arange(D), labels]
        else:
            channel = labels if logits.shape[1] > 1 else xp.zeros_like(labels)
            probs = 1.0 / (1.0 + xp.exp(-logits[xp.arange(D), channel]))
        starts = np.cumsum([0] + counts)
        for i, r in enumerate(results):
            r["mask_probs"] = probs[starts[i]:starts[i + 1]]
