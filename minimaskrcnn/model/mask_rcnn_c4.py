"""Mask R-CNN with a ResNet-C4 backbone and the res5 head (paper §3 "Network Architecture", Fig. 4 left;
Detectron's ``R-50-C4``).

Where the FPN model pools from a pyramid, the C4 model uses one feature map, the output of ResNet's
fourth stage (C4, stride 16), and runs the *fifth* stage on every RoI:

    image -> stem, res2, res3, res4 -> C4 (N, 1024, H/16, W/16)
    C4 -> RPN (15 anchors per location: sizes 32..512 x ratios 1:2, 1:1, 2:1) -> proposals
    RoIAlign 14x14 on C4 -> res5 (first block stride 2) -> (R, 2048, 7, 7)
         -> average pool -> (R, 2048) -> cls_score (K+1), bbox_pred (4 (K+1))            the box branch
         -> deconv 2x2/2 + ReLU -> (R, 256, 14, 14) -> 1x1 conv -> (R, K, 14, 14)        the mask branch

The two branches share res5: in training the mask predictor reads the res5 output of the positive
sampled RoIs (so res5 runs once, and its gradient is the sum of both branches'); at inference the 100
best detections are pooled again and run through res5 for their masks (§3.1). Training samples 64 RoIs
per image, testing keeps 300 proposals (§3.1; :func:`minimaskrcnn.config.r50_c4`).

The paper's Fig. 4 pools 7x7 RoIs and gives res5 stride 1; Detectron (and this file) pool 14x14 and keep
res5's stride 2, which also gives 7x7 outputs. As in torchvision's ResNet, res5's stride sits on the 3x3
conv of its first block.

Parameter layout (names as torchvision's ResNet and Mask R-CNN):
    ``backbone.body.{conv1, bn1, layer1, layer2, layer3}.*``   stem + res2..res4
    ``rpn.head.{conv.0.0, cls_logits, bbox_pred}.*``           3x3 conv on C4, A = 15 and 4A = 60 outputs
    ``roi_heads.box_head.layer4.*``                            res5
    ``roi_heads.box_predictor.{cls_score, bbox_pred}.*``       from the 2048-d average
    ``roi_heads.mask_predictor.{conv5_mask, mask_fcn_logits}.*``
"""
from __future__ import annotations

from .. import nn
from ..backend import get_xp
from ..config import MaskRCNNConfig
from .heads import FastRCNNPredictor, MaskRCNNHeads, MaskRCNNPredictor, TwoMLPHead
from .mask_rcnn import MaskRCNN, build_roi_heads, build_rpn, build_transform
from .resnet import BLOCKS, ResNet, make_stage


class ResNetC4Backbone(nn.Module):
    """``body``: ResNet stem + layer1..layer3. ``forward(images (N, 3, H, W))`` returns ``[C4]``, one
    (N, C, H/16, W/16) map in a list (the RPN and RoI heads take a list of levels); ``backward([dC4])``."""

    def __init__(self, body: ResNet):
        super().__init__()
        self.body = body
        self.out_channels = body.out_channels[-1]

    def forward(self, images):
        return self.body(images)

    def backward(self, grads):
        return self.body.backward(grads)


class Res5Head(nn.Module):
    """ResNet's fifth stage as the RoI head: (R, C4 channels, 14, 14) -> (R, 2048, 7, 7).

    ``layer4`` is built exactly as the backbone's would be (first block stride 2 with a projection
    shortcut), so ImageNet weights of ``layer4`` load into it unchanged."""

    def __init__(self, depth, in_channels, width, groups=1, width_per_group=64, norm="frozen_bn", dtype="float32"):
        super().__init__()
        block, counts = BLOCKS[depth]
        self.layer4, self.out_channels = make_stage(block, in_channels, width, counts[3], 2, groups, width_per_group,
                                                    norm, dtype)
        for _, m in self.named_modules():  # as ResNet: He-normal (fan_out) for every conv
            if isinstance(m, nn.Conv2d):
                m.weight.data = nn.init.kaiming_normal(m.weight.shape, "fan_out", dtype)

    def forward(self, x):
        return self.layer4(x)

    def backward(self, dout):
        return self.layer4.backward(dout)


class Res5BoxPredictor(FastRCNNPredictor):
    """Average-pool the (R, 2048, 7, 7) res5 output to (R, 2048), then ``cls_score`` and ``bbox_pred``."""

    def forward(self, x):
        self.save_for_backward(x.shape)
        return super().forward(x.mean(axis=(2, 3)))

    def backward(self, d_logits, d_deltas):
        """Returns a fresh (R, 2048, 7, 7) array: the mean spreads each gradient evenly over the 7x7 cells."""
        shape = self.saved()
        d = super().backward(d_logits, d_deltas) / (shape[2] * shape[3])
        return get_xp(d).broadcast_to(d[:, :, None, None], shape).copy()


