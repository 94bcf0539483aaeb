"""RoIPool, RoIWarp and RoIAlign (Mask R-CNN §3, Table 2c): torchvision fixtures, gradient checks,
NumPy vs CUDA kernel (emulated on the CPU) on random inputs, geometry checks, bad inputs."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minimaskrcnn.nn.gradcheck import check_gradient
from minimaskrcnn.ops import rawkernel
from minimaskrcnn.ops._roi_common import round_half_away_from_zero
from minimaskrcnn.ops.reference import c_round, roi_align_reference, roi_pool_reference
from minimaskrcnn.ops.roi_align import roi_align_backward, roi_align_forward, roi_sample_points
from minimaskrcnn.ops.roi_pool import roi_pool_backward, roi_pool_cells, roi_pool_forward
from minimaskrcnn.ops.roi_warp import roi_warp_backward, roi_warp_forward

FIXTURES = Path(__file__).parent / "fixtures"
HAS_CXX = rawkernel.compiler_available()   # honours $MINIMASKRCNN_CXX and $CXX, as the emulator does
IMPLS = ["numpy", "simple",
         pytest.param("kernel", marks=pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler"))]



def graded(points):
    """IMPLS with the "simple" case graded for assignment A6: RoIAlign's (and RoIWarp's) readable NumPy path,
    and RoIPool's NumPy path ("simple" is "numpy" for RoIPool)."""
    return ["numpy", pytest.param("simple", marks=pytest.mark.assignment(id="A6", points=points)), IMPLS[2]]


# (forward, backward, modes) of the three operators of Table 2c.
OPS = {
    "align": (roi_align_forward, roi_align_backward, ("avg", "max")),
    "warp": (roi_warp_forward, roi_warp_backward, ("avg", "max")),
    "pool": (roi_pool_forward, roi_pool_backward, ("max",)),
}
OP_MODES = [(op, mode) for op, (_, _, modes) in OPS.items() for mode in modes]


def random_rois(rng, K, N, H, W, scale, spread=0.4):
    """RoIs in image pixels, some reaching past the map on every side."""
    extent = np.array([W, H]) / scale
    xy = rng.uniform(-spread, 1.0, (K, 2)) * extent
    wh = rng.uniform(0.05, 0.9, (K, 2)) * extent
    return np.concatenate([rng.integers(0, N, (K, 1)), xy, xy + wh], axis=1)


# ------------------------------------------------------------------------------------------------
# torchvision reference (tools/make_roi_fixtures.py; no torch needed here)

@pytest.fixture(scope="module")
def tv():
    return np.load(FIXTURES / "roi_ops.npz", allow_pickle=False)


@pytest.mark.torch_fixture
@pytest.mark.parametrize("impl", graded(0.5))
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("size", ["3x4", "2x2"])
def test_roi_align_matches_torchvision(tv, impl, aligned, sampling_ratio, size):
    output_size = (3, 4) if size == "3x4" else 2  # an int means (2, 2)
    key = f"align_{size}_aligned{int(aligned)}_sr{sampling_ratio}"
    out, cache = roi_align_forward(tv["features"], tv["rois"], output_size, float(tv["spatial_scale"]),
                                   sampling_ratio, aligned, impl=impl)
    grad = roi_align_backward(tv[f"dout_{size}"], cache)
    np.testing.assert_allclose(out, tv[f"{key}_out"], rtol=1e-12, atol=1e-13, err_msg=f"{key} forward")
    np.testing.assert_allclose(grad, tv[f"{key}_grad"], rtol=1e-12, atol=1e-13, err_msg=f"{key} backward")


@pytest.mark.torch_fixture
@pytest.mark.parametrize("impl", graded(2))
@pytest.mark.parametrize("size", ["3x4", "2x2"])
def test_roi_pool_matches_torchvision(tv, impl, size):
    output_size = (3, 4) if size == "3x4" else 2
    scale = float(tv["spatial_scale"])
    out, cache = roi_pool_forward(tv["features"], tv["rois"], output_size, scale, impl=impl)
    grad = roi_pool_backward(tv[f"dout_{size}"], cache)
    np.testing.assert_array_equal(out, tv[f"pool_{size}_out"])  # a max copies a value: exact
    np.testing.assert_allclose(grad, tv[f"pool_{size}_grad"], rtol=1e-12, atol=1e-13)


