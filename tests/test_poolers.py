"""Multi-scale RoI pooling for FPN (Eq. 1): torchvision's MultiScaleRoIAlign fixture, the level rule at
its boundaries, scale inference, gradients, NumPy vs kernel over several levels, bad input."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minimaskrcnn.nn.gradcheck import check_gradient
from minimaskrcnn.ops import rawkernel
from minimaskrcnn.ops.poolers import LevelMapper, infer_scale, multiscale_roi_backward, multiscale_roi_forward

FIXTURES = Path(__file__).parent / "fixtures"
HAS_CXX = rawkernel.compiler_available()   # honours $MINIMASKRCNN_CXX and $CXX, as the emulator does
IMPLS = ["numpy", pytest.param("kernel", marks=pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler"))]
LEVELS = ["p2", "p3", "p4", "p5"]


@pytest.fixture(scope="module")
def tv():
    return np.load(FIXTURES / "multiscale_roi_align.npz", allow_pickle=False)


@pytest.mark.torch_fixture
def test_scales_and_levels_match_torchvision(tv):
    scales = [infer_scale(tv[f"features_{n}"].shape[-2:], tv["image_size"]) for n in LEVELS]
    np.testing.assert_array_equal(scales, tv["scales"])
    levels = LevelMapper.from_scales(scales)(tv["rois"])
    np.testing.assert_array_equal(levels, tv["levels"])
    assert set(levels.tolist()) == {0, 1, 2, 3}  # the fixture exercises every level


@pytest.mark.torch_fixture
@pytest.mark.parametrize("impl", IMPLS)
def test_multiscale_roi_align_matches_torchvision(tv, impl):
    features = [tv[f"features_{n}"] for n in LEVELS]
    out, cache = multiscale_roi_forward(features, tv["rois"], 3, list(tv["scales"]),
                                        int(tv["sampling_ratio"]), aligned=False, impl=impl)
    np.testing.assert_allclose(out, tv["out"], rtol=1e-12, atol=1e-13)
    for n, grad in zip(LEVELS, multiscale_roi_backward(tv["dout"], cache), strict=True):
        np.testing.assert_allclose(grad, tv[f"grad_{n}"], rtol=1e-12, atol=1e-13, err_msg=n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_level_boundaries(dtype):
    """sqrt(area) = 224 is level 4 exactly; just below drops to 3; 112 -> 3, 448 -> 5; clamped to
    2..5; eps = 1e-6 keeps exact powers of two on their level despite log2 round-off."""
    side = np.array([224, 223.9, 112, 448, 56, 20, 2000, 0, 150], dtype=dtype)
    rois = np.stack([np.zeros_like(side), np.full_like(side, 10), np.full_like(side, 30),
                     10 + side, 30 + side], axis=1)
    rois[-1, 3] = 10 - 5  # inverted box (negative area): the finest level
    levels = LevelMapper(2, 5)(rois) + 2
    np.testing.assert_array_equal(levels, [4, 3, 3, 5, 2, 2, 5, 2, 2])


def test_infer_scale():
    assert infer_scale((200, 304), (800, 1216)) == 0.25
    assert infer_scale((25, 38), (800, 1216)) == 1 / 32
    assert infer_scale((13, 17), (100, 130)) == 0.125       # 0.13 -> 2 ** round(-2.94)
    assert LevelMapper.from_scales([0.25, 0.125, 0.0625, 0.03125]).k_min == 2
    assert LevelMapper.from_scales([0.25, 0.125, 0.0625, 0.03125]).k_max == 5


@pytest.mark.parametrize("op", ["align", "warp", "pool"])
def test_gradient(op):
    """Every level's gradient by central differences (float64; the ops are piecewise linear in the
    features, and random features leave no ties for the max of RoIPool)."""
    rng = np.random.default_rng(0)
    features = [rng.standard_normal((1, 2, 16 // 2 ** i, 20 // 2 ** i)) for i in range(3)]
    side = np.array([20.0, 60.0, 120.0, 300.0, 35.0])  # levels 2, 3, 4 (and 5 clamped to 4), 2
    rois = np.stack([np.zeros(5), np.full(5, 4.0), np.full(5, 6.0), 4 + side, 6 + side], axis=1)
    scales = [1 / 4, 1 / 8, 1 / 16]
    dout = rng.standard_normal((5, 2, 2, 2))
    out, cache = multiscale_roi_forward(features, rois, 2, scales, 2, op=op)
    assert sorted(set(cache.levels.tolist())) == [0, 1, 2]
    grads = multiscale_roi_backward(dout, cache)
    for level in range(3):
        def f(x, level=level):
            fs = list(features)
            fs[level] = x
            return multiscale_roi_forward(fs, rois, 2, scales, 2, op=op)[0]
        assert np.abs(grads[level]).max() > 1e-3  # some RoI reads this level
        assert check_gradient(f, features[level], grads[level], dout) < 1e-7


@pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler for the kernel emulator")
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), op=st.sampled_from(["align", "warp", "pool"]),
       aligned=st.booleans(), sampling_ratio=st.integers(-1, 3), n_levels=st.integers(1, 4))
def test_numpy_and_kernel_agree_over_levels(seed, op, aligned, sampling_ratio, n_levels):
    rng = np.random.default_rng(seed)
    features = [rng.standard_normal((2, 2, 32 // 2 ** i, 40 // 2 ** i)).astype(np.float32)
                for i in range(n_levels)]
    scales = [1 / 2 ** (i + 2) for i in range(n_levels)]
    K = 8
    side = np.exp(rng.uniform(np.log(4), np.log(400), (K, 2)))
    xy = rng.uniform(-30, 170, (K, 2))
    rois = np.concatenate([rng.integers(0, 2, (K, 1)), xy, xy + side], axis=1)
    results = []
    for impl in ("numpy", "kernel"):
        out, cache = multiscale_roi_forward(features, rois, (3, 2), scales, sampling_ratio, aligned, op=op,
                                            impl=impl)
        dout = np.random.default_rng(seed).standard_normal(out.shape).astype(np.float32)
        results.append((out, multiscale_roi_backward(dout, cache)))
    (out_np, grads_np), (out_k, grads_k) = results
    np.testing.assert_allclose(out_np, out_k, rtol=1e-5, atol=1e-5)
    for g_np, g_k in zip(grads_np, grads_k, strict=True):
        np.testing.assert_allclose(g_np, g_k, rtol=1e-5, atol=1e-5)


def test_bad_input():
    f = [np.zeros((1, 2, 8, 8)), np.zeros((1, 2, 4, 4))]
    rois = np.array([[0, 1.0, 1.0, 5.0, 5.0]])
    with pytest.raises(ValueError, match="2 feature levels but 1 scales"):
        multiscale_roi_forward(f, rois, 2, [0.25])
    with pytest.raises(ValueError, match="same N, C and dtype"):
        multiscale_roi_forward([f[0], np.zeros((1, 3, 4, 4))], rois, 2, [0.25, 0.125])
    with pytest.raises(ValueError, match="non-empty list"):
        multiscale_roi_forward(f[0], rois, 2, [0.25])
    with pytest.raises(ValueError, match="op must be"):
        multiscale_roi_forward(f, rois, 2, [0.25, 0.125], op="crop")
    with pytest.raises(ValueError, match="NaN or infinite"):
        multiscale_roi_forward(f, np.array([[0, np.nan, 1.0, 5.0, 5.0]]), 2, [0.25, 0.125])
