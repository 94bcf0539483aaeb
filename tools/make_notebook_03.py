"""Build notebooks/03_rpn.ipynb (without outputs) from the cells below.

    python tools/make_notebook_03.py
"""
from notebook_builder import NotebookBuilder

NB = NotebookBuilder("03_rpn.ipynb")
md, code = NB.md, NB.code


md(r"""
# 03 · The Region Proposal Network

Mask R-CNN is a two-stage detector. The first stage, the **Region Proposal Network** (RPN) of Faster R-CNN,
looks at every position of every FPN level and answers two questions for a fixed set of reference boxes, the
**anchors**: *is there an object here?* and *how should this box move to fit it?* Its few hundred best
answers, the **proposals**, are what the second stage classifies, refines and segments. You will:

1. generate and **draw the anchors**: one size per FPN level, three aspect ratios, on a grid with the level's
   stride;
2. encode a box relative to an anchor and decode it back (the **box coder**, with its weights and its clamp);
3. **label anchors** by their IoU with the ground truth (positive ≥ 0.7, negative < 0.3, plus the best anchor
   of each object) and **sample** 256 of them;
4. run the RPN head, look at its **objectness maps** before and after a few seconds of fitting it to one image;
5. turn scores and deltas into **proposals**, before and after **non-maximum suppression**;
6. compute the **RPN loss** by hand, check its gradient, and see why the proposals are constants for the rest
   of the network ("approximate joint training").

> "The RPN anchors span 5 scales and 3 aspect ratios, following [FPN]."
> — He, Gkioxari, Dollár, Girshick, *Mask R-CNN*, §3.1 "Implementation Details"

> "An RPN is a fully convolutional network that simultaneously predicts object bounds and objectness scores
> at each position."
> — Ren, He, Girshick, Sun, *Faster R-CNN*, abstract

**Read alongside:** Faster R-CNN (NeurIPS 2015) §3.1 and Eq. (1)–(2); FPN (Lin et al., CVPR 2017) §4.1,
"Feature Pyramid Networks for RPN".
""")

md("""
## Setup

One synthetic image (the one notebook 02 used) is enough for this chapter: everything in the RPN happens
per image. `TRAIN_STEPS` sets how long section 4 fits the RPN head to it. Section 7 looks inside a *trained*
RPN: set `FULL = True` to load the demo's model (`python -m minimaskrcnn demo` writes `runs/demo/last.npz`);
by default it shows the head fitted in section 4 instead.
""")

code("""
# Parameters (defaults keep the notebook well under a minute on a laptop CPU)
SEED = 0
IMAGE_SEED = 0          # which shapes image
TRAIN_STEPS = 40        # SGD steps fitting the RPN head to the image in section 4 (0: keep it untrained)
FULL = False            # True: section 7 loads CHECKPOINT (default: the demo's runs/demo/last.npz)
CHECKPOINT = None       # a checkpoint of config.tiny trained on the shapes set; None with FULL: the demo's
""")

code("""
import importlib.util
import inspect
import math
import os
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

if importlib.util.find_spec("minimaskrcnn") is None:  # a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.abspath(".."))            # (run from notebooks/): use the repository root

from minimaskrcnn import config, nn
from minimaskrcnn.engine.checkpoint import load_checkpoint_model
from minimaskrcnn.engine.run import DEFAULT_OUT
from minimaskrcnn.data.shapes import draw_shapes_image
from minimaskrcnn.model import build_model
from minimaskrcnn.model.losses import rpn_loss_forward
from minimaskrcnn.model.rpn import RegionProposalNetwork, RPNHead, flatten_level, unflatten_level
from minimaskrcnn.nn import functional as F
from minimaskrcnn.nn.gradcheck import check_directional, check_gradient
from minimaskrcnn.ops.anchors import AnchorGenerator
from minimaskrcnn.ops.boxes import (BoxCoder, batched_nms, box_iou, clip_boxes_to_image, nms,
                                    remove_small_boxes)
from minimaskrcnn.ops.matcher import Matcher
from minimaskrcnn.ops.sampler import BalancedPositiveNegativeSampler

np.set_printoptions(precision=3, suppress=True, linewidth=110)
plt.rcParams.update({"figure.dpi": 80, "font.size": 9})

cfg = config.tiny(num_classes=4)        # the CPU model: anchors of 16..256 px for 128 px images
H = W = cfg.min_size
image, masks, labels = draw_shapes_image(np.random.default_rng(IMAGE_SEED), H)
gt_boxes = np.array([[x.min(), y.min(), x.max() + 1, y.max() + 1] for y, x in (np.nonzero(m) for m in masks)],
                    dtype=np.float32)
NAMES = ["__background__", "circle", "rectangle", "triangle"]
for b, k in zip(gt_boxes, labels):
    print(f"{NAMES[k]:10s} box {b}  ({b[2] - b[0]:.0f} x {b[3] - b[1]:.0f} px)")


def show(ax, title=None, margin=0):
    # The image in box coordinates (pixel (i, j) covers [j, j+1) x [i, i+1)), GT boxes in white.
    ax.imshow(image, extent=(0, W, H, 0))
    for b in gt_boxes:
        ax.add_patch(Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, ec="w", lw=1.5))
    ax.set_xlim(-margin, W + margin), ax.set_ylim(H + margin, -margin)
    ax.set_xticks([]), ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def draw_boxes(ax, boxes, color, lw=1.0, alpha=1.0, ls="-"):
    for b in np.asarray(boxes, dtype=float):
        ax.add_patch(Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, ec=color, lw=lw, alpha=alpha, ls=ls))
""")

md("""
## 1. Anchors

An anchor is a box of a fixed size and aspect ratio, centred on one position of a feature map. With an FPN,
each level gets **one size** (the paper's: 32², 64², 128², 256², 512² pixels on P2…P6) and **three aspect
ratios** (1:2, 1:1, 2:1): 15 anchor shapes in all, 3 per position. A level with stride s places its anchors
every s pixels, so small anchors sit on the fine grid and large ones on the coarse grid. Our `tiny`
configuration halves the sizes (16…256 px), because the shapes are 10–60 px objects on 128 px images.

The zero-centred anchors of one level come from `generate_anchors` (ratio = height / width, area = size²,
corners rounded as torchvision does):
""")

code("""
anchor_gen = AnchorGenerator(cfg.anchor_sizes, (cfg.aspect_ratios,) * len(cfg.anchor_sizes))
print(anchor_gen)
print(inspect.getsource(AnchorGenerator.generate_anchors))
print(f"{'level':>5} {'size':>5} {'h/w':>5}   {'zero-centred anchor':26} {'w':>4} {'h':>4} {'area/size²':>10}")
for lvl, (sizes, ratios, base) in enumerate(zip(anchor_gen.sizes, anchor_gen.aspect_ratios,
                                                anchor_gen.cell_anchors), start=2):
    for r, a in zip(ratios, base):
        w, h = a[2] - a[0], a[3] - a[1]
        print(f"P{lvl:<4} {sizes[0]:5.0f} {r:5.1f}   {str(a):26} {w:4.0f} {h:4.0f} {w * h / sizes[0] ** 2:10.3f}")
        assert abs(w * h / sizes[0] ** 2 - 1) < 0.1 and abs(h / w / r - 1) < 0.15   # up to the rounding
""")