# ------------------------------------------------------------------------------------------------
# Gradient checks (float64 central differences)

@pytest.mark.parametrize("impl", graded(2))
@pytest.mark.parametrize("op, mode", OP_MODES)
def test_gradient(op, mode, impl):
    """All three ops are (piecewise) linear in the features, so central differences are exact up to
    round-off, wherever the RoIs sit. For max modes the features are random and continuous, so no two
    different cells or points tie for a max (a tie would make the gradient a matter of convention);
    points outside the map read an exact 0 and ties among those carry no gradient either way."""
    forward, backward, _ = OPS[op]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 6, 7))
    rois = random_rois(rng, 5, 2, 6, 7, 0.5)
    dout = rng.standard_normal((5, 2, 3, 2))

    def f(features):
        return forward(features, rois, (3, 2), 0.5, 2, False, mode=mode, impl=impl)[0]

    _, cache = forward(x, rois, (3, 2), 0.5, 2, False, mode=mode, impl=impl)
    analytic = backward(dout, cache)
    assert np.abs(analytic).max() > 0.1  # the RoIs do reach the features
    assert check_gradient(f, x, analytic, dout) < 1e-7


# ------------------------------------------------------------------------------------------------
# NumPy and the CUDA kernel (emulated) agree on random inputs

@st.composite
def roi_problems(draw):
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    H, W = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25, 1 / 3]))
    K = draw(st.integers(0, 6))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    extent = np.array([W, H, W, H]) / scale
    kind = rng.integers(0, 3, K)  # 0: anywhere around the map, 1: tiny, 2: huge
    corners = rng.uniform(-0.6, 1.6, (K, 4)) * extent
    tiny = corners[:, :2] + rng.uniform(-0.5, 1.5, (K, 2)) / scale
    huge = np.concatenate([rng.uniform(-3, 0, (K, 2)), rng.uniform(1, 4, (K, 2))], 1) * extent
    corners[kind == 1, 2:] = tiny[kind == 1]
    corners[kind == 2] = huge[kind == 2]
    rois = np.concatenate([rng.integers(0, N, (K, 1)), corners], axis=1)
    return dict(features=rng.standard_normal((N, C, H, W)), rois=rois, scale=scale, seed=seed,
                output_size=(draw(st.integers(1, 4)), draw(st.integers(1, 4))),
                sampling_ratio=draw(st.integers(-1, 4)), aligned=draw(st.booleans()))


@pytest.mark.parametrize("other", IMPLS[1:])
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("op, mode", OP_MODES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=roi_problems())
def test_numpy_and_kernel_agree(op, mode, dtype, tol, other, problem):
    """The NumPy path against the kernel and against the readable "simple" version, in both precisions."""
    forward, backward, _ = OPS[op]
    x = problem["features"].astype(dtype)
    args = (problem["rois"], problem["output_size"], problem["scale"], problem["sampling_ratio"],
            problem["aligned"])
    out_np, cache_np = forward(x, *args, mode=mode, impl="numpy")
    out_k, cache_k = forward(x, *args, mode=mode, impl=other)
    dout = np.random.default_rng(problem["seed"]).standard_normal(out_np.shape).astype(dtype)
    grad_np, grad_k = backward(dout, cache_np), backward(dout, cache_k)
    assert out_np.dtype == out_k.dtype == grad_np.dtype == grad_k.dtype == dtype
    np.testing.assert_allclose(out_np, out_k, rtol=tol, atol=tol, err_msg="forward")
    np.testing.assert_allclose(grad_np, grad_k, rtol=tol, atol=tol * max(1, np.abs(grad_k).max()),
                               err_msg="backward")
    if mode == "max":  # same winners, so the same cells receive the gradient
        np.testing.assert_array_equal(cache_np.argmax, cache_k.argmax)


