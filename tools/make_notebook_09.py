"""Build notebooks/09_keypoints.ipynb (without outputs) from the cells below.

    python tools/make_notebook_09.py
"""
from notebook_builder import NotebookBuilder

from minimaskrcnn import config
from minimaskrcnn.engine.ablate_tables import ITERS, TABLES

KP = config.tiny_keypoints()
T6 = {v.name: v.paper["keypoints"] for v in TABLES["6"].variants}
NB = NotebookBuilder("09_keypoints.ipynb")
md, code = NB.md, NB.code


md(r"""
# 09 · Keypoints: the same Mask R-CNN predicting poses

The paper's claim of generality rests on its §5: the framework that predicts a mask per object predicts a
human pose with one change of head, and reaches 63.1 keypoint AP on COCO at 5 fps.

> "We model a keypoint's location as a one-hot mask, and adopt Mask R-CNN to predict K masks, one for each of
> K keypoint types (e.g., left shoulder, right elbow). [...] For each of the K keypoints of an instance, the
> training target is a one-hot m × m binary mask where only a single pixel is labeled as foreground. During
> training, for each visible ground-truth keypoint, we minimize the cross-entropy loss over an m²-way softmax
> output (which encourages a single point to be detected)." — He et al., *Mask R-CNN*, §5

You will:

1. look at the synthetic pose set: stick persons with COCO's 17 person keypoints, visible (v=2) and occluded
   (v=1);
2. see why the keypoint loss is a **softmax over m² cells** where the mask loss used per-pixel sigmoids, and
   check its gradient;
3. follow the head to its **56 × 56** output through a transposed conv and a **2× bilinear upsample**, and check
   that layer's gradient;
4. draw the **target discretisation** on a real RoI, and **decode** heatmaps back to image coordinates;
5. compute **OKS** by hand beside COCOeval's;
6. train a tiny keypoint model for a few iterations (or load the demo's, `FULL = True`) and draw its skeletons;
7. read the paper's Table 6, RoIPool vs RoIAlign for keypoints, beside our run of it.
""")

code("""
# Parameters (the defaults run in well under two minutes on a laptop CPU)
SEED = 0
TRAIN_ITERS = 30           # iterations of the short training run in section 6
FULL = False               # True: section 6 loads CHECKPOINT (default: the keypoint demo's last.npz)
CHECKPOINT = None          # a tiny_keypoints checkpoint; None with FULL: runs/demo_keypoints/last.npz
ABLATIONS = "../results/ablations/ablations.json"   # Table 6, by: python -m minimaskrcnn ablate --table 6 ...
""")

code("""
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

if importlib.util.find_spec("minimaskrcnn") is None:  # a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.abspath(".."))

from minimaskrcnn.data.coco import CocoDataset
from minimaskrcnn.data.keypoints import COCO_PERSON_KEYPOINTS, COCO_PERSON_SIGMAS, COCO_PERSON_SKELETON
from minimaskrcnn.data.poses import make_poses_dataset
from minimaskrcnn.engine.evaluator import evaluate_predictions
from minimaskrcnn.model.keypoint_head import heatmaps_to_keypoints, keypoints_to_heatmap
from minimaskrcnn.model.losses import keypointrcnn_loss_backward, keypointrcnn_loss_forward
from minimaskrcnn.nn.gradcheck import check_gradient
from minimaskrcnn.nn.resample import upsample_bilinear_backward, upsample_bilinear_forward
from minimaskrcnn.viz.keypoints import draw_keypoint_grid, draw_skeletons

rng = np.random.default_rng(SEED)
np.set_printoptions(precision=3, suppress=True, linewidth=110)
plt.rcParams.update({"figure.dpi": 80, "font.size": 9})
WORK = Path(tempfile.mkdtemp(prefix="nb09_"))
root = make_poses_dataset(WORK / "poses", num_train=24, num_val=8, progress=False)
train, val = CocoDataset(root, "train"), CocoDataset(root, "val")
print(train.summary())
""")

