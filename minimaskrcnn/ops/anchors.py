"""Anchors: the reference boxes the RPN classifies and regresses (Faster R-CNN §3.1; FPN §4.1).

With FPN, each pyramid level gets anchors of one size and three aspect ratios: areas 32^2, 64^2, 128^2,
256^2, 512^2 on P2..P6 and ratios 1:2, 1:1, 2:1 (Mask R-CNN §3.1, "Implementation details", following
FPN). At every feature-map location ``(i, j)`` of a level with stride ``s`` there is one anchor per
(size, ratio), centred on the image point ``(j * s, i * s)``.

This reproduces ``torchvision.models.detection.anchor_utils.AnchorGenerator`` exactly:

* aspect ratio = height / width; ``h = size * sqrt(ratio)``, ``w = size / sqrt(ratio)``, so the area
  stays ``size^2``;
* the zero-centred base anchor is ``round([-w, -h, w, h] / 2)`` (computed in float32, round half to even);
* the stride of a level is ``image_size // feature_size`` per axis (image_size is the padded batch size);
* anchors are ordered location-major (row by row, left to right), then the anchors of one location in
  the order ratio-major, size-minor; the levels are concatenated finest first.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_module_for_device


def _as_nested(values, name: str):
    """Accept ``(32, 64)`` as shorthand for ``((32,), (64,))`` (one tuple per level), as torchvision."""
    if not isinstance(values, (list, tuple)) or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty tuple of per-level tuples, got {values!r}")
    if not isinstance(values[0], (list, tuple)):
        values = tuple((v,) for v in values)
    return tuple(tuple(float(v) for v in level) for level in values)


class AnchorGenerator:
    """Anchors for every location of every feature map.

    Args:
        sizes: per level, the anchor sizes (square roots of the areas), e.g. ``((32,), (64,), ...)``.
        aspect_ratios: per level, the ratios height / width, e.g. ``((0.5, 1.0, 2.0),) * 5``.

    ``generator(image_size, feature_sizes)`` returns the ``(A, 4)`` anchors of all levels;
    :meth:`anchors_per_level` returns them as a list, one ``(H_l * W_l * A_l, 4)`` array per level.
    The defaults are the paper's FPN anchors.
    """

    def __init__(self, sizes=((32,), (64,), (128,), (256,), (512,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5):
        sizes = _as_nested(sizes, "sizes")
        if not isinstance(aspect_ratios, (list, tuple)) or len(aspect_ratios) == 0:
            raise ValueError(f"aspect_ratios must be a non-empty tuple, got {aspect_ratios!r}")
        if not isinstance(aspect_ratios[0], (list, tuple)):  # one set of ratios for every level
            aspect_ratios = (tuple(aspect_ratios),) * len(sizes)
        aspect_ratios = tuple(tuple(float(r) for r in level) for level in aspect_ratios)
        if len(sizes) != len(aspect_ratios):
            raise ValueError(f"sizes and aspect_ratios must have one entry per level, got {len(sizes)} "
                             f"and {len(aspect_ratios)}")
        if any(v <= 0 for level in sizes + aspect_ratios for v in level):
            raise ValueError(f"sizes and aspect_ratios must be positive, got {sizes!r} and {aspect_ratios!r}")
        self.sizes = sizes
        self.aspect_ratios = aspect_ratios
        self.cell_anchors = [self.generate_anchors(s, r) for s, r in zip(sizes, aspect_ratios, strict=True)]

    def __repr__(self):
        return f"AnchorGenerator(sizes={self.sizes}, aspect_ratios={self.aspect_ratios})"

    @staticmethod
    def generate_anchors(scales, aspect_ratios):
        """Zero-centred anchors ``(len(ratios) * len(scales), 4)`` float32, ratio-major.

        Float32 on purpose: the rounding of ``w / 2`` must land where torchvision's float32 does.
        """
        ### BEGIN SOLUTION
        scales = np.asarray(scales, dtype=np.float32)
        aspect_ratios = np.asarray(aspect_ratios, dtype=np.float32)
        h_ratios = np.sqrt(aspect_ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / 2)
        ### END SOLUTION

    def num_anchors_per_location(self):
        """Number of anchors at each location, per level (3 for the paper's FPN setting)."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios, strict=True)]

    def anchors_per_level(self, image_size, feature_sizes, dtype=np.float32, device: str = "cpu"):
        """The anchors of each level.

        Args:
            image_size: ``(H, W)`` of the padded batch tensor fed to the backbone.
            feature_sizes: ``[(H_l, W_l), ...]``, one per level, finest first (P2, ..., P6).
            dtype: float dtype of the anchors.
            device: ``'cpu'`` (NumPy) or ``'cuda'`` (CuPy).
        Returns:
            list of ``(H_l * W_l * A_l, 4)`` arrays; row ``(i * W_l + j) * A_l + a`` is anchor ``a`` at
            location ``(i, j)``, which matches the RPN head's ``(A_l, H_l, W_l)`` outputs once they are
            permuted to ``(H_l, W_l, A_l)`` and flattened.
        """
        if len(feature_sizes) != len(self.cell_anchors):
            raise ValueError(f"feature_sizes must have one (H, W) per level ({len(self.cell_anchors)} "
                             f"levels), got {len(feature_sizes)}: {feature_sizes!r}")
        image_h, image_w = (int(v) for v in image_size)
        xp = get_module_for_device(device)
        anchors = []
        for (grid_h, grid_w), base in zip(feature_sizes, self.cell_anchors, strict=True):
            grid_h, grid_w = int(grid_h), int(grid_w)
            if not (0 < grid_h <= image_h and 0 < grid_w <= image_w):
                raise ValueError(f"feature_sizes entry {(grid_h, grid_w)} must be positive and no larger "
                                 f"than image_size {(image_h, image_w)}")
            ### BEGIN SOLUTION
            stride_h, stride_w = image_h // grid_h, image_w // grid_w
            # Anchor centres, row-major: location (i, j) -> image point (j * stride_w, i * stride_h), the
            # top-left corner of its cell (torchvision's choice; no half-stride offset).
            shift_y, shift_x = np.meshgrid(np.arange(grid_h) * stride_h, np.arange(grid_w) * stride_w,
                                           indexing="ij")
            shifts = np.stack([shift_x.ravel(), shift_y.ravel()] * 2, axis=1)  # (H_l * W_l, 4)
            level = (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)  # (H_l * W_l * A_l, 4)
            ### END SOLUTION
            anchors.append(xp.asarray(level.astype(dtype)))
        return anchors

    def __call__(self, image_size, feature_sizes, dtype=np.float32, device: str = "cpu"):
        """All anchors, levels concatenated finest first: ``(sum_l H_l * W_l * A_l, 4)``."""
        xp = get_module_for_device(device)
        return xp.concatenate(self.anchors_per_level(image_size, feature_sizes, dtype, device), axis=0)
