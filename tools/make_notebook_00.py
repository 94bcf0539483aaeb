"""Build notebooks/00_instance_segmentation.ipynb (without outputs) from the cells below.

    python tools/make_notebook_00.py
"""
from notebook_builder import NotebookBuilder

NB = NotebookBuilder("00_instance_segmentation.ipynb")
md, code = NB.md, NB.code


md(r"""
# 00 · Instance segmentation: the task, the data, the metric

Before any layer of Mask R-CNN, this notebook pins down *what* it computes, *on what* data, and *how* it is
scored. You will:

1. see detection, semantic segmentation and instance segmentation side by side on one image;
2. meet the synthetic **shapes** data set that every later notebook trains on, and how it is drawn;
3. read the **COCO format** (the JSON, polygons and run-length encoding) and the category-id mapping;
4. follow an image through the model's input **transforms** (normalise, resize, pad to a stride of 32);
5. compute **COCO AP** on toy predictions: perfect ones score 1.0, shifted ones less, and why.
6. see the **whole pipeline** at a glance, every stage with its tensor shapes for one image.

> "Instance segmentation is challenging because it requires the correct detection of all objects in an image
> while also precisely segmenting each instance. It therefore combines elements from the classical computer
> vision tasks of object detection, where the goal is to classify individual objects and localize each using a
> bounding box, and semantic segmentation, where the goal is to classify each pixel into a fixed set of
> categories without differentiating object instances."
> — He, Gkioxari, Dollár, Girshick, *Mask R-CNN*, §1
""")

md("""
## Setup

The parameter cell is all you need to change: another seed draws other images; a bigger data set takes a
few seconds more.
""")

code("""
# Parameters (defaults keep the notebook well under a minute on a laptop CPU)
SEED = 0
NUM_VAL = 24            # images in the small shapes set generated below
IMAGE_SIZE = 128
DATA_ROOT = None        # None: a temporary folder; or e.g. "../data/shapes_nb" to keep the set
""")

code("""
import importlib.util
import inspect
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display
from matplotlib.patches import Polygon, Rectangle
from pycocotools import mask as mask_util

if importlib.util.find_spec("minimaskrcnn") is None:  # a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.abspath(".."))

from minimaskrcnn.data.coco import CocoDataset
from minimaskrcnn.data.shapes import (draw_shapes_image, make_shapes_dataset, shape_mask,
                                      visible_masks)
from minimaskrcnn.data.transforms import hflip
from minimaskrcnn.model.transform import (IMAGENET_MEAN, IMAGENET_STD, preprocess_batch, resize_target,
                                          resized_size)
from minimaskrcnn.engine.evaluator import evaluate_predictions
from minimaskrcnn.viz.detections import class_color, draw_target, plot_pr_curves

rng = np.random.default_rng(SEED)
plt.rcParams["figure.dpi"] = 80
NAMES = ["__background__", "circle", "rectangle", "triangle"]
""")

md("""
## 1. Three tasks on one image

One synthetic image, its objects and their masks come from `draw_shapes_image` (section 2 shows how).
From the same annotation we can draw the answer of each task:

* **object detection**: a class and a box per object;
* **semantic segmentation**: a class per *pixel*: two touching circles become one blob of "circle";
* **instance segmentation**: a class, a box *and* a mask per object, so every object stays separate.
""")

code("""
# Seed 11 happens to draw two circles that touch.
image, masks, labels = draw_shapes_image(np.random.default_rng(11), IMAGE_SIZE, max_objects=4)
boxes = np.array([[x.min(), y.min(), x.max() + 1, y.max() + 1] for y, x in (np.nonzero(m) for m in masks)],
                 dtype=np.float32)
semantic = (masks * labels[:, None, None]).sum(axis=0)            # (H, W): class per pixel, 0 = background
print("objects:", [NAMES[k] for k in labels])
print("semantic map values:", np.unique(semantic), " (classes present, nothing about how many objects)")

fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
axes[0].imshow(image); axes[0].set_title("image"); axes[0].set_axis_off()
draw_target(image, {"boxes": boxes, "labels": labels}, NAMES, ax=axes[1], title="object detection")
class_rgb = np.array([(0, 0, 0)] + [class_color(k) for k in (1, 2, 3)])   # row k: colour of class k
axes[2].imshow(class_rgb[semantic]); axes[2].set_title("semantic segmentation"); axes[2].set_axis_off()
# Instance segmentation: one colour per *object*, not per class.
inst = np.zeros(image.shape[:2] + (3,))
for i, m in enumerate(masks):
    inst[m] = plt.cm.tab10(i)[:3]
axes[3].imshow(inst); axes[3].set_title("instance segmentation"); axes[3].set_axis_off()
for b in boxes:
    axes[3].add_patch(Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, color="w", lw=1))
plt.show()
# Masks of different objects never share a pixel: each pixel belongs to at most one instance.
assert masks.sum(axis=0).max() <= 1
""")

