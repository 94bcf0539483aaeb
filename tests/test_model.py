"""The assembled Mask R-CNN: torchvision parity, names and counts, the whole-model gradient, edge cases."""
import json
import pathlib

import numpy as np
import pytest
from test_c4 import tiny_c4

from minimaskrcnn import config as configs
from minimaskrcnn.config import MaskRCNNConfig
from minimaskrcnn.model import build_model
from minimaskrcnn.nn.gradcheck import check_directional
from minimaskrcnn.testing import (fixed_proposals, fixed_sample_losses, parity_config_kwargs, parity_images,
                                  prepare_for_gradient_check, random_state_dict)
from minimaskrcnn.testing import synthetic_scene as scene

FIX = pathlib.Path(__file__).parent / "fixtures"


# ---- names and counts -------------------------------------------------------------------------------------
def test_r50_fpn_matches_torchvision_keys_shapes_and_parameter_count():
    ref = json.loads((FIX / "r50_fpn_keys.json").read_text())
    model = build_model(configs.r50_fpn(num_classes=91))
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert ours == ref["keys"]
    assert model.num_parameters() == ref["num_parameters"] == 44401393
    assert model.num_parameters(trainable_only=True) == ref["num_trainable"]


# ---- parity with torchvision --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def parity():
    fx = dict(np.load(FIX / "model_parity.npz", allow_pickle=False))
    model = build_model(MaskRCNNConfig(**parity_config_kwargs())).eval()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert sorted(shapes) == list(fx["state_keys"])
    assert [json.dumps(list(shapes[k])) for k in sorted(shapes)] == list(fx["state_shapes"])
    model.load_state_dict(random_state_dict(shapes, seed=0))
    images = parity_images()
    for i, im in enumerate(images):
        np.testing.assert_array_equal(im, fx[f"image{i}"])
    return model, images, fx


def close(ours, ref, what, atol=1e-4, rtol=1e-4):
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol, err_msg=f"{what}: ours vs torchvision")


def close_boxes(ours, ref, what, image_side=128.0):
    """Box coordinates to 1e-4 of the image size: a float32 delta that differs in its last bits moves a
    512 px anchor's corner by ~1e-4 px, so coordinate-relative tolerance is meaningless near 0."""
    close(np.asarray(ours) / image_side, np.asarray(ref) / image_side, what, atol=1e-4, rtol=0)


def test_parity_backbone_and_rpn_head(parity):
    model, images, fx = parity
    batch, sizes, _, _ = model.preprocess(images)
    assert [tuple(s) for s in sizes] == [tuple(s) for s in fx["image_sizes"]]
    feats = model.backbone(batch)
    for i, f in enumerate(feats):
        close(f, fx[f"fpn{i}"], f"FPN level {i}")
    logits, deltas = model.rpn.head(feats)
    for i in range(len(feats)):
        close(logits[i], fx[f"rpn_logits{i}"], f"RPN logits level {i}")
        close(deltas[i], fx[f"rpn_deltas{i}"], f"RPN deltas level {i}")


def test_parity_proposals_box_head_and_masks(parity):
    model, images, fx = parity
    batch, sizes, _, _ = model.preprocess(images)
    feats = model.backbone(batch)
    proposals, _ = model.rpn(feats, sizes, batch.shape[-2:])
    for i, p in enumerate(proposals):
        close_boxes(p, fx[f"proposals{i}"], f"proposals of image {i}")
    # the box head on torchvision's own proposals
    ref_props = [fx["proposals0"], fx["proposals1"]]
    from minimaskrcnn.model.roi_heads import boxes_to_rois, infer_scales
    rh = model.roi_heads
    assert rh.featmap_levels == (0, 1, 2, 3)                     # P2..P5; P6 only serves the RPN
    levels = rh.pooled_levels(feats)
    scales = infer_scales(levels, sizes)
    pooled, _ = rh.pool(levels, boxes_to_rois(ref_props, np), rh.box_pool_size, scales)
    class_logits, box_regression = rh.box_predictor(rh.box_head(pooled))
    close(class_logits, fx["class_logits"], "class logits")
    close(box_regression, fx["box_regression"], "box regression")
    dets = rh.predict(feats, ref_props, sizes)
    for i, d in enumerate(dets):
        close_boxes(d["boxes"], fx[f"det_boxes_resized{i}"], f"detections of image {i} (resized image)")
    probs = np.concatenate([d["mask_probs"] for d in dets])
    ref = 1 / (1 + np.exp(-fx["mask_logits_selected"].astype(np.float64)))
    close(probs, ref, "mask probabilities of the detections")


