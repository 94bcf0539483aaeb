"""Hidden tests of assignment A4 (anchors, BoxCoder.encode/decode): torchvision fixtures for the coder,
odd strides and dtypes. Graders' copy only: not in a student release."""
import os

import numpy as np
import pytest

from minimaskrcnn.ops.anchors import AnchorGenerator
from minimaskrcnn.ops.boxes import BoxCoder

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")


@pytest.mark.assignment(id="A4", points=2)
@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_coder_matches_torchvision(dt):
    f = np.load(os.path.join(FIXTURES, "detops_boxes.npz"), allow_pickle=False)
    rtol = 2e-6 if dt == "float32" else 1e-14
    for name, weights in (("rpn", (1, 1, 1, 1)), ("head", (10, 10, 5, 5))):
        coder = BoxCoder(weights)
        enc = coder.encode(f[f"coder_ref_{dt}"], f[f"coder_prop_{dt}"])
        assert enc.dtype == dt
        ref = f[f"encode_{name}_{dt}"]
        np.testing.assert_allclose(enc, ref, rtol=rtol, atol=rtol * np.abs(ref).max(), err_msg=f"encode {name}")
        dec = coder.decode(f[f"coder_codes_{dt}"], f[f"coder_prop_{dt}"])
        ref = f[f"decode_{name}_{dt}"]
        assert dec.dtype == dt
        np.testing.assert_allclose(dec, ref, rtol=rtol, atol=rtol * np.abs(ref).max(), err_msg=f"decode {name}")


@pytest.mark.assignment(id="A4", points=1)
def test_anchor_centres_and_sizes_on_an_odd_grid():
    gen = AnchorGenerator(sizes=((8,), (20,)), aspect_ratios=((1.0,), (0.25, 1.0)))
    levels = gen.anchors_per_level((30, 45), [(5, 9), (2, 3)], dtype=np.float64)
    assert [len(a) for a in levels] == [45, 12]
    c = (levels[0][:, :2] + levels[0][:, 2:]) / 2   # stride (6, 5): centres at (5 j, 6 i), row by row
    np.testing.assert_array_equal(c[:9, 0], 5 * np.arange(9))
    np.testing.assert_array_equal(c[::9, 1], 6 * np.arange(5))
    np.testing.assert_array_equal(levels[0][0], [-4, -4, 4, 4])
    # ratio 0.25 = h / w: h = 10, w = 40 at level 1, location (0, 0)
    np.testing.assert_array_equal(levels[1][0], [-20, -5, 20, 5])


@pytest.mark.assignment(id="A4", points=1)
def test_encode_decode_float32_keeps_dtype_and_inverts():
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 50, (30, 2))
    gt = np.concatenate([xy, xy + rng.uniform(2, 30, (30, 2))], 1).astype(np.float32)
    xy = rng.uniform(0, 50, (30, 2))
    prop = np.concatenate([xy, xy + rng.uniform(2, 30, (30, 2))], 1).astype(np.float32)
    coder = BoxCoder((10, 10, 5, 5))
    d = coder.encode(gt, prop)
    assert d.dtype == np.float32
    back = coder.decode(np.tile(d, (1, 3)), prop)
    assert back.shape == (30, 12) and back.dtype == np.float32
    for c in range(3):
        np.testing.assert_allclose(back[:, 4 * c:4 * c + 4], gt, rtol=1e-4, atol=1e-3)
