"""Hidden tests of assignment A9 (SGD, warm-up + step schedule): PyTorch's update rule with a changing
learning rate, no momentum, frozen parameters. Graders' copy only: not in a student release."""
import numpy as np
import pytest

from minimaskrcnn import nn


@pytest.mark.assignment(id="A9", points=2)
def test_sgd_with_a_changing_learning_rate_follows_pytorch():
    rng = np.random.default_rng(1)
    p, q = nn.Parameter(rng.standard_normal((2, 3))), nn.Parameter(rng.standard_normal(4))
    q.requires_grad = False                      # frozen (as FrozenBN's statistics): SGD leaves it alone
    opt = nn.SGD([("p", p), ("q", q)], lr=0.5, momentum=0.8, weight_decay=0.1)
    w, v = p.data.copy(), None
    q0 = q.data.copy()
    for lr in (0.5, 0.05, 0.2, 0.01):
        opt.lr = lr
        g = rng.standard_normal((2, 3))
        p.grad = g.copy()
        opt.step()
        d = g + 0.1 * w
        v = d if v is None else 0.8 * v + d    # torch.optim.SGD, dampening 0, nesterov False
        w = w - lr * v
        np.testing.assert_allclose(p.data, w, rtol=1e-12)
    np.testing.assert_array_equal(q.data, q0)


@pytest.mark.assignment(id="A9", points=1)
def test_sgd_without_momentum_or_decay_is_plain_gradient_descent():
    p = nn.Parameter(np.array([3.0, -1.0]))
    opt = nn.SGD([("p", p)], lr=0.25, momentum=0.0, weight_decay=0.0)
    for _ in range(3):
        p.grad = np.array([1.0, 2.0])
        opt.step()
    np.testing.assert_allclose(p.data, [3.0 - 0.75, -1.0 - 1.5])


@pytest.mark.assignment(id="A9", points=2)
def test_schedule_edges():
    s = nn.WarmupMultiStepLR(1.0, steps=(3, 6, 6), gamma=0.5, warmup_iters=4, warmup_factor=0.2)
    # warm-up overlaps the first step: both apply; two steps at 6 halve twice
    expect = [0.2, 0.4, 0.6, 0.8 * 0.5, 0.5, 0.5, 0.125, 0.125]
    np.testing.assert_allclose([s(i) for i in range(8)], expect, rtol=1e-12)
    plain = nn.WarmupMultiStepLR(0.1)
    assert plain(0) == plain(10 ** 6) == 0.1
