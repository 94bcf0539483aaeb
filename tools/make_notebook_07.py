"""Build notebooks/07_inference_and_evaluation.ipynb (without outputs) from the cells below.

    python tools/make_notebook_07.py
"""
from notebook_builder import NotebookBuilder

from minimaskrcnn import config

NB = NotebookBuilder("07_inference_and_evaluation.ipynb")
md, code = NB.md, NB.code
TINY = config.tiny(num_classes=4)     # the demo's model and schedule, quoted in the text from the config itself


md(r"""
# 07 · Inference and evaluation: from logits to masks, and COCO AP

A trained Mask R-CNN outputs *logits*: class scores and box deltas for every proposal, and 28 × 28 mask logits
for every class. This notebook follows them to the final detections, then scores the detections the way every
paper does, with COCO's average precision. You will:

1. take the test-time path apart, step by step, on one image: **softmax**, **class-specific box decoding**
   and clipping, the **score threshold** 0.05, **per-class NMS** at 0.5, the **top k**; then the **mask
   branch on the detections only**, the predicted class's **28 × 28 sigmoid**, **pasted** into the image and
   **binarised at 0.5**, and check that the steps reproduce `model.predict` exactly;
2. compute **COCO AP by hand** on a toy example: IoU of boxes and of masks, greedy **matching** in score order,
   **precision-recall** curves, the **101-point interpolated AP**, AP@[.5:.95] as the mean over ten IoU
   thresholds, AP50, AP75, and APs / APm / APl; and check every number against pycocotools' `COCOeval` to 1e-9;
3. evaluate the model, draw its **PR curves** and the **per-class AP** table.

> "**Inference:** At test time, the proposal number is 300 for the C4 backbone and 1000 for FPN. We run the box
> prediction branch on these proposals, followed by non-maximum suppression. The mask branch is then applied to
> the highest scoring 100 detection boxes. Although this differs from the parallel computation used in
> training, it speeds up inference and improves accuracy (due to the use of fewer, more accurate RoIs). The
> mask branch can predict K masks per RoI, but we only use the k-th mask, where k is the predicted class by the
> classification branch. The m×m floating-number mask output is then resized to the RoI size, and binarized
> at a threshold of 0.5."
> — He, Gkioxari, Dollár, Girshick, *Mask R-CNN*, §3.1

> "We report the standard COCO metrics including AP (averaged over IoU thresholds), AP50, AP75, and APS, APM,
> APL (AP at different scales). Unless noted, AP is evaluating using mask IoU." — §4
""")

md("""
## Setup

By default the notebook trains the small model of notebook 06 for a hundred iterations on just **4 images**
(about 20 seconds on a laptop CPU), long enough for it to *memorise* them: its detections on those 4 images
are confident and mostly right, which gives the evaluation something to measure. (On new images it finds little
yet; section 3 shows the difference.) Set `FULL = True` to evaluate the demo's model instead
(`python -m minimaskrcnn demo` writes `runs/demo/last.npz`), on the 200 validation images.
""")

code("""
# Parameters (defaults keep the notebook well under a minute on a laptop CPU)
FULL = False          # True: evaluate CHECKPOINT (default: the demo's runs/demo/last.npz) on data/shapes val
CHECKPOINT = None     # a checkpoint (last.npz) trained on the shapes set; None with FULL: the demo's
SEED = 0
NUM_TRAIN, NUM_VAL = 4, 16
IMAGE_SIZE = 64       # pixels; the short run trains at this size
ITERS = 100           # iterations of the short run
WALK_IMAGE = 0        # which image of the evaluated set section 1 follows
""")

code("""
import contextlib
import importlib.util
import inspect
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display
from matplotlib.patches import Rectangle
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

if importlib.util.find_spec("minimaskrcnn") is None:  # a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.abspath(".."))            # (run from notebooks/): use the repository root

from minimaskrcnn import config
from minimaskrcnn.data.coco import CocoDataset
from minimaskrcnn.data.shapes import ensure_shapes_dataset
from minimaskrcnn.data.transforms import DataLoader
from minimaskrcnn.engine.analysis import ERROR_KINDS, error_breakdown
from minimaskrcnn.engine.checkpoint import load_checkpoint_model
from minimaskrcnn.engine.evaluator import CocoEvaluator
from minimaskrcnn.engine.inference import evaluate_model
from minimaskrcnn.engine.run import DEFAULT_DATA, DEFAULT_OUT
from minimaskrcnn.engine.trainer import Trainer
from minimaskrcnn.model import build_model
from minimaskrcnn.model.roi_heads import boxes_to_rois, infer_scales
from minimaskrcnn.model.transform import postprocess_boxes
from minimaskrcnn.ops.boxes import batched_nms, clip_boxes_to_image, remove_small_boxes
from minimaskrcnn.ops.masks import paste_masks_in_image
from minimaskrcnn.viz.detections import class_color, draw_instances, plot_pr_curves

np.set_printoptions(precision=3, suppress=True, linewidth=110)
plt.rcParams.update({"figure.dpi": 80, "font.size": 9})
WORK = tempfile.TemporaryDirectory(prefix="minimaskrcnn07_")   # removed when the kernel stops
REPO = Path("..").resolve()                                       # notebooks run from notebooks/
if FULL and CHECKPOINT is None:
    CHECKPOINT = REPO / DEFAULT_OUT / "last.npz"
if CHECKPOINT is not None and not Path(CHECKPOINT).exists():
    print(f"{CHECKPOINT} not found (run `python -m minimaskrcnn demo` first): using the short run instead")
    CHECKPOINT = None
""")

code("""
t0 = time.perf_counter()
if CHECKPOINT is not None:
    model = load_checkpoint_model(str(CHECKPOINT))
    root = ensure_shapes_dataset(REPO / DEFAULT_DATA, num_train=2000, num_val=200, progress=False)  # the demo's
    eval_set = val_set = CocoDataset(root, "val")
    print(f"loaded {CHECKPOINT}")
else:
    root = ensure_shapes_dataset(Path(WORK.name) / "shapes", num_train=NUM_TRAIN, num_val=NUM_VAL, seed=SEED,
                                 image_size=IMAGE_SIZE, object_size=(IMAGE_SIZE / 8, IMAGE_SIZE / 2), progress=False)
    train_set, val_set = CocoDataset(root, "train"), CocoDataset(root, "val")
    cfg = config.tiny(len(train_set.class_names), class_names=tuple(train_set.class_names),
                      min_size=IMAGE_SIZE, max_size=IMAGE_SIZE, lr=0.01, warmup_iters=20,
                      lr_steps=(int(0.8 * ITERS),), max_iters=ITERS, rpn_pre_nms_top_n=(300, 150),
                      rpn_post_nms_top_n=(100, 50), rpn_batch_size_per_image=64, box_batch_size_per_image=64)
    model = build_model(cfg)
    trainer = Trainer(model, DataLoader(train_set, cfg.images_per_batch, seed=SEED), Path(WORK.name) / "run",
                      checkpoint_every=0, progress=False)
    log = trainer.train()
    total = [sum(r.values()) for r in log["losses"]]
    print(f"trained {ITERS} iterations on {len(train_set)} images: total loss {np.mean(total[:10]):.2f} -> "
          f"{np.mean(total[-10:]):.2f}")
    eval_set = train_set                                  # the images it has memorised
NAMES = eval_set.class_names
cfg = model.config
print(f"{time.perf_counter() - t0:.1f} s; evaluating on {eval_set.summary()}")
""")

md("""
## 1. From logits to pasted masks

`model.predict(images)` runs five stages: (1) backbone and RPN proposals, (2) the box branch on every proposal,
(3) box decoding, score threshold, NMS and top k, (4) the mask branch on the detections, (5) rescaling, pasting
and binarising. We run them one at a time on one image, with the model's own modules, and compare with
`predict` at the end.

To make the resizing visible we give the model the image **upscaled 2×** (each pixel repeated). The model
always works at `min_size` (here the image is scaled back down), and its detections are mapped back to the
image *as given*. Bilinear downscaling by exactly 2 reads each output pixel halfway between two equal
pixels, so the model's input is the original image, exactly.
""")

