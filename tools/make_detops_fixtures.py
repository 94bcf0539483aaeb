"""Build the torchvision reference fixtures for the detection operators (tests/fixtures/detops_*.npz).

Run with an environment that has torch and torchvision (never needed by the tests themselves):

    /tmp/torchenv/bin/python tools/make_detops_fixtures.py

Each file holds seeded inputs and torchvision's outputs, plus the torch/torchvision versions, and is
loaded by the tests with ``np.load(..., allow_pickle=False)``.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.detection._utils import BoxCoder, Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes
from torchvision.ops import box_iou, clip_boxes_to_image, nms, remove_small_boxes
from torchvision.ops.boxes import _batched_nms_coordinate_trick, _batched_nms_vanilla

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from minimaskrcnn.testing import ANCHOR_CASES  # noqa: E402  (NumPy only: the cases the tests replay)
VERSIONS = {"torch_version": np.array(torch.__version__),
            "torchvision_version": np.array(torchvision.__version__)}


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def random_boxes(rng, n, size=100.0, min_wh=1.0, max_wh=40.0):
    """Boxes with corners in [0, size]: clustered so that many overlap."""
    xy = rng.uniform(0, size - max_wh, (n, 2))
    wh = rng.uniform(min_wh, max_wh, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def save(name, **arrays):
    path = os.path.join(OUT, name)
    np.savez_compressed(path, **arrays, **VERSIONS)
    print(f"{path}: {os.path.getsize(path) / 1024:.1f} KiB, {len(arrays)} arrays")


def boxes_fixture(rng):
    out = {}
    for dt in ("float32", "float64"):
        b1 = random_boxes(rng, 20).astype(dt)
        b2 = random_boxes(rng, 15).astype(dt)
        b2[3] = b1[5]  # an identical pair: IoU exactly 1
        b2[4] = [200, 200, 210, 220]  # disjoint from everything
        out[f"iou_boxes1_{dt}"], out[f"iou_boxes2_{dt}"] = b1, b2
        out[f"iou_{dt}"] = box_iou(t(b1), t(b2)).numpy()

        ref = random_boxes(rng, 50).astype(dt)
        prop = random_boxes(rng, 50).astype(dt)
        codes = rng.normal(0, 1, (50, 12)).astype(dt)
        codes[:5, 2::4] = 50.0  # far beyond bbox_xform_clip after dividing by any weight: clipped
        codes[5:10, 3::4] = 25.0
        out[f"coder_ref_{dt}"], out[f"coder_prop_{dt}"], out[f"coder_codes_{dt}"] = ref, prop, codes
        for wname, weights in (("rpn", (1.0, 1.0, 1.0, 1.0)), ("head", (10.0, 10.0, 5.0, 5.0))):
            coder = BoxCoder(weights)
            out[f"encode_{wname}_{dt}"] = coder.encode_single(t(ref), t(prop)).numpy()
            out[f"decode_{wname}_{dt}"] = coder.decode_single(t(codes), t(prop)).numpy()

    raw = rng.uniform(-30, 130, (30, 4)).astype(np.float32)
    raw = np.concatenate([np.minimum(raw[:, :2], raw[:, 2:]), np.maximum(raw[:, :2], raw[:, 2:])], axis=1)
    out["clip_in"] = raw
    out["clip_out"] = clip_boxes_to_image(t(raw), (90, 120)).numpy()
    out["small_keep"] = remove_small_boxes(t(raw), 20.0).numpy()
    save("detops_boxes.npz", **out)


def nms_fixture(rng):
    out = {}
    # Distinct scores, many overlaps.
    boxes = random_boxes(rng, 400).astype(np.float32)
    scores = rng.permutation(400).astype(np.float32) / 400 + rng.uniform(0, 1e-4, 400).astype(np.float32)
    assert len(np.unique(scores)) == 400
    out["boxes"], out["scores"] = boxes, scores
    for thr in (0.3, 0.5, 0.7):
        out[f"keep_{thr}"] = nms(t(boxes), t(scores), thr).numpy()
    out["boxes64"], out["scores64"] = boxes.astype(np.float64), scores.astype(np.float64)
    out["keep64_0.5"] = nms(t(out["boxes64"]), t(out["scores64"]), 0.5).numpy()

    # Tied scores, N <= 16: torch's CPU sort is stable (insertion sort) at this size, so this is
    # torchvision's own output with ties visited in index order.
    small = random_boxes(rng, 14, size=40.0, max_wh=25.0).astype(np.float32)
    small[7] = small[2]  # identical boxes with identical scores
    small_scores = np.array([3, 1, 2, 2, 3, 1, 2, 2, 1, 3, 2, 1, 2, 3], dtype=np.float32)
    out["tie_small_boxes"], out["tie_small_scores"] = small, small_scores
    out["tie_small_keep"] = nms(t(small), t(small_scores), 0.3).numpy()

    # Tied scores, N > 16: torch's sort is no longer stable, so the reference is torchvision's kernel run on
    # the boxes presented in (score descending, index ascending) order with strictly decreasing scores.
    big = random_boxes(rng, 300).astype(np.float32)
    big_scores = rng.integers(0, 8, 300).astype(np.float32) / 8
    order = np.lexsort((np.arange(300), -big_scores))
    ranks = np.arange(300, 0, -1).astype(np.float32)
    out["tie_big_boxes"], out["tie_big_scores"] = big, big_scores
    out["tie_big_keep"] = order[nms(t(big[order]), t(ranks), 0.5).numpy()]

    # batched_nms: the coordinate trick (torchvision's path for fewer than 1000 CPU boxes).
    idxs = rng.integers(0, 5, 400)
    out["batched_idxs"] = idxs
    out["batched_keep"] = _batched_nms_coordinate_trick(t(boxes), t(scores), t(idxs), 0.5).numpy()
    vanilla = _batched_nms_vanilla(t(boxes), t(scores), t(idxs), 0.5).numpy()
    print("batched_nms: coordinate trick == per-class loop:", np.array_equal(out["batched_keep"], vanilla))
    save("detops_nms.npz", **out)




def anchors_fixture():
    out = {}
    for name, (sizes, ratios, image, feats) in ANCHOR_CASES.items():
        gen = AnchorGenerator(sizes, ratios)
        maps = [torch.zeros(1, 1, h, w) for h, w in feats]
        anchors = gen(ImageList(torch.zeros(1, 3, *image), [image]), maps)[0]
        out[name] = anchors.numpy()
        out[f"{name}_cell"] = np.concatenate([a.numpy() for a in gen.cell_anchors])
    save("detops_anchors.npz", **out)


def matcher_fixture(rng):
    out = {}
    gt = random_boxes(rng, 6).astype(np.float32)
    preds = random_boxes(rng, 500).astype(np.float32)
    preds[100:105] = preds[7]  # duplicated predictions: tied best IoUs for some GT
    gt[5] = [300, 300, 310, 310]  # a GT far from every prediction (best IoU 0, ties everywhere)
    quality = box_iou(t(gt), t(preds))
    out["quality"] = quality.numpy()
    out["quality_no_far_gt"] = quality[:5].numpy()
    cases = (("rpn", (0.7, 0.3, True)), ("rpn_no_lq", (0.7, 0.3, False)), ("head", (0.5, 0.5, False)))
    for name, args in cases:
        out[f"matches_{name}"] = Matcher(*args)(quality.clone()).numpy()
        out[f"matches_{name}_no_far_gt"] = Matcher(*args)(quality[:5].clone()).numpy()
    save("detops_matcher.npz", **out)


def masks_fixture(rng):
    out = {}
    for dt in ("float32", "float64"):
        x = rng.uniform(0, 1, (2, 3, 7, 9)).astype(dt)
        out[f"resize_in_{dt}"] = x
        for oh, ow in ((14, 18), (5, 4), (7, 9), (1, 1), (20, 3), (30, 29)):
            out[f"resize_{oh}x{ow}_{dt}"] = F.interpolate(t(x), size=(oh, ow), mode="bilinear",
                                                          align_corners=False).numpy()

    # 1-D weights: the response to unit impulses is exactly the interpolation weight matrix (n_in, n_out).
    for n_in, n_out in ((30, 100), (30, 45), (9, 7), (7, 14), (28, 61), (30, 7), (30, 800)):
        eye = torch.eye(n_in)[:, None, None, :].expand(n_in, 1, 2, n_in).contiguous()
        out[f"weights_{n_in}_{n_out}"] = F.interpolate(eye, size=(2, n_out), mode="bilinear",
                                                       align_corners=False)[:, 0, 0].numpy()

    masks = rng.uniform(0, 1, (7, 28, 28)).astype(np.float32)
    boxes = np.array([[10.3, 5.2, 40.7, 30.1], [0, 0, 79, 59], [-5, -8, 20, 15], [60.5, 40.2, 95, 75],
                      [30, 30, 30.4, 30.6], [12, 40, 13, 41], [5.5, 6.5, 70.25, 18.75]], dtype=np.float32)
    out["paste_masks"], out["paste_boxes"] = masks, boxes
    out["paste_out"] = paste_masks_in_image(t(masks)[:, None], t(boxes), (60, 80))[:, 0].numpy()

    yy, xx = np.mgrid[0:40, 0:50]
    gt_masks = np.stack([(xx - 15) ** 2 + (yy - 12) ** 2 < 81, (xx > 20) & (xx < 45) & (yy > 18) & (yy < 36),
                         np.abs(xx - 25) + np.abs(yy - 20) < 12]).astype(np.uint8)
    roi_boxes = random_boxes(rng, 10, size=50.0, max_wh=30.0).astype(np.float32)
    roi_boxes[0] = [5.5, 2.5, 26.0, 22.0]
    matched = rng.integers(0, 3, 10)
    out["project_gt_masks"], out["project_boxes"], out["project_matched"] = gt_masks, roi_boxes, matched
    out["project_out"] = project_masks_on_boxes(t(gt_masks), t(roi_boxes), t(matched), 14).numpy()
    save("detops_masks.npz", **out)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    rng = np.random.default_rng(2017)
    boxes_fixture(rng)
    nms_fixture(rng)
    anchors_fixture()
    matcher_fixture(rng)
    masks_fixture(rng)
    assert math.isclose(BoxCoder((1, 1, 1, 1)).bbox_xform_clip, math.log(1000 / 16))


if __name__ == "__main__":
    main()
