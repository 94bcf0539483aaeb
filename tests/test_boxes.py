"""Tests for minimaskrcnn.ops.boxes: hand-computed cases, edge cases, an O(N^2) NMS oracle and torchvision
fixtures (tests/fixtures/detops_*.npz, built by tools/make_detops_fixtures.py)."""
import math
import os

import numpy as np
import pytest

from minimaskrcnn.backend import cupy_available, to_device, to_numpy
from minimaskrcnn.ops.boxes import (
    BoxCoder,
    batched_nms,
    box_area,
    box_iou,
    check_boxes,
    clip_boxes_to_image,
    nms,
    remove_small_boxes,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not cupy_available(), reason="needs CuPy and a CUDA device")])]


def load(name):
    return np.load(os.path.join(FIXTURES, name), allow_pickle=False)


def random_boxes(rng, n, size=100.0, max_wh=40.0):
    xy = rng.uniform(0, size - max_wh, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(1, max_wh, (n, 2))], axis=1)


# ---------------------------------------------------------------- area and IoU

def test_box_area_by_hand():
    boxes = np.array([[0, 0, 2, 3], [1, 1, 1, 5], [0.5, 0.5, 1.0, 1.5]])
    np.testing.assert_array_equal(box_area(boxes), [6.0, 0.0, 0.5])
    assert box_area(np.zeros((2, 3, 4))).shape == (2, 3)



@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8])
def test_box_area_of_narrow_integer_boxes(dtype):
    """torchvision's own test_box_area case: int8 arithmetic would give 100 * 100 = 16 (mod 256)."""
    area = box_area(np.array([[0, 0, 100, 100], [0, 0, 0, 0]], dtype=dtype))
    np.testing.assert_array_equal(area, [10000, 0])
    assert area.dtype == np.int64


def test_box_area_and_iou_of_float16_boxes():
    """float16 holds 300 but not 300 * 300 (max 65504): computed in float32, as torchvision upcasts."""
    boxes = np.array([[0, 0, 300, 300], [10, 10, 310, 310], [0, 0, 100, 100]], dtype=np.float16)
    area = box_area(boxes)
    assert area.dtype == np.float32
    np.testing.assert_array_equal(area, [90000, 90000, 10000])
    iou = box_iou(boxes, boxes)
    assert iou.dtype == np.float32 and not np.isnan(iou).any()
    np.testing.assert_allclose(iou, box_iou(boxes.astype(np.float64), boxes.astype(np.float64)), rtol=1e-6)


