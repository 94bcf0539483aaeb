"""Helpers shared by the tests and by the fixture scripts in ``tools/`` (NumPy only).

Model-parity fixtures don't store weights: both sides build the same random weights from a seed with
:func:`random_state_dict`, so a fixture holds only inputs and outputs and stays small.
"""
from __future__ import annotations

import numpy as np


def random_state_dict(shapes: dict, seed: int = 0) -> dict:
    """Deterministic random weights for a state dict given as ``{name: shape}``.

    Weights get N(0, 1/fan_in) (outputs keep a unit-ish scale through many layers), biases N(0, 0.1);
    BatchNorm statistics are positive and moderate. Names are visited in sorted order, each drawing
    from its own generator seeded by ``(seed, index)``, so adding a key never changes the others.
    """
    out = {}
    for i, name in enumerate(sorted(shapes)):
        shape = tuple(shapes[name])
        rng = np.random.default_rng([seed, i])
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[name] = np.zeros(shape, np.int64)
        elif leaf == "running_var":
            out[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif leaf == "running_mean":
            out[name] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        elif leaf == "weight" and len(shape) == 1:  # a normalisation layer's scale
            out[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif leaf == "weight":
            fan_in = int(np.prod(shape[1:]))
            out[name] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
        else:
            out[name] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    return out


# The anchor generator's fixture cases (tools/make_detops_fixtures.py writes torchvision's anchors for them,
# tests/test_anchors.py compares ours): name -> (sizes, aspect_ratios, image (H, W), feature sizes finest first).
ANCHOR_CASES = {
    "fpn": (((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5, (256, 320),
            [(64, 80), (32, 40), (16, 20), (8, 10), (4, 5)]),
    "fpn_odd": (((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5, (96, 132),
                [(24, 33), (12, 17), (6, 9), (3, 5), (2, 3)]),
    "multi": (((16, 40), (100,)), ((0.25, 1.0, 3.0), (1.0, 0.7)), (50, 70), [(13, 18), (4, 5)]),
}


def parity_config_kwargs() -> dict:
    """The small ResNet-18-FPN used for the torchvision parity fixtures (tools/make_model_fixtures.py)."""
    return dict(num_classes=4, depth=18, norm="frozen_bn", frozen_stages=0, fpn_channels=32,
                representation_size=64, mask_layers=(32, 32), mask_dim_reduced=32, min_size=96, max_size=128,
                rpn_pre_nms_top_n=(300, 200), rpn_post_nms_top_n=(200, 100), detections_per_img=20)


def keypoint_parity_config_kwargs() -> dict:
    """The small Keypoint R-CNN of the keypoint parity fixtures (tools/make_keypoint_fixtures.py): the mask
    parity model's backbone and box head, no mask branch, a 2 x 32 keypoint head, 3 keypoints."""
    return dict(parity_config_kwargs(), num_classes=2, mask_on=False, keypoint_on=True, keypoint_layers=(32, 32),
                num_keypoints=3)


def parity_images() -> list:
    """Two small RGB images of different sizes with a few bright blobs (so features are not uniform)."""
    rng = np.random.default_rng(7)
    images = []
    for h, w in ((90, 120), (110, 80)):
        yy, xx = np.mgrid[0:h, 0:w]
        im = rng.uniform(0, 60, (h, w, 3))
        for _ in range(3):
            cy, cx, r = rng.uniform(10, h - 10), rng.uniform(10, w - 10), rng.uniform(6, 20)
            im[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += rng.uniform(80, 190, 3)
        images.append(np.clip(im, 0, 255).astype(np.uint8))
    return images


# ---- the whole model's float64 gradient check (tests/test_model.py, test_c4.py, test_ablations.py) ---------
def synthetic_scene(rng, n_objects: int, size: int = 64):
    """A ``(size, size, 3)`` uint8 image with ``n_objects`` bright rectangles on a dark background, and its
    target dict (``boxes`` (n, 4), ``labels`` alternating 1, 2, ``masks`` (n, size, size))."""
    image = (rng.uniform(0, 80, (size, size, 3))).astype(np.uint8)
    boxes, labels, masks = [], [], []
    for k in range(n_objects):
        x0, y0 = rng.integers(2, size - 30, 2)
        w, h = rng.integers(12, 26, 2)
        m = np.zeros((size, size), np.uint8)
        m[y0:y0 + h, x0:x0 + w] = 1
        image[m > 0] = rng.integers(120, 255, 3)
        boxes.append([x0, y0, x0 + w, y0 + h])
        labels.append(1 + k % 2)
        masks.append(m)
    return image, {"boxes": np.array(boxes, np.float32).reshape(-1, 4), "labels": np.array(labels, np.int64),
                   "masks": np.array(masks, np.uint8).reshape(-1, size, size)}


def prepare_for_gradient_check(model, gn_groups: int = 2, seed: int = 5):
    """Make a small float64 model's loss smooth enough for central differences, in place; returns it.

    GroupNorm gets ``gn_groups`` groups of its few channels. Zero-initialised biases put ReLU inputs
    exactly at the kink wherever a ReLU'd input is all zero (e.g. the mask deconv over dead pixels), where
    central differences see half a slope: they are jittered to small positive values.
    """
    for _, m in model.named_modules():
        if hasattr(m, "num_groups"):
            m.num_groups = gn_groups
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.data = p.data + rng.uniform(0.01, 0.05, p.shape)
    return model


def fixed_proposals(model, images, targets) -> list:
    """The RPN's proposals for one training pass, to hold fixed while the weights are perturbed."""
    model.forward_train(images, targets)
    model.free_cache()
    return [p.copy() for p in model.last_proposals]


def fixed_sample_losses(model, images, targets, proposals, backward: bool = False, seed: int = 11) -> dict:
    """The training losses with the proposals and the anchor and RoI samples held fixed (``model.rng``
    reseeded), so that they are a smooth function of the weights. With ``backward``, the gradients are
    left in the parameters' ``.grad``; otherwise the caches are freed."""
    model.rng = np.random.default_rng(seed)
    losses = model.forward_train(images, targets, proposals=proposals)
    if backward:
        model.zero_grad()
        model.backward()
    else:
        model.free_cache()
    return losses