md("""
Placed on the grid of each level: level $l$ (stride $s_l$) has $H_l \\times W_l$ positions, and position
$(i, j)$ carries its 3 anchors centred on the image point $(j s_l,\\, i s_l)$: the top-left corner of its
cell, torchvision's convention. Anchors are numbered position by position, row by row, the 3 ratios of one
position together, levels finest first.
""")

code("""
strides = [4, 8, 16, 32, 64]
feature_sizes = [(H // s, W // s) for s in strides]
per_level = anchor_gen.anchors_per_level((H, W), feature_sizes)       # list of (H_l * W_l * 3, 4)
anchors = np.concatenate(per_level)
level_of = np.concatenate([np.full(len(a), lvl) for lvl, a in enumerate(per_level)])
for lvl, (a, (h, w), s) in enumerate(zip(per_level, feature_sizes, strides), start=2):
    print(f"P{lvl}: stride {s:2d}, {h:2d} x {w:2d} positions x 3 = {len(a):5d} anchors")
print("all levels:", anchors.shape)
assert len(anchors) == 3 * sum(h * w for h, w in feature_sizes) == 4092
i3, j3, a3 = 5, 9, 2                                                     # P3, row 5, column 9, ratio 2:1
assert np.array_equal(per_level[1][(i3 * 16 + j3) * 3 + a3], anchor_gen.cell_anchors[1][a3] + [j3 * 8, i3 * 8] * 2)

# The paper's setting on an 800 x 1344 input (the FPN levels' sizes, from notebook 02): far more anchors.
paper = AnchorGenerator()
sizes_800 = [(200, 336), (100, 168), (50, 84), (25, 42), (13, 21)]
print("ResNet-50-FPN, 800 x 1344 input:", f"{sum(len(a) for a in paper.anchors_per_level((800, 1344), sizes_800)):,d}",
      "anchors")
""")

code("""
fig, axes = plt.subplots(1, 6, figsize=(15, 2.9), gridspec_kw={"width_ratios": [1.3, 1, 1, 1, 1, 1]})
colors = ["tab:orange", "tab:cyan", "tab:pink"]                          # ratios 1:2, 1:1, 2:1
show(axes[0], "the 15 anchor shapes, centred", margin=70)
for base in anchor_gen.cell_anchors:
    for r, a in enumerate(base):
        draw_boxes(axes[0], [a + [W / 2, H / 2] * 2], colors[r])
for ax, lvl in zip(axes[1:], range(5)):
    s, (h, w) = strides[lvl], feature_sizes[lvl]
    margin = anchor_gen.sizes[lvl][0] * 0.75
    show(ax, f"P{lvl + 2}: stride {s}, size {anchor_gen.sizes[lvl][0]:.0f}", margin=margin)
    jj, ii = np.meshgrid(np.arange(w), np.arange(h))
    ax.plot(jj.ravel() * s, ii.ravel() * s, ".", color="k", ms=max(1, 4 - lvl))
    for (pi, pj) in [(h // 2, w // 2), (h // 4, w // 4)] if h > 2 else [(1, 1)]:
        for r in range(3):
            draw_boxes(ax, [per_level[lvl][(pi * w + pj) * 3 + r]], colors[r], lw=1.3)
        ax.plot(pj * s, pi * s, "o", color="red", ms=4)
fig.tight_layout()
plt.show()
""")

md("""
Left: the 5 sizes × 3 ratios, in orange (1:2, tall), cyan (1:1) and pink (2:1, wide). Then one panel per level:
the anchor centres (black dots, the level's stride apart) and the 3 anchors of one or two positions (red dots).
Anchors may stick out of the image; torchvision keeps them (the original Faster R-CNN ignored cross-boundary
anchors during training).

## 2. Box parameterisation: the box coder

The RPN does not predict box corners. For each anchor it predicts four **deltas** relative to the anchor,
Faster R-CNN's Eq. (2):

$$t_x = w_x\\frac{x - x_a}{w_a},\\quad t_y = w_y\\frac{y - y_a}{h_a},\\quad t_w = w_w\\log\\frac{w}{w_a},\\quad
t_h = w_h\\log\\frac{h}{h_a}$$

where $(x, y, w, h)$ are the centre and size of a box and $(x_a, y_a, w_a, h_a)$ those of the anchor. The
deltas are invariant to translation and scale: moving a box by half its width is $t_x = 0.5$ for a 16 px
anchor as for a 256 px one, so one set of 1×1 convolutions serves every size. The weights
$(w_x, w_y, w_w, w_h)$ rescale the targets: (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the box head, whose
proposals are already close to the objects and so have smaller deltas.
""")

code("""
coder = BoxCoder((1.0, 1.0, 1.0, 1.0))                # the RPN's (model.rpn.box_coder)
coder_head = BoxCoder((10.0, 10.0, 5.0, 5.0))         # the box head's
anchor = np.array([[40.0, 36.0, 72.0, 68.0]])          # a 32 x 32 anchor centred at (56, 52)
gt = np.array([[44.0, 28.0, 92.0, 60.0]])              # a 48 x 32 box centred at (68, 44)
deltas = coder.encode(gt, anchor)
by_hand = [(68 - 56) / 32, (44 - 52) / 32, math.log(48 / 32), math.log(32 / 32)]
print("RPN deltas      ", deltas[0], "  by hand:", np.array(by_hand))
print("box-head deltas ", coder_head.encode(gt, anchor)[0])
assert np.allclose(deltas[0], by_hand)
assert np.allclose(coder_head.encode(gt, anchor), deltas * [10, 10, 5, 5])
assert np.allclose(coder.decode(deltas, anchor), gt)

fig, ax = plt.subplots(figsize=(3.4, 3))
draw_boxes(ax, anchor, "tab:blue", lw=1.5, ls="--"), draw_boxes(ax, gt, "tab:green", lw=1.5)
ax.annotate("", (68, 44), (56, 52), arrowprops=dict(arrowstyle="->", color="k"))
ax.text(41, 66, "anchor", color="tab:blue"), ax.text(62, 31, "target", color="tab:green")
ax.text(20, 84, f"t = ({deltas[0, 0]:.3f}, {deltas[0, 1]:.3f}, {deltas[0, 2]:.3f}, {deltas[0, 3]:.3f})")
ax.set_xlim(16, 100), ax.set_ylim(90, 20), ax.set_aspect("equal")
plt.show()
""")

md("""
`decode` is the inverse of `encode`. Check the round trip on 1,000 random pairs of boxes of 4–100 px, in
float64, for both weightings. (With sizes down to 1 px it fails: a 100 px box is more than 62.5 times a 1 px
reference, which the clamp explained below does not allow.)
""")

code("""
r = np.random.default_rng(SEED)


def random_boxes(n):
    xy = r.uniform(0, 100, (n, 2))
    return np.hstack([xy, xy + r.uniform(4, 100, (n, 2))])


refs, targets_rt = random_boxes(1000), random_boxes(1000)
for c in (coder, coder_head):
    back = c.decode(c.encode(targets_rt, refs), refs)
    err = np.abs(back - targets_rt).max()
    print(f"{c}: max |decode(encode(b)) - b| = {err:.1e} px")
    assert err < 1e-10
""")

