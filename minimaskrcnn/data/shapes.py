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
    <root>/shapes.json                       the generation parameters; written last: "this set is complete"
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

CATEGORIES = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "rectangle", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
]
SPLITS = ("train", "val")
FORMAT_VERSION = 1
MIN_VISIBLE_PIXELS = 16
IN_IMAGE = 0.75         # an object keeps at least this fraction of its area inside the image
_PLACEMENT_TRIES = 20


# ----------------------------------------------------------------------------------------------------
# Drawing one image
# ----------------------------------------------------------------------------------------------------

def shape_mask(category: str, cx: float, cy: float, size: float, angle: float, aspect: float,
               image_size: int) -> np.ndarray:
    """Rasterise one shape: an ``(image_size, image_size)`` bool mask of the pixels whose centre is inside.

    Args:
        category: 'circle', 'rectangle' or 'triangle'.
        cx, cy: centre in pixels (continuous coordinates: pixel (i, j) covers [j, j+1) x [i, i+1)).
        size: the object's extent in pixels: circle diameter, rectangle long side, triangle side / 0.9.
        angle: rotation in radians (ignored for circles).
        aspect: short side / long side of a rectangle, in (0, 1] (ignored otherwise).
    """
    centres = np.arange(image_size, dtype=np.float64) + 0.5
    x = centres[None, :] - cx                                          # (1, S)
    y = centres[:, None] - cy                                          # (S, 1)
    if category == "circle":
        return x * x + y * y <= (size / 2) ** 2
    # Coordinates in the object's own frame (rotate the image by -angle).
    c, s = np.cos(angle), np.sin(angle)
    u = c * x + s * y                                                  # (S, S)
    v = -s * x + c * y
    if category == "rectangle":
        return (np.abs(u) <= size / 2) & (np.abs(v) <= aspect * size / 2)
    if category == "triangle":
        # Equilateral triangle = intersection of three half-planes at distance r_in from the centre,
        # with outward normals 120 degrees apart. side = 0.9 * size, inradius = side / (2 sqrt 3).
        r_in = 0.9 * size / (2 * np.sqrt(3.0))
        inside = np.ones((image_size, image_size), dtype=bool)
        for k in range(3):
            phi = np.pi / 2 + 2 * np.pi * k / 3
            inside &= u * np.cos(phi) + v * np.sin(phi) <= r_in
        return inside
    raise ValueError(f"category must be one of circle/rectangle/triangle, got {category!r}")


def _gradient_background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """A linear colour gradient in a random direction: (S, S, 3) float64 in [0, 255]."""
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    phi = rng.uniform(0, 2 * np.pi)
    t = (np.arange(image_size) + 0.5) / image_size - 0.5
    ramp = np.clip(0.5 + np.cos(phi) * t[None, :] + np.sin(phi) * t[:, None], 0.0, 1.0)   # (S, S)
    return c0 + (c1 - c0) * ramp[..., None]


def _contrasting_colour(rng: np.random.Generator, avoid: list, min_distance: float = 80.0):
    """A random RGB colour at least ``min_distance`` (Euclidean, 0..255 scale) from every colour in
    ``avoid`` (the background under the object, and the objects drawn before it)."""
    for _ in range(100):
        colour = rng.uniform(0, 255, size=3)
        if all(np.linalg.norm(colour - a) >= min_distance for a in avoid):
            return colour
    return np.where(avoid[0] < 127.5, 255.0, 0.0)   # the RGB cube's corner farthest from the background


def shape_area(category: str, size: float, aspect: float) -> float:
    """The exact (continuous) area of a shape drawn by :func:`shape_mask`, in square pixels."""
    if category == "circle":
        return np.pi / 4 * size ** 2
    if category == "rectangle":
        return aspect * size ** 2
    return np.sqrt(3.0) / 4 * (0.9 * size) ** 2


def visible_masks(shapes: np.ndarray) -> np.ndarray:
    """The visible part of each of G shapes drawn in order: a pixel belongs to the last shape covering it.

    Args:
        shapes: (G, S, S) bool, each object's full silhouette (inside the image).
    Returns:
        (G, S, S) bool, disjoint.
    """
    owner = np.full(shapes.shape[1:], -1, dtype=np.int64)             # which object owns each pixel
    for k, shape in enumerate(shapes):
        owner[shape] = k                                                # later objects paint over
    return owner[None] == np.arange(len(shapes))[:, None, None]


