"""The keypoint branch (paper §5): bilinear 2x upsampling, the heatmap targets and loss, decoding, the head and
its place in the model, each against torchvision (fixtures by tools/make_keypoint_fixtures.py) and float64
central differences."""
import pathlib

import numpy as np
import pytest

from minimaskrcnn.nn.gradcheck import check_gradient
from minimaskrcnn.nn.resample import upsample_bilinear_backward, upsample_bilinear_forward

FIX = pathlib.Path(__file__).parent / "fixtures"
TOL = 1e-7


# ---- bilinear 2x upsampling ------------------------------------------------------------------------------------
def test_upsample_bilinear_matches_torch_forward_and_backward():
    fx = np.load(FIX / "keypoint_upsample.npz")
    for i in range(3):
        out, cache = upsample_bilinear_forward(fx[f"x{i}"])
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, fx[f"y{i}"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(upsample_bilinear_backward(fx[f"g{i}"], cache), fx[f"dx{i}"], rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize("shape, kw", [((2, 3, 5, 4), {}), ((1, 2, 3, 6), {"scale_factor": 3}),
                                       ((1, 1, 4, 5), {"size": (7, 9)})])
def test_upsample_bilinear_gradient(shape, kw):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    out, cache = upsample_bilinear_forward(x, **kw)
    dout = rng.standard_normal(out.shape)
    err = check_gradient(lambda _: upsample_bilinear_forward(x, **kw)[0], x, upsample_bilinear_backward(dout, cache),
                         dout)
    assert err < TOL, err


def test_upsample_bilinear_keeps_constants_and_interpolates_between_centres():
    x = np.full((1, 1, 3, 3), 2.5)
    np.testing.assert_allclose(upsample_bilinear_forward(x)[0], 2.5)
    ramp = np.arange(4.0)[None, None, None, :].repeat(2, axis=2)
    out = upsample_bilinear_forward(ramp)[0][0, 0, 0]
    np.testing.assert_allclose(out, [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])   # edges clamp


# ---- targets and the loss ---------------------------------------------------------------------------------------
from minimaskrcnn.model.keypoint_head import heatmaps_to_keypoints, keypoints_to_heatmap  # noqa: E402
from minimaskrcnn.model.losses import keypointrcnn_loss_backward, keypointrcnn_loss_forward  # noqa: E402


def test_keypoints_to_heatmap_follows_torchvisions_rule():
    rois = np.array([[10.0, 20.0, 38.0, 76.0]])                          # 28 x 56 px, m = 56: 2 x 1 cells per px
    kp = np.array([[[10.0, 20.0, 2], [23.9, 47.5, 1], [38.0, 76.0, 2], [9.9, 30.0, 2], [20.0, 30.0, 0],
                    [38.5, 30.0, 2]]])
    heatmaps, valid = keypoints_to_heatmap(kp, rois, 56)
    assert valid.tolist() == [[True, True, True, False, False, False]]   # v=1 counts; v=0 and outside do not
    x = [0, int(np.floor(13.9 * 2)), 55]
    y = [0, 27, 55]                                                       # right/bottom edge: the last cell
    assert heatmaps[0, :3].tolist() == [yy * 56 + xx for xx, yy in zip(x, y)]
    assert heatmaps[0, 3:].tolist() == [0, 0, 0]


def test_keypoint_loss_is_softmax_cross_entropy_over_cells_and_its_gradient():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 2, 5, 5))
    heatmaps = rng.integers(0, 25, (3, 2))
    valid = np.array([[True, False], [True, True], [False, False]])
    loss, cache = keypointrcnn_loss_forward(logits, heatmaps, valid)
    flat = logits.reshape(6, 25)
    logp = flat - np.log(np.exp(flat).sum(1, keepdims=True))
    expected = -np.mean([logp[r, heatmaps.reshape(-1)[r]] for r in np.nonzero(valid.reshape(-1))[0]])
    assert abs(loss - expected) < 1e-12
    d = keypointrcnn_loss_backward(1.0, cache)
    assert not np.any(d[0, 1]) and not np.any(d[2])                     # ignored maps get nothing
    err = check_gradient(lambda _: keypointrcnn_loss_forward(logits, heatmaps, valid)[0], logits, d)
    assert err < TOL, err
    loss, cache = keypointrcnn_loss_forward(logits, heatmaps, np.zeros_like(valid))
    assert loss == 0.0 and not np.any(keypointrcnn_loss_backward(1.0, cache))


def test_head_and_predictor_gradients_float64():
    from minimaskrcnn.model.keypoint_head import KeypointRCNNHeads, KeypointRCNNPredictor
    rng = np.random.default_rng(1)
    head = KeypointRCNNHeads(3, (4, 4), dtype="float64")
    pred = KeypointRCNNPredictor(4, 2, dtype="float64")
    for p in [*head.parameters(), *pred.parameters()]:
        p.data = p.data + rng.uniform(0.01, 0.05, p.shape)              # keep ReLUs off their kink
    x = rng.standard_normal((2, 3, 6, 6))
    out = pred(head(x))
    assert out.shape == (2, 2, 24, 24)
    dout = rng.standard_normal(out.shape)
    head.zero_grad()
    pred.zero_grad()
    dx = head.backward(pred.backward(dout))
    assert check_gradient(lambda _: pred(head(x)), x, dx, dout) < TOL
    w = pred.kps_score_lowres.weight
    assert check_gradient(lambda _: pred(head(x)), w.data, w.grad, dout) < TOL
    w = head[0].weight
    assert check_gradient(lambda _: pred(head(x)), w.data, w.grad, dout) < TOL


