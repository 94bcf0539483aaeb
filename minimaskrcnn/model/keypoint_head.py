"""The keypoint branch of Mask R-CNN (paper §5): a keypoint is "a one-hot mask", one m x m map per keypoint
type whose single pixel on is the keypoint's location.

With torchvision's names (``keypointrcnn_resnet50_fpn``): RoIAlign 14 x 14 on P2..P5 (in
:class:`~minimaskrcnn.model.roi_heads.RoIHeads`), ``keypoint_head`` = :class:`KeypointRCNNHeads`, a stack of
3 x 3 convs with ReLU (8 x 512 in the paper), and ``keypoint_predictor`` = :class:`KeypointRCNNPredictor`:
``kps_score_lowres``, a 4 x 4 stride-2 transposed conv to K maps (14 -> 28), then 2x bilinear upsampling
(28 -> 56: "relatively high resolution output, compared to masks, is required for keypoint-level
localization accuracy"). The targets (:func:`keypoints_to_heatmap`) and the decoding
(:func:`heatmaps_to_keypoints`) are torchvision's; the loss is ``keypointrcnn_loss`` in ``model/losses.py``.
"""
from __future__ import annotations

import numpy as np

from .. import nn
from ..backend import get_xp, to_numpy
from ..nn.resample import upsample_bilinear_backward, upsample_bilinear_forward
from ..ops.resize import resize_bicubic


class KeypointRCNNHeads(nn.Sequential):
    """``len(layers)`` 3 x 3 convs (padding 1), each followed by ReLU: children ``0`` (conv), ``1`` (ReLU),
    ``2`` (conv), ... as torchvision's (so names are ``keypoint_head.0.weight``, ``keypoint_head.2.weight``).
    He-normal (fan_out) weights, zero biases, as torchvision initialises them."""

    def __init__(self, in_channels, layers=(512,) * 8, dtype="float32"):
        modules, c = [], in_channels
        for width in layers:
            conv = nn.Conv2d(c, width, 3, padding=1, dtype=dtype)
            conv.weight.data = nn.init.kaiming_normal(conv.weight.shape, "fan_out", dtype)
            conv.bias.data[...] = 0
            modules += [conv, nn.ReLU()]
            c = width
        super().__init__(*modules)
        self.out_channels = c


class KeypointRCNNPredictor(nn.Module):
    """(R, C, 14, 14) -> (R, K, 56, 56) keypoint logits: ``kps_score_lowres`` (ConvTranspose2d 4 x 4, stride 2,
    padding 1: 14 -> 28), then bilinear x2 (align_corners=False, :func:`upsample_bilinear_forward`)."""

    def __init__(self, in_channels, num_keypoints, dtype="float32"):
        super().__init__()
        self.kps_score_lowres = nn.ConvTranspose2d(in_channels, num_keypoints, 4, stride=2, padding=1, dtype=dtype)
        self.kps_score_lowres.weight.data = nn.init.kaiming_normal(self.kps_score_lowres.weight.shape, "fan_out",
                                                                   dtype)
        self.kps_score_lowres.bias.data[...] = 0
        self.up_scale, self.out_channels = 2, num_keypoints

    def forward(self, x):
        out, cache = upsample_bilinear_forward(self.kps_score_lowres(x), self.up_scale)
        self.save_for_backward(cache)
        return out

    def backward(self, dout):
        return self.kps_score_lowres.backward(upsample_bilinear_backward(dout, self.saved()))


def keypoints_to_heatmap(keypoints, rois, heatmap_size: int):
    """Training targets: each keypoint's cell on its RoI's ``heatmap_size``-square grid (torchvision's rule).

    ``x_cell = floor((x - x1) * m / (x2 - x1))`` (likewise y); a keypoint exactly on the RoI's right (bottom)
    edge goes to the last cell; a keypoint is valid when it is labelled (v > 0: visible *or* occluded, as
    torchvision and Detectron train) and its cell lies inside the grid.

    Args:
        keypoints: (P, K, 3) ``[x, y, v]`` of each RoI's matched GT instance. rois: (P, 4) x1, y1, x2, y2.
    Returns:
        heatmaps: (P, K) int64 ``y_cell * m + x_cell`` (0 where invalid); valid: (P, K) bool.
    """
    xp = get_xp(rois)
    x1, y1 = rois[:, 0:1], rois[:, 1:2]
    scale_x = heatmap_size / (rois[:, 2:3] - x1)
    scale_y = heatmap_size / (rois[:, 3:4] - y1)
    x, y = keypoints[..., 0], keypoints[..., 1]
    x_cell = xp.floor((x - x1) * scale_x).astype(np.int64)
    y_cell = xp.floor((y - y1) * scale_y).astype(np.int64)
    x_cell[x == rois[:, 2:3]] = heatmap_size - 1
    y_cell[y == rois[:, 3:4]] = heatmap_size - 1
    valid = ((x_cell >= 0) & (y_cell >= 0) & (x_cell < heatmap_size) & (y_cell < heatmap_size)
             & (keypoints[..., 2] > 0))
    return (y_cell * heatmap_size + x_cell) * valid, valid


def heatmaps_to_keypoints(maps, rois):
    """Decode (D, K, m, m) keypoint logits on D boxes to (D, K, 3) keypoints ``[x, y, 1]`` and (D, K) scores.

    As torchvision (``heatmaps_to_keypoints``, Detectron's too): each RoI's maps are resized bicubically to
    ``ceil(w) x ceil(h)`` pixels (w, h the box's size, at least 1), the argmax cell ``(i, j)`` becomes the point
    ``(j + 0.5, i + 0.5)`` (the cell's centre, Heckbert's ``c = d + 0.5``) scaled by ``w / ceil(w)`` and
    shifted by the box's corner, and its score is the resized logit there. Ties go to the first cell in
    row-major order (torch's and NumPy's argmax agree). Runs on the host (one resize per RoI).
    """
    maps, rois = to_numpy(maps).astype(np.float32), to_numpy(rois).astype(np.float32)
    D, K = maps.shape[:2]
    keypoints = np.zeros((D, K, 3), np.float32)
    scores = np.zeros((D, K), np.float32)
    widths = np.maximum(rois[:, 2] - rois[:, 0], np.float32(1))
    heights = np.maximum(rois[:, 3] - rois[:, 1], np.float32(1))
    for i in range(D):
        w, h = int(np.ceil(widths[i])), int(np.ceil(heights[i]))
        roi_map = resize_bicubic(maps[i], h, w)                                   # (K, h, w)
        pos = roi_map.reshape(K, -1).argmax(axis=1)
        x_int, y_int = pos % w, pos // w
        keypoints[i, :, 0] = (x_int.astype(np.float32) + np.float32(0.5)) * (widths[i] / np.float32(w)) + rois[i, 0]
        keypoints[i, :, 1] = (y_int.astype(np.float32) + np.float32(0.5)) * (heights[i] / np.float32(h)) + rois[i, 1]
        keypoints[i, :, 2] = 1
        scores[i] = roi_map[np.arange(K), y_int, x_int]
    return keypoints, scores