code("""
image = eval_set.load_image(WALK_IMAGE)
gt = eval_set.get_target(WALK_IMAGE)
big = image.repeat(2, axis=0).repeat(2, axis=1)                     # (2H, 2W, 3)
model.eval()                                                        # inference: no caches, BN running stats
batch, sizes, originals, _ = model.preprocess([big])
assert np.array_equal(batch, model.preprocess([image])[0])          # the same network input
rh = model.roi_heads
print(f"image {big.shape} -> network input {batch.shape} (resized to {sizes[0]}, padded to a multiple of "
      f"{cfg.size_divisible}); predictions go back to {originals[0]}")

feats = model.backbone(batch)                                       # P2..P6
proposals, _ = model.rpn(feats, sizes, batch.shape[-2:])           # list: one (P, 4) array per image
features = rh.pooled_levels(feats)                                 # P2..P5 for the RoI heads
scales = infer_scales(features, sizes)
P = len(proposals[0])
print("FPN levels:", [f.shape for f in feats])
print(f"proposals: {proposals[0].shape} (at most {cfg.rpn_post_nms_top_n[1]} at test time)")
""")

md(r"""
### 1.1 The box branch on every proposal: class probabilities

Each proposal is pooled to 7 × 7 (RoIAlign), goes through the two fc layers, and gives K + 1 = 4 class logits
$z$ and 4 box deltas per class. The **softmax** turns the logits into probabilities (background first):
$p_c = e^{z_c} / \sum_j e^{z_j}$, computed after subtracting the row's maximum so that $e^{z}$ cannot
overflow.
""")

code("""
pooled, _ = rh.pool(features, boxes_to_rois(proposals, np), rh.box_pool_size, scales)
class_logits, box_regression = rh.box_predictor(rh.box_head(pooled))
K = class_logits.shape[1]
z = class_logits - class_logits.max(axis=1, keepdims=True)
probs = np.exp(z)
probs /= probs.sum(axis=1, keepdims=True)
print(f"pooled {pooled.shape} -> class logits {class_logits.shape}, box deltas {box_regression.shape} "
      f"-> probabilities {probs.shape}")
assert np.allclose(probs.sum(axis=1), 1, atol=1e-6)

best_fg, best_class = probs[:, 1:].max(axis=1), probs[:, 1:].argmax(axis=1) + 1
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), width_ratios=[1, 1.3], layout="constrained")
axes[0].imshow(image)
for i in np.argsort(best_fg):                                       # the confident ones on top
    b, sure = proposals[0][i], best_fg[i] > 0.5
    axes[0].add_patch(Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, lw=1.5 if sure else 0.5,
                                ec=class_color(best_class[i]) if sure else "0.85"))
axes[0].set_title(f"{P} proposals; coloured: a class has p > 0.5", fontsize=9); axes[0].set_axis_off()
axes[1].hist([probs[:, 0], best_fg], bins=20, range=(0, 1), label=["background", "best foreground class"])
axes[1].axvline(rh.score_thresh, color="k", ls="--", lw=1, label=f"score threshold {rh.score_thresh}")
axes[1].set_xlabel("probability"); axes[1].set_ylabel("proposals"); axes[1].legend()
plt.show()
""")

md("""
### 1.2 Class-specific boxes, clipped

The box branch predicts one box *per class*: for each proposal, `BoxCoder.decode` applies each class's 4 deltas
(weights 10, 10, 5, 5) and gives K boxes, which are clipped to the image. The background's box is never used.
From here on, every (proposal, foreground class) pair is a **candidate detection** with that class's box and
probability: P × (K − 1) candidates.
""")

code("""
decoded = rh.box_coder.decode(box_regression, proposals[0]).reshape(P, K, 4)     # (P, K, 4)
decoded = clip_boxes_to_image(decoded, sizes[0])
cand_boxes = decoded[:, 1:].reshape(-1, 4)                                      # (P * (K - 1), 4)
cand_scores = probs[:, 1:].reshape(-1)
cand_labels = np.broadcast_to(np.arange(1, K), (P, K - 1)).reshape(-1)
print(f"decoded {decoded.shape} -> candidates: boxes {cand_boxes.shape}, scores {cand_scores.shape}, "
      f"labels {cand_labels.shape}")

i = int(np.argmax(best_fg))                                         # the most confident proposal
fig, ax = plt.subplots(figsize=(3.6, 3.6))
ax.imshow(image)
b = proposals[0][i]
ax.add_patch(Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, ec="w", ls="--", lw=1.5))
for c in range(1, K):
    b = decoded[i, c]
    ax.add_patch(Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, ec=class_color(c), lw=1.5,
                           label=f"{NAMES[c]}: p = {probs[i, c]:.2f}"))
ax.legend(fontsize=7, loc="lower left")
ax.set_title("one proposal (dashed) and its\\n3 class-specific boxes", fontsize=9); ax.set_axis_off()
plt.show()
height, width = sizes[0]
assert cand_boxes.min() >= 0 and cand_boxes[:, [0, 2]].max() <= width and cand_boxes[:, [1, 3]].max() <= height
""")

md("""
### 1.3 Score threshold, per-class NMS, top k

* keep candidates with probability **> 0.05** (most are near-certain background);
* drop boxes narrower or shorter than 0.01 px (clipping can flatten a box against the border);
* **NMS per class at IoU 0.5**: within each class, walk down the scores and drop every box that overlaps an
  already kept one by more than 0.5. A circle box never suppresses a rectangle box: different classes may
  overlap (and near-duplicates of *different* classes survive, each with its own score);
* keep the **top k** by score: 100 in the paper, `detections_per_img` = 30 in `config.tiny`.
""")

code("""
keep = np.flatnonzero(cand_scores > rh.score_thresh)
print(f"{len(cand_scores)} candidates -> {len(keep)} with score > {rh.score_thresh}", end="")
boxes, scores, labels = cand_boxes[keep], cand_scores[keep], cand_labels[keep]
keep = remove_small_boxes(boxes, 1e-2)
boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
print(f" -> {len(keep)} not degenerate", end="")
kept = batched_nms(boxes, scores, labels, rh.nms_thresh)            # by decreasing score
print(f" -> {len(kept)} after per-class NMS at {rh.nms_thresh}", end="")
kept = kept[:rh.detections_per_img]
det_boxes, det_scores, det_labels = boxes[kept], scores[kept], labels[kept]
D = len(det_scores)
print(f" -> {D} detections (top {rh.detections_per_img})")

fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.8), layout="constrained")
for ax, (b_, s_, l_, title) in zip(axes, [(boxes, scores, labels, "candidates with score > 0.05"),
                                          (det_boxes, det_scores, det_labels, "after per-class NMS")]):
    ax.imshow(image)
    for b, s, c in zip(b_, s_, l_):
        ax.add_patch(Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, ec=class_color(c), lw=0.5 + 1.5 * s,
                               alpha=0.2 + 0.8 * s))
    ax.set_title(f"{title}: {len(s_)}", fontsize=9); ax.set_axis_off()
plt.show()

reference = rh.predict(features, proposals, sizes)[0]               # the library's box stage
assert np.array_equal(det_boxes, reference["boxes"]) and np.array_equal(det_scores, reference["scores"])
assert np.array_equal(det_labels, reference["labels"])
""")

md("""
### 1.4 The mask branch, on the detections only

Only now does the mask branch run, and only on the D final boxes (not on the proposals, as in training): fewer
RoIs, and better ones. Each box is pooled to 14 × 14, the FCN gives K maps of 28 × 28 logits, and **only the
map of the predicted class** is read, through a sigmoid. The other maps are computed and thrown away.
""")

code("""
pooled_m, _ = rh.pool(features, boxes_to_rois([det_boxes], np), rh.mask_pool_size, scales)
mask_logits = rh.mask_predictor(rh.mask_head(pooled_m))                       # (D, K, 28, 28)
mask_probs = 1.0 / (1.0 + np.exp(-mask_logits[np.arange(D), det_labels]))    # (D, 28, 28)
print(f"pooled {pooled_m.shape} -> mask logits {mask_logits.shape} -> predicted class's probabilities "
      f"{mask_probs.shape}")
assert np.array_equal(mask_probs, reference["mask_probs"])
""")

