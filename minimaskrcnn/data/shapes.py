"""The built-in synthetic data set: coloured circles, rectangles and triangles, in COCO format.

Every image is drawn from its own random generator, seeded by ``(seed, split, index)``, so a data set is a
pure function of its parameters: the same seed gives the same pixels on any machine, and the first 20
images of a 2,000-image set are the 20 images of a 20-image set.

One image (``image_size`` x ``image_size``, RGB):

* background: a linear gradient between two random colours in a random direction;
* 1..``max_objects`` objects, each a circle, a rotated rectangle (aspect 1:1 to 2:1) or a rotated
  equilateral triangle, ``object_size`` pixels across (default 10..60), in a flat random colour that
  differs clearly from the background under it and from the other objects;
* objects are drawn in order, so later ones occlude earlier ones; each object's mask is its *visible*
  pixels. A new object is only placed where every object keeps at least ``min_visible`` of its pixels
  (and 16 pixels at least), and at most a quarter of a shape may lie outside the image; otherwise another
  place is tried, and after 20 failures the object is left out. So no object is ever drawn without an
  annotation, and no annotation is a sliver;
* Gaussian pixel noise over everything (sigma 2..10 grey levels).

Rasterisation is NumPy on pixel centres ``(x + 0.5, y + 0.5)``, no anti-aliasing, so a mask is exactly
the set of pixels painted in the object's colour (before noise).

On disk (the layout :class:`minimaskrcnn.data.coco.CocoDataset` reads)::

    <root>/annotations/instances_train.json   COCO JSON, masks as compressed RLE (exact, unlike polygons)
    <root>/annotations/instances_val.json
    <root>/train/000000.png ...
    <root>/val/000000.png ...
    <root>/shapes.json                       the parameters and the list of files written; written last:
                                             "this set is complete"

``kind='hard'`` draws the harder set of the paper's ablations instead (eight classes that occlude each other,
192 px images: :mod:`minimaskrcnn.data.shapes_hard`), with the same layout, manifest and guarantees.

From the command line: ``python -m minimaskrcnn.data.shapes --out DIR [--num-train N] [--num-val N]
[--image-size S] [--seed S] [--kind shapes|hard]``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from .shapes_draw import (  # noqa: F401  (re-exported: the generator's public names live here)
    CATEGORIES,
    IN_IMAGE,
    MIN_VISIBLE_PIXELS,
    draw_shapes_image,
    place_shapes,
    shape_area,
    shape_mask,
    visible_masks,
)
from .shapes_hard import HARD_CATEGORIES, HARD_DEFAULTS, draw_hard_image

SPLITS = ("train", "val")
KINDS = ("shapes", "hard")
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------------
# Writing a COCO-format folder
# ----------------------------------------------------------------------------------------------------

def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Image ``index`` of ``split`` has its own generator: sets of any size share their first images."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _annotations_for(masks: np.ndarray, labels: np.ndarray, image_id: int, first_ann_id: int) -> list[dict]:
    """COCO annotations (compressed RLE, pycocotools' bbox and area) for the masks of one image."""
    from pycocotools import mask as mask_util

    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    boxes = mask_util.toBbox(rles)               # (G, 4) x, y, w, h of the mask's pixel extent
    areas = mask_util.area(rles)
    return [{"id": first_ann_id + g, "image_id": image_id, "category_id": int(labels[g]),
             "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
             "area": float(areas[g]), "bbox": [float(b) for b in boxes[g]], "iscrowd": 0}
            for g, rle in enumerate(rles)]


def _params(num_train, num_val, image_size, seed, max_objects, object_size, min_visible, kind="shapes") -> dict:
    if kind not in KINDS:
        raise ValueError(f"shapes data: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    params = {"generator": "minimaskrcnn.data.shapes", "version": FORMAT_VERSION, "num_train": int(num_train),
              "num_val": int(num_val), "image_size": int(image_size), "seed": int(seed),
              "max_objects": int(max_objects), "object_size": [float(s) for s in object_size],
              "min_visible": float(min_visible)}
    if kind != "shapes":   # the demo set's parameters (and so its shapes.json) stay exactly as they were
        params["kind"] = kind
    return params


def _write_split(root: Path, split: str, num_images: int, params: dict, progress: bool) -> dict:
    """Write one split's images and annotation file; returns the manifest of what it wrote."""
    from PIL import Image
    from tqdm.auto import tqdm

    (root / split).mkdir(parents=True)
    images, annotations, files = [], [], {}
    for i in tqdm(range(num_images), desc=f"shapes/{split}", disable=not progress, leave=False):
        draw = draw_hard_image if params.get("kind") == "hard" else draw_shapes_image
        image, masks, labels = draw(_image_rng(params["seed"], split, i), params["image_size"],
                                    params["max_objects"], tuple(params["object_size"]), params["min_visible"])
        file_name = f"{i:06d}.png"
        png = io.BytesIO()
        # compress_level=1: PNG is lossless at every level; 1 is several times faster than the default 6.
        Image.fromarray(image).save(png, format="PNG", compress_level=1)
        files[f"{split}/{file_name}"] = _write_bytes(root / split / file_name, png.getvalue())
        images.append({"id": i + 1, "file_name": file_name, "height": params["image_size"],
                       "width": params["image_size"]})
        annotations += _annotations_for(masks, labels, i + 1, len(annotations) + 1)
    coco = {"info": {"description": f"minimaskrcnn synthetic shapes, {split} split", **params},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": HARD_CATEGORIES if params.get("kind") == "hard" else CATEGORIES}
    name = f"annotations/instances_{split}.json"
    files[name] = _write_bytes(root / name, json.dumps(coco).encode())
    return files


def _write_bytes(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path``; returns its digest, for the manifest."""
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()[:32]


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:32]
    except OSError:
        return None


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def make_shapes_dataset(root, num_train: int = 2000, num_val: int = 200, image_size: int = 128,
                        seed: int = 0, max_objects: int = 4, object_size: tuple[float, float] = (10, 60),
                        min_visible: float = 0.5, progress: bool = True, kind: str = "shapes") -> Path:
    """Generate the shapes data set into the new folder ``root`` (which must not exist) and return it.

    The set is written to ``<parent>/.<name>.partial`` first and renamed to ``root`` when complete, so
    an interrupted run never leaves a folder that looks like a data set. ``shapes.json``, written last,
    holds the parameters and the manifest (``files``: relative path -> SHA-256 prefix) of every file
    written, so that a later regeneration deletes those and nothing else. See the module docstring for
    what is drawn and :func:`draw_shapes_image` for the parameters.
    """
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"make_shapes_dataset: {root} already exists; use ensure_shapes_dataset "
                              "to reuse it, or choose another root")
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if int(value) != value or value < 0:
            raise ValueError(f"make_shapes_dataset: {name} must be a non-negative integer, got {value!r}")
    if not 0 < object_size[0] <= object_size[1]:
        raise ValueError(f"make_shapes_dataset: object_size must be (low, high) with 0 < low <= high, "
                         f"got {object_size!r}")
    params = _params(num_train, num_val, image_size, seed, max_objects, object_size, min_visible, kind)
    partial = root.parent / f".{root.name}.partial"
    if partial.exists():             # left by an interrupted run: never a complete set, safe to delete
        shutil.rmtree(partial)
    (partial / "annotations").mkdir(parents=True)
    files = {}
    for split, n in (("train", num_train), ("val", num_val)):
        files.update(_write_split(partial, split, n, params, progress))
    _write_json_atomic(partial / "shapes.json", {**params, "files": files})
    os.replace(partial, root)
    return root


def _read_marker(root: Path) -> dict | None:
    try:
        found = json.loads((root / "shapes.json").read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def is_complete_shapes_dataset(root, **params) -> bool:
    """True when ``root`` holds a finished shapes set generated with exactly these parameters.

    ``params`` are make_shapes_dataset's keyword arguments (without ``progress``); missing ones take
    their defaults. Checks the marker file and that every file of its manifest is there (a set written
    before manifests: both annotation files and the number of PNG files).
    """
    root = Path(root)
    wanted = _params(**{**_DEFAULTS, **params})
    found = _read_marker(root)
    if found is None or {k: v for k, v in found.items() if k != "files"} != wanted:
        return False
    if "files" in found:
        return all((root / rel).is_file() for rel in found["files"])
    for split in SPLITS:
        if not (root / "annotations" / f"instances_{split}.json").is_file():
            return False
        if sum(1 for _ in (root / split).glob("*.png")) != wanted[f"num_{split}"]:
            return False
    return True


_DEFAULTS = dict(num_train=2000, num_val=200, image_size=128, seed=0, max_objects=4, object_size=(10, 60),
                 min_visible=0.5, kind="shapes")


def ensure_shapes_dataset(root, num_train: int = 2000, num_val: int = 200, image_size: int = 128,
                          seed: int = 0, max_objects: int = 4, object_size: tuple[float, float] = (10, 60),
                          min_visible: float = 0.5, progress: bool = True, report=None, kind: str = "shapes") -> Path:
    """Return ``root`` holding the shapes set with these parameters, generating it only when needed.

    * a complete set with the same parameters: reused as it is;
    * no folder, or an empty one: generated;
    * a shapes set with other parameters (its ``shapes.json`` says so): regenerated. Only the files its
      manifest lists, unchanged since, are replaced; anything else in the folder (a user's notes, an edited
      image) stays, and a file of the user's where the new set needs one stops it (``FileExistsError``);
    * any other non-empty folder: ``FileExistsError`` (we never delete files we did not write).

    ``report``: called with one line saying what was done (e.g. ``print``); None says nothing.
    """
    root = Path(root)
    say = report or (lambda line: None)
    params = dict(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed,
                  max_objects=max_objects, object_size=tuple(object_size), min_visible=min_visible, kind=kind)
    what = f"{num_train} train + {num_val} val images of {image_size} px, seed {seed}"
    what += ", the hard kind" if kind == "hard" else ""
    if is_complete_shapes_dataset(root, **params):
        say(f"shapes data: reusing {root} ({what})")
        return root
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    if not root.exists():
        say(f"shapes data: generating {what} into {root}")
        return make_shapes_dataset(root, **params, progress=progress)
    old = _read_marker(root)
    if old is None:
        raise FileExistsError(f"ensure_shapes_dataset: {root} exists and is not a generated shapes data set "
                              "(no readable shapes.json); remove it or choose another root")
    if "files" not in old:
        raise FileExistsError(f"ensure_shapes_dataset: {root} holds a shapes set from an older version, which "
                              "kept no list of the files it wrote; remove it or choose another root")
    say(f"shapes data: {root} holds a set with other parameters; regenerating it ({what}), replacing only the "
        "files the generator wrote there")
    kept = _regenerate(root, params, old, progress)
    if kept:
        say(f"shapes data: kept {len(kept)} files in {root} that the generator did not write "
            f"(e.g. {kept[0]})")
    return root


def _regenerate(root: Path, params: dict, old: dict, progress: bool) -> list:
    """Swap a new set into ``root``, deleting only the files (of ``old``'s manifest, and of a swap that was
    interrupted) whose content is still what the generator wrote. Returns the other files, left in place."""
    fresh = root.parent / f".{root.name}.new"
    if fresh.exists():                  # our own name: only an interrupted earlier swap leaves it
        shutil.rmtree(fresh)
    make_shapes_dataset(fresh, **params, progress=progress)
    new = _read_marker(fresh)
    ours = {}                           # relative path -> digests the generator wrote there
    for manifest in (old.get("files", {}), old.get("new_files", {})):
        for rel, digest in manifest.items():
            ours.setdefault(rel, set()).add(digest)

    def is_ours(rel):
        return rel in ours and _digest(root / rel) in ours[rel]

    for rel in new["files"]:
        if (root / rel).exists() and not is_ours(rel):
            shutil.rmtree(fresh)
            raise FileExistsError(f"ensure_shapes_dataset: {root / rel} was not written by the generator (or was "
                                  "changed since) and the new set needs its place; move it away and run again")
    # From here until the new marker is written, shapes.json says "swapping" and lists both sets' files.
    _write_json_atomic(root / "shapes.json", {"swapping": True, "files": old.get("files", {}),
                                              "new_files": new["files"]})
    for rel in sorted(ours):
        if is_ours(rel):
            (root / rel).unlink()
    for rel in new["files"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(fresh / rel, root / rel)
    _write_json_atomic(root / "shapes.json", new)
    shutil.rmtree(fresh)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.name != "shapes.json" and str(p.relative_to(root)) not in new["files"])


def main(argv=None) -> int:
    """``python -m minimaskrcnn.data.shapes --out DIR [--num-train N] [--num-val N] [--image-size S]
    [--seed S]``: generate (or reuse) the shapes set in DIR."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m minimaskrcnn.data.shapes",
                                description="Generate the synthetic shapes data set in COCO format.")
    p.add_argument("--out", required=True, help="the data set's folder (created; reused if it holds this set)")
    p.add_argument("--num-train", type=int, default=_DEFAULTS["num_train"])
    p.add_argument("--num-val", type=int, default=_DEFAULTS["num_val"])
    p.add_argument("--image-size", type=int, default=None, help="default: 128 (shapes), 192 (hard)")
    p.add_argument("--seed", type=int, default=_DEFAULTS["seed"])
    p.add_argument("--kind", choices=KINDS, default="shapes",
                   help="shapes: the demo set; hard: 8 occluding classes on 192 px images (the ablations' set)")
    args = p.parse_args(argv)
    hard = HARD_DEFAULTS if args.kind == "hard" else {}
    try:
        ensure_shapes_dataset(args.out, num_train=args.num_train, num_val=args.num_val, seed=args.seed,
                              report=print, kind=args.kind, **{**hard, "image_size": args.image_size or
                                                               hard.get("image_size", _DEFAULTS["image_size"])})
    except (FileExistsError, ValueError, OSError) as e:
        print(f"minimaskrcnn.data.shapes: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
