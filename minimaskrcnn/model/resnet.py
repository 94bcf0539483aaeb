"""ResNet (He et al. 2016) and ResNeXt (Xie et al. 2017) as the Mask R-CNN backbone (paper §3, "Network
Architecture"): a stem and four stages ``layer1..layer4`` whose outputs C2..C5 have strides 4, 8, 16, 32.

Names and shapes follow torchvision's ``resnet*`` (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``downsample.0/1``), so its weights load unchanged. The bottleneck puts its stride on the 3x3 conv
("ResNet v1.5"), as torchvision does.
"""
from __future__ import annotations

from .. import nn
from ..nn.activation import relu_backward, relu_forward


def make_norm(kind: str, channels: int, dtype="float32", gn_groups: int = 32) -> nn.Module:
    """'frozen_bn' (the paper's, for pretrained backbones), 'bn' (trainable, batch statistics) or 'gn'."""
    if kind == "frozen_bn":
        return nn.FrozenBatchNorm2d(channels, dtype=dtype)
    if kind == "bn":
        return nn.BatchNorm2d(channels, dtype=dtype)
    if kind == "gn":
        return nn.GroupNorm(min(gn_groups, channels), channels, dtype=dtype)
    raise ValueError(f"norm must be 'frozen_bn', 'bn' or 'gn', got {kind!r}")


