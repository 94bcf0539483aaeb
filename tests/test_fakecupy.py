"""The CuPy path on the strict stand-in (minimaskrcnn.testing.fakecupy): every layer, the RoI operators, the whole
model, the trainer with a checkpoint and a resume, and evaluation run on 'cuda' arrays that obey CuPy's rules,
and give exactly the NumPy run's results (the arithmetic is the same). Plus the stand-in's own rules."""
import numpy as np
import pytest

from minimaskrcnn import backend, config
from minimaskrcnn.backend import get_xp, is_cupy, to_device, to_numpy
from minimaskrcnn.nn import functional as F
from minimaskrcnn.ops import rawkernel
from minimaskrcnn.ops.roi_align import roi_align_backward, roi_align_forward
from minimaskrcnn.ops.roi_pool import roi_pool_backward, roi_pool_forward
from minimaskrcnn.ops.roi_warp import roi_warp_backward, roi_warp_forward
from minimaskrcnn.testing import fakecupy, synthetic_scene

HAS_CXX = rawkernel.compiler_available()


@pytest.fixture
def cp():
    with backend.use_fake_cupy(fakecupy):
        yield fakecupy


# ---- the stand-in's rules ------------------------------------------------------------------------------
def test_the_stand_in_refuses_what_cupy_refuses(cp):
    x = to_device(np.arange(6, dtype=np.float32).reshape(2, 3), "cuda")
    host = np.ones((2, 3), np.float32)
    for bad in (lambda: x + host, lambda: host * x, lambda: x == host, lambda: cp.maximum(x, host),
                lambda: cp.concatenate([x, host]), lambda: cp.where(x > 1, x, host), lambda: x[np.array([0, 1])],
                lambda: x.__setitem__(0, host[0]), lambda: np.asarray(x), lambda: np.exp(x),
                lambda: np.concatenate([x, x]), lambda: np.add.at(x, [0], 1.0), lambda: cp.sum(host),
                lambda: x.max(initial=0.0)):
        with pytest.raises(TypeError):
            bad()
    with pytest.raises(AttributeError, match="stand-in"):
        _ = cp.fft
    # scalars, 0-d NumPy arrays and device arrays are fine; reductions stay on the device as 0-d arrays
    y = 2 * x + np.float32(1) - np.array(0.5) + x
    assert is_cupy(y) and is_cupy(y.sum()) and y.sum().shape == ()
    assert get_xp(y) is cp


def test_the_stand_in_counts_transfers_and_syncs(cp):
    with cp.counting() as stats:
        x = to_device(np.arange(6.0), "cuda")
        total = float(x.sum())
        _ = x[x > 2]                       # a boolean mask: CuPy reads the count back
        back = to_numpy(x)
    assert total == 15.0 and back.tolist() == list(range(6))
    assert stats.total() == {"to_host": 1, "to_device": 1, "syncs": 1, "hidden_syncs": 1}


def test_the_stand_in_is_used_only_inside_the_hook():
    x = fakecupy.asarray(np.zeros(3))
    assert not is_cupy(x) and get_xp(x) is np
    with backend.use_fake_cupy(fakecupy):
        assert is_cupy(x) and backend.to_device(np.zeros(2), "cuda").__class__ is fakecupy.ndarray
    assert not is_cupy(x)


# ---- layers -------------------------------------------------------------------------------------------
def _host(v):
    if isinstance(v, (tuple, list)):
        return [_host(u) for u in v]
    if is_cupy(v):
        return to_numpy(v)
    return v


def _both(forward, backward, args, kwargs=None, dout=None):
    """``forward(*args)`` then ``backward(dout, cache)`` on NumPy arrays and on device arrays; each result
    (output, gradients, and the arguments, which a forward may update in place) must be equal."""
    kwargs = kwargs or {}
    runs = []
    for device in ("cpu", "cuda"):
        a = [to_device(v.copy(), device) if isinstance(v, np.ndarray) else v for v in args]
        out, cache = forward(*a, **kwargs)
        if device == "cuda":
            assert is_cupy(out) or np.isscalar(out), type(out)
        d = dout if dout is not None else np.random.default_rng(3).standard_normal(np.shape(_host(out)))
        grads = backward(to_device(np.asarray(d, dtype=_host(out).dtype), device) if np.ndim(d) else d, cache)
        runs.append(_host([out, grads, a]))
    _equal(*runs)


