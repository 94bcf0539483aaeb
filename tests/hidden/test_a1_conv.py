"""Hidden tests of assignment A1 (conv2d as im2col + GEMM): shapes the visible tests do not use, float32,
and the other layers built on the student's im2col / col2im (max pooling, transposed convolution, conv2d's
dispatch for stride 2). Graders' copy only: not in a student release."""
import numpy as np
import pytest

from minimaskrcnn.nn import functional as F
from minimaskrcnn.nn import reference as ref
from minimaskrcnn.nn.conv import conv2d_backward_im2col, conv2d_forward_im2col
from minimaskrcnn.nn.gradcheck import check_gradient


def _grads_ok(fwd, bwd, inputs, rng):
    out, cache = fwd(*inputs)
    dout = rng.standard_normal(out.shape)
    analytic = bwd(dout, cache)
    for k, x in enumerate(inputs):
        err = check_gradient(lambda _: fwd(*inputs)[0], x, analytic[k], dout)
        assert err < 1e-7, f"input {k}: relative error {err:.2e}"


@pytest.mark.assignment(id="A1", points=2)
@pytest.mark.parametrize("case", [
    # (N, C, H, W, Co, (kh, kw), stride, padding, dilation, groups)
    (3, 4, 9, 8, 6, (3, 2), (2, 3), (1, 2), (2, 1), 2),
    (1, 2, 5, 5, 2, (5, 5), (1, 1), (2, 2), (1, 1), 1),      # kernel as large as the (padded) image
    (2, 3, 6, 9, 3, (1, 1), (3, 2), (1, 0), (1, 1), 3),      # 1x1 with padding and groups = channels
])
def test_conv2d_im2col_other_shapes(case):
    rng = np.random.default_rng(11)
    N, C, H, W, Co, (kh, kw), s, p, d, g = case
    x, w, b = rng.standard_normal((N, C, H, W)), rng.standard_normal((Co, C // g, kh, kw)), rng.standard_normal(Co)
    out, _ = conv2d_forward_im2col(x, w, b, s, p, d, g)
    np.testing.assert_allclose(out, ref.conv2d_naive(x, w, b, s, p, d, g), rtol=1e-12, atol=1e-12)
    _grads_ok(lambda x, w, b: conv2d_forward_im2col(x, w, b, s, p, d, g), conv2d_backward_im2col, (x, w, b), rng)


@pytest.mark.assignment(id="A1", points=1)
def test_conv2d_im2col_keeps_float32():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    out, cache = conv2d_forward_im2col(x, w, None, (2, 2), (1, 1), (1, 1), 1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref.conv2d_naive(x.astype(np.float64), w.astype(np.float64), None, 2, 1),
                               rtol=1e-4, atol=1e-4)
    dx, dw, db = conv2d_backward_im2col(np.ones_like(out), cache)
    assert dx.dtype == dw.dtype == np.float32 and db is None


@pytest.mark.assignment(id="A1", points=2)
def test_the_layers_built_on_im2col():
    """Your im2col/col2im also serve max pooling, the transposed convolution and every stride-2 conv2d."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 3, 9, 8))
    out, cache = F.max_pool2d_forward(x, 3, 2, 1)
    np.testing.assert_allclose(out, ref.max_pool2d_naive(x, 3, 2, 1), rtol=1e-12)
    _grads_ok(lambda x: F.max_pool2d_forward(x, 3, 2, 1), lambda d, c: (F.max_pool2d_backward(d, c),), (x,), rng)
    w = rng.standard_normal((3, 2, 3, 3))
    out, _ = F.conv_transpose2d_forward(x, w, None, 2, 1, 1)
    np.testing.assert_allclose(out, ref.conv_transpose2d_naive(x, w, None, 2, 1, 1), rtol=1e-12, atol=1e-12)
    _grads_ok(lambda x, w: F.conv_transpose2d_forward(x, w, None, 2, 1, 1), F.conv_transpose2d_backward, (x, w), rng)
    w2 = rng.standard_normal((4, 3, 3, 3))
    out, _ = F.conv2d_forward(x, w2, None, 2, 1)
    np.testing.assert_allclose(out, ref.conv2d_naive(x, w2, None, 2, 1), rtol=1e-12, atol=1e-12)
