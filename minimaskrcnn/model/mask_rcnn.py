"""Mask R-CNN assembled (paper §3, Fig. 4): image -> transform -> backbone -> FPN -> RPN -> RoI heads -> losses,
and the same road back for the gradients.

    model = build_model(config.tiny(num_classes=4))   # MaskRCNN(backbone, rpn, roi_heads, transform)
    losses = model.forward_train(images, targets)    # dict of floats
    model.backward()                                 # fills every Parameter.grad
    detections = model.predict(images)               # boxes, labels, scores, masks per image

``images`` are lists of (H, W, 3) uint8 RGB arrays; boxes and masks, in and out, are in those images'
pixel coordinates. Pre-processing (resize, normalise, pad to a multiple of 32) is torchvision's
(``model/transform.py``). :func:`build_maskrcnn_fpn` builds the parts a config describes; the C4 variant's
parts are built in ``model/mask_rcnn_c4.py``.
"""
from __future__ import annotations

import numpy as np

from .. import nn
from ..backend import get_xp, to_device
from ..config import MaskRCNNConfig
from ..ops.anchors import AnchorGenerator
from .fpn import BackboneWithFPN, FeaturePyramidNetwork
from .heads import FastRCNNPredictor, MaskMLPHead, MaskMLPPredictor, MaskRCNNHeads, MaskRCNNPredictor, TwoMLPHead
from .keypoint_head import KeypointRCNNHeads, KeypointRCNNPredictor
from .resnet import ResNet
from .roi_heads import RoIHeads
from .rpn import RegionProposalNetwork, RPNHead
from .transform import GeneralizedRCNNTransform, check_images, check_targets


