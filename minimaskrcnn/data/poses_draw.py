"""Drawing one image of the synthetic pose set (its description: :mod:`minimaskrcnn.data.poses`).

A stick person is a set of capsules (segments with a radius) and discs between COCO's 17 person keypoints,
seen from the front: the person's left side is on the image's right, as in a photo of someone facing the
camera. Rasterisation is on pixel centres ``(x + 0.5, y + 0.5)``, no anti-aliasing, as the shapes set.
"""
from __future__ import annotations

import numpy as np

from .keypoints import COCO_PERSON_KEYPOINTS, COCO_PERSON_SKELETON
from .shapes_draw import _contrasting_colour, _gradient_background

CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO_PERSON_KEYPOINTS),
               "skeleton": [list(p) for p in COCO_PERSON_SKELETON]}]
K = len(COCO_PERSON_KEYPOINTS)
KP = {n: i for i, n in enumerate(COCO_PERSON_KEYPOINTS)}
MIN_VISIBLE_KEYPOINTS = 6      # every person keeps this many keypoints visible (v = 2)
_PLACEMENT_TRIES = 20
# Body proportions, in units of the person's height h (ankles to the top of the head).
_HEAD_R, _NECK, _HEAD_UP = 0.085, 0.30, 0.13
_SHOULDER, _HIP = 0.12, 0.08
_UPPER_ARM, _FOREARM, _THIGH, _SHIN = 0.17, 0.15, 0.24, 0.23
# (from, to, radius / h) capsules drawn for each person; 'neck' and 'pelvis' are the mid-points.
_LIMBS = (("neck", "pelvis", 0.075), ("left_shoulder", "right_shoulder", 0.04), ("left_hip", "right_hip", 0.05),
          ("left_shoulder", "left_elbow", 0.035), ("right_shoulder", "right_elbow", 0.035),
          ("left_elbow", "left_wrist", 0.03), ("right_elbow", "right_wrist", 0.03),
          ("left_hip", "left_knee", 0.045), ("right_hip", "right_knee", 0.045),
          ("left_knee", "left_ankle", 0.04), ("right_knee", "right_ankle", 0.04), ("neck", "head", 0.03))


