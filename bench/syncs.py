"""Host-device transfers and syncs in one training iteration and one prediction, counted on the CuPy stand-in.

    python bench/syncs.py                    # the tiny config, a batch of 2 shapes images at 128 px
    python bench/syncs.py --config resnet18_fpn --images 4 --top 15

Runs on any machine (no GPU): ``minimaskrcnn.testing.fakecupy`` counts every ``asnumpy``/``.get()`` (to_host),
every copy of host data to the device (to_device), every ``float()``/``int()``/``bool()``/``.item()`` of a device
value (syncs), and the syncs CuPy makes inside ``nonzero``, boolean masks, ``bincount``, ... (hidden_syncs).
On a GPU each sync waits for the device to finish its queue: a count that grows with the boxes or the
parameters, in a Python loop, is what to bring down. Prints the totals and the source lines that cause most.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    from minimaskrcnn import backend, config
    from minimaskrcnn.data.shapes import draw_shapes_image
    from minimaskrcnn.engine.trainer import Trainer
    from minimaskrcnn.model import build_model
    from minimaskrcnn.testing import fakecupy

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="tiny", choices=("tiny", "resnet18_fpn"))
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--top", type=int, default=10, help="source lines to show per kind")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    images, targets = [], []
    for _ in range(args.images):
        image, masks, labels = draw_shapes_image(rng, args.size)
        boxes = [[xx.min(), yy.min(), xx.max() + 1, yy.max() + 1] for yy, xx in (np.nonzero(m) for m in masks)]
        images.append(image)
        targets.append({"boxes": np.array(boxes, np.float32).reshape(-1, 4), "labels": np.asarray(labels, np.int64),
                        "masks": np.asarray(masks, np.uint8)})
    cfg = getattr(config, args.config)(num_classes=4, min_size=args.size, max_size=args.size)
    report = {}
    with backend.use_fake_cupy(fakecupy):
        model = build_model(cfg).to("cuda")
        trainer = Trainer(model, loader=None, out_dir=".", max_iters=2, progress=False)
        trainer.step(images, targets)                     # the first step creates the momentum buffers
        with fakecupy.counting() as stats:
            trainer.step(images, targets)
        report["train_iteration"] = _summary(stats, args.top)
        model.eval()
        with fakecupy.counting() as stats:
            model.predict(images)
        report["predict"] = _summary(stats, args.top)
    print(json.dumps({"config": args.config, "images": args.images, "size": args.size, **report}, indent=1))


def _summary(stats, top):
    return {"total": stats.total(),
            "where": {k: dict(stats.where[k].most_common(top)) for k in stats.KINDS if stats.where[k]}}


if __name__ == "__main__":
    main()