md("""
**The clamp.** Decoding exponentiates the predicted $t_w, t_h$. An untrained head, or a bad step, can predict
large values, and `exp` overflows float32 at 88.7. So `decode` caps $t_w/w_w$ and $t_h/w_h$ at
$\\log(1000/16) \\approx 4.135$: a decoded box is at most 62.5 times as wide and tall as its anchor. (The cap
applies after dividing by the weights; the centre shifts are not capped, and the boxes are clipped to the image
afterwards anyway.) Nothing else in the RPN needs to be clamped: the loss works on the deltas, never on decoded
boxes.
""")

code("""
print(f"bbox_xform_clip = {coder.bbox_xform_clip:.4f} = log(1000 / 16) = {math.log(1000 / 16):.4f}")
wild = np.array([[0.0, 0.0, 10.0, 10.0]])                        # t_w = t_h = 10: exp(10) = 22026
box = coder.decode(wild, anchor)[0]
print("anchor 32 px, t_w = 10  ->  decoded width", box[2] - box[0], "px (not", round(32 * math.exp(10)), "px)")
assert np.isclose(box[2] - box[0], 32 * 1000 / 16)
with np.errstate(over="ignore"):
    print("float32 exp(100) =", np.exp(np.float32(100)))
""")

md("""
## 3. Matching anchors to objects, and sampling

Training needs a label for each anchor. Faster R-CNN §3.1.2:

> "We assign a positive label to two kinds of anchors: (i) the anchor/anchors with the highest
> Intersection-over-Union (IoU) overlap with a ground-truth box, or (ii) an anchor that has an IoU overlap
> higher than 0.7 with any ground-truth box. [...] We assign a negative label to a non-positive anchor if its
> IoU ratio is lower than 0.3 for all ground-truth boxes. Anchors that are neither positive nor negative do
> not contribute to the training objective."

It starts with the IoU of every GT box with every anchor, a (G, 4092) matrix. For each position, the heat
maps below show the best IoU over the GT boxes and the 3 ratios, one panel per level (GT boxes in white):
""")

code("""
iou = box_iou(gt_boxes, anchors)                                   # (G, A)
print("IoU matrix", iou.shape, "; best IoU of each GT box:", iou.max(axis=1))
fig, axes = plt.subplots(1, 5, figsize=(15, 3.2))
starts = np.cumsum([0] + [len(a) for a in per_level])
for lvl, ax in enumerate(axes):
    (h, w), s = feature_sizes[lvl], strides[lvl]            # each cell is drawn centred on its anchors' centre
    best = iou[:, starts[lvl]:starts[lvl + 1]].max(axis=0).reshape(h, w, 3).max(axis=2)
    show(ax, f"P{lvl + 2}, {anchor_gen.sizes[lvl][0]:.0f} px: max {best.max():.2f}")
    im = ax.imshow(best, extent=(-s / 2, w * s - s / 2, h * s - s / 2, -s / 2), cmap="magma", vmin=0, vmax=1,
                   alpha=0.8, interpolation="nearest")
fig.colorbar(im, ax=axes, shrink=0.8, label="best IoU")
plt.show()
""")

md("""
Each object lights up the level whose anchor size matches its own: the 10 px triangle only P2, the 42 px
circle P3 and P4. But look at the maxima: on a grid with stride s, an anchor's centre can be up to s/2 away
from an object's centre, and the sizes and ratios are coarse, so **several objects reach no anchor with
IoU 0.7**. Rule (i), the **low-quality matches**, rescues them: each GT box also claims the anchors with its
highest IoU (all of them, on ties). `Matcher` implements both rules:
""")

code("""
print(inspect.getsource(Matcher.__call__))
""")

code("""
strict = Matcher(0.7, 0.3, allow_low_quality_matches=False)(iou)
matcher = Matcher(cfg.rpn_fg_iou_thresh, cfg.rpn_bg_iou_thresh, allow_low_quality_matches=True)
matched = matcher(iou)                     # (A,): GT index, or -1 (negative), or -2 (ignored)
print(f"{'GT':14s} {'best IoU':>8} {'positives (IoU >= 0.7)':>23} {'+ low-quality':>14}")
for g, b in enumerate(gt_boxes):
    print(f"{g}: {NAMES[labels[g]]:11s} {iou[g].max():8.2f} {np.sum(strict == g):23d} {np.sum(matched == g):14d}")
print(f"anchors: {np.sum(matched >= 0)} positive, {np.sum(matched == -1)} negative, "
      f"{np.sum(matched == -2)} ignored (IoU in [0.3, 0.7))")
assert all(np.any(matched == g) for g in range(len(gt_boxes)))     # every object has a positive anchor
assert np.sum(strict >= 0) < np.sum(matched >= 0)
""")

md("""
Positives are rare (a few dozen of 4,092 anchors at most; here a handful) and negatives are everywhere, so the
loss is computed on a **sample** (Faster R-CNN §3.1.3): "we randomly sample 256 anchors in an image [...],
where the sampled positive and negative anchors have a ratio of up to 1:1. If there are fewer than 128
positive samples in an image, we pad the mini-batch with negative ones." That is
`BalancedPositiveNegativeSampler(256, 0.5)`, which takes labels 1 (positive), 0 (negative), -1 (ignored).
(The `tiny` configuration samples 128 per image; here we use the paper's 256.)
""")

code("""
rpn_labels = (matched >= 0).astype(np.int64)
rpn_labels[matched == Matcher.BETWEEN_THRESHOLDS] = -1
sampler = BalancedPositiveNegativeSampler(256, 0.5)
pos, neg = sampler([rpn_labels], np.random.default_rng(SEED))
pos, neg = pos[0], neg[0]
print(f"sampled {pos.sum()} positives + {neg.sum()} negatives = {pos.sum() + neg.sum()}")
print("sampled negatives per level:", [int(neg[level_of == lvl].sum()) for lvl in range(5)])
assert pos.sum() == min(np.sum(rpn_labels == 1), 128) and pos.sum() + neg.sum() == 256

fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
show(axes[0], "positive anchors: IoU >= 0.7 (green), low-quality (yellow)", margin=16)
draw_boxes(axes[0], anchors[strict >= 0], "lime", lw=1.5)
draw_boxes(axes[0], anchors[(matched >= 0) & (strict < 0)], "yellow", lw=1.2, ls="--")
show(axes[1], f"the 256 sampled: {pos.sum()} positives (green), {neg.sum()} negatives (red)", margin=64)
draw_boxes(axes[1], anchors[neg], "red", lw=0.6, alpha=0.35)
draw_boxes(axes[1], anchors[pos], "lime", lw=1.5)
fig.tight_layout()
plt.show()
""")

md("""
Most negatives are small P2 anchors, simply because P2 holds three quarters of all anchors; the big ones stick
out of the picture.

## 4. The RPN head

The head is small: a 3×3 convolution with ReLU (the "sliding window"), then two sibling 1×1 convolutions,
`cls_logits` with A = 3 channels (one objectness logit per anchor) and `bbox_pred` with 4A = 12 channels (the
deltas). The **same weights** run on every level: the levels all have 64 channels (256 in the paper), and
the anchor size, not the head, tells the levels apart.
""")

