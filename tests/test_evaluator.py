"""The COCO evaluator against pycocotools itself: perfect, perturbed and empty predictions."""
import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.cocoeval import COCOeval

from minimaskrcnn.data.coco import CocoDataset
from minimaskrcnn.data.shapes import make_shapes_dataset
from minimaskrcnn.engine.evaluator import STAT_NAMES, CocoEvaluator, evaluate_predictions

CAT_IDS = {1: 12, 2: 3, 3: 7}          # renumber the shapes' categories: the mapping must be undone
LABEL_TO_CAT_ID = {1: 3, 2: 7, 3: 12}  # contiguous labels follow the sorted category ids


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = make_shapes_dataset(tmp_path_factory.mktemp("ev") / "shapes", num_train=0, num_val=12,
                               image_size=64, object_size=(8, 30), progress=False)
    path = root / "annotations" / "instances_val.json"
    data = json.loads(path.read_text())
    for c in data["categories"]:
        c["id"] = CAT_IDS[c["id"]]
    for a in data["annotations"]:
        a["category_id"] = CAT_IDS[a["category_id"]]
    path.write_text(json.dumps(data))
    return CocoDataset(root, "val")


def _perfect(dataset):
    out = []
    for i in range(len(dataset)):
        t = dataset.get_target(i)
        out.append({"boxes": t["boxes"], "labels": t["labels"], "masks": t["masks"],
                    "scores": np.linspace(1, 0.5, len(t["labels"]))})
    return out


def _perturbed(dataset, seed=0):
    """Shifted boxes, eroded/dilated masks, random scores, a few missing and a few extra detections."""
    rng = np.random.default_rng(seed)
    out = []
    for pred in _perfect(dataset):
        n = len(pred["labels"])
        keep = rng.random(n) > 0.15
        boxes = pred["boxes"][keep] + rng.normal(0, 1.5, (keep.sum(), 4)).astype(np.float32)
        masks = np.roll(pred["masks"][keep], shift=int(rng.integers(-2, 3)), axis=2)
        labels = pred["labels"][keep]
        extra_box = np.array([[5, 5, 25, 30]], np.float32)
        extra_mask = np.zeros((1, 64, 64), np.uint8)
        extra_mask[0, 5:30, 5:25] = 1
        out.append({"boxes": np.concatenate([boxes, extra_box]), "labels": np.concatenate([labels, [2]]),
                    "scores": rng.random(keep.sum() + 1), "masks": np.concatenate([masks, extra_mask])})
    return out


def _direct_cocoeval(coco_gt, results, iou_type, image_ids):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
        coco_eval.params.imgIds = sorted(image_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def _by_hand(dataset, predictions, iou_type):
    """COCO results written out independently of the evaluator (xywh, category ids, RLE)."""
    results = []
    for image_id, p in zip(dataset.image_ids, predictions, strict=True):
        for g in range(len(p["labels"])):
            x1, y1, x2, y2 = (float(v) for v in p["boxes"][g])
            r = {"image_id": image_id, "category_id": LABEL_TO_CAT_ID[int(p["labels"][g])],
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(p["scores"][g])}
            if iou_type == "segm":
                r["segmentation"] = mask_util.encode(np.asfortranarray(p["masks"][g].astype(np.uint8)))
            results.append(r)
    return results


def test_perfect_predictions_score_one(dataset):
    summary, evaluator = evaluate_predictions(dataset, _perfect(dataset), verbose=False)
    for iou_type in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75", "AR100"):
            assert summary[iou_type][name] == 1.0, (iou_type, name)
        assert all(v == 1.0 for v in summary[iou_type]["per_class_AP"].values())
        assert set(summary[iou_type]["per_class_AP"]) == {"circle", "rectangle", "triangle"}
        assert evaluator.precision[iou_type].shape == (10, 101, 3)


def test_perturbed_predictions_match_a_direct_cocoeval(dataset, tmp_path, capsys):
    predictions = _perturbed(dataset)
    summary, evaluator = evaluate_predictions(dataset, predictions, out_dir=tmp_path, verbose=True)
    printed = capsys.readouterr().out
    assert printed.count("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]") == 2
    for iou_type in ("bbox", "segm"):
        ours = np.array([summary[iou_type][name] for name in STAT_NAMES])
        assert 0.2 < summary[iou_type]["AP"] < 0.95                       # really perturbed
        # 1) the same numbers from our saved JSON, loaded and scored by pycocotools directly;
        saved = json.loads((tmp_path / f"{iou_type}_results.json").read_text())
        direct = _direct_cocoeval(dataset.coco, saved, iou_type, dataset.image_ids)
        np.testing.assert_array_equal(ours, direct.stats)
        # 2) and from results converted by hand, so a wrong conversion could not cancel out.
        by_hand = _direct_cocoeval(dataset.coco, _by_hand(dataset, predictions, iou_type), iou_type,
                                   dataset.image_ids)
        np.testing.assert_array_equal(ours, by_hand.stats)
        np.testing.assert_array_equal(evaluator.precision[iou_type],
                                      by_hand.eval["precision"][:, :, :, 0, -1])
    assert summary["bbox"]["AP"] != summary["segm"]["AP"]


def test_per_class_ap_averages_to_ap(dataset):
    summary, evaluator = evaluate_predictions(dataset, _perturbed(dataset, seed=1), verbose=False)
    for iou_type in ("bbox", "segm"):
        per_class = list(summary[iou_type]["per_class_AP"].values())
        assert np.isclose(np.mean(per_class), summary[iou_type]["AP"], rtol=0, atol=1e-12)


def test_no_detections_score_zero(dataset):
    empty = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64), "scores": np.zeros(0),
             "masks": np.zeros((0, 64, 64), np.uint8)}
    summary, _ = evaluate_predictions(dataset, [empty] * len(dataset), verbose=False)
    for iou_type in ("bbox", "segm"):
        assert summary[iou_type]["AP"] == 0.0 and summary[iou_type]["AR100"] == 0.0
    # One image without detections among others: it still counts (its objects are missed).
    predictions = _perfect(dataset)
    predictions[0] = empty
    summary, _ = evaluate_predictions(dataset, predictions, verbose=False)
    results = _by_hand(dataset, predictions, "bbox")
    assert summary["bbox"]["AR100"] < 1.0
    np.testing.assert_array_equal([summary["bbox"][k] for k in STAT_NAMES],
                                  _direct_cocoeval(dataset.coco, results, "bbox", dataset.image_ids).stats)