class MaskRCNN(nn.Module):
    """The whole model, from its parts (torchvision's ``GeneralizedRCNN``). Sub-modules, with the names of
    torchvision's ``maskrcnn_resnet50_fpn``: ``transform``, ``backbone`` (``body`` + ``fpn``; C4: ``body``),
    ``rpn`` (``head``), ``roi_heads`` (``box_head``, ``box_predictor``, ``mask_head``, ``mask_predictor``).
    Each runs on its own, e.g. ``model.backbone(batch)``.

    Args:
        backbone: images (N, 3, H, W) -> list of feature maps, finest first, with ``backward(grads)``.
        rpn: a :class:`~minimaskrcnn.model.rpn.RegionProposalNetwork` over all of those maps.
        roi_heads: a :class:`~minimaskrcnn.model.roi_heads.RoIHeads`; it pools the maps its
            ``featmap_levels`` name.
        transform: a :class:`~minimaskrcnn.model.transform.GeneralizedRCNNTransform`.
        config: the config the parts were built from (kept with checkpoints), or None.
    """

    def __init__(self, backbone, rpn: RegionProposalNetwork, roi_heads: RoIHeads,
                 transform: GeneralizedRCNNTransform, config: MaskRCNNConfig | None = None):
        super().__init__()
        self.transform = transform
        self.backbone, self.rpn, self.roi_heads = backbone, rpn, roi_heads
        self.config = config
        stem = getattr(getattr(backbone, "body", None), "conv1", None)
        if stem is not None:   # nothing reads the image's gradient: skip the stem's (a 7x7 col2im per step)
            stem.input_grad = False
        # the samplers' random draws when forward_train is given no per-image streams (saved with checkpoints)
        self.rng = np.random.default_rng(config.seed if config is not None else 0)
        self.device = "cpu"
        self.comm = None     # data-parallel: the processes the batch is split over (engine/distributed.py)

    @property
    def num_classes(self) -> int:
        """K + 1: the classes of the box classifier, background (0) included."""
        return int(self.roi_heads.box_predictor.cls_score.weight.shape[0])

    # ---- devices -----------------------------------------------------------------------------------------
    def to(self, device: str) -> "MaskRCNN":
        super().to(device)
        self.device = device
        return self

    # ---- pre-processing ------------------------------------------------------------------------------------
    def preprocess(self, images, targets=None):
        """Check the inputs, then resize, normalise, pad and batch; resize the targets alike. Returns
        ``(batch (N, 3, H, W), image_sizes, original_sizes, targets)`` on the model's device."""
        check_images(images)
        if targets is not None:
            check_targets(targets, [im.shape[:2] for im in images], self.num_classes)
        batch, sizes, originals, targets = self.transform(images, targets)
        if targets is not None:
            targets = [{k: to_device(v, self.device) for k, v in t.items()} for t in targets]
        return to_device(batch, self.device), sizes, originals, targets

    # ---- training ----------------------------------------------------------------------------------------
    def forward_train(self, images, targets, proposals=None, rngs=None):
        """The five losses of one batch: the paper's ``L = L_cls + L_box + L_mask`` (§3) and the RPN's two.

        Args:
            images: list of (H, W, 3) uint8 RGB arrays.
            targets: per image {'boxes': (G, 4) xyxy pixels, 'labels': (G,) in 1..K, 'masks': (G, H, W) 0/1}.
            proposals: optional per-image proposals (in the resized image's pixels) to use instead of the
                RPN's; the RPN losses are still computed. Used by the gradient checks, where the discrete
                top-k/NMS must not move under tiny weight changes.
            rngs: one ``numpy.random.Generator`` per image for the anchor and RoI sampling (the trainer keys
                them by seed, iteration and the image's place in the batch: ``ops.sampler.image_streams``);
                None: every image draws from ``self.rng`` in turn.
        Returns:
            {'loss_objectness', 'loss_rpn_box_reg', 'loss_classifier', 'loss_box_reg', 'loss_mask'}: floats.
        """
        if not self.training:
            raise RuntimeError("forward_train needs training mode: call model.train() first")
        self.free_cache()
        rng = self.rng if rngs is None else list(rngs)
        if rngs is not None and len(rng) != len(images):
            raise ValueError(f"forward_train: {len(images)} images but {len(rng)} random streams")
        batch, sizes, _, targets = self.preprocess(images, targets)
        if self.comm is not None:
            batch = self.pad_like_whole_batch(batch)
        features = self.backbone(batch)
        rpn_proposals, rpn_losses = self.rpn(features, sizes, batch.shape[-2:], targets, rng)
        if proposals is not None:
            xp = get_xp(batch)
            rpn_proposals = [xp.asarray(p, dtype=batch.dtype) for p in proposals]
        self.last_proposals = rpn_proposals
        roi_losses = self.roi_heads.forward_train(features, rpn_proposals, sizes, targets, rng)
        losses = {**rpn_losses, **roi_losses}
        for name, value in losses.items():
            if not np.isfinite(value):
                raise FloatingPointError(f"{name} is {value}: training diverged (try a lower learning rate)")
        return losses

    def pad_like_whole_batch(self, batch):
        """Data-parallel: zero-pad this process's (n, 3, H, W) batch to the largest H and W over the processes,
        the size one process would pad the whole batch to (anchors and BN statistics depend on it)."""
        xp = get_xp(batch)
        H, W = (int(v) for v in self.comm.allreduce(np.array(batch.shape[-2:], np.int64), op="max"))
        if (H, W) == batch.shape[-2:]:
            return batch
        out = xp.zeros(batch.shape[:2] + (H, W), batch.dtype)
        out[..., :batch.shape[2], :batch.shape[3]] = batch
        return out

    def backward(self):
        """Back-propagate the sum of the losses of the last :meth:`forward_train` into every parameter's
        ``.grad`` (accumulating: call ``zero_grad()`` between steps). A trainable parameter the backward pass
        did not reach keeps ``grad = None`` (``SGD.step`` then refuses it by name): nothing fills it in."""
        d_roi = self.roi_heads.backward()                 # one per feature map; None where not pooled (P6)
        d_rpn = self.rpn.backward()                       # one per feature map
        self.backbone.backward([r if d is None else r + d for r, d in zip(d_rpn, d_roi, strict=True)])

    # ---- inference ---------------------------------------------------------------------------------------
    def predict(self, images, score_threshold: float | None = None, mask_threshold: float | None = 0.5):
        """Detections per image: {'boxes' (D, 4) float32, 'labels' (D,) int64, 'scores' (D,) float32,
        'masks' (D, H, W) bool (or float32 probabilities with ``mask_threshold=None``)}, as NumPy arrays
        in the input image's pixels, sorted by decreasing score."""
        was_training = self.training
        self.eval()
        try:
            batch, sizes, originals, _ = self.preprocess(images)
            features = self.backbone(batch)
            proposals, _ = self.rpn(features, sizes, batch.shape[-2:])
            detections = self.roi_heads.predict(features, proposals, sizes)
        finally:
            self.train(was_training)
        out = self.transform.postprocess(detections, sizes, originals, mask_threshold)
        if score_threshold is not None:
            for i, r in enumerate(out):
                keep = r["scores"] >= score_threshold
                out[i] = {k: v[keep] for k, v in r.items()}
        return out


# ---- builders: the parts a config describes -----------------------------------------------------------------
def build_transform(c: MaskRCNNConfig) -> GeneralizedRCNNTransform:
    return GeneralizedRCNNTransform(c.min_size, c.max_size, c.image_mean, c.image_std, c.size_divisible, c.dtype)