md("""
## 1. The pose set

`python -m minimaskrcnn.data.poses --out data/poses` writes it; here a small one in a temporary folder. Each
person carries COCO's 17 keypoints in COCO's order, as `[x, y, v]` triples. Filled dots and solid limbs are
visible keypoints (v = 2), hollow dots and dashed limbs are occluded ones (v = 1, covered by a person or a
rectangle drawn later): they are labelled, and torchvision trains on them too. The person's left side (blue)
is on the image's right, as in a photo of someone facing the camera.
""")

code("""
fig, axes = plt.subplots(1, 4, figsize=(11, 3))
for ax, i in zip(axes, range(4)):
    image, target = train[i]
    ax.imshow(image)
    draw_skeletons(ax, target["keypoints"], train.skeleton, train.keypoint_names)
    ax.set_axis_off()
    v = target["keypoints"][..., 2]
    ax.set_title(f"{len(v)} persons: {(v == 2).sum()} visible, {(v == 1).sum()} occluded", fontsize=8)
print(list(enumerate(COCO_PERSON_KEYPOINTS)))
""")

md(r"""
## 2. A keypoint is a one-hot mask: softmax over m², not per-pixel sigmoids

The mask branch predicts, for every pixel, *is this pixel inside the object?*: many pixels are, independently,
so each gets its own sigmoid. A keypoint is **one** pixel of the m × m map. The natural output is then a
distribution over the m² cells, a softmax, and the loss the cross-entropy of the true cell:
$L = -\log \frac{e^{z_t}}{\sum_j e^{z_j}}$, averaged over the labelled keypoints of the positive RoIs. The cells
compete, which "encourages a single point to be detected"; the K keypoint types stay independent (one softmax
each). Its gradient is `softmax - one_hot`, divided by the number of keypoints:
""")

code("""
logits = rng.standard_normal((2, 3, 8, 8))                 # 2 RoIs, 3 keypoint types, an 8 x 8 grid
cells = rng.integers(0, 64, (2, 3))                        # each keypoint's target cell, y * 8 + x
valid = np.array([[True, True, False], [True, False, True]])
loss, cache = keypointrcnn_loss_forward(logits, cells, valid)
d_logits = keypointrcnn_loss_backward(1.0, cache)
err = check_gradient(lambda _: keypointrcnn_loss_forward(logits, cells, valid)[0], logits, d_logits)
print(f"loss {loss:.3f} (chance: log 64 = {np.log(64):.3f}); gradient check: relative error {err:.1e}")
print("each valid map's gradient sums to 0:", d_logits.sum(axis=(2, 3)).round(12).tolist())
""")

md(f"""
## 3. The head: 14 × 14 → 28 × 28 → 56 × 56

The paper's head is 8 × (3×3 conv, 512) on a 14 × 14 RoIAlign, a 4×4 stride-2 transposed conv to K maps
(28 × 28), then **2× bilinear upsampling** to 56 × 56: "relatively high resolution output (compared to masks)
is required for keypoint-level localization accuracy". Our `tiny_keypoints` config keeps every step but narrows
the convs to {len(KP.keypoint_layers)} × {KP.keypoint_layers[0]}. The bilinear upsampling has no weights; each
output pixel mixes the 2 × 2 inputs around the point it maps back to, with weights 0.75 and 0.25 along each axis
(`align_corners=False`, as torchvision). Its backward is the transpose, which the gradient check confirms:
""")

code("""
x = rng.standard_normal((1, 1, 4, 4))
up, cache = upsample_bilinear_forward(x)
print("row weights of the 2x upsample (8 outputs x 4 inputs):")
print(cache.my)
dout = rng.standard_normal(up.shape)
err = check_gradient(lambda _: upsample_bilinear_forward(x)[0], x, upsample_bilinear_backward(dout, cache), dout)
print(f"gradient check: relative error {err:.1e}")
""")

md("""
## 4. Targets on a real RoI, and decoding back

`keypoints_to_heatmap` is torchvision's rule: a keypoint at `x` in a RoI from `x1` to `x2` lands in cell
`floor((x - x1) * m / (x2 - x1))`, one exactly on the right edge in the last cell; a keypoint outside the RoI or
with v = 0 gives no loss. At inference `heatmaps_to_keypoints` resizes each map (bicubic, as torchvision) to the
box's size in pixels, takes the argmax and returns the **centre** of that pixel. The round trip costs at most
half a heatmap cell:
""")