code("""
print(inspect.getsource(RPNHead.forward))
model = build_model(cfg).eval()                          # random weights; eval mode keeps no caches
target = {"boxes": gt_boxes, "labels": labels, "masks": masks.astype(np.uint8)}
batch, sizes, _, targets = model.preprocess([image], [target])
feats = model.backbone(batch)                          # [P2, ..., P6]
logits, deltas = model.rpn.head(feats)
for lvl, (f, lg, d) in enumerate(zip(feats, logits, deltas), start=2):
    print(f"P{lvl} {str(f.shape):17s} -> objectness {str(lg.shape):15s} deltas {d.shape}")
    assert lg.shape == (1, 3) + f.shape[2:] and d.shape == (1, 12) + f.shape[2:]
""")

md("""
To line the outputs up with the anchors, `flatten_level` permutes `(N, A·C, H, W)` to
`(N, H·W·A, C)`: position-major, the A anchors of a position together, exactly the anchors' order:
""")

code("""
obj_p3 = flatten_level(logits[1], 1, 3, 1)[0, :, 0]        # (16 * 16 * 3,)
dlt_p3 = flatten_level(deltas[1], 1, 3, 4)[0]              # (16 * 16 * 3, 4)
row = (i3 * 16 + j3) * 3 + a3                               # the anchor of section 1: P3, (5, 9), ratio 2:1
assert obj_p3[row] == logits[1][0, a3, i3, j3]
assert np.array_equal(dlt_p3[row], deltas[1][0, 4 * a3:4 * a3 + 4, i3, j3])
print("anchor", per_level[1][row], "objectness logit", obj_p3[row], "deltas", dlt_p3[row])
""")

md("""
The untrained head's weights are drawn from N(0, 0.01²) with zero biases (torchvision's init), so every
logit is near 0 and every objectness near 0.5: the RPN has no opinion yet. To see what a trained RPN does
without waiting for a full training run, we **fit only the head to this one image** for `TRAIN_STEPS` SGD
steps, on the frozen, random backbone features: a memorisation exercise, not learning (a later notebook
trains the whole model on the shapes set). One step is the RPN's forward with targets (it labels, samples
and computes the two losses), `backward` (which fills the head's gradients), and an SGD update.
""")

code("""
def objectness_maps(level_logits):
    # Per level, the highest objectness (sigmoid of the logit) of the 3 anchors at each position: (H_l, W_l).
    return [(1 / (1 + np.exp(-lg[0]))).max(axis=0) for lg in level_logits]


maps_before = objectness_maps(logits)
print("untrained objectness range:", min(m.min() for m in maps_before), "...", max(m.max() for m in maps_before))
assert all(np.abs(m - 0.5).max() < 0.1 for m in maps_before)

model.rpn.train()
opt = nn.SGD(model.rpn.named_parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
sample_rng = np.random.default_rng(SEED)
history = []
for step in range(TRAIN_STEPS):
    model.rpn.zero_grad()
    _, losses = model.rpn(feats, sizes, batch.shape[-2:], targets, sample_rng)
    model.rpn.backward()            # gradients for the head's parameters (and for the features, unused here)
    opt.step()
    history.append(losses)
model.rpn.eval()
logits, deltas = model.rpn.head(feats)
maps_after = objectness_maps(logits)
if history:
    print("first step:", history[0], "\\nlast step: ", history[-1])
if TRAIN_STEPS >= 20:
    assert history[-1]["loss_objectness"] < 0.25 * history[0]["loss_objectness"]
""")

code("""
fig = plt.figure(figsize=(14, 5.6))
grid = fig.add_gridspec(2, 6, width_ratios=[1.4, 1, 1, 1, 1, 1])
ax = fig.add_subplot(grid[:, 0])
for name in ("loss_objectness", "loss_rpn_box_reg"):
    ax.semilogy([h[name] for h in history], label=name)
ax.set_xlabel("SGD step"), ax.legend(fontsize=8), ax.set_title("fitting the head to one image")
for row, (maps, when) in enumerate([(maps_before, "untrained"), (maps_after, f"after {TRAIN_STEPS} steps")]):
    for lvl, m in enumerate(maps):
        ax = fig.add_subplot(grid[row, lvl + 1])
        (h, w), s = feature_sizes[lvl], strides[lvl]
        show(ax, f"P{lvl + 2}, {when}")
        ax.imshow(m, extent=(-s / 2, w * s - s / 2, h * s - s / 2, -s / 2), cmap="viridis", vmin=0, vmax=1,
                  alpha=0.85, interpolation="nearest")
        positives = anchors[(matched >= 0) & (level_of == lvl)]
        ax.plot((positives[:, 0] + positives[:, 2]) / 2, (positives[:, 1] + positives[:, 3]) / 2, "r+", ms=6)
fig.tight_layout()
plt.show()
""")

md("""
Red crosses mark the centres of the positive anchors of section 3. After fitting, each object lights up the
level and the positions whose anchors matched it, and most of the image goes dark. The streaks along a row
or a column are the price of memorising one image with random features: nothing taught the head what to do
away from the sampled anchors.

## 5. Proposals, and non-maximum suppression

Proposals are decoded anchors. Per image, the RPN (torchvision's `filter_proposals`):

1. keeps the `pre_nms_top_n` anchors with the highest objectness **per level** (1000 per level at test time
   in the paper's setting, 300 in `tiny`), so that the fine levels, with most of the anchors, cannot crowd out
   the coarse ones;
2. decodes their deltas, clips the boxes to the image, drops boxes smaller than 1e-3 px;
3. runs **non-maximum suppression** (NMS) with IoU threshold 0.7, separately per level;
4. keeps the best `post_nms_top_n` (1000 in the paper at test time, 150 in `tiny`).

**NMS** visits the boxes by decreasing score and keeps a box unless a box kept before it overlaps it with IoU
above the threshold. A hand example with threshold 0.5: B overlaps A (IoU 0.68) and is dropped; D overlaps C
(IoU 0.82) and is dropped; E overlaps A only by 0.33 and survives. With threshold 0.3 it does not.
""")

code("""
boxes_toy = np.array([[0, 0, 10, 10],      # A
                      [1, 1, 11, 11],      # B: IoU(A, B) = 81 / 119
                      [20, 20, 30, 30],    # C
                      [21, 20, 31, 30],    # D: IoU(C, D) = 90 / 110
                      [5, 0, 15, 10]],     # E: IoU(A, E) = 50 / 150
                     dtype=np.float32)
scores_toy = np.array([0.9, 0.8, 0.7, 0.6, 0.5], dtype=np.float32)
print(box_iou(boxes_toy, boxes_toy))
assert nms(boxes_toy, scores_toy, 0.5).tolist() == [0, 2, 4]
assert nms(boxes_toy, scores_toy, 0.3).tolist() == [0, 2]
# batched_nms: boxes of different levels (or classes) never suppress each other
assert batched_nms(boxes_toy, scores_toy, np.array([0, 1, 0, 0, 0]), 0.5).tolist() == [0, 1, 2, 4]
print(inspect.getsource(nms))
""")

md("""
Now the whole pipeline by hand on the fitted head's outputs, and the same with one call of the library's RPN
(eval mode: the "testing" numbers):
""")

