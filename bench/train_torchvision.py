"""Same budget, same data: torchvision's Mask R-CNN trained with our ``tiny`` configuration, for comparison.

    pip install torch==2.14.1 torchvision==0.29.1        # bench only; never needed by the package or CI
    python bench/train_torchvision.py --data data/shapes --iters 2800 --eval-at 2400 2800

Builds torchvision's ``MaskRCNN`` with every architectural and training setting of
``minimaskrcnn.config.tiny`` (ResNet-18 layout with the same narrow stages and trainable BN, FPN width,
anchors, RPN and RoI sampling sizes, head widths, 128 px input, SGD with the same warm-up and steps), feeds it
exactly the batches and flips our trainer sees (our resumable ``DataLoader`` with the same seed), and scores
it with our COCO evaluator. Prints JSON lines: AP at each ``--eval-at`` iteration and seconds per iteration.
Compare with ``python -m minimaskrcnn train --data ... --config tiny --iters N --eval-every ...`` or the demo.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.resnet import BasicBlock
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from minimaskrcnn import config as configs  # noqa: E402
from minimaskrcnn.data.coco import CocoDataset  # noqa: E402
from minimaskrcnn.data.transforms import DataLoader  # noqa: E402
from minimaskrcnn.engine.evaluator import evaluate_predictions  # noqa: E402
from minimaskrcnn.nn.optim import WarmupMultiStepLR  # noqa: E402


class NarrowResNet(nn.Module):
    """torchvision's ResNet layout (BasicBlock, ResNet-18 counts) with the tiny config's stage widths."""

    def __init__(self, widths, stem, norm_layer):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = norm_layer(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = stem
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or inplanes != w:
                down = nn.Sequential(nn.Conv2d(inplanes, w, 1, stride, bias=False), norm_layer(w))
            blocks = [BasicBlock(inplanes, w, stride, down, norm_layer=norm_layer),
                      BasicBlock(w, w, norm_layer=norm_layer)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = w
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def build(cfg):
    if cfg.depth != 18 or cfg.norm != "bn" or cfg.frozen_stages != 0:
        raise SystemExit("this script mirrors ResNet-18-layout configs with trainable BN (the tiny config)")
    body = NarrowResNet(cfg.stage_widths, cfg.stem_channels, nn.BatchNorm2d)
    backbone = BackboneWithFPN(body, {f"layer{i}": str(i - 1) for i in range(1, 5)}, list(cfg.stage_widths),
                               cfg.fpn_channels, extra_blocks=LastLevelMaxPool())
    c = cfg.fpn_channels
    return MaskRCNN(
        backbone, num_classes=None, min_size=cfg.min_size, max_size=cfg.max_size,
        rpn_anchor_generator=AnchorGenerator(cfg.anchor_sizes, (tuple(cfg.aspect_ratios),) * len(cfg.anchor_sizes)),
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n[0], rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n[1],
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n[0], rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n[1],
        rpn_nms_thresh=cfg.rpn_nms_thresh, rpn_fg_iou_thresh=cfg.rpn_fg_iou_thresh,
        rpn_bg_iou_thresh=cfg.rpn_bg_iou_thresh, rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        rpn_positive_fraction=cfg.rpn_positive_fraction,
        box_score_thresh=cfg.box_score_thresh, box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.detections_per_img, box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_positive_fraction=cfg.box_positive_fraction,
        box_head=TwoMLPHead(c * cfg.box_pool_size ** 2, cfg.representation_size),
        box_predictor=FastRCNNPredictor(cfg.representation_size, cfg.num_classes),
        mask_head=MaskRCNNHeads(c, cfg.mask_layers, 1),
        mask_predictor=MaskRCNNPredictor(cfg.mask_layers[-1], cfg.mask_dim_reduced, cfg.num_classes))


def to_torch(images, targets):
    ims = [torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255 for im in images]  # (a writable copy)
    tgs = [{"boxes": torch.from_numpy(t["boxes"]).float(), "labels": torch.from_numpy(t["labels"]),
            "masks": torch.from_numpy(t["masks"])} for t in targets]
    return ims, tgs


@torch.no_grad()
def evaluate(model, dataset, batch_size=8):
    model.eval()
    preds = []
    for start in range(0, len(dataset), batch_size):
        idx = range(start, min(start + batch_size, len(dataset)))
        ims = [torch.from_numpy(dataset.load_image(i)).permute(2, 0, 1).float() / 255 for i in idx]
        preds += [{"boxes": out["boxes"].numpy(), "labels": out["labels"].numpy(), "scores": out["scores"].numpy(),
                   "masks": out["masks"][:, 0].numpy() > 0.5} for out in model(ims)]
    model.train()
    m, _ = evaluate_predictions(dataset, preds, verbose=False)
    return {t: round(m[t]["AP"], 4) for t in m} | {f"{t}_AP50": round(m[t]["AP50"], 4) for t in m}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--iters", type=int, default=None, help="default: the tiny config's max_iters")
    ap.add_argument("--eval-at", type=int, nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train, val = CocoDataset(args.data, "train"), CocoDataset(args.data, "val")
    cfg = configs.tiny(num_classes=len(train.class_names))
    iters = cfg.max_iters if args.iters is None else args.iters
    eval_at = set(args.eval_at or [iters])
    model = build(cfg).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    schedule = WarmupMultiStepLR(cfg.lr, cfg.lr_steps, 0.1, cfg.warmup_iters, cfg.warmup_factor)
    loader = DataLoader(train, cfg.images_per_batch, seed=cfg.seed, hflip_prob=cfg.hflip_prob)
    print(json.dumps({"torchvision_params": sum(p.numel() for p in model.parameters()), "iters": iters}), flush=True)
    train_seconds = 0.0
    for it in tqdm(range(iters), desc="torchvision train", mininterval=5):
        for g in opt.param_groups:
            g["lr"] = schedule(it)
        ims, tgs = to_torch(*next(loader))
        t = time.perf_counter()
        losses = model(ims, tgs)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        train_seconds += time.perf_counter() - t
        if it + 1 in eval_at:
            print(json.dumps({"iter": it + 1, "train_seconds": round(train_seconds, 1),
                              "seconds_per_iter": round(train_seconds / (it + 1), 3), **evaluate(model, val)}),
                  flush=True)


if __name__ == "__main__":
    main()
