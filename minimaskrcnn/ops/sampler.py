"""Balanced sampling of positive and negative examples for the RPN and RoI-head losses.

Each image contributes a fixed-size mini-batch with at most a given fraction of positives: 256 anchors,
up to 1:1, for the RPN (Faster R-CNN §3.1.3); 512 RoIs, 25% positive, for the heads (Mask R-CNN §3.1,
"Training"). When there are too few positives the batch is filled with negatives.

This is torchvision's ``models.detection._utils.BalancedPositiveNegativeSampler``, made deterministic
by drawing from an explicit ``numpy.random.Generator``.
"""
from __future__ import annotations

import numpy as np

from ..backend import device_of, get_xp, to_device


class BalancedPositiveNegativeSampler:
    """Sample ``batch_size_per_image`` elements per image, at most ``positive_fraction`` of them positive.

    Args:
        batch_size_per_image: number of labelled elements to keep per image (fewer if not enough exist).
        positive_fraction: largest fraction of the batch that may be positive.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        if int(batch_size_per_image) != batch_size_per_image or batch_size_per_image < 0:
            raise ValueError(f"batch_size_per_image must be a non-negative int, got {batch_size_per_image!r}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction!r}")
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)

    def __repr__(self):
        return (f"BalancedPositiveNegativeSampler(batch_size_per_image={self.batch_size_per_image}, "
                f"positive_fraction={self.positive_fraction})")

    def __call__(self, matched_idxs, rng: np.random.Generator):
        """Args:
            matched_idxs: list (one per image) of (N_i,) integer labels: ``>= 1`` positive (a class),
                ``0`` negative (background), ``-1`` ignored.
            rng: the random generator; the same seed gives the same samples on NumPy and CuPy.
        Returns:
            ``(pos_masks, neg_masks)``: two lists of (N_i,) boolean arrays, the sampled positives and
            negatives of each image. ``num_pos = min(#positives, int(batch * fraction))`` and
            ``num_neg = min(#negatives, batch - num_pos)``.

        The random draws are, per image, ``rng.permutation(#positives)`` then ``rng.permutation(#negatives)``,
        made on the host; only the chosen indices are copied to the device of ``matched_idxs``.
        """
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                             f"got {type(rng).__name__}")
        if not isinstance(matched_idxs, (list, tuple)):
            raise ValueError(f"matched_idxs must be a list of per-image 1-D arrays, "
                             f"got {type(matched_idxs).__name__}")
        pos_masks, neg_masks = [], []
        for i, labels in enumerate(matched_idxs):
            if not hasattr(labels, "ndim") or labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"matched_idxs[{i}] must be a 1-D integer array, got "
                                 f"{getattr(labels, 'shape', type(labels).__name__)} "
                                 f"{getattr(labels, 'dtype', '')}")
            xp = get_xp(labels)
            positive = xp.flatnonzero(labels >= 1)
            negative = xp.flatnonzero(labels == 0)
            num_pos = min(positive.shape[0], int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.shape[0], self.batch_size_per_image - num_pos)
            perm_pos = rng.permutation(positive.shape[0])[:num_pos]
            perm_neg = rng.permutation(negative.shape[0])[:num_neg]
            device = device_of(labels)
            pos = xp.zeros(labels.shape, dtype=bool)
            neg = xp.zeros(labels.shape, dtype=bool)
            pos[positive[to_device(perm_pos, device)]] = True
            neg[negative[to_device(perm_neg, device)]] = True
            pos_masks.append(pos)
            neg_masks.append(neg)
        return pos_masks, neg_masks
