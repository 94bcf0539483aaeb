"""COCO AP from scratch (minimaskrcnn.engine.coco_ap): matching, envelope and 101-point interpolation by
hand, and the whole AP equal to pycocotools' COCOeval on random result sets."""
import contextlib
import copy
import io

import numpy as np
import pytest

from minimaskrcnn.engine.coco_ap import (
    RECALL_THRESHOLDS,
    evaluate_bbox,
    interpolated_precision,
    match_detections,
    precision_envelope,
)


def cocoeval_stats(gt, results):
    """COCOeval's (AP, AP50, AP75) and its precision array at area 'all', 100 detections."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        dt = coco.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[:3], ev.eval["precision"][:, :, :, 0, 2]


def random_set(seed, n_images=6, n_cats=3, crowd=False, empty_image=False, ties=False, many=False):
    """Ground truth and detections: jittered copies of the boxes (some good, some poor), duplicates and
    false positives, with random scores."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": 100, "height": 100} for i in range(n_images)]
    cats = [{"id": c + 1, "name": f"c{c}"} for c in range(n_cats)]
    anns, results = [], []
    for im in images:
        n = 0 if empty_image and im["id"] == n_images else rng.integers(1, 5)
        for _ in range(n):
            x, y = rng.uniform(0, 70, 2)
            w, h = rng.uniform(5, 30, 2)
            cat = int(rng.integers(1, n_cats + 1))
            is_crowd = int(crowd and rng.random() < 0.25)
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": is_crowd})
            for _ in range(rng.integers(0, 4 if is_crowd else 3)):
                j = rng.normal(0, rng.choice([1.0, 4.0]), 4)
                results.append({"image_id": im["id"], "category_id": cat,
                                "bbox": [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])],
                                "score": float(rng.choice([0.5, 0.7])) if ties else float(rng.random())})
        for _ in range(rng.integers(110, 150) if many else rng.integers(0, 3)):   # many: > 100 in category 1
            x, y = rng.uniform(0, 80, 2)
            results.append({"image_id": im["id"], "category_id": 1 if many else int(rng.integers(1, n_cats + 1)),
                            "bbox": [x, y, float(rng.uniform(3, 20)), float(rng.uniform(3, 20))],
                            "score": float(rng.random())})
    return {"images": images, "categories": cats, "annotations": anns}, results


@pytest.mark.assignment(id="A10", points=2)
def test_matching_by_hand():
    # 3 detections (by score) x 2 boxes. d0 takes g0 (0.9). d1's best is g0, taken: it takes g1 (0.5 =
    # the threshold counts). d2 only overlaps g0, taken: unmatched.
    ious = np.array([[0.9, 0.1], [0.8, 0.5], [0.7, 0.0]])
    no = np.zeros(2, bool)
    m, ig = match_detections(ious, no, no, 0.5)
    np.testing.assert_array_equal(m, [0, 1, -1])
    np.testing.assert_array_equal(ig, [False, False, False])
    m, _ = match_detections(ious, no, no, 0.85)
    np.testing.assert_array_equal(m, [0, -1, -1])


@pytest.mark.assignment(id="A10", points=1)
def test_crowd_regions_absorb_detections():
    # box 0 is a real object, box 1 a crowd region (sorted last): d0 matches the object, d1 and d2 both
    # fall in the crowd and are ignored; d3 prefers the real box but it is taken, so the crowd takes it.
    ious = np.array([[0.8, 0.6], [0.2, 0.9], [0.1, 0.7], [0.7, 0.55]])
    crowd = np.array([False, True])
    m, ig = match_detections(ious, crowd, crowd, 0.5)
    np.testing.assert_array_equal(m, [0, 1, 1, 1])
    np.testing.assert_array_equal(ig, [False, True, True, True])


@pytest.mark.assignment(id="A10", points=1)
def test_envelope_and_101_points_by_hand():
    env = precision_envelope([1.0, 0.5, 0.667, 0.5, 0.6])
    np.testing.assert_allclose(env, [1.0, 0.667, 0.667, 0.6, 0.6])
    recall = np.array([0.25, 0.25, 0.5, 0.5, 0.75])
    q = interpolated_precision(recall, env)
    assert q.shape == (101,)
    expect = np.where(RECALL_THRESHOLDS <= 0.25, 1.0, np.where(RECALL_THRESHOLDS <= 0.5, 0.667,
                      np.where(RECALL_THRESHOLDS <= 0.75, 0.6, 0.0)))
    np.testing.assert_allclose(q, expect)


@pytest.mark.assignment(id="A10", points=2)
@pytest.mark.parametrize("seed", [0, 1])
def test_equal_to_cocoeval(seed):
    gt, results = random_set(seed)
    ours = evaluate_bbox(gt, results)
    stats, precision = cocoeval_stats(gt, results)
    np.testing.assert_allclose([ours["AP"], ours["AP50"], ours["AP75"]], stats, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours["precision"].transpose(0, 1, 2), precision, rtol=1e-12, atol=1e-12)
