"""Reference outputs of torchvision's Mask R-CNN for the whole-model parity tests.

    pip install torch==2.14.1 torchvision==0.29.1     # tools only; CI never needs torch
    python tools/make_model_fixtures.py

Writes
  tests/fixtures/model_parity.npz   a small ResNet-18-FPN Mask R-CNN (32 FPN channels) with random weights made
                                    by minimaskrcnn.testing.random_state_dict (so no weights are stored), run
                                    by torchvision on two images: FPN levels, RPN logits/deltas, proposals,
                                    box-head outputs for those proposals, mask logits for the detections,
                                    and the final detections;
  tests/fixtures/r50_fpn_keys.json  torchvision's maskrcnn_resnet50_fpn (frozen BN, as with COCO weights):
                                    every state_dict key with its shape, and the parameter count.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import torchvision
from torchvision.models import resnet18, resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from minimaskrcnn.testing import parity_config_kwargs, parity_images, random_state_dict  # noqa: E402

OUT = os.path.join(ROOT, "tests", "fixtures")


def parity_model():
    k = parity_config_kwargs()
    c = k["fpn_channels"]
    body = resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = BackboneWithFPN(body, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                               [64, 128, 256, 512], c, extra_blocks=LastLevelMaxPool())
    model = MaskRCNN(
        backbone, num_classes=None, min_size=k["min_size"], max_size=k["max_size"],
        rpn_pre_nms_top_n_train=k["rpn_pre_nms_top_n"][0], rpn_pre_nms_top_n_test=k["rpn_pre_nms_top_n"][1],
        rpn_post_nms_top_n_train=k["rpn_post_nms_top_n"][0], rpn_post_nms_top_n_test=k["rpn_post_nms_top_n"][1],
        box_detections_per_img=k["detections_per_img"],
        box_head=TwoMLPHead(c * 7 * 7, k["representation_size"]),
        box_predictor=FastRCNNPredictor(k["representation_size"], k["num_classes"]),
        mask_head=MaskRCNNHeads(c, k["mask_layers"], 1),
        mask_predictor=MaskRCNNPredictor(k["mask_layers"][-1], k["mask_dim_reduced"], k["num_classes"]))
    shapes = {name: tuple(v.shape) for name, v in model.state_dict().items()}
    weights = random_state_dict(shapes, seed=0)
    model.load_state_dict({n: torch.from_numpy(v) for n, v in weights.items()})
    return model.eval(), shapes


@torch.no_grad()
def make_parity():
    model, shapes = parity_model()
    images = parity_images()
    tensors = [torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in images]
    keys = sorted(shapes)
    out = {"image0": images[0], "image1": images[1], "state_keys": np.array(keys),
           "state_shapes": np.array([json.dumps(shapes[k]) for k in keys])}

    image_list, _ = model.transform(tensors)
    out["image_sizes"] = np.array(image_list.image_sizes)
    feats = model.backbone(image_list.tensors)
    for i, f in enumerate(feats.values()):
        out[f"fpn{i}"] = f.numpy()
    objectness, deltas = model.rpn.head(list(feats.values()))
    for i, (o, d) in enumerate(zip(objectness, deltas)):
        out[f"rpn_logits{i}"] = o.numpy()
        out[f"rpn_deltas{i}"] = d.numpy()
    proposals, _ = model.rpn(image_list, feats)
    for i, p in enumerate(proposals):
        out[f"proposals{i}"] = p.numpy()
    box_feats = model.roi_heads.box_roi_pool(feats, proposals, image_list.image_sizes)
    class_logits, box_regression = model.roi_heads.box_predictor(model.roi_heads.box_head(box_feats))
    out["class_logits"] = class_logits.numpy()
    out["box_regression"] = box_regression.numpy()
    dets, _ = model.roi_heads(feats, proposals, image_list.image_sizes)
    for i, d in enumerate(dets):  # detections in the resized image, before mapping back
        out[f"det_boxes_resized{i}"] = d["boxes"].numpy()
    det_boxes = [d["boxes"] for d in dets]
    mask_feats = model.roi_heads.mask_roi_pool(feats, det_boxes, image_list.image_sizes)
    mask_logits = model.roi_heads.mask_predictor(model.roi_heads.mask_head(mask_feats))
    labels = torch.cat([d["labels"] for d in dets])
    out["mask_logits_selected"] = mask_logits[torch.arange(len(labels)), labels].numpy()

    final = model(tensors)
    rng = np.random.default_rng(0)
    for i, d in enumerate(final):
        out[f"final_boxes{i}"] = d["boxes"].numpy()
        out[f"final_labels{i}"] = d["labels"].numpy()
        out[f"final_scores{i}"] = d["scores"].numpy()
        soft = d["masks"][:, 0].numpy()                            # (D, H, W) pasted probabilities
        out[f"final_mask_bits{i}"] = np.packbits(soft >= 0.5, axis=-1)
        out[f"final_mask_sums{i}"] = soft.reshape(len(soft), -1).sum(axis=1)
        idx = rng.choice(soft[0].size, 400, replace=False) if len(soft) else np.zeros(0, np.int64)
        out[f"final_mask_sample_idx{i}"] = idx
        out[f"final_mask_samples{i}"] = soft.reshape(len(soft), -1)[:, idx]
    out["versions"] = np.array(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    path = os.path.join(OUT, "model_parity.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({os.path.getsize(path) / 1e3:.0f} kB); detections per image:",
          [len(d['scores']) for d in final])


def make_r50_keys():
    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 3)  # trainable_layers=3, as maskrcnn_resnet50_fpn with weights
    model = MaskRCNN(backbone, num_classes=91)
    sd = model.state_dict()
    info = {"keys": [[k, list(v.shape)] for k, v in sd.items()],
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "num_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "versions": f"torch {torch.__version__}, torchvision {torchvision.__version__}"}
    path = os.path.join(OUT, "r50_fpn_keys.json")
    with open(path, "w") as f:
        json.dump(info, f)
    print(f"wrote {path}: {len(sd)} keys, {info['num_parameters']} parameters ({info['num_trainable']} trainable)")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    make_parity()
    make_r50_keys()