def build_rpn(c: MaskRCNNConfig, in_channels: int) -> RegionProposalNetwork:
    """The RPN a config describes, on features of ``in_channels``: anchors of ``c.anchor_sizes`` (one tuple
    of sizes per feature level) x ``c.aspect_ratios`` at every location, torchvision's head and defaults."""
    anchors = AnchorGenerator(c.anchor_sizes, (tuple(c.aspect_ratios),) * len(c.anchor_sizes))
    head = RPNHead(in_channels, anchors.num_anchors_per_location()[0], c.rpn_conv_depth, dtype=c.dtype)
    return RegionProposalNetwork(
        anchors, head, c.rpn_fg_iou_thresh, c.rpn_bg_iou_thresh, c.rpn_batch_size_per_image,
        c.rpn_positive_fraction, c.rpn_pre_nms_top_n, c.rpn_post_nms_top_n, c.rpn_nms_thresh,
        c.rpn_score_thresh)


def build_roi_heads(c: MaskRCNNConfig, box_head, box_predictor, mask_head, mask_predictor, mask_resolution: int,
                    featmap_levels, keypoint_head=None, keypoint_predictor=None) -> RoIHeads:
    """The RoI heads a config describes around the given branches: RoI pooling (op, mode, sizes, the feature
    levels pooled), box sampling, the test-time thresholds and the mask loss. ``mask_head`` None: the mask
    branch reuses ``box_head`` (C4's shared res5)."""
    return RoIHeads(
        box_head, box_predictor, mask_head, mask_predictor, c.box_pool_size, c.mask_pool_size, c.sampling_ratio,
        c.roi_op, c.roi_mode, c.roi_aligned, c.roi_impl, batch_size_per_image=c.box_batch_size_per_image,
        positive_fraction=c.box_positive_fraction, score_thresh=c.box_score_thresh, nms_thresh=c.box_nms_thresh,
        detections_per_img=c.detections_per_img, mask_loss=c.mask_loss, mask_resolution=mask_resolution,
        featmap_levels=featmap_levels, keypoint_head=keypoint_head, keypoint_predictor=keypoint_predictor,
        keypoint_pool_size=c.keypoint_pool_size)


def build_maskrcnn_fpn(config: MaskRCNNConfig) -> MaskRCNN:
    """Mask R-CNN with a ResNet-FPN backbone (Fig. 4 right): the RPN on P2..P6, the RoI heads on P2..P5.
    Parts are built in a fixed order from ``config.seed``, so a config always gives the same weights."""
    c = config
    if c.architecture != "fpn":
        raise ValueError(f"build_maskrcnn_fpn: architecture must be 'fpn', got {c.architecture!r}")
    if c.mask_head not in ("fcn", "mlp"):
        raise ValueError(f"mask_head must be 'fcn' or 'mlp', got {c.mask_head!r}")
    dt = c.dtype
    nn.init.manual_seed(c.seed)
    body = ResNet(c.depth, c.groups, c.width_per_group, c.norm, c.stage_widths, c.stem_channels,
                  frozen_stages=c.frozen_stages, dtype=dt)
    backbone = BackboneWithFPN(body, FeaturePyramidNetwork(body.out_channels, c.fpn_channels, norm=c.fpn_norm,
                                                           dtype=dt))
    rpn = build_rpn(c, c.fpn_channels)
    box_head = TwoMLPHead(c.fpn_channels * c.box_pool_size ** 2, c.representation_size, dtype=dt)
    box_predictor = FastRCNNPredictor(c.representation_size, c.num_classes, dtype=dt)
    mask_classes = 1 if c.class_agnostic_masks else c.num_classes
    if c.mask_head == "fcn":
        mask_head = MaskRCNNHeads(c.fpn_channels, c.mask_layers, dtype=dt)
        mask_predictor = MaskRCNNPredictor(mask_head.out_channels, c.mask_dim_reduced, mask_classes, dtype=dt)
    else:  # Table 2e: fc 1024 -> fc 1024 -> K x 28 x 28 on the flattened 14x14 RoI
        mask_head = MaskMLPHead(c.fpn_channels * c.mask_pool_size ** 2, (c.representation_size,) * 2, dtype=dt)
        mask_predictor = MaskMLPPredictor(mask_head.out_features, mask_classes, 2 * c.mask_pool_size, dtype=dt)
    if not c.mask_on:
        mask_head = mask_predictor = None
    keypoint_head = keypoint_predictor = None
    if c.keypoint_on:   # paper §5, torchvision's KeypointRCNNHeads / KeypointRCNNPredictor
        keypoint_head = KeypointRCNNHeads(c.fpn_channels, c.keypoint_layers, dtype=dt)
        keypoint_predictor = KeypointRCNNPredictor(keypoint_head.out_channels, c.num_keypoints, dtype=dt)
    pooled = tuple(range(len(body.out_channels)))    # P2..P5: one per ResNet stage (P6 only serves the RPN)
    roi_heads = build_roi_heads(c, box_head, box_predictor, mask_head, mask_predictor,
                                mask_resolution=2 * c.mask_pool_size, featmap_levels=pooled,
                                keypoint_head=keypoint_head, keypoint_predictor=keypoint_predictor)
    return MaskRCNN(backbone, rpn, roi_heads, build_transform(c), config=c)