def test_parity_final_detections(parity):
    model, images, fx = parity
    preds = model.predict(images, mask_threshold=None)
    for i, p in enumerate(preds):
        close_boxes(p["boxes"], fx[f"final_boxes{i}"], f"final boxes {i}")
        np.testing.assert_array_equal(p["labels"], fx[f"final_labels{i}"])
        close(p["scores"], fx[f"final_scores{i}"], f"final scores {i}")
        soft = p["masks"].reshape(len(p["masks"]), -1)
        close(soft[:, fx[f"final_mask_sample_idx{i}"]], fx[f"final_mask_samples{i}"], f"pasted masks {i}")
        close(soft.sum(axis=1), fx[f"final_mask_sums{i}"], f"pasted mask sums {i}", rtol=1e-4, atol=1e-2)
        h, w = images[i].shape[:2]
        ref_bits = np.unpackbits(fx[f"final_mask_bits{i}"], axis=-1)[..., :w].astype(bool)
        ours_bits = p["masks"] >= 0.5
        # pixels within round-off of the 0.5 threshold may fall either way; no others may differ
        disagree = ours_bits != ref_bits
        assert np.all(np.abs(p["masks"][disagree] - 0.5) < 1e-4), f"binary masks of image {i} differ"
        assert ours_bits.shape == (len(p["scores"]), h, w)


# ---- the whole model's gradient --------------------------------------------------------------------------------
def tiny_float64_model(**overrides):
    cfg = configs.tiny(num_classes=3, dtype="float64", stage_widths=(4, 4, 8, 8), stem_channels=4, fpn_channels=4,
                       representation_size=8, mask_layers=(4,), mask_dim_reduced=4, min_size=64, max_size=64,
                       rpn_batch_size_per_image=32, box_batch_size_per_image=16, norm="gn", **overrides)
    return prepare_for_gradient_check(build_model(cfg))


def test_whole_model_gradient_float64():
    """One random direction through every parameter (backbone, FPN, RPN, box and mask heads) against
    central differences of the summed losses, with proposals and samples held fixed."""
    rng = np.random.default_rng(3)
    model = tiny_float64_model().train()
    images, targets = (list(t) for t in zip(*[scene(rng, 2), scene(rng, 3)]))
    proposals = fixed_proposals(model, images, targets)

    def loss():
        return sum(fixed_sample_losses(model, images, targets, proposals).values())

    losses = fixed_sample_losses(model, images, targets, proposals, backward=True)
    assert losses["loss_mask"] > 0 and losses["loss_box_reg"] > 0
    params = {n: p.data for n, p in model.named_parameters()}
    grads = {n: p.grad for n, p in model.named_parameters()}
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, f"no gradient for {missing}"
    for part in ("backbone.body", "backbone.fpn", "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor",
                 "roi_heads.mask_head", "roi_heads.mask_predictor"):
        assert any(n.startswith(part) and np.any(g != 0) for n, g in grads.items()), part
        sub = {n: v for n, v in params.items() if n.startswith(part)}
        err = check_directional(loss, sub, {n: grads[n] for n in sub})
        assert err < 1e-7, f"{part}: directional relative error {err:.2e}"
    assert check_directional(loss, params, grads) < 1e-7