md("""
### 1.5 Back to the image: rescale, paste, binarise

The boxes are scaled from the network's image back to the image as given (`postprocess_boxes`; here × 2).
`paste_masks_in_image` then resizes each 28 × 28 probability map onto its box (bilinearly, after padding it
with one pixel of zeros, so that it fades out at the box's edge) and writes it into an empty image. The result
is **soft**; `>= 0.5` makes it binary (the paper's "binarized at a threshold of 0.5").
""")

code("""
print(inspect.getsource(paste_masks_in_image))
boxes_out = postprocess_boxes(det_boxes, sizes[0], originals[0])
soft = paste_masks_in_image(mask_probs.astype(np.float32), boxes_out, originals[0], threshold=None)
binary = soft >= 0.5
print(f"boxes {det_boxes.shape} in {sizes[0]} -> {boxes_out.shape} in {originals[0]}; "
      f"masks {mask_probs.shape} -> pasted {soft.shape} {soft.dtype} -> binary {binary.dtype}")
assert np.allclose(boxes_out, 2 * det_boxes)

n_show = min(3, D)
fig, axes = plt.subplots(n_show, 4, figsize=(9, 2.4 * n_show), squeeze=False, layout="constrained")
gt_big = gt["masks"].repeat(2, axis=1).repeat(2, axis=2)
for r in range(n_show):
    x1, y1, x2, y2 = boxes_out[r]
    view = np.s_[max(int(y1) - 8, 0):int(y2) + 8, max(int(x1) - 8, 0):int(x2) + 8]
    c = det_labels[r]
    panels = [(mask_probs[r], f"{NAMES[c]} {det_scores[r]:.2f}: 28x28 sigmoid"),
              (soft[r][view], "pasted, soft"), (binary[r][view], ">= 0.5 (red: GT outlines)")]
    for ax, (img, title) in zip(axes[r], panels):
        ax.imshow(img, cmap="viridis", vmin=0, vmax=1); ax.set_title(title, fontsize=8); ax.set_axis_off()
    for g in gt_big:
        if g[view].any():
            axes[r, 2].contour(g[view], levels=[0.5], colors="r", linewidths=0.8)
    axes[r, 3].imshow(big[view]); axes[r, 3].set_title("image", fontsize=8); axes[r, 3].set_axis_off()
plt.show()
""")

md("""
### 1.6 The same as `model.predict`

The five stages, composed by hand, give `model.predict`'s output to the last bit: boxes, labels, scores and
masks.
""")

code("""
pred = model.predict([big])[0]
for k, v in pred.items():
    print(f"{k:7s} {str(v.shape):14s} {v.dtype}")
assert np.array_equal(pred["boxes"], boxes_out) and np.array_equal(pred["labels"], det_labels)
assert np.array_equal(pred["scores"], det_scores) and np.array_equal(pred["masks"], binary)

fig, axes = plt.subplots(1, 2, figsize=(7, 3.6), layout="constrained")
draw_instances(big, gt["boxes"] * 2, gt["labels"], gt_big, class_names=NAMES, ax=axes[0], title="ground truth")
draw_instances(big, pred["boxes"], pred["labels"], pred["masks"], pred["scores"], NAMES, ax=axes[1],
               score_thresh=0.5, title="predict (score >= 0.5)")
plt.show()
""")

md(r"""
## 2. COCO AP, by hand

COCO scores detections per class, with these ingredients:

* **IoU** between a detection and a ground-truth object: $|A \cap B| / |A \cup B|$, of the boxes for *box AP*
  (`bbox`), of the pixel sets for *mask AP* (`segm`).
* **Matching at a threshold $t$**, image by image: take the class's detections in decreasing score order; each
  one is matched to the not-yet-matched ground-truth object it overlaps most, if that IoU is ≥ $t$ (a **true
  positive**); otherwise it is a **false positive**. An object can be matched only once: a second detection of
  it is a false positive (that is what NMS is for). Objects never matched are **misses**.
* **Precision and recall**, pooling all images' detections of the class in decreasing score order: after the
  first $n$ detections, $\text{precision} = TP_n / n$ and $\text{recall} = TP_n / G$ ($G$: the class's objects).
* **Interpolated AP**: the precision at recall $r$ is replaced by the best precision at any recall ≥ $r$ (the
  curve's upper envelope, which never rises), then sampled at the 101 recall levels 0, 0.01, ..., 1 (0 beyond
  the highest recall reached) and averaged.
* **AP** (AP@[.5:.95]) is the mean over the 10 thresholds $t = 0.50, 0.55, \dots, 0.95$ and over the classes;
  **AP50** and **AP75** fix $t$; **APs / APm / APl** count only objects of area < 32², 32²–96², > 96² pixels.

A toy example small enough to check by eye: 3 images of 160 × 160, two classes (square, disk), 8 objects of all
three sizes, and 10 detections made by hand: most are shifted copies of an object, one is a duplicate, one is
on the background, one has the wrong class, and one object is missed.
""")

code("""
S = 160
yy, xx = np.mgrid[:S, :S] + 0.5                                     # pixel centres

def square(x1, y1, x2, y2):
    return (xx >= x1) & (xx < x2) & (yy >= y1) & (yy < y2)

def disk(cx, cy, r):
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2

def shifted(mask, dx, dy):
    out = np.zeros_like(mask)
    out[max(dy, 0):S + min(dy, 0), max(dx, 0):S + min(dx, 0)] = mask[max(-dy, 0):S - max(dy, 0),
                                                                     max(-dx, 0):S - max(dx, 0)]
    return out

def box_of(mask):                                                   # the tight box (x1, y1, x2, y2) of a mask
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)

TOY_NAMES = ["__background__", "square", "disk"]
SQ, DK = 1, 2
toy_gt = {1: [(SQ, square(20, 20, 120, 120)), (DK, disk(135, 135, 14)), (SQ, square(125, 20, 150, 45))],
          2: [(DK, disk(60, 70, 35)), (SQ, square(110, 100, 150, 140)), (DK, disk(130, 40, 10))],
          3: [(DK, disk(80, 80, 58)), (SQ, square(10, 130, 30, 150))]}
# detections: (image, label, object index it copies (or a mask), shift dx, dy, score)
toy_dets = [(1, SQ, 0, 3, 2, 0.95), (1, DK, 1, 4, 2, 0.60), (1, SQ, 2, 4, 4, 0.30),
            (1, SQ, 0, 8, 5, 0.80),                       # a second, worse detection of the big square
            (2, DK, 0, 2, 1, 0.90), (2, SQ, 1, 0, 6, 0.70),
            (2, DK, disk(20, 140, 8), 0, 0, 0.40),        # a disk where there is none
            (2, SQ, 0, 0, 0, 0.50),                       # the big disk exactly, but called a square
            (3, DK, 0, 10, 8, 0.85), (3, SQ, 1, 1, 1, 0.20)]
# (and nothing finds the small disk of image 2)

def predictions_from(dets):
    out = {}
    for img, label, src, dx, dy, score in dets:
        mask = shifted(toy_gt[img][src][1] if isinstance(src, int) else src, dx, dy)
        p = out.setdefault(img, {"boxes": [], "labels": [], "scores": [], "masks": []})
        p["boxes"].append(box_of(mask)); p["labels"].append(label); p["scores"].append(score)
        p["masks"].append(mask)
    return {img: {k: np.array(v) for k, v in p.items()} for img, p in out.items()}

toy_pred = predictions_from(toy_dets)
areas = {img: [int(m.sum()) for _, m in objs] for img, objs in toy_gt.items()}
print("object areas (px):", areas, " small < 1024 < medium < 9216 < large")
""")

