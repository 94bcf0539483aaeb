"""Training data: flips, and deterministic, resumable mini-batches.

:func:`hflip` / :func:`random_hflip` (the paper's only augmentation is none; Detectron and torchvision flip
horizontally with probability 0.5), and :class:`BatchSampler` / :class:`DataLoader`, which make
image-centric mini-batches that are a pure function of (seed, epoch, position), so a run resumed from a
checkpoint sees exactly the batches the uninterrupted run would have seen.

The model's own input transform (resize, normalise, pad, batch) is :mod:`minimaskrcnn.model.transform`.
"""
from __future__ import annotations

import numpy as np


# ----------------------------------------------------------------------------------------------------
# Flip
# ----------------------------------------------------------------------------------------------------

def hflip(image: np.ndarray, target: dict | None = None, keypoint_flip=None):
    """Mirror an (H, W, C) image and its target left-right.

    A box (x1, y1, x2, y2) in continuous pixel coordinates becomes (W - x2, y1, W - x1, y2); masks
    (G, H, W) are mirrored like the image; keypoints (G, K, 3) get x -> W - x and left and right swapped by
    ``keypoint_flip`` (K,) (a data set's ``keypoint_flip_indices``: a mirrored left wrist is a right wrist).
    Returns new arrays; other target entries are kept.
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
    if "keypoints" in target:
        if keypoint_flip is None:
            raise ValueError("hflip: the target has keypoints; give keypoint_flip (the data set's "
                             "keypoint_flip_indices) so that left and right swap")
        from .keypoints import flip_keypoints
        target["keypoints"] = flip_keypoints(target["keypoints"], width, keypoint_flip)
    return image, target


def random_hflip(image: np.ndarray, target: dict | None, rng: np.random.Generator, p: float = 0.5,
                 keypoint_flip=None):
    """:func:`hflip` with probability ``p`` (one draw from ``rng``, flipped or not, always one draw)."""
    if rng.random() < p:
        return hflip(image, target, keypoint_flip)
    return image, target


# ----------------------------------------------------------------------------------------------------
# Mini-batches for training: deterministic and resumable
# ----------------------------------------------------------------------------------------------------

class BatchSampler:
    """Image indices in mini-batches, reshuffled every epoch, resumable from ``state_dict()``.

    Epoch ``e`` visits ``permutation_e = default_rng([seed, e]).permutation(num_images)`` in slices
    of ``batch_size`` (the last, shorter one kept unless ``drop_last``). Nothing depends on what was
    iterated before, so the state is just ``(epoch, position)``: the next batch is batch ``position`` of
    epoch ``epoch``. Iteration never ends: the caller stops after its number of iterations.

    Each image of a batch also comes with its own generator, ``default_rng([seed, epoch, position, 1, j])``
    for the image at place ``j`` of the batch, for its random augmentation: a resumed run flips the same
    images, and a batch split over processes is flipped as one process would flip it.
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
        """The next ``(indices, rngs)``: an int64 array of image indices and one generator per image."""
        if self.position >= self.batches_per_epoch():
            self.epoch, self.position = self.epoch + 1, 0
        start = self.position * self.batch_size
        indices = self.epoch_order(self.epoch)[start: start + self.batch_size]
        rngs = [np.random.default_rng([self.seed, self.epoch, self.position, 1, j]) for j in range(len(indices))]
        self.position += 1
        return indices, rngs

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"state seed {state['seed']} differs from this sampler's seed {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class DataLoader:
    """Mini-batches of ``(images, targets)`` from a data set, with random horizontal flips.

    ``dataset[i]`` must return ``(image (H, W, 3) uint8, target dict)``. Images stay a list (sizes may
    differ); the model resizes and pads them (:class:`~minimaskrcnn.model.transform.GeneralizedRCNNTransform`).
    ``state_dict()`` / ``load_state_dict()`` delegate to the :class:`BatchSampler`.

    Data-parallel training (``shard=(rank, size)``): ``batch_size`` is the whole batch's, and this loader
    loads only the rank's equal part of each batch, images ``rank * n .. (rank + 1) * n - 1`` with
    ``n = batch_size / size``, flipped as one process flips them (per-image generators); ``size`` must
    divide every batch, so use ``drop_last`` unless it divides the data set too.
    """

    def __init__(self, dataset, batch_size: int, seed: int = 0, shuffle: bool = True, hflip_prob: float = 0.5,
                 drop_last: bool = False, shard=(0, 1)):
        rank, size = shard
        if not 0 <= rank < size or batch_size % size:
            raise ValueError(f"DataLoader: shard (rank {rank}, size {size}) must have 0 <= rank < size and size "
                             f"dividing batch_size {batch_size}")
        self.dataset = dataset
        self.sampler = BatchSampler(len(dataset), batch_size, seed, shuffle, drop_last)
        self.hflip_prob, self.shard = hflip_prob, (rank, size)
        self.last_places = []     # the places in the whole batch of the images last returned

    def __iter__(self):
        return self

    def __next__(self):
        indices, rngs = next(self.sampler)
        rank, size = self.shard
        if len(indices) % size:
            raise ValueError(f"DataLoader: a batch of {len(indices)} images cannot be split over {size} processes "
                             "(use drop_last=True)")
        n = len(indices) // size
        self.last_places = list(range(rank * n, (rank + 1) * n))
        images, targets = [], []
        for j in self.last_places:
            image, target = random_hflip(*self.dataset[int(indices[j])], rngs[j], self.hflip_prob,
                                         getattr(self.dataset, "keypoint_flip_indices", None))
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
