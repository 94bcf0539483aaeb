"""Multi-scale RoI pooling for FPN: each RoI is pooled from the one pyramid level that suits its size.

FPN (Lin et al. 2017, Eq. 1), used by Mask R-CNN's FPN heads (§3, "Network Architecture"): a RoI of
width ``w`` and height ``h`` (image pixels) is pooled from level

    k = floor(k0 + log2(sqrt(w * h) / 224)),   k0 = 4,  clamped to the levels present,

so a 224x224 RoI (an ImageNet-sized object) reads P4 (stride 16), one half that size P3, and so on.
Every RoI then gets the same ``(C, PH, PW)`` features whatever its level, for the shared box/mask head.

Matches ``torchvision.ops.MultiScaleRoIAlign`` exactly, including its ``eps = 1e-6`` inside the
floor (so a RoI exactly on a level boundary does not drop a level through log2 round-off), its
float32 level arithmetic for float32 RoIs, and how it infers each level's scale from the feature and
image sizes (:func:`infer_scale`).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import get_xp
from ._roi_common import check_roi_inputs
from .roi_align import roi_align_backward, roi_align_forward
from .roi_pool import roi_pool_backward, roi_pool_forward
from .roi_warp import roi_warp_backward, roi_warp_forward

_OPS = {
    "align": (roi_align_forward, roi_align_backward, "avg"),
    "warp": (roi_warp_forward, roi_warp_backward, "avg"),
    "pool": (roi_pool_forward, roi_pool_backward, "max"),
}


def infer_scale(feature_size, image_size) -> float:
    """The spatial scale of a feature map, as torchvision infers it: ``2 ** round(log2(Hf / H))``.

    Args:
        feature_size: ``(Hf, Wf)`` of the feature map (only ``Hf`` is used, as in torchvision).
        image_size: ``(H, W)`` of the (padded) input batch.
    Returns:
        a power of two, e.g. 0.25 for a stride-4 map of an 800x1216 image.
    """
    approx = np.float32(float(feature_size[0]) / float(image_size[0]))   # torchvision: a float32 tensor
    return float(2.0 ** float(np.round(np.log2(approx))))                  # round half to even, as torch


class LevelMapper:
    """FPN Eq. 1: the pyramid level of each RoI, as an index into the list of levels (0 = ``k_min``).

    Args:
        k_min, k_max: the finest and coarsest level present (2 and 5 for P2..P5).
        canonical_scale (224) and canonical_level (4): a RoI with ``sqrt(w*h) = 224`` maps to level 4.
        eps: added before the floor, torchvision's guard against log2 round-off.
    """

    def __init__(self, k_min: int, k_max: int, canonical_scale: int = 224, canonical_level: int = 4,
                 eps: float = 1e-6):
        self.k_min, self.k_max = k_min, k_max
        self.s0, self.lvl0, self.eps = canonical_scale, canonical_level, eps

    @classmethod
    def from_scales(cls, scales, canonical_scale: int = 224, canonical_level: int = 4, eps: float = 1e-6):
        """The mapper for levels with these scales (finest first): ``k = -log2(scale)``."""
        k_min = int(-np.log2(np.float32(scales[0])))
        k_max = int(-np.log2(np.float32(scales[-1])))
        return cls(k_min, k_max, canonical_scale, canonical_level, eps)

    def __call__(self, rois):
        """rois (K, 5) ``(batch_index, x1, y1, x2, y2)`` -> level indices (K,) int64 in
        ``[0, k_max - k_min]``. Degenerate boxes (zero or negative area) go to the finest level."""
        xp = get_xp(rois)
        dtype = rois.dtype.type
        area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
        with np.errstate(invalid="ignore", divide="ignore"):  # log2(0) = -inf, sqrt(<0) = nan: finest
            k = xp.floor(self.lvl0 + xp.log2(xp.sqrt(area) / dtype(self.s0)) + dtype(self.eps))
        k = xp.nan_to_num(k, nan=self.k_min, posinf=self.k_max, neginf=self.k_min)
        k = xp.clip(k, self.k_min, self.k_max)
        return k.astype(np.int64) - self.k_min


class MultiScaleCache(NamedTuple):
    """Per level: the RoIs pooled there (indices into ``rois``) and that op's cache (None if none)."""
    op: str
    levels: object
    per_level: list
    feature_shapes: list