code("""
fig, axes = plt.subplots(1, 3, figsize=(11, 3.9), layout="constrained")
for ax, (img, objs) in zip(axes, toy_gt.items()):
    masks = np.array([m for _, m in objs])
    draw_instances(np.full((S, S, 3), 235, np.uint8), np.array([box_of(m) for m in masks]),
                   np.array([c for c, _ in objs]), masks, class_names=TOY_NAMES, ax=ax, title=f"image {img}")
    p = toy_pred[img]
    for b, c, s in zip(p["boxes"], p["labels"], p["scores"]):
        ax.add_patch(Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, ec="k", ls="--", lw=1))
        ax.text(b[2], b[3], f"{TOY_NAMES[c]} {s:.2f}", fontsize=7, ha="right", va="bottom")
plt.show()
""")

md("""
The ground truth goes into a `pycocotools.coco.COCO` object, exactly as a COCO annotation file would (masks as
run-length encoding, `bbox` as `[x, y, w, h]`, `area` = the mask's pixel count), and `CocoEvaluator` (what
`evaluate_model` uses) scores the predictions with `COCOeval`:
""")

code("""
def coco_from(gt_by_image, names, size):
    images, anns = [], []
    for img, objs in gt_by_image.items():
        images.append({"id": img, "file_name": f"{img}.png", "height": size, "width": size})
        for label, mask in objs:
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            x1, y1, x2, y2 = box_of(mask)
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": label, "iscrowd": 0,
                         "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(mask.sum())})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": k, "name": n} for k, n in enumerate(names) if k > 0]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco

def coco_eval(coco, predictions, names, verbose=False):
    ev = CocoEvaluator(coco, {k: k for k in range(1, len(names))}, class_names=names)
    for img in sorted(coco.imgs):
        ev.update(img, predictions.get(img, {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int),
                                             "scores": np.zeros(0), "masks": np.zeros((0, S, S), bool)}))
    return ev.evaluate(verbose=verbose), ev

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
toy_coco = coco_from(toy_gt, TOY_NAMES, S)
perfect = {img: {"boxes": np.array([box_of(m) for _, m in objs]), "labels": np.array([c for c, _ in objs]),
                 "scores": np.linspace(0.9, 0.5, len(objs)), "masks": np.array([m for _, m in objs])}
           for img, objs in toy_gt.items()}
perfect_summary, _ = coco_eval(toy_coco, perfect, TOY_NAMES)
for t in ("bbox", "segm"):
    print(t, "perfect predictions:", {k: perfect_summary[t][k] for k in STATS})
    assert all(abs(perfect_summary[t][k] - 1) < 1e-12 for k in STATS)
toy_summary, toy_ev = coco_eval(toy_coco, toy_pred, TOY_NAMES, verbose=True)
""")

md(r"""
Now the same numbers from scratch, in a few small functions.

### 2.1 IoU, the way COCO computes it

Box IoU from COCO's `[x, y, w, h]` boxes (pycocotools' `bbIou`, in the same floating-point order, so that an
IoU lying exactly on a threshold compares the same way), mask IoU from pixel counts.
""")

code("""
def box_iou_coco(d, g):
    # (D, 4), (G, 4) boxes [x, y, w, h] -> (D, G) IoU
    d, g = d[:, None], g[None, :]
    w = np.minimum(d[..., 0] + d[..., 2], g[..., 0] + g[..., 2]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 1] + d[..., 3], g[..., 1] + g[..., 3]) - np.maximum(d[..., 1], g[..., 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    return inter / (d[..., 2] * d[..., 3] + g[..., 2] * g[..., 3] - inter)

def mask_iou(d, g):
    # (D, H, W), (G, H, W) binary masks -> (D, G) IoU
    d, g = d.reshape(len(d), -1).astype(np.float64), g.reshape(len(g), -1).astype(np.float64)
    inter = d @ g.T
    return inter / (d.sum(1)[:, None] + g.sum(1)[None, :] - inter)

def to_xywh(boxes):
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)

def rles(masks):
    return mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))

for img in (2, 3):                      # check against pycocotools, and look at the numbers
    p, objs = toy_pred[img], toy_gt[img]
    gt_xywh, gt_masks = to_xywh([box_of(m) for _, m in objs]), np.array([m for _, m in objs])
    box_ious, mask_ious = box_iou_coco(to_xywh(p["boxes"]), gt_xywh), mask_iou(p["masks"], gt_masks)
    no_crowd = [0] * len(objs)
    assert np.array_equal(box_ious, mask_util.iou(to_xywh(p["boxes"]).tolist(), gt_xywh.tolist(), no_crowd))
    assert np.array_equal(mask_ious, mask_util.iou(rles(p["masks"]), rles(gt_masks), no_crowd))
    print(f"image {img}: IoU of each detection (rows: {[TOY_NAMES[c] for c in p['labels']]}) with each object "
          f"(columns: {[TOY_NAMES[c] for c, _ in objs]})")
    print("boxes\\n", box_ious, "\\nmasks\\n", mask_ious)
""")

md("""
For a square, box and mask IoU are the same number (0.739 for the square of image 2 shifted 6 px down); for a
disk they differ, a little here: image 3's large disk, shifted by (10, 8) px, has box IoU 0.740 but mask IoU
0.754, a miss for box AP75 and a hit for mask AP75. The detection labelled *square* on image 2's big disk
covers it exactly (IoU 1), yet it will be a false positive: classes are matched separately, and there is no
square there.

### 2.2 Matching, image by image

COCOeval's greedy rule, for one image, one class and one threshold. Two details matter for exactness: an IoU
equal to the threshold counts (`>=`), and objects that are *ignored* (outside the area range being scored,
or crowds) are tried last: a detection matched to an ignored object is neither a true nor a false positive,
it is dropped, and so is an unmatched detection whose own area is outside the range.
""")

code("""
def match_image(ious, gt_ignore, t):
    \"\"\"Greedy matching of one image and class: ious (D, G), detections by decreasing score, ignored objects
    last. Returns the index of the object each detection matches (-1: none).\"\"\"
    taken, match = np.zeros(ious.shape[1], bool), np.full(ious.shape[0], -1)
    for d in range(ious.shape[0]):
        best, m = min(t, 1 - 1e-10), -1
        for g in range(ious.shape[1]):
            if taken[g]:
                continue
            if m > -1 and not gt_ignore[m] and gt_ignore[g]:
                break                                               # a real match beats any ignored object
            if ious[d, g] >= best:
                best, m = ious[d, g], g
        if m > -1:
            taken[m], match[d] = True, m
    return match

# The disks at IoU 0.5 and 0.75, by mask IoU, all areas (nothing ignored)
for t in (0.5, 0.75):
    print(f"disks, mask IoU >= {t}:")
    for img in sorted(toy_gt):
        p = toy_pred.get(img)
        sel = np.flatnonzero(p["labels"] == DK)
        sel = sel[np.argsort(-p["scores"][sel], kind="stable")]
        g_masks = np.array([m for c, m in toy_gt[img] if c == DK])
        if len(sel) == 0:
            print(f"  image {img}: no disk detection; {len(g_masks)} disk(s) missed"); continue
        ious = mask_iou(p["masks"][sel], g_masks)
        m = match_image(ious, np.zeros(len(g_masks), bool), t)
        for d, j in zip(sel, m):
            print(f"  image {img}: score {p['scores'][d]:.2f}, best IoU {ious[list(sel).index(d)].max():.3f} -> "
                  + ("TP" if j > -1 else "FP"))
""")

md(r"""
### 2.3 Precision, recall, and the 101-point interpolated AP

All detections of a class, from every image, in decreasing score order: the cumulative true and false positives
give recall and precision after each one. COCOeval adds `np.spacing(1)` (2.2e-16) to the denominator of the
precision, so we do too. Then the upper envelope, sampled at the 101 recall levels (`np.searchsorted(...,
side='left')`: the first point whose recall reaches the level; 0 if none does).
""")