@pytest.mark.parametrize("op", ["align", "warp"])
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=roi_problems())
def test_numpy_avg_paths_dense_and_sparse_agree(op, dtype, tol, problem):
    """The NumPy avg path has two ways to the same sparse product (_roi_align_fast.use_dense picks by size):
    each, forced, against the readable "simple" version, forward and backward."""
    from minimaskrcnn.ops import _roi_align_fast as fast
    forward, backward, _ = OPS[op]
    x = problem["features"].astype(dtype)
    args = (problem["rois"], problem["output_size"], problem["scale"], problem["sampling_ratio"],
            problem["aligned"])
    out_s, cache_s = forward(x, *args, mode="avg", impl="simple")
    dout = np.random.default_rng(problem["seed"]).standard_normal(out_s.shape).astype(dtype)
    grad_s = backward(dout, cache_s)
    for limit in (0.0, np.inf):                               # always sparse, always dense
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(fast, "DENSE_LIMIT", {"forward": limit, "backward": limit})
            out, cache = forward(x, *args, mode="avg", impl="numpy")
            grad = backward(dout, cache)
        assert out.dtype == grad.dtype == dtype and grad.shape == x.shape
        np.testing.assert_allclose(out, out_s, rtol=tol, atol=tol, err_msg=f"forward, limit {limit}")
        np.testing.assert_allclose(grad, grad_s, rtol=tol, atol=tol * max(1, np.abs(grad_s).max()),
                                   err_msg=f"backward, limit {limit}")


@pytest.mark.parametrize("dense", [False, True])
def test_gradient_of_each_numpy_avg_path(monkeypatch, dense):
    from minimaskrcnn.ops import _roi_align_fast as fast
    limit = np.inf if dense else 0.0
    monkeypatch.setattr(fast, "DENSE_LIMIT", {"forward": limit, "backward": limit})
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2, 9, 8))
    rois = random_rois(rng, 7, 2, 9, 8, 0.5)                  # image 2 has no RoIs
    dout = rng.standard_normal((7, 2, 3, 4))
    _, cache = roi_align_forward(x, rois, (3, 4), 0.5, -1, True)
    assert fast.use_dense(cache.features_shape, (3, 4), fast_geometry(cache), "backward") == dense
    analytic = roi_align_backward(dout, cache)
    assert np.abs(analytic).max() > 0.1 and not analytic[2].any()
    assert check_gradient(lambda f: roi_align_forward(f, rois, (3, 4), 0.5, -1, True)[0], x, analytic, dout) < 1e-7


def fast_geometry(cache):
    from minimaskrcnn.ops.roi_align import _geometry_of
    return _geometry_of(cache)


# ------------------------------------------------------------------------------------------------
# The plain-loop oracle (ops/reference.py): itself against torchvision, then every op against it

@pytest.mark.torch_fixture
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_reference_roi_align_matches_torchvision(tv, aligned, sampling_ratio):
    key = f"align_3x4_aligned{int(aligned)}_sr{sampling_ratio}"
    out = roi_align_reference(tv["features"], tv["rois"], (3, 4), float(tv["spatial_scale"]), sampling_ratio,
                              aligned)
    np.testing.assert_allclose(out, tv[f"{key}_out"], rtol=1e-12, atol=1e-13)


@pytest.mark.torch_fixture
def test_reference_roi_pool_matches_torchvision(tv):
    out = roi_pool_reference(tv["features"], tv["rois"], (3, 4), float(tv["spatial_scale"]))
    np.testing.assert_array_equal(out, tv["pool_3x4_out"])


def test_reference_c_round():
    assert [c_round(v) for v in (-2.5, -1.5, -0.5, -0.49, 0.0, 0.5, 1.5, 2.5, 0.49999999999999994)] == \
        [-3, -2, -1, 0, 0, 1, 2, 3, 0]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op, mode", OP_MODES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=roi_problems())
