"""engine.analysis: each kind of error on hand-made detections, by boxes and by masks."""
import numpy as np
import pytest

from minimaskrcnn.engine.analysis import ERROR_KINDS, error_breakdown, mask_iou

CIRCLE, RECT = 1, 2
SIZE = 64


def _masks_of(boxes):
    masks = np.zeros((len(boxes), SIZE, SIZE), bool)
    for m, (x1, y1, x2, y2) in zip(masks, np.asarray(boxes, int)):
        m[y1:y2, x1:x2] = True
    return masks


def _case():
    # image 0: circle A, rectangle B, circle C; image 1: no objects; image 2: one rectangle, no detection
    gt_boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float)
    targets = [{"labels": np.array([CIRCLE, RECT, CIRCLE]), "boxes": gt_boxes},
               {"labels": np.zeros(0, int), "boxes": np.zeros((0, 4))},
               {"labels": np.array([RECT]), "boxes": np.array([[5, 5, 25, 15]], float)}]
    det = [([0, 0, 10, 10], CIRCLE, 0.9),     # A exactly: correct
           ([0, 0, 10, 9], CIRCLE, 0.8),      # A again (IoU 0.9): duplicate
           ([6, 0, 16, 10], CIRCLE, 0.7),     # A shifted 6 px (IoU 4/16 = 0.25): localization
           ([20, 20, 30, 30], CIRCLE, 0.6),   # B exactly, wrong class: confusion
           ([55, 0, 64, 9], RECT, 0.5),       # nothing there: background
           ([40, 40, 50, 50], CIRCLE, 0.05)]  # C exactly, but below the score threshold of the last check
    predictions = [{"boxes": np.array([d[0] for d in det], float), "labels": np.array([d[1] for d in det]),
                    "scores": np.array([d[2] for d in det])},
                   {"boxes": np.array([[1, 1, 9, 9]], float), "labels": np.array([RECT]),
                    "scores": np.array([0.95])},
                   {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int), "scores": np.zeros(0)}]
    for t in targets:
        t["masks"] = _masks_of(t["boxes"])
    for p in predictions:
        p["masks"] = _masks_of(p["boxes"])
    return targets, predictions


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_each_kind_of_error(iou_type):
    targets, predictions = _case()
    result = error_breakdown(targets, predictions, iou_type)
    kinds = [(d.image, d.index, d.kind, d.gt) for d in result.detections]
    assert kinds == [(0, 0, "correct", 0), (0, 1, "duplicate", 0), (0, 2, "localization", 0),
                     (0, 3, "confusion", 1), (0, 4, "background", -1), (0, 5, "correct", 2),
                     (1, 0, "background", -1)]
    assert result.counts == {"correct": 2, "duplicate": 1, "localization": 1, "confusion": 1,
                             "background": 2, "missed": 2}
    assert result.num_objects == 4
    assert result.detections[2].iou == pytest.approx(0.25)
    assert result.detections[3].gt_label == RECT and result.detections[3].iou == pytest.approx(1.0)
    # B was seen only as a circle; the rectangle of image 2 had no detection at all
    assert [(m.image, m.index, m.label, m.best_label, m.best_iou) for m in result.missed] == \
        [(0, 1, RECT, CIRCLE, 1.0), (2, 0, RECT, 0, 0.0)]
    assert result.missed[0].area == 100 and result.missed[1].area == 200
    wrong, missed = result.worst(2)
    assert [(d.image, d.kind) for d in wrong] == [(1, "background"), (0, "duplicate")]
    assert [m.image for m in missed] == [2, 0]                 # the larger object first


def test_score_threshold_and_iou_threshold():
    targets, predictions = _case()
    result = error_breakdown(targets, predictions, "bbox", score_thresh=0.1)
    assert result.counts["correct"] == 1 and result.counts["missed"] == 3     # C's detection scored 0.05
    assert all(d.score >= 0.1 for d in result.detections)
    # at IoU 0.95 the duplicate (IoU 0.9) is only a localisation error; at a loc_thresh of 0.3 the 6 px
    # shift (IoU 0.25) no longer touches its circle, and it overlaps no other object: background
    strict = error_breakdown(targets, predictions, "bbox", iou_thresh=0.95)
    assert strict.detections[1].kind == "localization"
    loose = error_breakdown(targets, predictions, "bbox", loc_thresh=0.3)
    assert loose.detections[2].kind == "background"
    assert set(result.counts) == set(ERROR_KINDS) | {"missed"}


def test_a_correct_detection_takes_the_best_free_object():
    # Two circles. The first detection overlaps both equally: COCOeval's `>=` gives a tie to the later object.
    # The second detection is object 0 exactly, and object 0 is still free: both are correct.
    targets = [{"labels": np.array([CIRCLE, CIRCLE]), "boxes": np.array([[0, 0, 10, 10], [0, 2, 10, 12]], float)}]
    predictions = [{"labels": np.array([CIRCLE, CIRCLE]), "scores": np.array([0.9, 0.8]),
                    "boxes": np.array([[0, 1, 10, 11], [0, 0, 10, 10]], float)}]
    result = error_breakdown(targets, predictions, "bbox")
    # IoUs: det 0 -> (0.818, 0.818), det 1 -> (1.0, 0.667)
    assert [(d.kind, d.gt) for d in result.detections] == [("correct", 1), ("correct", 0)]
    assert result.counts["missed"] == 0


def test_mask_iou_and_bad_input():
    a = _masks_of(np.array([[0, 0, 10, 10], [0, 0, 0, 0]]))
    b = _masks_of(np.array([[5, 0, 15, 10]]))
    np.testing.assert_allclose(mask_iou(a, b), [[50 / 150], [0.0]])
    targets, predictions = _case()
    with pytest.raises(ValueError, match="iou_type"):
        error_breakdown(targets, predictions, "keypoints")
    with pytest.raises(ValueError, match="loc_thresh"):
        error_breakdown(targets, predictions, loc_thresh=0.6)
    with pytest.raises(ValueError, match="same images"):
        error_breakdown(targets, predictions[:2])
    predictions[0]["masks"] = predictions[0]["masks"][:, :32]
    with pytest.raises(ValueError, match="same size"):
        error_breakdown(targets, predictions, "segm")
