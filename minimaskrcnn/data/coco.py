"""Read any folder in COCO's layout: images plus one JSON file of instance annotations per split.

::

    <root>/annotations/instances_<split>.json
    <root>/<split>/<file_name>            (file_name as written in the JSON's "images" list)

The JSON (https://cocodataset.org/#format-data) holds three lists: ``images`` (id, file_name, height,
width), ``categories`` (id, name) and ``annotations`` (id, image_id, category_id, bbox = [x, y, w, h],
segmentation, iscrowd, area). A segmentation is one of

* polygons: ``[[x1, y1, x2, y2, ...], ...]``, one list per connected part;
* uncompressed RLE: ``{"size": [h, w], "counts": [n0, n1, ...]}``, run lengths of alternating 0s and 1s
  down the columns (column-major: Fortran order), starting with 0s;
* compressed RLE: the same runs packed into a string (pycocotools' format; what our shapes set uses).

pycocotools turns all three into compressed RLE; we decode to a binary mask when an image is loaded.

As in Detectron and torchvision's references:

* category ids (any integers, COCO's run 1..90 with gaps) map to contiguous labels 1..K in id order;
  label 0 is the background. ``cat_id_to_label``, ``label_to_cat_id`` and ``class_names`` translate;
* crowd annotations (``iscrowd=1``: one RLE over a group of objects) are not training targets. They are
  left out of ``target['boxes']`` etc.; with ``include_crowd=True`` they come separately as
  ``target['crowd_boxes']`` and ``target['crowd_masks']``. The evaluator still sees them in the ground
  truth, where COCOeval uses them to ignore detections on crowds;
* degenerate annotations (a box of zero width or height after clipping to the image, an empty mask) are
  skipped and counted in ``dataset.skipped``; a one-line warning says how many.

Keypoints (paper §5): when a category lists ``keypoints`` names (COCO's ``person_keypoints_*.json``, our pose
set), each instance's ``keypoints`` field is read into ``target['keypoints']`` (G, K, 3) ``[x, y, v]``
(:mod:`minimaskrcnn.data.keypoints`; an annotation without one counts as K unlabelled keypoints). Without
``instances_<split>.json`` the reader takes ``person_keypoints_<split>.json``.

Mistakes in the files (bad JSON, a missing key, a wrong type, an unknown image or category id, a missing
or unreadable image) raise :class:`DatasetError` with a one-line message naming the file and the problem.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from .keypoints import category_keypoints, flip_indices, parse_keypoints


class DatasetError(ValueError):
    """A data set the reader cannot use; the message names the file and what is wrong with it."""


# ----------------------------------------------------------------------------------------------------
# Checking the JSON: every check names the file, the record and the field
# ----------------------------------------------------------------------------------------------------

def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool) and math.isfinite(x)


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read the annotation file ({e})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: the top level must be a JSON object, got {type(data).__name__}")
    return data


def _check_records(path, data: dict, key: str, fields: dict) -> list:
    """``data[key]`` must be a list of objects whose ``fields`` (name -> (test, description)) pass."""
    if key not in data:
        raise DatasetError(f"{path}: missing top-level key '{key}'")
    records = data[key]
    if not isinstance(records, list):
        raise DatasetError(f"{path}: '{key}' must be a list, got {type(records).__name__}")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DatasetError(f"{path}: {key}[{i}] must be an object, got {type(rec).__name__}")
        for name, (test, what) in fields.items():
            if name not in rec:
                raise DatasetError(f"{path}: {key}[{i}] has no '{name}'")
            if not test(rec[name]):
                raise DatasetError(f"{path}: {key}[{i}] '{name}' must be {what}, got {rec[name]!r:.80}")
    ids = Counter(rec["id"] for rec in records)
    dup = [i for i, n in ids.items() if n > 1]
    if dup:
        raise DatasetError(f"{path}: '{key}' has duplicate id {dup[0]}")
    return records


_POSITIVE_INT = (lambda x: _is_int(x) and x > 0, "a positive integer")
_INT = (_is_int, "an integer")
_IMAGE_FIELDS = {"id": _INT, "file_name": (lambda x: isinstance(x, str) and x != "", "a file name"),
                 "height": _POSITIVE_INT, "width": _POSITIVE_INT}
_CATEGORY_FIELDS = {"id": _INT, "name": (lambda x: isinstance(x, str), "a string")}
_ANNOTATION_FIELDS = {
    "id": _INT, "image_id": _INT, "category_id": _INT,
    "bbox": (lambda b: isinstance(b, list) and len(b) == 4 and all(_is_number(v) for v in b),
             "a list of 4 numbers [x, y, w, h]"),
    "segmentation": (lambda s: isinstance(s, (list, dict)), "a list of polygons or an RLE object"),
}


def _segmentation_to_rle(seg, height: int, width: int, where: str):
    """Polygons / uncompressed RLE / compressed RLE -> compressed RLE (None: no polygon with 3+ points)."""
    from pycocotools import mask as mask_util

    if isinstance(seg, list):
        polygons = []
        for poly in seg:
            if not (isinstance(poly, list) and all(_is_number(v) for v in poly)) or len(poly) % 2:
                raise DatasetError(f"{where}: a polygon must be a flat list of x, y numbers, "
                                   f"got {poly!r:.80}")
            if len(poly) >= 6:          # fewer than 3 points encloses nothing (and pycocotools would
                polygons.append(poly)   # read a 4-number list as a box)
        if not polygons:
            return None
        return mask_util.merge(mask_util.frPyObjects(polygons, height, width))
    if "counts" not in seg or "size" not in seg:
        raise DatasetError(f"{where}: an RLE segmentation needs 'counts' and 'size'")
    if list(seg["size"]) != [height, width]:
        raise DatasetError(f"{where}: RLE size {seg['size']} differs from the image's [height, width] "
                           f"= {[height, width]}")
    counts = seg["counts"]
    if isinstance(counts, list):        # uncompressed
        if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != height * width:
            raise DatasetError(f"{where}: uncompressed RLE counts must be non-negative integers summing to "
                               f"height * width = {height * width}")
        return mask_util.frPyObjects(seg, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii", errors="replace")
    if not isinstance(counts, bytes):
        raise DatasetError(f"{where}: RLE 'counts' must be a list of integers or a string, "
                           f"got {type(counts).__name__}")
    runs = _compressed_rle_runs(counts)
    if runs is None or min(runs, default=0) < 0 or sum(runs) != height * width:
        raise DatasetError(f"{where}: compressed RLE 'counts' do not decode to runs covering the image's "
                           f"height * width = {height * width} pixels"
                           + ("" if runs is None else f" (they cover {sum(runs)})"))
    return {"size": [height, width], "counts": counts}


def _compressed_rle_runs(counts: bytes) -> list | None:
    """The run lengths a compressed RLE string holds (pycocotools' ``rleFrString``: each run a little-endian
    sequence of 5-bit groups in chars from 48, bit 0x20 = "more follows", 0x10 in the last group = negative;
    runs after the second are differences from the run two before). None when the string ends mid-run."""
    runs, p, n = [], 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                return None
            c = counts[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


# ----------------------------------------------------------------------------------------------------
# The data set
# ----------------------------------------------------------------------------------------------------

class CocoDataset:
    """A COCO-format split: ``dataset[i] -> (image, target)``.

    Args:
        root: the folder holding ``annotations/`` and the image folders.
        split: e.g. ``'train'``, ``'val'`` or ``'val2017'``: reads ``annotations/instances_<split>.json``
            and images from ``<root>/<split>/``.
        include_crowd: also return crowd regions as ``target['crowd_boxes']``, ``target['crowd_masks']``.
        skip_empty_images: leave out images without any (non-crowd, non-degenerate) instance, as
            Detectron does for training. Evaluation wants them kept (the default).
        check_files: check at construction that every image file exists (fails early, before training).

    ``image, target = dataset[i]`` gives
        image: (H, W, 3) uint8 RGB (grey and RGBA files are converted; alpha is dropped).
        target: {'boxes': (G, 4) float32 (x1, y1, x2, y2) in pixels, clipped to the image,
                 'labels': (G,) int64 in 1..K, 'masks': (G, H, W) uint8 in {0, 1},
                 'image_id': int (the JSON's id)}, and 'keypoints' (G, K, 3) float32 ``[x, y, v]`` in a set
                 with keypoints (``keypoint_names``, ``skeleton``, ``keypoint_flip_indices`` say which).
    """

    def __init__(self, root, split: str, include_crowd: bool = False, skip_empty_images: bool = False,
                 check_files: bool = True):
        from pycocotools import mask as mask_util
        from pycocotools.coco import COCO

        self.root, self.split, self.include_crowd = Path(root), split, include_crowd
        self.ann_file = annotation_file(self.root, split)
        self.image_dir = self.root / split
        data = _load_json(self.ann_file)
        path = self.ann_file
        images = _check_records(path, data, "images", _IMAGE_FIELDS)
        categories = _check_records(path, data, "categories", _CATEGORY_FIELDS)
        annotations = _check_records(path, data, "annotations", _ANNOTATION_FIELDS)

        cats = sorted(categories, key=lambda c: c["id"])
        self.cat_id_to_label = {c["id"]: k + 1 for k, c in enumerate(cats)}
        self.label_to_cat_id = {k + 1: c["id"] for k, c in enumerate(cats)}
        self.class_names = ["__background__"] + [c["name"] for c in cats]
        image_by_id = {im["id"]: im for im in images}
        try:
            found = category_keypoints(path, categories)
        except ValueError as e:
            raise DatasetError(str(e)) from None
        self.keypoint_names, self.skeleton = found if found else ((), ())
        self.num_keypoints = len(self.keypoint_names)
        self.keypoint_flip_indices = flip_indices(self.keypoint_names) if found else None
        kp_cats = {c["id"] for c in categories if "keypoints" in c}

        # Per image: (label, box, rle) for instances and crowds, decoded to masks only in __getitem__.
        self._instances = {im["id"]: [] for im in images}
        self._crowds = {im["id"]: [] for im in images}
        self.skipped = Counter()
        for i, ann in enumerate(annotations):
            where = f"{path}: annotations[{i}] (id {ann['id']})"
            image = image_by_id.get(ann["image_id"])
            if image is None:
                raise DatasetError(f"{where}: image_id {ann['image_id']} is not in 'images'")
            if ann["category_id"] not in self.cat_id_to_label:
                raise DatasetError(f"{where}: category_id {ann['category_id']} is not in 'categories'")
            crowd = ann.setdefault("iscrowd", 0)
            if crowd not in (0, 1):
                raise DatasetError(f"{where}: 'iscrowd' must be 0 or 1, got {crowd!r:.40}")
            h, w = image["height"], image["width"]
            kp = self._read_keypoints(ann, ann["category_id"] in kp_cats, h, w, where)
            rle = _segmentation_to_rle(ann["segmentation"], h, w, where)
            area = 0 if rle is None else int(mask_util.area(rle))
            ann.setdefault("area", float(area))     # COCOeval reads 'area' and 'iscrowd' of every GT
            x, y, bw, bh = ann["bbox"]
            box = np.clip(np.array([x, y, x + bw, y + bh], np.float32), 0, np.array([w, h, w, h], np.float32))
            if box[2] <= box[0] or box[3] <= box[1]:
                self.skipped["zero-area box"] += 1
            elif area == 0:
                self.skipped["empty mask"] += 1
            else:
                (self._crowds if crowd else self._instances)[image["id"]].append(
                    (self.cat_id_to_label[ann["category_id"]], box, rle, kp))

        self.image_ids = [im["id"] for im in images
                          if not (skip_empty_images and not self._instances[im["id"]])]
        self.images = image_by_id
        if check_files:
            for image_id in self.image_ids:
                file = self.image_dir / image_by_id[image_id]["file_name"]
                if not file.is_file():
                    raise DatasetError(f"{file}: image file not found (listed in {path} as image id "
                                       f"{image_id})")
        if self.skipped:
            warnings.warn(f"{path}: {self.summary()}", stacklevel=2)

        # The ground truth for COCOeval, built from the checked (and completed) dict without re-reading.
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):    # pycocotools prints "creating index..."
            self.coco.createIndex()

    def _read_keypoints(self, ann: dict, has_names: bool, h: int, w: int, where: str):
        """(K, 3) keypoints of one annotation (None in a set without keypoints); completes the dict for COCOeval."""
        if "keypoints" in ann and not has_names:
            raise DatasetError(f"{where}: has 'keypoints' but its category {ann['category_id']} has no 'keypoints' "
                               "names (COCO lists them in the category)")
        if not self.num_keypoints:
            return None
        if not has_names:
            return np.zeros((self.num_keypoints, 3), np.float32)
        ann.setdefault("keypoints", [0] * (3 * self.num_keypoints))
        try:
            return parse_keypoints(ann, self.num_keypoints, h, w, where)
        except ValueError as e:
            raise DatasetError(str(e)) from None

    def summary(self) -> str:
        """One line: images, instances, crowds and skipped annotations."""
        n_inst = sum(len(self._instances[i]) for i in self.image_ids)
        n_crowd = sum(len(self._crowds[i]) for i in self.image_ids)
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        return (f"{len(self.image_ids)} images, {n_inst} instances, {n_crowd} crowd regions, "
                f"{len(self.class_names) - 1} categories; skipped degenerate annotations: {skipped}")

    def __repr__(self) -> str:
        return f"CocoDataset({str(self.root)!r}, {self.split!r}): {self.summary()}"

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_image(self, i: int) -> np.ndarray:
        """Image ``i`` as (H, W, 3) uint8 RGB."""
        info = self.images[self.image_ids[i]]
        file = self.image_dir / info["file_name"]
        image = read_rgb_image(file, f" (image id {info['id']})")
        if image.shape[:2] != (info["height"], info["width"]):
            raise DatasetError(f"{file}: image is {image.shape[0]}x{image.shape[1]} (HxW) but "
                               f"{self.ann_file} says {info['height']}x{info['width']}")
        return image

    def get_target(self, i: int) -> dict:
        """The target dict of image ``i`` (see the class docstring), without reading the image."""
        image_id = self.image_ids[i]
        h, w = self.images[image_id]["height"], self.images[image_id]["width"]
        instances = self._instances[image_id]
        labels, boxes, masks = _stack(instances, h, w)
        target = {"boxes": boxes, "labels": labels, "masks": masks, "image_id": image_id}
        if self.num_keypoints:
            target["keypoints"] = np.stack([kp for *_, kp in instances]) if instances else np.zeros(
                (0, self.num_keypoints, 3), np.float32)
        if self.include_crowd:
            _, target["crowd_boxes"], target["crowd_masks"] = _stack(self._crowds[image_id], h, w)
        return target

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a data set of {len(self)} images")
        i = i % len(self)
        return self.load_image(i), self.get_target(i)


def annotation_file(root, split) -> Path:
    """The annotation file of ``split`` under ``root``: ``annotations/instances_<split>.json``, or COCO's
    ``annotations/person_keypoints_<split>.json`` where only that exists (the former's path if neither does)."""
    ann = Path(root) / "annotations" / f"instances_{split}.json"
    keypoints = ann.with_name(f"person_keypoints_{split}.json")
    return keypoints if not ann.exists() and keypoints.exists() else ann


def read_rgb_image(path, context: str = "") -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; ``DatasetError`` naming the file if it is missing or unreadable.

    Grey, palette, grey+alpha, CMYK and RGBA files are converted (alpha is dropped, as Detectron2's reader
    does); 16-bit and 32-bit integer grey (PNG's 16-bit, PIL modes ``I;16*`` and ``I``) are scaled from
    0..65535 to 0..255, and float grey (``F``) from 0..1 when its values lie there (else clipped to 0..255),
    where PIL's own conversion would clip them to white.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode.startswith("I") or im.mode == "F":
                return _wide_grey_to_rgb(np.asarray(im), im.mode)
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found{context}") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the image ({e})") from None


def _wide_grey_to_rgb(a: np.ndarray, mode: str) -> np.ndarray:
    """A grey image of PIL mode ``I;16*``, ``I`` or ``F`` as (H, W, 3) uint8: 16-bit values scaled by 255/65535."""
    a = a.astype(np.float64)
    if mode == "F":
        a = a * 255.0 if a.size and np.nanmin(a) >= 0 and np.nanmax(a) <= 1 else a
    else:
        a = np.clip(a, 0, 65535) * (255.0 / 65535.0)
    grey = np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _stack(instances: list, height: int, width: int):
    """[(label, box, rle, keypoints), ...] -> labels (G,) int64, boxes (G, 4) float32, masks (G, H, W) uint8."""
    from pycocotools import mask as mask_util

    if not instances:
        return (np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros((0, height, width), np.uint8))
    labels = np.array([inst[0] for inst in instances], dtype=np.int64)
    boxes = np.stack([inst[1] for inst in instances])
    masks = mask_util.decode([inst[2] for inst in instances])        # (H, W, G), Fortran order
    return labels, boxes, np.ascontiguousarray(masks.transpose(2, 0, 1))
