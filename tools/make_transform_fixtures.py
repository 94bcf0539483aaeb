"""Write tests/fixtures/transforms.npz: torchvision's GeneralizedRCNNTransform on a few odd-sized images.

Run with a Python that has torch and torchvision (never needed by the tests themselves):

    /tmp/torchenv/bin/python tools/make_transform_fixtures.py

For each case: the uint8 input image, its boxes and masks, (min_size, max_size), and torchvision's outputs:
the resized size, the resized boxes and masks, and the normalised + resized image (all of it for the small
case; 4,096 random pixels of the others, to keep the file small), plus ``resize_boxes`` mapping boxes back.

torch has two CPU code paths for bilinear interpolation of float images: the general one, and a separable
one taken when out_h + out_w <= 128 or when torch runs single-threaded on 3-channel images. They differ in
the last bit. minimaskrcnn reproduces the general one exactly, so this script runs torch on 2 threads and
every case has out_h + out_w > 128.
"""
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# (height, width, min_size, max_size); case 0 is stored in full.
CASES = [(23, 31, 64, 100), (37, 53, 128, 1333), (97, 64, 128, 1333), (128, 128, 128, 1333),
         (200, 131, 800, 1333), (15, 300, 800, 1333), (61, 45, 100, 120)]
BATCH = [1, 2, 3]                      # these cases batched together (min_size 128, max_size 1333)
NUM_SAMPLES = 4096


def random_instances(rng, h, w, g=3):
    """g random boxes and masks (ellipses inside the boxes) on an h x w image."""
    x = np.sort(rng.uniform(0, w, (g, 2)), axis=1)
    y = np.sort(rng.uniform(0, h, (g, 2)), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1).astype(np.float32)
    yy, xx = np.mgrid[:h, :w] + 0.5
    cx, cy = (x[:, 0] + x[:, 1]) / 2, (y[:, 0] + y[:, 1]) / 2
    rx, ry = np.maximum((x[:, 1] - x[:, 0]) / 2, 1), np.maximum((y[:, 1] - y[:, 0]) / 2, 1)
    u = (xx - cx[:, None, None]) / rx[:, None, None]
    v = (yy - cy[:, None, None]) / ry[:, None, None]
    masks = u ** 2 + v ** 2 <= 1
    return boxes, masks.astype(np.uint8)


def to_tensor(image):
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255


def main():
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    out = {"torch_version": np.array(torch.__version__),
           "torchvision_version": np.array(torchvision.__version__)}
    for k, (h, w, min_size, max_size) in enumerate(CASES):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        boxes, masks = random_instances(rng, h, w)
        transform = GeneralizedRCNNTransform(min_size, max_size, MEAN, STD).eval()
        target = {"boxes": torch.from_numpy(boxes), "masks": torch.from_numpy(masks)}
        with torch.no_grad():
            images, targets = transform([to_tensor(image)], [target])
        oh, ow = images.image_sizes[0]
        assert oh + ow > 128, "keep to torch's general bilinear path (see the module docstring)"
        resized = images.tensors[0, :, :oh, :ow].numpy()             # (3, oh, ow), padding cut off
        out.update({f"c{k}_image": image, f"c{k}_boxes": boxes, f"c{k}_masks": masks,
                    f"c{k}_min_size": np.int64(min_size), f"c{k}_max_size": np.int64(max_size),
                    f"c{k}_out_size": np.array([oh, ow], np.int64),
                    f"c{k}_out_boxes": targets[0]["boxes"].numpy(),
                    f"c{k}_out_masks": targets[0]["masks"].numpy(),
                    f"c{k}_back_boxes": resize_boxes(targets[0]["boxes"], [oh, ow], [h, w]).numpy()})
        if k == 0:
            out[f"c{k}_out_image"] = resized
        else:
            idx = rng.choice(resized.size, size=min(NUM_SAMPLES, resized.size), replace=False)
            out[f"c{k}_sample_idx"] = idx.astype(np.int64)
            out[f"c{k}_sample_val"] = resized.reshape(-1)[idx]
    transform = GeneralizedRCNNTransform(128, 1333, MEAN, STD).eval()
    with torch.no_grad():
        images, _ = transform([to_tensor(out[f"c{k}_image"]) for k in BATCH])
    out["batch_cases"] = np.array(BATCH, np.int64)
    out["batch_shape"] = np.array(images.tensors.shape, np.int64)
    out["batch_image_sizes"] = np.array(images.image_sizes, np.int64)
    out["batch_sum"] = np.float64(images.tensors.double().sum())
    path = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "transforms.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
