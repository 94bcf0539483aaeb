"""Convert a torchvision Mask R-CNN or Keypoint R-CNN checkpoint (.pth) into a minimaskrcnn weights file (.npz).

    pip install torch torchvision                      # for this tool only; minimaskrcnn never imports torch
    python tools/convert_torchvision.py maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth r50_fpn_coco.npz --check
    python -m minimaskrcnn predict --checkpoint r50_fpn_coco.npz --config r50_fpn --num-classes 91 image.jpg
    python tools/convert_torchvision.py keypointrcnn_resnet50_fpn_coco-fc266e95.pth kp.npz \
        --config r50_fpn_keypoints --num-classes 2 --check          # paper §5: person keypoints

Our ``build_model(config.r50_fpn(91))`` uses torchvision's parameter names and shapes (``backbone.body.*``,
``backbone.fpn.*``, ``rpn.head.*``, ``roi_heads.*``; see tests/test_model.py), so converting is a check
and a copy: every key of our model must be in the checkpoint with the same shape, and every key of the
checkpoint must be used. Anything that does not fit stops the conversion with the full list (nothing is
dropped or guessed). Floating-point arrays are stored as float32; integer buffers (BatchNorm's
``num_batches_tracked``, present when the backbone used trainable ``BatchNorm2d``: use ``--norm bn``)
keep their integers.

``--check`` loads the result into our model (strictly) and, where torchvision is importable, runs both
models on one random image and prints the largest differences of their detections.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import OrderedDict

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from minimaskrcnn.config import CONFIGS, get_config  # noqa: E402
from minimaskrcnn.model import build_model  # noqa: E402
from minimaskrcnn.nn import save_npz  # noqa: E402
from minimaskrcnn.ops.boxes import box_iou  # noqa: E402
from minimaskrcnn.ops.masks import expand_boxes  # noqa: E402


# ---- reading the checkpoint (torch) -----------------------------------------------------------------------
def load_torch_state_dict(path) -> "OrderedDict[str, np.ndarray]":
    """The tensors of a .pth file as NumPy arrays: a bare state_dict, or one under 'model' / 'state_dict'
    (torchvision's reference scripts save ``{'model': ..., 'optimizer': ..., ...}``)."""
    try:
        import torch
    except ImportError:
        raise ImportError("reading a .pth checkpoint needs PyTorch (pip install torch); minimaskrcnn itself "
                          "does not") from None

    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: expected a state_dict (name -> tensor), or one under 'model' or 'state_dict'; "
                         f"got {type(obj).__name__}")
    not_tensors = [k for k, v in obj.items() if not torch.is_tensor(v)]
    if not_tensors:
        raise ValueError(f"{path}: entries that are not tensors: {', '.join(map(str, not_tensors[:10]))}"
                         f"{' ...' if len(not_tensors) > 10 else ''} (is this a model state_dict?)")
    return OrderedDict((k, v.detach().cpu().numpy()) for k, v in obj.items())