code("""
image, target = val[0]
box = target["boxes"][0]
kp = target["keypoints"][:1]
m = 56
cells, ok = keypoints_to_heatmap(kp, box[None], m)
maps = np.full((1, 17, m, m), -10.0, np.float32)               # a perfect predictor: one hot cell per map
maps[0, np.arange(17), cells[0] // m, cells[0] % m] = 10.0
decoded, scores = heatmaps_to_keypoints(maps, box[None])
cell_w, cell_h = (box[2] - box[0]) / m, (box[3] - box[1]) / m
err = np.abs(decoded[0, ok[0], :2] - kp[0, ok[0], :2])
print(f"cells are {cell_w:.2f} x {cell_h:.2f} px; round-trip error <= {err.max(axis=0)} px")

fig, axes = plt.subplots(1, 2, figsize=(8, 4))
axes[0].imshow(image)
draw_skeletons(axes[0], kp, COCO_PERSON_SKELETON, COCO_PERSON_KEYPOINTS)
axes[0].add_patch(plt.Rectangle(box[:2], *(box[2:] - box[:2]), fill=False, ec="w"))
axes[0].set_title("a GT person and its box (the RoI)")
grid = np.zeros((m, m))
for k in np.nonzero(ok[0])[0]:
    grid[cells[0, k] // m, cells[0, k] % m] = k + 1
axes[1].imshow(grid > 0, cmap="gray")
axes[1].set_title(f"the {ok[0].sum()} one-hot targets on the {m} x {m} grid")
for a in axes:
    a.set_axis_off()
""")

md(r"""
## 5. OKS, by hand and by COCOeval

Keypoint AP replaces box IoU with the **object keypoint similarity**: for a detection and a GT person,
$\mathrm{OKS} = \frac{1}{|\{v_i>0\}|}\sum_{v_i>0} \exp\!\left(-\frac{d_i^2}{2 s^2 k_i^2}\right)$, with $d_i$ the
distance between predicted and true keypoint $i$, $s^2$ the person's area and $k_i = 2\sigma_i$ a per-keypoint
tolerance that COCO measured from human annotators (eyes 0.025: strict; hips 0.107: loose). A detection is a
true positive at threshold t when its OKS with an unmatched GT is ≥ t; AP averages t = 0.50 … 0.95.
Here every keypoint is moved 2 px right: OKS by hand, then COCOeval's matrix for the same pair.
""")

code("""
preds = []
for i in range(len(val)):
    t = val.get_target(i)
    moved = t["keypoints"].copy()
    moved[..., 0] += 2.0
    preds.append({"boxes": t["boxes"], "labels": t["labels"], "scores": np.ones(len(t["labels"])),
                  "keypoints": moved})
area = val.coco.loadAnns(val.coco.getAnnIds(imgIds=val.image_ids[0]))[0]["area"]
k2 = (2 * np.asarray(COCO_PERSON_SIGMAS)) ** 2
labelled = val.get_target(0)["keypoints"][0, :, 2] > 0
oks = np.exp(-(2.0 ** 2) / (2 * area * k2))[labelled].mean()
metrics, evaluator = evaluate_predictions(val, preds, iou_types=("keypoints",), verbose=False)
cocoeval_oks = evaluator.coco_eval["keypoints"].ious[(val.image_ids[0], 1)][0, 0]
print(f"first person: area {area:.0f} px^2, OKS by hand {oks:.4f}, COCOeval {cocoeval_oks:.4f}")
print(f"keypoint AP of these shifted 'predictions' over the val split: {metrics['keypoints']['AP']:.3f}")
""")

md(f"""
## 6. A trained model's skeletons

`python -m minimaskrcnn demo --task keypoints` generates 2,000 + 200 pose images, trains `tiny_keypoints` for
{KP.max_iters:,} iterations of {KP.images_per_batch} images, evaluates keypoint AP (OKS) and writes
`runs/demo_keypoints/keypoints.png`. With `FULL = True` this section loads its checkpoint; by default it trains
for `TRAIN_ITERS` iterations on the 24 images above, enough to see the pipeline run end to end, not to see
good poses.
""")

