"""From data-set images to the network's input batch, and back: flip, normalise, resize, pad, batch.

The model-side pipeline reproduces torchvision's ``GeneralizedRCNNTransform`` number for number (checked
against fixtures in ``tests/fixtures/transforms.npz``), in its order:

1. normalise each image: ``(image / 255 - mean) / std`` per channel (ImageNet statistics);
2. resize it so the shorter side is ``min_size`` unless the longer side would pass ``max_size``
   (Mask R-CNN §3.1: "images are resized such that their scale (shorter edge) is 800 pixels";
   Detectron caps the longer edge at 1333): ``scale = min(min_size / min(h, w), max_size / max(h, w))``,
   new size ``(floor(h * scale), floor(w * scale))``, bilinear (align_corners=False) for the image,
   nearest for masks, and boxes scaled by ``new / old`` along each axis;
3. pad every image with zeros at the bottom and right to the batch's largest height and width, rounded
   up to a multiple of ``size_divisible`` (32: the coarsest FPN stride divides the padded size, so every
   level's feature map lines up with the image).

Predictions come back with :func:`postprocess_boxes` (boxes from the resized to the original image).

Training data: :func:`hflip` / :func:`random_hflip` (the paper's only augmentation is none; Detectron
and torchvision flip horizontally with probability 0.5), and :class:`BatchSampler` / :class:`DataLoader`,
which make image-centric mini-batches that are a pure function of (seed, epoch, position), so a run
resumed from a checkpoint sees exactly the batches the uninterrupted run would have seen.
"""
from __future__ import annotations

import math

import numpy as np

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..nn.resample import nearest_indices
from ..ops.resize import resize_bilinear


# ----------------------------------------------------------------------------------------------------
# Flip
# ----------------------------------------------------------------------------------------------------

def hflip(image: np.ndarray, target: dict | None = None):
    """Mirror an (H, W, C) image and its target left-right.

    A box (x1, y1, x2, y2) in continuous pixel coordinates becomes (W - x2, y1, W - x1, y2); masks
    (G, H, W) are mirrored like the image. Returns new arrays; other target entries are kept.
    """
    width = image.shape[1]
    image = image[:, ::-1].copy()
    if target is None:
        return image, None
    target = dict(target)
    if "boxes" in target:
        boxes = target["boxes"].copy()
        boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
        target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"][:, :, ::-1].copy()
    return image, target


def random_hflip(image: np.ndarray, target: dict | None, rng: np.random.Generator, p: float = 0.5):
    """:func:`hflip` with probability ``p`` (one draw from ``rng``, flipped or not, always one draw)."""
    if rng.random() < p:
        return hflip(image, target)
    return image, target


# ----------------------------------------------------------------------------------------------------
# Resize (torchvision-exact)
# ----------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------
# Mini-batches for training: deterministic and resumable
# ----------------------------------------------------------------------------------------------------

class BatchSampler:
    """Image indices in mini-batches, reshuffled every epoch, resumable from ``state_dict()``.

    Epoch ``e`` visits ``permutation_e = default_rng([seed, e]).permutation(num_images)`` in slices
    of ``batch_size`` (the last, shorter one kept unless ``drop_last``). Nothing depends on what was
    iterated before, so the state is just ``(epoch, position)``: the next batch is batch ``position`` of
    epoch ``epoch``. Iteration never ends: the caller stops after its number of iterations.

    Each batch also comes with its own generator (``default_rng([seed, epoch, position, 1])``) for the
    batch's random augmentation, so a resumed run flips the same images too.
    """

    def __init__(self, num_images: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False):
        if num_images < 1 or batch_size < 1:
            raise ValueError(f"num_images and batch_size must be >= 1, got {num_images} and {batch_size}")
        if drop_last and batch_size > num_images:
            raise ValueError(f"batch_size {batch_size} > num_images {num_images} with drop_last: no batch")
        self.num_images, self.batch_size, self.seed = num_images, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.position = 0, 0

    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.num_images, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_images)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_images)

    def __iter__(self):
        return self

    def __next__(self):
        """The next ``(indices, rng)``: an int64 array of image indices and the batch's generator."""
        if self.position >= self.batches_per_epoch():
            self.epoch, self.position = self.epoch + 1, 0
        start = self.position * self.batch_size
        indices = self.epoch_order(self.epoch)[start: start + self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, self.position, 1])
        self.position += 1
        return indices, rng

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"state seed {state['seed']} differs from this sampler's seed {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class DataLoader:
    """Mini-batches of ``(images, targets)`` from a data set, with random horizontal flips.

    ``dataset[i]`` must return ``(image (H, W, 3) uint8, target dict)``. Images stay a list (sizes may
    differ); the model resizes and pads them with :func:`preprocess_batch` / :func:`resize_targets`.
    ``state_dict()`` / ``load_state_dict()`` delegate to the :class:`BatchSampler`.
    """

    def __init__(self, dataset, batch_size: int, seed: int = 0, shuffle: bool = True, hflip_prob: float = 0.5,
                 drop_last: bool = False):
        self.dataset = dataset
        self.sampler = BatchSampler(len(dataset), batch_size, seed, shuffle, drop_last)
        self.hflip_prob = hflip_prob

    def __iter__(self):
        return self

    def __next__(self):
        indices, rng = next(self.sampler)
        images, targets = [], []
        for i in indices:
            image, target = random_hflip(*self.dataset[int(i)], rng, self.hflip_prob)
            images.append(image)
            targets.append(target)
        return images, targets

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
