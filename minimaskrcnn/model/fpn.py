"""Feature Pyramid Network (Lin et al. 2017), the backbone neck Mask R-CNN uses (paper §3, Fig. 4 right).

From the ResNet stage outputs C2..C5 it builds P2..P5 with the same number of channels (256), each
combining the coarse, semantically strong top-down signal with the finer lateral one:

    inner_5 = lateral_5(C5);   inner_k = lateral_k(Ck) + upsample_nearest(inner_{k+1})
    P_k = output_k(inner_k)    (3x3 conv, to reduce the aliasing of upsampling)
    P6 = max_pool(P5, kernel 1, stride 2)   (only for RPN anchors of size 512)

Parameter names follow torchvision: ``inner_blocks.<k>.0`` (1x1 laterals), ``layer_blocks.<k>.0`` (3x3).
"""
from __future__ import annotations

from .. import nn
from ..nn.pool import max_pool2d_backward, max_pool2d_forward
from ..nn.resample import upsample_nearest_backward, upsample_nearest_forward


class FeaturePyramidNetwork(nn.Module):
    """``forward([C2, C3, C4, C5])`` -> ``[P2, P3, P4, P5, P6]`` (finest first); ``backward`` the reverse.

    Args:
        in_channels_list: channels of C2..C5.
        out_channels: channels of every P level (256 in the paper).
        extra_pool: add P6 by max-pooling P5 (torchvision's ``LastLevelMaxPool``).
        norm: None, or 'gn' / 'bn' after each conv (Detectron's GN variant); torchvision's default is None.
    """

    def __init__(self, in_channels_list, out_channels=256, extra_pool=True, norm=None, dtype="float32"):
        super().__init__()
        from .resnet import make_norm
        self.inner_blocks = nn.ModuleList()
        self.layer_blocks = nn.ModuleList()
        for c in in_channels_list:
            inner = [nn.Conv2d(c, out_channels, 1, bias=norm is None, dtype=dtype)]
            layer = [nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=norm is None, dtype=dtype)]
            if norm is not None:
                inner.append(make_norm(norm, out_channels, dtype))
                layer.append(make_norm(norm, out_channels, dtype))
            self.inner_blocks.append(nn.Sequential(*inner))
            self.layer_blocks.append(nn.Sequential(*layer))
        for _, m in self.named_modules():  # torchvision: kaiming_uniform(a=1), zero bias
            if isinstance(m, nn.Conv2d):
                m.weight.data = nn.init.kaiming_uniform(m.weight.shape, a=1, dtype=dtype)
                if m.bias is not None:
                    m.bias.data[...] = 0
        self.extra_pool = extra_pool
        self.out_channels = out_channels

    def forward(self, feats):
        n = len(self.inner_blocks)
        if len(feats) != n:
            raise ValueError(f"FeaturePyramidNetwork: expected {n} feature maps, got {len(feats)}")
        inner = [None] * n
        ups = [None] * n
        ### BEGIN SOLUTION
        inner[-1] = self.inner_blocks[-1](feats[-1])
        for k in range(n - 2, -1, -1):
            lateral = self.inner_blocks[k](feats[k])
            top_down, ups[k] = upsample_nearest_forward(inner[k + 1], size=lateral.shape[-2:])
            inner[k] = lateral + top_down
        ### END SOLUTION
        outs = [self.layer_blocks[k](inner[k]) for k in range(n)]
        pool_cache = None
        if self.extra_pool:
            p6, pool_cache = max_pool2d_forward(outs[-1], 1, 2, 0)
            outs.append(p6)
        self.save_for_backward((ups, pool_cache))
        return outs

    def backward(self, grads):
        """``grads``: gradients for [P2, ..., P6] (finest first). Returns gradients for [C2, ..., C5]."""
        ups, pool_cache = self.saved()
        n = len(self.inner_blocks)
        grads = list(grads)
        if self.extra_pool:
            grads[n - 1] = grads[n - 1] + max_pool2d_backward(grads.pop(), pool_cache)
        d_inner = [self.layer_blocks[k].backward(grads[k]) for k in range(n)]
        # The top-down path, fine to coarse: inner_{k+1} also reached P_k through the upsample.
        ### BEGIN SOLUTION
        for k in range(n - 1):
            d_inner[k + 1] = d_inner[k + 1] + upsample_nearest_backward(d_inner[k], ups[k])
        ### END SOLUTION
        return [self.inner_blocks[k].backward(d_inner[k]) for k in range(n)]


class BackboneWithFPN(nn.Module):
    """``body`` (a ResNet giving C2..C5) followed by ``fpn``: image batch -> [P2, P3, P4, P5, P6].

    Names follow torchvision's ``backbone.body`` / ``backbone.fpn``.
    """

    def __init__(self, body, fpn):
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = fpn.out_channels

    def forward(self, images):
        """images: (N, 3, H, W) normalised and padded to a multiple of 32. Returns the FPN levels, finest first."""
        return self.fpn(self.body(images))

    def backward(self, grads):
        return self.body.backward(self.fpn.backward(grads))
