"""Mask R-CNN's losses as functional pairs (model/losses.py): values against plain loops over the samples,
float64 central-difference gradients for every prediction, and where the gradient must be exactly zero."""
import numpy as np
import pytest

from minimaskrcnn.model.losses import (fastrcnn_loss_backward, fastrcnn_loss_forward, mask_probs,
                                       maskrcnn_loss_backward, maskrcnn_loss_forward, rpn_loss_backward,
                                       rpn_loss_forward)
from minimaskrcnn.nn.activation import sigmoid
from minimaskrcnn.nn.gradcheck import check_gradient

TOL = 1e-7
BETA = 1.0 / 9
DLOSSES = (0.7, 1.3)     # distinct upstream gradients: a swapped pair would show


def smooth_l1(d, beta=BETA):
    d = abs(d)
    return 0.5 * d * d / beta if d < beta else d - 0.5 * beta


def bce(x, t):
    p = 1 / (1 + np.exp(-x))
    return -t * np.log(p) - (1 - t) * np.log(1 - p)


def log_softmax(row):
    return row - row.max() - np.log(np.exp(row - row.max()).sum())


# ---- rpn_loss ----------------------------------------------------------------------------------------------
def rpn_problem(rng, A=40):
    objectness = rng.standard_normal(A) * 2
    deltas = rng.standard_normal((A, 4)) * 0.3
    labels = rng.choice([-1, 0, 1], A, p=[0.4, 0.4, 0.2])
    labels[:2] = (1, 0)
    targets = rng.standard_normal((A, 4)) * 0.3
    return objectness, deltas, labels, targets


@pytest.mark.assignment(id="A5", points=2)
def test_rpn_loss_values_against_a_loop(rng):
    objectness, deltas, labels, targets = rpn_problem(rng)
    (loss_obj, loss_box), _ = rpn_loss_forward(objectness, deltas, labels, targets)
    sampled = [a for a in range(len(labels)) if labels[a] >= 0]
    assert loss_obj == pytest.approx(sum(bce(objectness[a], labels[a]) for a in sampled) / len(sampled), rel=1e-12)
    box = sum(smooth_l1(deltas[a, j] - targets[a, j]) for a in sampled if labels[a] == 1 for j in range(4))
    assert loss_box == pytest.approx(box / len(sampled), rel=1e-12)     # torchvision: / sampled, not / positives


@pytest.mark.assignment(id="A5", points=2)
def test_rpn_loss_gradients_float64(rng):
    objectness, deltas, labels, targets = rpn_problem(rng)

    def total(_):
        (a, b), _ = rpn_loss_forward(objectness, deltas, labels, targets)
        return DLOSSES[0] * a + DLOSSES[1] * b

    _, cache = rpn_loss_forward(objectness, deltas, labels, targets)
    d_objectness, d_deltas = rpn_loss_backward(DLOSSES, cache)
    assert check_gradient(total, objectness, d_objectness) < TOL
    assert check_gradient(total, deltas, d_deltas) < TOL
    assert not np.any(d_objectness[labels < 0]) and not np.any(d_deltas[labels != 1])   # exactly zero
    assert np.all(d_objectness[labels >= 0] != 0)


@pytest.mark.assignment(id="A5", points=1)
def test_rpn_loss_without_positives_or_samples(rng):
    objectness, deltas, _, targets = rpn_problem(rng)
    labels = np.where(np.arange(len(objectness)) % 2, 0, -1)
    (loss_obj, loss_box), cache = rpn_loss_forward(objectness, deltas, labels, targets)
    assert loss_obj > 0 and loss_box == 0
    assert not np.any(rpn_loss_backward((1.0, 1.0), cache)[1])
    (loss_obj, loss_box), cache = rpn_loss_forward(objectness, deltas, np.full(len(objectness), -1), targets)
    assert loss_obj == loss_box == 0
    assert all(not np.any(d) for d in rpn_loss_backward((1.0, 1.0), cache))


# ---- fastrcnn_loss -----------------------------------------------------------------------------------------------
def fastrcnn_problem(rng, R=12, K=4):
    class_logits = rng.standard_normal((R, K)) * 2
    box_regression = rng.standard_normal((R, 4 * K)) * 0.3
    labels = rng.integers(0, K, R)
    labels[:2] = (0, 2)
    targets = rng.standard_normal((R, 4)) * 0.3
    return class_logits, box_regression, labels, targets


def test_fastrcnn_loss_values_against_a_loop(rng):
    class_logits, box_regression, labels, targets = fastrcnn_problem(rng)
    (loss_cls, loss_box), _ = fastrcnn_loss_forward(class_logits, box_regression, labels, targets)
    R = len(labels)
    assert loss_cls == pytest.approx(-sum(log_softmax(class_logits[r])[labels[r]] for r in range(R)) / R, rel=1e-12)
    box = sum(smooth_l1(box_regression[r, 4 * labels[r] + j] - targets[r, j])
              for r in range(R) if labels[r] > 0 for j in range(4))
    assert loss_box == pytest.approx(box / R, rel=1e-12)


