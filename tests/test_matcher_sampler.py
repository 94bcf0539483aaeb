"""Tests for minimaskrcnn.ops.matcher.Matcher and minimaskrcnn.ops.sampler.BalancedPositiveNegativeSampler."""
import os

import numpy as np
import pytest

from minimaskrcnn.backend import cupy_available, to_device, to_numpy
from minimaskrcnn.ops.matcher import Matcher
from minimaskrcnn.ops.sampler import BalancedPositiveNegativeSampler

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not cupy_available(), reason="needs CuPy and a CUDA device")])]

# Two GT boxes (rows) against five predictions (columns).
QUALITY = np.array([[0.9, 0.5, 0.1, 0.2, 0.0],
                    [0.1, 0.6, 0.2, 0.6, 0.0]], dtype=np.float32)


# ---------------------------------------------------------------- Matcher

@pytest.mark.parametrize("device", DEVICES)
def test_matcher_by_hand(device):
    q = to_device(QUALITY, device)
    # best IoU per prediction: 0.9 (GT 0) -> match; 0.6, 0.6 -> between; 0.2, 0.0 -> below
    np.testing.assert_array_equal(to_numpy(Matcher(0.7, 0.3)(q)), [0, -2, -1, -2, -1])
    # low-quality: GT 1's best IoU 0.6 is reached by predictions 1 and 3 (a tie): both become matches
    out = Matcher(0.7, 0.3, allow_low_quality_matches=True)(q)
    np.testing.assert_array_equal(to_numpy(out), [0, 1, -1, 1, -1])
    assert out.dtype == np.int64
    np.testing.assert_array_equal(to_numpy(Matcher(0.5, 0.5)(q)), [0, 1, -1, 1, -1])


def test_matcher_thresholds_are_inclusive_below():
    q = np.array([[0.7, 0.3, 0.29999]], dtype=np.float64)
    np.testing.assert_array_equal(Matcher(0.7, 0.3)(q), [0, -2, -1])  # IoU == high: match; == low: between


def test_matcher_ties_pick_first_gt_and_low_quality_uses_own_best():
    q = np.array([[0.5, 0.1],
                  [0.6, 0.0],
                  [0.6, 0.2]])
    # Prediction 0: tie between GT 1 and GT 2 at 0.6 -> GT 1 (the first, as torch.max). Prediction 1: 0.2.
    np.testing.assert_array_equal(Matcher(0.7, 0.3)(q), [-2, -1])
    # Low-quality: prediction 0 is the best of every GT (GT 0 included), and it is revived with *its own*
    # best GT (1), not with GT 0, as torchvision does. Prediction 1 is no GT's best: it stays below.
    np.testing.assert_array_equal(Matcher(0.7, 0.3, True)(q), [1, -1])


def test_matcher_empty():
    no_gt = Matcher(0.7, 0.3, True)(np.zeros((0, 6), dtype=np.float32))
    np.testing.assert_array_equal(no_gt, np.full(6, Matcher.BELOW_LOW_THRESHOLD))
    assert no_gt.dtype == np.int64
    assert Matcher(0.7, 0.3, True)(np.zeros((3, 0))).shape == (0,)


def test_matcher_bad_input():
    with pytest.raises(ValueError, match="low_threshold \\(0.8\\) must be <= high_threshold \\(0.7\\)"):
        Matcher(0.7, 0.8)
    with pytest.raises(ValueError, match="match_quality_matrix must have shape \\(num_gt, num_pred"):
        Matcher(0.7, 0.3)(np.zeros(5))
    with pytest.raises(ValueError, match="match_quality_matrix contains NaN"):
        Matcher(0.7, 0.3)(np.array([[0.5, np.nan]]))


@pytest.mark.torch_fixture
@pytest.mark.parametrize("name, args", [("rpn", (0.7, 0.3, True)), ("rpn_no_lq", (0.7, 0.3, False)),
                                        ("head", (0.5, 0.5, False))])