def _equal(a, b, path="result"):
    if isinstance(a, list):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _equal(u, v, f"{path}[{i}]")
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=path)
    else:
        assert a == b or (a is None and b is None), path


R = np.random.default_rng(0)
X = R.standard_normal((2, 4, 9, 8)).astype(np.float32)
LAYERS = {
    "conv_im2col_stride2": (F.conv2d_forward, F.conv2d_backward,
                            [X, R.standard_normal((6, 2, 3, 3)).astype(np.float32),
                             R.standard_normal(6).astype(np.float32), 2, 1, 1, 2]),
    "conv_rowshift": (F.conv2d_forward, F.conv2d_backward,
                      [X, R.standard_normal((5, 4, 3, 3)).astype(np.float32), None, 1, 1]),
    "conv_winograd": (F.conv2d_forward, F.conv2d_backward,          # 128 channels in and out, 2 x 24x24 outputs
                      [R.standard_normal((2, 128, 24, 24)).astype(np.float32),
                       R.standard_normal((128, 128, 3, 3)).astype(np.float32), np.ones(128, np.float32), 1, 1]),
    "conv_transpose": (F.conv_transpose2d_forward, F.conv_transpose2d_backward,
                       [X, R.standard_normal((4, 3, 2, 2)).astype(np.float32), R.standard_normal(3).astype(np.float32),
                        2]),
    "linear": (F.linear_forward, F.linear_backward,
               [X.reshape(2, -1), R.standard_normal((7, 288)).astype(np.float32), np.ones(7, np.float32)]),
    "relu": (F.relu_forward, F.relu_backward, [X]),
    "max_pool": (F.max_pool2d_forward, F.max_pool2d_backward, [X, 3, 2, 1]),
    "upsample_nearest": (F.upsample_nearest_forward, F.upsample_nearest_backward, [X, (13, 16)]),
    "batch_norm_train": (F.batch_norm_forward, F.batch_norm_backward,
                         [X, np.full(4, 1.5, np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32),
                          np.ones(4, np.float32)]),
    "batch_norm_eval": (F.batch_norm_forward, F.batch_norm_backward,
                        [X, np.full(4, 1.5, np.float32), np.zeros(4, np.float32), np.full(4, 0.1, np.float32),
                         np.full(4, 2.0, np.float32), False]),
    "frozen_batch_norm": (F.frozen_batch_norm_forward, F.frozen_batch_norm_backward,
                          [X, np.full(4, 1.5, np.float32), np.ones(4, np.float32), np.full(4, 0.1, np.float32),
                           np.full(4, 2.0, np.float32)]),
    "group_norm": (F.group_norm_forward, F.group_norm_backward,
                   [X, np.full(4, 1.5, np.float32), np.ones(4, np.float32), 2]),
}
LOSSES = {
    "softmax_cross_entropy": (F.softmax_cross_entropy_forward, F.softmax_cross_entropy_backward,
                              [R.standard_normal((6, 4)).astype(np.float32), np.array([0, 3, -1, 1, 2, 0])]),
    "smooth_l1": (F.smooth_l1_forward, F.smooth_l1_backward,
                  [R.standard_normal((5, 4)).astype(np.float32), R.standard_normal((5, 4)).astype(np.float32), 1 / 9,
                   5.0]),
    "l1": (F.l1_forward, F.l1_backward, [R.standard_normal((5, 4)).astype(np.float32),
                                         R.standard_normal((5, 4)).astype(np.float32)]),
    "bce_with_logits": (F.binary_cross_entropy_with_logits_forward, F.binary_cross_entropy_with_logits_backward,
                        [R.standard_normal((3, 7, 7)).astype(np.float32),
                         (R.uniform(size=(3, 7, 7)) > 0.5).astype(np.float32)]),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_every_layer_runs_on_the_device_and_equals_numpy(cp, name):
    forward, backward, args = LAYERS[name]
    _both(forward, backward, args)


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_runs_on_the_device_and_equals_numpy(cp, name):
    forward, backward, args = LOSSES[name]
    _both(forward, backward, args, dout=1.0)


# ---- RoI operators ------------------------------------------------------------------------------------
ROI_OPS = {"align": (roi_align_forward, roi_align_backward, ("avg", "max")),
           "warp": (roi_warp_forward, roi_warp_backward, ("avg", "max")),
           "pool": (roi_pool_forward, roi_pool_backward, ("max",))}
IMPLS = ["numpy", "simple", pytest.param("kernel", marks=pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler"))]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op, mode", [(op, mode) for op, (_, _, modes) in ROI_OPS.items() for mode in modes])
def test_roi_ops_run_on_the_device_and_equal_numpy(cp, op, mode, impl):
    features = R.standard_normal((2, 3, 12, 10)).astype(np.float32)
    rois = np.array([[0, 1.5, 2.0, 30.0, 20.5], [1, -4.0, 3.0, 12.0, 44.0], [1, 10.0, 10.0, 11.0, 12.0],
                     [0, 0.0, 0.0, 39.0, 47.0]], np.float32)
    forward, backward, _ = ROI_OPS[op]
    _both(forward, backward, [features, rois, (3, 4), 0.25, 2], dict(aligned=op == "align", mode=mode, impl=impl))


# ---- the whole model ------------------------------------------------------------------------------------
def _scenes():
    rng = np.random.default_rng(0)
    scenes = [synthetic_scene(rng, n) for n in (2, 3)]
    return [s[0] for s in scenes], [s[1] for s in scenes]


@pytest.mark.parametrize("overrides", [dict(), dict(roi_op="pool", roi_impl="kernel")], ids=["numpy", "kernel"])
def test_model_trains_and_predicts_on_the_device_exactly_as_on_numpy(cp, overrides):
    from minimaskrcnn.model import build_model
    from minimaskrcnn.nn import SGD

    if overrides.get("roi_impl") == "kernel" and not HAS_CXX:
        pytest.skip("no C++ compiler")
    images, targets = _scenes()
    cfg = config.tiny(num_classes=3, min_size=64, max_size=64, **overrides)
    runs = []
    for device in ("cpu", "cuda"):
        model = build_model(cfg).to(device)
        losses = model.forward_train(images, targets)
        model.zero_grad()
        model.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        SGD(model.named_parameters(), lr=0.01).step()
        model.eval()
        preds = model.predict(images)
        if device == "cuda":
            assert all(is_cupy(g) for g in grads.values()) and all(is_cupy(v) for v in model.state_dict().values())
        runs.append((losses, {n: to_numpy(g) for n, g in grads.items()},
                     {k: to_numpy(v) for k, v in model.state_dict().items()}, preds))
    (l0, g0, s0, p0), (l1, g1, s1, p1) = runs
    assert l0 == l1
    for n in g0:
        np.testing.assert_array_equal(g0[n], g1[n], err_msg=n)
    for k in s0:
        np.testing.assert_array_equal(s0[k], s1[k], err_msg=k)
    assert sum(len(p["scores"]) for p in p0) > 0
    for a, b in zip(p0, p1):
        assert set(a) == set(b)
        for k in a:
            assert isinstance(b[k], np.ndarray)       # predictions come back to the host
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---- the trainer and the evaluator --------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from minimaskrcnn.data.shapes import make_shapes_dataset

    root = tmp_path_factory.mktemp("data") / "shapes"
    make_shapes_dataset(root, num_train=4, num_val=2, image_size=64, object_size=(12, 30), progress=False)
    return root


def test_training_with_a_resume_and_evaluation_on_the_device_equal_numpy(cp, shapes, tmp_path):
    from minimaskrcnn.data.coco import CocoDataset
    from minimaskrcnn.engine.inference import evaluate_model
    from minimaskrcnn.engine.run import train_model
    from minimaskrcnn.nn import load_npz

    train, val = CocoDataset(shapes, "train"), CocoDataset(shapes, "val")
    cfg = config.tiny(num_classes=len(train.class_names), min_size=64, max_size=64, images_per_batch=2,
                      warmup_iters=1, lr_steps=(2,), max_iters=2, class_names=tuple(train.class_names))
    results = {}
    for device in ("cpu", "cuda"):
        train_model(cfg, train, tmp_path / device, device, checkpoint_every=1, progress=False)
        model, trainer = train_model(cfg.replace(max_iters=3), train, tmp_path / device, device, resume=True,
                                     progress=False)
        assert trainer.iteration == 3 and len(trainer.log["losses"]) == 3
        metrics, _, preds = evaluate_model(model, val, verbose=False, progress=False)
        results[device] = (trainer.log["losses"], load_npz(tmp_path / device / "last.npz"), metrics, preds)
    (l0, c0, m0, p0), (l1, c1, m1, p1) = results["cpu"], results["cuda"]
    assert l0 == l1 and m0 == m1
    assert set(c0) == set(c1)
    for k in c0:
        if k != "meta.json":         # it holds the seconds each iteration took
            np.testing.assert_array_equal(c0[k], c1[k], err_msg=k)
    assert sum(len(p["scores"]) for p in p0) > 0
    for a, b in zip(p0, p1):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---- syncs ---------------------------------------------------------------------------------------------
def test_the_trainers_gradient_check_reads_back_once_and_names_the_bad_parameter(cp):
    from minimaskrcnn.engine.trainer import Trainer, TrainingDiverged
    from minimaskrcnn.model import build_model

    images, targets = _scenes()
    model = build_model(config.tiny(num_classes=3, min_size=64, max_size=64)).to("cuda")
    trainer = Trainer(model, loader=None, out_dir=".", max_iters=2, progress=False)
    with cp.counting() as stats:
        trainer.step(images, targets)
    in_trainer = {k: n for k, n in stats.where["syncs"].items() if k.startswith("minimaskrcnn/engine/trainer.py")}
    assert sum(in_trainer.values()) == 1, in_trainer     # was one per parameter (98)
    name = "roi_heads.box_head.fc6.weight"
    backward = model.backward

    def poisoned():
        backward()
        dict(model.named_parameters())[name].grad[0, 0] = np.nan
    model.backward = poisoned
    with pytest.raises(TrainingDiverged, match=rf"the gradient of {name} is not finite \(1 parameters"):
        trainer.step(images, targets)


@pytest.mark.parametrize("max_keep", [None, 7])
@pytest.mark.parametrize("thr", [0.3, 0.7])
def test_nms_on_the_device_keeps_what_numpy_keeps_and_reads_back_once(cp, monkeypatch, thr, max_keep):
    from minimaskrcnn.ops import boxes as B

    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 50, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0, 30, (300, 2))], axis=1).astype(np.float32)
    boxes[:5, 2:] = boxes[:5, :2]                       # zero-area boxes: IoU 0/0 = NaN never suppresses
    scores = rng.integers(0, 40, 300).astype(np.float32)  # many ties
    idxs = rng.integers(0, 3, 300)
    host = B.nms(boxes, scores, thr, max_keep), B.batched_nms(boxes, scores, idxs, thr, max_keep)
    small_blocks = B._greedy_nms_on_host.__defaults__[:-1] + (4096,)   # several row blocks
    monkeypatch.setattr(B._greedy_nms_on_host, "__defaults__", small_blocks)
    d = [to_device(a, "cuda") for a in (boxes, scores, idxs)]
    with cp.counting() as stats:
        device = B.nms(d[0], d[1], thr, max_keep), B.batched_nms(d[0], d[1], d[2], thr, max_keep)
    for a, b in zip(host, device):
        assert is_cupy(b)
        np.testing.assert_array_equal(a, to_numpy(b))
    assert len(host[0]) > 20 or max_keep
    total = stats.total()
    assert total["hidden_syncs"] + total["syncs"] + total["to_host"] <= 12, total   # was one per kept box


# ---- the GPU check's own code paths --------------------------------------------------------------------
def _gpu_check():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).parents[1] / "tools" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler")
def test_gpu_checks_timing_runs_on_the_stand_in(cp):
    roi_align_timing = _gpu_check().roi_align_timing

    t = roi_align_timing(cp, lambda: None, repeat=1, rois=5, channels=3, size=(12, 10), torch_too=False)
    assert t["kernel_vs_numpy_max_abs_diff"] < 1e-5
    assert t["kernel"]["forward_s"] > 0 and t["numpy"]["backward_s"] > 0 and "not run" in t["torchvision"]


def test_gpu_check_without_a_gpu_says_what_it_needs(capsys):
    main = _gpu_check().main

    if backend.cupy_available():
        pytest.skip("a GPU is here: run the check itself")
    assert main(["--skip", "tests,demo,timing"]) == 2
    assert "CuPy with a CUDA device is needed" in capsys.readouterr().out
