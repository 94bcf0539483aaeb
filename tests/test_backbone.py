"""ResNet and FPN: shapes, strides, names, and the gradient of the whole backbone."""
import numpy as np
import pytest

from minimaskrcnn import nn
from minimaskrcnn.model.fpn import BackboneWithFPN, FeaturePyramidNetwork
from minimaskrcnn.model.resnet import ResNet
from minimaskrcnn.nn.gradcheck import check_directional, numerical_gradient, rel_error


def tiny_backbone(depth=18, norm="bn", frozen_stages=0, groups=1):
    nn.init.manual_seed(0)
    body = ResNet(depth, groups=groups, norm=norm, widths=(4, 4, 8, 8),
                  stem_channels=4, frozen_stages=frozen_stages, dtype="float64")
    fpn = FeaturePyramidNetwork(body.out_channels, 6, dtype="float64")
    return BackboneWithFPN(body, fpn)


@pytest.mark.parametrize("depth", [18, 50])
def test_levels_have_strides_4_to_64(depth, rng):
    bb = tiny_backbone(depth)
    feats = bb(rng.standard_normal((2, 3, 64, 96)))
    assert [f.shape for f in feats[:4]] == [(2, 6, 64 // s, 96 // s) for s in (4, 8, 16, 32)]
    assert feats[4].shape == (2, 6, 1, 2)  # P6: stride-2 subsampling of P5 (2 x 3) keeps ceil(3 / 2) columns
    bb.free_cache()


def test_resnet50_names_match_torchvision_layout():
    body = ResNet(50, norm="frozen_bn")
    keys = list(body.state_dict())
    assert keys[:5] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"]
    assert "layer1.0.downsample.0.weight" in keys and "layer4.2.conv3.weight" in keys
    assert body.state_dict()["layer3.5.conv2.weight"].shape == (256, 256, 3, 3)
    # ResNet-50 without the classifier: 23,508,032 weights; frozen BN holds no parameters.
    assert body.num_parameters() == 23454912


@pytest.mark.parametrize("norm,depth,groups", [("bn", 18, 1), ("gn", 50, 2), ("frozen_bn", 50, 1)])
def test_backbone_gradients(norm, depth, groups, rng):
    bb = tiny_backbone(depth, norm, groups=groups)
    if norm == "gn":
        for _, m in bb.named_modules():
            if isinstance(m, nn.GroupNorm):
                m.num_groups = 2
    # 64 px, not 32: with 32 px, C5 is 1x1 and training-mode BN normalises 2 values per channel, which
    # makes the loss nearly a step function of the weights (central differences then measure curvature).
    x = rng.standard_normal((2, 3, 64, 64))
    douts = [rng.standard_normal(f.shape) for f in bb(x)]
    bb.free_cache()

    def loss():
        out = bb(x)
        bb.free_cache()
        return float(sum(np.sum(o * d) for o, d in zip(out, douts)))

    bb.zero_grad()
    bb(x)
    dx = bb.backward(douts)
    params = {n: p.data for n, p in bb.named_parameters()}
    grads = {n: p.grad for n, p in bb.named_parameters()}
    assert all(g is not None for g in grads.values())
    # h = 1e-7: every weight moves at once, and with ~20k ReLUs a larger step can push one across 0
    assert check_directional(loss, params, grads, h=1e-7) < 1e-7
    if norm != "bn":  # (BN in training mode: the image gradient is checked on a subset below)
        num = numerical_gradient(lambda _: loss(), x, indices=range(0, x.size, 97))
        assert rel_error(dx.reshape(-1)[::97], num.reshape(-1)[::97]) < 1e-7


def test_frozen_stages_get_no_gradient_and_stop_the_backward(rng):
    bb = tiny_backbone(18, "frozen_bn", frozen_stages=2)
    x = rng.standard_normal((1, 3, 32, 32))
    feats = bb(x)
    dx = bb.backward([np.ones_like(f) for f in feats])
    assert dx is None
    frozen = [n for n, p in bb.named_parameters() if p.grad is None]
    assert frozen and all(n.startswith(("body.conv1", "body.layer1.")) for n in frozen)
    assert all(m._tape == [] for _, m in bb.named_modules())


def test_stem_without_input_grad_gives_the_same_weight_gradients_and_no_image_gradient(rng):
    x = rng.standard_normal((2, 3, 64, 64))
    grads = []
    for input_grad in (True, False):
        bb = tiny_backbone(18, "frozen_bn")
        bb.body.conv1.input_grad = input_grad
        feats = bb(x)
        dx = bb.backward([np.ones_like(f) for f in feats])
        assert (dx is None) == (not input_grad)
        grads.append({n: p.grad for n, p in bb.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    assert all(np.array_equal(grads[0][n], grads[1][n]) for n in grads[0])
