"""Reference outputs of torchvision's Keypoint R-CNN parts for tests/test_keypoints.py.

    /work/torchvenv/bin/python tools/make_keypoint_fixtures.py     # torch 2.14.1, torchvision 0.29.1

Writes
  tests/fixtures/keypoint_upsample.npz  ``F.interpolate(scale_factor=2, mode='bilinear', align_corners=False,
                                        recompute_scale_factor=False)`` (what ``KeypointRCNNPredictor`` does) on
                                        random float32 inputs, and the input gradient for a random upstream one;
  tests/fixtures/keypoint_parity.npz    a small Keypoint R-CNN (minimaskrcnn.testing.keypoint_parity_config_kwargs,
                                        random weights from random_state_dict, none stored) run by torchvision
                                        on the parity images: the detections in the resized images, the keypoint
                                        logits on them, their decoded keypoints and scores, the final outputs;
  tests/fixtures/keypointrcnn_r50_fpn_keys.json  keypointrcnn_resnet50_fpn's state_dict keys and shapes.
"""
from __future__ import annotations

import os
import sys

import json

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models import resnet18
from torchvision.models.detection import KeypointRCNN, keypointrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
OUT = os.path.join(ROOT, "tests", "fixtures")

UPSAMPLE_SHAPES = [(2, 3, 28, 28), (1, 2, 5, 7), (1, 1, 1, 3)]


def upsample_fixtures() -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for i, shape in enumerate(UPSAMPLE_SHAPES):
        x = rng.standard_normal(shape).astype(np.float32)
        xt = torch.from_numpy(x).requires_grad_(True)
        y = F.interpolate(xt, scale_factor=2, mode="bilinear", align_corners=False, recompute_scale_factor=False)
        g = rng.standard_normal(tuple(y.shape)).astype(np.float32)
        y.backward(torch.from_numpy(g))
        out.update({f"x{i}": x, f"y{i}": y.detach().numpy(), f"g{i}": g, f"dx{i}": xt.grad.numpy()})
    return out


def parity_model():
    from minimaskrcnn.testing import keypoint_parity_config_kwargs, random_state_dict
    k = keypoint_parity_config_kwargs()
    c = k["fpn_channels"]
    body = resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = BackboneWithFPN(body, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                               [64, 128, 256, 512], c, extra_blocks=LastLevelMaxPool())
    model = KeypointRCNN(
        backbone, num_classes=None, min_size=k["min_size"], max_size=k["max_size"],
        rpn_pre_nms_top_n_train=k["rpn_pre_nms_top_n"][0], rpn_pre_nms_top_n_test=k["rpn_pre_nms_top_n"][1],
        rpn_post_nms_top_n_train=k["rpn_post_nms_top_n"][0], rpn_post_nms_top_n_test=k["rpn_post_nms_top_n"][1],
        box_detections_per_img=k["detections_per_img"],
        box_head=TwoMLPHead(c * 7 * 7, k["representation_size"]),
        box_predictor=FastRCNNPredictor(k["representation_size"], k["num_classes"]),
        keypoint_head=KeypointRCNNHeads(c, k["keypoint_layers"]),
        keypoint_predictor=KeypointRCNNPredictor(k["keypoint_layers"][-1], k["num_keypoints"]))
    shapes = {name: tuple(v.shape) for name, v in model.state_dict().items()}
    model.load_state_dict({n: torch.from_numpy(v) for n, v in random_state_dict(shapes, seed=0).items()})
    return model.eval(), shapes


@torch.no_grad()
def parity_fixtures() -> dict:
    from minimaskrcnn.testing import parity_images
    model, shapes = parity_model()
    images = parity_images()
    tensors = [torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in images]
    keys = sorted(shapes)
    out = {"state_keys": np.array(keys), "state_shapes": np.array([json.dumps(list(shapes[k])) for k in keys])}
    image_list, _ = model.transform(tensors)
    feats = model.backbone(image_list.tensors)
    proposals, _ = model.rpn(image_list, feats)
    dets, _ = model.roi_heads(feats, proposals, image_list.image_sizes)
    boxes = [d["boxes"] for d in dets]
    kp_feats = model.roi_heads.keypoint_roi_pool(feats, boxes, image_list.image_sizes)
    logits = model.roi_heads.keypoint_predictor(model.roi_heads.keypoint_head(kp_feats))
    start = 0
    for i, d in enumerate(dets):      # in the resized image, before mapping back; logits of 4 boxes per image
        out[f"det_boxes{i}"] = d["boxes"].numpy()
        out[f"det_keypoints{i}"] = d["keypoints"].numpy()
        out[f"det_keypoints_scores{i}"] = d["keypoints_scores"].numpy()
        out[f"logits{i}"] = logits[start:start + min(4, len(d["boxes"]))].numpy()
        start += len(d["boxes"])
    for i, d in enumerate(model(tensors)):
        for name in ("boxes", "scores", "keypoints", "keypoints_scores"):
            out[f"final_{name}{i}"] = d[name].numpy()
    out["versions"] = np.array(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    return out


def r50_keys() -> dict:
    model = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, trainable_backbone_layers=3)
    sd = model.state_dict()
    return {"keys": [[k, list(v.shape)] for k, v in sd.items()],
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "versions": f"torch {torch.__version__}, torchvision {torchvision.__version__}"}


def main():
    torch.manual_seed(0)
    np.savez_compressed(os.path.join(OUT, "keypoint_upsample.npz"), **upsample_fixtures())
    np.savez_compressed(os.path.join(OUT, "keypoint_parity.npz"), **parity_fixtures())
    with open(os.path.join(OUT, "keypointrcnn_r50_fpn_keys.json"), "w") as f:
        json.dump(r50_keys(), f)
    print("wrote keypoint_upsample.npz, keypoint_parity.npz, keypointrcnn_r50_fpn_keys.json in", OUT)


if __name__ == "__main__":
    main()
