"""Modules (registration, state_dict, modes), checkpoints on disk, SGD and the learning-rate schedule."""
import os

import numpy as np
import pytest

from minimaskrcnn import nn
from minimaskrcnn.nn.gradcheck import check_directional, check_gradient


def small_net(dtype="float64"):
    nn.init.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, dtype=dtype), nn.BatchNorm2d(4, dtype=dtype), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2, dtype=dtype),
        nn.GroupNorm(2, 4, dtype=dtype), nn.ReLU(), nn.ConvTranspose2d(4, 3, 2, stride=2, dtype=dtype),
        nn.Flatten(), nn.Linear(3 * 4 * 4, 5, dtype=dtype))


def test_names_and_counts_follow_pytorch():
    net = small_net()
    names = [n for n, _ in net.named_parameters()]
    assert names[:4] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    keys = list(net.state_dict())
    assert keys[2:7] == ["1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    expected = (4 * 3 * 9 + 4) + 8 + (4 * 2 * 9 + 4) + 8 + (4 * 3 * 4 + 3) + (48 * 5 + 5)
    assert net.num_parameters() == expected


def test_frozen_bn_holds_buffers_not_parameters():
    bn = nn.FrozenBatchNorm2d(8)
    assert bn.num_parameters() == 0
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var"]


def test_sequential_backward_matches_numerical_gradients(rng):
    """The assembled net's gradient for every parameter, checked in one random direction per tensor."""
    net = small_net()
    x = rng.standard_normal((2, 3, 8, 8))
    dout = rng.standard_normal((2, 5))

    def loss():
        net.free_cache()
        return float(np.sum(net(x) * dout))

    net.zero_grad()
    out = net(x)
    dx = net.backward(dout)
    params = {n: p.data for n, p in net.named_parameters()}
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert check_directional(loss, params, grads) < 1e-8
    assert out.shape == (2, 5) and check_gradient(lambda _: np.sum(net(x) * dout), x, dx) < 1e-7


def test_gradients_accumulate_until_zero_grad(rng):
    lin = nn.Linear(3, 2, dtype="float64")
    x = rng.standard_normal((4, 3))
    lin(x)
    lin.backward(np.ones((4, 2)))
    g1 = lin.weight.grad.copy()
    lin(x)
    lin.backward(np.ones((4, 2)))
    np.testing.assert_allclose(lin.weight.grad, 2 * g1)
    lin.zero_grad()
    assert lin.weight.grad is None


def test_eval_mode_keeps_no_cache_and_refuses_backward(rng):
    conv = nn.Conv2d(2, 2, 3).eval()
    conv(rng.standard_normal((1, 2, 5, 5)).astype(np.float32))
    assert conv._tape == []
    with pytest.raises(RuntimeError, match="matching training-mode forward"):
        conv.backward(np.zeros((1, 2, 3, 3), np.float32))


def test_frozen_parameters_get_no_gradient(rng):
    lin = nn.Linear(3, 2, dtype="float64")
    lin.weight.requires_grad = False
    lin(rng.standard_normal((4, 3)))
    lin.backward(np.ones((4, 2)))
    assert lin.weight.grad is None and lin.bias.grad is not None


def test_state_dict_round_trip_through_disk(tmp_path, rng):
    a, b = small_net(), small_net()
    for _, p in b.named_parameters():
        p.data = p.data + 1
    path = tmp_path / "ckpt.npz"
    nn.save_npz(path, a.state_dict())
    b.load_state_dict(path)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(va, vb, err_msg=k)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp_")]


def test_load_state_dict_lists_every_problem():
    net = small_net()
    sd = dict(net.state_dict())
    del sd["0.weight"]
    sd["extra.weight"] = np.zeros(3)
    sd["9.bias"] = np.zeros(7)
    with pytest.raises(ValueError) as e:
        net.load_state_dict(sd)
    msg = str(e.value)
    assert "missing keys: 0.weight" in msg and "unexpected keys: extra.weight" in msg
    assert "9.bias: checkpoint (7,) vs model (5,)" in msg
    net.load_state_dict(sd, strict=False)  # loads what fits, no error


def test_load_refuses_pickled_and_garbage_files(tmp_path):
    bad = tmp_path / "obj.npz"
    np.savez(bad, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a plain-array"):
        nn.load_npz(bad)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="cannot read"):
        nn.load_npz(junk)
    with pytest.raises(FileNotFoundError):
        nn.load_npz(tmp_path / "missing.npz")


def test_save_is_atomic_when_writing_fails(tmp_path):
    path = tmp_path / "ckpt.npz"
    nn.save_npz(path, {"w": np.ones(3)})
    with pytest.raises(ValueError):
        nn.save_npz(path, {"w": np.array([None], dtype=object)})
    np.testing.assert_array_equal(nn.load_npz(path)["w"], np.ones(3))
    assert os.listdir(tmp_path) == ["ckpt.npz"]


@pytest.mark.assignment(id="A9", points=3)
def test_sgd_matches_the_pytorch_update_rule():
    p = nn.Parameter(np.array([1.0, -2.0]))
    opt = nn.SGD([("p", p)], lr=0.1, momentum=0.9, weight_decay=0.01)
    w, v = p.data.copy(), None
    for g in (np.array([0.5, 0.25]), np.array([-1.0, 2.0]), np.array([0.0, 1.0])):
        p.grad = g.copy()
        opt.step()
        d = g + 0.01 * w
        v = d if v is None else 0.9 * v + d
        w = w - 0.1 * v
        np.testing.assert_allclose(p.data, w, rtol=1e-12)
    state = opt.state_dict()
    opt2 = nn.SGD([("p", p)], lr=0.1)
    opt2.load_state_dict(state)
    np.testing.assert_array_equal(opt2.velocity["p"], opt.velocity["p"])


@pytest.mark.assignment(id="A9", points=2)
def test_warmup_multistep_schedule():
    s = nn.WarmupMultiStepLR(0.02, steps=(100, 150), gamma=0.1, warmup_iters=10, warmup_factor=0.001)
    np.testing.assert_allclose(s(0), 0.02 * 0.001)
    np.testing.assert_allclose(s(5), 0.02 * (0.001 * 0.5 + 0.5))
    assert s(10) == s(99) == 0.02
    np.testing.assert_allclose([s(100), s(149), s(150)], [0.002, 0.002, 0.0002])
    with pytest.raises(ValueError):
        nn.WarmupMultiStepLR(0.1, steps=(5, 3))


def test_tiny_cnn_overfits_a_small_batch(rng):
    """Training end to end: a small CNN memorises 8 labelled images (loss falls by 10x)."""
    nn.init.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    opt = nn.SGD(net.named_parameters(), lr=0.1, momentum=0.9, weight_decay=0)
    losses = []
    for _ in range(60):
        loss, cache = nn.functional.softmax_cross_entropy_forward(net(x), y)
        net.zero_grad()
        net.backward(nn.functional.softmax_cross_entropy_backward(1.0, cache).astype(np.float32))
        opt.step()
        losses.append(loss)
    assert losses[-1] < losses[0] / 10


def test_a_module_used_twice_is_taken_back_in_reverse_order(rng):
    """The tape: two forwards, two backwards (last first); the weight gradient is the sum of both uses."""
    conv = nn.Conv2d(2, 3, 3, padding=1, dtype="float64")
    a, b = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((2, 2, 4, 6))
    conv(a)
    conv(b)
    da_out, db_out = rng.standard_normal((1, 3, 5, 5)), rng.standard_normal((2, 3, 4, 6))
    db_in = conv.backward(db_out)
    da_in = conv.backward(da_out)
    assert da_in.shape == a.shape and db_in.shape == b.shape
    w = conv.weight.data
    err = check_gradient(lambda _: np.sum(conv(a) * da_out) + np.sum(conv(b) * db_out), w, conv.weight.grad)
    conv.free_cache()
    assert err < 1e-7
    with pytest.raises(RuntimeError):
        conv.backward(da_out)


def test_modules_check_their_arguments_when_built():
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(5, 4, 3, groups=2)
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.ConvTranspose2d(4, 6, 2, groups=4)
    with pytest.raises(RuntimeError, match="without a matching"):
        nn.Flatten().backward(np.ones((2, 3)))
    lin = nn.Linear(2, 2)  # float32
    with pytest.raises(ValueError, match="float64"):
        check_directional(lambda: 0.0, {"w": lin.weight.data}, {"w": lin.weight.data})


def test_sgd_refuses_a_parameter_without_gradient(rng):
    """A trainable parameter that backward did not reach is a bug, never a silent skip; frozen ones are skipped."""
    lin = nn.Linear(3, 2, dtype="float64")
    lin.weight.grad = rng.standard_normal(lin.weight.shape)
    with pytest.raises(RuntimeError, match="'bias' has no gradient"):
        nn.SGD(lin.named_parameters(), lr=0.1).step()
    lin.bias.requires_grad = False
    w = lin.weight.data.copy()
    nn.SGD(lin.named_parameters(), lr=0.1, momentum=0, weight_decay=0).step()
    np.testing.assert_allclose(lin.weight.data, w - 0.1 * lin.weight.grad)
