"""COCOeval with iouType='keypoints' (OKS) on the synthetic pose set: perfect predictions, OKS by hand,
sigmas (COCO's for COCO's person keypoints, the user's otherwise, a clear error when none)."""
import json

import numpy as np
import pytest

from minimaskrcnn.data.coco import CocoDataset
from minimaskrcnn.data.keypoints import COCO_PERSON_SIGMAS
from minimaskrcnn.data.poses import make_poses_dataset
from minimaskrcnn.engine.evaluator import CocoEvaluator, evaluate_predictions


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    root = make_poses_dataset(tmp_path_factory.mktemp("poses") / "set", num_train=1, num_val=6, image_size=96,
                              person_size=(35, 80), progress=False)
    return CocoDataset(root, "val")


def gt_predictions(ds, shift=0.0):
    preds = []
    for i in range(len(ds)):
        t = ds.get_target(i)
        kp = t["keypoints"].copy()
        kp[..., :2] += shift
        preds.append({"boxes": t["boxes"], "labels": t["labels"], "scores": np.linspace(1, 0.5, len(t["labels"])),
                      "keypoints": kp})
    return preds


def test_perfect_keypoints_score_ap_1_and_shifted_ones_less(val):
    m, _ = evaluate_predictions(val, gt_predictions(val), iou_types=("bbox", "keypoints"), verbose=False)
    assert m["keypoints"]["AP"] == pytest.approx(1.0) and set(m["keypoints"]) >= {"AP50", "AP75", "APm", "ARl"}
    shifted, _ = evaluate_predictions(val, gt_predictions(val, 3.0), iou_types=("keypoints",), verbose=False)
    assert 0 <= shifted["keypoints"]["AP"] < 0.9


def test_oks_by_hand_equals_cocoeval(val):
    preds = gt_predictions(val, 1.5)
    ev = CocoEvaluator.from_dataset(val, ("keypoints",))
    for i, p in enumerate(preds):
        ev.update(val.image_ids[i], p)
    ev.evaluate(verbose=False)
    coco_eval = ev.coco_eval["keypoints"]
    image_id = val.image_ids[0]
    oks = coco_eval.ious[(image_id, 1)]                                  # (D, G)
    gts = val.coco.loadAnns(val.coco.getAnnIds(imgIds=image_id))
    k2 = (2 * np.asarray(COCO_PERSON_SIGMAS)) ** 2
    g = np.array(gts[0]["keypoints"], np.float64).reshape(17, 3)
    labelled = g[:, 2] > 0
    d2 = 2 * 1.5 ** 2                                                   # every keypoint moved by (1.5, 1.5)
    # COCOeval: e = d^2 / vars / (area + eps) / 2 with vars = (2 sigma)^2, then mean of exp(-e) over labelled ones
    by_hand = np.mean(np.exp(-d2 / k2 / (gts[0]["area"] + np.spacing(1)) / 2)[labelled])
    dt_order = np.argsort([-s for s in preds[0]["scores"]], kind="mergesort")
    assert oks[list(dt_order).index(0), 0] == pytest.approx(by_hand, rel=1e-9)


def test_sigmas_for_other_keypoint_sets(val, tmp_path):
    data = json.loads(val.ann_file.read_text())
    data["categories"][0]["keypoints"] = [f"k{i}" for i in range(17)]
    from pycocotools.coco import COCO
    gt = COCO()
    gt.dataset = data
    gt.createIndex()
    with pytest.raises(ValueError, match="give one sigma per keypoint"):
        CocoEvaluator(gt, val.label_to_cat_id, ("keypoints",))
    ev = CocoEvaluator(gt, val.label_to_cat_id, ("keypoints",), keypoint_sigmas=[0.05] * 17)
    assert ev.keypoint_sigmas.tolist() == [0.05] * 17
