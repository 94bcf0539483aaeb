"""Drawing one image of the synthetic shapes set (its description: :mod:`minimaskrcnn.data.shapes`).

Rasterisation is NumPy on pixel centres ``(x + 0.5, y + 0.5)``, no anti-aliasing, so a mask is exactly the
set of pixels painted in the object's colour (before noise).
"""
from __future__ import annotations

import numpy as np

CATEGORIES = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "rectangle", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
]
MIN_VISIBLE_PIXELS = 16
IN_IMAGE = 0.75         # an object keeps at least this fraction of its area inside the image
_PLACEMENT_TRIES = 20


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
    image, masks = paint_shapes(rng, background, shapes, noise)
    return image, masks, labels


def paint_shapes(rng: np.random.Generator, background: np.ndarray, shapes: np.ndarray, noise: tuple[float, float]):
    """Paint full shape masks (G, S, S) bool, in drawing order, over a (S, S, 3) float background, then add
    Gaussian noise: ``(image (S, S, 3) uint8, masks (G, S, S) bool visible pixels)``."""
    masks = visible_masks(shapes)
    image, colours = background.copy(), []
    for shape, mask in zip(shapes, masks, strict=True):
        # A colour that stands out from the background at the centroid and from the other objects, so
        # that every occlusion boundary is visible.
        ys, xs = np.nonzero(shape)
        colours.append(_contrasting_colour(rng, [background[int(ys.mean()), int(xs.mean())], *colours]))
        image[mask] = colours[-1]
    image += rng.normal(0.0, rng.uniform(*noise), size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), masks
