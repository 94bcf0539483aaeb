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

    def __call__(self, matched_idxs, rng):
        """Args:
            matched_idxs: list (one per image) of (N_i,) integer labels: ``>= 1`` positive (a class),
                ``0`` negative (background), ``-1`` ignored.
            rng: a ``numpy.random.Generator`` that every image draws from in turn, or a list of one
                Generator per image: each image's own stream, so that its samples do not depend on which
                other images share its batch (data-parallel training keys them by seed, iteration and the
                image's place in the global batch). The same seeds give the same samples on NumPy and CuPy.
        Returns:
            ``(pos_masks, neg_masks)``: two lists of (N_i,) boolean arrays, the sampled positives and
            negatives of each image. ``num_pos = min(#positives, int(batch * fraction))`` and
            ``num_neg = min(#negatives, batch - num_pos)``.

        The random draws are, per image, ``rng.permutation(#positives)`` then ``rng.permutation(#negatives)``,
        made on the host; only the chosen indices are copied to the device of ``matched_idxs``.
        """
        if not isinstance(matched_idxs, (list, tuple)):
            raise ValueError(f"matched_idxs must be a list of per-image 1-D arrays, "
                             f"got {type(matched_idxs).__name__}")
        streams = list(rng) if isinstance(rng, (list, tuple)) else [rng] * len(matched_idxs)
        if len(streams) != len(matched_idxs) or not all(isinstance(g, np.random.Generator) for g in streams):
            raise ValueError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)) or a list of one "
                             f"per image ({len(matched_idxs)}), got {type(rng).__name__}"
                             f"{f' of {len(streams)}' if isinstance(rng, (list, tuple)) else ''}")
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
            perm_pos = streams[i].permutation(positive.shape[0])[:num_pos]
            perm_neg = streams[i].permutation(negative.shape[0])[:num_neg]
            device = device_of(labels)
            pos = xp.zeros(labels.shape, dtype=bool)
            neg = xp.zeros(labels.shape, dtype=bool)
            pos[positive[to_device(perm_pos, device)]] = True
            neg[negative[to_device(perm_neg, device)]] = True
            pos_masks.append(pos)
            neg_masks.append(neg)
        return pos_masks, neg_masks


SAMPLER_STREAM = 2   # tags the samplers' streams apart from the data loader's (which use 1)


def image_streams(seed: int, iteration: int, indices) -> list:
    """One generator per image for the samplers of one training iteration: image ``j`` of the batch (its
    place in the whole batch, whichever process holds it) draws from ``default_rng([seed, 2, iteration, j])``.

    So an image's anchor and RoI samples depend on the seed, the iteration and its place only: the same
    whether one process holds the whole batch or N processes hold a part each, and the same when a run
    resumes at that iteration (nothing to save in checkpoints).
    """
    return [np.random.default_rng([int(seed), SAMPLER_STREAM, int(iteration), int(j)]) for j in indices]
