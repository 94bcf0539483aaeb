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

md(r"""
### Answer key

A worked solution of the exercises (a release for students replaces it by a stub: try them first). Exercises
1 and 3 ask for training runs, about 12 minutes each on 2 quiet cores (1,300 iterations at the keypoint demo's
0.53 s): the cell defines them but runs them only with `TRAIN_EXERCISES = True` (set in the cell); by default
it computes what can be computed without training and says what the runs are expected to show. Exercise 2
reads the committed Table 6.
""")

code(r"""
### BEGIN SOLUTION
import contextlib  # noqa: E402
from unittest import mock  # noqa: E402

from minimaskrcnn.backend import get_xp  # noqa: E402
from minimaskrcnn.data.poses import ensure_poses_dataset  # noqa: E402
from minimaskrcnn.engine.ablate_tables import DATASETS, ITERS  # noqa: E402
from minimaskrcnn.engine.inference import evaluate_model  # noqa: E402
from minimaskrcnn.model.keypoint_head import KeypointRCNNPredictor  # noqa: E402
from minimaskrcnn.nn.losses import (binary_cross_entropy_with_logits_backward,  # noqa: E402
                                    binary_cross_entropy_with_logits_forward)
from minimaskrcnn.ops.poolers import LevelMapper  # noqa: E402

TRAIN_EXERCISES = False      # True: train the 3 runs of exercises 1 and 3 (1,300 iterations each, ~40 min in all)
EXERCISE_ITERS = ITERS["6"]  # the keypoint demo's schedule, as Table 6's runs


# 1. Per-pixel sigmoids against the one-hot map, divided by the number of labelled keypoints as the softmax
#    loss is (only the loss's shape changes, not its scale).
def keypoint_bce_loss_forward(keypoint_logits, heatmaps, valid, normalizer=None):
    xp = get_xp(keypoint_logits)
    P, K, M, _ = keypoint_logits.shape
    rows = xp.nonzero(valid.reshape(-1))[0]                           # the labelled keypoints' maps
    if rows.size == 0:
        return 0.0, (None, keypoint_logits.shape, keypoint_logits.dtype, rows)
    onehot = xp.zeros((rows.size, M * M), keypoint_logits.dtype)
    onehot[xp.arange(rows.size), heatmaps.reshape(-1)[rows]] = 1
    loss, cache = binary_cross_entropy_with_logits_forward(keypoint_logits.reshape(P * K, M * M)[rows], onehot,
                                                           normalizer=rows.size if normalizer is None else normalizer)
    return loss, (cache, keypoint_logits.shape, keypoint_logits.dtype, rows)


def keypoint_bce_loss_backward(dloss, cache):
    bce_cache, shape, dtype, rows = cache
    xp = get_xp(rows)
    d = xp.zeros((shape[0] * shape[1], shape[2] * shape[3]), dtype)
    if bce_cache is not None:
        d[rows] = binary_cross_entropy_with_logits_backward(dloss, bce_cache)
    return d.reshape(shape)


lg = np.random.default_rng(1).standard_normal((2, 3, 8, 8))
tc, tv = np.array([[5, 17, 0], [63, 2, 40]]), np.array([[True, True, False], [True, False, True]])
err = check_gradient(lambda _: keypoint_bce_loss_forward(lg, tc, tv)[0], lg,
                     keypoint_bce_loss_backward(1.0, keypoint_bce_loss_forward(lg, tc, tv)[1]))
print(f"1. per-pixel sigmoid keypoint loss: gradient check, relative error {err:.1e}")
assert err < 1e-7
#    The two gradients on one 56 x 56 map at zero logits (the start of training), true cell in the middle:
zero, target, one = np.zeros((1, 1, 56, 56)), np.array([[28 * 56 + 28]]), np.ones((1, 1), bool)
g_soft = keypointrcnn_loss_backward(1.0, keypointrcnn_loss_forward(zero, target, one)[1]).reshape(-1)
g_bce = keypoint_bce_loss_backward(1.0, keypoint_bce_loss_forward(zero, target, one)[1]).reshape(-1)
others = np.arange(56 * 56) != target[0, 0]
for name, g in (("softmax over m^2", g_soft), ("per-pixel sigmoid", g_bce)):
    print(f"   {name}: gradient on the true cell {g[~others][0]:+.4f}, on each other cell {g[others][0]:+.5f}, "
          f"on the 3,135 others together {g[others].sum():+.1f}")
assert abs(g_soft.sum()) < 1e-12 and np.isclose(g_bce[others].sum(), -3135 * g_bce[~others][0])
#    The softmax's gradient sums to zero over the map: what the true cell gains, the others lose; the normaliser
#    makes the cells compete, and the loss is small only once one cell stands out above all the others
#    (exactly one location wins). The sigmoids' gradients are independent: the 3,135 negatives push down 3,135
#    times as hard as the one positive pulls up, so the loss is dominated by "low everywhere" (it would need a
#    positive weight near m^2 to balance), and nothing asks the true cell to beat its neighbours, only to be
#    high by itself: a low, wide peak whose argmax wanders among similar cells. Expected (not measured here):
#    lower keypoint AP with sigmoids, more at AP75 than at AP50.

# 3 (and the runs of 1). Without the bilinear upsampling: up_scale = 1 makes upsample_bilinear_forward the
#    identity, and the RoI heads size the targets by it (M = up_scale * 2 * 14): 28 x 28 maps and targets.
class KeypointRCNNPredictor28(KeypointRCNNPredictor):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.up_scale = 1


VARIANTS = {  # each variant: what is patched into the model's modules while it is built and trained
    "softmax, 56 x 56 (the paper)": {},
    "sigmoids, 56 x 56 (exercise 1)": {
        "minimaskrcnn.model.roi_heads.keypointrcnn_loss_forward": keypoint_bce_loss_forward,
        "minimaskrcnn.model.roi_heads.keypointrcnn_loss_backward": keypoint_bce_loss_backward},
    "softmax, 28 x 28 (exercise 3)": {"minimaskrcnn.model.mask_rcnn.KeypointRCNNPredictor": KeypointRCNNPredictor28},
}


def train_variant(changes, train_set, val_set, out_dir, iters=EXERCISE_ITERS):
    # tiny_keypoints (seed 0) trained with `changes` patched in (undone afterwards), scored by keypoint AP
    with contextlib.ExitStack() as stack:
        for where, replacement in changes.items():
            stack.enter_context(mock.patch(where, replacement))
        cfg = run_config(train_set.class_names, "tiny_keypoints", iters=iters,
                         keypoints=(train_set.keypoint_names, train_set.skeleton))
        trained, _ = train_model(cfg, train_set, out_dir, progress=True, checkpoint_every=iters)
    scores_, _, _ = evaluate_model(trained, val_set, verbose=False, progress=False, keep_masks=0)
    return scores_["keypoints"]


if TRAIN_EXERCISES:   # the keypoint demo's pose set (reused if the demo made it), one seed per variant
    pose_root = ensure_poses_dataset(REPO / DATASETS["poses"]["folder"], **DATASETS["poses"]["params"])
    pose_train, pose_val = CocoDataset(pose_root, "train"), CocoDataset(pose_root, "val")
    runs_dir = Path(tempfile.mkdtemp(prefix="nb09_exercises_"))
    for i, (name, changes) in enumerate(VARIANTS.items()):
        s = train_variant(changes, pose_train, pose_val, runs_dir / f"run{i}")
        print(f"{name}: keypoint AP {100 * s['AP']:.1f}, AP50 {100 * s['AP50']:.1f}, AP75 {100 * s['AP75']:.1f}")
    shutil.rmtree(runs_dir, ignore_errors=True)
    print("one seed each: compare the gaps with Table 6's seed spread (exercise 2) before reading anything in them")
else:
    print("   (TRAIN_EXERCISES = False: the runs of exercises 1 and 3 are defined above, not run)")

# What needs no training: every person of this notebook's pose set (train and val: the annotations stay in
# memory after the files were removed), its box, area (the OKS scale s^2) and keypoints; and a *perfect* head,
# which puts each keypoint in the right cell of the window it reads, decoded at that cell's centre in the box.
persons = [a for ds in (train, val) for a in ds.coco.loadAnns(ds.coco.getAnnIds())]
kps = np.array([a["keypoints"] for a in persons], np.float64).reshape(len(persons), -1, 3)
xywh = np.array([a["bbox"] for a in persons], np.float64)
pboxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
areas = np.array([a["area"] for a in persons], np.float64)
k2 = (2 * np.asarray(COCO_PERSON_SIGMAS)) ** 2
lo, size = pboxes[:, None, :2], pboxes[:, None, 2:] - pboxes[:, None, :2]
inside = (kps[..., 2] > 0) & np.all((kps[..., :2] >= lo) & (kps[..., :2] <= lo + size), axis=-1)


def perfect_head(window, m):
    # each keypoint's cell on the m x m grid of `window` (what the head reads), decoded in the true box
    w_lo, w_size = window[:, None, :2], window[:, None, 2:] - window[:, None, :2]
    cell = np.clip(np.floor((kps[..., :2] - w_lo) * m / w_size), 0, m - 1)
    return lo + (cell + 0.5) * size / m


def person_oks(pred):
    # COCO's OKS per person over its labelled keypoints inside its box
    e = np.exp(-((pred - kps[..., :2]) ** 2).sum(-1) / (2 * areas[:, None] * k2))
    return np.array([row[use].mean() for row, use in zip(e, inside)])


def ap_bound(oks_values):
    # the AP of a detector that finds every person, with these keypoints, ranked by their OKS: at each
    # threshold t its precision is 1 up to the share of persons with OKS >= t, so AP_t is that share
    return np.mean([np.mean(oks_values >= t) for t in np.linspace(0.5, 0.95, 10)])


# 2. Reading Table 6 (section 7): a gap is evidence only where it exceeds the seed spread (the larger range over
#    seeds of the two variants); then compare the gap at AP75 with the one at AP50, and the gap over all persons
#    with the one over the larger ones (APm: area >= 32^2 px^2; keypoint AP has no APs, and ours has no APl).
def signed(x):
    return "-" if x is None else f"{x:+.1f}"


def read_table6(rec):
    if "6" not in rec.get("tables", {}):
        print(f"2. no Table 6 in {ABLATIONS} yet: python -m minimaskrcnn ablate --table 6 --jobs 2 "
              "--out results/ablations, then run this cell again")
        return
    t6 = rec["tables"]["6"]
    for stat, g in ((s, t6["comparisons"][0]["gaps"][f"keypoints {s}"]) for s in ("AP", "AP50", "AP75")):
        verdict = "no spread to judge" if g["counts"] is None else (
            "beyond the seed spread" if g["counts"] else "within the seed spread")
        print(f"2. keypoint {stat}: RoIAlign - RoIPool {signed(g['ours'])} (paper {signed(g['paper'])}); seed "
              f"spread {g['spread']}: {verdict}")
    apm = {v["name"]: [rec["runs"][r]["keypoints"]["APm"] for r in v["runs"]] for v in t6["variants"]}
    if all(x is not None for xs in apm.values() for x in xs):
        gap_m = np.mean(apm["RoIAlign"]) - np.mean(apm["RoIPool"])
        print(f"   APm (the larger persons): RoIAlign - RoIPool {signed(gap_m)}, per seed {apm}; a gap over all"
              " persons larger than this one says the smaller persons lose more")


read_table6(record)
#    Which persons should lose most: the small ones. Every person here is under 112 px (sqrt(wh)), so Eq. 1 sends
#    it to P2: RoIPool rounds its RoI to the same 4 px grid whatever its size, an error of a fixed number of
#    pixels, while OKS's tolerance grows with the person's scale s. (In an FPN the RoIs of 112-448 px get a
#    coarser level as they grow, a rounding of a roughly constant share of their size: the smallest lose most.)
#    RoIPool's first rounding (the RoI to the grid; the bins' rounding adds more), for a perfect head that
#    puts each keypoint where it is in the window it reads, by area (an upper bound of the harm: a trained head
#    sees context around the window and can compensate in part):
strides = 2.0 ** (LevelMapper(2, 5)(np.concatenate([np.zeros((len(pboxes), 1)), pboxes], axis=1)) + 2)
pooled_window = np.floor(pboxes / strides[:, None] + 0.5) * strides[:, None]              # round half up
pooled_window[:, 2:] = np.maximum(pooled_window[:, 2:], pooled_window[:, :2] + strides[:, None])
oks_align, oks_pool = person_oks(perfect_head(pboxes, 56)), person_oks(perfect_head(pooled_window, 56))
print(f"   levels read: {sorted(set((np.log2(strides)).astype(int).tolist()))} (P2 = stride 4)")
for name, group in (("area < 32^2", areas < 32 ** 2), ("area >= 32^2", areas >= 32 ** 2)):
    if group.any():
        print(f"   {name} ({group.sum():2d} persons): perfect head, mean OKS aligned {oks_align[group].mean():.3f}, "
              f"behind RoIPool's rounding {oks_pool[group].mean():.3f}; AP bound {100 * ap_bound(oks_align[group]):.0f}"
              f" -> {100 * ap_bound(oks_pool[group]):.0f}")

# 3. A keypoint is decoded at its cell's centre: up to half a cell off in x and in y, a cell being the box's
#    width (height) / m pixels. OKS tolerates, for keypoint i, the distance d where exp(-d^2 / (2 s^2 k_i^2))
#    falls to 0.5: d = 1.18 s k_i with k_i = 2 sigma_i, s = sqrt(area). The resolution matters where half a
#    cell is a sizeable part of that: strict keypoints (eyes 0.025, nose 0.026) on small persons.
cell28, cell56 = np.median(xywh[:, 2:], axis=0) / 28, np.median(xywh[:, 2:], axis=0) / 56
s_med = np.sqrt(np.median(areas))
d50 = np.sqrt(2 * np.log(2)) * s_med * 2 * np.asarray(COCO_PERSON_SIGMAS)
names = list(COCO_PERSON_KEYPOINTS)
print(f"3. median person: box {np.median(xywh[:, 2]):.0f} x {np.median(xywh[:, 3]):.0f} px, area {s_med ** 2:.0f} px^2"
      f" ({np.median(areas / xywh[:, 2:].prod(axis=1)):.0%} of its box); cells 28 x 28: {cell28[0]:.2f} x "
      f"{cell28[1]:.2f} px, 56 x 56: {cell56[0]:.2f} x {cell56[1]:.2f} px; the largest decoding error, half a cell"
      f" diagonally: {np.hypot(*cell28) / 2:.2f} px and {np.hypot(*cell56) / 2:.2f} px")
print("   distance at which a keypoint's OKS term is 0.5: " + ", ".join(
    f"{names[i]} {d50[i]:.1f} px" for i in (names.index("left_eye"), names.index("left_wrist"),
                                            names.index("left_hip"))))
oks28, oks56 = person_oks(perfect_head(pboxes, 28)), person_oks(perfect_head(pboxes, 56))
print(f"   a perfect head's mean OKS: 28 x 28 {oks28.mean():.3f}, 56 x 56 {oks56.mean():.3f}; "
      f"AP bound {100 * ap_bound(oks28):.0f} vs {100 * ap_bound(oks56):.0f}")
assert oks56.mean() > oks28.mean()
#    What the resolution can buy at most, for a head that is otherwise perfect; a trained head's own errors
#    (a few pixels) come on top and shrink the difference, which is why it needs the run above to measure.
#    The ratio of a cell to the tolerance, (box / m) / (s k), does not depend on the image's size: it matters as
#    much at 800 px. Our stick persons are thin (their area is a small part of their box), so their OKS is
#    stricter for their box size than a COCO person's, and the resolution matters more here.
### END SOLUTION
""")


NB.write()
