"""Hidden tests of assignment A10 (COCO AP): crowd regions, an image without objects, tied scores and
more than 100 detections per image, all against COCOeval. Graders' copy only: not in a student release."""
import os
import sys

import numpy as np
import pytest

from minimaskrcnn.engine.coco_ap import evaluate_bbox, interpolated_precision, precision_envelope

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from test_coco_ap import cocoeval_stats, random_set  # noqa: E402


@pytest.mark.assignment(id="A10", points=2)
@pytest.mark.parametrize("case", [dict(seed=5, crowd=True), dict(seed=6, empty_image=True, ties=True),
                                  dict(seed=7, n_images=3, many=True), dict(seed=8, crowd=True, ties=True)])
def test_equal_to_cocoeval_in_harder_cases(case):
    gt, results = random_set(**case)
    ours = evaluate_bbox(gt, results)
    stats, precision = cocoeval_stats(gt, results)
    np.testing.assert_allclose([ours["AP"], ours["AP50"], ours["AP75"]], stats, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours["precision"], precision, rtol=1e-12, atol=1e-12)


@pytest.mark.assignment(id="A10", points=1)
def test_interpolation_edges():
    np.testing.assert_array_equal(interpolated_precision(np.array([]), np.array([])), np.zeros(101))
    q = interpolated_precision(np.array([0.0, 1.0]), precision_envelope(np.array([0.2, 0.9])))
    np.testing.assert_allclose(q, np.full(101, 0.9))   # recall 0 is read at the first point, enveloped
