"""Mask R-CNN assembled (paper §3, Fig. 4): image -> backbone -> FPN -> RPN -> RoI heads -> losses, and the
same road back for the gradients.

    model = MaskRCNN(config.tiny(num_classes=4))
    losses = model.forward_train(images, targets)    # dict of floats
    model.backward()                                 # fills every Parameter.grad
    detections = model.predict(images)               # boxes, labels, scores, masks per image

``images`` are lists of (H, W, 3) uint8 RGB arrays; boxes and masks, in and out, are in those images'
pixel coordinates. Pre-processing (resize, normalise, pad to a multiple of 32) is torchvision's.
"""
from __future__ import annotations

import numpy as np

from .. import nn
from ..backend import get_xp, to_device, to_numpy
from ..config import MaskRCNNConfig
from ..data.transforms import postprocess_boxes, preprocess_batch, resize_targets
from ..ops.anchors import AnchorGenerator
from ..ops.masks import paste_masks_in_image
from .fpn import BackboneWithFPN, FeaturePyramidNetwork
from .resnet import ResNet
from .roi_heads import (FastRCNNPredictor, MaskMLPHead, MaskMLPPredictor, MaskRCNNHeads, MaskRCNNPredictor, RoIHeads,
                        TwoMLPHead)
from .rpn import RegionProposalNetwork, RPNHead


