"""The harder synthetic set, ``kind='hard'`` of :mod:`minimaskrcnn.data.shapes`: eight shape classes that
occlude each other, on larger images. Built for the paper's ablations (``python -m minimaskrcnn ablate``).

Why another set. The demo set's three classes rarely share a RoI, and its objects (10-60 px on 128 px images)
are pooled from the FPN's finest level, so neither of the paper's two mask lessons can show on it:

* **classes must compete inside a RoI** for Table 2b (a per-pixel softmax over classes against independent
  per-class sigmoids) and for class-specific vs class-agnostic masks. Here most objects after the first are
  placed *overlapping an object of another class* (``OVERLAP_PROB``), and may hide up to 70% of it
  (``min_visible`` 0.3): a RoI around one object then holds a large part of a second one, of another class.
* **the feature stride must be large against the objects** for Tables 2c/2d (RoIPool rounds a RoI to the
  stride: up to 8 px at stride 16 and 16 px at stride 32). Objects of 20-90 px on 192 px images are 1.25-5.6
  cells of a stride-16 map and 0.6-2.8 cells of a stride-32 map, about what COCO's small-to-medium objects
  (32-96 px on 800 px images) are at those strides. 192 px is the smallest image where a stride-32 map (6 x 6)
  still holds several objects side by side; 256 px would cost 1.8x per iteration for the same ratios.

The classes (``HARD_CATEGORIES``, ``size`` = the object's extent in pixels): circle, rectangle (aspect 0.5-1),
triangle (as the demo set's), ellipse (aspect 0.35-0.6), ring (inner diameter 0.55 of the outer), cross (two
bars of width 0.3), hexagram (two triangles), pentagon. Colours are random and independent of the class,
as in the demo set, so a class is recognised by its shape alone. Everything else (gradient background,
contrasting colours, noise, visible masks, determinism, COCO layout and manifest) is the demo set's.
"""
from __future__ import annotations

import numpy as np

from .shapes_draw import (IN_IMAGE, MIN_VISIBLE_PIXELS, _gradient_background, paint_shapes, shape_area, shape_mask,
                          visible_masks)

HARD_NAMES = ("circle", "rectangle", "triangle", "ellipse", "ring", "cross", "hexagram", "pentagon")
HARD_CATEGORIES = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(HARD_NAMES)]
HARD_DEFAULTS = dict(image_size=192, max_objects=6, object_size=(20.0, 90.0), min_visible=0.3)
OVERLAP_PROB = 0.75      # chance that an object after the first is placed over one of another class
RING_INNER = 0.55        # inner / outer diameter of a ring
CROSS_BAR = 0.3          # bar width / length of a cross
_PLACEMENT_TRIES = 20


def hard_shape_mask(category: str, cx: float, cy: float, size: float, angle: float, aspect: float,
                    image_size: int) -> np.ndarray:
    """Rasterise one shape of the hard set: (image_size, image_size) bool, pixel centres inside (as
    :func:`~minimaskrcnn.data.shapes_draw.shape_mask`, which draws circle, rectangle and triangle)."""
    if category in ("circle", "rectangle", "triangle"):
        return shape_mask(category, cx, cy, size, angle, aspect, image_size)
    centres = np.arange(image_size, dtype=np.float64) + 0.5
    x, y = centres[None, :] - cx, centres[:, None] - cy
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * x + s * y, -s * x + c * y                                # the object's own frame
    if category == "ellipse":                                           # aspect 0.35..0.6 given by the caller
        return (u / (size / 2)) ** 2 + (v / (aspect * size / 2)) ** 2 <= 1
    if category == "ring":
        r2 = x * x + y * y
        return (r2 <= (size / 2) ** 2) & (r2 >= (RING_INNER * size / 2) ** 2)
    if category == "cross":
        half, bar = size / 2, CROSS_BAR * size / 2
        return ((np.abs(u) <= half) & (np.abs(v) <= bar)) | ((np.abs(u) <= bar) & (np.abs(v) <= half))
    if category == "hexagram":
        return (shape_mask("triangle", cx, cy, size, angle, aspect, image_size)
                | shape_mask("triangle", cx, cy, size, angle + np.pi / 3, aspect, image_size))
    if category == "pentagon":                                          # circumradius size / 2
        r_in = size / 2 * np.cos(np.pi / 5)
        inside = np.ones((image_size, image_size), dtype=bool)
        for k in range(5):
            phi = np.pi / 2 + 2 * np.pi * k / 5 + np.pi / 5
            inside &= u * np.cos(phi) + v * np.sin(phi) <= r_in
        return inside
    raise ValueError(f"category must be one of {', '.join(HARD_NAMES)}, got {category!r}")