code("""
rpn = model.rpn
pre_n, post_n = rpn.pre_nms_top_n["testing"], rpn.post_nms_top_n["testing"]
obj = np.concatenate([flatten_level(lg, 1, 3, 1)[0, :, 0] for lg in logits])       # (4092,) logits
dlt = np.concatenate([flatten_level(d, 1, 3, 4)[0] for d in deltas])               # (4092, 4)

# 1. the pre_n best anchors of each level
top = np.concatenate([np.flatnonzero(level_of == lvl)[np.argsort(-obj[level_of == lvl], kind="stable")[:pre_n]]
                      for lvl in range(5)])
# 2. decode, clip, drop tiny boxes
candidates = clip_boxes_to_image(rpn.box_coder.decode(dlt[top], anchors[top]), sizes[0])
scores = 1 / (1 + np.exp(-obj[top]))
keep = remove_small_boxes(candidates, rpn.min_size)
candidates, scores, cand_level = candidates[keep], scores[keep], level_of[top][keep]
# 3. + 4. NMS within each level, the best post_n overall
keep = batched_nms(candidates, scores, cand_level, rpn.nms_thresh, max_keep=post_n)
proposals, prop_scores, prop_level = candidates[keep], scores[keep], cand_level[keep]

library = rpn(feats, sizes, batch.shape[-2:])[0][0]
assert np.array_equal(proposals, library)
print(f"{len(anchors)} anchors -> {len(top)} best per level -> {len(candidates)} after clipping and size filter "
      f"-> {len(proposals)} proposals after NMS (at most {post_n})")
for lvl in range(5):  # after NMS, no two proposals of one level overlap by more than 0.7
    same = proposals[prop_level == lvl]
    overlap = box_iou(same, same) - np.eye(len(same))
    assert overlap.max(initial=0) <= rpn.nms_thresh
""")

code("""
n_show = 30
order = np.argsort(-scores, kind="stable")[:n_show]
suppressed = ~np.isin(order, keep)                     # among the 30 best candidates, those NMS removes
fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
show(axes[0], f"before NMS: the {n_show} best of {len(candidates)} candidates\\n(dashed cyan: {suppressed.sum()} "
     "that NMS removes)")
show(axes[1], f"after NMS: the {n_show} best of {len(proposals)} proposals\\n")
cmap = plt.get_cmap("autumn_r")                        # yellow (score 0) to red (score 1)
draw_boxes(axes[0], candidates[order[suppressed]], "cyan", lw=1.2, ls="--")
for ax, bxs, scs in [(axes[0], candidates[order[~suppressed]], scores[order[~suppressed]]),
                     (axes[1], proposals[:n_show], prop_scores[:n_show])]:
    for b, sc in zip(bxs[::-1], scs[::-1]):          # the best drawn last, on top
        draw_boxes(ax, [b], cmap(float(sc)), lw=1.2)
fig.tight_layout()
plt.show()


def crowded_pairs(bxs, lvls):
    # Pairs of boxes of the same level that overlap with IoU > 0.7 (what NMS removes).
    same = lvls[:, None] == lvls[None, :]
    return int(np.sum(np.triu((box_iou(bxs, bxs) > rpn.nms_thresh) & same, k=1)))


before = crowded_pairs(candidates[order], cand_level[order])
after = crowded_pairs(proposals[:n_show], prop_level[:n_show])
print(f"pairs of the {n_show} best boxes on one level with IoU > 0.7: {before} before NMS, {after} after")
assert before > 0 and after == 0
print("best IoU of each GT box with the 10 best proposals:", box_iou(gt_boxes, proposals[:10]).max(axis=1))
""")

md("""
Before NMS, near-duplicates (IoU above 0.7 with a better box of the same level) are among the best boxes; NMS
removes them and their places go to other boxes. The RPN's threshold of 0.7 is permissive, and the levels do
not suppress each other, so each object still keeps several proposals of different sizes and shapes: at this
stage recall matters more than precision. The second stage classifies and refines these proposals, and runs its
own NMS (at 0.5, per class) on the final detections.

## 6. The RPN loss, its gradient, and approximate joint training

Faster R-CNN's Eq. (1), for the sampled anchors $i$ with objectness $p_i$ and label $p_i^*$:

$$L = \\frac{1}{N_{cls}}\\sum_i L_{cls}(p_i, p_i^*) + \\lambda\\frac{1}{N_{reg}}\\sum_i p_i^*\\,L_{reg}(t_i, t_i^*)$$

torchvision's version (and ours): $L_{cls}$ is the sigmoid binary cross-entropy averaged over the sampled
anchors; $L_{reg}$ is smooth L1 with $\\beta = 1/9$ on the deltas of the sampled **positives**, summed and
divided by the number of *sampled* anchors ($\\lambda = 1$). The regression targets $t^*$ are the GT boxes
encoded relative to their anchors (section 2). Here is the library's loss:
""")

code("""
print(inspect.getsource(rpn_loss_forward))
""")

md("""
And the same by hand, with the matches of section 3 and the same random draws for the sampling:
""")

code("""
rpn.train()
_, losses = rpn(feats, sizes, batch.shape[-2:], targets, np.random.default_rng(1))
rpn.free_cache()

pos, neg = BalancedPositiveNegativeSampler(cfg.rpn_batch_size_per_image, cfg.rpn_positive_fraction)(
    [rpn_labels], np.random.default_rng(1))
sampled, positive = np.flatnonzero(pos[0] | neg[0]), np.flatnonzero(pos[0])
loss_obj, cache_obj = F.binary_cross_entropy_with_logits_forward(obj[sampled], rpn_labels[sampled].astype(obj.dtype))
reg_targets = rpn.box_coder.encode(gt_boxes[np.maximum(matched, 0)], anchors)          # (A, 4): t*
loss_box, cache_box = F.smooth_l1_forward(dlt[positive], reg_targets[positive], beta=1 / 9,
                                          normalizer=len(sampled))
print(f"library: {losses}\\nby hand: objectness {loss_obj:.6f}, box {loss_box:.6f}")
assert np.isclose(loss_obj, losses["loss_objectness"], rtol=1e-6)
assert np.isclose(loss_box, losses["loss_rpn_box_reg"], rtol=1e-6)
""")

md("""
The gradient of the loss is sparse: only the sampled anchors' logits and the sampled positives' deltas
receive anything. Back through `unflatten_level` and the head, it becomes the gradient for the features that
`RegionProposalNetwork.backward` returns:
""")

code("""
d_obj = np.zeros_like(obj)
d_obj[sampled] = F.binary_cross_entropy_with_logits_backward(1.0, cache_obj)
d_dlt = np.zeros_like(dlt)
d_dlt[positive] = F.smooth_l1_backward(1.0, cache_box)
print(f"non-zero gradient: {np.count_nonzero(d_obj)} of {d_obj.size} logits (the {len(sampled)} sampled anchors), "
      f"{np.count_nonzero(np.any(d_dlt != 0, axis=1))} of {len(d_dlt)} delta rows ({len(positive)} positives)")
assert set(np.flatnonzero(d_obj)) <= set(sampled) and set(np.flatnonzero(np.any(d_dlt != 0, axis=1))) <= set(positive)

rpn(feats, sizes, batch.shape[-2:], targets, np.random.default_rng(1))
d_feats_library = rpn.backward()
rpn(feats, sizes, batch.shape[-2:], targets, np.random.default_rng(1))
d_logits, d_deltas = [], []
for lvl, (h, w) in enumerate(feature_sizes):
    part = slice(starts[lvl], starts[lvl + 1])
    d_logits.append(unflatten_level(d_obj[None, part, None], 1, 3, 1, h, w))
    d_deltas.append(unflatten_level(d_dlt[None, part], 1, 3, 4, h, w))
d_feats_hand = rpn.head.backward(d_logits, d_deltas)
rpn.free_cache(), rpn.zero_grad()
for a_, b_ in zip(d_feats_library, d_feats_hand):
    assert np.allclose(a_, b_, atol=1e-7)
""")