md("""
## 2. The shapes data set

Real data sets (COCO: 118k training images) take days on a CPU. Our stand-in draws 128 × 128 images with
1–4 circles, rectangles and triangles, 10–60 pixels across, rotated, in random colours, over a colour gradient
with pixel noise. It is small enough to learn in minutes, but not trivial: most objects are COCO-"small"
(under 32² pixels), some are partly hidden or cut by the border, and AP at IoU 0.95 needs pixel-exact masks.

### 2.1 Rasterising a shape

Every shape is a test on pixel centres `(x + 0.5, y + 0.5)`: inside a circle, inside the rotated rectangle's
two slabs, inside the triangle's three half-planes. No anti-aliasing, so a mask is *exactly* the set of pixels
painted in the object's colour.
""")

code("""
print(inspect.getsource(shape_mask))
""")

code("""
fig, axes = plt.subplots(1, 3, figsize=(8, 2.8))
for ax, name in zip(axes, ["circle", "rectangle", "triangle"]):
    ax.imshow(shape_mask(name, 8.0, 8.0, 12, angle=0.3, aspect=0.6, image_size=16), cmap="gray")
    ax.set_title(name); ax.set_axis_off()
plt.show()
""")

md("""
### 2.2 Occlusion: masks are the *visible* pixels

Objects are drawn in order, later over earlier. The annotation of an object is what remains visible of it,
`visible_masks(shapes)`: each pixel goes to the last shape that covers it. When an object would be hidden
too much (less than half of it, or fewer than 16 pixels visible), the generator tries another place, so no
object is ever drawn without being annotated.
""")

code("""
full = np.stack([shape_mask("rectangle", 26, 28, 34, 0.2, 0.8, 64),
                 shape_mask("circle", 40, 38, 28, 0.0, 1.0, 64)])
visible = visible_masks(full)
fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
titles = ["rectangle (drawn first)", "circle (drawn second)", "visible rectangle", "visible circle"]
for ax, m, t in zip(axes, [full[0], full[1], visible[0], visible[1]], titles):
    ax.imshow(m, cmap="gray"); ax.set_title(t, fontsize=9); ax.set_axis_off()
plt.show()
assert np.array_equal(visible[0], full[0] & ~full[1]) and np.array_equal(visible[1], full[1])
""")

md("""
### 2.3 A data set on disk

`make_shapes_dataset(root, num_train, num_val, seed)` writes a COCO-format folder (section 3). Image *i* of a
split is drawn from its own generator seeded by `(seed, split, i)`: the set is a pure function of its
parameters, and regenerating it gives the same pixels. `ensure_shapes_dataset` generates only when the
folder is absent, writing to a hidden temporary folder first so an interrupted run never looks complete.
""")

code("""
root = Path(DATA_ROOT) if DATA_ROOT else Path(tempfile.mkdtemp()) / "shapes"
if not root.exists():
    t0 = time.perf_counter()
    make_shapes_dataset(root, num_train=0, num_val=NUM_VAL, image_size=IMAGE_SIZE, seed=SEED, progress=False)
    print(f"generated {NUM_VAL} images in {time.perf_counter() - t0:.2f} s")
for p in sorted(root.rglob("*"))[:8]:
    print(p.relative_to(root))
""")

md("""
## 3. The COCO format

A split is one JSON file, `annotations/instances_<split>.json`, beside a folder of images. It holds three
lists: `images` (id, file name, size), `categories` (id, name) and `annotations`, one per object:
`image_id`, `category_id`, `bbox = [x, y, width, height]` in pixels, `area`, `iscrowd` and a
`segmentation`.
""")

code("""
coco_json = json.loads((root / "annotations" / "instances_val.json").read_text())
print("keys:", list(coco_json))
print("images[0]:", coco_json["images"][0])
print("categories:", coco_json["categories"])
ann = dict(coco_json["annotations"][0])
ann["segmentation"] = {**ann["segmentation"], "counts": ann["segmentation"]["counts"][:30] + "..."}
print("annotations[0]:", ann)
""")

