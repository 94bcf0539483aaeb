"""Reference outputs of torchvision's Keypoint R-CNN parts for tests/test_keypoints.py.

    /work/torchvenv/bin/python tools/make_keypoint_fixtures.py     # torch 2.14.1, torchvision 0.29.1

Writes tests/fixtures/keypoint_upsample.npz: ``F.interpolate(scale_factor=2, mode='bilinear',
align_corners=False, recompute_scale_factor=False)`` (what ``KeypointRCNNPredictor`` does) on random float32
inputs of a few shapes, and the input gradient for a random upstream gradient.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
OUT = os.path.join(ROOT, "tests", "fixtures")

UPSAMPLE_SHAPES = [(2, 3, 28, 28), (1, 2, 5, 7), (1, 1, 1, 3)]


def upsample_fixtures() -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for i, shape in enumerate(UPSAMPLE_SHAPES):
        x = rng.standard_normal(shape).astype(np.float32)
        xt = torch.from_numpy(x).requires_grad_(True)
        y = F.interpolate(xt, scale_factor=2, mode="bilinear", align_corners=False, recompute_scale_factor=False)
        g = rng.standard_normal(tuple(y.shape)).astype(np.float32)
        y.backward(torch.from_numpy(g))
        out.update({f"x{i}": x, f"y{i}": y.detach().numpy(), f"g{i}": g, f"dx{i}": xt.grad.numpy()})
    return out


def main():
    np.savez_compressed(os.path.join(OUT, "keypoint_upsample.npz"), **upsample_fixtures())
    print("wrote", os.path.join(OUT, "keypoint_upsample.npz"))


if __name__ == "__main__":
    main()