def test_ops_match_the_plain_loop_reference(op, mode, impl, problem):
    """Random maps and RoIs (inside, across the border, tiny, huge, inverted), every output size, sampling
    ratio and ``aligned``: the vectorised NumPy ops and the kernel give the loops' numbers. RoIWarp is the
    reference RoIAlign of the rounded RoI."""
    forward, _, _ = OPS[op]
    x, rois, size, scale = problem["features"], problem["rois"], problem["output_size"], problem["scale"]
    ratio, aligned = problem["sampling_ratio"], problem["aligned"]
    out, _ = forward(x, rois, size, scale, ratio, aligned, mode=mode, impl=impl)
    if op == "pool":
        np.testing.assert_array_equal(out, roi_pool_reference(x, rois, size, scale))  # a max copies: exact
        return
    if op == "warp":
        rois = np.concatenate([rois[:, :1], round_half_away_from_zero(rois[:, 1:] * scale)], axis=1)
        scale = 1.0
    expected = roi_align_reference(x, rois, size, scale, ratio, aligned, mode)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Geometry, checked against values computed by hand (not against our own output)

@pytest.mark.parametrize("impl", graded(1))
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_on_a_linear_ramp_reads_the_bin_centres(impl, aligned):
    """On f(y, x) = 3y - 2x + 1 bilinear interpolation is exact, so each averaged bin equals f at the
    mean of its sample points: the bin centre, in cell-index coordinates (half a cell earlier when
    ``aligned``). Inside the map, no border rules interfere."""
    H, W, scale = 20, 24, 0.5
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    x = (3 * yy - 2 * xx + 1)[None, None]
    rois = np.array([[0, 6.0, 8.0, 30.0, 26.0], [0, 11.3, 4.9, 40.1, 33.7]])
    out, _ = roi_align_forward(x, rois, (3, 4), scale, 2, aligned, impl=impl)
    offset = 0.5 if aligned else 0.0
    for k, (_, x1, y1, x2, y2) in enumerate(rois):
        x1, y1, x2, y2 = x1 * scale - offset, y1 * scale - offset, x2 * scale - offset, y2 * scale - offset
        cy = y1 + (np.arange(3) + 0.5) * (y2 - y1) / 3
        cx = x1 + (np.arange(4) + 0.5) * (x2 - x1) / 4
        np.testing.assert_allclose(out[k, 0], 3 * cy[:, None] - 2 * cx[None, :] + 1, rtol=1e-12)


@pytest.mark.parametrize("impl", graded(1))
def test_border_rules(impl):
    """torchvision's rules: a point in the one-cell margin outside the map is clamped onto the border;
    a point further out reads 0. A 1x1 output with one sample reads the RoI centre."""
    x = np.arange(1.0, 13.0).reshape(1, 1, 3, 4)                   # x[0, 0, y, x] = 4y + x + 1
    rois = np.array([[0, -1.5, 0.5, 0.5, 0.5],                     # centre x = -1.0: clamped to x = 0
                     [0, -3.0, 0.5, -1.2, 0.5],                    # centre x = -2.6: outside, reads 0
                     [0, 3.0, 2.5, 4.5, 2.5],                      # centre x = 3.25 > W - 1: clamped to 3
                     [0, 4.5, 2.5, 5.9, 2.5],                      # centre x = 4.7 > W: outside, 0
                     [0, 1.0, 0.0, 2.0, 1.0]])                     # centre (y 0.0, x 1.0): inside
    # aligned=True subtracts half a cell from every corner (and keeps sizes below one cell).
    out, _ = roi_align_forward(x, rois, 1, 1.0, 1, True, impl=impl)
    np.testing.assert_allclose(out.ravel(), [1.0, 0.0, 4 * 2 + 3 + 1, 0.0, 2.0], rtol=1e-12)


@pytest.mark.parametrize("impl", graded(1))
def test_roi_pool_rounds_halves_away_from_zero(impl):
    """C's round(): corner 2.5 -> 3 (np.round would give 2), -0.5 -> -1. The max then covers exactly
    the cells of the rounded RoI."""
    x = np.arange(48.0).reshape(1, 1, 6, 8)
    rois = np.array([[0, 2.5, 0.5, 4.5, 1.5],      # -> x 3..5 (inclusive), y 1..2: max at (2, 5)
                     [0, -0.5, -0.5, 1.5, 0.49]])  # -> x -1..2 (clipped to 0..2), y -1..0: max (0, 2)
    out, cache = roi_pool_forward(x, rois, 1, 1.0, impl=impl)
    np.testing.assert_array_equal(out.ravel(), [x[0, 0, 2, 5], x[0, 0, 0, 2]])
    np.testing.assert_array_equal(cache.argmax.ravel(), [2 * 8 + 5, 2])