class BasicBlock(nn.Module):
    """Two 3x3 convs and a shortcut (ResNet-18/34): ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    expansion = 1

    def __init__(self, in_ch, planes, stride=1, downsample=None, groups=1, base_width=64, norm="bn", dtype="float32"):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64 (use depth >= 50 for ResNeXt)")
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride, 1, bias=False, dtype=dtype)
        self.bn1 = make_norm(norm, planes, dtype)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False, dtype=dtype)
        self.bn2 = make_norm(norm, planes, dtype)
        self.downsample = downsample

    def forward(self, x):
        h, m1 = relu_forward(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        h += x if self.downsample is None else self.downsample(x)
        out, m2 = relu_forward(h)
        self.save_for_backward((m1, m2))
        return out

    def backward(self, dout):
        m1, m2 = self.saved()
        d = relu_backward(dout, m2)
        dx = self.conv1.backward(self.bn1.backward(relu_backward(self.conv2.backward(self.bn2.backward(d)), m1)))
        # the shortcut: the same gradient flows into the identity (or projection) branch and adds up
        return dx + (d if self.downsample is None else self.downsample.backward(d))


class Bottleneck(nn.Module):
    """1x1 (reduce) -> 3x3 (stride, groups) -> 1x1 (expand x4), plus a shortcut (ResNet-50/101, ResNeXt)."""

    expansion = 4

    def __init__(self, in_ch, planes, stride=1, downsample=None, groups=1, base_width=64, norm="bn", dtype="float32"):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False, dtype=dtype)
        self.bn1 = make_norm(norm, width, dtype)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False, dtype=dtype)
        self.bn2 = make_norm(norm, width, dtype)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False, dtype=dtype)
        self.bn3 = make_norm(norm, planes * 4, dtype)
        self.downsample = downsample

    def forward(self, x):
        h, m1 = relu_forward(self.bn1(self.conv1(x)))
        h, m2 = relu_forward(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        h += x if self.downsample is None else self.downsample(x)
        out, m3 = relu_forward(h)
        self.save_for_backward((m1, m2, m3))
        return out

    def backward(self, dout):
        m1, m2, m3 = self.saved()
        d = relu_backward(dout, m3)
        h = relu_backward(self.conv3.backward(self.bn3.backward(d)), m2)
        h = relu_backward(self.conv2.backward(self.bn2.backward(h)), m1)
        dx = self.conv1.backward(self.bn1.backward(h))
        return dx + (d if self.downsample is None else self.downsample.backward(d))


BLOCKS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
          50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3)), 152: (Bottleneck, (3, 8, 36, 3))}


class ResNet(nn.Module):
    """The backbone body: stem (7x7/2 conv, norm, ReLU, 3x3/2 max-pool) and stages layer1..layer4.

    ``forward(x (N, 3, H, W))`` returns the list ``[C2, C3, C4, C5]`` of the stages in ``return_stages``
    (strides 4, 8, 16, 32). ``backward(grads)`` takes one gradient per returned stage (or None) and
    returns the gradient for the image.

    Args:
        depth: 18, 34, 50, 101 or 152.
        groups, width_per_group: ResNeXt's cardinality and bottleneck width (32, 4 for ResNeXt-50 32x4d).
        norm: 'frozen_bn', 'bn' or 'gn'.
        widths: channels of the four stages' ``planes`` (default 64, 128, 256, 512); smaller values make
            the CPU teaching model.
        stem_channels: channels of conv1 (default 64).
        num_stages: build only layer1..layer<num_stages> (3 gives the C4 backbone; layer4 becomes the head).
        frozen_stages: stages whose parameters are not trained (0 = none, 1 = stem, 2 = stem + layer1, ...),
            as torchvision's ``trainable_layers`` counted from the bottom.
    """

    def __init__(self, depth=50, groups=1, width_per_group=64, norm="frozen_bn", widths=(64, 128, 256, 512),
                 stem_channels=64, num_stages=4, return_stages=(1, 2, 3, 4), frozen_stages=0, dtype="float32"):
        super().__init__()
        if depth not in BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(BLOCKS)}, got {depth}")
        block, counts = BLOCKS[depth]
        self.return_stages = tuple(return_stages)
        self.conv1 = nn.Conv2d(3, stem_channels, 7, 2, 3, bias=False, dtype=dtype)
        self.bn1 = make_norm(norm, stem_channels, dtype)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = stem_channels
        self.out_channels = []
        for s in range(num_stages):
            stride = 1 if s == 0 else 2
            layer, in_ch = make_stage(block, in_ch, widths[s], counts[s], stride, groups, width_per_group, norm, dtype)
            self.add_module(f"layer{s + 1}", layer)
            self.out_channels.append(in_ch)
        for _, m in self.named_modules():  # torchvision's init: He-normal (fan_out) for every conv
            if isinstance(m, nn.Conv2d):
                m.weight.data = nn.init.kaiming_normal(m.weight.shape, "fan_out", dtype)
        self.freeze(frozen_stages)

    def stages(self):
        return [getattr(self, f"layer{i}") for i in range(1, 5) if hasattr(self, f"layer{i}")]

    def freeze(self, frozen_stages: int) -> None:
        """Stop training the stem (1) and the first ``frozen_stages - 1`` stages."""
        self.frozen_stages = frozen_stages
        parts = [[self.conv1, self.bn1]] + [[stage] for stage in self.stages()]
        for i, group in enumerate(parts):
            for m in group:
                m.requires_grad_(i >= frozen_stages)

    def forward(self, x):
        h, mask = relu_forward(self.bn1(self.conv1(x)))
        self.save_for_backward(mask)
        h = self.maxpool(h)
        outs = []
        for i, stage in enumerate(self.stages(), start=1):
            h = stage(h)
            if i in self.return_stages:
                outs.append(h)
        return outs

    def backward(self, grads):
        """``grads``: one (N, C, H, W) gradient (or None) per returned stage, finest first.

        Walks the stages from the top down, adding each stage's own gradient to the one flowing from
        above. Frozen stages below the lowest trainable one need no gradient, so the walk stops there and
        returns None instead of the image gradient; so does a stem whose ``conv1.input_grad`` is False (as in
        :class:`~minimaskrcnn.model.mask_rcnn.MaskRCNN`, which has no use for it).
        """
        mask = self.saved()
        stages = self.stages()
        by_stage = dict(zip(self.return_stages, grads))
        d = None
        for i in range(len(stages), 0, -1):
            g = by_stage.get(i)
            if g is not None:
                d = g if d is None else d + g
            if d is None:
                stages[i - 1].free_cache()
                continue
            if i <= self.frozen_stages - 1:  # this stage and everything below it is frozen
                self._free_below(i)
                return None
            d = stages[i - 1].backward(d)
        if d is None or self.frozen_stages >= 1:
            self._free_below(0)
            return None
        d = self.maxpool.backward(d)
        return self.conv1.backward(self.bn1.backward(relu_backward(d, mask)))

    def _free_below(self, stage_index):
        for s in self.stages()[:stage_index]:
            s.free_cache()
        for m in (self.maxpool, self.bn1, self.conv1):
            m.free_cache()


def make_stage(block, in_ch, planes, count, stride, groups, width_per_group, norm, dtype):
    """``count`` blocks; the first changes resolution/width and gets a 1x1 projection shortcut."""
    downsample = None
    if stride != 1 or in_ch != planes * block.expansion:
        downsample = nn.Sequential(nn.Conv2d(in_ch, planes * block.expansion, 1, stride, bias=False, dtype=dtype),
                                   make_norm(norm, planes * block.expansion, dtype))
    blocks = [block(in_ch, planes, stride, downsample, groups, width_per_group, norm, dtype)]
    in_ch = planes * block.expansion
    blocks += [block(in_ch, planes, 1, None, groups, width_per_group, norm, dtype) for _ in range(count - 1)]
    return nn.Sequential(*blocks), in_ch