def test_subset_of_images_and_float_masks(dataset):
    predictions = _perturbed(dataset, seed=2)
    subset = {dataset.image_ids[i]: predictions[i] for i in range(4)}
    summary, _ = evaluate_predictions(dataset, subset, verbose=False, iou_types=("segm",))
    results = [r for r in _by_hand(dataset, predictions, "segm") if r["image_id"] in subset]
    direct = _direct_cocoeval(dataset.coco, results, "segm", list(subset))
    np.testing.assert_array_equal([summary["segm"][k] for k in STAT_NAMES], direct.stats)
    # Soft masks (e.g. pasted probabilities) are binarised at 0.5, as the paper does.
    soft = {k: {**p, "masks": p["masks"] * 0.75 + 0.2} for k, p in subset.items()}
    assert evaluate_predictions(dataset, soft, verbose=False, iou_types=("segm",))[0] == summary


def test_bad_predictions_are_named(dataset):
    evaluator = CocoEvaluator.from_dataset(dataset)
    good = _perfect(dataset)[0]
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluator.update(999, good)
    with pytest.raises(ValueError, match=r"labels \[7\] have no category id"):
        evaluator.update(dataset.image_ids[0], {**good, "labels": np.full_like(good["labels"], 7)})
    with pytest.raises(ValueError, match="masks must be"):
        evaluator.update(dataset.image_ids[0], {**good, "masks": good["masks"][:, :32]})
    with pytest.raises(ValueError, match="no predictions added"):
        evaluator.evaluate()
    evaluator.update(dataset.image_ids[0], good)
    with pytest.raises(ValueError, match="already added"):
        evaluator.update(dataset.image_ids[0], good)


def test_segm_area_ranges_come_from_the_masks(dataset, tmp_path):
    """COCO's rule: a mask detection's area (for APs / APm / APl) is its mask's pixel count. Segm results
    must carry no box, or COCO.loadRes takes the box area instead (torchvision and Detectron2 omit it)."""
    predictions = []
    for p in _perfect(dataset):
        # Besides the perfect detections, a confident false positive: a small mask (36 px, 'small') in a box
        # of the whole image (4096 px, 'medium'). Scored by its box area it would be ignored for APs.
        mask = np.zeros((1, 64, 64), np.uint8)
        mask[0, 58:64, 58:64] = 1
        predictions.append({"boxes": np.concatenate([p["boxes"], [[0, 0, 64, 64]]]).astype(np.float32),
                            "labels": np.concatenate([p["labels"], [1]]),
                            "scores": np.concatenate([p["scores"] * 0.5, [1.0]]),
                            "masks": np.concatenate([p["masks"], mask])})
    summary, _ = evaluate_predictions(dataset, predictions, out_dir=tmp_path, verbose=False, iou_types=("segm",))
    saved = json.loads((tmp_path / "segm_results.json").read_text())
    assert saved and all("bbox" not in r for r in saved)
    without_box = [{k: v for k, v in r.items() if k != "bbox"} for r in _by_hand(dataset, predictions, "segm")]
    direct = _direct_cocoeval(dataset.coco, without_box, "segm", dataset.image_ids)
    np.testing.assert_array_equal([summary["segm"][k] for k in STAT_NAMES], direct.stats)
    assert summary["segm"]["APs"] < 1.0                 # the false positives count against small objects
    with_box = _direct_cocoeval(dataset.coco, _by_hand(dataset, predictions, "segm"), "segm", dataset.image_ids)
    assert with_box.stats[STAT_NAMES.index("APs")] != summary["segm"]["APs"]   # the rule makes a difference


def test_evaluate_model_encodes_masks_as_they_arrive(dataset):
    """evaluate_model scores every image while keeping full-size masks only for the first ``keep_masks``."""
    from minimaskrcnn.engine.inference import evaluate_model

    perfect = _perfect(dataset)
    calls = []

    class Replay:                                       # a "model" that returns the perfect predictions
        def predict(self, images):
            start = sum(calls)
            calls.append(len(images))
            return [dict(p) for p in perfect[start:start + len(images)]]

    metrics, _, preds = evaluate_model(Replay(), dataset, batch_size=5, verbose=False, progress=False, keep_masks=2)
    assert calls == [5, 5, 2] and len(preds) == len(dataset)
    assert metrics["segm"]["AP"] == 1.0 and metrics["bbox"]["AP"] == 1.0
    assert ["masks" in p for p in preds] == [True, True] + [False] * (len(dataset) - 2)
    np.testing.assert_array_equal(preds[1]["masks"], perfect[1]["masks"])