md("""
### 3.1 Run-length encoding (RLE)

A mask is stored as the lengths of alternating runs of 0s and 1s, reading the pixels **column by column**
(Fortran order), always starting with a run of 0s (possibly of length 0). That list is *uncompressed RLE*;
pycocotools packs the numbers into a short ASCII string, *compressed RLE*, which is what our shapes set stores
(exact, and small: a blob has few runs). Let us encode a tiny mask by hand and check against pycocotools.
""")

code("""
tiny = np.zeros((5, 6), np.uint8)
tiny[1:4, 2:5] = 1
tiny[0, 0] = 1
flat = tiny.ravel(order="F")                                   # column by column
runs, current, length = [], 0, 0
for v in flat:
    if v == current:
        length += 1
    else:
        runs.append(length); current, length = v, 1
runs.append(length)
print(tiny)
print("column-major pixels:", flat)
print("uncompressed RLE counts:", runs)

compressed = mask_util.encode(np.asfortranarray(tiny))
print("compressed RLE:", compressed)
from_ours = mask_util.frPyObjects({"size": list(tiny.shape), "counts": runs}, *tiny.shape)
assert np.array_equal(mask_util.decode(from_ours), tiny)
assert np.array_equal(mask_util.decode(compressed), tiny) and sum(runs) == tiny.size
""")

md("""
### 3.2 Polygons

Hand-labelled data (COCO's own) mostly stores polygons, `[[x1, y1, x2, y2, ...], ...]`, one list per
connected part. They are rasterised on demand; a pixel is in when the polygon covers it, so the pixel count
approximates the polygon's area (shoelace formula) up to the boundary pixels.
""")

code("""
poly = [4.0, 3.0, 26.0, 6.0, 20.0, 22.0, 7.0, 17.0]
rle = mask_util.merge(mask_util.frPyObjects([poly], 25, 30))
raster = mask_util.decode(rle)
x, y = np.array(poly[0::2]), np.array(poly[1::2])
shoelace = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
print(f"polygon area {shoelace:.1f}, rasterised pixels {raster.sum()}, RLE area {mask_util.area(rle)}")
fig, ax = plt.subplots(figsize=(3.5, 3))
ax.imshow(raster, cmap="Blues", extent=(0, 30, 25, 0))
ax.add_patch(Polygon(np.stack([x, y], 1), fill=False, color="r", lw=2))
ax.set_title("polygon (red) and its pixels"); plt.show()
assert abs(raster.sum() - shoelace) < 0.15 * shoelace
""")

md("""
### 3.3 Reading it: `CocoDataset` and the category mapping

`CocoDataset(root, split)` decodes any of the three encodings into `(G, H, W)` masks and returns targets the
model understands. COCO's category ids are not contiguous (1 to 90 with gaps for its 80 classes; ours are
1, 2, 3), but a classifier wants labels 1..K with 0 for the background. So the reader sorts the ids and
numbers them; `label_to_cat_id` maps predictions back for evaluation. Crowd regions (`iscrowd=1`) are
left out of the training targets, and degenerate annotations (zero-area boxes, empty masks) are skipped
and counted.
""")

code("""
val = CocoDataset(root, "val")
print(val)
print("cat_id_to_label:", val.cat_id_to_label, " class_names:", val.class_names)
image, target = val[0]
print({k: (v.shape, v.dtype) if hasattr(v, "shape") else v for k, v in target.items()})

# The same rule on COCO-like ids with gaps:
cat_ids = [90, 1, 13, 5]
cat_id_to_label = {c: k + 1 for k, c in enumerate(sorted(cat_ids))}
print("ids with gaps ->", cat_id_to_label)
assert all(val.label_to_cat_id[val.cat_id_to_label[c]] == c for c in val.cat_id_to_label)
display(draw_target(image, target, val.class_names))
""")

