"""Hidden tests of assignment A5 (the RPN loss): other smooth L1 switch points, huge logits, float32, and
the two losses' upstream gradients kept apart. Graders' copy only: not in a student release."""
import numpy as np
import pytest

from minimaskrcnn.model.losses import rpn_loss_backward, rpn_loss_forward
from minimaskrcnn.nn.gradcheck import check_gradient


def _problem(seed, A=64):
    rng = np.random.default_rng(seed)
    labels = rng.choice([-1, 0, 1], A, p=[0.5, 0.35, 0.15])
    labels[:3] = (1, 0, -1)
    return rng.standard_normal(A) * 3, rng.standard_normal((A, 4)), labels, rng.standard_normal((A, 4))


def _loops(objectness, deltas, labels, targets, beta):
    sampled = [a for a in range(len(labels)) if labels[a] >= 0]
    obj = 0.0
    for a in sampled:   # log(1 + e^-|x|) + max(x, 0) - x t: BCE written so that it never overflows
        x, t = objectness[a], labels[a]
        obj += np.log1p(np.exp(-abs(x))) + max(x, 0) - x * t
    box = 0.0
    for a in sampled:
        if labels[a] == 1:
            for j in range(4):
                d = abs(deltas[a, j] - targets[a, j])
                box += 0.5 * d * d / beta if d < beta else d - 0.5 * beta
    return obj / len(sampled), box / len(sampled)


@pytest.mark.assignment(id="A5", points=2)
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_rpn_loss_other_betas(beta):
    objectness, deltas, labels, targets = _problem(5)
    losses, cache = rpn_loss_forward(objectness, deltas, labels, targets, beta=beta)
    np.testing.assert_allclose(losses, _loops(objectness, deltas, labels, targets, beta), rtol=1e-12)
    if beta > 0:   # L1 (beta 0) has a kink at 0; away from it central differences are fine, but keep it simple
        def total(_):
            a, b = rpn_loss_forward(objectness, deltas, labels, targets, beta=beta)[0]
            return 0.25 * a + 3.0 * b
        d_obj, d_deltas = rpn_loss_backward((0.25, 3.0), cache)
        assert check_gradient(total, objectness, d_obj) < 1e-7
        assert check_gradient(total, deltas, d_deltas) < 1e-7


@pytest.mark.assignment(id="A5", points=1)
def test_rpn_loss_huge_logits_stay_finite():
    objectness = np.array([80.0, -80.0, 80.0, -80.0, 0.5])
    labels = np.array([0, 1, 1, 0, -1])
    deltas = targets = np.zeros((5, 4))
    (obj, box), cache = rpn_loss_forward(objectness, deltas, labels, targets)
    assert obj == pytest.approx((80 + 80 + 0 + 0) / 4, rel=1e-9) and box == 0.0
    d_obj, d_deltas = rpn_loss_backward((1.0, 1.0), cache)
    assert np.all(np.isfinite(d_obj)) and not d_deltas.any()
    np.testing.assert_allclose(d_obj, [0.25, -0.25, 0.0, 0.0, 0.0], atol=1e-12)


@pytest.mark.assignment(id="A5", points=1)
def test_rpn_loss_float32_and_separate_upstream_gradients():
    objectness, deltas, labels, targets = _problem(6)
    (a64, b64), cache64 = rpn_loss_forward(objectness, deltas, labels, targets)
    (a32, b32), cache32 = rpn_loss_forward(objectness.astype(np.float32), deltas.astype(np.float32), labels,
                                           targets.astype(np.float32))
    assert a32 == pytest.approx(a64, rel=1e-5) and b32 == pytest.approx(b64, rel=1e-5)
    d_obj, d_deltas = rpn_loss_backward((0.0, 1.0), cache32)
    assert d_obj.dtype == d_deltas.dtype == np.float32
    assert not d_obj.any() and d_deltas[labels == 1].any()           # only the box loss flows
    d_obj, d_deltas = rpn_loss_backward((1.0, 0.0), cache64)
    assert d_obj[labels >= 0].all() and not d_deltas.any()          # only the objectness loss flows