def test_round_half_away_from_zero():
    x = np.array([-2.5, -1.5, -0.5, -0.49, 0.0, 0.5, 1.5, 2.5, 0.49999997], dtype=np.float32)
    np.testing.assert_array_equal(round_half_away_from_zero(x), [-3, -2, -1, 0, 0, 1, 2, 3, 0])


@pytest.mark.parametrize("impl", graded(1))
def test_roi_warp_is_roi_align_of_the_rounded_roi(impl):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 10, 12))
    rois = random_rois(rng, 6, 2, 10, 12, 0.25)
    warp, _ = roi_warp_forward(x, rois, (2, 3), 0.25, 2, False, impl=impl)
    rounded = rois.copy()
    rounded[:, 1:] = round_half_away_from_zero(rois[:, 1:] * 0.25)
    align_rounded, _ = roi_align_forward(x, rounded, (2, 3), 1.0, 2, False, impl=impl)
    align, _ = roi_align_forward(x, rois, (2, 3), 0.25, 2, False, impl=impl)
    np.testing.assert_allclose(warp, align_rounded, rtol=1e-12, atol=1e-12)
    assert np.abs(warp - align).max() > 0.1  # ... which is not RoIAlign of the RoI itself


@pytest.mark.parametrize("impl", graded(1))
@pytest.mark.parametrize("op, mode", OP_MODES)
def test_no_rois(op, mode, impl):
    forward, backward, _ = OPS[op]
    x = np.ones((1, 2, 4, 4), dtype=np.float32)
    out, cache = forward(x, np.zeros((0, 5), np.float32), 3, 1.0, mode=mode, impl=impl)
    assert out.shape == (0, 2, 3, 3) and out.dtype == np.float32
    grad = backward(out, cache)
    assert grad.shape == x.shape and not grad.any()


# ------------------------------------------------------------------------------------------------
# Bad input: a ValueError naming the problem, never a crash, in both implementations

GOOD_FEATURES = np.zeros((2, 3, 5, 5))
GOOD_ROIS = np.array([[0, 1.0, 1.0, 3.0, 3.0], [1, 0.0, 0.0, 4.0, 4.0]])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("change, message", [
    (dict(rois=np.array([[0, np.nan, 1.0, 3.0, 3.0]])), "NaN or infinite"),
    (dict(rois=np.array([[0, 1.0, 1.0, np.inf, 3.0]])), "NaN or infinite"),
    (dict(rois=np.array([[2, 1.0, 1.0, 3.0, 3.0]])), r"batch indices in \[0, 2\)"),
    (dict(rois=np.array([[-1, 1.0, 1.0, 3.0, 3.0]])), "batch indices"),
    (dict(rois=np.array([[0.5, 1.0, 1.0, 3.0, 3.0]])), "integer batch indices"),
    (dict(rois=np.zeros((2, 4))), r"shape \(K, 5\)"),
    (dict(rois=np.zeros(5)), r"shape \(K, 5\)"),
    (dict(rois=[[0, 1.0, 1.0, 3.0, 3.0]]), "rois must be an array"),
    (dict(rois=np.array([[0, 1e30, 1.0, 3.0, 3.0]])), "exceeds"),
    (dict(features=np.zeros((3, 5, 5))), r"shape \(N, C, H, W\)"),
    (dict(features=np.zeros((2, 3, 5, 5), dtype=np.int64)), "float32 or float64"),
    (dict(features=np.zeros((2, 3, 5, 5), dtype=np.float16)), "float32 or float64"),
    (dict(features=np.zeros((2, 3, 0, 5))), "H, W >= 1"),
    (dict(output_size=0), "output_size"),
    (dict(output_size=(2, 2, 2)), "output_size"),
    (dict(output_size=2.5), "output_size"),
    (dict(spatial_scale=0.0), "spatial_scale"),
    (dict(spatial_scale=float("nan")), "spatial_scale"),
    (dict(sampling_ratio=1.5), "sampling_ratio"),
    (dict(aligned="yes"), "aligned"),
    (dict(mode="median"), "mode"),
    (dict(impl="cuda"), "impl"),
])
def test_bad_input(op, impl, change, message):
    forward = OPS[op][0]
    args = dict(features=GOOD_FEATURES, rois=GOOD_ROIS, output_size=2, spatial_scale=1.0, sampling_ratio=2,
                aligned=False, mode=OPS[op][2][0], impl=impl)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        forward(**args)