md("""
## 4. From an image to the network's input

Mask R-CNN (as torchvision's `GeneralizedRCNNTransform`, which ours matches bit for bit) does three things:

1. **normalise**: `(image / 255 − mean) / std` per channel, with ImageNet's statistics (the backbone was
   pre-trained on such inputs);
2. **resize** so the shorter side is `min_size` unless the longer side would exceed `max_size`
   (§3.1: "images are resized such that their scale (shorter edge) is 800 pixels"; Detectron caps the longer
   side at 1333): `scale = min(min_size / min(h, w), max_size / max(h, w))`, new size
   `floor(h·scale) × floor(w·scale)`.
   Boxes are scaled with the image, masks resized by nearest neighbour;
3. **pad** every image of the batch with zeros, bottom and right, to a common size that is a multiple of 32,
   the stride of the coarsest feature map, so every level of the feature pyramid lines up with the image.
""")

code("""
for h, w in [(128, 128), (480, 640), (100, 2000)]:
    print(f"{h:4d} x {w:4d} -> {resized_size(h, w, 800, 1333)}   (min_size 800, max_size 1333)")
assert resized_size(100, 2000, 800, 1333) == (66, 1333)        # the cap wins for long, thin images

images = [val[0][0], val[1][0][:100, :80]]                        # two images of different sizes
batch, sizes, originals = preprocess_batch(images, min_size=160, max_size=400)
print("batch", batch.shape, "resized sizes", sizes, "original sizes", originals)
assert batch.shape[2] % 32 == 0 and batch.shape[3] % 32 == 0

fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
axes[0].imshow(images[1]); axes[0].set_title(f"original {images[1].shape[:2]}")
for ax, i in zip(axes[1:], range(2)):
    # Undo the normalisation to show it: the zero padding comes out as the mean colour (grey).
    shown = batch[i].transpose(1, 2, 0) * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)
    ax.imshow(np.clip(shown, 0, 1))
    ax.add_patch(Rectangle((-0.5, -0.5), sizes[i][1], sizes[i][0], fill=False, color="yellow", lw=2))
    ax.set_title(f"batch[{i}]: image {tuple(sizes[i])}, padded to {batch.shape[2:]}", fontsize=9)
plt.show()

resized = resize_target(target, originals[0], sizes[0])
print("boxes before:", target["boxes"][0], " after:", resized["boxes"][0])
flipped_image, flipped = hflip(image, target)
assert np.allclose(flipped["boxes"][:, [0, 2]], image.shape[1] - target["boxes"][:, [2, 0]])
""")

md("""
## 5. How COCO scores a prediction

For each IoU threshold *t* in 0.50, 0.55, ..., 0.95, COCOeval sorts all detections of a class by score and
walks down the list: a detection whose IoU with a still-unmatched ground-truth object of its class is at least
*t* is a true positive, otherwise a false positive. That gives a precision-recall curve; AP is its
(interpolated) precision averaged at 101 recall levels, then averaged over classes and the ten thresholds.
Box IoU for `bbox`, mask IoU for `segm`.

The IoU of a 20 × 20 box shifted by *d* pixels along x is `(20 − d)·20 / ((20 + d)·20)`: a 2-pixel shift is
already IoU 0.82, which fails the thresholds from 0.85 up. Small objects must be localised to the pixel.
""")

code("""
def iou_shift(side, d):
    return (side - d) / (side + d)

print("IoU of a 20 px box shifted by d px:", {d: round(iou_shift(20, d), 3) for d in (1, 2, 4)})

def predictions(shift):
    # The ground truth moved right by `shift` pixels (boxes and masks), all with score 1.
    out = []
    for i in range(len(val)):
        t = val.get_target(i)
        masks = np.zeros_like(t["masks"])
        masks[:, :, shift:] = t["masks"][:, :, : t["masks"].shape[2] - shift]
        out.append({"boxes": t["boxes"] + np.array([shift, 0, shift, 0], np.float32), "labels": t["labels"],
                    "scores": np.ones(len(t["labels"])), "masks": masks})
    return out

results = {}
for shift in (0, 1, 2, 4):
    summary, evaluator = evaluate_predictions(val, predictions(shift), verbose=shift == 0)
    results[shift] = (summary["bbox"]["AP"], summary["segm"]["AP"])
    if shift == 2:
        shifted_evaluator = evaluator
for shift, (box_ap, mask_ap) in results.items():
    print(f"shift {shift} px: bbox AP {box_ap:.3f}, segm AP {mask_ap:.3f}")
# pycocotools divides by tp + fp + eps: "perfect" is 1 up to round-off
assert np.allclose(results[0], (1.0, 1.0), atol=1e-12)
assert results[1][0] > results[2][0] > results[4][0] and results[1][1] > results[2][1] > results[4][1]
""")

