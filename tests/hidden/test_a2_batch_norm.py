"""Hidden tests of assignment A2 (batch norm, frozen BN): other shapes, dtypes and statistics than the
visible tests in tests/test_layers.py. Graders' copy only: not in a student release."""
import numpy as np
import pytest

from minimaskrcnn.nn import functional as F
from minimaskrcnn.nn.gradcheck import check_gradient


@pytest.mark.assignment(id="A2", points=2)
@pytest.mark.parametrize("shape", [(5, 1), (2, 4, 3, 1)])
def test_batch_norm_gradients_other_shapes(shape):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape) * 0.5 - 3
    g, b = rng.uniform(0.5, 2, shape[1]), rng.standard_normal(shape[1])
    out, cache = F.batch_norm_forward(x, g, b, eps=1e-3)
    axes = (0,) + tuple(range(2, x.ndim))
    np.testing.assert_allclose(out.mean(axis=axes), b, atol=1e-10)
    dout = rng.standard_normal(out.shape)
    dx, dg, db = F.batch_norm_backward(dout, cache)
    for k, analytic in enumerate((dx, dg, db)):
        def f(_, k=k):
            args = [x, g, b]
            return F.batch_norm_forward(*args, eps=1e-3)[0]
        target = (x, g, b)[k]
        assert check_gradient(f, target, analytic, dout) < 1e-7, f"gradient {k}"
    # the gradient with respect to x sums to zero per channel: the mean is subtracted
    np.testing.assert_allclose(dx.sum(axis=axes), 0, atol=1e-10)


@pytest.mark.assignment(id="A2", points=1)
def test_batch_norm_float32_and_momentum():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 3, 5, 5)) * 2 + 1).astype(np.float32)
    g, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    rm, rv = np.full(3, 0.5, np.float32), np.full(3, 2.0, np.float32)
    out, _ = F.batch_norm_forward(x, g, b, rm, rv, training=True, momentum=0.3)
    assert out.dtype == np.float32
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(rm, 0.7 * 0.5 + 0.3 * x64.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(rv, 0.7 * 2.0 + 0.3 * x64.var(axis=(0, 2, 3), ddof=1), rtol=1e-5)


@pytest.mark.assignment(id="A2", points=1)
def test_frozen_batch_norm_equals_eval_mode_batch_norm():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 4, 2, 3))
    w, b, rm, rv = rng.standard_normal(4), rng.standard_normal(4), rng.standard_normal(4), rng.uniform(0.1, 3, 4)
    frozen, cache = F.frozen_batch_norm_forward(x, w, b, rm, rv, eps=1e-3)
    bn, bn_cache = F.batch_norm_forward(x, w, b, rm.copy(), rv.copy(), training=False, eps=1e-3)
    np.testing.assert_allclose(frozen, bn, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(x.shape)
    np.testing.assert_allclose(F.frozen_batch_norm_backward(dout, cache), F.batch_norm_backward(dout, bn_cache)[0],
                               rtol=1e-12, atol=1e-12)
