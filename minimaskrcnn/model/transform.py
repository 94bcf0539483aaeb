"""The model's input transform, torchvision's ``GeneralizedRCNNTransform``: from a list of images (and their
targets) to the network's input batch, and from the network's detections back to each image.

It reproduces torchvision number for number (checked against fixtures in ``tests/fixtures/transforms.npz``),
in its order:

1. normalise each image: ``(image / 255 - mean) / std`` per channel (ImageNet statistics);
2. resize it so the shorter side is ``min_size`` unless the longer side would pass ``max_size``
   (Mask R-CNN §3.1: "images are resized such that their scale (shorter edge) is 800 pixels";
   Detectron caps the longer edge at 1333): ``scale = min(min_size / min(h, w), max_size / max(h, w))``,
   new size ``(floor(h * scale), floor(w * scale))``, bilinear (align_corners=False) for the image,
   nearest for masks, and boxes scaled by ``new / old`` along each axis;
3. pad every image with zeros at the bottom and right to the batch's largest height and width, rounded
   up to a multiple of ``size_divisible`` (32: the coarsest FPN stride divides the padded size, so every
   level's feature map lines up with the image).

Predictions come back with :meth:`GeneralizedRCNNTransform.postprocess` (boxes from the resized to the
original image, masks pasted into it). Data sets, the loader and augmentation (flips) are in ``data/``.
"""
from __future__ import annotations

import math

import numpy as np

from .. import nn
from ..backend import to_numpy
from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..nn.resample import nearest_indices
from ..ops.masks import paste_masks_in_image
from ..ops.resize import resize_bilinear


class GeneralizedRCNNTransform(nn.Module):
    """Resize, normalise, pad and batch images, resize their targets alike; map detections back.

    ``transform(images, targets=None)`` returns ``(batch (N, 3, H, W) of dtype, image_sizes (after resizing,
    before padding), original_sizes, targets)``, NumPy arrays on the host; the targets' boxes are scaled
    and their masks resized nearest (as uint8). The inputs are not checked here (see :func:`check_images`,
    :func:`check_targets`)."""

    def __init__(self, min_size: int, max_size: int, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
                 size_divisible: int = 32, dtype="float32"):
        super().__init__()
        self.min_size, self.max_size, self.size_divisible = min_size, max_size, size_divisible
        self.image_mean, self.image_std, self.dtype = tuple(image_mean), tuple(image_std), np.dtype(dtype)

    def forward(self, images, targets=None):
        batch, sizes, originals = preprocess_batch(images, self.min_size, self.max_size, self.image_mean,
                                                   self.image_std, self.size_divisible)
        batch = batch.astype(self.dtype, copy=False)
        if targets is not None:
            targets = [{"boxes": np.asarray(t["boxes"], self.dtype), "labels": np.asarray(t["labels"], np.int64),
                        "masks": np.asarray(t["masks"], np.uint8),
                        **({"keypoints": np.asarray(t["keypoints"], self.dtype)} if "keypoints" in t else {})}
                       for t in resize_targets(targets, originals, sizes)]
        return batch, sizes, originals, targets

    def postprocess(self, detections, image_sizes, original_sizes, mask_threshold: float | None = 0.5):
        """Detections on the resized images -> on the original ones, as NumPy: boxes scaled back, and each
        detection's M x M ``mask_probs`` pasted into its box in an image-sized mask, binarised at
        ``mask_threshold`` (the paper's 0.5) or kept as probabilities (None)."""
        out = []
        for d, size, original in zip(detections, image_sizes, original_sizes):
            boxes = postprocess_boxes(to_numpy(d["boxes"]), size, original)
            r = {"boxes": boxes, "labels": to_numpy(d["labels"]).astype(np.int64),
                 "scores": to_numpy(d["scores"]).astype(np.float32)}
            if "mask_probs" in d:
                r["masks"] = paste_masks_in_image(to_numpy(d["mask_probs"]).astype(np.float32), boxes, original,
                                                  threshold=mask_threshold)
            if "keypoints" in d:     # paper §5: keypoints (D, K, 3) [x, y, 1] and their scores (D, K)
                r["keypoints"] = resize_keypoints(to_numpy(d["keypoints"]), size, original)
                r["keypoints_scores"] = to_numpy(d["keypoints_scores"]).astype(np.float32)
            out.append(r)
        return out

    def extra_repr(self):
        return (f"min_size={self.min_size}, max_size={self.max_size}, mean={self.image_mean}, "
                f"std={self.image_std}, size_divisible={self.size_divisible}")


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The (h, w) that :func:`resize_image` produces: ``floor(side * scale)`` with
    ``scale = min(min_size / min(h, w), max_size / max(h, w))``, in double precision like torch."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return int(math.floor(height * scale)), int(math.floor(width * scale))


