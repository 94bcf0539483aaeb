"""The ResNet-C4 variant (paper Fig. 4 left): names and counts, shapes, the shared res5, the whole-model
gradient, and training/inference on edge cases."""
import numpy as np
import pytest

from minimaskrcnn import config as configs
from minimaskrcnn.model import build_model
from minimaskrcnn.model.mask_rcnn_c4 import ResNetC4Backbone, build_maskrcnn_c4
from minimaskrcnn.nn.gradcheck import check_directional, rel_error
from minimaskrcnn.testing import fixed_proposals, fixed_sample_losses, prepare_for_gradient_check
from minimaskrcnn.testing import synthetic_scene as scene


def tiny_c4(dtype="float32", norm="bn", **overrides):
    """A narrow ResNet-18-C4 for 64 px images: C4 has 8 channels, res5 16; 15 anchors of 16..256 px;
    RoIAlign 14x14 -> res5 7x7 -> 14x14 masks as in R-50-C4."""
    kw = dict(depth=18, norm=norm, stage_widths=(4, 4, 8, 16), stem_channels=4, frozen_stages=0, dtype=dtype,
              anchor_sizes=((16, 32, 64, 128, 256),), min_size=64, max_size=64, mask_dim_reduced=8,
              rpn_pre_nms_top_n=(300, 150), rpn_post_nms_top_n=(100, 50), rpn_batch_size_per_image=32,
              box_batch_size_per_image=16, detections_per_img=20)
    kw.update(overrides)
    return configs.r50_c4(num_classes=3, **kw)


# ---- names and counts -------------------------------------------------------------------------------------
def bottleneck_stage_weights(in_ch, planes, blocks):
    """Conv weights of a ResNet-50 stage: 1x1 in->p, 3x3 p->p, 1x1 p->4p, plus the first block's 1x1 in->4p
    projection; the other blocks read 4p channels. (Frozen BN has no parameters, the convs no bias.)"""
    first = in_ch * planes + 9 * planes * planes + planes * 4 * planes + in_ch * 4 * planes
    rest = 4 * planes * planes + 9 * planes * planes + planes * 4 * planes
    return first + (blocks - 1) * rest


def test_r50_c4_parameter_layout_and_count():
    model = build_model(configs.r50_c4(81))
    assert isinstance(model.backbone, ResNetC4Backbone) and model.roi_heads.featmap_levels == (0,)
    stem = 3 * 64 * 7 * 7
    res2, res3 = bottleneck_stage_weights(64, 64, 3), bottleneck_stage_weights(256, 128, 4)
    res4, res5 = bottleneck_stage_weights(512, 256, 6), bottleneck_stage_weights(1024, 512, 3)
    assert stem + res2 + res3 + res4 + res5 == 23454912        # ResNet-50's convs (see test_backbone.py)
    A = 5 * 3                                                    # anchor sizes x aspect ratios on C4
    rpn = (1024 * 1024 * 9 + 1024) + (1024 * A + A) + (1024 * 4 * A + 4 * A)
    box_predictor = (2048 * 81 + 81) + (2048 * 81 * 4 + 81 * 4)
    mask_predictor = (2048 * 256 * 2 * 2 + 256) + (256 * 81 + 81)  # deconv 2x2/2, then 1x1 to 81 masks
    expected = stem + res2 + res3 + res4 + res5 + rpn + box_predictor + mask_predictor
    assert expected == 35918065
    assert model.num_parameters() == expected
    assert model.num_parameters(trainable_only=True) == expected - stem - res2   # stem + res2 frozen

    params = {n: p.shape for n, p in model.named_parameters()}
    assert sum(n.startswith("backbone.body.") for n in params) == len([n for n in params if "layer4" not in n
                                                                       and n.startswith("backbone")])
    assert not any("layer4" in n for n in params if n.startswith("backbone"))
    assert sum(np.prod(s) for n, s in params.items() if n.startswith("roi_heads.box_head.layer4.")) == res5
    assert params["roi_heads.box_head.layer4.0.downsample.0.weight"] == (2048, 1024, 1, 1)
    assert params["rpn.head.cls_logits.weight"] == (15, 1024, 1, 1)
    assert params["roi_heads.box_predictor.cls_score.weight"] == (81, 2048)
    assert params["roi_heads.mask_predictor.conv5_mask.weight"] == (2048, 256, 2, 2)
    assert not any(n.startswith("roi_heads.mask_head") for n in params)    # the mask branch shares res5
    assert model.config.box_batch_size_per_image == 64 and model.config.rpn_post_nms_top_n[1] == 300


