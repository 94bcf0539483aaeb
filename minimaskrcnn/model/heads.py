"""The sub-networks of the RoI heads (paper §3, Fig. 4 right): the box head and predictor, and the mask head
and predictor, with torchvision's names (``box_head.fc6/fc7``, ``box_predictor.cls_score/bbox_pred``,
``mask_head.<k>.0``, ``mask_predictor.conv5_mask/mask_fcn_logits``). Table 2e's MLP mask branch is
``mask_head.fc1/fc2`` + ``mask_predictor.mask_fc_logits``. :class:`~minimaskrcnn.model.roi_heads.RoIHeads`
pools the RoIs, runs these and computes the losses; C4's res5 head is in ``model/mask_rcnn_c4.py``.
"""
from __future__ import annotations

from .. import nn
from ..nn.activation import relu_backward, relu_forward


class TwoMLPHead(nn.Module):
    """Box head: flatten the 7x7 RoI features, then two fully connected layers of 1024 with ReLU."""

    def __init__(self, in_features, representation_size=1024, dtype="float32"):
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size, dtype=dtype)
        self.fc7 = nn.Linear(representation_size, representation_size, dtype=dtype)

    def forward(self, x):
        h, relu6 = relu_forward(self.fc6(x.reshape(x.shape[0], -1)))
        h, relu7 = relu_forward(self.fc7(h))
        self.save_for_backward((relu6, relu7, x.shape))
        return h

    def backward(self, dout):
        relu6, relu7, shape = self.saved()
        return self.fc6.backward(relu_backward(self.fc7.backward(relu_backward(dout, relu7)), relu6)).reshape(shape)


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
        h, relu_masks = x.reshape(x.shape[0], -1), []
        for fc in self.children():
            h, relu_mask = relu_forward(fc(h))
            relu_masks.append(relu_mask)
        self.save_for_backward((relu_masks, x.shape))
        return h

    def backward(self, dout):
        relu_masks, shape = self.saved()
        for fc, relu_mask in zip(reversed(list(self.children())), reversed(relu_masks)):
            dout = fc.backward(relu_backward(dout, relu_mask))
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