def place_shapes(rng: np.random.Generator, image_size: int = 128, max_objects: int = 4,
                 object_size: tuple[float, float] = (10, 60), min_visible: float = 0.5):
    """Choose 1..max_objects shapes and where they go: (G, S, S) bool silhouettes and (G,) category ids.

    Each candidate (category, size, aspect, centre, angle) is accepted when at least ``IN_IMAGE`` of its
    area lies inside the image and, once it is drawn on top, every object (itself included) still shows
    ``min_visible`` of its silhouette and at least ``MIN_VISIBLE_PIXELS`` pixels; otherwise another
    place is tried, and after ``_PLACEMENT_TRIES`` the object is dropped.
    """
    names = [c["name"] for c in CATEGORIES]
    shapes, labels = [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(1, len(names) + 1))
        for _try in range(_PLACEMENT_TRIES):
            size, aspect = rng.uniform(*object_size), rng.uniform(0.5, 1.0)
            cx, cy = rng.uniform(0, image_size, size=2)
            shape = shape_mask(names[label - 1], cx, cy, size, rng.uniform(0, 2 * np.pi), aspect, image_size)
            if shape.sum() < max(MIN_VISIBLE_PIXELS, IN_IMAGE * shape_area(names[label - 1], size, aspect)):
                continue                                                # too much outside the image
            candidate = np.stack(shapes + [shape])                      # (G + 1, S, S)
            visible = visible_masks(candidate).sum(axis=(1, 2))
            full = candidate.sum(axis=(1, 2))
            if np.all(visible >= np.maximum(MIN_VISIBLE_PIXELS, min_visible * full)):
                shapes.append(shape)
                labels.append(label)
                break
    if not labels:                    # practically unreachable with the defaults
        raise RuntimeError(f"no object could be placed on a {image_size}x{image_size} image "
                           f"with object_size={object_size}")
    return np.stack(shapes), np.asarray(labels, dtype=np.int64)


def draw_shapes_image(rng: np.random.Generator, image_size: int = 128, max_objects: int = 4,
                      object_size: tuple[float, float] = (10, 60), min_visible: float = 0.5,
                      noise: tuple[float, float] = (2.0, 10.0)):
    """Draw one synthetic image and its instances.

    Args:
        rng: the image's own random generator (everything random is drawn from it, in a fixed order).
        image_size: S, the image is S x S.
        max_objects: each image holds 1..max_objects objects (fewer when some cannot be placed).
        object_size: (low, high) of the uniform distribution of object extents, in pixels.
        min_visible: the fraction of its silhouette every object keeps visible when later objects are
            drawn over it (see :func:`place_shapes`).
        noise: (low, high) of the uniform distribution of the Gaussian noise's sigma, in grey levels.

    Returns:
        image: (S, S, 3) uint8 RGB.
        masks: (G, S, S) bool, the visible pixels of each object, in drawing order (G >= 1).
        labels: (G,) int64 category ids (1 circle, 2 rectangle, 3 triangle).
    """
    background = _gradient_background(rng, image_size)                  # (S, S, 3) float
    shapes, labels = place_shapes(rng, image_size, max_objects, object_size, min_visible)
    masks = visible_masks(shapes)
    image, colours = background.copy(), []
    for shape, mask in zip(shapes, masks, strict=True):
        # A colour that stands out from the background at the centroid and from the other objects, so
        # that every occlusion boundary is visible.
        ys, xs = np.nonzero(shape)
        colours.append(_contrasting_colour(rng, [background[int(ys.mean()), int(xs.mean())], *colours]))
        image[mask] = colours[-1]
    image += rng.normal(0.0, rng.uniform(*noise), size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), masks, labels


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


def _params(num_train, num_val, image_size, seed, max_objects, object_size, min_visible) -> dict:
    return {"generator": "minimaskrcnn.data.shapes", "version": FORMAT_VERSION, "num_train": int(num_train),
            "num_val": int(num_val), "image_size": int(image_size), "seed": int(seed),
            "max_objects": int(max_objects), "object_size": [float(s) for s in object_size],
            "min_visible": float(min_visible)}