def _one_map_backbone(c: MaskRCNNConfig, num_stages: int) -> ResNetC4Backbone:
    """The ResNet of the single-map models, its last stage's map alone: C4 (``num_stages=3``, stride 16) or C5
    (4, stride 32). The RPN runs on that one map, so ``c.anchor_sizes`` must hold one tuple of sizes."""
    name = f"C{num_stages + 1}"
    if len(c.anchor_sizes) != 1:
        raise ValueError(f"build_maskrcnn_{name.lower()}: the RPN runs on one feature map ({name}), so anchor_sizes "
                         f"must hold one tuple of sizes, e.g. ((32, 64, 128, 256, 512),); got {c.anchor_sizes!r}")
    nn.init.manual_seed(c.seed)
    body = ResNet(c.depth, c.groups, c.width_per_group, c.norm, c.stage_widths, c.stem_channels,
                  num_stages=num_stages, return_stages=(num_stages,), frozen_stages=c.frozen_stages, dtype=c.dtype)
    return ResNetC4Backbone(body)              # one map in a list (the wrapper serves C5 alike)


def build_maskrcnn_c4(config: MaskRCNNConfig) -> MaskRCNN:
    """Mask R-CNN, ResNet-C4 (Fig. 4 left): a :class:`~minimaskrcnn.model.mask_rcnn.MaskRCNN` whose parts
    differ (the plumbing, pre-processing, losses, the backward walk and post-processing, is the same).

    Sub-modules: ``backbone`` (``body``), ``rpn`` (``head``), ``roi_heads`` (``box_head`` = res5,
    ``box_predictor``, ``mask_predictor``; no ``mask_head``: the mask branch shares res5). The RPN and the
    RoI heads both read the one C4 map (spatial scale 1/16).
    """
    c = config
    if c.architecture != "c4":
        raise ValueError(f"build_maskrcnn_c4: architecture must be 'c4', got {c.architecture!r}")
    if c.mask_head != "fcn":
        raise ValueError(f"build_maskrcnn_c4: the C4 mask branch is res5 + deconv (mask_head='fcn'), "
                         f"got {c.mask_head!r}")
    if c.mask_pool_size != c.box_pool_size:
        raise ValueError(f"build_maskrcnn_c4: the box and mask branches share res5, so mask_pool_size "
                         f"({c.mask_pool_size}) must equal box_pool_size ({c.box_pool_size})")
    dt = c.dtype
    backbone = _one_map_backbone(c, num_stages=3)
    rpn = build_rpn(c, backbone.out_channels)
    res5 = Res5Head(c.depth, backbone.out_channels, c.stage_widths[3], c.groups, c.width_per_group, c.norm, dtype=dt)
    box_predictor = Res5BoxPredictor(res5.out_channels, c.num_classes, dtype=dt)
    mask_classes = 1 if c.class_agnostic_masks else c.num_classes
    mask_predictor = MaskRCNNPredictor(res5.out_channels, c.mask_dim_reduced, mask_classes, dtype=dt)
    if not c.mask_on:
        mask_predictor = None
    res5_side = (c.box_pool_size - 1) // 2 + 1          # the stride-2 first block: 14 -> 7
    roi_heads = build_roi_heads(c, res5, box_predictor, None, mask_predictor, mask_resolution=2 * res5_side,
                                featmap_levels=(0,))
    return MaskRCNN(backbone, rpn, roi_heads, build_transform(c), config=c)


def build_maskrcnn_c5(config: MaskRCNNConfig) -> MaskRCNN:
    """Mask R-CNN on ResNet's C5 alone (stride 32), the paper's Table 2d: all four stages, the RPN and the RoI
    pooling on the one C5 map, and "the same head as in Figure 4 (right), as the res5 head is not applicable"
    (the FPN heads: 2 fc box head, FCN mask head, 28x28 masks). With a stride of 32 pixels, RoIPool's rounding
    moves a RoI by up to 16 pixels: the ablation where alignment matters most.

    Sub-modules: ``backbone`` (``body``: stem + layer1..layer4), ``rpn``, ``roi_heads`` (as FPN's).
    """
    c = config
    if c.architecture != "c5":
        raise ValueError(f"build_maskrcnn_c5: architecture must be 'c5', got {c.architecture!r}")
    if c.mask_head != "fcn":
        raise ValueError(f"build_maskrcnn_c5: the C5 model has the FCN mask head (mask_head='fcn'), got "
                         f"{c.mask_head!r}")
    dt = c.dtype
    backbone = _one_map_backbone(c, num_stages=4)
    channels = backbone.out_channels
    rpn = build_rpn(c, channels)
    box_head = TwoMLPHead(channels * c.box_pool_size ** 2, c.representation_size, dtype=dt)
    box_predictor = FastRCNNPredictor(c.representation_size, c.num_classes, dtype=dt)
    mask_head = mask_predictor = None
    if c.mask_on:
        mask_head = MaskRCNNHeads(channels, c.mask_layers, dtype=dt)
        mask_predictor = MaskRCNNPredictor(mask_head.out_channels, c.mask_dim_reduced,
                                           1 if c.class_agnostic_masks else c.num_classes, dtype=dt)
    roi_heads = build_roi_heads(c, box_head, box_predictor, mask_head, mask_predictor,
                                mask_resolution=2 * c.mask_pool_size, featmap_levels=(0,))
    return MaskRCNN(backbone, rpn, roi_heads, build_transform(c), config=c)