# ---- names, parity with torchvision ------------------------------------------------------------------------------
import json  # noqa: E402

from minimaskrcnn import config as configs  # noqa: E402
from minimaskrcnn.config import MaskRCNNConfig  # noqa: E402
from minimaskrcnn.model import build_model  # noqa: E402
from minimaskrcnn.testing import keypoint_parity_config_kwargs, parity_images, random_state_dict  # noqa: E402


def test_r50_fpn_keypoints_has_torchvisions_names_and_shapes():
    ref = json.loads((FIX / "keypointrcnn_r50_fpn_keys.json").read_text())
    # torchvision builds BatchNorm2d without weights (num_batches_tracked); with COCO weights, FrozenBatchNorm2d
    theirs = [[k, s] for k, s in ref["keys"] if not k.endswith("num_batches_tracked")]
    ours = [[k, list(v.shape)] for k, v in build_model(configs.r50_fpn_keypoints()).state_dict().items()]
    assert ours == theirs
    kp = [k for k, _ in ours if k.startswith("roi_heads.keypoint")]
    assert len(kp) == 18 and "roi_heads.keypoint_head.14.weight" in kp


@pytest.fixture(scope="module")
def kp_parity():
    fx = dict(np.load(FIX / "keypoint_parity.npz", allow_pickle=False))
    model = build_model(MaskRCNNConfig(**keypoint_parity_config_kwargs())).eval()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert sorted(shapes) == list(fx["state_keys"])
    assert [json.dumps(list(shapes[k])) for k in sorted(shapes)] == list(fx["state_shapes"])
    model.load_state_dict(random_state_dict(shapes, seed=0))
    return model, parity_images(), fx


def test_parity_keypoint_logits_and_decoding(kp_parity):
    from minimaskrcnn.model.roi_heads import boxes_to_rois, infer_scales
    model, images, fx = kp_parity
    batch, sizes, _, _ = model.preprocess(images)
    feats = model.backbone(batch)
    rh = model.roi_heads
    levels = rh.pooled_levels(feats)
    scales = infer_scales(levels, sizes)
    boxes = [fx["det_boxes0"], fx["det_boxes1"]]
    pooled, _ = rh.pool(levels, boxes_to_rois(boxes, np), 14, scales)
    logits = rh.keypoint_predictor(rh.keypoint_head(pooled))
    assert logits.shape[1:] == (3, 56, 56)
    n0 = len(boxes[0])
    for i, part in enumerate((logits[:n0], logits[n0:])):
        ref = fx[f"logits{i}"]
        np.testing.assert_allclose(part[:len(ref)], ref, rtol=1e-4, atol=1e-4)
        kps, scores = heatmaps_to_keypoints(part, boxes[i])              # on our logits, as the model does
        np.testing.assert_allclose(kps, fx[f"det_keypoints{i}"], rtol=0, atol=1e-3)
        np.testing.assert_allclose(scores, fx[f"det_keypoints_scores{i}"], rtol=1e-4, atol=1e-4)


def test_parity_final_keypoints(kp_parity):
    model, images, fx = kp_parity
    for i, p in enumerate(model.predict(images)):
        np.testing.assert_allclose(p["boxes"] / 128, fx[f"final_boxes{i}"] / 128, rtol=0, atol=1e-4)
        np.testing.assert_allclose(p["scores"], fx[f"final_scores{i}"], rtol=1e-4, atol=1e-4)
        # the keypoints sit on the boxes' corners, so they get the boxes' tolerance (1e-4 of the image side: the
        # final boxes differ by float32 round-off); a different argmax cell would move one by >= 0.5 px
        np.testing.assert_allclose(p["keypoints"] / 128, fx[f"final_keypoints{i}"] / 128, rtol=0, atol=1e-4)
        np.testing.assert_allclose(p["keypoints_scores"], fx[f"final_keypoints_scores{i}"], rtol=1e-4, atol=1e-4)


# ---- the whole keypoint model's gradient, part by part ------------------------------------------------------------
from minimaskrcnn.nn.gradcheck import check_directional  # noqa: E402
from minimaskrcnn.testing import (fixed_proposals, fixed_sample_losses, prepare_for_gradient_check,  # noqa: E402
                                  synthetic_scene)


def scene_with_keypoints(rng, n, k=3):
    image, target = synthetic_scene(rng, n)
    kp = np.zeros((n, k, 3), np.float32)
    for g, (x1, y1, x2, y2) in enumerate(target["boxes"]):
        kp[g, :, 0] = rng.uniform(x1, x2, k)
        kp[g, :, 1] = rng.uniform(y1, y2, k)
        kp[g, :, 2] = [2, 1, 0][:k] if k == 3 else 2
    target["keypoints"] = kp
    return image, target


