"""Every layer: forward against a plain-loop reference, backward against float64 central differences."""
from pathlib import Path

import numpy as np
import pytest

from minimaskrcnn.nn import functional as F
from minimaskrcnn.nn import reference as ref
from minimaskrcnn.nn._conv_rowshift import Conv2dRowShiftCache
from minimaskrcnn.nn._conv_winograd import Conv2dWinogradCache, conv2d_backward_winograd, conv2d_forward_winograd
from minimaskrcnn.nn.conv import Conv2dIm2colCache, conv2d_backward_im2col, conv2d_forward_im2col
from minimaskrcnn.nn.gradcheck import check_gradient
from minimaskrcnn.nn.resample import nearest_indices

TOL = 1e-7  # relative error of an analytic float64 gradient against central differences


def grads_ok(fwd, bwd, inputs, names, rng, tol=TOL):
    """Check every gradient ``bwd`` returns against central differences of ``sum(fwd(*inputs) * dout)``."""
    out, cache = fwd(*inputs)
    dout = rng.standard_normal(out.shape)
    analytic = bwd(dout, cache)
    if not isinstance(analytic, tuple):
        analytic = (analytic,)
    for k, name in enumerate(names):
        if name is None:
            continue
        err = check_gradient(lambda _: fwd(*inputs)[0], inputs[k], analytic[k], dout)
        assert err < tol, f"d{name}: relative error {err:.2e}"


