"""Tests for minimaskrcnn.ops.resize (bilinear resize) and minimaskrcnn.ops.masks (mask targets, pasting)."""
import os

import numpy as np
import pytest

from minimaskrcnn.backend import cupy_available, to_device, to_numpy
from minimaskrcnn.ops.masks import paste_masks_in_image, project_masks_on_boxes
from minimaskrcnn.ops.resize import linear_resize_weights, resize_bilinear

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not cupy_available(), reason="needs CuPy and a CUDA device")])]


def load():
    return np.load(os.path.join(FIXTURES, "detops_masks.npz"), allow_pickle=False)


# ---------------------------------------------------------------- resize_bilinear

def test_resize_by_hand():
    # upsampling [0, 1] to 4: sample points -0.25 (clamped to 0), 0.25, 0.75, 1.25 (past the last pixel)
    np.testing.assert_allclose(resize_bilinear(np.array([[0.0, 1.0]]), 1, 4), [[0, 0.25, 0.75, 1]],
                               rtol=1e-15)
    # downsampling by 2 averages pixel pairs: sample points 0.5 and 2.5
    np.testing.assert_allclose(resize_bilinear(np.array([[1.0, 3.0, 10.0, 20.0]]), 1, 2), [[2.0, 15.0]],
                               rtol=1e-15)
    # a single output pixel samples the centre
    np.testing.assert_allclose(resize_bilinear(np.arange(16.0).reshape(4, 4), 1, 1), [[7.5]], rtol=1e-15)


def test_resize_properties(rng):
    x = rng.uniform(size=(2, 3, 5, 6)).astype(np.float32)
    assert resize_bilinear(x, 5, 6).dtype == np.float32
    np.testing.assert_array_equal(resize_bilinear(x, 5, 6), x)  # same size: the identity, exactly
    out = resize_bilinear(x, 11, 4)
    assert out.shape == (2, 3, 11, 4)
    assert (out >= x.min(axis=(2, 3), keepdims=True) - 1e-7).all()  # a convex combination of the input
    np.testing.assert_allclose(resize_bilinear(np.full((3, 4), 2.5), 9, 7), 2.5, rtol=1e-15)
    # separable: resizing rows then columns equals resizing both at once
    np.testing.assert_allclose(resize_bilinear(resize_bilinear(x, 5, 4), 11, 4), out, rtol=1e-6)


def test_resize_bad_input():
    with pytest.raises(ValueError, match="x must be a floating-point array"):
        resize_bilinear(np.ones((3, 3), dtype=np.uint8), 4, 4)
    with pytest.raises(ValueError, match="x must have shape \\(..., h, w\\)"):
        resize_bilinear(np.ones(3), 4, 4)
    with pytest.raises(ValueError, match="out_h and out_w must be positive ints"):
        resize_bilinear(np.ones((3, 3)), 0, 4)


@pytest.mark.torch_fixture
@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_fixture_resize(dt):
    f = load()
    x = f[f"resize_in_{dt}"]
    for oh, ow in ((14, 18), (5, 4), (7, 9), (1, 1), (20, 3), (30, 29)):
        out = resize_bilinear(x, oh, ow)
        assert out.dtype == dt
        # the weights are exact (next test); where torch's vectorised loop rounds the sums is not: ~1 ulp
        np.testing.assert_allclose(out, f[f"resize_{oh}x{ow}_{dt}"], rtol=0,
                                   atol=1e-6 if dt == "float32" else 1e-14, err_msg=f"{oh}x{ow}")


@pytest.mark.torch_fixture
@pytest.mark.parametrize("n_in, n_out", [(30, 100), (30, 45), (9, 7), (7, 14), (28, 61), (30, 7), (30, 800)])
def test_fixture_resize_weights_are_exact(n_in, n_out):
    i0, i1, w0, w1 = linear_resize_weights(n_in, n_out, np.float32)
    weights = np.zeros((n_in, n_out), dtype=np.float32)
    np.add.at(weights, (i0, np.arange(n_out)), w0)  # i0 == i1 at the last pixel: the weights add up
    np.add.at(weights, (i1, np.arange(n_out)), w1)
    np.testing.assert_array_equal(weights, load()[f"weights_{n_in}_{n_out}"])


# ---------------------------------------------------------------- paste_masks_in_image

# A 2x2 mask of ones in the box [2, 2, 5, 5]: padded to 4x4 ([0, 1, 1, 0] per axis) over the box scaled by
# 4/2 about its centre 3.5, i.e. [0.5, 6.5] -> pixels 0..6 (7 of them). Resizing [0, 1, 1, 0] to 7 samples
# it at (j + 0.5) * 4/7 - 0.5, giving this profile along each axis:
PROFILE = np.array([0, 5 / 14, 13 / 14, 1, 13 / 14, 5 / 14, 0])


@pytest.mark.parametrize("device", DEVICES)
def test_paste_by_hand(device):
    masks = to_device(np.ones((1, 2, 2)), device)
    boxes = to_device(np.array([[2.0, 2.0, 5.0, 5.0]]), device)
    soft = to_numpy(paste_masks_in_image(masks, boxes, (10, 12), threshold=None))
    expected = np.zeros((1, 10, 12))
    expected[0, :7, :7] = np.outer(PROFILE, PROFILE)
    np.testing.assert_allclose(soft, expected, rtol=1e-14, atol=1e-15)
    hard = to_numpy(paste_masks_in_image(masks, boxes, (10, 12)))
    assert hard.dtype == bool
    # binarized at 0.5, the full mask covers exactly the box's pixels 2, 3, 4 (x and y in [2, 5))
    expected_hard = np.zeros((1, 10, 12), dtype=bool)
    expected_hard[0, 2:5, 2:5] = True
    np.testing.assert_array_equal(hard, expected_hard)


