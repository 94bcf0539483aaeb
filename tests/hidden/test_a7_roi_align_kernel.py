"""Hidden tests of assignment A7 (RoIAlign backward kernel): float32, adaptive sampling, RoIs past the
border and overlapping RoIs (cells hit by many threads), RoIWarp (same kernel, quantised RoIs).
Graders' copy only: not in a student release."""
import numpy as np
import pytest

from minimaskrcnn.ops import rawkernel
from minimaskrcnn.ops.roi_align import roi_align_backward, roi_align_forward
from minimaskrcnn.ops.roi_warp import roi_warp_backward, roi_warp_forward

needs_cxx = pytest.mark.skipif(not rawkernel.compiler_available(), reason="no C++ compiler for the kernel emulator")


def _grads(forward, backward, x, rois, **kw):
    rng = np.random.default_rng(99)
    out_n, cache_n = forward(x, rois, impl="numpy", **kw)
    out_k, cache_k = forward(x, rois, impl="kernel", **kw)
    dout = rng.standard_normal(out_n.shape).astype(x.dtype)
    return backward(dout, cache_k), backward(dout, cache_n)


@needs_cxx
@pytest.mark.assignment(id="A7", points=2)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_float32_overlapping_and_border_rois(mode):
    rng = np.random.default_rng(31)
    x = rng.standard_normal((1, 3, 9, 8)).astype(np.float32)
    rois = np.array([[0, -3.0, -2.0, 5.0, 6.0], [0, -2.5, -1.0, 6.0, 7.5], [0, 4.0, 5.0, 12.0, 11.0],
                     [0, 1.2, 1.7, 1.9, 2.1]])
    dk, dn = _grads(roi_align_forward, roi_align_backward, x, rois, output_size=(3, 3), spatial_scale=1.0,
                    sampling_ratio=0, aligned=True, mode=mode)
    assert dk.dtype == np.float32
    np.testing.assert_allclose(dk, dn, rtol=1e-5, atol=1e-5)


@needs_cxx
@pytest.mark.assignment(id="A7", points=1)
def test_roi_warp_backward_uses_the_same_kernel():
    rng = np.random.default_rng(32)
    x = rng.standard_normal((2, 2, 6, 7))
    rois = np.array([[1, 0.4, 0.6, 9.3, 7.7], [0, 3.6, 2.2, 12.1, 11.5]])
    dk, dn = _grads(roi_warp_forward, roi_warp_backward, x, rois, output_size=2, spatial_scale=0.5,
                    sampling_ratio=2, aligned=False, mode="avg")
    np.testing.assert_allclose(dk, dn, rtol=1e-12, atol=1e-12)