CONV_CASES = [
    # (N, C, H, W, Co, k, stride, padding, dilation, groups)
    (2, 3, 7, 6, 4, 3, 1, 1, 1, 1),
    (1, 4, 9, 8, 6, 3, 2, 1, 1, 2),
    (2, 2, 8, 7, 3, 3, 1, 2, 2, 1),
    (1, 3, 7, 9, 2, (1, 3), (2, 1), (0, 1), 1, 1),
    (2, 4, 5, 5, 4, 1, 1, 0, 1, 1),
    (2, 4, 6, 7, 5, 1, 2, 0, 1, 1),
    (1, 6, 7, 7, 6, 3, 1, 1, 1, 3),
    (1, 2, 11, 10, 3, 7, 2, 3, 1, 1),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_forward_matches_loops(case, rng):
    N, C, H, W, Co, k, s, p, d, g = case
    kh, kw = (k, k) if np.isscalar(k) else k
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((Co, C // g, kh, kw))
    b = rng.standard_normal(Co)
    out, _ = F.conv2d_forward(x, w, b, s, p, d, g)
    np.testing.assert_allclose(out, ref.conv2d_naive(x, w, b, s, p, d, g), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradients(case, rng):
    N, C, H, W, Co, k, s, p, d, g = case
    kh, kw = (k, k) if np.isscalar(k) else k
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((Co, C // g, kh, kw))
    b = rng.standard_normal(Co)
    grads_ok(lambda x, w, b: F.conv2d_forward(x, w, b, s, p, d, g), F.conv2d_backward, (x, w, b),
             ("x", "w", "b"), rng)


def _conv_case(case, rng):
    N, C, H, W, Co, k, s, p, d, g = case
    kh, kw = (k, k) if np.isscalar(k) else k
    pairs = tuple((v, v) if np.isscalar(v) else tuple(v) for v in (s, p, d))
    return (rng.standard_normal((N, C, H, W)), rng.standard_normal((Co, C // g, kh, kw)),
            rng.standard_normal(Co), *pairs, g)


@pytest.mark.assignment(id="A1", points=1)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_im2col_path_on_its_own(case, rng):
    """The plain path (the one students write) against the loops and central differences, for every case,
    including the stride-1 ones conv2d_forward sends down the row-shift path."""
    x, w, b, s, p, d, g = _conv_case(case, rng)
    out, cache = conv2d_forward_im2col(x, w, b, s, p, d, g)
    assert isinstance(cache, Conv2dIm2colCache) and cache.cols.shape[:2] == (x.shape[0], g)
    np.testing.assert_allclose(out, ref.conv2d_naive(x, w, b, s, p, d, g), rtol=1e-12, atol=1e-12)
    grads_ok(lambda x, w, b: conv2d_forward_im2col(x, w, b, s, p, d, g), conv2d_backward_im2col, (x, w, b),
             ("x", "w", "b"), rng)
    out_none, cache_none = conv2d_forward_im2col(x, w, None, s, p, d, g)
    assert conv2d_backward_im2col(np.ones_like(out_none), cache_none)[2] is None


@pytest.mark.assignment(id="A1", points=1)
def test_im2col_columns_by_hand():
    """The column layout im2col's docstring promises: row ``(c*kh + i)*kw + j``, column ``oy*Wo + ox``."""
    x = np.arange(2 * 2 * 4 * 5, dtype=np.float64).reshape(2, 2, 4, 5)
    cols = F.im2col(x, 2, 3, stride=(2, 1), padding=(1, 0), dilation=(1, 2))     # Ho = 3, Wo = 1
    assert cols.shape == (2, 2 * 2 * 3, 3 * 1)
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))
    for n, c, i, j, oy in np.ndindex(2, 2, 2, 3, 3):
        assert cols[n, (c * 2 + i) * 3 + j, oy] == xpad[n, c, oy * 2 + i, j * 2], (n, c, i, j, oy)


@pytest.mark.assignment(id="A1", points=1)
@pytest.mark.parametrize("k, s, p, d", [(3, 1, 1, 1), (3, 2, 1, 1), (2, 1, 0, 2), (1, 2, 0, 1),
                                        ((2, 3), (1, 2), (1, 0), 1)])
def test_col2im_is_the_adjoint_of_im2col(k, s, p, d, rng):
    """``<im2col(x), c> == <x, col2im(c)>`` for every x and c: col2im adds every column entry back where
    im2col copied it from (overlapping windows accumulate; padding is dropped)."""
    kh, kw = (k, k) if np.isscalar(k) else k
    pairs = [(v, v) if np.isscalar(v) else v for v in (s, p, d)]
    x = rng.standard_normal((2, 3, 6, 7))
    cols = F.im2col(x, kh, kw, *pairs)
    c = rng.standard_normal(cols.shape)
    back = F.col2im(c, x.shape, kh, kw, *pairs)
    assert back.shape == x.shape
    np.testing.assert_allclose((cols * c).sum(), (x * back).sum(), rtol=1e-12)


@pytest.mark.parametrize("case", [CONV_CASES[i] for i in (0, 2, 6)])   # the stride-1 3x3 cases
def test_conv2d_dispatch_and_the_two_paths_agree(case, rng):
    """Stride 1 with a kernel taller than a row takes the row-shift path; it equals the plain path."""
    x, w, b, s, p, d, g = _conv_case(case, rng)
    out, cache = F.conv2d_forward(x, w, b, s, p, d, g)
    assert isinstance(cache, Conv2dRowShiftCache)
    plain, plain_cache = conv2d_forward_im2col(x, w, b, s, p, d, g)
    np.testing.assert_allclose(out, plain, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    for fast, slow in zip(F.conv2d_backward(dout, cache), conv2d_backward_im2col(dout, plain_cache), strict=True):
        np.testing.assert_allclose(fast, slow, rtol=1e-11, atol=1e-11)


def test_conv2d_dispatch_takes_im2col_otherwise(rng):
    for stride, k in ((2, 3), (1, 1), (1, (1, 3))):
        kh, kw = (k, k) if np.isscalar(k) else k
        _, cache = F.conv2d_forward(rng.standard_normal((1, 2, 6, 6)), rng.standard_normal((3, 2, kh, kw)),
                                    None, stride, 0)
        assert isinstance(cache, Conv2dIm2colCache), (stride, k)


@pytest.mark.parametrize("height, row_shifts", [(2, False), (4, False), (5, True), (8, True)])
def test_conv2d_dispatch_sends_short_maps_to_im2col(rng, height, row_shifts):
    """A 3x3 stride-1 conv drops 2 rows per image on the row-shift path: with 4 output rows or fewer
    (a third or more of the work wasted) im2col is taken; both give the same gradients."""
    x, w = rng.standard_normal((3, 4, height, 6)), rng.standard_normal((5, 4, 3, 3))
    out, cache = F.conv2d_forward(x, w, None, 1, 1)
    assert isinstance(cache, Conv2dRowShiftCache if row_shifts else Conv2dIm2colCache)
    plain, plain_cache = conv2d_forward_im2col(x, w, None, (1, 1), (1, 1), (1, 1), 1)
    np.testing.assert_allclose(out, plain, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    for got, want in zip(F.conv2d_backward(dout, cache)[:2], conv2d_backward_im2col(dout, plain_cache)[:2]):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("one_gemm_rows", [0, 10 ** 6])       # one GEMM per kernel row, or one for all rows
def test_conv2d_row_shift_gemm_layouts_agree_with_im2col(one_gemm_rows, monkeypatch, rng):
    import minimaskrcnn.nn._conv_rowshift as rowshift

    monkeypatch.setattr(rowshift, "ONE_GEMM_ROWS", one_gemm_rows)
    for groups, dilation in ((1, 1), (2, 2)):
        x, w, b = rng.standard_normal((3, 4, 9, 8)), rng.standard_normal((6, 4 // groups, 3, 3)), rng.standard_normal(6)
        out, cache = F.conv2d_forward(x, w, b, 1, dilation, dilation, groups)
        assert isinstance(cache, Conv2dRowShiftCache)
        plain, plain_cache = conv2d_forward_im2col(x, w, b, (1, 1), (dilation,) * 2, (dilation,) * 2, groups)
        np.testing.assert_allclose(out, plain, rtol=1e-12, atol=1e-12)
        dout = rng.standard_normal(out.shape)
        for got, want in zip(F.conv2d_backward(dout, cache), conv2d_backward_im2col(dout, plain_cache), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


WINOGRAD_CASES = [
    # (N, C_in, H, W, C_out, padding, bias)
    (2, 3, 9, 11, 4, (1, 1), True),     # 9 output rows: the last tile's second row is dropped
    (1, 2, 10, 10, 3, (0, 0), False),   # no padding: dx's is 2
    (3, 2, 8, 9, 2, (2, 2), True),      # padding 2: dx's is 0
    (2, 3, 9, 8, 5, (0, 2), True),
    (2, 3, 11, 8, 5, (2, 0), False),
    (1, 1, 8, 8, 1, (1, 1), True),
]


@pytest.mark.parametrize("case", WINOGRAD_CASES)
def test_conv2d_winograd_path_agrees_with_im2col(case, rng):
    """F(2, 3) computes the same convolution and gradients as the plain path (to float64 round-off), with and
    without the input gradient."""
    N, C, H, W, Co, p, bias = case
    x, w = rng.standard_normal((N, C, H, W)), rng.standard_normal((Co, C, 3, 3))
    b = rng.standard_normal(Co) if bias else None
    out, cache = conv2d_forward_winograd(x, w, b, p)
    plain, plain_cache = conv2d_forward_im2col(x, w, b, (1, 1), p, (1, 1), 1)
    assert out.shape == plain.shape
    np.testing.assert_allclose(out, plain, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    got, want = conv2d_backward_winograd(dout, cache), conv2d_backward_im2col(dout, plain_cache)
    for name, g, w_ in zip(("dx", "dw", "db"), got, want, strict=True):
        if w_ is None:
            assert g is None, name
        else:
            assert g.shape == w_.shape, name
            np.testing.assert_allclose(g, w_, rtol=1e-11, atol=1e-11, err_msg=name)
    dx, dw, db = conv2d_backward_winograd(dout, cache, need_dx=False)
    assert dx is None and np.array_equal(dw, got[1]) and (db is None or np.array_equal(db, got[2]))


def test_conv2d_winograd_in_groups_of_images_is_the_same(monkeypatch, rng):
    """Images go through in groups (CHUNK_BYTES): one at a time gives what all at once gives, dw summed."""
    import minimaskrcnn.nn._conv_winograd as winograd

    x, w, b = rng.standard_normal((3, 2, 9, 10)), rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4)
    out, cache = conv2d_forward_winograd(x, w, b, (1, 1))
    dout = rng.standard_normal(out.shape)
    whole = conv2d_backward_winograd(dout, cache)
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 1)
    assert winograd._chunks(x, (1, 1)) == [(0, 1), (1, 2), (2, 3)]
    out1, cache1 = conv2d_forward_winograd(x, w, b, (1, 1))
    np.testing.assert_allclose(out1, out, rtol=1e-13, atol=1e-13)
    for got, want in zip(conv2d_backward_winograd(dout, cache1), whole, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", [WINOGRAD_CASES[i] for i in (0, 1, 4)])
def test_conv2d_winograd_gradients(case, rng):
    N, C, H, W, Co, p, _ = case
    x, w, b = rng.standard_normal((N, C, H, W)), rng.standard_normal((Co, C, 3, 3)), rng.standard_normal(Co)
    grads_ok(lambda x, w, b: conv2d_forward_winograd(x, w, b, p), conv2d_backward_winograd, (x, w, b),
             ("x", "w", "b"), rng)


@pytest.mark.parametrize("shape, kwargs, winograd", [
    ((1, 128, 32, 32, 128), {}, True),                  # 128 channels in and out, 1,024 output pixels
    ((16, 128, 8, 8, 128), {}, True),                   # the pixels may come from several images
    ((1, 64, 64, 64, 64), {}, True),                    # 64 channels on a map 64 wide
    ((1, 64, 32, 32, 64), {}, False),                   # ... but not 32 wide
    ((1, 128, 32, 32, 64), {}, False),                  # too few output channels
    ((4, 128, 8, 8, 128), {}, False),                   # too few pixels
    ((64, 128, 6, 6, 128), {}, False),                  # maps under 8x8
    ((1, 128, 32, 32, 128), {"stride": 2}, False),
    ((1, 128, 32, 32, 128), {"dilation": 2, "padding": 2}, False),
    ((1, 128, 32, 32, 128), {"groups": 2}, False),
    ((1, 128, 150, 150, 128), {}, False),               # one image's transform over MAX_IMAGE_BYTES
])
def test_conv2d_dispatch_takes_winograd_for_wide_3x3_convs(shape, kwargs, winograd, rng):
    N, C, H, W, Co = shape
    groups = kwargs.get("groups", 1)
    x, w = rng.standard_normal((N, C, H, W)), rng.standard_normal((Co, C // groups, 3, 3))
    out, cache = F.conv2d_forward(x, w, None, **{"padding": 1, **kwargs})
    assert isinstance(cache, Conv2dWinogradCache) == winograd
    s, p, d = ((v, v) for v in (kwargs.get("stride", 1), kwargs.get("padding", 1), kwargs.get("dilation", 1)))
    plain, _ = conv2d_forward_im2col(x, w, None, s, p, d, groups)
    np.testing.assert_allclose(out, plain, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("stride", [1, 2])      # the row-shift path and the im2col path
def test_conv2d_backward_without_the_input_gradient(stride, rng):
    x, w, b = rng.standard_normal((2, 3, 9, 9)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    out, cache = F.conv2d_forward(x, w, b, stride, 1)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = F.conv2d_backward(dout, cache, need_dx=False)
    _, dw_all, db_all = F.conv2d_backward(dout, cache)
    assert dx is None and np.array_equal(dw, dw_all) and np.array_equal(db, db_all)


def test_conv2d_without_bias(rng):
    x, w = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3))
    out, cache = F.conv2d_forward(x, w, None, padding=1)
    np.testing.assert_allclose(out, ref.conv2d_naive(x, w, None, 1, 1), atol=1e-12)
    assert F.conv2d_backward(np.ones_like(out), cache)[2] is None


def test_conv2d_float32_close_to_float64(rng):
    x, w = rng.standard_normal((2, 8, 9, 9)), rng.standard_normal((5, 8, 3, 3))
    out64, _ = F.conv2d_forward(x, w, None, 1, 1)
    out32, _ = F.conv2d_forward(x.astype(np.float32), w.astype(np.float32), None, 1, 1)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, out64, rtol=1e-4, atol=1e-4)


DECONV_CASES = [
    # (N, C, H, W, Co, k, stride, padding, output_padding, groups)
    (2, 3, 4, 5, 2, 2, 2, 0, 0, 1),   # the mask head's 2x2 / 2 upsampler
    (1, 4, 3, 3, 6, 3, 2, 1, 1, 2),
    (2, 2, 4, 3, 3, 3, 1, 1, 0, 1),
    (1, 2, 3, 4, 2, 4, 3, 1, 2, 1),
]


@pytest.mark.parametrize("case", DECONV_CASES)
def test_conv_transpose2d_forward_and_gradients(case, rng):
    N, C, H, W, Co, k, s, p, op, g = case
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((C, Co // g, k, k))
    b = rng.standard_normal(Co)
    out, _ = F.conv_transpose2d_forward(x, w, b, s, p, op, g)
    np.testing.assert_allclose(out, ref.conv_transpose2d_naive(x, w, b, s, p, op, g), rtol=1e-12, atol=1e-12)
    grads_ok(lambda x, w, b: F.conv_transpose2d_forward(x, w, b, s, p, op, g), F.conv_transpose2d_backward,
             (x, w, b), ("x", "w", "b"), rng)


def test_conv_transpose_is_adjoint_of_conv(rng):
    """<conv(x), y> == <x, conv_transpose(y)> with the same weights: the two are transposes of one matrix."""
    x = rng.standard_normal((2, 3, 9, 8))
    w = rng.standard_normal((4, 3, 3, 3))
    y, _ = F.conv2d_forward(x, w, None, 2, 1)
    r = rng.standard_normal(y.shape)
    xt, _ = F.conv_transpose2d_forward(r, w, None, 2, 1, output_padding=(0, 1))
    assert xt.shape == x.shape
    np.testing.assert_allclose(np.sum(y * r), np.sum(x * xt), rtol=1e-12)


def test_linear(rng):
    x, w, b = rng.standard_normal((5, 7)), rng.standard_normal((3, 7)), rng.standard_normal(3)
    out, _ = F.linear_forward(x, w, b)
    np.testing.assert_allclose(out, np.einsum("ni,oi->no", x, w) + b, rtol=1e-12)
    grads_ok(F.linear_forward, F.linear_backward, (x, w, b), ("x", "w", "b"), rng)


def test_relu(rng):
    x = rng.standard_normal((3, 4, 5))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink at 0
    out, _ = F.relu_forward(x)
    np.testing.assert_array_equal(out, np.where(x > 0, x, 0))
    grads_ok(F.relu_forward, F.relu_backward, (x,), ("x",), rng)


@pytest.mark.parametrize("k,s,p,shape", [(3, 2, 1, (2, 3, 9, 8)), (2, 2, 0, (1, 2, 6, 6)), (1, 2, 0, (2, 2, 5, 7)),
                                         (3, 1, 1, (1, 2, 5, 4))])
def test_max_pool2d(k, s, p, shape, rng):
    # A permutation of well-separated values: no ties, so the argmax (and the gradient) is unique.
    x = rng.permutation(np.prod(shape)).reshape(shape) * 0.1 + rng.uniform(0, 0.01, shape)
    out, _ = F.max_pool2d_forward(x, k, s, p)
    np.testing.assert_array_equal(out, ref.max_pool2d_naive(x, k, s, p))
    grads_ok(lambda x: F.max_pool2d_forward(x, k, s, p), F.max_pool2d_backward, (x,), ("x",), rng)


@pytest.mark.parametrize("shape,size,factor", [((2, 3, 4, 5), (8, 10), None), ((1, 2, 3, 3), None, 2),
                                               ((1, 2, 3, 4), (7, 9), None), ((1, 1, 5, 4), (3, 2), None)])
def test_upsample_nearest(shape, size, factor, rng):
    x = rng.standard_normal(shape)
    out, _ = F.upsample_nearest_forward(x, size=size, scale_factor=factor)
    oh, ow = size if size is not None else (shape[2] * factor, shape[3] * factor)
    np.testing.assert_array_equal(out, ref.upsample_nearest_naive(x, oh, ow))
    grads_ok(lambda x: F.upsample_nearest_forward(x, size=size, scale_factor=factor),
             F.upsample_nearest_backward, (x,), ("x",), rng)


@pytest.fixture(scope="module")
def torch_nearest():
    """Which row torch's F.interpolate(mode="nearest") copies, per (in, out) pair (tools/make_nearest_fixtures.py)."""
    with np.load(Path(__file__).parent / "fixtures" / "nearest.npz", allow_pickle=False) as f:
        fx = {k: f[k] for k in f.files}
    split = lambda src, outs: np.split(src.astype(np.int64), np.cumsum(outs)[:-1])  # noqa: E731
    sizes = list(zip(fx["size_pairs"].tolist(), split(fx["size_src"], fx["size_pairs"][:, 1]), strict=True))
    scales = list(zip(fx["scale_cases"].tolist(), split(fx["scale_src"], fx["scale_cases"][:, 1]), strict=True))
    scales = [((i, o, fx["scales"][k]), src) for (i, o, k), src in scales]
    return sizes, scales


@pytest.mark.torch_fixture
def test_nearest_indices_are_pytorchs(torch_nearest):
    """Every (in, out) pair, including those where float32 rounds ``dst * in / out`` just below a whole
    number and a float64 ``floor`` picks the next pixel (in 2, out 82, dst 41)."""
    sizes, scales = torch_nearest
    float64_differs = 0
    for (i, o), src in sizes:
        np.testing.assert_array_equal(nearest_indices(i, o), src, err_msg=f"in {i}, out {o}")
        float64_differs += not np.array_equal(np.minimum(np.floor(np.arange(o) * i / o), i - 1), src)
    assert float64_differs > 50  # the fixture does hold the pairs where the float64 rule fails
    for (i, o, scale), src in scales:
        np.testing.assert_array_equal(nearest_indices(i, o, scale=scale), src, err_msg=f"in {i}, scale {scale}")


@pytest.mark.torch_fixture
def test_upsample_nearest_copies_the_pixels_pytorch_copies(torch_nearest):
    """The layer itself, along each axis (the input holds its own index): size= and scale_factor= calls."""
    sizes, scales = torch_nearest
    for (i, o), src in sizes[::7] + [s for s in sizes if s[0][0] >= 49]:   # every 7th pair, and the large ones
        rows = np.arange(i, dtype=np.float64)
        out, _ = F.upsample_nearest_forward(rows[None, None, :, None], size=(o, 1))
        np.testing.assert_array_equal(out[0, 0, :, 0], src, err_msg=f"rows: in {i}, out {o}")
        out, _ = F.upsample_nearest_forward(rows[None, None, None, :], size=(1, o))
        np.testing.assert_array_equal(out[0, 0, 0], src, err_msg=f"columns: in {i}, out {o}")
    for (i, _, scale), src in scales:
        out, _ = F.upsample_nearest_forward(np.arange(i, dtype=np.float32)[None, None, :, None],
                                            scale_factor=(scale, 1))
        np.testing.assert_array_equal(out[0, 0, :, 0], src, err_msg=f"in {i}, scale {scale}")
    x = np.arange(2 * 82, dtype=np.float64).reshape(1, 1, 2, 82)
    np.testing.assert_array_equal(ref.upsample_nearest_naive(x, 82, 82), F.upsample_nearest_forward(x, (82, 82))[0])


@pytest.mark.assignment(id="A2", points=2)
@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 4, 5)])
def test_batch_norm_training(shape, rng):
    x = rng.standard_normal(shape) * 2 + 1
    g, b = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    out, _ = F.batch_norm_forward(x, g, b)
    np.testing.assert_allclose(out, ref.batch_norm_naive(x, g, b), rtol=1e-10, atol=1e-12)
    grads_ok(lambda x, g, b: F.batch_norm_forward(x, g, b), F.batch_norm_backward, (x, g, b),
             ("x", "gamma", "beta"), rng)


@pytest.mark.assignment(id="A2", points=2)
def test_batch_norm_running_statistics_and_eval(rng):
    x = rng.standard_normal((6, 3, 2, 2)) * 3 + 2
    rm, rv = np.zeros(3), np.ones(3)
    g, b = rng.standard_normal(3), rng.standard_normal(3)
    F.batch_norm_forward(x, g, b, rm, rv, training=True, momentum=0.1)
    mean = x.mean(axis=(0, 2, 3))
    unbiased = x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(rm, 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(rv, 0.9 + 0.1 * unbiased, rtol=1e-12)
    out, _ = F.batch_norm_forward(x, g, b, rm, rv, training=False)
    expect = (x - rm.reshape(1, -1, 1, 1)) / np.sqrt(rv.reshape(1, -1, 1, 1) + 1e-5) * g.reshape(1, -1, 1, 1) \
        + b.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(out, expect, rtol=1e-12)
    grads_ok(lambda x, g, b: F.batch_norm_forward(x, g, b, rm, rv, training=False), F.batch_norm_backward,
             (x, g, b), ("x", "gamma", "beta"), rng)


@pytest.mark.assignment(id="A2", points=1)
def test_frozen_batch_norm(rng):
    x = rng.standard_normal((2, 3, 4, 4))
    w, b, rm, rv = rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    out, _ = F.frozen_batch_norm_forward(x, w, b, rm, rv)
    c = (1, -1, 1, 1)
    expect = (x - rm.reshape(c)) / np.sqrt(rv.reshape(c) + 1e-5) * w.reshape(c) + b.reshape(c)
    np.testing.assert_allclose(out, expect, rtol=1e-12)
    grads_ok(lambda x: F.frozen_batch_norm_forward(x, w, b, rm, rv), F.frozen_batch_norm_backward, (x,), ("x",), rng)


@pytest.mark.parametrize("shape,groups", [((2, 6, 3, 4), 3), ((3, 4, 5, 2), 1), ((2, 4, 2, 2), 4)])
def test_group_norm(shape, groups, rng):
    x = rng.standard_normal(shape) * 2 - 1
    g, b = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    out, _ = F.group_norm_forward(x, g, b, groups)
    np.testing.assert_allclose(out, ref.group_norm_naive(x, g, b, groups), rtol=1e-10, atol=1e-12)
    grads_ok(lambda x, g, b: F.group_norm_forward(x, g, b, groups), F.group_norm_backward, (x, g, b),
             ("x", "gamma", "beta"), rng)


def _scalar_loss_grads_ok(fwd, bwd, x, dloss=1.7):
    _, cache = fwd(x)
    assert check_gradient(lambda _: fwd(x)[0], x, bwd(dloss, cache), dloss) < TOL


def test_softmax_cross_entropy(rng):
    logits = rng.standard_normal((6, 4)) * 3
    labels = np.array([0, 3, -1, 2, 1, -1])
    loss, _ = F.softmax_cross_entropy_forward(logits, labels)
    np.testing.assert_allclose(loss, ref.softmax_cross_entropy_naive(logits, labels), rtol=1e-12)
    _scalar_loss_grads_ok(lambda z: F.softmax_cross_entropy_forward(z, labels), F.softmax_cross_entropy_backward,
                          logits)
    d = F.softmax_cross_entropy_backward(1.0, F.softmax_cross_entropy_forward(logits, labels)[1])
    assert np.all(d[labels == -1] == 0)


def test_softmax_cross_entropy_large_logits_and_all_ignored():
    logits = np.array([[1000.0, 0.0], [0.0, -1000.0]])
    loss, _ = F.softmax_cross_entropy_forward(logits, np.array([1, 0]))
    np.testing.assert_allclose(loss, 500.0)
    loss, cache = F.softmax_cross_entropy_forward(logits, np.array([-1, -1]))
    assert loss == 0.0 and not np.any(F.softmax_cross_entropy_backward(1.0, cache))


@pytest.mark.parametrize("beta", [1.0, 1 / 9, 0.0])
def test_smooth_l1(beta, rng):
    pred = rng.standard_normal((5, 4))
    target = rng.standard_normal((5, 4))
    d = pred - target
    # keep |d| away from beta (the kink between the branches) and from 0 (the L1 kink)
    d[np.abs(np.abs(d) - beta) < 1e-3] += 0.01
    d[np.abs(d) < 1e-3] += 0.01
    pred = target + d
    loss, _ = F.smooth_l1_forward(pred, target, beta, normalizer=7.0)
    if beta > 0:
        np.testing.assert_allclose(loss, ref.smooth_l1_naive(pred, target, beta, 7.0), rtol=1e-12)
    else:
        np.testing.assert_allclose(loss, np.abs(d).sum() / 7.0, rtol=1e-12)
    _scalar_loss_grads_ok(lambda p: F.smooth_l1_forward(p, target, beta, 7.0), F.smooth_l1_backward, pred)


def test_bce_with_logits(rng):
    logits = rng.standard_normal((3, 5, 5)) * 3
    targets = (rng.uniform(size=(3, 5, 5)) > 0.5).astype(np.float64)
    loss, _ = F.binary_cross_entropy_with_logits_forward(logits, targets)
    np.testing.assert_allclose(loss, ref.bce_with_logits_naive(logits, targets), rtol=1e-12)
    _scalar_loss_grads_ok(lambda z: F.binary_cross_entropy_with_logits_forward(z, targets),
                          F.binary_cross_entropy_with_logits_backward, logits)


def test_bce_with_logits_is_stable_for_huge_logits():
    logits = np.array([500.0, -500.0, 300.0, -300.0])
    targets = np.array([1.0, 0.0, 0.0, 1.0])
    loss, cache = F.binary_cross_entropy_with_logits_forward(logits, targets)
    # the two right answers cost ~0; the two wrong ones cost exactly |logit|
    np.testing.assert_allclose(loss, (300.0 + 300.0) / 4)
    g = F.binary_cross_entropy_with_logits_backward(1.0, cache)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, [0, 0, 0.25, -0.25], atol=1e-12)


# ---- bad input -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("call,message", [
    (lambda: F.conv2d_forward(np.zeros((2, 3, 5)), np.zeros((4, 3, 3, 3))), "x must have 4 dimensions"),
    (lambda: F.conv2d_forward(np.zeros((2, 3, 5, 5)), np.zeros((4, 2, 3, 3))), "channels"),
    (lambda: F.conv2d_forward(np.zeros((2, 3, 5, 5), np.int64), np.zeros((4, 3, 3, 3))), "floating-point"),
    (lambda: F.conv2d_forward(np.zeros((1, 3, 5, 5)), np.zeros((4, 3, 3, 3)), np.zeros(3)), "b must have shape"),
    (lambda: F.conv2d_forward(np.zeros((1, 3, 2, 2)), np.zeros((4, 3, 3, 3))), "smaller than"),
    (lambda: F.conv2d_forward(np.zeros((1, 3, 5, 5)), np.zeros((4, 3, 3, 3)), stride=0), "stride"),
    (lambda: F.conv2d_forward(np.zeros((1, 4, 5, 5)), np.zeros((3, 2, 3, 3)), groups=2), "divisible"),
    (lambda: F.conv2d_forward(np.zeros((1, 3, 5, 5), np.float32), np.zeros((4, 3, 3, 3))), "same dtype"),
    (lambda: F.conv_transpose2d_forward(np.zeros((1, 3, 5, 5)), np.zeros((4, 2, 2, 2)), stride=2), "channels"),
    (lambda: F.linear_forward(np.zeros((2, 5)), np.zeros((3, 4))), "features"),
    (lambda: F.max_pool2d_forward(np.zeros((1, 1, 4, 4)), 2, 2, 2), "padding"),
    (lambda: F.batch_norm_forward(np.zeros((2, 3)), np.ones(4), np.zeros(3)), "gamma must have shape"),
    (lambda: F.group_norm_forward(np.zeros((2, 6, 2, 2)), np.ones(6), np.zeros(6), 4), "num_groups"),
    (lambda: F.softmax_cross_entropy_forward(np.zeros((3, 2)), np.array([0, 2, 1])), "labels must lie"),
    (lambda: F.softmax_cross_entropy_forward(np.zeros((3, 2)), np.array([0.0, 1.0, 1.0])), "integer"),
    (lambda: F.smooth_l1_forward(np.zeros((3, 4)), np.zeros((3, 3))), "differ in shape"),
    (lambda: F.upsample_nearest_forward(np.zeros((1, 1, 2, 2))), "exactly one"),
])
def test_bad_input_raises_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
