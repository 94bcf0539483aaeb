"""Tests for minimaskrcnn.ops.anchors.AnchorGenerator: hand-computed anchors, layout, torchvision fixtures."""
import os

import numpy as np
import pytest

from minimaskrcnn.backend import cupy_available, to_numpy
from minimaskrcnn.ops.anchors import AnchorGenerator
from minimaskrcnn.testing import ANCHOR_CASES   # the cases tools/make_detops_fixtures.py ran

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.mark.assignment(id="A4", points=1)
def test_cell_anchors_by_hand():
    gen = AnchorGenerator(sizes=((32,),), aspect_ratios=((0.5, 1.0, 2.0),))
    # ratio = h / w: h = 32 sqrt(0.5) = 22.63, w = 32 / sqrt(0.5) = 45.25; halves 11.31 -> 11, 22.63 -> 23
    np.testing.assert_array_equal(gen.cell_anchors[0],
                                  [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])


@pytest.mark.assignment(id="A4", points=1)
def test_cell_anchor_order_is_ratio_major():
    gen = AnchorGenerator(sizes=((10, 20),), aspect_ratios=((1.0, 4.0),))
    # ratio 1: sizes 10, 20; ratio 4 (h = 2 s, w = s / 2): sizes 10, 20
    # (the half-width 2.5 rounds to 2: round half to even, as torch.round)
    np.testing.assert_array_equal(gen.cell_anchors[0], [[-5, -5, 5, 5], [-10, -10, 10, 10],
                                                        [-2, -10, 2, 10], [-5, -20, 5, 20]])


def test_default_anchors_are_the_papers():
    gen = AnchorGenerator()
    assert gen.num_anchors_per_location() == [3] * 5
    for size, cell in zip((32, 64, 128, 256, 512), gen.cell_anchors, strict=True):
        w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
        np.testing.assert_allclose(w * h, size ** 2, rtol=0.05)  # area size^2 up to the rounding
        np.testing.assert_allclose(h / w, [0.5, 1.0, 2.0], rtol=0.1)  # ratio = height / width


@pytest.mark.assignment(id="A4", points=1)
def test_grid_by_hand():
    gen = AnchorGenerator(sizes=((4,),), aspect_ratios=((1.0, 4.0),))
    anchors = gen((8, 8), [(2, 2)])  # stride 4: centres (0, 0), (4, 0), (0, 4), (4, 4), row by row
    base = np.array([[-2, -2, 2, 2], [-1, -4, 1, 4]])
    expected = np.concatenate([base + [cx, cy, cx, cy] for cy in (0, 4) for cx in (0, 4)])
    np.testing.assert_array_equal(anchors, expected)
    assert anchors.dtype == np.float32


@pytest.mark.assignment(id="A4", points=1)
def test_levels_strides_and_concatenation():
    gen = AnchorGenerator()
    feats = [(25, 38), (13, 19), (7, 10), (4, 5), (2, 3)]
    levels = gen.anchors_per_level((100, 152), feats, dtype=np.float64)
    assert [len(a) for a in levels] == [h * w * 3 for h, w in feats]
    np.testing.assert_array_equal(gen((100, 152), feats, dtype=np.float64), np.concatenate(levels))
    # stride = image // feature per axis: level 1 has strides (100 // 13, 152 // 19) = (7, 8)
    centres = (levels[1][::3, :2] + levels[1][::3, 2:]) / 2
    np.testing.assert_array_equal(centres[1] - centres[0], [8, 0])
    np.testing.assert_array_equal(centres[19] - centres[0], [0, 7])


def test_bad_arguments():
    gen = AnchorGenerator()
    with pytest.raises(ValueError, match="feature_sizes must have one \\(H, W\\) per level \\(5"):
        gen((64, 64), [(16, 16)])
    with pytest.raises(ValueError, match="feature_sizes entry \\(0, 4\\)"):
        gen((64, 64), [(16, 16), (8, 8), (4, 4), (2, 2), (0, 4)])
    with pytest.raises(ValueError, match="sizes and aspect_ratios must have one entry per level"):
        AnchorGenerator(sizes=((32,), (64,)), aspect_ratios=((1.0,), (1.0,), (1.0,)))
    with pytest.raises(ValueError, match="must be positive"):
        AnchorGenerator(sizes=((32,),), aspect_ratios=((0.0,),))


@pytest.mark.gpu
@pytest.mark.skipif(not cupy_available(), reason="needs CuPy and a CUDA device")
def test_cuda_anchors_equal_cpu():
    gen = AnchorGenerator()
    feats = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    np.testing.assert_array_equal(to_numpy(gen((64, 80), feats, device="cuda")), gen((64, 80), feats))




@pytest.mark.assignment(id="A4", points=1)
@pytest.mark.torch_fixture
@pytest.mark.parametrize("name", list(ANCHOR_CASES))
def test_fixture_anchor_generator(name):
    f = np.load(os.path.join(FIXTURES, "detops_anchors.npz"), allow_pickle=False)
    sizes, ratios, image, feats = ANCHOR_CASES[name]
    gen = AnchorGenerator(sizes, ratios)
    np.testing.assert_array_equal(np.concatenate(gen.cell_anchors), f[f"{name}_cell"])
    anchors = gen(image, feats)
    assert anchors.dtype == np.float32
    np.testing.assert_array_equal(anchors, f[name])
