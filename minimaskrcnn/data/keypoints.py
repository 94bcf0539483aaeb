"""Keypoint annotations in COCO's format (paper §5): the person keypoints, their skeleton and OKS sigmas, and
the checks the COCO reader applies to a ``keypoints`` field.

A COCO keypoint annotation holds ``keypoints = [x1, y1, v1, x2, y2, v2, ...]``, one triple per name of its
category's ``keypoints`` list, with ``v = 0`` not labelled (then x = y = 0), ``v = 1`` labelled but not visible
(occluded), ``v = 2`` labelled and visible; ``num_keypoints`` counts the triples with ``v > 0``. The category
carries ``keypoints`` (names) and ``skeleton`` (pairs of 1-based keypoint indices to draw as limbs).
"""
from __future__ import annotations

import math

import numpy as np

# COCO's 17 person keypoints, in COCO's order (person_keypoints_*.json, category 1).
COCO_PERSON_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle")
# COCO's skeleton: 1-based index pairs, as COCO writes them.
COCO_PERSON_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9), (8, 10), (9, 11),
    (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7))
# The per-keypoint OKS sigmas of pycocotools' COCOeval (Params.setKpParams), in the same order.
COCO_PERSON_SIGMAS = (0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87,
                      0.89, 0.89)
COCO_PERSON_SIGMAS = tuple(s / 10.0 for s in COCO_PERSON_SIGMAS)


def is_coco_person(names) -> bool:
    """True when ``names`` are COCO's 17 person keypoints in COCO's order (so COCO's sigmas apply)."""
    return tuple(names) == COCO_PERSON_KEYPOINTS


def flip_indices(names) -> np.ndarray:
    """(K,) int64: the keypoint each keypoint becomes in a left-right mirrored image (``left_x`` <-> ``right_x``,
    others stay), torchvision's reference ``_flip_coco_person_keypoints`` generalised to any names."""
    names = list(names)
    index = {n: i for i, n in enumerate(names)}
    out = []
    for n in names:
        if n.startswith("left_"):
            out.append(index.get("right_" + n[5:], index[n]))
        elif n.startswith("right_"):
            out.append(index.get("left_" + n[6:], index[n]))
        else:
            out.append(index[n])
    return np.asarray(out, np.int64)


def flip_keypoints(keypoints: np.ndarray, width: int, flip_inds) -> np.ndarray:
    """Mirror (G, K, 3) keypoints ``[x, y, v]`` in an image of ``width``: x -> width - x (continuous
    coordinates, as boxes), left and right swapped by ``flip_inds``; unlabelled ones stay (0, 0, 0)."""
    out = np.asarray(keypoints, np.float32)[:, flip_inds].copy()
    labelled = out[..., 2] > 0
    out[..., 0] = np.where(labelled, width - out[..., 0], 0)
    return out


def category_keypoints(path, categories: list) -> tuple | None:
    """The keypoint names and skeleton shared by the categories that have ``keypoints`` (None: no category has
    them). Raises ``ValueError`` naming the file and category for malformed fields or differing name lists."""
    found = None
    for i, cat in enumerate(categories):
        if "keypoints" not in cat:
            continue
        names = cat["keypoints"]
        where = f"{path}: categories[{i}] (id {cat['id']})"
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise ValueError(f"{where}: 'keypoints' must be a non-empty list of names, got {names!r:.80}")
        skeleton = cat.get("skeleton", [])
        if not (isinstance(skeleton, list) and all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(j, int) and 1 <= j <= len(names) for j in p)
                for p in skeleton)):
            raise ValueError(f"{where}: 'skeleton' must be a list of [i, j] pairs of 1-based keypoint indices "
                             f"(1..{len(names)}), got {skeleton!r:.80}")
        if found is not None and tuple(names) != found[0]:
            raise ValueError(f"{where}: its 'keypoints' names differ from another category's; one model predicts "
                             "one keypoint set")
        found = (tuple(names), tuple(tuple(p) for p in skeleton))
    return found


def parse_keypoints(ann: dict, num_keypoints: int, height: int, width: int, where: str) -> np.ndarray:
    """An annotation's ``keypoints`` as (K, 3) float32 ``[x, y, v]``; sets ``num_keypoints`` when missing.

    Raises ``ValueError`` (``where`` names the file and annotation) for a wrong length, v outside 0..2, a
    labelled keypoint outside the image ``[0, width] x [0, height]``, or a ``num_keypoints`` that disagrees.
    """
    kp = ann["keypoints"]
    if not isinstance(kp, list) or len(kp) != 3 * num_keypoints:
        n = len(kp) if isinstance(kp, list) else type(kp).__name__
        raise ValueError(f"{where}: 'keypoints' must be a list of {3 * num_keypoints} numbers ({num_keypoints} "
                         f"[x, y, v] triples, one per name of the category's 'keypoints'), got {n}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in kp):
        raise ValueError(f"{where}: 'keypoints' must hold finite numbers, got {kp!r:.80}")
    a = np.asarray(kp, np.float64).reshape(num_keypoints, 3)
    bad = np.nonzero(~np.isin(a[:, 2], (0, 1, 2)))[0]
    if bad.size:
        raise ValueError(f"{where}: keypoint {int(bad[0])} has visibility v = {a[bad[0], 2]:g}; v must be 0 (not "
                         "labelled), 1 (occluded) or 2 (visible)")
    labelled = a[:, 2] > 0
    outside = np.nonzero(labelled & ((a[:, 0] < 0) | (a[:, 0] > width) | (a[:, 1] < 0) | (a[:, 1] > height)))[0]
    if outside.size:
        k = int(outside[0])
        raise ValueError(f"{where}: keypoint {k} at ({a[k, 0]:g}, {a[k, 1]:g}) lies outside the "
                         f"{width}x{height} image")
    count = int(labelled.sum())
    if ann.setdefault("num_keypoints", count) != count:
        raise ValueError(f"{where}: 'num_keypoints' is {ann['num_keypoints']!r:.20} but {count} keypoints have "
                         "v > 0")
    return a.astype(np.float32)


def keypoint_sigmas(names, sigmas=None) -> np.ndarray:
    """The OKS sigmas for a keypoint set: ``sigmas`` when given (one per keypoint), COCO's for COCO's 17 person
    keypoints, else ``ValueError`` saying how to supply them."""
    if sigmas is not None:
        s = np.asarray(sigmas, np.float64).reshape(-1)
        if s.shape[0] != len(names) or not np.all(s > 0):
            raise ValueError(f"keypoint sigmas: need {len(names)} positive numbers (one per keypoint), got "
                             f"{[float(v) for v in np.asarray(sigmas).reshape(-1)]}")
        return s
    if is_coco_person(names):
        return np.asarray(COCO_PERSON_SIGMAS, np.float64)
    raise ValueError(f"keypoint sigmas: the data set's {len(names)} keypoints ({', '.join(list(names)[:3])}, ...) "
                     "are not COCO's 17 person keypoints, so COCO's OKS sigmas do not apply; give one sigma per "
                     "keypoint (--kp-sigmas, or the evaluator's sigmas argument)")