def test_fastrcnn_loss_gradients_float64(rng):
    class_logits, box_regression, labels, targets = fastrcnn_problem(rng)

    def total(_):
        (a, b), _ = fastrcnn_loss_forward(class_logits, box_regression, labels, targets)
        return DLOSSES[0] * a + DLOSSES[1] * b

    _, cache = fastrcnn_loss_forward(class_logits, box_regression, labels, targets)
    d_class_logits, d_box_regression = fastrcnn_loss_backward(DLOSSES, cache)
    assert check_gradient(total, class_logits, d_class_logits) < TOL
    assert check_gradient(total, box_regression, d_box_regression) < TOL
    own = np.zeros(box_regression.shape, bool)        # only the GT class's four deltas of positive RoIs
    for r, k in enumerate(labels):
        own[r, 4 * k:4 * k + 4] = k > 0
    assert not np.any(d_box_regression[~own]) and np.all(d_box_regression[own] != 0)


# ---- maskrcnn_loss -------------------------------------------------------------------------------------------------
# The sigmoid loss is assignment A8's (the softmax variant of Table 2b stays the library's).
A8 = pytest.mark.assignment(id="A8", points=1)
MASK_CASES = [pytest.param("sigmoid", 4, marks=A8), pytest.param("sigmoid", 1, marks=A8), ("softmax", 4)]


def mask_problem(rng, channels, P=3, M=5):
    logits = rng.standard_normal((P, channels, M, M)) * 2
    targets = (rng.uniform(size=(P, M, M)) > 0.5) * rng.uniform(0.6, 1.0, (P, M, M))   # soft, as RoIAligned
    labels = np.array([1, 3, 1])[:P]
    return logits, targets, labels


@pytest.mark.parametrize("mode,channels", MASK_CASES, ids=["sigmoid", "class-agnostic", "softmax"])
def test_maskrcnn_loss_values_against_a_loop(mode, channels, rng):
    logits, targets, labels = mask_problem(rng, channels)
    loss, _ = maskrcnn_loss_forward(logits, targets, labels, mode)
    P, _, M, _ = logits.shape
    total = 0.0
    for p in range(P):
        for i in range(M):
            for j in range(M):
                if mode == "sigmoid":   # the GT class's map only (one map when class-agnostic)
                    total += bce(logits[p, labels[p] if channels > 1 else 0, i, j], targets[p, i, j])
                else:                   # a multinomial over the maps: the GT class inside the mask, bg outside
                    target_class = labels[p] if targets[p, i, j] >= 0.5 else 0
                    total -= log_softmax(logits[p, :, i, j])[target_class]
    assert loss == pytest.approx(total / (P * M * M), rel=1e-12)


@pytest.mark.parametrize("mode,channels", MASK_CASES, ids=["sigmoid", "class-agnostic", "softmax"])
def test_maskrcnn_loss_gradients_float64(mode, channels, rng):
    logits, targets, labels = mask_problem(rng, channels)
    _, cache = maskrcnn_loss_forward(logits, targets, labels, mode)
    d_logits = maskrcnn_loss_backward(DLOSSES[0], cache)
    err = check_gradient(lambda _: maskrcnn_loss_forward(logits, targets, labels, mode)[0], logits, d_logits,
                         DLOSSES[0])
    assert err < TOL
    used = np.zeros(logits.shape, bool)
    used[np.arange(len(labels)), labels if channels > 1 else 0] = True
    if mode == "sigmoid":       # classes do not compete: other maps get no gradient
        assert not np.any(d_logits[~used]) and np.all(d_logits[used] != 0)
    else:                       # every map competes for every pixel
        assert np.all(d_logits != 0)


@A8
def test_maskrcnn_loss_without_positives_and_bad_modes(rng):
    loss, cache = maskrcnn_loss_forward(np.zeros((0, 4, 5, 5)), np.zeros((0, 5, 5)), np.zeros(0, np.int64))
    assert loss == 0.0 and maskrcnn_loss_backward(1.0, cache).shape == (0, 4, 5, 5)
    logits, targets, labels = mask_problem(rng, 1)
    with pytest.raises(ValueError, match="softmax mask loss needs one channel per class"):
        maskrcnn_loss_forward(logits, targets, labels, "softmax")
    with pytest.raises(ValueError, match="mode must be one of"):
        maskrcnn_loss_forward(logits, targets, labels, "hinge")


@pytest.mark.parametrize("mode,channels", [("sigmoid", 4), ("sigmoid", 1), ("softmax", 4)],
                         ids=["sigmoid", "class-agnostic", "softmax"])
def test_mask_probs_are_the_losses_probabilities(mode, channels, rng):
    """The inference probability is the one the loss trains: a loss of 0 would need probability = target."""
    logits, _, labels = mask_problem(rng, channels)
    probs = mask_probs(logits, labels, mode)
    for p, k in enumerate(labels):
        if mode == "softmax":
            expected = np.exp(logits[p, k]) / np.exp(logits[p]).sum(axis=0)
        else:
            expected = 1 / (1 + np.exp(-logits[p, k if channels > 1 else 0]))
        np.testing.assert_allclose(probs[p], expected, rtol=1e-12)


def test_sigmoid_is_torchs_formula_without_overflow_warnings():
    """One sigmoid for the RPN's scores, the mask probabilities and the BCE gradient: ``1 / (1 + exp(-x))`` as
    written (torch.sigmoid's arithmetic, so probabilities match torchvision's bit for bit), no warning where
    exp(-x) overflows (the answer there is 0)."""
    x = np.array([-800.0, -30.0, -1.0, 0.0, 2.5, 800.0])
    for dtype in (np.float64, np.float32):
        with np.errstate(over="raise", divide="raise", invalid="raise"):
            s = sigmoid(x.astype(dtype))
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(s, 1 / (1 + np.exp(-x.astype(dtype))))
        assert s.dtype == dtype and s[0] == 0.0 and s[-1] == 1.0 and s[1] > 0
