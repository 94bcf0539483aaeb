"""tools/convert_torchvision.py: the key/shape/dtype checks (NumPy only), and, where torch is installed,
a torchvision ResNet-50-FPN Mask R-CNN with random weights converted and run by both libraries."""
import importlib.util
import pathlib

import numpy as np
import pytest

from minimaskrcnn import config as configs
from minimaskrcnn.model import build_model
from minimaskrcnn.testing import random_state_dict

TOOL = pathlib.Path(__file__).resolve().parents[1] / "tools" / "convert_torchvision.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("convert_torchvision", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- the conversion's checks (no torch needed) ---------------------------------------------------------------
def tiny_model(norm="bn"):
    return build_model(configs.tiny(3, norm=norm))


def test_a_fitting_state_is_cast_and_loads_strictly(tool):
    model = tiny_model()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    state = {k: v.astype(np.float64) if v.dtype.kind == "f" else v.astype(np.int32)
             for k, v in random_state_dict(shapes, seed=1).items()}
    state["backbone.body.bn1.num_batches_tracked"] = np.array(7, np.int32)
    out = tool.convert_state_dict(state, model)
    assert list(out) == list(model.state_dict())                    # the model's order
    assert out["backbone.body.conv1.weight"].dtype == np.float32
    assert out["backbone.body.bn1.num_batches_tracked"].dtype == np.int64 == model.state_dict()[
        "backbone.body.bn1.num_batches_tracked"].dtype
    fresh = tiny_model().load_state_dict(out)
    for k, v in fresh.state_dict().items():
        np.testing.assert_array_equal(v, np.asarray(state[k]).astype(v.dtype), err_msg=k)
    assert int(fresh.state_dict()["backbone.body.bn1.num_batches_tracked"]) == 7


def test_every_problem_is_named(tool):
    model = tiny_model()
    state = dict(model.state_dict())
    del state["rpn.head.cls_logits.bias"]
    state["roi_heads.box_head.fc6.weight"] = state["roi_heads.box_head.fc6.weight"][:, :-1]
    state["roi_heads.mask_predictor.extra.weight"] = np.zeros(3, np.float32)
    state["roi_heads.box_predictor.cls_score.bias"] = np.zeros(3, np.int64)
    with pytest.raises(ValueError) as e:
        tool.convert_state_dict(state, model)
    msg = str(e.value)
    for part in ("1 missing from the checkpoint: rpn.head.cls_logits.bias",
                 "1 not in the model: roi_heads.mask_predictor.extra.weight", "roi_heads.box_head.fc6.weight",
                 "float/integer mismatches: roi_heads.box_predictor.cls_score.bias"):
        assert part in msg


def test_batchnorm_counters_get_a_hint(tool):
    frozen = tiny_model("frozen_bn")
    state = {**frozen.state_dict(), **{k: v for k, v in tiny_model("bn").state_dict().items()
                                        if k.endswith("num_batches_tracked")}}
    with pytest.raises(ValueError, match="--norm bn"):
        tool.convert_state_dict(state, frozen)


# ---- torchvision's model, converted and run by both (needs torch) ------------------------------------------
def test_torchvision_r50_fpn_converts_and_matches(tool, tmp_path):
    torch = pytest.importorskip("torch")
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN as TVMaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    # maskrcnn_resnet50_fpn as with COCO weights (frozen BN, trainable_layers=3), on 200 x 300 images.
    # Random weights from minimaskrcnn.testing.random_state_dict: torchvision's own initialisation gives
    # every class a probability near 1/91, below the 0.05 score threshold, so nothing would be detected.
    theirs = TVMaskRCNN(_resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3),
                        num_classes=91, min_size=200, max_size=300).eval()
    shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in random_state_dict(shapes, seed=0).items()})
    pth, npz = tmp_path / "tv.pth", tmp_path / "ours.npz"
    torch.save({"model": theirs.state_dict(), "epoch": 3}, pth)  # as torchvision's reference training scripts

    config = configs.r50_fpn(91, min_size=200, max_size=300)
    arrays = tool.convert(pth, npz, config)
    assert len(arrays) == len(shapes)
    ours = build_model(config).load_state_dict(str(npz)).eval()

    image = np.random.default_rng(1).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    mine = ours.predict([image], mask_threshold=None)[0]
    with torch.no_grad():
        ref = {k: v.numpy() for k, v in theirs([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0].items()}
    assert 0 < len(mine["scores"]) == len(ref["scores"])
    np.testing.assert_array_equal(mine["labels"], ref["labels"])
    np.testing.assert_allclose(mine["boxes"] / 300, ref["boxes"] / 300, rtol=0, atol=1e-4)
    np.testing.assert_allclose(mine["scores"], ref["scores"], rtol=0, atol=1e-4)
    # The 28 x 28 mask probabilities of the detections (the image is not resized: 200 x 300 is within the
    # configuration's sizes). Against a float64 run of our model, float32 round-off through ResNet-50, the
    # FPN and the mask head (random weights: large activations that cancel into logits of magnitude < 2)
    # moves them by up to 2.0e-4 in ours and 1.7e-4 in torchvision's, in opposite directions at worst
    # (3.7e-4 apart): hence 5e-4.
    ref_probs = torchvision_mask_probs(theirs, image)
    batch, sizes, _, _ = ours.preprocess([image])
    feats = ours.backbone(batch)
    proposals, _ = ours.rpn(feats, sizes, batch.shape[-2:])
    (dets,) = ours.roi_heads.predict(feats, proposals, sizes)
    np.testing.assert_allclose(dets["mask_probs"], ref_probs, rtol=0, atol=5e-4)
    # Pasted into the image, the same: except where a box that agrees to round-off is cut to whole pixels
    # on the other side of an integer (the paste truncates the grown box), which shifts that mask a pixel.
    same = tool.same_paste_boxes(mine["boxes"], ref["boxes"])
    assert same.sum() >= 0.9 * len(same)
    np.testing.assert_allclose(mine["masks"][same], ref["masks"][same, 0], rtol=0, atol=5e-4)

    # the tool's own --check builds torchvision's model from the config and finds the same
    report = tool.check(npz, config, pth, image_shape=(200, 300), seed=1, verbose=False)
    assert report["ours_detections"] == report["torchvision_detections"] == len(ref["scores"])
    assert report["matched"] == len(ref["scores"])
    assert report["max_box_diff_rel"] < 1e-4 and report["max_score_diff"] < 1e-4
    assert report["max_mask_diff"] < 5e-4 and report["masks_pasted_one_pixel_apart"] == (~same).sum()


def torchvision_mask_probs(model, image):
    """torchvision's (D, 28, 28) mask probabilities of its detections, before they are pasted."""
    import torch

    with torch.no_grad():
        images, _ = model.transform([torch.from_numpy(image).permute(2, 0, 1).float() / 255])
        feats = model.backbone(images.tensors)
        proposals, _ = model.rpn(images, feats)
        dets, _ = model.roi_heads(feats, proposals, images.image_sizes)
    return dets[0]["masks"][:, 0].numpy()
