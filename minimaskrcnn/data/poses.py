"""The built-in synthetic pose set (paper §5): stick persons with COCO's 17 person keypoints, in COCO format.

Like the shapes set (:mod:`minimaskrcnn.data.shapes`), every image is drawn from its own generator seeded by
``(seed, split, index)``: a data set is a pure function of its parameters, and a small set is the beginning
of a bigger one. One image (``image_size`` square, RGB):

* a gradient background (as the shapes set) and Gaussian pixel noise over everything;
* 1..``max_persons`` stick persons seen from the front (the person's left on the image's right), 45..110 px
  tall by default, in random poses (body tilt, arm and leg angles, elbow and knee bends), each in a flat
  colour with its eyes and nose marked in another; later persons occlude earlier ones;
* with probability 1/2 an occluding rectangle that is no one's.

Annotations, exactly as COCO's ``person_keypoints_*.json`` writes them: per person ``keypoints`` =
``[x1, y1, v1, ..., x17, y17, v17]`` in COCO's order (continuous pixel coordinates, pixel (i, j) covers
``[j, j+1) x [i, i+1)``), ``v = 2`` where the person shows at the keypoint's pixel, ``v = 1`` where something
drawn later covers it, ``v = 0`` (and x = y = 0) outside the image; ``num_keypoints`` (the triples with
v > 0); the visible pixels' mask as compressed RLE, its ``bbox`` and ``area``. The one category, ``person``,
carries COCO's ``keypoints`` names and ``skeleton``. Every person keeps half of its silhouette and 6
keypoints visible.

On disk: ``<root>/annotations/instances_<split>.json`` beside ``<root>/<split>/*.png`` (the layout
:class:`~minimaskrcnn.data.coco.CocoDataset` reads), and ``<root>/poses.json`` (parameters and the files
written), written last. ``python -m minimaskrcnn.data.poses --out DIR [--num-train N] [--num-val N]
[--image-size S] [--seed S]``.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from .poses_draw import CATEGORIES, draw_poses_image
from .shapes import _annotations_for, _write_bytes, _write_json_atomic

SPLITS = ("train", "val")
FORMAT_VERSION = 1
_DEFAULTS = dict(num_train=2000, num_val=200, image_size=128, seed=0, max_persons=3, person_size=(45, 110))


def _params(num_train, num_val, image_size, seed, max_persons, person_size) -> dict:
    return {"generator": "minimaskrcnn.data.poses", "version": FORMAT_VERSION, "num_train": int(num_train),
            "num_val": int(num_val), "image_size": int(image_size), "seed": int(seed),
            "max_persons": int(max_persons), "person_size": [float(s) for s in person_size]}


def keypoint_annotations(masks, keypoints, image_id: int, first_ann_id: int) -> list[dict]:
    """COCO annotations of one image's persons: mask (RLE, bbox, area) plus ``keypoints`` and ``num_keypoints``."""
    anns = _annotations_for(masks, np.ones(len(masks), np.int64), image_id, first_ann_id)
    for ann, kp in zip(anns, keypoints, strict=True):
        ann["keypoints"] = [v for x, y, vis in kp for v in (round(float(x), 2), round(float(y), 2), int(vis))]
        ann["num_keypoints"] = int((kp[:, 2] > 0).sum())
    return anns


def _write_split(root: Path, split: str, params: dict, progress: bool) -> dict:
    from PIL import Image
    from tqdm.auto import tqdm

    (root / split).mkdir(parents=True)
    images, annotations, files = [], [], {}
    for i in tqdm(range(params[f"num_{split}"]), desc=f"poses/{split}", disable=not progress, leave=False):
        rng = np.random.default_rng([params["seed"], SPLITS.index(split), i])
        image, masks, keypoints = draw_poses_image(rng, params["image_size"], params["max_persons"],
                                                   tuple(params["person_size"]))
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG", compress_level=1)
        file_name = f"{i:06d}.png"
        files[f"{split}/{file_name}"] = _write_bytes(root / split / file_name, png.getvalue())
        images.append({"id": i + 1, "file_name": file_name, "height": params["image_size"],
                       "width": params["image_size"]})
        annotations += keypoint_annotations(masks, keypoints, i + 1, len(annotations) + 1)
    coco = {"info": {"description": f"minimaskrcnn synthetic poses, {split} split", **params}, "licenses": [],
            "images": images, "annotations": annotations, "categories": CATEGORIES}
    name = f"annotations/instances_{split}.json"
    files[name] = _write_bytes(root / name, json.dumps(coco).encode())
    return files