def test_box_iou_of_disjoint_unsigned_boxes():
    """min(x2) - max(x1) of disjoint boxes is negative: uint8 arithmetic would wrap it to ~255."""
    a = np.array([[0, 0, 10, 10]], dtype=np.uint8)
    b = np.array([[20, 0, 30, 10], [5, 0, 15, 10]], dtype=np.uint8)
    np.testing.assert_allclose(box_iou(a, b), [[0.0, 50 / 150]], rtol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
def test_box_iou_by_hand(device):
    a = to_device(np.array([[0, 0, 2, 2], [0, 0, 4, 4]], dtype=np.float64), device)
    b = to_device(np.array([[1, 1, 3, 3],   # overlaps a[0] by one unit square: 1 / (4 + 4 - 1)
                            [2, 0, 4, 2],   # touches a[0] along an edge: no area in common
                            [0, 0, 2, 2],   # identical to a[0]
                            [1, 1, 3, 3.0]]), device)
    expected = [[1 / 7, 0, 1, 1 / 7],
                [4 / 16, 4 / 16, 4 / 16, 4 / 16]]  # each b box lies inside a[1]
    np.testing.assert_allclose(to_numpy(box_iou(a, b)), expected, rtol=1e-15)


def test_box_iou_symmetric_and_bounded(rng):
    a, b = random_boxes(rng, 30), random_boxes(rng, 20)
    iou = box_iou(a, b)
    np.testing.assert_allclose(iou, box_iou(b, a).T, rtol=1e-15)
    assert iou.shape == (30, 20) and (iou >= 0).all() and (iou <= 1).all()
    np.testing.assert_allclose(np.diag(box_iou(a, a)), 1.0, rtol=1e-15)


def test_box_iou_empty_and_degenerate():
    assert box_iou(np.zeros((0, 4)), np.ones((3, 4))).shape == (0, 3)
    assert box_iou(np.ones((3, 4)), np.zeros((0, 4))).shape == (3, 0)
    point = np.array([[1.0, 1.0, 1.0, 1.0]])
    # A zero-area box has IoU 0 with a real box, and 0/0 = NaN with itself (as torchvision).
    assert box_iou(point, np.array([[0.0, 0.0, 2.0, 2.0]]))[0, 0] == 0.0
    assert np.isnan(box_iou(point, point)[0, 0])


@pytest.mark.parametrize("bad, match", [
    (np.zeros((3, 3)), "boxes1 must have shape \\(N, 4\\)"),
    (np.zeros(4), "boxes1 must have shape \\(N, 4\\)"),
    (np.array([[0.0, 0.0, np.nan, 1.0]]), "boxes1 contains NaN"),
    (np.array([[5.0, 0.0, 1.0, 1.0]]), "boxes1 must have x1 <= x2"),
    (np.array([[0.0, 3.0, 1.0, 1.0]]), "boxes1 must have x1 <= x2 and y1 <= y2; row 0"),
    ([[0, 0, 1, 1]], "boxes1 must be an \\(N, 4\\) array"),
])
def test_box_iou_rejects_bad_boxes(bad, match):
    with pytest.raises(ValueError, match=match):
        box_iou(bad, np.zeros((1, 4)))
    with pytest.raises(ValueError, match=match.replace("boxes1", "boxes2")):
        box_iou(np.zeros((1, 4)), bad)


def test_check_boxes_unordered_allowed_when_asked():
    check_boxes(np.array([[5.0, 0.0, 1.0, 1.0]]), ordered=False)


# ---------------------------------------------------------------- BoxCoder

@pytest.mark.assignment(id="A4", points=1)
def test_encode_by_hand():
    proposal = np.array([[0.0, 0.0, 10.0, 10.0]])  # centre (5, 5), size 10 x 10
    gt = np.array([[2.0, 4.0, 12.0, 24.0]])        # centre (7, 14), size 10 x 20
    np.testing.assert_allclose(BoxCoder((1, 1, 1, 1)).encode(gt, proposal), [[0.2, 0.9, 0.0, math.log(2)]],
                               rtol=1e-15, atol=1e-16)
    np.testing.assert_allclose(BoxCoder((10, 10, 5, 5)).encode(gt, proposal),
                               [[2.0, 9.0, 0.0, 5 * math.log(2)]], rtol=1e-15, atol=1e-15)


@pytest.mark.assignment(id="A4", points=1)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (10, 10, 5, 5)])
def test_encode_decode_round_trip(rng, weights, device):
    gt = to_device(random_boxes(rng, 200), device)
    proposals = to_device(random_boxes(rng, 200), device)
    coder = BoxCoder(weights)
    deltas = coder.encode(gt, proposals)
    assert deltas.shape == (200, 4) and deltas.dtype == np.float64
    # |dw| <= log(40) < clip, so decode is the exact inverse of encode.
    np.testing.assert_allclose(to_numpy(coder.decode(deltas, proposals)), to_numpy(gt),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.assignment(id="A4", points=1)
def test_decode_clips_large_size_deltas():
    box = np.array([[0.0, 0.0, 10.0, 20.0]])
    out = BoxCoder((1, 1, 1, 1)).decode(np.array([[0.0, 0.0, 100.0, -1.0]]), box)
    # dw = 100 is capped at log(1000 / 16): width 10 * 1000 / 16 = 625 about the centre x = 5.
    np.testing.assert_allclose(out, [[5 - 312.5, 10 - 10 * math.exp(-1), 5 + 312.5, 10 + 10 * math.exp(-1)]],
                               rtol=1e-14)
    assert np.isfinite(BoxCoder((10, 10, 5, 5)).decode(np.array([[0, 0, 1e4, 1e4]]), box)).all()


@pytest.mark.assignment(id="A4", points=1)
def test_decode_class_specific_layout():
    proposals = np.array([[0.0, 0.0, 10.0, 10.0], [10.0, 20.0, 30.0, 60.0]])
    codes = np.zeros((2, 3 * 4))
    codes[:, 4:8] = [1.0, 0.0, 0.0, 0.0]  # class 1: shift right by one box width (weights 1)
    codes[:, 8:12] = [0.0, 0.0, math.log(2), 0.0]  # class 2: double the width
    out = BoxCoder((1, 1, 1, 1)).decode(codes, proposals)
    assert out.shape == (2, 12)
    per_class = out.reshape(2, 3, 4)
    np.testing.assert_allclose(per_class[:, 0], proposals, rtol=1e-15)
    np.testing.assert_allclose(per_class[:, 1], [[10, 0, 20, 10], [30, 20, 50, 60]], rtol=1e-15)
    np.testing.assert_allclose(per_class[:, 2], [[-5, 0, 15, 10], [0, 20, 40, 60]], rtol=1e-15, atol=1e-14)


@pytest.mark.assignment(id="A4", points=1)
def test_decode_empty():
    assert BoxCoder().decode(np.zeros((0, 8)), np.zeros((0, 4))).shape == (0, 8)
    assert BoxCoder().encode(np.zeros((0, 4)), np.zeros((0, 4))).shape == (0, 4)


def test_box_coder_rejects_bad_input():
    good = np.array([[0.0, 0.0, 10.0, 10.0]])
    with pytest.raises(ValueError, match="proposals must have positive width and height"):
        BoxCoder().encode(good, np.array([[0.0, 0.0, 0.0, 10.0]]))
    with pytest.raises(ValueError, match="reference_boxes must have positive width and height"):
        BoxCoder().encode(np.array([[0.0, 0.0, 10.0, 0.0]]), good)
    with pytest.raises(ValueError, match="reference_boxes and proposals must have the same shape"):
        BoxCoder().encode(good, np.concatenate([good, good]))
    with pytest.raises(ValueError, match="rel_codes must have shape \\(K, 4 \\* num_classes\\)"):
        BoxCoder().decode(np.zeros((1, 6)), good)
    with pytest.raises(ValueError, match="same number of rows"):
        BoxCoder().decode(np.zeros((2, 4)), good)
    with pytest.raises(ValueError, match="weights must be 4 positive numbers"):
        BoxCoder((1, 1, 1))


# ---------------------------------------------------------------- clip, small boxes

def test_clip_boxes_to_image():
    boxes = np.array([[-5.0, -2.0, 50.0, 30.0], [10.0, 12.0, 130.0, 95.0]])
    out = clip_boxes_to_image(boxes, (80, 120))  # (height, width)
    np.testing.assert_array_equal(out, [[0, 0, 50, 30], [10, 12, 120, 80]])
    assert boxes[0, 0] == -5.0  # the input is not modified
    batched = clip_boxes_to_image(np.tile(boxes, (3, 1, 1)), (80, 120))
    np.testing.assert_array_equal(batched, np.tile(out, (3, 1, 1)))
    with pytest.raises(ValueError, match="boxes must have shape \\(..., 4\\)"):
        clip_boxes_to_image(np.zeros((2, 5)), (80, 120))


def test_remove_small_boxes():
    boxes = np.array([[0, 0, 1, 5], [0, 0, 5, 5], [0, 0, 5, 0.5], [2, 2, 3, 3.0]])
    keep = remove_small_boxes(boxes, 1.0)
    np.testing.assert_array_equal(keep, [0, 1, 3])  # sides >= 1: boxes 0 and 3 are exactly at the limit
    assert keep.dtype == np.int64
    assert remove_small_boxes(np.zeros((0, 4)), 1.0).shape == (0,)


# ---------------------------------------------------------------- NMS

def nms_oracle(boxes, scores, thr):
    """Textbook greedy NMS over an explicit IoU matrix (independent of nms's code path)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    iou = box_iou(boxes, boxes)
    keep, suppressed = [], set()
    for i in order:
        if i in suppressed:
            continue
        keep.append(i)
        suppressed.update(j for j in order if iou[i, j] > thr)
    return keep


@pytest.mark.parametrize("device", DEVICES)
def test_nms_by_hand(device):
    boxes = to_device(np.array([[0, 0, 10, 10],    # A, 0.9
                                [1, 0, 11, 10],    # B, 0.8: IoU(A, B) = 90 / 110
                                [5, 0, 15, 10],    # C, 0.7: IoU(A, C) = 50 / 150, IoU(B, C) = 60 / 140
                                [20, 20, 30, 30.]]), device)
    scores = to_device(np.array([0.9, 0.8, 0.7, 0.1]), device)
    # Greedy: B is removed by A, so B cannot remove C even though IoU(B, C) = 0.43 > 0.4.
    np.testing.assert_array_equal(to_numpy(nms(boxes, scores, 0.4)), [0, 2, 3])
    np.testing.assert_array_equal(to_numpy(nms(boxes, scores, 0.3)), [0, 3])
    np.testing.assert_array_equal(to_numpy(nms(boxes, scores, 0.9)), [0, 1, 2, 3])


def test_nms_iou_equal_to_threshold_keeps():
    boxes = np.array([[0, 0, 4, 1], [0, 0, 2, 1.0]])  # IoU = 2 / 4 = 0.5 exactly
    np.testing.assert_array_equal(nms(boxes, np.array([0.5, 0.9]), 0.5), [1, 0])
    np.testing.assert_array_equal(nms(boxes, np.array([0.5, 0.9]), 0.49), [1])


def test_nms_edge_cases():
    empty = nms(np.zeros((0, 4)), np.zeros(0), 0.5)
    assert empty.shape == (0,) and empty.dtype == np.int64
    np.testing.assert_array_equal(nms(np.array([[0, 0, 1, 1.0]]), np.array([0.3]), 0.5), [0])
    same = np.tile([[3.0, 4.0, 20.0, 30.0]], (6, 1))
    np.testing.assert_array_equal(nms(same, np.full(6, 0.5), 0.5), [0])  # tie: the lowest index wins
    np.testing.assert_array_equal(nms(same, np.array([0.1, 0.2, 0.6, 0.6, 0.3, 0.0]), 0.5), [2])
    # Zero-area boxes: IoU 0/0 = NaN never suppresses (as torchvision's kernel).
    points = np.tile([[5.0, 5.0, 5.0, 5.0]], (3, 1))
    np.testing.assert_array_equal(nms(points, np.array([0.1, 0.3, 0.2]), 0.5), [1, 2, 0])


@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_matches_oracle_with_ties(rng, thr):
    boxes = random_boxes(rng, 150, size=60.0)
    scores = rng.integers(0, 10, 150) / 10.0  # many exact ties
    keep = nms(boxes, scores, thr)
    assert keep.tolist() == nms_oracle(boxes, scores, thr)
    assert (np.diff(scores[keep]) <= 0).all()


def _over_matrix(boxes, thr):
    iou = box_iou(boxes, boxes)
    return lambda rows, cols: iou[np.ix_(rows, cols)] > thr


@pytest.mark.parametrize("block", [1, 2, 7, 64, 128, 500])
def test_nms_block_walk_matches_oracle_at_any_block_size(rng, block):
    from minimaskrcnn.ops.boxes import _greedy_walk
    boxes = random_boxes(rng, 300, size=80.0)
    scores = rng.integers(0, 12, 300) / 12.0              # ties: visited in index order
    order = np.argsort(-scores, kind="stable")
    kept = _greedy_walk(_over_matrix(boxes[order], 0.5), 300, None, block)
    assert order[kept].tolist() == nms_oracle(boxes, scores, 0.5)
    assert kept.dtype == np.int64 and (np.diff(kept) > 0).all()


def test_nms_chain_of_suppressions_needs_many_rounds_and_stays_greedy():
    # Box i overlaps box i+1 (IoU 0.6) but not i+2: greedy keeps 0, 2, 4, ...; a one-round "fast NMS"
    # would keep only box 0. The in-block fixed point needs ~block/2 rounds here.
    n = 300
    x = np.arange(n) * 2.5
    boxes = np.stack([x, np.zeros(n), x + 10, np.ones(n)], axis=1)
    scores = np.linspace(1, 0, n)
    assert nms(boxes, scores, 0.5).tolist() == list(range(0, n, 2)) == nms_oracle(boxes, scores, 0.5)


def test_nms_max_keep_at_block_boundaries(rng):
    boxes = random_boxes(rng, 700, size=400.0, max_wh=30.0)
    scores = rng.random(700)
    full = nms(boxes, scores, 0.3)
    assert len(full) > 260                                # several blocks of kept boxes
    for k in (0, 1, 127, 128, 129, 255, 256, 257, len(full), len(full) + 5):
        np.testing.assert_array_equal(nms(boxes, scores, 0.3, max_keep=k), full[:k])
        np.testing.assert_array_equal(batched_nms(boxes, scores, np.arange(700) % 3, 0.3, max_keep=k),
                                      batched_nms(boxes, scores, np.arange(700) % 3, 0.3)[:k])


def test_nms_whole_blocks_suppressed():
    same = np.tile([[3.0, 4.0, 20.0, 30.0]], (400, 1))    # every block after the first is empty
    far = np.array([[100.0, 100.0, 110.0, 110.0]])
    boxes = np.concatenate([same, far])
    scores = np.concatenate([np.full(400, 0.9), [0.1]])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [0, 400])


@pytest.mark.parametrize("max_keep", [None, 0, 1, 5])
def test_nms_device_walk_keeps_what_the_numpy_path_keeps(rng, max_keep):
    # The device path's host walk over a read-back matrix, run here on NumPy arrays. max_keep=0 kept one
    # box there (it checked the count after keeping) while the NumPy path kept none.
    from minimaskrcnn.ops.boxes import _greedy_nms_on_host
    boxes = random_boxes(rng, 200, size=60.0)
    scores = rng.integers(0, 10, 200) / 10.0
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[order, k] for k in range(4))
    walked = _greedy_nms_on_host(x1, y1, x2, y2, (x2 - x1) * (y2 - y1), 0.4, max_keep, block_bytes=4096)
    np.testing.assert_array_equal(order[walked], nms(boxes, scores, 0.4, max_keep))


def test_nms_rejects_bad_input():
    boxes = np.array([[0, 0, 1, 1.0], [0, 0, 2, 2]])
    with pytest.raises(ValueError, match="scores must have shape \\(2,\\)"):
        nms(boxes, np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores contains NaN"):
        nms(boxes, np.array([np.nan, 1.0]), 0.5)
    with pytest.raises(ValueError, match="boxes contains NaN"):
        nms(np.array([[0, 0, np.nan, 1.0]]), np.zeros(1), 0.5)
    with pytest.raises(ValueError, match="boxes must have shape \\(N, 4\\)"):
        nms(np.zeros((2, 5)), np.zeros(2), 0.5)



@pytest.mark.parametrize("dtype, scale", [(np.float16, 2.5), (np.int8, 1), (np.uint8, 1), (np.int16, 3)])
def test_nms_of_narrow_boxes_suppresses(dtype, scale):
    """Same result as float64: float16 areas of 300x300 boxes overflow to inf (IoU inf/inf = NaN, which
    suppresses nothing), and int8, uint8 and int16 ones wrap around, unless computed in a wider type."""
    boxes = scale * np.array([[0, 0, 120, 120], [2, 2, 122, 122], [60, 0, 120, 120], [0, 0, 12, 12],
                              [100, 100, 127, 127], [0, 0, 110, 110]])
    scores = np.linspace(0.9, 0.4, 6).astype(np.float16 if dtype == np.float16 else np.float64)
    expected = nms(boxes, scores.astype(np.float64), 0.5)
    np.testing.assert_array_equal(expected, [0, 2, 3, 4])
    np.testing.assert_array_equal(nms(boxes.astype(dtype), scores, 0.5), expected)
    labels = np.array([0, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(batched_nms(boxes.astype(dtype), scores, labels, 0.5),
                                  batched_nms(boxes, scores.astype(np.float64), labels, 0.5))


@pytest.mark.parametrize("threshold", [float("nan"), np.float32("nan"), None, "0.5", True])
def test_nms_refuses_a_threshold_that_is_not_a_number(threshold):
    """``iou > nan`` is never true, so a NaN threshold would keep every box without a word."""
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10.0]])
    scores = np.array([0.9, 0.8])
    with pytest.raises(ValueError, match="iou_threshold must be a number"):
        nms(boxes, scores, threshold)
    with pytest.raises(ValueError, match="iou_threshold must be a number"):
        batched_nms(boxes, scores, np.array([0, 0]), threshold)


def test_batched_nms_by_hand():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10.0]])
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    idxs = np.array([0, 1, 0, 1])
    # Class 0: boxes 0, 2 identical -> 0. Class 1: box 3 (IoU 81/100 with box 1) beats box 1.
    np.testing.assert_array_equal(batched_nms(boxes, scores, idxs, 0.5), [3, 0])
    np.testing.assert_array_equal(batched_nms(boxes, scores, np.zeros(4, dtype=np.int64), 0.5), [3])
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64), 0.5).shape == (0,)


def test_batched_nms_equals_per_class_nms(rng):
    boxes = random_boxes(rng, 300)
    scores = rng.uniform(0, 1, 300)
    idxs = rng.integers(0, 4, 300)
    keep = []
    for c in range(4):
        members = np.flatnonzero(idxs == c)
        keep.extend(members[nms(boxes[members], scores[members], 0.5)])
    keep = np.array(keep)[np.argsort(-scores[keep], kind="stable")]
    np.testing.assert_array_equal(batched_nms(boxes, scores, idxs, 0.5), keep)


def test_batched_nms_rejects_bad_input():
    boxes = np.array([[0, 0, 1, 1.0], [0, 0, 2, 2]])
    with pytest.raises(ValueError, match="non-negative coordinates"):
        batched_nms(boxes - 1, np.zeros(2), np.zeros(2, dtype=np.int64), 0.5)
    with pytest.raises(ValueError, match="idxs must be non-negative integers"):
        batched_nms(boxes, np.zeros(2), np.array([0, -1]), 0.5)
    with pytest.raises(ValueError, match="idxs must be non-negative integers"):
        batched_nms(boxes, np.zeros(2), np.array([0.0, 1.0]), 0.5)
    with pytest.raises(ValueError, match="idxs must have shape \\(2,\\)"):
        batched_nms(boxes, np.zeros(2), np.zeros(3, dtype=np.int64), 0.5)


# ---------------------------------------------------------------- torchvision fixtures

@pytest.mark.torch_fixture
@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_fixture_box_iou_and_coder(dt):
    f = load("detops_boxes.npz")
    iou = box_iou(f[f"iou_boxes1_{dt}"], f[f"iou_boxes2_{dt}"])
    assert iou.dtype == dt
    np.testing.assert_array_equal(iou, f[f"iou_{dt}"])  # same float operations: bit for bit
    rtol = 2e-6 if dt == "float32" else 1e-14
    for name, weights in (("rpn", (1, 1, 1, 1)), ("head", (10, 10, 5, 5))):
        coder = BoxCoder(weights)
        enc = coder.encode(f[f"coder_ref_{dt}"], f[f"coder_prop_{dt}"])
        assert enc.dtype == dt
        # exp/log differ by an ulp between libraries; atol relative to the largest delta
        ref = f[f"encode_{name}_{dt}"]
        np.testing.assert_allclose(enc, ref, rtol=rtol, atol=rtol * np.abs(ref).max(),
                                   err_msg=f"encode {name}")
        dec = coder.decode(f[f"coder_codes_{dt}"], f[f"coder_prop_{dt}"])
        ref = f[f"decode_{name}_{dt}"]
        np.testing.assert_allclose(dec, ref, rtol=rtol, atol=rtol * np.abs(ref).max(),
                                   err_msg=f"decode {name}")


@pytest.mark.torch_fixture
def test_fixture_clip_and_small():
    f = load("detops_boxes.npz")
    np.testing.assert_array_equal(clip_boxes_to_image(f["clip_in"], (90, 120)), f["clip_out"])
    np.testing.assert_array_equal(remove_small_boxes(f["clip_in"], 20.0), f["small_keep"])


@pytest.mark.torch_fixture
def test_fixture_nms():
    f = load("detops_nms.npz")
    for thr in (0.3, 0.5, 0.7):
        np.testing.assert_array_equal(nms(f["boxes"], f["scores"], thr), f[f"keep_{thr}"],
                                      err_msg=f"thr {thr}")
    np.testing.assert_array_equal(nms(f["boxes64"], f["scores64"], 0.5), f["keep64_0.5"])
    np.testing.assert_array_equal(nms(f["tie_small_boxes"], f["tie_small_scores"], 0.3), f["tie_small_keep"])
    np.testing.assert_array_equal(nms(f["tie_big_boxes"], f["tie_big_scores"], 0.5), f["tie_big_keep"])
    np.testing.assert_array_equal(batched_nms(f["boxes"], f["scores"], f["batched_idxs"], 0.5),
                                  f["batched_keep"])


def test_max_keep_is_truncation():
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 100, (400, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (400, 2))], axis=1)
    scores = rng.uniform(size=400)
    full = nms(boxes, scores, 0.5)
    for k in (0, 1, 7, len(full), len(full) + 5):
        np.testing.assert_array_equal(nms(boxes, scores, 0.5, max_keep=k), full[:k])
    cats = rng.integers(0, 4, 400)
    np.testing.assert_array_equal(batched_nms(boxes, scores, cats, 0.5, max_keep=9),
                                  batched_nms(boxes, scores, cats, 0.5)[:9])
