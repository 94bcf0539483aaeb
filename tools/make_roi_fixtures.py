"""Write the torchvision reference outputs the RoI-operator tests compare against.

    /tmp/torchenv/bin/python tools/make_roi_fixtures.py      # any Python with torch + torchvision

Writes (float64, allow_pickle-free .npz, a few tens of kB each):
  tests/fixtures/roi_ops.npz               torchvision.ops.roi_align (aligned False/True, sampling ratios
                                           -1..3, two output sizes) and roi_pool: forward and the
                                           gradient for the features of sum(out * dout)
  tests/fixtures/multiscale_roi_align.npz  torchvision.ops.MultiScaleRoIAlign over four FPN levels:
                                           inferred scales, level of each RoI, output, gradients per level

Only this script needs torch; the tests read the files with NumPy alone.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.ops import MultiScaleRoIAlign, roi_align, roi_pool

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def rois_for(rng, n_batch: int, height: int, width: int, scale: float) -> np.ndarray:
    """RoIs (image pixels) that exercise the border and rounding rules: inside, partly and wholly
    outside, tiny, inverted (x2 < x1), larger than the map, and corners on exact halves of a cell."""
    H, W = height / scale, width / scale  # the map's extent in image pixels
    rows = [
        [0, 0.3 * W, 0.2 * H, 0.7 * W, 0.9 * H],       # inside
        [1, -0.3 * W, -0.2 * H, 0.4 * W, 0.5 * H],      # partly outside, top-left
        [0, 0.6 * W, 0.5 * H, 1.3 * W, 1.4 * H],        # partly outside, bottom-right
        [1, 1.2 * W, 0.1 * H, 1.6 * W, 0.6 * H],        # wholly outside
        [0, 0.41 * W, 0.37 * H, 0.43 * W, 0.39 * H],    # tiny (< 1 cell)
        [1, 0.6 * W, 0.6 * H, 0.5 * W, 0.55 * H],       # inverted
        [0, -0.5 * W, -0.5 * H, 1.5 * W, 1.5 * H],      # larger than the map
        [1, 2.5 / scale, 1.5 / scale, 7.5 / scale, 6.5 / scale],   # corners on halves: C round vs np.round
        [0, -0.5 / scale, -1.5 / scale, 3.5 / scale, 4.5 / scale],  # negative halves
    ]
    for _ in range(5):                                   # random boxes
        x1, y1 = rng.uniform(-0.2, 1.0, 2) * (W, H)
        w, h = rng.uniform(0.05, 0.8, 2) * (W, H)
        rows.append([rng.integers(n_batch), x1, y1, x1 + w, y1 + h])
    return np.array(rows, dtype=np.float64)


def grad_of(fn, features: np.ndarray, dout: np.ndarray):
    x = torch.tensor(features, requires_grad=True)
    out = fn(x)
    (out * torch.tensor(dout)).sum().backward()
    return out.detach().numpy(), x.grad.numpy()


def roi_ops(rng) -> dict:
    N, C, H, W, scale = 2, 3, 10, 12, 0.5
    features = rng.standard_normal((N, C, H, W))
    rois = rois_for(rng, N, H, W, scale)
    data = {"features": features, "rois": rois, "spatial_scale": np.float64(scale)}
    rois_t = torch.tensor(rois)
    for size in [(3, 4), (2, 2)]:
        dout = rng.standard_normal((len(rois), C, *size))
        tag = f"{size[0]}x{size[1]}"
        data[f"dout_{tag}"] = dout
        for aligned in (False, True):
            for sr in (-1, 0, 1, 2, 3):
                out, grad = grad_of(lambda x, size=size, sr=sr, aligned=aligned:
                                    roi_align(x, rois_t, size, scale, sr, aligned), features, dout)
                key = f"align_{tag}_aligned{int(aligned)}_sr{sr}"
                data[f"{key}_out"], data[f"{key}_grad"] = out, grad
        out, grad = grad_of(lambda x, size=size: roi_pool(x, rois_t, size, scale), features, dout)
        data[f"pool_{tag}_out"], data[f"pool_{tag}_grad"] = out, grad
    return data


def multiscale(rng) -> dict:
    """Two images of 128x160 and 120x150 (padded to 128x160), four levels at strides 4..32."""
    C = 2
    image_shapes = [(128, 160), (120, 150)]
    names = ["p2", "p3", "p4", "p5"]
    feats = OrderedDict((n, rng.standard_normal((2, C, 128 // s, 160 // s)))
                        for n, s in zip(names, (4, 8, 16, 32), strict=True))
    boxes = []
    for _ in range(2):  # sqrt(area) from 12 to 900 px (all four levels, and clamping), random aspect
        side = rng.permutation(np.exp(np.linspace(np.log(12), np.log(900), 12)))
        aspect = np.sqrt(rng.uniform(0.5, 2.0, 12))
        x1, y1 = rng.uniform(-40, 150, 12), rng.uniform(-40, 120, 12)
        boxes.append(np.stack([x1, y1, x1 + side * aspect, y1 + side / aspect], axis=1))
    # Boxes exactly on level boundaries (sqrt(area) = 56, 112, 224, 448): torchvision's eps = 1e-6
    # keeps log2 round-off from dropping them one level.
    for i, side in enumerate((56, 112, 224, 448)):
        boxes[i % 2][i] = [10, 20, 10 + side, 20 + side]
    pooler = MultiScaleRoIAlign(names, output_size=(3, 3), sampling_ratio=2)
    xs = OrderedDict((n, torch.tensor(f, requires_grad=True)) for n, f in feats.items())
    out = pooler(xs, [torch.tensor(b) for b in boxes], image_shapes)
    dout = rng.standard_normal(tuple(out.shape))
    (out * torch.tensor(dout)).sum().backward()
    levels = pooler.map_levels([torch.tensor(b) for b in boxes]).numpy()
    data = {f"features_{n}": f for n, f in feats.items()}
    data.update({f"grad_{n}": xs[n].grad.numpy() for n in names})
    rois = np.concatenate([np.concatenate([np.full((len(b), 1), i), b], 1) for i, b in enumerate(boxes)])
    data.update(rois=rois, image_size=np.array([128, 160]), scales=np.array(pooler.scales, dtype=np.float64),
                levels=levels, out=out.detach().numpy(), dout=dout, sampling_ratio=np.int64(2))
    return data


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    versions = {"torch_version": np.array(torch.__version__),
                "torchvision_version": np.array(torchvision.__version__)}
    rng = np.random.default_rng(20170320)  # Mask R-CNN's arXiv date
    for name, data in (("roi_ops.npz", roi_ops(rng)), ("multiscale_roi_align.npz", multiscale(rng))):
        np.savez_compressed(OUT / name, **data, **versions)
        print(f"wrote {OUT / name} ({(OUT / name).stat().st_size / 1024:.0f} kB, {len(data)} arrays)")


if __name__ == "__main__":
    main()
