"""Hidden tests of assignment A3 (FPN top-down pathway): three levels, odd sizes (upsampling to a size,
not by 2), no P6, GroupNorm after the convs. Graders' copy only: not in a student release."""
import os
import sys

import numpy as np
import pytest

from minimaskrcnn.nn.gradcheck import check_gradient

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from test_fpn import _loss_and_grads, make_fpn, top_down_by_hand  # noqa: E402


@pytest.mark.assignment(id="A3", points=2)
def test_three_odd_levels_without_p6():
    shapes = [(1, 2, 11, 9), (1, 3, 6, 5), (1, 2, 3, 3)]
    fpn, feats = make_fpn(shapes, out_channels=3, extra_pool=False, seed=4)
    fpn.eval()
    outs = fpn(feats)
    assert len(outs) == 3
    for o, e in zip(outs, top_down_by_hand(fpn, feats), strict=True):
        np.testing.assert_allclose(o, e, rtol=1e-12, atol=1e-12)
    fpn.train()
    loss, dfeats = _loss_and_grads(fpn, feats, seed=5)
    for k, (x, dx) in enumerate(zip(feats, dfeats, strict=True)):
        assert check_gradient(loss, x, dx, max_checks=40) < 1e-7, f"dC{k + 2}"


@pytest.mark.assignment(id="A3", points=1)
def test_group_norm_fpn_gradients():
    shapes = [(2, 2, 8, 8), (2, 2, 4, 4), (2, 2, 2, 2)]
    fpn, feats = make_fpn(shapes, out_channels=4, norm="gn", seed=6)
    loss, dfeats = _loss_and_grads(fpn, feats, seed=7)
    for k, (x, dx) in enumerate(zip(feats, dfeats, strict=True)):
        assert check_gradient(loss, x, dx, max_checks=40) < 1e-7, f"dC{k + 2}"