md("""
The precision-recall curves of the 2-pixel shift: at IoU 0.5 nearly every mask still matches (only some
small triangles fail), at 0.75 many small objects do. (All scores are equal here, so the order in which
COCOeval walks the detections, and the shape of the curves, is arbitrary; the end points are not.)
""")

code("""
ev = shifted_evaluator
display(plot_pr_curves(ev.precision["segm"], ev.recall_thresholds, ev.iou_thresholds, val.class_names,
                       at=(0.5, 0.75), title="segm, shift 2 px"))
""")

md("""
## 6. The whole pipeline, on one image

Before the chapters take Mask R-CNN apart, here it is whole: the paper's Fig. 1 ("a two-stage detector with a
parallel mask branch") and Fig. 4 (the FPN heads), redrawn from **this package's modules**, with the shape of
every tensor for one 128 × 128 image. The shapes are not typed in: the cell runs the demo's model
(`config.tiny`, random weights) stage by stage and records what comes out. The box at each stage names the
attribute of `model` that computes it, and the chapter that opens it.
""")

code("""
from minimaskrcnn import config
from minimaskrcnn.model import build_model
from minimaskrcnn.model.roi_heads import boxes_to_rois, infer_scales

pipe_model = build_model(config.tiny(num_classes=4)).eval()      # random weights: shapes, not answers
pipe_image = draw_shapes_image(np.random.default_rng(SEED), 128)[0]
batch, sizes, _, _ = pipe_model.preprocess([pipe_image])
c_maps = pipe_model.backbone.body(batch)                          # C2..C5
p_maps = pipe_model.backbone(batch)                               # P2..P6 (the FPN on top of the body)
logits, deltas = pipe_model.rpn.head(p_maps)
proposals = pipe_model.rpn(p_maps, sizes, batch.shape[-2:])[0]
rh = pipe_model.roi_heads
scales = infer_scales(p_maps[:-1], sizes)
pooled7, _ = rh.pool(p_maps[:-1], boxes_to_rois(proposals, np), rh.box_pool_size, scales)
fc7 = rh.box_head(pooled7)
class_logits, box_deltas = rh.box_predictor(fc7)
detections = rh.predict(p_maps[:-1], proposals, sizes)[0]
pooled14, _ = rh.pool(p_maps[:-1], boxes_to_rois([detections["boxes"]], np), rh.mask_pool_size, scales)
mask_features = rh.mask_head(pooled14)
mask_logits = rh.mask_predictor(mask_features)
final = pipe_model.predict([pipe_image])[0]

shape = lambda a: "×".join(str(d) for d in a.shape)
stages = [  # (column, row, title, lines, chapter)
    (0, 0, "image", [shape(pipe_image)], "00"),
    (0, 1, "model.preprocess", ["normalise, resize, pad", shape(batch)], "00"),
    (1, 0, "backbone.body (ResNet)", [f"C{k + 2} {shape(c)}" for k, c in enumerate(c_maps)], "02"),
    (1, 1, "backbone.fpn", [f"P{k + 2} {shape(p)}" for k, p in enumerate(p_maps)], "02"),
    (2, 0, "rpn.head (per level)", [f"objectness P2 {shape(logits[0])}", f"deltas P2 {shape(deltas[0])}"], "03"),
    (2, 1, "rpn: decode, NMS", [f"proposals {shape(proposals[0])}"], "03"),
    (3, 0, "RoIAlign 7×7 → box_head", [f"{shape(pooled7)} → {shape(fc7)}"], "04, 05"),
    (3, 1, "box_predictor", [f"classes {shape(class_logits)}", f"deltas {shape(box_deltas)}"], "05"),
    (4, 0, "softmax, decode, NMS, top k", [f"boxes {shape(detections['boxes'])}"], "07"),
    (4, 1, "RoIAlign 14×14 → mask_head", [f"{shape(pooled14)} → {shape(mask_features)}"], "04, 05"),
    (5, 0, "mask_predictor", [f"deconv, 1×1: {shape(mask_logits)}", f"class map: {shape(detections['mask_probs'])}"],
     "05"),
    (5, 1, "paste, binarise (predict)", [f"masks {shape(final['masks'])}", f"boxes {shape(final['boxes'])}"], "07"),
]
fig, ax = plt.subplots(figsize=(15, 4.6))
W_BOX, H_BOX = 2.5, 1.55
centre = {}
for col, row, title, lines, chapter in stages:
    x, y = col * 2.8, -row * 2.2
    color = "#dbe9f6" if col < 3 else "#fde2c8" if (col, row) in ((3, 0), (3, 1), (4, 0)) else "#d9f0d3"
    ax.add_patch(Rectangle((x, y), W_BOX, H_BOX, fc=color, ec="0.3", lw=1))
    ax.text(x + 0.08, y + H_BOX - 0.12, title, fontsize=8.5, weight="bold", va="top")
    ax.text(x + 0.08, y + H_BOX - 0.45, "\\n".join(lines), fontsize=7, va="top", family="monospace")
    ax.text(x + W_BOX - 0.06, y + 0.06, f"nb {chapter}", fontsize=6.5, ha="right", color="0.4")
    centre[(col, row)] = (x, y)
order = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1), (4, 0), (4, 1), (5, 0), (5, 1)]
for a, b in zip(order, order[1:]):
    (xa, ya), (xb, yb) = centre[a], centre[b]
    start = (xa + W_BOX / 2, ya) if b[0] == a[0] else (xa + W_BOX, ya + H_BOX / 2)
    end = (xb + W_BOX / 2, yb + H_BOX) if b[0] == a[0] else (xb, yb + H_BOX / 2)
    ax.annotate("", end, start, arrowprops=dict(arrowstyle="->", color="0.3", lw=1.2))
ax.text(0, 1.85, "blue: shared features and the RPN (first stage)   orange: box branch   "
        "green: mask branch (second stage, in parallel in training; on the detections at test time)", fontsize=8)
ax.set_xlim(-0.2, 6 * 2.8), ax.set_ylim(-2.4, 2.1), ax.set_axis_off()
plt.show()
assert final["masks"].shape[1:] == pipe_image.shape[:2] and mask_logits.shape[1:] == (4, 28, 28)
assert len(p_maps) == 5 and pooled7.shape[1:] == (pipe_model.config.fpn_channels, 7, 7)
""")