def tiny_keypoint_float64_model(**overrides):
    cfg = configs.tiny(num_classes=3, dtype="float64", stage_widths=(4, 4, 8, 8), stem_channels=4, fpn_channels=4,
                       representation_size=8, mask_layers=(4,), mask_dim_reduced=4, min_size=64, max_size=64,
                       rpn_batch_size_per_image=32, box_batch_size_per_image=16, norm="gn", keypoint_on=True,
                       keypoint_layers=(4, 4), num_keypoints=3, **overrides)
    return prepare_for_gradient_check(build_model(cfg))


def test_whole_keypoint_model_gradient_float64():
    """Keypoint & mask model (Table 5): one random direction per part, and through all, against central
    differences of the summed losses, with proposals and samples held fixed."""
    rng = np.random.default_rng(3)
    model = tiny_keypoint_float64_model().train()
    images, targets = (list(t) for t in zip(*[scene_with_keypoints(rng, 2), scene_with_keypoints(rng, 3)]))
    proposals = fixed_proposals(model, images, targets)

    def loss():
        return sum(fixed_sample_losses(model, images, targets, proposals).values())

    losses = fixed_sample_losses(model, images, targets, proposals, backward=True)
    assert losses["loss_keypoint"] > 0 and losses["loss_mask"] > 0
    params = {n: p.data for n, p in model.named_parameters()}
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert not [n for n, g in grads.items() if g is None]
    errors = {}
    for part in ("backbone.body", "backbone.fpn", "rpn.head", "roi_heads.box_head", "roi_heads.mask_head",
                 "roi_heads.keypoint_head", "roi_heads.keypoint_predictor"):
        assert any(n.startswith(part) and np.any(g != 0) for n, g in grads.items()), part
        sub = {n: v for n, v in params.items() if n.startswith(part)}
        errors[part] = check_directional(loss, sub, {n: grads[n] for n in sub})
    errors["all"] = check_directional(loss, params, grads)
    assert max(errors.values()) < 1e-7, errors


def test_keypoint_only_model_trains_and_an_empty_batch_gives_explicit_zero_gradients():
    rng = np.random.default_rng(0)
    model = build_model(configs.tiny_keypoints(3, min_size=64, max_size=64, mask_on=False, num_keypoints=3,
                                               keypoint_layers=(8,)))
    assert model.roi_heads.mask_predictor is None
    images, targets = (list(t) for t in zip(*[scene_with_keypoints(rng, 2), scene_with_keypoints(rng, 1)]))
    losses = model.forward_train(images, targets)
    assert "loss_mask" not in losses and losses["loss_keypoint"] > 0
    model.zero_grad()
    model.backward()
    empty = [scene_with_keypoints(rng, 0) for _ in range(2)]
    assert model.forward_train([e[0] for e in empty], [e[1] for e in empty])["loss_keypoint"] == 0
    model.zero_grad()
    model.backward()
    kp = [p.grad for n, p in model.named_parameters() if n.startswith("roi_heads.keypoint")]
    assert kp and all(g is not None and not np.any(g) for g in kp)
    pred = model.predict(images[:1])[0]
    assert pred["keypoints"].shape == (len(pred["boxes"]), 3, 3)
    assert pred["keypoints_scores"].shape == (len(pred["boxes"]), 3)


def test_targets_with_another_number_of_keypoints_are_refused_by_name():
    rng = np.random.default_rng(0)
    model = build_model(configs.tiny_keypoints(3, min_size=64, max_size=64, num_keypoints=3, keypoint_layers=(8,)))
    image, target = scene_with_keypoints(rng, 2, k=17)
    with pytest.raises(ValueError, match="predicts 3 keypoints; the targets have \\[17\\]"):
        model.forward_train([image], [target])
    assert configs.r50_fpn_keypoints().keypoint_names[9] == "left_wrist"   # COCO's names by default


def test_keypoint_loss_shares_of_a_split_batch_add_up_to_the_whole_batch_loss():
    """Data-parallel training: each rank divides by the labelled keypoints of the whole batch, so the ranks'
    losses add up to the one-process loss and their gradients are its rows (one half has none labelled)."""
    rng = np.random.default_rng(2)
    logits, cells = rng.standard_normal((5, 3, 6, 6)), rng.integers(0, 36, (5, 3))
    valid = rng.random((5, 3)) < 0.6
    valid[3:] = False
    whole, c = keypointrcnn_loss_forward(logits, cells, valid)
    n = int(valid.sum())
    a, b = (keypointrcnn_loss_forward(logits[s], cells[s], valid[s], normalizer=n) for s in (slice(0, 3), slice(3, 5)))
    assert b[0] == 0.0 and a[0] + b[0] == pytest.approx(whole, rel=1e-12)
    halves = [keypointrcnn_loss_backward(1.0, a[1]), keypointrcnn_loss_backward(1.0, b[1])]
    np.testing.assert_allclose(np.concatenate(halves), keypointrcnn_loss_backward(1.0, c), rtol=1e-12)