class MaskRCNN(nn.Module):
    """The whole model. Sub-modules (names as torchvision's ``maskrcnn_resnet50_fpn``):
    ``backbone`` (``body`` + ``fpn``), ``rpn`` (``head``), ``roi_heads`` (``box_head``, ``box_predictor``,
    ``mask_head``, ``mask_predictor``). Each runs on its own, e.g. ``model.backbone(batch)``."""

    def __init__(self, config: MaskRCNNConfig):
        super().__init__()
        if config.architecture != "fpn":
            raise ValueError(f"MaskRCNN: architecture {config.architecture!r} is not built by this class")
        c = config
        self.config = c
        dt = c.dtype
        nn.init.manual_seed(c.seed)
        body = ResNet(c.depth, c.groups, c.width_per_group, c.norm, c.stage_widths, c.stem_channels,
                      frozen_stages=c.frozen_stages, dtype=dt)
        self.backbone = BackboneWithFPN(body, FeaturePyramidNetwork(body.out_channels, c.fpn_channels,
                                                                    norm=c.fpn_norm, dtype=dt))
        self.rpn = build_rpn(c, c.fpn_channels)
        box_head = TwoMLPHead(c.fpn_channels * c.box_pool_size ** 2, c.representation_size, dtype=dt)
        box_predictor = FastRCNNPredictor(c.representation_size, c.num_classes, dtype=dt)
        mask_classes = 1 if c.class_agnostic_masks else c.num_classes
        if c.mask_head == "fcn":
            mask_head = MaskRCNNHeads(c.fpn_channels, c.mask_layers, dtype=dt)
            mask_predictor = MaskRCNNPredictor(mask_head.out_channels, c.mask_dim_reduced, mask_classes, dtype=dt)
        elif c.mask_head == "mlp":  # Table 2e: fc 1024 -> fc 1024 -> K x 28 x 28 on the flattened 14x14 RoI
            mask_head = MaskMLPHead(c.fpn_channels * c.mask_pool_size ** 2, (c.representation_size,) * 2, dtype=dt)
            mask_predictor = MaskMLPPredictor(mask_head.out_features, mask_classes, 2 * c.mask_pool_size, dtype=dt)
        else:
            raise ValueError(f"mask_head must be 'fcn' or 'mlp', got {c.mask_head!r}")
        self.roi_heads = build_roi_heads(c, box_head, box_predictor, mask_head, mask_predictor,
                                         mask_resolution=2 * c.mask_pool_size)
        self.rng = np.random.default_rng(c.seed)  # the samplers' random draws (saved with checkpoints)
        self.device = "cpu"

    def roi_features(self, feats):
        """The feature maps the RoI heads pool from: P2..P5 (P6 only serves the RPN's 512 px anchors)."""
        return feats[:-1]

    # ---- devices -----------------------------------------------------------------------------------------
    def to(self, device: str) -> "MaskRCNN":
        super().to(device)
        self.device = device
        return self

    # ---- pre-processing ------------------------------------------------------------------------------------
    def preprocess(self, images, targets=None):
        """Resize, normalise, pad and batch; resize the targets alike. Returns
        ``(batch (N, 3, H, W), image_sizes, original_sizes, targets)`` on the model's device."""
        check_images(images)
        c = self.config
        batch, sizes, originals = preprocess_batch(images, c.min_size, c.max_size, c.image_mean, c.image_std,
                                                   c.size_divisible)
        batch = batch.astype(c.dtype, copy=False)
        if targets is not None:
            check_targets(targets, originals, c.num_classes)
            targets = resize_targets(targets, originals, sizes)
            targets = [{"boxes": to_device(np.asarray(t["boxes"], c.dtype), self.device),
                        "labels": to_device(np.asarray(t["labels"], np.int64), self.device),
                        "masks": to_device(np.asarray(t["masks"], np.uint8), self.device)} for t in targets]
        return to_device(batch, self.device), sizes, originals, targets

    # ---- training ----------------------------------------------------------------------------------------
    def forward_train(self, images, targets, proposals=None):
        """The four-part loss of one batch (paper §3: ``L = L_cls + L_box + L_mask``, plus the RPN's two).

        Args:
            images: list of (H, W, 3) uint8 RGB arrays.
            targets: per image {'boxes': (G, 4) xyxy pixels, 'labels': (G,) in 1..K, 'masks': (G, H, W)}.
            proposals: optional per-image proposals (in the resized image's pixels) to use instead of the
                RPN's; the RPN losses are still computed. Used by the gradient checks, where the discrete
                top-k/NMS must not move under tiny weight changes.
        Returns:
            {'loss_objectness', 'loss_rpn_box_reg', 'loss_classifier', 'loss_box_reg', 'loss_mask'}: floats.
        """
        if not self.training:
            raise RuntimeError("forward_train needs training mode: call model.train() first")
        self.free_cache()
        batch, sizes, _, targets = self.preprocess(images, targets)
        feats = self.backbone(batch)
        rpn_proposals, rpn_losses = self.rpn(feats, sizes, batch.shape[-2:], targets, self.rng)
        if proposals is not None:
            xp = get_xp(batch)
            rpn_proposals = [xp.asarray(p, dtype=batch.dtype) for p in proposals]
        self.last_proposals = rpn_proposals
        roi_losses = self.roi_heads.forward_train(self.roi_features(feats), rpn_proposals, sizes, targets, self.rng)
        self.save_for_backward(len(feats))
        losses = {**rpn_losses, **roi_losses}
        for name, value in losses.items():
            if not np.isfinite(value):
                raise FloatingPointError(f"{name} is {value}: training diverged (try a lower learning rate)")
        return losses

    def backward(self):
        """Back-propagate the sum of the losses of the last :meth:`forward_train` into every parameter's
        ``.grad`` (accumulating: call ``zero_grad()`` between steps). A trainable parameter the backward pass
        did not reach keeps ``grad = None`` (``SGD.step`` then refuses it by name): nothing fills it in."""
        n_levels = self.saved()
        d_roi = self.roi_heads.backward()                 # P2..P5 (the levels of roi_features)
        d_rpn = self.rpn.backward()                       # P2..P6
        grads = [d_rpn[k] + d_roi[k] if k < len(d_roi) else d_rpn[k] for k in range(n_levels)]
        self.backbone.backward(grads)

    # ---- inference ---------------------------------------------------------------------------------------
    def predict(self, images, score_threshold: float | None = None, mask_threshold: float | None = 0.5):
        """Detections per image: {'boxes' (D, 4) float32, 'labels' (D,) int64, 'scores' (D,) float32,
        'masks' (D, H, W) bool (or float32 probabilities with ``mask_threshold=None``)}, as NumPy arrays
        in the input image's pixels, sorted by decreasing score."""
        was_training = self.training
        self.eval()
        try:
            batch, sizes, originals, _ = self.preprocess(images)
            feats = self.backbone(batch)
            proposals, _ = self.rpn(feats, sizes, batch.shape[-2:])
            dets = self.roi_heads.predict(self.roi_features(feats), proposals, sizes)
        finally:
            self.train(was_training)
        out = []
        for d, size, orig in zip(dets, sizes, originals):
            boxes = postprocess_boxes(to_numpy(d["boxes"]), size, orig)
            r = {"boxes": boxes, "labels": to_numpy(d["labels"]).astype(np.int64),
                 "scores": to_numpy(d["scores"]).astype(np.float32)}
            if "mask_probs" in d:
                # soft probabilities, or binarised while pasting (``prob > threshold``; the paper's 0.5)
                r["masks"] = paste_masks_in_image(to_numpy(d["mask_probs"]).astype(np.float32), boxes, orig,
                                                  threshold=mask_threshold)
            if score_threshold is not None:
                keep = r["scores"] >= score_threshold
                r = {k: v[keep] for k, v in r.items()}
            out.append(r)
        return out


def build_rpn(c: MaskRCNNConfig, in_channels: int) -> RegionProposalNetwork:
    """The RPN a config describes, on features of ``in_channels``: anchors of ``c.anchor_sizes`` (one tuple
    of sizes per feature level) x ``c.aspect_ratios`` at every location, torchvision's head and defaults."""
    anchors = AnchorGenerator(c.anchor_sizes, (tuple(c.aspect_ratios),) * len(c.anchor_sizes))
    head = RPNHead(in_channels, anchors.num_anchors_per_location()[0], c.rpn_conv_depth, dtype=c.dtype)
    return RegionProposalNetwork(
        anchors, head, c.rpn_fg_iou_thresh, c.rpn_bg_iou_thresh, c.rpn_batch_size_per_image,
        c.rpn_positive_fraction, c.rpn_pre_nms_top_n, c.rpn_post_nms_top_n, c.rpn_nms_thresh,
        c.rpn_score_thresh)