def test_shapes_end_to_end(rng):
    model = build_model(tiny_c4()).eval()
    batch, sizes, _, _ = model.preprocess([scene(rng, 1)[0], scene(rng, 2, size=48)[0]])
    assert batch.shape == (2, 3, 64, 64)
    (c4,) = model.backbone(batch)
    assert c4.shape == (2, 8, 4, 4)                             # stride 16, res4's channels
    logits, deltas = model.rpn.head([c4])
    assert logits[0].shape == (2, 15, 4, 4) and deltas[0].shape == (2, 60, 4, 4)
    proposals, _ = model.rpn([c4], sizes, batch.shape[-2:])
    assert all(len(p) <= 50 for p in proposals)
    rh = model.roi_heads
    from minimaskrcnn.model.roi_heads import boxes_to_rois, infer_scales
    assert infer_scales([c4], sizes) == [1 / 16]
    pooled, _ = rh.pool([c4], boxes_to_rois(proposals, np), 14, [1 / 16])
    res5 = rh.box_head(pooled)
    assert pooled.shape == (len(pooled), 8, 14, 14) and res5.shape == (len(pooled), 16, 7, 7)
    class_logits, box_regression = rh.box_predictor(res5)
    assert class_logits.shape == (len(pooled), 3) and box_regression.shape == (len(pooled), 12)
    assert rh.mask_predictor(res5).shape == (len(pooled), 3, 14, 14)
    dets = rh.predict([c4], proposals, sizes)
    assert all(d["mask_probs"].shape == (len(d["boxes"]), 14, 14) for d in dets)


@pytest.mark.parametrize("bad,message", [
    (dict(architecture="fpn"), "architecture must be 'c4'"),
    (dict(mask_pool_size=7), "mask_pool_size"),
    (dict(mask_head="mlp"), "mask_head"),
    (dict(anchor_sizes=((32,), (64,))), "anchor_sizes"),
])
def test_bad_c4_config_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        build_maskrcnn_c4(tiny_c4(**bad))


# ---- the shared res5 and the whole model's gradient ---------------------------------------------------------
def tiny_float64_c4():
    """Float64, GroupNorm (per-RoI statistics), and few ReLU units in the RoI head: 8 RoIs per image,
    res5 of 8 channels on 3x3 cells (6x6 RoIs, stride 2). Central differences with h = 1e-6 are wrong
    wherever a ReLU input lies within ~1e-5 of zero and flips sign; with ~10^5 units in res5 (14x14 RoIs,
    16 RoIs per image) that happens for some seeds, so the check keeps the unit count small."""
    return prepare_for_gradient_check(build_model(tiny_c4("float64", norm="gn", stage_widths=(4, 4, 8, 8),
                                                          box_batch_size_per_image=8, box_pool_size=6,
                                                          mask_pool_size=6)))


@pytest.fixture(scope="module")
def c4_problem():
    """A float64 C4 model, two images with 2 and 3 objects, and the RPN's proposals held fixed."""
    rng = np.random.default_rng(3)
    model = tiny_float64_c4().train()
    images, targets = (list(t) for t in zip(*[scene(rng, 2), scene(rng, 3)]))
    return model, images, targets, fixed_proposals(model, images, targets)


def losses_and_grads(model, images, targets, proposals):
    losses = fixed_sample_losses(model, images, targets, proposals, backward=True)
    return losses, {n: p.grad.copy() for n, p in model.named_parameters()}


def test_shared_res5_equals_running_res5_again_on_the_positives(c4_problem):
    """Sharing res5 (run once on all sampled RoIs, the mask branch reads the positives' rows) must give
    the losses and gradients of pooling the positives again and running res5 a second time (GroupNorm
    normalises each RoI alone, so the two agree). The second way applies res5 twice: its backward must
    take the two uses back in reverse order (the module tape)."""
    model, images, targets, proposals = c4_problem
    shared_losses, shared_grads = losses_and_grads(model, images, targets, proposals)
    rh = model.roi_heads
    object.__setattr__(rh, "mask_head", rh.box_head)   # unregistered: the parameters stay the same objects
    try:
        assert not rh.shares_box_head
        losses, grads = losses_and_grads(model, images, targets, proposals)
    finally:
        object.__setattr__(rh, "mask_head", None)
    assert shared_losses["loss_mask"] > 0
    for k in shared_losses:
        assert abs(shared_losses[k] - losses[k]) < 1e-12, k
    for n in grads:
        assert rel_error(shared_grads[n], grads[n]) < 1e-10, n


def test_whole_model_gradient_float64(c4_problem):
    """One random direction through every parameter (backbone, RPN, res5, box and mask predictors) against
    central differences of the summed losses, with proposals and samples held fixed."""
    model, images, targets, proposals = c4_problem

    def loss():
        return sum(fixed_sample_losses(model, images, targets, proposals).values())

    losses, grads = losses_and_grads(model, images, targets, proposals)
    assert losses["loss_mask"] > 0 and losses["loss_box_reg"] > 0
    params = {n: p.data for n, p in model.named_parameters()}
    parts = ("backbone.body", "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor", "roi_heads.mask_predictor")
    for part in parts:
        sub = {n: v for n, v in params.items() if n.startswith(part)}
        assert sub and any(np.any(grads[n] != 0) for n in sub), part
        err = check_directional(loss, sub, {n: grads[n] for n in sub})
        assert err < 1e-7, f"{part}: directional relative error {err:.2e}"
    assert all(n.startswith(parts) for n in params), "a parameter outside the parts checked one by one"
    assert check_directional(loss, params, grads) < 1e-7