md("""
Is that backward right? A float64 check on a small RPN (8-channel features on two levels, 64 px image, two GT
boxes), with the sampler's random draws fixed so that the loss is a function of the weights and features only:
""")

code("""
nn.init.manual_seed(SEED)
rpn64 = RegionProposalNetwork(AnchorGenerator(((16,), (32,)), ((0.5, 1.0, 2.0),) * 2),
                              RPNHead(8, 3, dtype="float64"), batch_size_per_image=64)
for _, p in rpn64.named_parameters():
    # Weights 30x the N(0, 0.01) init: with those, the feature gradients are ~1e-6 and the loss's round-off
    # error (~1e-16 / h) would swamp the central differences.
    p.data *= 30
r64 = np.random.default_rng(SEED)
feats64 = [r64.standard_normal((1, 8, 16, 16)), r64.standard_normal((1, 8, 8, 8))]
targets64 = [{"boxes": np.array([[10.0, 12.0, 34.0, 30.0], [30.0, 26.0, 61.0, 62.0]])}]


def rpn_loss():
    _, l = rpn64(feats64, [(64, 64)], (64, 64), targets64, np.random.default_rng(1))
    rpn64.free_cache()
    return l["loss_objectness"] + l["loss_rpn_box_reg"]


rpn64.zero_grad()
rpn64(feats64, [(64, 64)], (64, 64), targets64, np.random.default_rng(1))
d_feats64 = rpn64.backward()
params = {n: p.data for n, p in rpn64.named_parameters()}
grads = {n: p.grad for n, p in rpn64.named_parameters()}
errors = {"head parameters (directional)": check_directional(rpn_loss, params, grads)}
for lvl, (f, d) in enumerate(zip(feats64, d_feats64)):
    errors[f"features, level {lvl} (30 entries)"] = check_gradient(lambda _: rpn_loss(), f, d, max_checks=30,
                                                                    seed=lvl)
for name, e in errors.items():
    print(f"{name:32s} relative error {e:.1e}")
assert all(e < 1e-7 for e in errors.values())
""")

md("""
**Approximate joint training.** The proposals are computed from the same deltas that the loss trains: a
proposal is `decode(deltas, anchor)`. Yet the backward above gives the deltas a gradient only from the RPN's
own smooth L1 term, at the sampled positives. In Mask R-CNN the proposals go on to the RoI heads, whose losses
depend on where each proposal sits (RoIAlign samples the features inside it), so an exact gradient would also
flow from those losses back through RoIAlign's dependence on the box coordinates and through `decode` into
the deltas. Faster R-CNN §3.2 calls dropping that path *approximate joint training*:

> "But this solution ignores the derivative w.r.t. the proposal boxes' coordinates that are also network
> responses, so is approximate."

minimaskrcnn does the same as Detectron and torchvision: `filter_proposals` works on plain arrays, the
proposals (`model.last_proposals` after a training step) enter the RoI heads as constants, and nothing in
`RegionProposalNetwork.backward` refers to them. The RPN still learns good boxes from its own loss, and the
shared backbone receives the gradients of both stages.

**The paper's ablations did not train this way.** §3.1: "For convenient ablation, RPN is trained separately and
does not share features with Mask R-CNN, unless specified." The numbers of Table 2 come from an RPN trained on
its own, whose proposals are fixed inputs to a separately trained Mask R-CNN; the timing of §4.4 is for shared
features obtained with Faster R-CNN's 4-step alternating training. Appendix B then adds end-to-end (joint)
training as an improvement of its own: mask AP 37.0 → 37.6 for X-101-FPN (Table 8). minimaskrcnn, like
Detectron, Detectron2 and torchvision, always trains the RPN and the RoI heads jointly, in one backward pass.

## 7. Inside a trained RPN

Everything above ran on random backbone features, with a head fitted to one image. A trained RPN (Matterport's
`inspect_model` notebook does the same for its model) shows what the pieces are for: which positions and levels
fire, how far the deltas move the anchors, and which proposals reach the second stage. With `FULL = True` the
model is the demo's, trained on thousands of shapes images like this one (it has never seen this exact image);
without a checkpoint it is this notebook's model, whose head was fitted to this very image in section 4 on
random features, so expect the same pictures, but sharper on this image and meaningless on any other.
""")

code("""
REPO = Path("..").resolve()                                        # notebooks run from notebooks/
if FULL and CHECKPOINT is None:
    CHECKPOINT = REPO / DEFAULT_OUT / "last.npz"
if CHECKPOINT is not None and not Path(CHECKPOINT).exists():
    print(f"{CHECKPOINT} not found (run `python -m minimaskrcnn demo` first): using section 4's fitted head")
    CHECKPOINT = None
if CHECKPOINT is not None:
    trained = load_checkpoint_model(str(CHECKPOINT)).eval()
    print(f"loaded {CHECKPOINT}: trained for {trained.config.max_iters} iterations")
else:
    trained = model.eval()
    print(f"no checkpoint: the model of section 4 (random backbone, RPN head fitted for {TRAIN_STEPS} steps)")
assert trained.config.anchor_sizes == cfg.anchor_sizes and trained.config.min_size == H   # section 1's anchors
t_batch, t_sizes, _, _ = trained.preprocess([image])
t_feats = trained.backbone(t_batch)                                # P2..P6 of the trained backbone
t_logits, t_deltas = trained.rpn.head(t_feats)
t_obj = np.concatenate([flatten_level(lg, 1, 3, 1)[0, :, 0] for lg in t_logits])      # one logit per anchor
t_dlt = np.concatenate([flatten_level(d, 1, 3, 4)[0] for d in t_deltas])
t_proposals = trained.rpn(t_feats, t_sizes, t_batch.shape[-2:])[0][0]
print(f"{len(t_proposals)} proposals; objectness > 0.5 at {np.sum(t_obj > 0):d} of {len(t_obj)} anchors")
assert len(t_obj) == len(anchors) and np.all(np.isfinite(t_dlt))
""")

md("""
**Objectness per level.** Each panel is one FPN level: the highest objectness of the 3 anchors at each position.
An object should light up the level whose anchor size matches it (section 1: 16 px on P2 up to 256 px on P6), and
little else.
""")

code("""
t_maps = objectness_maps(t_logits)
fig, axes = plt.subplots(1, 5, figsize=(14, 3))
for lvl, (ax, m) in enumerate(zip(axes, t_maps)):
    (h, w), s = feature_sizes[lvl], strides[lvl]
    show(ax, f"P{lvl + 2} (anchors {cfg.anchor_sizes[lvl][0]} px): max {m.max():.2f}")
    ax.imshow(m, extent=(-s / 2, w * s - s / 2, h * s - s / 2, -s / 2), cmap="viridis", vmin=0, vmax=1,
              alpha=0.85, interpolation="nearest")
fig.tight_layout()
plt.show()
""")

