"""RoIWarp (Dai, He, Sun, "Instance-aware Semantic Segmentation via Multi-task Network Cascades", 2016):
the middle row of Mask R-CNN's Table 2c.

RoIWarp samples the feature map bilinearly, like RoIAlign, but only after rounding the RoI's corners
to whole feature cells, as RoIPool does: ``round(x1 * spatial_scale)``. That one rounding is the
whole difference from RoIAlign, and Table 2c shows it costs most of RoIAlign's gain (27.2 vs 30.3
mask AP at stride 16): "RoIWarp ... still quantizes the RoI, losing alignment with the input".

Here RoIWarp is defined as exactly that: RoIAlign (same bins, sampling points, border rules and
``aligned`` offset) applied to the rounded RoI. When ``x * spatial_scale`` is already a whole number
the two are identical. (MNC's own layer also differed in smaller ways, e.g. one point per bin; those
are left out so that the comparison isolates the quantization.)

The implementation is RoIAlign's (roi_align.py, kernels/roi_align.cu) with ``quantize=True``.
"""
from __future__ import annotations

from .roi_align import RoIAlignCache, bilinear_roi_backward, bilinear_roi_forward


def roi_warp_forward(features, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False,
                     mode="avg", impl="numpy"):
    """RoIWarp: RoIAlign of each RoI after rounding its corners to whole cells (C's ``round``, halves
    away from zero).

    Args and returns: as :func:`minimaskrcnn.ops.roi_align.roi_align_forward` (features (N, C, H, W),
    rois (K, 5) in image pixels, output (K, C, PH, PW)); ``mode`` is ``"avg"`` or ``"max"``, the two
    RoIWarp rows of Table 2c.
    """
    return bilinear_roi_forward(features, rois, output_size, spatial_scale, sampling_ratio, aligned, mode,
                                impl, quantize=True, op="roi_warp_forward")


def roi_warp_backward(dout, cache: RoIAlignCache):
    """Gradient for ``features`` (N, C, H, W); the rounded RoI is a constant, as in RoIAlign."""
    return bilinear_roi_backward(dout, cache, op="roi_warp_backward")