code("""
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)     # as COCOeval builds them (0.75 must equal its 0.75 exactly)
RECALL_LEVELS = np.linspace(0.0, 1.0, 101)
assert np.array_equal(IOU_THRESHOLDS, toy_ev.iou_thresholds) and np.array_equal(RECALL_LEVELS, toy_ev.recall_thresholds)

def pr_curve(scores, tp, ignored, n_gt):
    \"\"\"Detections of one class from all images -> recall, precision after each (in score order).\"\"\"
    order = np.argsort(-scores, kind="mergesort")
    tp, keep = tp[order], ~ignored[order]
    tps, fps = np.cumsum(tp & keep).astype(float), np.cumsum(~tp & keep).astype(float)
    return tps / n_gt, tps / (tps + fps + np.spacing(1))

def interpolated_precision(recall, precision):
    \"\"\"The upper envelope of the PR curve, sampled at the 101 recall levels.\"\"\"
    if len(recall) == 0:
        return np.zeros(len(RECALL_LEVELS))
    envelope = np.maximum.accumulate(precision[::-1])[::-1]        # best precision at any higher recall
    idx = np.searchsorted(recall, RECALL_LEVELS, side="left")
    return np.where(idx < len(recall), envelope[np.minimum(idx, len(recall) - 1)], 0.0)
""")

code("""
# The disk class at IoU 0.5, masks: collect every image's matched / unmatched detections
def class_detections(gt_by_image, pred_by_image, label, t, iou_fn):
    scores, tps, n_gt = [], [], 0
    for img in sorted(gt_by_image):
        g = np.array([m for c, m in gt_by_image[img] if c == label])
        n_gt += len(g)
        p = pred_by_image.get(img)
        if p is None or not (p["labels"] == label).any():
            continue
        sel = np.flatnonzero(p["labels"] == label)
        sel = sel[np.argsort(-p["scores"][sel], kind="mergesort")]
        m = match_image(iou_fn(p["masks"][sel], g), np.zeros(len(g), bool), t) if len(g) else np.full(len(sel), -1)
        scores.append(p["scores"][sel]); tps.append(m > -1)
    return np.concatenate(scores), np.concatenate(tps), n_gt

scores, tp, n_gt = class_detections(toy_gt, toy_pred, DK, 0.5, mask_iou)
recall, precision = pr_curve(scores, tp, np.zeros(len(tp), bool), n_gt)
samples = interpolated_precision(recall, precision)
print("score order:", np.sort(scores)[::-1], "TP:", tp[np.argsort(-scores, kind="mergesort")].astype(int))
print("recall   ", recall, "\\nprecision", precision)
print(f"AP50 of the disks (masks) = mean of the 101 samples = {samples.mean():.6f}")
ap_coco = toy_ev.precision["segm"][0, :, DK - 1].mean()
assert abs(samples.mean() - ap_coco) < 1e-9

fig, ax = plt.subplots(figsize=(5, 3.4))
ax.plot(recall, precision, "o-", color="0.6", label="precision after each detection")
ax.step(RECALL_LEVELS, samples, where="post", color="tab:blue", label="interpolated (envelope)")
ax.plot(RECALL_LEVELS, samples, ".", ms=3, color="tab:blue", label="the 101 samples")
ax.fill_between(RECALL_LEVELS, samples, step="post", alpha=0.15)
ax.set_xlabel("recall"); ax.set_ylabel("precision"); ax.set_ylim(0, 1.05); ax.legend(fontsize=8)
ax.set_title(f"disks, mask IoU >= 0.5: AP50 = {samples.mean():.3f} (COCOeval: {ap_coco:.3f})", fontsize=9)
plt.show()
""")

md("""
### 2.4 Everything: ten thresholds, area ranges, both IoU types

`coco_ap` puts the pieces together for every class, area range and threshold, and averages like `COCOeval.summarize`:
AP = the mean of all (threshold, recall level, class) samples of the classes that have objects. Two COCO details
are easy to get wrong:

* the area that puts an object in a range is the annotation's `area` (the **mask's** pixel count, even for box
  AP). A detection's own area (an unmatched detection outside the range is ignored rather than counted as a
  false positive) is what `COCO.loadRes` gives it: its **box** area `w × h` for `bbox` results, its **mask's**
  pixel count (from the RLE) for `segm` results. That last rule holds only if the segm results carry *no*
  `bbox`: `loadRes` looks at the first result, and if it has a `bbox` it takes the box area for every
  detection, masks or not. So `CocoEvaluator`, like torchvision's and Detectron2's evaluators, leaves the
  `bbox` out of its segm results (the cell below shows both);
* `maxDets = 100` limits the detections per image *and class* (pycocotools evaluates each (image, class) pair on
  its own).
""")

code("""
# COCO's area rule for segm. One small disk (radius 10), found exactly (score 0.8), and a more confident false
# positive (score 0.9): a disk of radius 17 where there is none. Its mask (908 px) is *small* (< 32² = 1024); its
# tight box (34 x 34 = 1156 px) is *medium*. The same two results, with and without a bbox:
from pycocotools.cocoeval import COCOeval

small_gt, false_pos = disk(40, 40, 10), disk(110, 110, 17)
one_coco = coco_from({1: [(DK, small_gt)]}, TOY_NAMES, S)

def segm_result(mask, score, with_bbox):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    r = {"image_id": 1, "category_id": DK, "score": score,
         "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}}
    if with_bbox:
        x1, y1, x2, y2 = box_of(mask)
        r["bbox"] = [x1, y1, x2 - x1, y2 - y1]
    return r

aps = {}
for with_bbox in (False, True):
    results = [segm_result(false_pos, 0.9, with_bbox), segm_result(small_gt, 0.8, with_bbox)]
    with contextlib.redirect_stdout(io.StringIO()):
        dt = one_coco.loadRes(results)
        ev = COCOeval(one_coco, dt, "segm")
        ev.evaluate(); ev.accumulate(); ev.summarize()
    aps[with_bbox] = ev.stats[3]
    print(f"segm results {'with' if with_bbox else 'without'} bbox: the false positive's area "
          f"{dt.anns[1]['area']:5.0f} -> APs {ev.stats[3]:.3f}")
assert np.isclose(aps[False], 0.5)  # the false positive is small, ranks first: precision 1/2 at recall 1
assert np.isclose(aps[True], 1.0)   # taken as medium, it is ignored when scoring small objects
""")

