"""Hidden tests of assignment A8 (mask targets and the mask loss): RoIs across the image border and over
several GT masks against the plain-loop RoIAlign, float32, huge logits, an upstream gradient other than 1,
and exactly zero gradient outside each RoI's GT channel. Graders' copy only: not in a student release."""
import numpy as np
import pytest

from minimaskrcnn.model.losses import maskrcnn_loss_backward, maskrcnn_loss_forward
from minimaskrcnn.nn.gradcheck import check_gradient
from minimaskrcnn.ops.masks import project_masks_on_boxes
from minimaskrcnn.ops.reference import roi_align_reference


@pytest.mark.assignment(id="A8", points=2)
def test_project_against_the_plain_loops():
    rng = np.random.default_rng(21)
    gt = rng.uniform(size=(3, 12, 10)) > 0.5
    boxes = np.array([[-3.0, 2.0, 6.5, 9.0], [1.2, 0.4, 9.9, 11.7], [4.0, 4.0, 4.5, 4.2], [5.0, -2.0, 14.0, 15.0]])
    matched = np.array([2, 0, 1, 2])
    out = project_masks_on_boxes(gt, boxes, matched, 6)
    rois = np.concatenate([matched[:, None], boxes], axis=1)
    expected = roi_align_reference(gt.astype(np.float64)[:, None], rois, 6, 1.0, -1, False)[:, 0]
    assert out.shape == (4, 6, 6) and out.dtype == np.float64
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    out32 = project_masks_on_boxes(gt, boxes.astype(np.float32), matched, 6)
    assert out32.dtype == np.float32 and out32.min() >= 0 and out32.max() <= 1
    np.testing.assert_allclose(out32, expected, atol=1e-5)


def _problem(seed, P=5, C=6, M=4):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((P, C, M, M)) * 2
    targets = rng.uniform(size=(P, M, M))
    labels = rng.integers(1, C, P)
    labels[:2] = (3, 3)                  # two RoIs of one class: each still reads only its own map
    return logits, targets, labels


@pytest.mark.assignment(id="A8", points=2)
def test_mask_loss_value_gradient_and_zero_channels():
    logits, targets, labels = _problem(22)
    P, C, M, _ = logits.shape
    loss, cache = maskrcnn_loss_forward(logits, targets, labels)
    x = logits[np.arange(P), labels]
    expected = (np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0) - x * targets).mean()
    assert loss == pytest.approx(expected, rel=1e-12)
    d = maskrcnn_loss_backward(0.3, cache)
    assert d.shape == logits.shape
    err = check_gradient(lambda _: maskrcnn_loss_forward(logits, targets, labels)[0], logits, d, 0.3)
    assert err < 1e-7
    own = np.zeros(logits.shape, bool)
    own[np.arange(P), labels] = True
    assert not d[~own].any()


@pytest.mark.assignment(id="A8", points=1)
def test_mask_loss_float32_and_huge_logits():
    logits, targets, labels = _problem(23)
    logits[0, labels[0]] = 90.0
    targets[0] = 0.0                     # a confident, wrong pixel everywhere in RoI 0: loss 90 per pixel
    loss, cache = maskrcnn_loss_forward(logits.astype(np.float32), targets.astype(np.float32), labels)
    loss64, _ = maskrcnn_loss_forward(logits, targets, labels)
    assert np.isfinite(loss) and loss == pytest.approx(loss64, rel=1e-5) and loss64 > 90 / 5 - 1
    d = maskrcnn_loss_backward(1.0, cache)
    assert d.dtype == np.float32 and np.all(np.isfinite(d))