# ---- the conversion itself (NumPy only) ----------------------------------------------------------------------
def convert_state_dict(state: dict, model) -> "OrderedDict[str, np.ndarray]":
    """``state`` (name -> array) re-checked against ``model.state_dict()`` and cast: float32 for floating
    arrays, the model's integer type for integer ones. Returns the arrays in the model's key order.

    Raises ``ValueError`` naming every missing key, unused key, shape mismatch and float/integer mismatch.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unused = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(np.shape(state[k]))} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(np.shape(state[k])) != tuple(own[k].shape)]
    kinds = [f"{k}: checkpoint {np.asarray(state[k]).dtype} vs model {own[k].dtype}" for k in own
             if k in state and np.issubdtype(np.asarray(state[k]).dtype, np.floating)
             != np.issubdtype(own[k].dtype, np.floating)]
    problems = []
    for title, items in (("missing from the checkpoint", missing), ("not in the model", unused),
                         ("shape mismatches", shapes), ("float/integer mismatches", kinds)):
        if items:
            shown = "; ".join(items[:15]) + (f"; ... ({len(items)} in all)" if len(items) > 15 else "")
            problems.append(f"{len(items)} {title}: {shown}")
    if problems:
        hint = ""
        if unused and all(k.endswith("num_batches_tracked") for k in unused):
            hint = (" (the checkpoint's backbone used trainable BatchNorm2d, whose num_batches_tracked "
                    "counters a frozen-BN model lacks: convert with --norm bn)")
        elif missing and all(k.endswith("num_batches_tracked") for k in missing):
            hint = " (the checkpoint has frozen BatchNorm: convert with --norm frozen_bn)"
        raise ValueError("the checkpoint does not fit the model" + hint + ":\n  " + "\n  ".join(problems))
    out = OrderedDict()
    for k, ref in own.items():
        a = np.asarray(state[k])
        out[k] = a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a.astype(ref.dtype)
    return out


def build_config(config_name: str, num_classes: int, norm: str | None = None, **overrides):
    if norm is not None:
        overrides["norm"] = norm
    return get_config(config_name, num_classes, **overrides)


def convert(in_path, out_path, config) -> "OrderedDict[str, np.ndarray]":
    """Read ``in_path`` (.pth), check it against the model of ``config``, write ``out_path`` (.npz)."""
    arrays = convert_state_dict(load_torch_state_dict(in_path), build_model(config))
    save_npz(out_path, arrays)
    return arrays


# ---- the check: our model and torchvision's on one image -----------------------------------------------------
def torchvision_model(config):
    """torchvision's Mask R-CNN (or, ``keypoint_on`` without masks, Keypoint R-CNN) with the architecture and
    test-time settings of ``config`` (an FPN one)."""
    import torchvision
    from torch import nn as tnn
    from torchvision.models.detection import KeypointRCNN, MaskRCNN
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
    from torchvision.ops.misc import FrozenBatchNorm2d

    c = config
    if c.architecture != "fpn" or c.norm not in ("frozen_bn", "bn") or c.fpn_norm is not None:
        raise ValueError("the torchvision comparison needs an FPN config with frozen_bn or bn (torchvision has "
                         f"no C4 Mask R-CNN); got architecture={c.architecture!r}, norm={c.norm!r}")
    norm_layer = FrozenBatchNorm2d if c.norm == "frozen_bn" else tnn.BatchNorm2d
    name = f"resnet{c.depth}" if c.groups == 1 else f"resnext{c.depth}_{c.groups}x{c.width_per_group}d"
    body = getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer)
    in_channels = [w * (4 if c.depth >= 50 else 1) for w in c.stage_widths]
    backbone = BackboneWithFPN(body, {f"layer{i}": str(i - 1) for i in range(1, 5)}, in_channels, c.fpn_channels,
                               extra_blocks=LastLevelMaxPool())
    mask_classes = 1 if c.class_agnostic_masks else c.num_classes
    common = dict(
        num_classes=None, min_size=c.min_size, max_size=c.max_size, image_mean=list(c.image_mean),
        image_std=list(c.image_std), rpn_pre_nms_top_n_test=c.rpn_pre_nms_top_n[1],
        rpn_post_nms_top_n_test=c.rpn_post_nms_top_n[1], rpn_nms_thresh=c.rpn_nms_thresh,
        box_score_thresh=c.box_score_thresh, box_nms_thresh=c.box_nms_thresh,
        box_detections_per_img=c.detections_per_img,
        box_head=TwoMLPHead(c.fpn_channels * c.box_pool_size ** 2, c.representation_size),
        box_predictor=FastRCNNPredictor(c.representation_size, c.num_classes))
    if c.keypoint_on:
        if c.mask_on:
            raise ValueError("torchvision has no model with both a mask and a keypoint branch")
        return KeypointRCNN(
            backbone, **common, keypoint_head=KeypointRCNNHeads(c.fpn_channels, list(c.keypoint_layers)),
            keypoint_predictor=KeypointRCNNPredictor(c.keypoint_layers[-1], c.num_keypoints)).eval()
    return MaskRCNN(
        backbone, **common,
        mask_head=MaskRCNNHeads(c.fpn_channels, list(c.mask_layers), 1),
        mask_predictor=MaskRCNNPredictor(c.mask_layers[-1], c.mask_dim_reduced, mask_classes)).eval()


def check(npz_path, config, pth_path=None, image_shape=(200, 300), seed=0, verbose=True) -> dict:
    """Load ``npz_path`` into our model strictly; with torchvision (and ``pth_path``), run both models on
    one random ``image_shape`` image. Returns the numbers it prints: detection counts, how many of ours
    have a twin in torchvision's (same class, IoU > 0.9), and over those twins the largest box difference
    relative to the image's longer side, the largest score difference, the largest difference of the pasted
    mask probabilities (over twins pasted into the same pixels, see :func:`same_paste_boxes`), and how
    many were pasted one pixel apart, with their smallest mask IoU."""
    ours = build_model(config).eval()
    ours.load_state_dict(npz_path)
    report = {"loaded": True}
    try:
        import torch
    except ImportError:
        if verbose:
            print("check: the weights load into our model; torch is not importable, so no comparison")
        return report
    if pth_path is None:
        return report
    try:
        theirs = torchvision_model(config)
    except ValueError as e:
        if verbose:
            print(f"check: the weights load into our model; no comparison: {e}")
        return report
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in load_torch_state_dict(pth_path).items()})
    image = np.random.default_rng(seed).integers(0, 256, (*image_shape, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    mine = ours.predict([image], mask_threshold=None)[0]
    t1 = time.perf_counter()
    with torch.no_grad():
        ref = theirs([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]
    t2 = time.perf_counter()
    ref = {k: (v[:, 0] if k == "masks" else v).numpy() for k, v in ref.items()}
    report.update(ours_detections=len(mine["scores"]), torchvision_detections=len(ref["scores"]),
                  ours_seconds=t1 - t0, torchvision_seconds=t2 - t1)
    if len(mine["scores"]) and len(ref["scores"]):
        # Pair each of our detections with torchvision's of the same class that overlaps it most (IoU > 0.9):
        # near-equal scores may come out in either order, so position k need not be the same detection.
        iou = np.nan_to_num(box_iou(mine["boxes"], ref["boxes"]))
        iou[mine["labels"][:, None] != ref["labels"][None, :]] = -1
        j = iou.argmax(axis=1)
        i = np.flatnonzero(iou[np.arange(len(j)), j] > 0.9)
        j = j[i]
        report.update(
            matched=len(i),
            max_box_diff_rel=float(np.abs(mine["boxes"][i] - ref["boxes"][j]).max(initial=0) / max(image_shape)),
            max_score_diff=float(np.abs(mine["scores"][i] - ref["scores"][j]).max(initial=0)))
        if "keypoints" in ref:
            report.update(
                max_keypoint_diff_rel=float(np.abs(mine["keypoints"][i] - ref["keypoints"][j]).max(initial=0)
                                            / max(image_shape)),
                max_keypoint_score_diff=float(np.abs(mine["keypoints_scores"][i]
                                                     - ref["keypoints_scores"][j]).max(initial=0)))
    if len(mine["scores"]) and len(ref["scores"]) and "masks" in ref:
        same = same_paste_boxes(mine["boxes"][i], ref["boxes"][j], config.mask_pool_size * 2)
        report.update(
            max_mask_diff=float(np.abs(mine["masks"][i[same]] - ref["masks"][j[same]]).max(initial=0)),
            masks_pasted_one_pixel_apart=int((~same).sum()),
            min_mask_iou_of_those=min((mask_iou(mine["masks"][a] >= 0.5, ref["masks"][b] >= 0.5)
                                       for a, b in zip(i[~same], j[~same])), default=1.0))
    if verbose:
        for k, v in report.items():
            print(f"  {k}: {v:.3g}" if isinstance(v, float) else f"  {k}: {v}")
    return report


def same_paste_boxes(boxes_a, boxes_b, mask_size=28, padding=1):
    """Whether two sets of detections paste their masks into the same whole-pixel boxes: the paste grows
    each box by ``(M + 2 padding) / M`` and truncates it to integers (torchvision's ``paste_masks_in_image``),
    so boxes that agree to 1e-4 px can still land one pixel apart; their pasted masks then differ by a
    shift, not by an error."""
    scale = (mask_size + 2 * padding) / mask_size
    return np.all(expand_boxes(np.asarray(boxes_a), scale).astype(np.int64)
                  == expand_boxes(np.asarray(boxes_b), scale).astype(np.int64), axis=1)


def mask_iou(a, b) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="torchvision checkpoint (.pth)")
    parser.add_argument("output", help="minimaskrcnn weights (.npz)")
    parser.add_argument("--config", default="r50_fpn", choices=sorted(CONFIGS))
    parser.add_argument("--num-classes", type=int, default=91, help="including background (COCO: 91)")
    parser.add_argument("--norm", choices=("frozen_bn", "bn"), default=None,
                        help="the backbone's normalisation (default: the config's, frozen_bn for r50_fpn)")
    parser.add_argument("--check", action="store_true", help="load the result; compare with torchvision")
    args = parser.parse_args(argv)
    config = build_config(args.config, args.num_classes, args.norm)
    try:
        arrays = convert(args.input, args.output, config)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"convert_torchvision: {args.input}: {e}", file=sys.stderr)
        return 1
    n = sum(int(a.size) for a in arrays.values())
    print(f"wrote {args.output}: {len(arrays)} arrays, {n:,} numbers ({os.path.getsize(args.output) / 1e6:.1f} MB)")
    if args.check:
        check(args.output, config, args.input)
    return 0


if __name__ == "__main__":
    sys.exit(main())