md("""
Read it as the paper's Fig. 1: the left half (blue) is Faster R-CNN's first stage, shared by everything; the
right half is the second stage, run per RoI, where the box branch (orange) and the mask branch (green) sit side by
side. In training both branches read the same sampled RoIs at once (notebook 05); at test time the mask branch
runs after NMS, on the final boxes only (§3.1, notebook 07). The arrow from `box_predictor` to NMS also marks the
one place where the two stages meet without a gradient: the proposals are constants for the second stage
(notebook 03, "approximate joint training").
""")

md("""
## Summary

* Instance segmentation = detection (class + box per object) + a mask per object; semantic segmentation
  labels pixels and cannot count objects.
* The shapes set is drawn deterministically from a seed, with occlusion; masks are the visible pixels.
* COCO stores images, categories and annotations; masks as polygons or (un)compressed RLE, column-major.
  Category ids map to contiguous labels 1..K; crowds are not training targets.
* The model's input: normalise, resize (shorter side `min_size`, longer at most `max_size`), pad to a
  multiple of 32. Predictions go back to the original image size before evaluation.
* COCO AP averages precision over recall, classes and IoU thresholds 0.50–0.95: a few pixels of error on a
  small object cost a lot.
* The pipeline: transform → ResNet → FPN → RPN → proposals → RoIAlign → box branch → NMS → RoIAlign → mask
  branch → paste; every later notebook opens one of these boxes.

## Exercises

1. Generate a set with `object_size=(20, 60)` and repeat section 5: how much does a 2-pixel shift cost now?
2. Write `rle_decode(counts, h, w)` for uncompressed RLE in three lines of NumPy (`np.repeat`) and check it
   against `mask_util.decode` on the masks of `val`.
3. Give every prediction of section 5 a random score. Why does AP stay at 1.0 for the unshifted predictions?
4. Which is larger for the same shift, box AP or mask AP? Explain with the IoU of a shifted disk vs its box.
""")


md(r"""
### Answer key

A worked solution of the exercises (a release for students replaces it by a stub: try them first).
""")