def make_poses_dataset(root, num_train: int = 2000, num_val: int = 200, image_size: int = 128, seed: int = 0,
                       max_persons: int = 3, person_size=(45, 110), progress: bool = True) -> Path:
    """Generate the pose set into the new folder ``root`` (which must not exist) and return it; written to
    ``.<name>.partial`` beside it and renamed when complete (an interrupted run leaves no half set)."""
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"make_poses_dataset: {root} already exists; use ensure_poses_dataset to reuse it, "
                              "or choose another root")
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if int(value) != value or value < 0:
            raise ValueError(f"make_poses_dataset: {name} must be a non-negative integer, got {value!r}")
    if not 0 < person_size[0] <= person_size[1]:
        raise ValueError(f"make_poses_dataset: person_size must be (low, high) with 0 < low <= high, "
                         f"got {person_size!r}")
    params = _params(num_train, num_val, image_size, seed, max_persons, person_size)
    partial = root.parent / f".{root.name}.partial"
    if partial.exists():             # left by an interrupted run: never a complete set
        shutil.rmtree(partial)
    (partial / "annotations").mkdir(parents=True)
    files = {}
    for split in SPLITS:
        files.update(_write_split(partial, split, params, progress))
    _write_json_atomic(partial / "poses.json", {**params, "files": files})
    os.replace(partial, root)
    return root


def is_complete_poses_dataset(root, **params) -> bool:
    """True when ``root`` holds a finished pose set made with exactly these parameters (and all its files)."""
    root = Path(root)
    try:
        found = json.loads((root / "poses.json").read_text())
    except (OSError, ValueError):
        return False
    wanted = _params(**{**_DEFAULTS, **params})
    if not isinstance(found, dict) or {k: v for k, v in found.items() if k != "files"} != wanted:
        return False
    return all((root / rel).is_file() for rel in found.get("files", {"": None}) if rel)


def ensure_poses_dataset(root, progress: bool = True, report=None, **params) -> Path:
    """``root`` holding the pose set of these parameters (make_poses_dataset's): reused when complete,
    generated when the folder is absent or empty; any other folder raises ``FileExistsError`` (nothing a user
    made is deleted)."""
    root = Path(root)
    say = report or (lambda line: None)
    p = {**_DEFAULTS, **params}
    what = f"{p['num_train']} train + {p['num_val']} val images of {p['image_size']} px, seed {p['seed']}"
    if is_complete_poses_dataset(root, **p):
        say(f"pose data: reusing {root} ({what})")
        return root
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    if root.exists():
        raise FileExistsError(f"ensure_poses_dataset: {root} exists and is not a pose set with these parameters; "
                              "remove it or choose another folder")
    say(f"pose data: generating {what} into {root}")
    return make_poses_dataset(root, progress=progress, **p)


def main(argv=None) -> int:
    """``python -m minimaskrcnn.data.poses --out DIR [--num-train N] [--num-val N] [--image-size S] [--seed S]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m minimaskrcnn.data.poses",
                                description="Generate the synthetic pose (COCO person keypoints) data set.")
    p.add_argument("--out", required=True, help="the data set's folder (created; reused if it holds this set)")
    p.add_argument("--num-train", type=int, default=_DEFAULTS["num_train"])
    p.add_argument("--num-val", type=int, default=_DEFAULTS["num_val"])
    p.add_argument("--image-size", type=int, default=_DEFAULTS["image_size"])
    p.add_argument("--seed", type=int, default=_DEFAULTS["seed"])
    args = p.parse_args(argv)
    try:
        ensure_poses_dataset(args.out, num_train=args.num_train, num_val=args.num_val, image_size=args.image_size,
                             seed=args.seed, report=print)
    except (FileExistsError, ValueError, OSError) as e:
        print(f"minimaskrcnn.data.poses: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