md("""
**Refined anchors.** The RPN's job is to *move* anchors onto objects. For the best boxes after NMS (each level
on its own, as `filter_proposals` does), the anchor it started from (dashed) and the box its deltas make of it
(solid), joined centre to centre. The table compares, for each object, the best IoU among all anchors with the
best IoU among the refined boxes of the anchors that scored highest.
""")

code("""
refined = clip_boxes_to_image(trained.rpn.box_coder.decode(t_dlt, anchors), t_sizes[0])   # every anchor, moved
t_scores = 1 / (1 + np.exp(-t_obj))
best = batched_nms(refined, t_scores, level_of, trained.rpn.nms_thresh, max_keep=12)
fig, axes = plt.subplots(1, 2, figsize=(10, 5))
show(axes[0], "the 12 best: anchor (dashed) -> refined box (solid)")
for i in best[::-1]:
    color = plt.get_cmap("tab10")(int(level_of[i]))
    draw_boxes(axes[0], [anchors[i]], color, lw=1, ls="--")
    draw_boxes(axes[0], [refined[i]], color, lw=1.8)
    (ax_, ay_), (bx_, by_) = (anchors[i, :2] + anchors[i, 2:]) / 2, (refined[i, :2] + refined[i, 2:]) / 2
    axes[0].annotate("", (bx_, by_), (ax_, ay_), arrowprops=dict(arrowstyle="->", color=color, lw=1))
show(axes[1], f"the library's proposals: the best 30 of {len(t_proposals)}")
cmap = plt.get_cmap("autumn_r")
for b, sc in zip(t_proposals[:30][::-1], np.sort(t_scores)[::-1][:30][::-1]):
    draw_boxes(axes[1], [b], cmap(float(sc)), lw=1)
fig.tight_layout()
plt.show()

top = np.argsort(-t_scores, kind="stable")[:100]                    # the 100 most confident anchors
print(f"{'object':12s}{'best anchor IoU':>16s}{'its refined box':>16s}{'best of top-100 refined':>25s}"
      f"{'best of proposals':>19s}")
for g, b in enumerate(gt_boxes):
    iou_a = box_iou(b[None], anchors)[0]
    a = int(np.argmax(iou_a))
    print(f"{NAMES[labels[g]]:12s}{iou_a[a]:16.3f}{box_iou(b[None], refined[a:a + 1])[0, 0]:16.3f}"
          f"{box_iou(b[None], refined[top]).max():25.3f}{box_iou(b[None], t_proposals).max():19.3f}")
""")

md("""
**Which levels the proposals come from.** Per level, the share of all anchors and the share of the proposals:
the fine levels hold most anchors, but proposals go to whichever level's anchors fit the objects.
""")

code("""
prop_level_t = level_of[np.argmax(box_iou(t_proposals, refined), axis=1)]   # the anchor each proposal came from
share_anchors = np.bincount(level_of, minlength=5) / len(level_of)
share_props = np.bincount(prop_level_t, minlength=5) / max(len(prop_level_t), 1)
fig, ax = plt.subplots(figsize=(5, 2.6))
x = np.arange(5)
ax.bar(x - 0.2, share_anchors, 0.4, label="anchors"); ax.bar(x + 0.2, share_props, 0.4, label="proposals")
ax.set_xticks(x, [f"P{k + 2}" for k in x]); ax.set_ylabel("share"); ax.legend()
plt.show()
assert np.isclose(share_props.sum(), 1.0)
""")

md("""
## Summary

* Anchors: one size per FPN level (32…512 px in the paper, 16…256 px in `tiny`), 3 aspect ratios, centred
  every *stride* pixels: 4,092 anchors on a 128 px image, 268,569 on 800 × 1344.
* The RPN predicts deltas $(t_x, t_y, t_w, t_h)$ relative to each anchor: scale- and translation-invariant.
  `decode` inverts `encode` and caps $t_w, t_h$ at $\\log(1000/16)$ so that `exp` cannot overflow.
* Labels come from the IoU matrix: positive ≥ 0.7, negative < 0.3, ignored in between, plus each GT box's
  best anchors (low-quality matches), without which small or oddly placed objects would have no positive.
  256 anchors per image are sampled, at most half positive.
* The head is one 3×3 conv and two 1×1 convs shared by all levels: A objectness logits and 4A deltas per
  position. `flatten_level` lines its outputs up with the anchors.
* Proposals: best `pre_nms_top_n` per level, decode, clip, NMS at 0.7 per level, best `post_nms_top_n`.
* The loss is BCE over the sampled anchors plus smooth L1 (β = 1/9) over the sampled positives, divided by
  the number sampled. Its gradient touches only sampled anchors, and none flows through the proposals
  (approximate joint training).

## Exercises

1. **Anchor offsets.** torchvision centres anchors on the top-left corner of their cell, $(j s, i s)$. Shift
   every anchor by $s/2$ (the cell's centre) and recompute the best IoU of each GT box and the number of
   positives without low-quality matches. Which objects gain? Does it matter once the low-quality rule is on?
2. **Who needs low-quality matches?** Over 50 shapes images, count the GT boxes that have no anchor with IoU
   ≥ 0.7, and plot that fraction against the object size. Then try anchor sizes 12…192 instead of 16…256.
3. **NMS threshold.** Vary `rpn.nms_thresh` from 0.5 to 0.9 on the fitted head of section 4 and plot the
   number of proposals and the best IoU of each GT box among the top 10. What does a threshold of 1.0 do?
4. **NMS without a while loop over kept boxes.** Compute the full N × N IoU matrix of the score-sorted boxes
   once, then find the kept set with a loop over boxes that reads only that matrix. Check it against
   `nms` on the candidates of section 5. When is each version faster?
5. **The loss normaliser.** torchvision divides the box loss by the number of *sampled* anchors, not of
   positives. With 10 positives among 256 sampled, by how much does that scale the regression loss compared
   with Eq. (1)'s $N_{reg}$? Faster R-CNN uses $\\lambda = 10$ with $N_{reg} \\approx 2400$ anchor locations:
   which is closer to torchvision's choice?
""")


md(r"""
### Answer key

A worked solution of the exercises (a release for students replaces it by a stub: try them first).
""")