def test_fixture_matcher(name, args):
    f = np.load(os.path.join(FIXTURES, "detops_matcher.npz"), allow_pickle=False)
    # "quality" has tied predictions and a GT far from everything (its best IoU 0 is tied by all predictions)
    np.testing.assert_array_equal(Matcher(*args)(f["quality"]), f[f"matches_{name}"])
    np.testing.assert_array_equal(Matcher(*args)(f["quality_no_far_gt"]), f[f"matches_{name}_no_far_gt"])


# ---------------------------------------------------------------- sampler

def labels_with(num_pos, num_neg, num_ignored, rng):
    labels = np.concatenate([rng.integers(1, 5, num_pos), np.zeros(num_neg, int), -np.ones(num_ignored, int)])
    return rng.permutation(labels)


@pytest.mark.parametrize("num_pos, num_neg, batch, fraction, want_pos, want_neg", [
    (10, 100, 16, 0.25, 4, 12),   # enough of both
    (2, 100, 16, 0.25, 2, 14),    # too few positives: fill with negatives
    (50, 3, 16, 0.5, 8, 3),       # too few negatives
    (0, 0, 16, 0.5, 0, 0),        # only ignored elements
    (10, 10, 7, 0.5, 3, 4),       # int(7 * 0.5) = 3 positives
])
def test_sampler_counts(rng, num_pos, num_neg, batch, fraction, want_pos, want_neg):
    labels = labels_with(num_pos, num_neg, 20, rng)
    pos, neg = BalancedPositiveNegativeSampler(batch, fraction)([labels], rng)
    pos, neg = pos[0], neg[0]
    assert pos.dtype == bool and neg.dtype == bool and pos.shape == labels.shape
    assert pos.sum() == want_pos and neg.sum() == want_neg
    assert (labels[pos] >= 1).all() and (labels[neg] == 0).all()  # ignored (-1) never sampled


def test_sampler_is_deterministic_per_seed(rng):
    labels = [labels_with(30, 200, 10, rng), labels_with(5, 50, 0, rng)]
    sampler = BalancedPositiveNegativeSampler(32, 0.25)
    a = sampler(labels, np.random.default_rng(7))
    b = sampler(labels, np.random.default_rng(7))
    c = sampler(labels, np.random.default_rng(8))
    for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True):
        np.testing.assert_array_equal(x, y)
    assert any((x != y).any() for x, y in zip(a[0] + a[1], c[0] + c[1], strict=True))
    assert [p.sum() for p in a[0]] == [8, 5] and [n.sum() for n in a[1]] == [24, 27]


def test_sampler_is_uniform():
    # 10 positives, 4 drawn each time: each one should be drawn 40% of the time.
    labels = np.array([1] * 10 + [0] * 10)
    sampler = BalancedPositiveNegativeSampler(8, 0.5)
    rng = np.random.default_rng(3)
    counts = sum(sampler([labels], rng)[0][0].astype(int) for _ in range(2000))
    np.testing.assert_allclose(counts[:10] / 2000, 0.4, atol=0.05)  # binomial sd ~ 0.011


@pytest.mark.gpu
@pytest.mark.skipif(not cupy_available(), reason="needs CuPy and a CUDA device")
def test_sampler_same_samples_on_cuda(rng):
    labels = labels_with(30, 200, 10, rng)
    sampler = BalancedPositiveNegativeSampler(32, 0.25)
    cpu = sampler([labels], np.random.default_rng(1))
    gpu = sampler([to_device(labels, "cuda")], np.random.default_rng(1))
    np.testing.assert_array_equal(to_numpy(gpu[0][0]), cpu[0][0])
    np.testing.assert_array_equal(to_numpy(gpu[1][0]), cpu[1][0])


def test_sampler_bad_input(rng):
    sampler = BalancedPositiveNegativeSampler(16, 0.25)
    with pytest.raises(ValueError, match="rng must be a numpy.random.Generator"):
        sampler([np.zeros(3, int)], 0)
    with pytest.raises(ValueError, match="matched_idxs\\[0\\] must be a 1-D integer array"):
        sampler([np.zeros((3, 2), int)], rng)
    with pytest.raises(ValueError, match="matched_idxs must be a list"):
        sampler(np.zeros(3, int), rng)
    with pytest.raises(ValueError, match="positive_fraction must be in \\[0, 1\\]"):
        BalancedPositiveNegativeSampler(16, 1.5)