# ---- training and inference on edge cases ---------------------------------------------------------------------
@pytest.mark.parametrize("architecture", ["fpn", "c4"])
@pytest.mark.parametrize("counts", [(0, 0), (1, 0), (6, 5)])
def test_train_step_and_predict_on_empty_single_and_crowded_images(counts, architecture):
    rng = np.random.default_rng(sum(counts))
    cfg = configs.tiny(num_classes=3, min_size=64, max_size=64) if architecture == "fpn" else tiny_c4()
    model = build_model(cfg)
    images, targets = zip(*[scene(rng, n) for n in counts])
    losses = model.forward_train(list(images), list(targets))
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    assert all(np.isfinite(v) for v in losses.values())
    if sum(counts) == 0:
        assert losses["loss_mask"] == 0 and losses["loss_box_reg"] == 0 and losses["loss_rpn_box_reg"] == 0
    else:
        assert losses["loss_mask"] > 0
    model.zero_grad()
    model.backward()
    assert all(p.grad is not None and np.all(np.isfinite(p.grad)) for _, p in model.named_parameters())
    assert all(m._tape == [] for _, m in model.named_modules()), "caches must be freed after backward"
    preds = model.predict(list(images))
    for p, im in zip(preds, images):
        assert p["masks"].shape[1:] == im.shape[:2] and p["masks"].dtype == bool
        assert len(p["boxes"]) == len(p["scores"]) == len(p["labels"]) <= model.config.detections_per_img


@pytest.mark.parametrize("bad,message", [
    (lambda im, t: ([im[:, :, :2]], [t]), r"shape \(H, W, 3\)"),
    (lambda im, t: ([im.astype(np.float32)], [t]), "uint8"),
    (lambda im, t: ([im[:0]], [t]), "empty"),
    (lambda im, t: ([im], [{**t, "boxes": np.array([[5, 5, 5, 9]], np.float32)}]), "degenerate"),
    (lambda im, t: ([im], [{**t, "boxes": np.array([[5, np.nan, 9, 9]], np.float32)}]), "NaN"),
    (lambda im, t: ([im], [{**t, "labels": np.array([3])}]), "must lie in"),
    (lambda im, t: ([im], [{**t, "masks": t["masks"][:, :10]}]), "masks"),
    (lambda im, t: ([im], [{**t, "masks": t["masks"] * np.float32(0.99)}]), r"targets\[0\]\['masks'\].*0\.99"),
    (lambda im, t: ([im], [{**t, "masks": t["masks"].astype(np.int64) * 256}]), r"targets\[0\]\['masks'\].*256"),
    (lambda im, t: ([im], [{**t, "masks": t["masks"].astype(np.float64) * np.nan}]), r"\['masks'\].*nan"),
    (lambda im, t: ([im], [{**t, "masks": t["masks"].astype(str)}]), r"\['masks'\] must be bool"),
])
def test_bad_training_input_is_named(bad, message):
    rng = np.random.default_rng(0)
    im, t = scene(rng, 1)
    model = build_model(configs.tiny(num_classes=3, min_size=64, max_size=64))
    with pytest.raises(ValueError, match=message):
        model.forward_train(*bad(im, t))


def test_config_refuses_unknown_choices_and_incompatible_options():
    with pytest.raises(ValueError, match="roi_op must be one of"):
        configs.tiny(num_classes=3, roi_op="bilinear")
    with pytest.raises(ValueError, match="class_agnostic_masks"):
        configs.tiny(num_classes=3, mask_loss="softmax", class_agnostic_masks=True)
    with pytest.raises(ValueError, match="mask_head"):
        build_model(configs.tiny(3, mask_head="mlpp"))
    with pytest.raises(ValueError, match="unknown config fields: colour"):
        configs.tiny(num_classes=3).replace(colour="red")
    cfg = configs.tiny(num_classes=3)
    assert MaskRCNNConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("impl", ["numpy", "simple", "kernel"])