def _rot(v, angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def person_pose(rng: np.random.Generator, cx: float, cy: float, height: float) -> dict:
    """Random joint angles for a person of ``height`` px whose pelvis is at (cx, cy): every joint's (x, y),
    COCO's 17 keypoints plus 'neck', 'pelvis' and 'head' (the head's centre), and 'head_r' its radius."""
    h = height
    lean = rng.uniform(-0.35, 0.35)                  # the whole body's tilt, radians
    up = _rot(np.array([0.0, -1.0]), lean)           # the torso's direction, image y down
    side = _rot(np.array([1.0, 0.0]), lean)          # towards the person's left (image right)
    p = {"pelvis": np.array([cx, cy])}
    p["neck"] = p["pelvis"] + _NECK * h * up
    p["head"] = p["neck"] + _HEAD_UP * h * up
    r = _HEAD_R * h
    for s, name in ((1, "left"), (-1, "right")):
        p[f"{name}_shoulder"] = p["neck"] + s * _SHOULDER * h * side
        p[f"{name}_hip"] = p["pelvis"] + s * _HIP * h * side
        # arm: angle from hanging down, outwards positive; the elbow bends up to ~110 degrees either way
        a = rng.uniform(0.15, 2.6)
        down = -up
        d1 = _rot(down, -s * a)
        p[f"{name}_elbow"] = p[f"{name}_shoulder"] + _UPPER_ARM * h * d1
        p[f"{name}_wrist"] = p[f"{name}_elbow"] + _FOREARM * h * _rot(d1, -s * rng.uniform(-0.6, 1.9))
        b = rng.uniform(-0.1, 0.7)
        d2 = _rot(down, -s * b)
        p[f"{name}_knee"] = p[f"{name}_hip"] + _THIGH * h * d2
        p[f"{name}_ankle"] = p[f"{name}_knee"] + _SHIN * h * _rot(d2, s * rng.uniform(-0.2, 0.8))
        # the face, frontal: eyes above the centre, ears at the sides
        p[f"{name}_eye"] = p["head"] + s * 0.38 * r * side + 0.2 * r * up
        p[f"{name}_ear"] = p["head"] + s * 0.95 * r * side
    p["nose"] = p["head"] - 0.2 * r * up
    p["head_r"] = r
    return p


def _capsule(x, y, a, b, radius):
    """Pixels (centres x (1, W), y (H, 1)) within ``radius`` of the segment a-b."""
    d = b - a
    t = np.clip(((x - a[0]) * d[0] + (y - a[1]) * d[1]) / max(float(d @ d), 1e-12), 0, 1)
    return (x - a[0] - t * d[0]) ** 2 + (y - a[1] - t * d[1]) ** 2 <= radius ** 2


def person_silhouette(pose: dict, height: float, shape, offset=0.0):
    """(H, W) bool: the person's pixels on a canvas of ``shape``, its origin at ``-offset`` image pixels;
    and (H, W) bool: the face marks (eyes, nose), drawn in another colour, inside the silhouette."""
    # Only the window around the joints can be painted (every radius is below 0.1 h + the head's): rasterise
    # there, a few times faster than the whole canvas, with the same pixels.
    pts = np.stack([v for v in pose.values() if np.ndim(v) == 1]) + offset
    reach = 0.1 * height + 1.3 * pose["head_r"] + 2
    c0, r0 = (np.clip(np.floor(pts.min(axis=0) - reach), 0, None)).astype(int)
    c1, r1 = np.minimum(np.ceil(pts.max(axis=0) + reach).astype(int), (shape[1], shape[0]))
    mask, face = np.zeros(shape, bool), np.zeros(shape, bool)
    if c1 <= c0 or r1 <= r0:
        return mask, face
    x = np.arange(c0, c1, dtype=np.float64)[None, :] + 0.5 - offset
    y = np.arange(r0, r1, dtype=np.float64)[:, None] + 0.5 - offset
    win = np.zeros((r1 - r0, c1 - c0), bool)
    for a, b, r in _LIMBS:
        win |= _capsule(x, y, pose[a], pose[b], r * height)
    r = pose["head_r"]
    win |= _capsule(x, y, pose["head"], pose["head"], r)
    for ear in ("left_ear", "right_ear"):
        win |= _capsule(x, y, pose[ear], pose[ear], 0.3 * r)
    marks = np.zeros_like(win)
    for mark in ("left_eye", "right_eye", "nose"):
        marks |= _capsule(x, y, pose[mark], pose[mark], max(0.22 * r, 0.8))
    mask[r0:r1, c0:c1], face[r0:r1, c0:c1] = win, marks & win
    return mask, face


def keypoint_array(pose: dict) -> np.ndarray:
    """(17, 2) float64 x, y of COCO's person keypoints, in COCO's order."""
    return np.stack([pose[n] for n in COCO_PERSON_KEYPOINTS])


def keypoint_visibility(xy: np.ndarray, owner: np.ndarray, index: int) -> np.ndarray:
    """(17,) v per COCO: 0 outside the image (not labelled), 2 where the pixel under it shows person ``index``,
    1 where something drawn later covers it (labelled, occluded)."""
    H, W = owner.shape
    col, row = np.floor(xy[:, 0]).astype(int), np.floor(xy[:, 1]).astype(int)
    inside = (col >= 0) & (col < W) & (row >= 0) & (row < H)
    v = np.zeros(len(xy), np.int64)
    v[inside] = np.where(owner[row[inside], col[inside]] == index, 2, 1)
    return v


def draw_poses_image(rng: np.random.Generator, image_size: int = 128, max_persons: int = 3,
                     person_size: tuple[float, float] = (45, 110), min_visible: float = 0.5,
                     occluder_prob: float = 0.5, noise: tuple[float, float] = (2.0, 8.0)):
    """Draw one image of stick persons and their annotations.

    Persons are drawn in order, later ones over earlier ones, then (with ``occluder_prob``) one rectangle that
    belongs to no one. A person is kept only where every person still shows ``min_visible`` of its silhouette,
    ``MIN_VISIBLE_KEYPOINTS`` visible keypoints and at least 3/4 of its silhouette inside the image (20 tries).

    Returns:
        image (S, S, 3) uint8; masks (G, S, S) bool, each person's visible pixels; keypoints (G, 17, 3) float64
        ``[x, y, v]`` (v = 0: outside the image, written as 0, 0, 0; 1: occluded; 2: visible).
    """
    S = image_size
    background = _gradient_background(rng, S)
    pad = S // 2
    silhouettes, faces, poses = [], [], []

    def acceptable(sils, occluder=None):
        owner = np.full((S, S), -1)
        for k, s in enumerate(sils):
            owner[s] = k
        if occluder is not None:
            owner[occluder] = len(sils)
        for k, (s, pose) in enumerate(zip(sils, poses + [None])):
            pose = pose if pose is not None else candidate_pose
            vis = (owner == k).sum()
            if vis < max(16, min_visible * s.sum()):
                return False
            if (keypoint_visibility(keypoint_array(pose), owner, k) == 2).sum() < MIN_VISIBLE_KEYPOINTS:
                return False
        return True

    for _ in range(int(rng.integers(1, max_persons + 1))):
        for _try in range(_PLACEMENT_TRIES):
            height = rng.uniform(*person_size)
            cx, cy = rng.uniform(0, S, size=2)
            candidate_pose = person_pose(rng, cx, cy, height)
            big, face = person_silhouette(candidate_pose, height, (S + 2 * pad, S + 2 * pad), pad)
            sil = big[pad:pad + S, pad:pad + S]
            if sil.sum() < 0.75 * big.sum():
                continue
            if acceptable(silhouettes + [sil]):
                silhouettes.append(sil)
                faces.append(face[pad:pad + S, pad:pad + S])
                poses.append(candidate_pose)
                break
    if not poses:
        raise RuntimeError(f"no person could be placed on a {S}x{S} image with person_size={person_size}")
    candidate_pose = None
    occluder = None
    if rng.random() < occluder_prob:
        for _try in range(_PLACEMENT_TRIES):
            w, h = rng.uniform(10, 0.35 * S, size=2)
            x0, y0 = rng.uniform(-w / 2, S - w / 2), rng.uniform(-h / 2, S - h / 2)
            c = np.arange(S) + 0.5
            box = ((c[None, :] >= x0) & (c[None, :] <= x0 + w)) & ((c[:, None] >= y0) & (c[:, None] <= y0 + h))
            if acceptable(silhouettes, box):
                occluder = box
                break
    owner = np.full((S, S), -1)
    for k, s in enumerate(silhouettes):
        owner[s] = k
    if occluder is not None:
        owner[occluder] = len(silhouettes)
    masks = owner[None] == np.arange(len(silhouettes))[:, None, None]
    image, colours = background.copy(), []
    for k, sil in enumerate(silhouettes):
        ys, xs = np.nonzero(sil)
        colours.append(_contrasting_colour(rng, [background[int(ys.mean()), int(xs.mean())], *colours]))
        face_colour = _contrasting_colour(rng, [colours[-1]], 120.0)
        image[masks[k]] = colours[-1]
        image[masks[k] & faces[k]] = face_colour
    if occluder is not None:
        ys, xs = np.nonzero(occluder)
        image[occluder] = _contrasting_colour(rng, [background[int(ys.mean()), int(xs.mean())], *colours])
    image += rng.normal(0.0, rng.uniform(*noise), size=image.shape)
    keypoints = np.zeros((len(poses), K, 3))
    for k, pose in enumerate(poses):
        xy = keypoint_array(pose)
        v = keypoint_visibility(xy, owner, k)
        keypoints[k] = np.where(v[:, None] > 0, np.concatenate([xy, v[:, None]], axis=1), 0.0)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), masks, keypoints
