"""Hidden tests of assignment A6 (RoIAlign's readable NumPy path, RoIPool's NumPy path): random maps and RoIs
(across the border, tiny, huge, inverted, on the second image) against the plain-loop oracle, float32
against the library's fast path, gradients with ``aligned`` and adaptive sampling, overlapping RoIs.
Graders' copy only: not in a student release."""
import numpy as np
import pytest

from minimaskrcnn.nn.gradcheck import check_gradient
from minimaskrcnn.ops.reference import roi_align_reference, roi_pool_reference
from minimaskrcnn.ops.roi_align import roi_align_backward, roi_align_forward
from minimaskrcnn.ops.roi_pool import roi_pool_backward, roi_pool_forward


def _problem(seed, K=7):
    rng = np.random.default_rng(seed)
    N, C, H, W = 2, 2, int(rng.integers(3, 9)), int(rng.integers(3, 9))
    scale = [1.0, 0.5, 0.25][seed % 3]
    extent = np.array([W, H, W, H]) / scale
    corners = rng.uniform(-0.6, 1.6, (K, 4)) * extent
    corners[0] = [0.3, 0.2, 0.9, 0.6] * extent                     # inside the map
    corners[1, 2:] = corners[1, :2] + rng.uniform(0.1, 0.9, 2) / scale   # tiny
    corners[2] = [-1.5, -2.0, 3.0, 2.5] * extent                   # huge
    rois = np.concatenate([np.r_[0, 1, rng.integers(0, N, K - 2)][:, None], corners], axis=1)
    return rng.standard_normal((N, C, H, W)), rois, scale


@pytest.mark.assignment(id="A6", points=3)
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_against_the_plain_loops(mode, aligned):
    for seed, (size, ratio) in enumerate([((2, 3), -1), ((3, 1), 2), ((1, 1), 0), ((4, 2), 3)]):
        x, rois, scale = _problem(seed)
        out, _ = roi_align_forward(x, rois, size, scale, ratio, aligned, mode=mode, impl="simple")
        expected = roi_align_reference(x, rois, size, scale, ratio, aligned, mode)
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12, err_msg=f"seed {seed}")


@pytest.mark.assignment(id="A6", points=2)
def test_roi_pool_against_the_plain_loops():
    for seed, size in enumerate([(2, 3), (3, 1), 1, (4, 4)]):
        x, rois, scale = _problem(10 + seed)
        out, cache = roi_pool_forward(x, rois, size, scale, impl="simple")
        np.testing.assert_array_equal(out, roi_pool_reference(x, rois, size, scale), err_msg=f"seed {seed}")
        assert cache.argmax.dtype == np.int32 and cache.argmax.shape == out.shape


@pytest.mark.assignment(id="A6", points=2)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_align_float32_equals_the_fast_path(mode):
    x, rois, scale = _problem(20)
    x = x.astype(np.float32)
    out, cache = roi_align_forward(x, rois, (3, 2), scale, -1, True, mode=mode, impl="simple")
    fast, fast_cache = roi_align_forward(x, rois, (3, 2), scale, -1, True, mode=mode, impl="numpy")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, fast, rtol=1e-5, atol=1e-5)
    dout = np.random.default_rng(0).standard_normal(out.shape).astype(np.float32)
    grad = roi_align_backward(dout, cache)
    assert grad.dtype == np.float32
    np.testing.assert_allclose(grad, roi_align_backward(dout, fast_cache), rtol=1e-4, atol=1e-5)


@pytest.mark.assignment(id="A6", points=2)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_align_gradient_aligned_adaptive(mode):
    x, rois, scale = _problem(30)
    dout = np.random.default_rng(1).standard_normal((len(rois), 2, 2, 3))

    def f(features):
        return roi_align_forward(features, rois, (2, 3), scale, -1, True, mode=mode, impl="simple")[0]

    _, cache = roi_align_forward(x, rois, (2, 3), scale, -1, True, mode=mode, impl="simple")
    analytic = roi_align_backward(dout, cache)
    assert np.abs(analytic[1]).max() > 0     # the RoI on the second image sends its gradient there
    assert check_gradient(f, x, analytic, dout) < 1e-7


@pytest.mark.assignment(id="A6", points=1)
def test_roi_pool_overlapping_rois_add_up():
    x = np.arange(30.0).reshape(1, 1, 5, 6)
    rois = np.array([[0, 0.0, 0.0, 5.0, 4.0], [0, 3.0, 2.0, 5.0, 4.0], [0, 4.0, 3.0, 5.0, 4.0]])
    out, cache = roi_pool_forward(x, rois, 1, 1.0, impl="simple")
    np.testing.assert_array_equal(out.ravel(), [29.0, 29.0, 29.0])
    grad = roi_pool_backward(np.array([1.0, 2.0, 4.0]).reshape(3, 1, 1, 1), cache)
    expected = np.zeros_like(x)
    expected[0, 0, 4, 5] = 7.0
    np.testing.assert_array_equal(grad, expected)