def test_mask_targets_use_the_configured_roi_impl(impl, monkeypatch):
    """The mask targets are RoIAligned GT masks: they must use the same RoIAlign implementation as the
    features (``roi_impl``); the 'kernel' path once went unused for them."""
    from minimaskrcnn.model import roi_heads
    seen = []
    original = roi_heads.project_masks_on_boxes

    def spy(*args, **kwargs):
        seen.append(kwargs.get("impl", "numpy"))
        return original(*args, **kwargs)

    monkeypatch.setattr(roi_heads, "project_masks_on_boxes", spy)
    rng = np.random.default_rng(0)
    im, t = scene(rng, 2)
    model = build_model(configs.tiny(num_classes=3, min_size=64, max_size=64, roi_impl=impl))
    model.forward_train([im], [t])
    assert seen and set(seen) == {impl}


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.int64, np.float32, np.float64])
def test_binary_masks_of_any_dtype_train_alike(dtype):
    """0/1 masks as bool, integers or floats are the same targets: the same losses."""
    rng = np.random.default_rng(0)
    im, t = scene(rng, 2)
    losses = []
    for masks in (t["masks"], t["masks"].astype(dtype)):
        model = build_model(configs.tiny(num_classes=3, min_size=64, max_size=64))
        losses.append(model.forward_train([im], [{**t, "masks": masks}]))
    assert losses[0] == losses[1]


# ---- a parameter the backward pass does not reach is visible ---------------------------------------------------
@pytest.mark.parametrize("architecture", ["fpn", "c4"])
def test_a_broken_backward_path_leaves_grads_none_and_sgd_refuses(architecture):
    """A mask predictor whose backward forgets its parameters must not look like a zero gradient."""
    from minimaskrcnn.nn.optim import SGD
    rng = np.random.default_rng(1)
    model = build_model(configs.tiny(num_classes=3, min_size=64, max_size=64) if architecture == "fpn"
                        else tiny_c4())
    images, targets = (list(t) for t in zip(*[scene(rng, 2), scene(rng, 1)]))
    predictor = model.roi_heads.mask_predictor
    broken_input = []
    original_forward = predictor.forward

    def forward(x):
        broken_input.append(x.shape)
        return original_forward(x)

    def backward(dout):    # the input's gradient, but nothing for conv5_mask / mask_fcn_logits
        predictor.free_cache()
        return np.zeros(broken_input.pop(), dout.dtype)

    object.__setattr__(predictor, "forward", forward)
    object.__setattr__(predictor, "backward", backward)
    losses = model.forward_train(images, targets)
    assert losses["loss_mask"] > 0
    model.zero_grad()
    model.backward()
    missing = sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    assert missing == sorted(n for n, _ in model.named_parameters() if n.startswith("roi_heads.mask_predictor."))
    with pytest.raises(RuntimeError, match="roi_heads.mask_predictor.conv5_mask.weight.*no gradient"):
        SGD(model.named_parameters(), lr=0.01).step()


@pytest.mark.parametrize("architecture", ["fpn", "c4"])
def test_no_positive_roi_gives_the_mask_branch_an_explicit_zero_gradient(architecture):
    """Images without objects: L_mask = 0, the mask branch gets zeros (torchvision's ``mask_logits.sum() * 0``),
    set by the RoI heads; every other parameter gets its gradient from its own loss."""
    rng = np.random.default_rng(0)
    model = build_model(configs.tiny(num_classes=3, min_size=64, max_size=64) if architecture == "fpn"
                        else tiny_c4())
    images, targets = (list(t) for t in zip(*[scene(rng, 0), scene(rng, 0)]))
    assert model.forward_train(images, targets)["loss_mask"] == 0
    model.zero_grad()
    model.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    mask_branch = [n for n in grads if n.startswith(("roi_heads.mask_head.", "roi_heads.mask_predictor."))]
    assert mask_branch and all(not np.any(grads[n]) for n in mask_branch)
    assert np.any(grads["roi_heads.box_predictor.cls_score.weight"])


def test_model_package_imports_nothing_from_data():
    """Arrows only go down (DESIGN.md): the model owns its input transform; data/ holds data sets and loaders."""
    import ast

    import minimaskrcnn.model as model_package
    offenders = []
    for path in sorted(pathlib.Path(model_package.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
                relative_data = node.level == 2 and (node.module or "").split(".")[0] == "data"
                relative_data |= node.level == 2 and node.module is None and "data" in names
                if relative_data or (node.module or "").startswith("minimaskrcnn.data"):
                    offenders.append(f"{path.name}:{node.lineno}")
            elif isinstance(node, ast.Import) and any(a.name.startswith("minimaskrcnn.data") for a in node.names):
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, f"model/ imports data/: {offenders}"
