"""RoIAlign's backward CUDA kernel (kernels/roi_align.cu, run by the CPU emulator) against the NumPy
operator and against a gradient computed by hand: each output gradient goes to the four bilinear
neighbours of every sample point of its bin (Mask R-CNN §3, 'RoIAlign')."""
import numpy as np
import pytest

from minimaskrcnn.ops import rawkernel
from minimaskrcnn.ops.roi_align import roi_align_backward, roi_align_forward

needs_cxx = pytest.mark.skipif(not rawkernel.compiler_available(), reason="no C++ compiler for the kernel emulator")


def problem(seed, N=2, C=2, H=7, W=6, K=5, scale=0.5):
    rng = np.random.default_rng(seed)
    extent = np.array([W, H]) / scale
    xy = rng.uniform(-0.3, 0.9, (K, 2)) * extent
    wh = rng.uniform(0.1, 0.8, (K, 2)) * extent
    rois = np.concatenate([rng.integers(0, N, (K, 1)), xy, xy + wh], axis=1)
    return rng.standard_normal((N, C, H, W)), rois, rng


def kernel_and_numpy_grads(x, rois, output_size, scale, sampling_ratio, aligned, mode, rng):
    out_n, cache_n = roi_align_forward(x, rois, output_size, scale, sampling_ratio, aligned, mode=mode, impl="numpy")
    out_k, cache_k = roi_align_forward(x, rois, output_size, scale, sampling_ratio, aligned, mode=mode, impl="kernel")
    dout = rng.standard_normal(out_n.shape).astype(x.dtype)
    return roi_align_backward(dout, cache_k), roi_align_backward(dout, cache_n)


@needs_cxx
@pytest.mark.assignment(id="A7", points=2)
def test_backward_by_hand():
    # One RoI, one bin, one sample point at (y, x) = (1.25, 2.5): neighbours rows 1-2, columns 2-3,
    # weights (1 - 0.25)(1 - 0.5), (1 - 0.25) 0.5, 0.25 (1 - 0.5), 0.25 * 0.5.
    x = np.zeros((1, 1, 4, 5))
    rois = np.array([[0, 2.5, 1.5, 3.5, 2.0]])   # aligned: minus half a cell -> x 2..3, y 1..1.5
    out, cache = roi_align_forward(x, rois, 1, 1.0, 1, True, impl="kernel")
    dx = roi_align_backward(np.full((1, 1, 1, 1), 2.0), cache)
    expected = np.zeros((4, 5))
    expected[1, 2], expected[1, 3], expected[2, 2], expected[2, 3] = 0.75, 0.75, 0.25, 0.25
    np.testing.assert_allclose(dx[0, 0], expected, rtol=1e-15, atol=1e-15)


@needs_cxx
@pytest.mark.assignment(id="A7", points=1)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_avg_backward_matches_numpy(aligned, sampling_ratio):
    x, rois, rng = problem(seed=10 + sampling_ratio + 3 * aligned)
    dk, dn = kernel_and_numpy_grads(x, rois, (3, 2), 0.5, sampling_ratio, aligned, "avg", rng)
    np.testing.assert_allclose(dk, dn, rtol=1e-12, atol=1e-12)


@needs_cxx
@pytest.mark.assignment(id="A7", points=1)
@pytest.mark.parametrize("aligned", [False, True])
def test_max_backward_matches_numpy(aligned):
    x, rois, rng = problem(seed=20 + aligned)
    dk, dn = kernel_and_numpy_grads(x, rois, 2, 0.5, 2, aligned, "max", rng)
    np.testing.assert_allclose(dk, dn, rtol=1e-12, atol=1e-12)