def test_roi_pool_has_no_avg_mode():
    with pytest.raises(ValueError, match="RoIPool is max pooling"):
        roi_pool_forward(GOOD_FEATURES, GOOD_ROIS, 2, mode="avg")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op, mode", OP_MODES)
def test_backward_checks_dout(op, mode, impl):
    forward, backward, _ = OPS[op]
    out, cache = forward(GOOD_FEATURES, GOOD_ROIS, 2, mode=mode, impl=impl)
    with pytest.raises(ValueError, match="dout must have shape"):
        backward(out[:, :, :1], cache)
    with pytest.raises(ValueError, match="dtype"):
        backward(out.astype(np.float32), cache)


# ------------------------------------------------------------------------------------------------
# The geometry helpers behind the pictures agree with the operators

def test_roi_sample_points_are_where_roi_align_reads():
    """Averaging a linear ramp at the reported points must give RoIAlign's output (bilinear reads of
    a ramp are exact), for RoIAlign and for RoIWarp (quantize=True)."""
    H, W = 16, 18
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    x = (2 * yy + 5 * xx)[None, None]
    roi = (9.7, 13.1, 51.3, 44.9)
    for quantize, forward in ((False, roi_align_forward), (True, roi_warp_forward)):
        for aligned in (False, True):
            p = roi_sample_points(roi, (3, 2), 0.25, 2, aligned, quantize)
            expected = 2 * p["y"].mean(axis=1)[:, None] + 5 * p["x"].mean(axis=1)[None, :]
            out, _ = forward(x, np.array([[0, *roi]]), (3, 2), 0.25, 2, aligned)
            np.testing.assert_allclose(out[0, 0], expected, rtol=1e-12)
            assert p["y_edges"][0] == p["box"][1] and p["x_edges"][-1] == p["box"][2]


def test_roi_pool_cells_are_where_roi_pool_reads():
    x = np.random.default_rng(1).standard_normal((1, 1, 9, 11))
    roi = (5.2, 3.9, 30.1, 27.7)
    out, _ = roi_pool_forward(x, np.array([[0, *roi]]), (2, 3), 0.25)
    rows, cols = roi_pool_cells(roi, (2, 3), 0.25, 9, 11)
    expected = [[x[0, 0, r0:r1, c0:c1].max() for c0, c1 in cols] for r0, r1 in rows]
    np.testing.assert_array_equal(out[0, 0], expected)


def test_draw_roi_ops(tmp_path):
    """A Figure made without pyplot (nothing left open), one panel per op, drawn where asked."""
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from minimaskrcnn.viz.roi import draw_roi_ops
    before = plt.get_fignums()
    fig = draw_roi_ops(np.random.default_rng(0).random((8, 10)), (10, 12, 60, 50), 2, 1 / 8, 2, True,
                       save_path=tmp_path / "roi.png")
    assert isinstance(fig, Figure) and plt.get_fignums() == before
    assert (tmp_path / "roi.png").stat().st_size > 0
    axes = fig.axes
    assert [a.get_title().split(":")[0] for a in axes] == ["RoIPool", "RoIWarp", "RoIAlign"]
    # RoIWarp and RoIAlign draw 2x2 bins with 2x2 points each; RoIPool shades its 4 windows
    assert sum(len(line.get_xdata()) for line in axes[2].lines) == 16
    assert len(axes[0].patches) == 4 + 1  # windows + the RoI
    own = Figure().subplots(1, 2)
    assert draw_roi_ops(np.zeros((4, 4)), (0, 0, 3, 3), ops=("align", "pool"), axes=own) is own[0].figure
    assert own[0].get_title().startswith("RoIAlign") and own[1].get_title().startswith("RoIPool")