def test_paste_clips_at_the_image_border(rng):
    masks = rng.uniform(size=(1, 4, 4))
    # scale 6/4 about the centre -0.5: [-6.5, 5.5] truncated toward zero (as torch's int64 cast) -> [-6, 5]:
    # 12 x 12 pixels of which rows/columns 6..11 land on the image's pixels 0..5
    out = paste_masks_in_image(masks, np.array([[-4.5, -4.5, 3.5, 3.5]]), (8, 9), threshold=None)
    padded = np.pad(masks[0], 1)
    expected = np.zeros((8, 9))
    expected[:6, :6] = resize_bilinear(padded, 12, 12)[6:, 6:]
    np.testing.assert_allclose(out[0], expected, rtol=1e-15)


def test_paste_edge_cases():
    masks = np.ones((2, 3, 3), dtype=np.float32)
    # box 1 grows by 5/3 to [5.13, 5.47] -> the integer box [5, 5]: one pixel, the padded mask's centre (1)
    boxes = np.array([[100, 100, 120, 120], [5.2, 5.2, 5.4, 5.4]], dtype=np.float32)
    out = paste_masks_in_image(masks, boxes, (10, 10), threshold=None)
    assert out.shape == (2, 10, 10) and out.dtype == np.float32
    assert (out[0] == 0).all()  # entirely outside the image
    assert out[1, 5, 5] == 1 and out[1].sum() == 1  # a sub-pixel box still gets its one pixel
    empty = paste_masks_in_image(np.zeros((0, 28, 28)), np.zeros((0, 4)), (10, 12))
    assert empty.shape == (0, 10, 12) and empty.dtype == bool


def test_paste_bad_input():
    with pytest.raises(ValueError, match="masks must have shape \\(D, M, M\\)"):
        paste_masks_in_image(np.ones((1, 3, 4)), np.zeros((1, 4)), (5, 5))
    with pytest.raises(ValueError, match="masks must hold float probabilities"):
        paste_masks_in_image(np.ones((1, 3, 3), dtype=np.uint8), np.zeros((1, 4)), (5, 5))
    with pytest.raises(ValueError, match="one row per detection"):
        paste_masks_in_image(np.ones((2, 3, 3)), np.zeros((1, 4)), (5, 5))
    with pytest.raises(ValueError, match="boxes must have x1 <= x2"):
        paste_masks_in_image(np.ones((1, 3, 3)), np.array([[3.0, 0, 1, 1]]), (5, 5))
    with pytest.raises(ValueError, match="image_shape must be \\(H, W\\)"):
        paste_masks_in_image(np.ones((1, 3, 3)), np.zeros((1, 4)), (5,))


@pytest.mark.torch_fixture
def test_fixture_paste():
    f = load()
    out = paste_masks_in_image(f["paste_masks"], f["paste_boxes"], (60, 80), threshold=None)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, f["paste_out"], rtol=0, atol=1e-6)  # resize: a few float32 ulps
    hard = paste_masks_in_image(f["paste_masks"], f["paste_boxes"], (60, 80))
    np.testing.assert_array_equal(hard, f["paste_out"] > 0.5)


# ---------------------------------------------------------------- project_masks_on_boxes

@pytest.mark.assignment(id="A8", points=2)
def test_project_by_hand():
    gt = np.zeros((2, 4, 4), dtype=np.uint8)
    gt[0, :, :2] = 1  # GT 0: left half
    gt[1] = 1         # GT 1: everything
    boxes = np.array([[0, 0, 4, 4], [0, 0, 4, 4], [1, 1, 3, 3]], dtype=np.float64)
    out = project_masks_on_boxes(gt, boxes, np.array([0, 1, 1]), 2)
    assert out.shape == (3, 2, 2) and out.dtype == np.float64
    # RoIAlign with aligned=False samples bin 0 of [0, 4] at x = 0.5 and 1.5 (2 points per 2-wide bin): the
    # point 1.5 lies half way between a 1 and a 0, so the left bin averages (1 + 0.5) / 2 = 0.75.
    np.testing.assert_allclose(out[0], [[0.75, 0.0], [0.75, 0.0]], rtol=1e-15)
    np.testing.assert_allclose(out[1:], 1.0, rtol=1e-15)  # each RoI reads its own GT mask


def test_project_edge_cases():
    gt = np.ones((1, 5, 5), dtype=bool)
    empty = project_masks_on_boxes(gt, np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.int64), 7)
    assert empty.shape == (0, 7, 7) and empty.dtype == np.float32
    with pytest.raises(ValueError, match="matched_idxs must lie in \\[0, 1\\)"):
        project_masks_on_boxes(gt, np.array([[0, 0, 2, 2.0]]), np.array([1]), 7)
    with pytest.raises(ValueError, match="matched_idxs must be an integer array of shape \\(1,\\)"):
        project_masks_on_boxes(gt, np.array([[0, 0, 2, 2.0]]), np.array([0.0]), 7)
    with pytest.raises(ValueError, match="gt_masks must have shape \\(G, H, W\\)"):
        project_masks_on_boxes(gt[0], np.array([[0, 0, 2, 2.0]]), np.array([0]), 7)
    with pytest.raises(ValueError, match="boxes must have shape \\(N, 4\\)"):
        project_masks_on_boxes(gt, np.array([[0, 0, 2.0]]), np.array([0]), 7)


@pytest.mark.assignment(id="A8", points=2)
@pytest.mark.torch_fixture
def test_fixture_project():
    f = load()
    out = project_masks_on_boxes(f["project_gt_masks"], f["project_boxes"], f["project_matched"], 14)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, f["project_out"], rtol=0, atol=1e-6)