def multiscale_roi_forward(features, rois, output_size, scales, sampling_ratio=2, aligned=False, op="align",
                           mode=None, impl="numpy", canonical_scale=224, canonical_level=4):
    """Pool every RoI from its FPN level (Eq. 1) with RoIAlign, RoIWarp or RoIPool.

    Args:
        features: list of (N, C, H_l, W_l) arrays, finest level first (P2, P3, P4, P5).
        rois: (K, 5) rows ``(batch_index, x1, y1, x2, y2)`` in image pixels.
        output_size: int or ``(PH, PW)``.
        scales: spatial scale of each level (``[1/4, 1/8, 1/16, 1/32]``; see :func:`infer_scale`).
        sampling_ratio, aligned: passed to the op. The defaults (2, False) are torchvision's Mask R-CNN's.
        op: ``"align"``, ``"warp"`` or ``"pool"``. mode: the op's ``mode`` (default: avg; pool: max).
        impl: ``"numpy"`` or ``"kernel"``.
        canonical_scale, canonical_level: Eq. 1's 224 and k0 = 4.

    Returns:
        out (K, C, PH, PW) in the order of ``rois``; cache for :func:`multiscale_roi_backward`.
    """
    name = "multiscale_roi_forward"
    if op not in _OPS:
        raise ValueError(f"{name}: op must be 'align', 'warp' or 'pool', got {op!r}")
    forward, _, default_mode = _OPS[op]
    mode = default_mode if mode is None else mode
    if not isinstance(features, (list, tuple)) or len(features) == 0:
        raise ValueError(f"{name}: features must be a non-empty list of (N, C, H, W) arrays, finest first")
    if len(scales) != len(features):
        raise ValueError(f"{name}: got {len(features)} feature levels but {len(scales)} scales")
    first = features[0]
    for i, f in enumerate(features):
        if getattr(f, "ndim", None) != 4 or f.shape[:2] != first.shape[:2] or f.dtype != first.dtype:
            raise ValueError(f"{name}: every level must be (N, C, H, W) with the same N, C and dtype; "
                             f"level 0 is {tuple(first.shape)} {first.dtype}, level {i} is "
                             f"{tuple(getattr(f, 'shape', ()))} {getattr(f, 'dtype', type(f).__name__)}")
    rois, (PH, PW) = check_roi_inputs(features[0], rois, output_size, scales[0], sampling_ratio, aligned,
                                      impl, mode, name)
    xp = get_xp(features[0])
    N, C = features[0].shape[:2]
    if len(features) == 1:
        levels = xp.zeros(len(rois), dtype=np.int64)
    else:
        levels = LevelMapper.from_scales(scales, canonical_scale, canonical_level)(rois)
    out = xp.zeros((len(rois), C, PH, PW), dtype=features[0].dtype)
    per_level = []
    for level, (f, scale) in enumerate(zip(features, scales, strict=True)):
        idx = xp.flatnonzero(levels == level)
        cache = None
        if idx.size:
            out[idx], cache = forward(f, rois[idx], (PH, PW), scale, sampling_ratio, aligned, mode, impl)
        per_level.append((idx, cache))
    return out, MultiScaleCache(op, levels, per_level, [tuple(f.shape) for f in features])


def multiscale_roi_backward(dout, cache: MultiScaleCache):
    """Gradients for each level's features: a list of (N, C, H_l, W_l), finest first. Each RoI's
    ``dout`` flows back only into the level it was pooled from."""
    xp = get_xp(dout)
    backward = _OPS[cache.op][1]
    grads = []
    for shape, (idx, c) in zip(cache.feature_shapes, cache.per_level, strict=True):
        grads.append(backward(dout[idx], c) if c is not None else xp.zeros(shape, dtype=dout.dtype))
    return grads