code("""
AREA_RANGES = {"all": (0, 1e10), "small": (0, 32 ** 2), "medium": (32 ** 2, 96 ** 2), "large": (96 ** 2, 1e10)}

def coco_ap(gt, pred, iou_type, max_dets=100):
    \"\"\"AP, AP50, AP75, APs, APm, APl as COCOeval computes them.

    gt: {image_id: {'labels' (G,), 'boxes' (G, 4) xywh, 'masks' (G, H, W), 'areas' (G,)}}, objects in file order.
    pred: {image_id: prediction dict as model.predict gives it (xyxy boxes)}.
    \"\"\"
    labels = sorted({int(c) for g in gt.values() for c in g["labels"]})
    precision = np.full((len(IOU_THRESHOLDS), len(RECALL_LEVELS), len(labels), len(AREA_RANGES)), -1.0)
    for k, label in enumerate(labels):
        for a, (lo, hi) in enumerate(AREA_RANGES.values()):
            per_t = [[[], [], []] for _ in IOU_THRESHOLDS]             # scores, tp, ignored per threshold
            n_gt = 0
            for img in sorted(gt):
                g, p = gt[img], pred.get(img)
                gsel = np.flatnonzero(g["labels"] == label)
                g_ignore = (g["areas"][gsel] < lo) | (g["areas"][gsel] > hi)
                gsel, g_ignore = gsel[np.argsort(g_ignore, kind="mergesort")], np.sort(g_ignore, kind="mergesort")
                n_gt += int((~g_ignore).sum())
                dsel = np.flatnonzero(p["labels"] == label) if p is not None else np.zeros(0, int)
                dsel = dsel[np.argsort(-np.asarray(p["scores"], np.float64)[dsel], kind="mergesort")][:max_dets] \\
                    if len(dsel) else dsel
                if len(dsel) == 0:
                    continue
                d_xywh = to_xywh(p["boxes"])[dsel]
                if iou_type == "bbox":                          # a detection's own area: its box's ...
                    d_area = d_xywh[:, 2] * d_xywh[:, 3]
                else:                                           # ... or its mask's pixel count
                    d_area = (np.asarray(p["masks"])[dsel] >= 0.5).reshape(len(dsel), -1).sum(axis=1)
                d_out = (d_area < lo) | (d_area > hi)
                if len(gsel) == 0:
                    ious = np.zeros((len(dsel), 0))
                elif iou_type == "bbox":
                    ious = box_iou_coco(d_xywh, g["boxes"][gsel])
                else:
                    ious = mask_iou(np.asarray(p["masks"])[dsel] >= 0.5, g["masks"][gsel])
                for ti, t in enumerate(IOU_THRESHOLDS):
                    m = match_image(ious, g_ignore, t)
                    ignored = d_out.copy()                  # unmatched: ignored if outside the range
                    ignored[m > -1] = g_ignore[m[m > -1]]    # matched: ignored if its object is
                    per_t[ti][0].append(np.asarray(p["scores"], np.float64)[dsel])
                    per_t[ti][1].append(m > -1)
                    per_t[ti][2].append(ignored)
            if n_gt == 0:
                continue                                            # no objects: this class is left out
            for ti, (s, tp, ig) in enumerate(per_t):
                if not s:
                    precision[ti, :, k, a] = 0.0
                    continue
                precision[ti, :, k, a] = interpolated_precision(*pr_curve(np.concatenate(s), np.concatenate(tp),
                                                                          np.concatenate(ig), n_gt))
    def mean(x):
        return float(x[x > -1].mean()) if (x > -1).any() else -1.0
    return {"AP": mean(precision[..., 0]), "AP50": mean(precision[0, ..., 0]), "AP75": mean(precision[5, ..., 0]),
            "APs": mean(precision[..., 1]), "APm": mean(precision[..., 2]), "APl": mean(precision[..., 3])}, precision

def gt_arrays(coco):
    # {image_id: labels, xywh boxes, masks, areas} from a COCO object, objects in file order (as COCOeval reads them)
    out = {}
    for img in sorted(coco.imgs):
        anns = [a for a in coco.dataset["annotations"] if a["image_id"] == img and not a.get("iscrowd", 0)]
        h, w = coco.imgs[img]["height"], coco.imgs[img]["width"]
        out[img] = {"labels": np.array([a["category_id"] for a in anns], int),
                    "boxes": np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4),
                    "masks": np.array([coco.annToMask(a) for a in anns], bool).reshape(-1, h, w),
                    "areas": np.array([a["area"] for a in anns], np.float64)}
    return out
""")

code("""
toy_gt_arrays = gt_arrays(toy_coco)
print(f"{'':6s}" + "".join(f"{k:>16s}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")))
for t in ("bbox", "segm"):
    mine, _ = coco_ap(toy_gt_arrays, toy_pred, t)
    print(f"{t:6s}" + "".join(f"{mine[k]:8.4f}/{toy_summary[t][k]:7.4f}" for k in mine), "  (ours/COCOeval)")
    assert all(abs(mine[k] - toy_summary[t][k]) < 1e-9 for k in mine), (mine, toy_summary[t])
    mine_perfect, _ = coco_ap(toy_gt_arrays, perfect, t)
    assert all(abs(mine_perfect[k] - perfect_summary[t][k]) < 1e-9 for k in STATS)
""")

md("""
Reading the table:

* AP50 is the same for boxes and masks: every detection here that passes 0.5 passes it for both. AP75 is not:
  image 3's large disk passes 0.75 by mask IoU only (hence also mask APl 0.75 vs box APl 0.70).
* The duplicate square and the background disk are false positives at every threshold; so is the "square" on
  the big disk (the disk itself is found by its own detection). The small disk of image 2 is never found:
  the disks' recall stops at 0.75, and no threshold can make up for it.
* Small objects lose IoU fastest with every pixel of shift: APs is the lowest of the three. That is why small
  objects are the hard part of COCO (paper Table 1: mask APS 12–17 vs APL 51–54).

`plot_pr_curves` draws COCOeval's curves of the toy set: the square's curve falls at once (its most confident
false positive, the duplicate, comes second), the disk's ends at recall 0.75.

**AP across thresholds.** AP@[.5:.95] rewards precise localisation: it is the mean of the AP at each threshold.
""")

code("""
display(plot_pr_curves(toy_ev.precision["segm"], toy_ev.recall_thresholds, toy_ev.iou_thresholds, TOY_NAMES,
                       at=(0.5, 0.75), title="toy, segm"))
_, toy_precision = coco_ap(toy_gt_arrays, toy_pred, "segm")
_, toy_precision_bb = coco_ap(toy_gt_arrays, toy_pred, "bbox")
fig, ax = plt.subplots(figsize=(5, 3))
for name, prec in (("bbox", toy_precision_bb), ("segm", toy_precision)):
    per_t = [prec[t, :, :, 0][prec[t, :, :, 0] > -1].mean() for t in range(len(IOU_THRESHOLDS))]
    ax.plot(IOU_THRESHOLDS, per_t, "o-", label=f"{name}: mean = AP = {np.mean(per_t):.3f}")
    assert np.isclose(np.mean(per_t), toy_summary[name]["AP"], rtol=0, atol=1e-9)
ax.set_xlabel("IoU threshold"); ax.set_ylabel("AP at that threshold"); ax.set_ylim(0, 1.05); ax.legend()
ax.grid(alpha=0.3)
plt.show()
""")

md("""
## 3. Evaluating the model

`evaluate_model(model, dataset)` predicts every image, passes the predictions to `CocoEvaluator`, runs
`COCOeval` for boxes and masks, and returns the metrics, the evaluator (with COCOeval's precision arrays, for
the curves) and the predictions. By default the evaluated set is the 4 images the short run memorised.
""")

code("""
t0 = time.perf_counter()
metrics, evaluator, predictions = evaluate_model(model, eval_set, progress=False)
print(f"\\n{time.perf_counter() - t0:.1f} s for {len(eval_set)} images")
""")

md("""
Our implementation agrees with COCOeval on these predictions too (every detection of every image, boxes and
masks):
""")

code("""
model_gt = gt_arrays(eval_set.coco)
model_pred = dict(zip(eval_set.image_ids, predictions))
for t in ("bbox", "segm"):
    mine, _ = coco_ap(model_gt, model_pred, t)
    print(t, {k: round(v, 4) for k, v in mine.items()})
    assert all(abs(mine[k] - metrics[t][k]) < 1e-9 for k in mine), (mine, metrics[t])
""")

md("""
### Precision-recall curves

`plot_pr_curves` draws COCOeval's interpolated curves (`evaluator.precision[iou_type]`, shape (10 thresholds,
101 recall levels, K classes)) for each class at IoU 0.5 and 0.75; each legend entry is that curve's AP (the mean
of its 101 samples), the dashed line their mean over classes. A curve that ends early means missed objects; a
curve that falls early means confident false positives.
""")

code("""
for t in ("segm", "bbox"):
    display(plot_pr_curves(evaluator.precision[t], evaluator.recall_thresholds, evaluator.iou_thresholds, NAMES,
                           at=(0.5, 0.75), title=t))
""")

md("""
### Per-class AP

`CocoEvaluator.per_class_ap` averages each class's precision over the 10 thresholds and 101 recall levels; the
mean over classes is the AP of the summary (when every class has objects in the evaluated set).
""")

code("""
counts = {n: 0 for n in NAMES[1:]}
for a in eval_set.coco.dataset["annotations"]:
    counts[NAMES[eval_set.cat_id_to_label[a["category_id"]]]] += 1
columns = [(t, k) for t in ("bbox", "segm") for k in ("AP", "AP50")]
print(f"{'class':12s}{'objects':>8s}" + "".join(f"{t + ' ' + k:>12s}" for t, k in columns))
for k, name in enumerate(NAMES[1:]):
    row = [metrics[t]["per_class_AP"][name] if key == "AP" else evaluator.precision[t][0, :, k].mean()
           for t, key in columns]
    print(f"{name:12s}{counts[name]:8d}" + "".join(f"{v:12.3f}" for v in row))
print(f"{'all':12s}{sum(counts.values()):8d}" + "".join(f"{metrics[t][key]:12.3f}" for t, key in columns))
if all(counts.values()):                        # the summary's AP is the mean of the per-class APs
    for t in ("bbox", "segm"):
        assert abs(np.mean(list(metrics[t]["per_class_AP"].values())) - metrics[t]["AP"]) < 1e-12
""")