def _resize_nearest(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Nearest resize of the last two axes, as ``F.interpolate(mode='nearest')``: output pixel ``i``
    copies input ``min(floor(i * in / out), in - 1)`` (float32 arithmetic, like torch: see
    :func:`minimaskrcnn.nn.resample.nearest_indices`)."""
    rows = nearest_indices(x.shape[-2], out_h)
    cols = nearest_indices(x.shape[-1], out_w)
    return x[..., rows[:, None], cols]


def normalize(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 ``(image / 255 - mean) / std``."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    x = image.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    mean = np.asarray(mean, np.float32)[:, None, None]
    std = np.asarray(std, np.float32)[:, None, None]
    return (x - mean) / std


def resize_image(x: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """Resize a (C, H, W) float image to :func:`resized_size` with bilinear interpolation."""
    return resize_bilinear(np.asarray(x, np.float32), *resized_size(x.shape[-2], x.shape[-1], min_size, max_size))


def resize_boxes(boxes: np.ndarray, original_size, new_size) -> np.ndarray:
    """Scale (N, 4) xyxy boxes from an image of ``original_size`` (h, w) to one of ``new_size``.

    The ratios are ``new / old`` per axis in float32, as torchvision's ``resize_boxes``. Also maps
    predictions back: ``resize_boxes(boxes, resized_size, original_size)``.
    """
    ratio_h = np.float32(new_size[0]) / np.float32(original_size[0])
    ratio_w = np.float32(new_size[1]) / np.float32(original_size[1])
    return np.asarray(boxes, np.float32) * np.array([ratio_w, ratio_h, ratio_w, ratio_h], np.float32)


def resize_keypoints(keypoints: np.ndarray, original_size, new_size) -> np.ndarray:
    """Scale (G, K, 3) keypoints ``[x, y, v]`` from an image of ``original_size`` (h, w) to ``new_size``: x by
    ``new_w / old_w``, y by ``new_h / old_h`` (float32 ratios), v unchanged (torchvision's
    ``resize_keypoints``); also maps predicted keypoints back."""
    ratio_h = np.float32(new_size[0]) / np.float32(original_size[0])
    ratio_w = np.float32(new_size[1]) / np.float32(original_size[1])
    out = np.array(keypoints, np.float32)
    out[..., 0] *= ratio_w
    out[..., 1] *= ratio_h
    return out


def postprocess_boxes(boxes: np.ndarray, resized_size, original_size) -> np.ndarray:
    """Boxes predicted on the resized image -> boxes on the original image (torchvision's postprocess)."""
    return resize_boxes(boxes, resized_size, original_size)


def resize_target(target: dict, original_size, new_size) -> dict:
    """A target for an image resized from ``original_size`` to ``new_size`` (h, w): boxes scaled,
    masks (G, H, W) resized nearest (torchvision's ``_resize_image_and_masks``). Other keys are kept."""
    target = dict(target)
    if "boxes" in target:
        target["boxes"] = resize_boxes(target["boxes"], original_size, new_size)
    if "masks" in target:
        target["masks"] = _resize_nearest(target["masks"], *new_size)
    if "keypoints" in target:
        target["keypoints"] = resize_keypoints(target["keypoints"], original_size, new_size)
    return target


def resize_targets(targets: list, original_sizes: list, new_sizes: list) -> list:
    """:func:`resize_target` for every image of a batch."""
    return [resize_target(t, o, n) for t, o, n in zip(targets, original_sizes, new_sizes, strict=True)]


def batch_images(images: list, size_divisible: int = 32) -> np.ndarray:
    """Zero-pad (C, h_i, w_i) images at the bottom/right into one (N, C, H, W) float32 array, with H and
    W the largest height and width rounded up to a multiple of ``size_divisible``."""
    height = max(im.shape[1] for im in images)
    width = max(im.shape[2] for im in images)
    height = int(math.ceil(height / size_divisible) * size_divisible)
    width = int(math.ceil(width / size_divisible) * size_divisible)
    batch = np.zeros((len(images), images[0].shape[0], height, width), dtype=np.float32)
    for i, im in enumerate(images):
        batch[i, :, : im.shape[1], : im.shape[2]] = im
    return batch


def preprocess_batch(images: list, min_size: int, max_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     size_divisible: int = 32):
    """The model's input transform: normalise, resize, pad and batch (torchvision's
    ``GeneralizedRCNNTransform`` in eval mode).

    Args:
        images: list of N (H_i, W_i, 3) uint8 RGB images.
        min_size, max_size: the resize rule (see :func:`resized_size`).
        mean, std: per-channel statistics of images scaled to [0, 1].
        size_divisible: the padded height and width are multiples of this.

    Returns:
        batch: (N, 3, H, W) float32, zero padded.
        image_sizes: list of N (h_i, w_i), each image's size after resizing, before padding.
        original_sizes: list of N (H_i, W_i).
    """
    if not images:
        raise ValueError("images must be a non-empty list of (H, W, 3) uint8 arrays, got an empty list")
    resized = [resize_image(normalize(im, mean, std), min_size, max_size) for im in images]
    return (batch_images(resized, size_divisible), [im.shape[1:] for im in resized],
            [im.shape[:2] for im in images])


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
        boxes = np.asarray(to_numpy(t["boxes"]), np.float64)
        G = boxes.shape[0] if boxes.ndim == 2 else -1
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"targets[{i}]['boxes'] must have shape (G, 4), got {boxes.shape}")
        if not np.all(np.isfinite(boxes)):
            raise ValueError(f"targets[{i}]['boxes'] has NaN or infinite coordinates")
        bad = np.nonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))[0]
        if bad.size:
            raise ValueError(f"targets[{i}]['boxes'][{int(bad[0])}] = {boxes[bad[0]].tolist()} is degenerate "
                             "(needs x2 > x1 and y2 > y1)")
        labels = np.asarray(to_numpy(t["labels"]))
        if labels.shape != (G,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"targets[{i}]['labels'] must be ({G},) integers, got {labels.dtype} {labels.shape}")
        if G and (labels.min() < 1 or labels.max() >= num_classes):
            raise ValueError(f"targets[{i}]['labels'] must lie in 1..{num_classes - 1} (0 is background), "
                             f"got {labels.min()}..{labels.max()}")
        masks = to_numpy(t["masks"])
        if masks.shape != (G, h, w):
            raise ValueError(f"targets[{i}]['masks'] must have shape {(G, h, w)} (one mask per box, image size), "
                             f"got {masks.shape}")
        check_binary_masks(masks, f"targets[{i}]['masks']")
        if "keypoints" in t:
            kp = np.asarray(to_numpy(t["keypoints"]))
            if kp.ndim != 3 or kp.shape[0] != G or kp.shape[2] != 3:
                raise ValueError(f"targets[{i}]['keypoints'] must have shape ({G}, K, 3) [x, y, v], got {kp.shape}")


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
