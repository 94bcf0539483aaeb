"""Whole-model speed and memory: training iterations and inference, ours beside torchvision's.

    python bench/model.py                         # ours only
    /path/to/python-with-torch bench/model.py     # also torchvision (pip install torch==2.14.1 torchvision==0.29.1)
    python bench/model.py --cases tiny_train --repeats 3 --threads 1

Prints JSON. Each case runs in its own child process and reports its own peak resident memory, both sides at
``--threads`` threads (BLAS threads for us, ``torch.set_num_threads`` for torch; default every core):
- ``tiny_train``, ``resnet18_fpn_train``: one training iteration (forward + backward + SGD step), batch of 4
  shapes images at 128 px, median seconds over ``--repeats`` iterations after one warm-up (torchvision's
  ``tiny`` is ``bench/train_torchvision.py``'s: every setting of our config, the narrow ResNet included);
- ``r50_fpn_infer``: inference on one 800x1216 image (median seconds per image), same random weights
  (``minimaskrcnn.testing.random_state_dict``) on both sides.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import numpy as np
from _timing import median_time   # bench/ is on sys.path: these scripts run as python bench/<name>.py

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

CASES = ("tiny_train", "resnet18_fpn_train", "r50_fpn_infer")


def shapes_batch(n=4, size=128, seed=0):
    from minimaskrcnn.data.shapes import draw_shapes_image
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(n):
        image, masks, labels = draw_shapes_image(rng, size)
        boxes = []
        for m in masks:
            yy, xx = np.nonzero(m)
            boxes.append([xx.min(), yy.min(), xx.max() + 1, yy.max() + 1])
        images.append(image)
        targets.append({"boxes": np.array(boxes, np.float32), "labels": np.asarray(labels, np.int64),
                        "masks": masks.astype(np.uint8)})
    return images, targets


def big_image(seed=0):
    rng = np.random.default_rng(seed)
    im = rng.integers(0, 255, (800, 1216, 3), dtype=np.uint8)
    return im


# ---- ours ------------------------------------------------------------------------------------------------
def ours(case, repeats, threads):
    from minimaskrcnn.engine.threads import blas_threads

    with blas_threads(threads):
        return _ours(case, repeats)


def _ours(case, repeats):
    from minimaskrcnn import config
    from minimaskrcnn.model import build_model
    from minimaskrcnn.nn import SGD
    from minimaskrcnn.testing import random_state_dict

    if case.endswith("_train"):
        cfg = (config.tiny(num_classes=4) if case == "tiny_train"
               else config.resnet18_fpn(num_classes=4, min_size=128, max_size=128))
        model = build_model(cfg)
        opt = SGD(model.named_parameters(), lr=0.001)
        images, targets = shapes_batch()

        def step():
            model.forward_train(images, targets)
            model.zero_grad()
            model.backward()
            opt.step()

        return {"seconds_per_iter": median_time(step, repeats), "params": model.num_parameters()}
    model = build_model(config.r50_fpn(num_classes=91)).eval()
    model.load_state_dict(random_state_dict({k: v.shape for k, v in model.state_dict().items()}))
    image = big_image()
    dets = []
    seconds = median_time(lambda: dets.append(model.predict([image])[0]), repeats)
    return {"seconds_per_image": seconds, "detections": int(len(dets[-1]["scores"]))}


# ---- torchvision ---------------------------------------------------------------------------------------------
def torchvision_case(case, repeats, threads):
    import torch
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    from minimaskrcnn.testing import random_state_dict

    torch.set_num_threads(threads)
    if case.endswith("_train"):
        if case == "tiny_train":
            from minimaskrcnn import config
            from train_torchvision import build    # bench/train_torchvision.py: the tiny config in torchvision

            torch.manual_seed(0)
            model = build(config.tiny(num_classes=4)).train()
        else:
            backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3)
            model = MaskRCNN(backbone, num_classes=4, min_size=128, max_size=128).train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001, momentum=0.9)
        images, targets = shapes_batch()
        ims = [torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in images]
        tg = [{"boxes": torch.from_numpy(t["boxes"]), "labels": torch.from_numpy(t["labels"]),
               "masks": torch.from_numpy(t["masks"])} for t in targets]

        def step():
            losses = model(ims, tg)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()

        return {"seconds_per_iter": median_time(step, repeats), "params": sum(p.numel() for p in model.parameters())}
    # the frozen-BN structure of the COCO model (maskrcnn_resnet50_fpn with weights), same random weights as ours
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d
    model = MaskRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), num_classes=91).eval()
    sd = random_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()})
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    x = torch.from_numpy(big_image()).permute(2, 0, 1).float() / 255
    dets = []
    with torch.no_grad():
        seconds = median_time(lambda: dets.append(model([x])[0]), repeats)
    return {"seconds_per_image": seconds, "detections": int(len(dets[-1]["scores"]))}


def child(impl, case, repeats, threads):
    fn = ours if impl == "ours" else torchvision_case
    result = fn(case, repeats, threads)
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


def run_child(impl, case, repeats, threads):
    """Run one case in a fresh process; return its result and its peak memory."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", impl, case, "--repeats", str(repeats),
                             "--threads", str(threads)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    if proc.returncode != 0:
        return {"error": err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"}
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=CASES)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both sides (default: all)")
    ap.add_argument("--child", nargs=2, metavar=("IMPL", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.repeats, args.threads)
        return
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    report = {"cpu_count": os.cpu_count(), "threads": args.threads, "repeats": args.repeats, "cases": {}}
    for case in args.cases:
        entry = {"ours": run_child("ours", case, args.repeats, args.threads)}
        if have_torch:
            entry["torchvision"] = run_child("torchvision", case, args.repeats, args.threads)
            key = "seconds_per_iter" if case.endswith("_train") else "seconds_per_image"
            if key in entry["ours"] and key in entry["torchvision"]:
                entry["ours_over_torchvision_time"] = round(entry["ours"][key] / entry["torchvision"][key], 3)
        report["cases"][case] = entry
        print(json.dumps({case: entry}), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