def hard_shape_area(category: str, size: float, aspect: float) -> float:
    """The exact (continuous) area of a shape drawn by :func:`hard_shape_mask`, in square pixels."""
    if category in ("circle", "rectangle", "triangle"):
        return shape_area(category, size, aspect)
    if category == "ellipse":
        return np.pi / 4 * aspect * size ** 2
    if category == "ring":
        return np.pi / 4 * (1 - RING_INNER ** 2) * size ** 2
    if category == "cross":
        return (2 * CROSS_BAR - CROSS_BAR ** 2) * size ** 2
    if category == "hexagram":          # 12 of the 9 small triangles that tile one big triangle
        return 4 / 3 * shape_area("triangle", size, aspect)
    return 5 / 2 * (size / 2) ** 2 * np.sin(2 * np.pi / 5)                 # pentagon


def place_hard_shapes(rng: np.random.Generator, image_size: int, max_objects: int, object_size, min_visible):
    """Choose 1..max_objects shapes: (G, S, S) bool silhouettes and (G,) category ids.

    After the first, an object is placed with probability ``OVERLAP_PROB`` over an earlier object (its centre
    0.3..0.8 of their mean size away, in a random direction) and gets another class than that one; otherwise
    anywhere, of any class. Acceptance as the demo set's (:func:`~minimaskrcnn.data.shapes_draw.place_shapes`):
    ``IN_IMAGE`` of it inside the image, every object keeps ``min_visible`` of its silhouette and
    ``MIN_VISIBLE_PIXELS`` pixels; ``_PLACEMENT_TRIES`` tries, then the object is dropped.
    """
    shapes, labels, centres = [], [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        over = int(rng.integers(len(labels))) if labels and rng.uniform() < OVERLAP_PROB else None
        if over is None:
            label = int(rng.integers(1, len(HARD_NAMES) + 1))
        else:       # another class than the object it covers: the classes compete inside one RoI
            label = int(rng.choice([k for k in range(1, len(HARD_NAMES) + 1) if k != labels[over]]))
        name = HARD_NAMES[label - 1]
        for _try in range(_PLACEMENT_TRIES):
            size = rng.uniform(*object_size)
            aspect = rng.uniform(0.35, 0.6) if name == "ellipse" else rng.uniform(0.5, 1.0)
            if over is None:
                cx, cy = rng.uniform(0, image_size, size=2)
            else:
                ox, oy, osize = centres[over]
                dist, phi = rng.uniform(0.3, 0.8) * (size + osize) / 2, rng.uniform(0, 2 * np.pi)
                cx, cy = ox + dist * np.cos(phi), oy + dist * np.sin(phi)
            shape = hard_shape_mask(name, cx, cy, size, rng.uniform(0, 2 * np.pi), aspect, image_size)
            if shape.sum() < max(MIN_VISIBLE_PIXELS, IN_IMAGE * hard_shape_area(name, size, aspect)):
                continue
            candidate = np.stack(shapes + [shape])
            visible = visible_masks(candidate).sum(axis=(1, 2))
            if np.all(visible >= np.maximum(MIN_VISIBLE_PIXELS, min_visible * candidate.sum(axis=(1, 2)))):
                shapes.append(shape)
                labels.append(label)
                centres.append((cx, cy, size))
                break
    if not labels:
        raise RuntimeError(f"no object could be placed on a {image_size}x{image_size} image "
                           f"with object_size={object_size}")
    return np.stack(shapes), np.asarray(labels, dtype=np.int64)


def draw_hard_image(rng: np.random.Generator, image_size: int = 192, max_objects: int = 6,
                    object_size: tuple[float, float] = (20.0, 90.0), min_visible: float = 0.3,
                    noise: tuple[float, float] = (2.0, 10.0)):
    """Draw one image of the hard set: ``(image (S, S, 3) uint8, masks (G, S, S) bool visible pixels, labels
    (G,) int64 in 1..8)``, everything drawn from ``rng`` in a fixed order (arguments as
    :func:`~minimaskrcnn.data.shapes_draw.draw_shapes_image`)."""
    background = _gradient_background(rng, image_size)
    shapes, labels = place_hard_shapes(rng, image_size, max_objects, object_size, min_visible)
    image, masks = paint_shapes(rng, background, shapes, noise)
    return image, masks, labels