code(r"""
### BEGIN SOLUTION
def shifted_predictions(ds, shift, score_rng=None):
    # section 5's predictions() for any data set; score_rng: random scores instead of 1
    out = []
    for i in range(len(ds)):
        t = ds.get_target(i)
        m = np.zeros_like(t["masks"])
        m[:, :, shift:] = t["masks"][:, :, : t["masks"].shape[2] - shift]
        scores = score_rng.random(len(t["labels"])) if score_rng is not None else np.ones(len(t["labels"]))
        out.append({"boxes": t["boxes"] + np.array([shift, 0, shift, 0], np.float32), "labels": t["labels"],
                    "scores": scores, "masks": m})
    return out


# 1. Bigger objects (20-60 px instead of 10-60): the same 2 px shift is a smaller fraction of each object,
#    so it costs less AP (a 40 px box shifted 2 px keeps IoU 0.90, a 20 px one 0.82).
big_root = Path(tempfile.mkdtemp()) / "shapes_big"
make_shapes_dataset(big_root, num_train=0, num_val=NUM_VAL, image_size=IMAGE_SIZE, seed=SEED,
                    object_size=(20, 60), progress=False)
big_val = CocoDataset(big_root, "val")
big = {}
for shift in (0, 2):
    s, _ = evaluate_predictions(big_val, shifted_predictions(big_val, shift), verbose=False)
    big[shift] = (s["bbox"]["AP"], s["segm"]["AP"])
print(f"1. shift 2 px, objects 10-60 px: bbox AP {results[2][0]:.3f}, segm AP {results[2][1]:.3f}")
print(f"   shift 2 px, objects 20-60 px: bbox AP {big[2][0]:.3f}, segm AP {big[2][1]:.3f}")
assert np.allclose(big[0], (1.0, 1.0), atol=1e-12)
assert big[2][0] > results[2][0] and big[2][1] > results[2][1]


# 2. Uncompressed RLE: alternate 0 and 1 runs (starting with 0), column-major, so reshape in Fortran order.
def rle_decode(counts, h, w):
    values = np.arange(len(counts)) % 2                         # 0, 1, 0, 1, ...
    return np.repeat(values, counts).astype(np.uint8).reshape((h, w), order="F")


assert np.array_equal(rle_decode(runs, *tiny.shape), tiny)
n_checked = 0
for a in coco_json["annotations"]:
    rle = a["segmentation"]                                       # compressed: let pycocotools unpack it
    h, w = rle["size"]
    mask = mask_util.decode(rle)
    flat = mask.ravel(order="F")
    counts = np.diff(np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]]))   # run lengths
    if flat[0] == 1:
        counts = np.concatenate([[0], counts])                    # the first run is always of 0s
    ours = mask_util.frPyObjects({"size": [h, w], "counts": counts.tolist()}, h, w)
    assert np.array_equal(rle_decode(counts, h, w), mask_util.decode(ours))
    assert np.array_equal(rle_decode(counts, h, w), mask)
    n_checked += 1
print(f"2. rle_decode agrees with mask_util.decode on all {n_checked} masks of val")

# 3. Random scores only change the order in which COCOeval walks the detections. Unshifted, every detection
#    is a true positive at every IoU threshold, so precision is 1 at every recall whatever the order: AP 1.
s, _ = evaluate_predictions(val, shifted_predictions(val, 0, np.random.default_rng(SEED)), verbose=False)
print(f"3. random scores, no shift: bbox AP {s['bbox']['AP']:.3f}, segm AP {s['segm']['AP']:.3f}")
assert np.allclose((s["bbox"]["AP"], s["segm"]["AP"]), (1.0, 1.0), atol=1e-12)

# 4. For a disk of diameter D shifted by d, the box IoU is (D - d) / (D + d) ~ 1 - 2d/D, but the disk loses
#    a crescent of area ~ D*d on each side of a smaller area (pi D^2 / 4): mask IoU ~ 1 - 8d / (pi D),
#    falling 4/pi ~ 1.27 times faster. So for the same shift mask AP is the lower one.
disk = shape_mask("circle", 32.0, 32.0, 20, 0.0, 1.0, 64)
for d in (1, 2, 4):
    moved = np.zeros_like(disk)
    moved[:, d:] = disk[:, :-d]
    mask_iou = (disk & moved).sum() / (disk | moved).sum()
    print(f"4. 20 px disk shifted {d} px: box IoU {iou_shift(20, d):.3f}, mask IoU {mask_iou:.3f}")
    assert mask_iou < iou_shift(20, d)
print("   section 5 (bbox AP, segm AP):", {k: tuple(round(v, 3) for v in r) for k, r in results.items()})
assert all(results[k][1] < results[k][0] for k in (1, 2, 4))
### END SOLUTION
""")


if __name__ == "__main__":
    NB.write()