def build_roi_heads(c: MaskRCNNConfig, box_head, box_predictor, mask_head, mask_predictor,
                    mask_resolution: int) -> RoIHeads:
    """The RoI heads a config describes around the given branches: RoI pooling (op, mode, sizes), box
    sampling, the test-time thresholds and the mask loss. ``mask_head`` None: the mask branch reuses
    ``box_head`` (C4's shared res5)."""
    return RoIHeads(
        box_head, box_predictor, mask_head, mask_predictor, c.box_pool_size, c.mask_pool_size, c.sampling_ratio,
        c.roi_op, c.roi_mode, c.roi_aligned, c.roi_impl, batch_size_per_image=c.box_batch_size_per_image,
        positive_fraction=c.box_positive_fraction, score_thresh=c.box_score_thresh, nms_thresh=c.box_nms_thresh,
        detections_per_img=c.detections_per_img, mask_loss=c.mask_loss, mask_resolution=mask_resolution)


def check_images(images):
    """A list of (H, W, 3) uint8 RGB arrays, none of them empty; a clear ValueError otherwise."""
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise ValueError("images must be a non-empty list of (H, W, 3) uint8 RGB arrays")
    for i, im in enumerate(images):
        if not isinstance(im, np.ndarray):
            raise ValueError(f"images[{i}] must be a NumPy array, got {type(im).__name__}")
        if im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"images[{i}] must have shape (H, W, 3), got {im.shape}")
        if im.shape[0] == 0 or im.shape[1] == 0:
            raise ValueError(f"images[{i}] is empty (shape {im.shape})")
        if im.dtype != np.uint8:
            raise ValueError(f"images[{i}] must be uint8 RGB (0..255), got dtype {im.dtype}")


def check_targets(targets, sizes, num_classes):
    """Boxes (G, 4) with x2 > x1, y2 > y1 and finite; labels in 1..num_classes-1; masks (G, H, W) of 0/1."""
    if len(targets) != len(sizes):
        raise ValueError(f"got {len(targets)} targets for {len(sizes)} images")
    for i, (t, (h, w)) in enumerate(zip(targets, sizes)):
        missing = [k for k in ("boxes", "labels", "masks") if k not in t]
        if missing:
            raise ValueError(f"targets[{i}] lacks {', '.join(missing)}")
        b = np.asarray(to_numpy(t["boxes"]), np.float64)
        g = b.shape[0] if b.ndim == 2 else -1
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"targets[{i}]['boxes'] must have shape (G, 4), got {b.shape}")
        if not np.all(np.isfinite(b)):
            raise ValueError(f"targets[{i}]['boxes'] has NaN or infinite coordinates")
        bad = np.nonzero((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]))[0]
        if bad.size:
            raise ValueError(f"targets[{i}]['boxes'][{int(bad[0])}] = {b[bad[0]].tolist()} is degenerate "
                             "(needs x2 > x1 and y2 > y1)")
        lab = np.asarray(to_numpy(t["labels"]))
        if lab.shape != (g,) or not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"targets[{i}]['labels'] must be ({g},) integers, got {lab.dtype} {lab.shape}")
        if g and (lab.min() < 1 or lab.max() >= num_classes):
            raise ValueError(f"targets[{i}]['labels'] must lie in 1..{num_classes - 1} (0 is background), "
                             f"got {lab.min()}..{lab.max()}")
        m = to_numpy(t["masks"])
        if m.shape != (g, h, w):
            raise ValueError(f"targets[{i}]['masks'] must have shape {(g, h, w)} (one mask per box, image size), "
                             f"got {m.shape}")
        check_binary_masks(m, f"targets[{i}]['masks']")


def check_binary_masks(masks, name):
    """Masks must be bool, or integers / floats that are all 0 or 1 (they are stored as uint8, so 0.99 or
    256 would silently become 0): a ValueError naming ``name`` and a few of the bad values otherwise."""
    if masks.dtype == bool:
        return
    if not (np.issubdtype(masks.dtype, np.integer) or np.issubdtype(masks.dtype, np.floating)):
        raise ValueError(f"{name} must be bool or 0/1 integers or floats, got dtype {masks.dtype}")
    bad = masks[(masks != 0) & (masks != 1)]
    if bad.size:
        values = ", ".join(str(v) for v in np.unique(bad)[:5].tolist())
        raise ValueError(f"{name} must hold only 0 and 1 (or be bool), got {bad.size} other values, e.g. {values}"
                         " (threshold soft masks, e.g. masks >= 0.5, or divide 0/255 masks by 255)")