code("""
from minimaskrcnn.engine.checkpoint import load_checkpoint_model
from minimaskrcnn.engine.run import run_config, train_model

REPO = Path("..").resolve()
if FULL and CHECKPOINT is None:
    CHECKPOINT = REPO / "runs" / "demo_keypoints" / "last.npz"
if CHECKPOINT is not None and not Path(CHECKPOINT).exists():
    print(f"{CHECKPOINT} not found (run `python -m minimaskrcnn demo --task keypoints`): a short run instead")
    CHECKPOINT = None
if CHECKPOINT is not None:
    model = load_checkpoint_model(str(CHECKPOINT))
else:
    cfg = run_config(train.class_names, "tiny_keypoints", iters=TRAIN_ITERS,
                     keypoints=(train.keypoint_names, train.skeleton))
    model, _ = train_model(cfg, train, WORK / "run", progress=False, checkpoint_every=1000)
images = [val.load_image(i) for i in range(4)]
predictions = model.predict(images)
fig = draw_keypoint_grid(images, [val.get_target(i) for i in range(4)], predictions, val.skeleton,
                         val.keypoint_names, score_thresh=0.5 if CHECKPOINT else 0.0)
fig
""")

md(f"""
## 7. Table 6: RoIPool vs RoIAlign for keypoints

A keypoint is located to one cell of a 56 × 56 heatmap over its box, finer than a mask needs; RoIPool's rounding
of the RoI to the feature grid (notebook 04) shifts every cell by up to half a feature stride. The paper measures
what that costs: RoIPool {T6['RoIPool'][0]} vs RoIAlign {T6['RoIAlign'][0]} AP^kp (ResNet-50-FPN, COCO minival),
+{T6['RoIAlign'][0] - T6['RoIPool'][0]:.1f} points, more at AP75 (+{T6['RoIAlign'][2] - T6['RoIPool'][2]:.1f}) than
at AP50 (+{T6['RoIAlign'][1] - T6['RoIPool'][1]:.1f}).

`python -m minimaskrcnn ablate --table 6` trains the same comparison in miniature: `tiny_keypoints` on the pose
set (the keypoint demo's 2,000 + 200 images of 128 px) for {ITERS['6']:,} iterations, once with RoIPool and once
with RoIAlign in every RoI head, 2 seeds each, scored by keypoint AP (OKS) and box AP. It is not part of
`ablate --table all` (notebook 08's tables); about 25 minutes with `--jobs 2` on 2 cores. This cell shows the
committed run, if there is one; it trains nothing.
""")

code("""
import json

from IPython.display import Markdown, display

from minimaskrcnn.engine.ablate_report import markdown_table
from minimaskrcnn.engine.ablate_tables import TABLES
from minimaskrcnn.viz.ablations import plot_ablation

record = json.loads(Path(ABLATIONS).read_text()) if Path(ABLATIONS).exists() else {}
if "6" in record.get("tables", {}):
    display(Markdown(markdown_table(record["tables"]["6"])))
    display(plot_ablation(record["tables"]["6"]))
else:
    print(f"NO RUN OF TABLE 6 IS COMMITTED YET ({ABLATIONS} has no table '6'). From the repository root:")
    print("    python -m minimaskrcnn ablate --table 6 --jobs 2 --out results/ablations")
    print("The paper's Table 6 (ResNet-50-FPN, COCO minival), AP^kp / AP^kp_50 / AP^kp_75:")
    for v in TABLES["6"].variants:
        print(f"    {v.name:<9s} " + " / ".join(f"{x:.1f}" for x in v.paper["keypoints"]))
""")

code("""
import shutil

shutil.rmtree(WORK, ignore_errors=True)        # the temporary pose set and run of this notebook
""")

md("""
## Exercises

1. Change the loss to per-pixel sigmoids (binary cross-entropy against the one-hot map) and train both for the
   same iterations: which localises better, and why does the softmax's competition between cells help?
2. Table 6 of the paper: RoIPool 59.8 vs RoIAlign 64.2 keypoint AP. Section 7 shows our run of it
   (`python -m minimaskrcnn ablate --table 6`). Is our gap beyond the seed spread? Is it larger at AP75 than at
   AP50, as the paper's? Which persons should lose most to RoIPool's rounding, small or large ones, and why?
3. Drop the bilinear upsampling (28 × 28 maps): how much keypoint AP does the resolution buy on 128 px images?
""")

NB.write()