md("""
### Where the errors are: a breakdown, and the worst failures

AP compresses everything into one number. `minimaskrcnn.engine.analysis.error_breakdown` sorts every detection
in the spirit of COCO's `analyze()` (Hoiem et al., ECCV 2012), per image in score order, by mask IoU:
**correct** (IoU ≥ 0.5 with a free object of its class), **duplicate** (its object was already found),
**localization** (right class, IoU 0.1–0.5), **confusion** (no object of its class nearby, but one of another
class at IoU ≥ 0.1), **background** (overlaps nothing); and every object no correct detection found is
**missed**. We count them for all detections (score ≥ 0.05, what AP sees) and for the confident ones
(score ≥ 0.5, what a user would draw).
""")

code("""
eval_targets = [eval_set.get_target(i) for i in range(len(eval_set))]
kinds = (*ERROR_KINDS, "missed")
breakdowns = {thr: error_breakdown(eval_targets, predictions, "segm", score_thresh=thr) for thr in (0.05, 0.5)}
fig, ax = plt.subplots(figsize=(7, 2.4))
colors = dict(zip(kinds, ["tab:green", "tab:olive", "tab:orange", "tab:purple", "tab:red", "0.5"]))
for row, (thr, b) in enumerate(breakdowns.items()):
    left = 0
    for kind in kinds:
        ax.barh(row, b.counts[kind], left=left, color=colors[kind], label=kind if row == 0 else None)
        left += b.counts[kind]
    print(f"score >= {thr}: {b.counts}  ({b.num_objects} objects)")
ax.set_yticks([0, 1], [f"score >= {t}" for t in breakdowns]); ax.set_xlabel("detections (and missed objects)")
ax.legend(fontsize=7, ncol=6, loc="lower center", bbox_to_anchor=(0.5, 1.0))
plt.show()
b = breakdowns[0.05]
assert b.counts["correct"] + b.counts["missed"] == b.num_objects       # each object: found once, or missed
""")

md("""
The gallery: the most confident wrong detections (dashed outline: the object that decided the kind of error),
then the largest objects that no confident detection found (with the detection that overlaps each most, if any).
""")

code("""
wrong, _ = breakdowns[0.05].worst(4)
_, missed = breakdowns[0.5].worst(4)
cases = [("wrong", d) for d in wrong] + [("missed", m) for m in missed]
if cases:
    fig, axes = plt.subplots(1, len(cases), figsize=(2.4 * len(cases), 2.8), squeeze=False)
    for ax, (what, case) in zip(axes[0], cases):
        img, tgt, pred = eval_set.load_image(case.image), eval_targets[case.image], predictions[case.image]
        if what == "wrong":
            i = case.index
            draw_instances(img, pred["boxes"][i:i + 1], pred["labels"][i:i + 1], pred["masks"][i:i + 1],
                           pred["scores"][i:i + 1], NAMES, ax=ax)
            title = f"{case.kind}, IoU {case.iou:.2f}"
            if case.gt >= 0:
                ax.contour(tgt["masks"][case.gt], levels=[0.5], colors="w", linewidths=1, linestyles="--")
                title += f"\\n(with a {NAMES[case.gt_label]})" if case.kind == "confusion" else ""
        else:
            g = case.index
            draw_instances(img, tgt["boxes"][g:g + 1], tgt["labels"][g:g + 1], tgt["masks"][g:g + 1], ax=ax,
                           class_names=NAMES)
            title = f"missed {NAMES[case.label]}, {case.area:.0f} px"
            if case.best_det >= 0:
                ax.contour(pred["masks"][case.best_det], levels=[0.5], colors="w", linewidths=1, linestyles="--")
                title += f"\\nbest: {NAMES[case.best_label]}, IoU {case.best_iou:.2f}"
        ax.set_title(title, fontsize=7)
    plt.show()
else:
    print("no error to show")
""")

md("""
### Memorised images vs new images

The short run has seen each of its 4 images 100 times. The same model on 16 images it has never seen:
""")

code("""
if eval_set is not val_set:
    val_metrics, _, _ = evaluate_model(model, val_set, verbose=False, progress=False)
    for t in ("bbox", "segm"):
        print(f"{t}: AP {metrics[t]['AP']:.3f} on the training images, {val_metrics[t]['AP']:.3f} on new images")
else:
    print("(FULL: the evaluated set is already the validation set)")
""")

md(f"""
A network this size needs thousands of iterations on thousands of images to *generalise*; memorising 4 images
only takes a hundred. That gap is why AP is always reported on images held out from training (COCO's
`minival` / `test-dev` in the paper). The demo's model (`FULL = True`) is trained on 2,000 images for
{TINY.max_iters:,} iterations of {TINY.images_per_batch} images.

## Summary

* Test time: box branch on all proposals → softmax → class-specific decoding, clipped → score > 0.05 → per-class
  NMS at 0.5 → top k (100 in the paper, 30 in `tiny`) → mask branch on those boxes only → the predicted class's
  28 × 28 map through a sigmoid → boxes rescaled to the input image → masks pasted (soft) → binarised at 0.5.
* COCO AP: IoU (boxes or masks) → greedy matching per image and class in score order, each object matched at
  most once → precision/recall over all images → upper envelope sampled at 101 recall levels → mean. AP is the
  mean over 10 IoU thresholds (0.50:0.95) and the classes; AP50, AP75 fix the threshold; APs/m/l filter by the
  objects' (mask) area.
* About a hundred lines of NumPy reproduce `COCOeval` to 1e-9 on a toy set and on the model's detections,
  including the subtle parts: ignored objects tried last, a detection's area taken from its box for box AP and
  from its mask for mask AP, `np.spacing(1)` in the precision.
* Beyond AP, an error breakdown (`engine.analysis.error_breakdown`) says *why* detections fail: duplicates,
  poor localisation, class confusion, background, missed objects; the worst cases are worth looking at.

## Exercises

1. **Score threshold.** Set `rh.score_thresh = 0.5` and re-evaluate. Why can AP only stay the same or drop,
   although the dropped detections all have low scores? (Think of where they sit on the PR curve.) What
   does a threshold buy at inference time, then?
2. **NMS threshold.** Try `rh.nms_thresh` 0.3 and 0.7. 0.3 is the default test-time NMS that the paper's
   original results used, inherited from Fast/Faster R-CNN (`TEST.NMS = 0.3` in py-faster-rcnn, and still the
   default in Detectron's `core/config.py`). Appendix B's "updated baseline" uses 0.5 instead, with a longer
   schedule (Table 8: mask AP 36.7 → 37.0), and so does every Mask R-CNN config Detectron published, as well as
   Detectron2 and torchvision (our 0.5). Which objects does 0.3 lose (look for overlapping shapes), and what
   does 0.7 add?
3. **The 101 points.** PASCAL VOC 2007 used 11 recall levels (0, 0.1, ..., 1), VOC 2010+ the exact area under the
   envelope. Compute both for the toy disks and compare with the 101-point AP.
4. **A duplicate.** In the toy example, give the duplicate square (score 0.80) a score of 0.10 instead. Which of
   AP, AP50, AP75 changes, and why does the order of the detections matter more than the scores themselves?
5. **Mask vs box AP.** Shift every toy detection by one more pixel. Which falls faster, box AP or mask AP? Why are
   the box and mask IoU of a shifted square always equal, and those of a shifted disk not?
6. **Soft masks.** `model.predict(images, mask_threshold=None)` returns the pasted probabilities. Binarise them
   at 0.4 and 0.6 instead of 0.5 and evaluate with `minimaskrcnn.engine.evaluator.evaluate_predictions`: is 0.5
   the best threshold for this model?
""")


md(r"""
### Answer key

A worked solution of the exercises (a release for students replaces it by a stub: try them first).
""")