code(r"""
### BEGIN SOLUTION
# 1. Anchors centred on their cell, (j s + s/2, i s + s/2): the grid moves by half a stride on every level.
centred = np.concatenate([a + s / 2 for a, s in zip(per_level, strides)])
iou_c = box_iou(gt_boxes, centred)
strict_c = Matcher(0.7, 0.3, allow_low_quality_matches=False)(iou_c)
matched_c = matcher(iou_c)
print(f"1. {'GT':14s} {'best IoU: corner':>16} {'centre':>7} {'positives >= 0.7: corner':>25} {'centre':>7}")
for g in range(len(gt_boxes)):
    print(f"   {g}: {NAMES[labels[g]]:11s} {iou[g].max():16.2f} {iou_c[g].max():7.2f} "
          f"{np.sum(strict == g):25d} {np.sum(strict_c == g):7d}")
assert all(np.any(matched_c == g) for g in range(len(gt_boxes)))


def gt_of(seed):
    _, m, _ = draw_shapes_image(np.random.default_rng(1000 + seed), H)
    return np.array([[x_.min(), y_.min(), x_.max() + 1, y_.max() + 1] for y_, x_ in (np.nonzero(k) for k in m)],
                    dtype=np.float32)


all_gt = np.concatenate([gt_of(i) for i in range(50)])                  # 50 more images, for exercise 2 too
best_corner, best_centre = box_iou(all_gt, anchors).max(axis=1), box_iou(all_gt, centred).max(axis=1)
gain, lose = int(np.sum(best_centre > best_corner + 1e-6)), int(np.sum(best_centre < best_corner - 1e-6))
print(f"   over {len(all_gt)} objects of 50 images: mean best IoU {best_corner.mean():.3f} (corner) vs "
      f"{best_centre.mean():.3f} (centre); {gain} objects gain, {lose} lose")
#    Which objects gain is a coin flip: those whose centre happens to lie nearer the centred grid. Objects sit
#    anywhere, so on average neither grid is better (the shapes are placed at continuous random positions).
#    Once the low-quality rule is on, every object has a positive on either grid, so the offset changes only
#    how good the best anchor is, and the learned deltas absorb a fixed half-stride shift anyway.
assert gain > 0 and lose > 0 and abs(best_centre.mean() - best_corner.mean()) < 0.02

# 2. The share of GT boxes without any anchor of IoU >= 0.7, by object size, for two sets of anchor sizes.
size_of = np.sqrt((all_gt[:, 2] - all_gt[:, 0]) * (all_gt[:, 3] - all_gt[:, 1]))
bins = np.array([8, 12, 16, 24, 32, 48, 64])
which = np.clip(np.digitize(size_of, bins) - 1, 0, len(bins) - 2)
small_sizes = AnchorGenerator(((12,), (24,), (48,), (96,), (192,)), (cfg.aspect_ratios,) * 5)
missed, missed_small = {}, {}
for name, gen in (("16...256", anchor_gen), ("12...192", small_sizes)):
    no_good = box_iou(all_gt, np.concatenate(gen.anchors_per_level((H, W), feature_sizes))).max(axis=1) < 0.7
    missed[name] = [float(no_good[which == b].mean()) if np.any(which == b) else np.nan for b in range(len(bins) - 1)]
    missed_small[name] = float(no_good[size_of < 16].mean())
    print(f"2. anchors {name} px: {no_good.mean():.0%} of {len(all_gt)} GT boxes have no anchor with IoU >= 0.7; "
          f"{missed_small[name]:.0%} of those under 16 px")
fig, ax = plt.subplots(figsize=(5, 3))
for name, frac in missed.items():
    ax.semilogx(np.sqrt(bins[:-1] * bins[1:]), frac, "o-", label=f"anchors {name} px")
ax.set_xlabel("object size sqrt(w h), px"), ax.set_ylabel("share without an anchor >= 0.7"), ax.legend()
plt.show()
#    Most objects need the low-quality rule, at every size. Anchor sizes double from level to level, so an
#    object whose size lies between two of them (a 23 px square between 16 and 32) reaches at best
#    IoU 16^2 / 23^2 ~ 0.5 from the size mismatch alone, before any offset of the grid or any aspect-ratio
#    mismatch (rotated triangles). The share is lowest near the anchor sizes and highest between them; anchors of
#    12...192 px help the objects under 16 px and hurt those between 24 and 32 px: they move the gaps.
assert min(missed["16...256"]) > 0.3 and missed_small["12...192"] < missed_small["16...256"]

# 3. The RPN's NMS threshold on the fitted head of section 4 (eval mode: the testing numbers). The cut to
#    post_nms_top_n (150) hides the effect on the count, so it is lifted here; the top 10 are what the cut keeps.
model.eval()
saved = rpn.nms_thresh, dict(rpn.post_nms_top_n)
counts, best10, dupes = {}, {}, {}
try:
    rpn.post_nms_top_n["testing"] = 10 ** 6
    for t in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        rpn.nms_thresh = t
        props = rpn(feats, sizes, batch.shape[-2:])[0][0]
        counts[t], best10[t] = len(props), box_iou(gt_boxes, props[:10]).max(axis=1)
        dupes[t] = int(np.sum(np.triu(box_iou(props[:10], props[:10]) > 0.5, k=1)))
        print(f"3. nms_thresh {t:.1f}: {counts[t]:3d} proposals before the cut to {post_n}; top 10: {dupes[t]} "
              f"pairs with IoU > 0.5, best IoU per GT {best10[t]}")
finally:
    rpn.nms_thresh, rpn.post_nms_top_n = saved[0], saved[1]
fig, ax = plt.subplots(figsize=(4.5, 3))
ax.plot(list(counts), list(counts.values()), "o-")
ax.set_xlabel("rpn.nms_thresh"), ax.set_ylabel("proposals (before the top-n cut)")
plt.show()
#    A lower threshold removes more overlapping boxes: fewer proposals, and fewer near-duplicates among the
#    best ones, whose places go to other boxes (on this image each object's best box stays in the top 10 at
#    every threshold, so its best IoU does not change). At 1.0 nothing is suppressed (IoU is never above 1):
#    NMS is off, and every candidate of section 5 stays, duplicates included.
assert all(counts[a] <= counts[b] for a, b in zip(counts, list(counts)[1:])) and counts[0.5] < counts[0.9]
assert counts[1.0] == len(candidates)

# 4. NMS from one IoU matrix: box i survives unless an earlier kept box overlaps it with IoU > threshold.
def nms_matrix(boxes, scores, thresh):
    order = np.argsort(-scores, kind="stable")
    m = box_iou(boxes[order], boxes[order])                     # (N, N), computed once
    keep = np.ones(len(order), bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1:] &= m[i, i + 1:] <= thresh
    return order[keep]


for t in (0.3, 0.5, 0.7):
    assert np.array_equal(nms_matrix(candidates, scores, t), nms(candidates, scores, t))
print(f"4. nms_matrix == nms on the {len(candidates)} candidates of section 5, thresholds 0.3, 0.5, 0.7")
#    The matrix version does N^2 IoUs (and N^2 memory) up front, then a loop that reads it: it wins for a few
#    hundred or thousand boxes (one vectorised product, GPU-friendly). The while loop over kept boxes
#    computes only K * N IoUs: it wins when N is large (N^2 memory runs out) and few boxes survive.

# 5. Eq. (1) divides the box term by N_reg; torchvision by the number sampled (256). With 10 positives, a
#    per-positive average would divide by 10: torchvision's term is 10 / 256 = 0.039 times that. Faster R-CNN's
#    lambda / N_reg = 10 / 2400 = 1 / 240 per positive, torchvision's 1 / 256: nearly the same weight.
n_pos, n_sampled = 10, 256
print(f"5. box loss scale vs dividing by the positives: {n_pos / n_sampled:.3f}; "
      f"Faster R-CNN 10/2400 = {10 / 2400:.5f} vs torchvision 1/256 = {1 / 256:.5f}")
assert abs((10 / 2400) / (1 / 256) - 1) < 0.1
### END SOLUTION
""")


if __name__ == "__main__":
    NB.write()
