"""The keypoint branch (paper §5): bilinear 2x upsampling, the heatmap targets and loss, decoding, the head and
its place in the model, each against torchvision (fixtures by tools/make_keypoint_fixtures.py) and float64
central differences."""
import pathlib

import numpy as np
import pytest

from minimaskrcnn.nn.gradcheck import check_gradient
from minimaskrcnn.nn.resample import upsample_bilinear_backward, upsample_bilinear_forward

FIX = pathlib.Path(__file__).parent / "fixtures"
TOL = 1e-7


# ---- bilinear 2x upsampling ------------------------------------------------------------------------------------
def test_upsample_bilinear_matches_torch_forward_and_backward():
    fx = np.load(FIX / "keypoint_upsample.npz")
    for i in range(3):
        out, cache = upsample_bilinear_forward(fx[f"x{i}"])
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, fx[f"y{i}"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(upsample_bilinear_backward(fx[f"g{i}"], cache), fx[f"dx{i}"], rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize("shape, kw", [((2, 3, 5, 4), {}), ((1, 2, 3, 6), {"scale_factor": 3}),
                                       ((1, 1, 4, 5), {"size": (7, 9)})])
def test_upsample_bilinear_gradient(shape, kw):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    out, cache = upsample_bilinear_forward(x, **kw)
    dout = rng.standard_normal(out.shape)
    err = check_gradient(lambda _: upsample_bilinear_forward(x, **kw)[0], x, upsample_bilinear_backward(dout, cache),
                         dout)
    assert err < TOL, err


def test_upsample_bilinear_keeps_constants_and_interpolates_between_centres():
    x = np.full((1, 1, 3, 3), 2.5)
    np.testing.assert_allclose(upsample_bilinear_forward(x)[0], 2.5)
    ramp = np.arange(4.0)[None, None, None, :].repeat(2, axis=2)
    out = upsample_bilinear_forward(ramp)[0][0, 0, 0]
    np.testing.assert_allclose(out, [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])   # edges clamp