def _write_split(root: Path, split: str, num_images: int, params: dict, progress: bool) -> None:
    from PIL import Image
    from tqdm.auto import tqdm

    (root / split).mkdir(parents=True)
    images, annotations = [], []
    for i in tqdm(range(num_images), desc=f"shapes/{split}", disable=not progress, leave=False):
        image, masks, labels = draw_shapes_image(
            _image_rng(params["seed"], split, i), params["image_size"], params["max_objects"],
            tuple(params["object_size"]), params["min_visible"])
        file_name = f"{i:06d}.png"
        # compress_level=1: PNG is lossless at every level; 1 is several times faster than the default 6.
        Image.fromarray(image).save(root / split / file_name, compress_level=1)
        images.append({"id": i + 1, "file_name": file_name, "height": params["image_size"],
                       "width": params["image_size"]})
        annotations += _annotations_for(masks, labels, i + 1, len(annotations) + 1)
    coco = {"info": {"description": f"minimaskrcnn synthetic shapes, {split} split", **params},
            "licenses": [], "images": images, "annotations": annotations, "categories": CATEGORIES}
    with open(root / "annotations" / f"instances_{split}.json", "w") as f:
        json.dump(coco, f)


def make_shapes_dataset(root, num_train: int = 2000, num_val: int = 200, image_size: int = 128,
                        seed: int = 0, max_objects: int = 4, object_size: tuple[float, float] = (10, 60),
                        min_visible: float = 0.5, progress: bool = True) -> Path:
    """Generate the shapes data set into the new folder ``root`` (which must not exist) and return it.

    The set is written to ``<parent>/.<name>.partial`` first and renamed to ``root`` when complete, so
    an interrupted run never leaves a folder that looks like a data set. See the module docstring for
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
    params = _params(num_train, num_val, image_size, seed, max_objects, object_size, min_visible)
    partial = root.parent / f".{root.name}.partial"
    if partial.exists():             # left by an interrupted run: never a complete set, safe to delete
        shutil.rmtree(partial)
    (partial / "annotations").mkdir(parents=True)
    for split, n in (("train", num_train), ("val", num_val)):
        _write_split(partial, split, n, params, progress)
    with open(partial / "shapes.json", "w") as f:
        json.dump(params, f, indent=1)
    os.replace(partial, root)
    return root


def is_complete_shapes_dataset(root, **params) -> bool:
    """True when ``root`` holds a finished shapes set generated with exactly these parameters.

    ``params`` are make_shapes_dataset's keyword arguments (without ``progress``); missing ones take
    their defaults. Checks the marker file, both annotation files and the number of PNG files.
    """
    root = Path(root)
    wanted = _params(**{**_DEFAULTS, **params})
    try:
        with open(root / "shapes.json") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return False
    if found != wanted:
        return False
    for split in SPLITS:
        if not (root / "annotations" / f"instances_{split}.json").is_file():
            return False
        if sum(1 for _ in (root / split).glob("*.png")) != wanted[f"num_{split}"]:
            return False
    return True


_DEFAULTS = dict(num_train=2000, num_val=200, image_size=128, seed=0, max_objects=4, object_size=(10, 60),
                 min_visible=0.5)


def ensure_shapes_dataset(root, num_train: int = 2000, num_val: int = 200, image_size: int = 128,
                          seed: int = 0, max_objects: int = 4, object_size: tuple[float, float] = (10, 60),
                          min_visible: float = 0.5, progress: bool = True) -> Path:
    """Return ``root`` holding the shapes set with these parameters, generating it only when needed.

    * a complete set with the same parameters: reused as it is;
    * no folder, or an empty one: generated;
    * a shapes set with other parameters (its ``shapes.json`` says so): regenerated, then swapped in;
    * any other non-empty folder: ``FileExistsError`` (we never delete files we did not write).
    """
    root = Path(root)
    params = dict(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed,
                  max_objects=max_objects, object_size=tuple(object_size), min_visible=min_visible)
    if is_complete_shapes_dataset(root, **params):
        return root
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    if not root.exists():
        return make_shapes_dataset(root, **params, progress=progress)
    if not (root / "shapes.json").is_file():
        raise FileExistsError(f"ensure_shapes_dataset: {root} exists and is not a generated shapes data set "
                              "(no shapes.json); remove it or choose another root")
    fresh, old = root.parent / f".{root.name}.new", root.parent / f".{root.name}.old"
    for leftover in (fresh, old):       # our own names: only an interrupted earlier swap leaves them
        if leftover.exists():
            shutil.rmtree(leftover)
    make_shapes_dataset(fresh, **params, progress=progress)
    os.replace(root, old)
    os.replace(fresh, root)
    shutil.rmtree(old)
    return root
