"""The FPN's top-down pathway (FPN §3; Mask R-CNN Fig. 4 right): forward against the wiring written out
level by level, backward against central differences, for the inputs and the lateral convs' weights."""
import numpy as np
import pytest

from minimaskrcnn import nn
from minimaskrcnn.model.fpn import FeaturePyramidNetwork
from minimaskrcnn.nn import functional as F
from minimaskrcnn.nn.gradcheck import check_gradient

SHAPES = [(2, 3, 16, 12), (2, 4, 8, 6), (2, 5, 4, 3), (2, 6, 2, 2)]   # C2..C5: strides 4, 8, 16, 32


def make_fpn(in_shapes=SHAPES, out_channels=4, extra_pool=True, norm=None, seed=0):
    nn.init.manual_seed(seed)
    fpn = FeaturePyramidNetwork([s[1] for s in in_shapes], out_channels, extra_pool=extra_pool, norm=norm,
                                dtype="float64")
    rng = np.random.default_rng(seed)
    for _, p in fpn.named_parameters():   # non-zero biases, so that a lost term shows
        p.data[...] = rng.standard_normal(p.data.shape) * 0.5
    return fpn, [rng.standard_normal(s) for s in in_shapes]


def top_down_by_hand(fpn, feats):
    """inner_5 = lateral_5(C5); inner_k = lateral_k(C_k) + upsample(inner_{k+1}); P_k = output_k(inner_k)."""
    inner = fpn.inner_blocks[-1](feats[-1])
    outs = [fpn.layer_blocks[-1](inner)]
    for k in range(len(feats) - 2, -1, -1):
        lateral = fpn.inner_blocks[k](feats[k])
        up, _ = F.upsample_nearest_forward(inner, size=lateral.shape[-2:])
        inner = lateral + up
        outs.insert(0, fpn.layer_blocks[k](inner))
    return outs


@pytest.mark.assignment(id="A3", points=2)
def test_fpn_forward_is_the_top_down_pathway():
    fpn, feats = make_fpn()
    fpn.eval()
    outs = fpn(feats)
    expected = top_down_by_hand(fpn, feats)
    assert [o.shape for o in outs] == [(2, 4, h, w) for h, w in [(16, 12), (8, 6), (4, 3), (2, 2), (1, 1)]]
    for k, (o, e) in enumerate(zip(outs[:4], expected, strict=True)):
        np.testing.assert_allclose(o, e, rtol=1e-12, atol=1e-12, err_msg=f"P{k + 2}")
    np.testing.assert_array_equal(outs[4], expected[3][:, :, ::2, ::2])   # P6: P5 subsampled


def _loss_and_grads(fpn, feats, seed=1):
    rng = np.random.default_rng(seed)
    douts = [rng.standard_normal(o.shape) for o in fpn(feats)]
    fpn.free_cache()

    def loss(*_):
        out = fpn(feats)
        fpn.free_cache()
        return float(sum(np.sum(o * d) for o, d in zip(out, douts, strict=True)))

    fpn.zero_grad()
    fpn(feats)
    dfeats = fpn.backward(douts)
    return loss, dfeats


@pytest.mark.assignment(id="A3", points=2)
def test_fpn_backward_input_gradients():
    fpn, feats = make_fpn()
    loss, dfeats = _loss_and_grads(fpn, feats)
    assert [d.shape for d in dfeats] == [f.shape for f in feats]
    for k, (x, dx) in enumerate(zip(feats, dfeats, strict=True)):
        assert check_gradient(loss, x, dx, max_checks=40) < 1e-7, f"dC{k + 2}"


@pytest.mark.assignment(id="A3", points=1)
def test_fpn_backward_reaches_every_lateral_conv():
    fpn, feats = make_fpn()
    loss, _ = _loss_and_grads(fpn, feats)
    for k in (0, 3):   # the finest lateral (one path) and the coarsest (reached through every level)
        w = fpn.inner_blocks[k][0].weight
        assert check_gradient(loss, w.data, w.grad) < 1e-7, f"inner_blocks.{k}.0.weight"