code(r"""
### BEGIN SOLUTION
from minimaskrcnn.engine.evaluator import evaluate_predictions  # noqa: E402


def ap_of(**settings):
    # The model's COCO metrics on eval_set with some roi_heads settings changed (restored afterwards).
    saved = {k: getattr(rh, k) for k in settings}
    try:
        for k, v in settings.items():
            setattr(rh, k, v)
        m, _, preds = evaluate_model(model, eval_set, verbose=False, progress=False)
    finally:
        for k, v in saved.items():
            setattr(rh, k, v)
    return m, sum(len(p_["scores"]) for p_ in preds)


# 1. Score threshold 0.5. The dropped detections are each class's lowest-scored ones: the tail of its ranking,
#    i.e. the high-recall end of the PR curve. Dropping them leaves the beginning of the curve as it was and can
#    only cut recall (and the envelope, a maximum over higher recalls, can only fall): AP stays or drops.
m05, n05 = ap_of(score_thresh=0.5)
n_default = sum(len(p_["scores"]) for p_ in predictions)
for t in ("bbox", "segm"):
    print(f"1. {t}: AP {metrics[t]['AP']:.3f} with score > 0.05 ({n_default} detections), "
          f"{m05[t]['AP']:.3f} with score > 0.5 ({n05} detections)")
    assert m05[t]["AP"] <= metrics[t]["AP"] + 1e-12
#    What the threshold buys at inference: fewer boxes for NMS, for the mask branch and for pasting, and an
#    output a user can draw as is.

# 2. NMS at 0.3, 0.5, 0.7 on the model, then on two overlapping squares of one class (IoU 0.43).
for thr in (0.3, 0.5, 0.7):
    m_, n_ = ap_of(nms_thresh=thr)
    print(f"2. nms_thresh {thr}: {n_:3d} detections, bbox AP {m_['bbox']['AP']:.3f}, segm AP {m_['segm']['AP']:.3f}")
pair = np.array([[0, 0, 10, 10], [4, 0, 14, 10], [0.5, 0, 10.5, 10]], np.float32)   # the 3rd: a near-duplicate
pair_scores, pair_labels = np.array([0.9, 0.8, 0.7], np.float32), np.array([1, 1, 1])
kept_by = {thr: batched_nms(pair, pair_scores, pair_labels, thr).tolist() for thr in (0.3, 0.5, 0.7)}
print("   two squares with IoU 0.43 and a near-duplicate (IoU 0.90) of the first: kept", kept_by)
assert kept_by == {0.3: [0], 0.5: [0, 1], 0.7: [0, 1]}
#    0.3 loses the second of two objects of the same class that overlap by more than 0.3 (touching or stacked
#    shapes); 0.7 keeps them, and also lets through near-duplicates between 0.5 and 0.7, each a false positive
#    of the object already found (here the 0.90 duplicate is still removed). On this memorised model, whose
#    shapes rarely overlap, 0.3 even scores a little higher and 0.7 lower: the detections that a looser NMS adds
#    are mostly duplicates.

# 3. VOC07's 11-point AP and VOC2010+'s area under the envelope, for the toy disks (masks, IoU 0.5).
d_scores, d_tp, d_gt = class_detections(toy_gt, toy_pred, DK, 0.5, mask_iou)
rec, prec = pr_curve(d_scores, d_tp, np.zeros(len(d_tp), bool), d_gt)
env = np.maximum.accumulate(prec[::-1])[::-1]
ap11 = np.mean([env[rec >= r].max() if np.any(rec >= r) else 0.0 for r in np.linspace(0, 1, 11)])
steps = np.diff(np.concatenate([[0.0], rec]))
ap_area = float(np.sum(steps * env))                               # sum over recall steps of width x envelope
ap101 = interpolated_precision(rec, prec).mean()
print(f"3. disks: 11-point AP {ap11:.4f}, area under the envelope {ap_area:.4f}, 101-point AP {ap101:.4f}")
assert abs(ap101 - ap_coco) < 1e-9 and abs(ap_area - ap101) < 0.02 and abs(ap11 - ap101) < 0.1
#    The 101-point mean approximates the area; 11 points sample the envelope coarsely (recall 0.75 is between
#    0.7 and 0.8, so the last reached level counts as 0.7's only).

# 4. The duplicate square at 0.10 instead of 0.80: it falls to the end of the squares' ranking, after every
#    true positive, so it no longer lowers the precision of the later ones. AP depends on the ranking only.
dup_low = [(img, c, src, dx, dy, 0.10 if (img, c, src, dx, dy) == (1, SQ, 0, 8, 5) else sc)
           for img, c, src, dx, dy, sc in toy_dets]
low_summary, _ = coco_eval(toy_coco, predictions_from(dup_low), TOY_NAMES)
for t in ("bbox", "segm"):
    print(f"4. {t}: " + ", ".join(f"{k} {toy_summary[t][k]:.3f} -> {low_summary[t][k]:.3f}"
                                  for k in ("AP", "AP50", "AP75")))
    assert all(low_summary[t][k] >= toy_summary[t][k] for k in ("AP", "AP50", "AP75"))
    assert low_summary[t]["AP50"] > toy_summary[t]["AP50"]
#    Any order-preserving change of the scores (here, squaring them) leaves every AP as it was:
squared = {img: {**p_, "scores": p_["scores"] ** 2} for img, p_ in toy_pred.items()}
squared_summary, _ = coco_eval(toy_coco, squared, TOY_NAMES)
assert all(squared_summary[t][k] == toy_summary[t][k] for t in ("bbox", "segm") for k in STATS)

# 5. Every detection shifted by one more pixel (to the right).
one_more = [(img, c, src, dx + 1, dy, sc) for img, c, src, dx, dy, sc in toy_dets]
more_summary, _ = coco_eval(toy_coco, predictions_from(one_more), TOY_NAMES)
for t in ("bbox", "segm"):
    print(f"5. {t}: AP {toy_summary[t]['AP']:.3f} -> {more_summary[t]['AP']:.3f}")
    assert more_summary[t]["AP"] < toy_summary[t]["AP"]
#    Here mask AP falls a little more than box AP. Which falls faster depends on the shapes and the shift: for
#    squares the two IoUs are equal; for a disk shifted sideways the mask IoU is the lower one (notebook 00's
#    exercise 4), shifted diagonally it can be the higher one (below).
#    A square's mask is its box, and a shifted square's mask is its shifted box: the intersection and the union
#    of the masks are those of the boxes, so box and mask IoU are equal. A disk fills only pi/4 of its box, and
#    its overlap with a shifted copy loses a crescent of a different share of its area than the box loses:
sq_m, dk_m = square(20, 20, 60, 60), disk(80, 80, 20)
for name_, m_ in (("square", sq_m), ("disk", dk_m)):
    moved = shifted(m_, 3, 2)
    b_iou = box_iou_coco(to_xywh([box_of(moved)]), to_xywh([box_of(m_)]))[0, 0]
    m_iou = mask_iou(moved[None], m_[None])[0, 0]
    print(f"   {name_} shifted (3, 2) px: box IoU {b_iou:.4f}, mask IoU {m_iou:.4f}")
    assert (abs(b_iou - m_iou) < 1e-12) == (name_ == "square")

# 6. Soft masks, binarised at 0.4, 0.5 and 0.6 (the boxes, labels and scores do not change).
soft_preds = model.predict([eval_set.load_image(i) for i in range(len(eval_set))], mask_threshold=None)
segm_ap = {}
for thr in (0.4, 0.5, 0.6):
    preds_thr = [{**p_, "masks": p_["masks"] >= thr} for p_ in soft_preds]
    summary_thr, _ = evaluate_predictions(eval_set, preds_thr, verbose=False, iou_types=("segm",))
    segm_ap[thr] = summary_thr["segm"]["AP"]
    print(f"6. masks >= {thr}: segm AP {segm_ap[thr]:.3f}")
assert abs(segm_ap[0.5] - metrics["segm"]["AP"]) < 1e-12           # the same as predict's binary masks
#    Whether 0.5 is best depends on the model: a head whose edges are too soft (too hard) gains from a lower
#    (higher) threshold. The paper fixes 0.5; a threshold tuned on the evaluated images would flatter the result.
### END SOLUTION
""")


if __name__ == "__main__":
    NB.write()
