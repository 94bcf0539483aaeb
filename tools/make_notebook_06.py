"""Build notebooks/06_training.ipynb (without outputs) from the cells below.

    python tools/make_notebook_06.py
"""
from notebook_builder import NotebookBuilder

from minimaskrcnn import config

NB = NotebookBuilder("06_training.ipynb")
md, code = NB.md, NB.code
TINY = config.tiny(num_classes=4)     # the demo's schedule, quoted in the text from the config itself


md(rf"""
# 06 · Training Mask R-CNN

Every piece of the model has been built and checked in the notebooks before this one. Here they learn
together. You will:

1. feed the model **image-centric mini-batches** from the shapes set and watch a short training run with a
   **live loss plot**;
2. learn **what each of the five losses does** (RPN objectness, RPN box, classifier, box regression, mask),
   what value each should start at, and how each curve moves;
3. read the **learning-rate schedule** (linear warm-up, then a drop by 10) and plot it;
4. check the **SGD update** with momentum and weight decay against a step computed by hand;
5. save a **checkpoint** and **resume** from it *exactly*: the same weights as a run that was never
   interrupted, bit for bit;
6. see the **NaN guard** stop a diverging run with a message that says where and why;
7. take a first look at the **predictions** of the briefly trained model.

> "**Training:** As in Fast R-CNN, an RoI is considered positive if it has IoU with a ground-truth box of at
> least 0.5 and negative otherwise. The mask loss $L_{{mask}}$ is defined only on positive RoIs. [...]
> We adopt image-centric training. Images are resized such that their scale (shorter edge) is 800 pixels.
> Each mini-batch has 2 images per GPU and each image has N sampled RoIs, with a ratio of 1:3 of positive to
> negatives. N is 64 for the C4 backbone and 512 for FPN. We train on 8 GPUs (so effective mini-batch size
> is 16) for 160k iterations, with a learning rate of 0.02 which is decreased by 10 at the 120k iteration.
> We use a weight decay of 0.0001 and momentum of 0.9."
> — He, Gkioxari, Dollár, Girshick, *Mask R-CNN*, §3.1

**The default run is short** (about a hundred iterations on 64 × 64 images, a few seconds to half a minute
on a laptop CPU): enough to see every loss fall and every mechanism work, not enough for good masks. Set
`FULL = True` for the demo's real run (`python -m minimaskrcnn demo`: 2,000 images of {TINY.min_size} ×
{TINY.min_size}, `config.tiny`'s {TINY.max_iters:,} iterations of {TINY.images_per_batch} images, the learning
rate divided by 10 at iteration {TINY.lr_steps[0]:,}; about a quarter of an hour on a laptop CPU).
""")

md("""
## Setup
""")

code("""
# Parameters (defaults keep the notebook well under a minute on a laptop CPU)
FULL = False          # True: the demo's run (data/shapes with 2000/200 images, config.tiny's full schedule)
SEED = 0
NUM_TRAIN, NUM_VAL = 64, 16
IMAGE_SIZE = 64       # images are drawn this size and the model sees them unresized (min_size = max_size)
ITERS = 100           # training iterations
WARMUP_ITERS = 20     # linear warm-up of the learning rate
LR = 0.01             # base learning rate (divided by 10 after 80 % of the iterations)
PLOT_EVERY = 10       # refresh the live loss plot every this many iterations
RESUME_K = 3          # the resume check trains K iterations, saves, reloads, trains K more
DATA_ROOT = None      # None: a temporary folder
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

if importlib.util.find_spec("minimaskrcnn") is None:  # a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.abspath(".."))            # (run from notebooks/): use the repository root

from minimaskrcnn import config
from minimaskrcnn.engine.run import DEFAULT_DATA
from minimaskrcnn.data.coco import CocoDataset
from minimaskrcnn.data.shapes import ensure_shapes_dataset
from minimaskrcnn.data.transforms import DataLoader
from minimaskrcnn.engine.trainer import LOSS_NAMES, Trainer, TrainingDiverged, read_checkpoint
from minimaskrcnn.model import build_model
from minimaskrcnn.nn.module import load_npz
from minimaskrcnn.nn.optim import SGD, WarmupMultiStepLR
from minimaskrcnn.viz.detections import draw_comparison_grid, draw_target, loss_history, plot_losses

np.set_printoptions(precision=4, suppress=True, linewidth=110)
plt.rcParams.update({"figure.dpi": 80, "font.size": 9})
WORK = tempfile.TemporaryDirectory(prefix="minimaskrcnn06_")   # removed when the kernel stops
if FULL:   # exactly what `python -m minimaskrcnn demo` trains (the data set is reused if it exists)
    REPO = Path("..").resolve()                                   # notebooks run from notebooks/
    DATA_ROOT, NUM_TRAIN, NUM_VAL, IMAGE_SIZE, PLOT_EVERY = REPO / DEFAULT_DATA, 2000, 200, 128, 50
    OUT_DIR = REPO / "runs" / "notebook06"
else:
    OUT_DIR = Path(WORK.name) / "run"
print("checkpoints go to", OUT_DIR)
""")

md("""
## 1. Data: image-centric mini-batches

The shapes set is generated on disk in COCO format (notebook 00); `CocoDataset` reads it and `DataLoader`
deals out mini-batches of `images_per_batch` *whole images* with all their objects ("image-centric"
training, as in Fast R-CNN: the RoIs of a batch come from a few images, so they share the backbone's
computation). Each image is flipped left-right with probability 0.5, the only augmentation. The loader
is an endless, reshuffled-every-epoch stream whose position is two integers: that is what makes exact
resuming possible (section 6).
""")

code("""
root = Path(DATA_ROOT) if DATA_ROOT else Path(WORK.name) / "shapes"
# Objects scale with the image: the demo's 10..60 px on 128 px images, 8..32 px on 64 px images.
shape_args = {} if FULL else dict(image_size=IMAGE_SIZE, object_size=(IMAGE_SIZE / 8, IMAGE_SIZE / 2))
t0 = time.perf_counter()
ensure_shapes_dataset(root, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=SEED, progress=False, **shape_args)
train_set, val_set = CocoDataset(root, "train"), CocoDataset(root, "val")
print(f"{time.perf_counter() - t0:.1f} s; train: {train_set.summary()}")
print("val:", val_set.summary())
NAMES = train_set.class_names
assert len(train_set) == NUM_TRAIN and len(val_set) == NUM_VAL
""")

md("""
### The model and its configuration

`config.tiny` is the demo's model: a narrow ResNet-18-FPN trained from scratch with trainable batch norm.
For the short run we make it cheaper still: 64 px images, fewer proposals and fewer sampled anchors and RoIs
per image. The table compares the knobs that matter for training with the paper's.
""")

code("""
num_classes = len(NAMES)       # the background counts: 3 shapes + 1
if FULL:
    cfg = config.tiny(num_classes, class_names=tuple(NAMES))
else:
    cfg = config.tiny(num_classes, class_names=tuple(NAMES), min_size=IMAGE_SIZE, max_size=IMAGE_SIZE,
                      lr=LR, warmup_iters=WARMUP_ITERS, lr_steps=(int(0.8 * ITERS),), max_iters=ITERS,
                      rpn_pre_nms_top_n=(300, 150), rpn_post_nms_top_n=(100, 50),
                      rpn_batch_size_per_image=64, box_batch_size_per_image=64)
paper = config.r50_fpn(81)
rows = [("images per batch", "images_per_batch", "16 (2 x 8 GPUs)"), ("image size", "min_size", "800"),
        ("sampled anchors / image", "rpn_batch_size_per_image", None),
        ("sampled RoIs / image", "box_batch_size_per_image", None), ("learning rate", "lr", None),
        ("momentum", "momentum", None), ("weight decay", "weight_decay", None),
        ("warm-up iterations", "warmup_iters", None), ("lr / 10 at", "lr_steps", "(120000,)"),
        ("iterations", "max_iters", None)]
print(f"{'':26s}{'this run':>14s}{'paper (R50-FPN)':>18s}")
for label, key, paper_value in rows:
    print(f"{label:26s}{str(getattr(cfg, key)):>14s}{paper_value or str(getattr(paper, key)):>18s}")

model = build_model(cfg)
loader = DataLoader(train_set, cfg.images_per_batch, seed=SEED, hflip_prob=cfg.hflip_prob)
print(f"\\n{model.num_parameters():,} parameters ({model.num_parameters(trainable_only=True):,} trainable)")
""")

code("""
images, targets = next(DataLoader(train_set, cfg.images_per_batch, seed=SEED))   # a look only: own loader
fig, axes = plt.subplots(1, len(images), figsize=(2.2 * len(images), 2.4), layout="constrained")
for ax, image, target in zip(axes, images, targets):
    draw_target(image, target, NAMES, ax=ax, title=f"image {target['image_id']}")
plt.show()
assert len(images) == cfg.images_per_batch and all(im.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) for im in images)
""")

md(r"""
## 2. Five losses

`model.forward_train(images, targets)` returns five numbers; `model.backward()` sends the gradient of their
**sum** into every weight (the paper's $L = L_{cls} + L_{box} + L_{mask}$ for each RoI, plus the RPN's two
losses: the RPN and the detector are trained jointly, the proposals being treated as constants). What
each one asks of the network:

* **`loss_objectness`, RPN classification** (Faster R-CNN's RPN, used as in §3 "Mask R-CNN"). For each of a
  few sampled anchors per image (256 in the paper, half of them positive at most): is there an object here?
  Anchors with IoU ≥ 0.7 with a GT box are positive, < 0.3 negative. Binary cross-entropy on the anchor's
  objectness logit. It decides which boxes the second stage gets to see.
* **`loss_rpn_box_reg`, RPN box regression.** For the positive anchors only: the 4 deltas that move the anchor
  onto its GT box (Faster R-CNN Eq. 2), smooth L1, summed and divided by the number of *sampled* anchors. It
  makes proposals tight enough for the second stage's IoU ≥ 0.5 test.
* **`loss_classifier`, $L_{cls}$** (§3). Softmax cross-entropy over the K + 1 classes (background included)
  for each sampled RoI (512 per image in the paper, 25 % positives). It scores every detection at test time.
* **`loss_box_reg`, $L_{box}$** (§3, "identical as those defined in [Fast R-CNN]"). Smooth L1 on the deltas of
  the RoI's *GT class* (class-specific regression), positives only, divided by all sampled RoIs. It refines
  each proposal into the final box.
* **`loss_mask`, $L_{mask}$** (§3). Mean per-pixel sigmoid cross-entropy between the RoI's *GT class's* 28 × 28
  mask logits and the GT mask cropped to the RoI, positive RoIs only. Other classes' masks get no gradient:
  masks and classes are decoupled.

**Joint training, which is not what the paper's ablations did.** Here one backward pass trains the RPN and the
RoI heads together, on one shared backbone, as Detectron, Detectron2 and torchvision do (Faster R-CNN's
"approximate joint training", notebook 03 §6). The paper's experiments mostly did not:

> "For convenient ablation, RPN is trained separately and does not share features with Mask R-CNN, unless
> specified." — §3.1 "Implementation Details"

So the numbers of Table 2 come from a separately trained RPN whose proposals are fixed inputs to Mask R-CNN.
The timing of §4.4 is for a model whose RPN and Mask R-CNN share features, trained with Faster R-CNN's 4-step
(alternating) training, and the paper's Appendix B lists end-to-end training as an improvement of its own
(Table 8: mask AP 37.0 → 37.6, box AP 40.5 → 41.7 for X-101-FPN). Joint training is simpler (one model, one
loop) and is what every current implementation does; keep in mind that it is not how the ablation tables were
produced.

**Sanity check at initialisation** (a habit worth keeping: it catches wrong normalisations and wrong labels
before any training). The RPN head is initialised with $\mathcal{N}(0, 0.01^2)$ weights, so every objectness
logit starts near 0 and the binary cross-entropy near $\ln 2 = 0.693$. The classifier's small initial weights
give a nearly uniform softmax over 4 classes: $\ln 4 = 1.386$. The two box losses start small (positives are
a fraction of the samples, and smooth L1 is quadratic near 0). The mask head is initialised He-normal (as
torchvision's), so its logits start with a spread of several units and $L_{mask}$ starts well *above*
$\ln 2$, then drops fast.
""")

code("""
losses0 = model.forward_train(images, targets)
model.free_cache()                       # a look only: no backward
for name in LOSS_NAMES:
    print(f"{name:18s} {losses0[name]:.4f}")
print(f"ln 2 = {np.log(2):.4f}, ln {num_classes} = {np.log(num_classes):.4f}")
assert list(losses0) == list(LOSS_NAMES)
assert abs(losses0["loss_objectness"] - np.log(2)) < 0.05
assert abs(losses0["loss_classifier"] - np.log(num_classes)) < 0.2
""")

md("""
## 3. The learning-rate schedule: warm-up, then steps

The paper trains at 0.02 for 120k iterations, then 0.002 until 160k. Starting straight at 0.02 from random
heads is risky: the first gradients are large and badly aimed, and one huge step can push the network where
it never recovers (activations overflow, the losses become NaN; section 7). Detectron, following Goyal et al.
(*Accurate, Large Minibatch SGD*), **warms up**: the rate rises linearly from `warmup_factor × lr` to `lr`
over the first `warmup_iters` iterations. `WarmupMultiStepLR` is the whole schedule:
""")

code("""
print(inspect.getsource(WarmupMultiStepLR.__call__))
""")

code("""
def schedule_of(c):
    return WarmupMultiStepLR(c.lr, c.lr_steps, 0.1, c.warmup_iters, c.warmup_factor)

full_tiny = config.tiny(num_classes)
fig, axes = plt.subplots(1, 3, figsize=(11, 2.8), layout="constrained")
for ax, (title, c) in zip(axes, [("this run", cfg), ("config.tiny (the demo)", full_tiny),
                                               ("paper, R50-FPN", paper)]):
    s, its = schedule_of(c), np.arange(c.max_iters)
    ax.plot(its, [s(int(i)) for i in its])
    ax.axvline(c.warmup_iters, color="0.6", ls=":", lw=1)
    for step in c.lr_steps:
        ax.axvline(step, color="0.6", ls="--", lw=1)
    ax.set_title(f"{title}: warm-up {c.warmup_iters}, steps {c.lr_steps}", fontsize=9)
    ax.set_xlabel("iteration"); ax.set_ylabel("learning rate"); ax.grid(alpha=0.3)
plt.show()

s = schedule_of(cfg)
assert np.isclose(s(0), cfg.lr * cfg.warmup_factor) and np.isclose(s(cfg.warmup_iters), cfg.lr)
assert np.isclose(s(cfg.warmup_iters // 2), cfg.lr * (cfg.warmup_factor + 1) / 2)   # linear in between
assert np.isclose(s(cfg.lr_steps[0] - 1), cfg.lr) and np.isclose(s(cfg.lr_steps[0]), cfg.lr / 10)
""")

md("""
The paper's rate is for 16 images per batch. The linear scaling rule (Goyal et al.) would give 0.02 × 4 / 16 =
0.005 for `tiny`'s 4 images; `tiny` uses 0.02 with a 100-iteration warm-up, and this run 0.01 with only 20
(exercise 2 shows what 0.02 does after such a short warm-up).

## 4. The update: SGD with momentum and weight decay

For each trainable weight $w$ with gradient $g$ (PyTorch's formulation, which Detectron2 and torchvision use):

$$v \\leftarrow \\mu\\, v + (g + \\lambda w), \\qquad w \\leftarrow w - \\eta_t\\, v$$

with momentum $\\mu = 0.9$, weight decay $\\lambda = 10^{-4}$ (the gradient of $\\tfrac{\\lambda}{2}\\lVert w
\\rVert^2$, applied to every weight) and the schedule's $\\eta_t$. The velocity $v$ starts at the first
step's $g + \\lambda w$. (The original Caffe/Detectron rule puts $\\eta_t$ inside $v$: $v \\leftarrow \\mu v
+ \\eta_t(g + \\lambda w)$, $w \\leftarrow w - v$; the two agree while $\\eta$ is constant and differ for a
few iterations after each change of the rate.)
""")

code("""
print(inspect.getsource(SGD.step))
""")

md("""
`Trainer.step` is one iteration: forward, backward, the NaN guard, then `SGD.step` at the schedule's rate.
We check one update by hand on a throwaway trainer: after its first step the velocity exists, so the second
step exercises the full rule. The arithmetic is float32 in the same order as `SGD.step`, so the result is
equal to the last bit.
""")

code("""
print(inspect.getsource(Trainer.step))
probe = Trainer(build_model(cfg), DataLoader(train_set, cfg.images_per_batch, seed=SEED),
                Path(WORK.name) / "probe", progress=False)
pname = "roi_heads.box_predictor.cls_score.weight"
p = dict(probe.model.named_parameters())[pname]
probe.step(*next(probe.loader))
w0, v0, lr = p.data.copy(), probe.optimizer.velocity[pname].copy(), probe.schedule(probe.iteration)
probe.step(*next(probe.loader))
v1 = cfg.momentum * v0 + (p.grad + cfg.weight_decay * w0)
print(f"{pname} {p.shape}: lr {lr:.5f}, |g| {np.abs(p.grad).mean():.2e}, |v| {np.abs(v1).mean():.2e}, "
      f"|w| {np.abs(w0).mean():.2e}")
assert np.array_equal(probe.optimizer.velocity[pname], v1)
assert np.array_equal(p.data, w0 - lr * v1)
assert probe.iteration == 2
del probe
""")

md("""
## 5. A short training run, with a live loss plot

`Trainer.train()` runs from `trainer.iteration` to `trainer.max_iters`, appending the losses, the learning
rate and the seconds of every iteration to `trainer.log`, and ends with a checkpoint. It normally shows a
tqdm progress bar with the smoothed losses; here we turn the bar off and instead call `train()` in chunks of
`PLOT_EVERY` iterations, redrawing a figure after each chunk through a display handle (`display(fig,
display_id=True)`, then `handle.update(fig)`), so the same picture is replaced in place while training runs.
Raw losses are drawn faint, their exponential moving averages solid.
""")

code("""
trainer = Trainer(model, loader, OUT_DIR, max_iters=cfg.max_iters, checkpoint_every=0, progress=False)
live, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.2), width_ratios=[2, 1], layout="constrained")
plt.close(live)                                        # shown through the handle only, not again at the end
handle = display(live, display_id=True)
t0 = time.perf_counter()
while trainer.iteration < cfg.max_iters:
    trainer.max_iters = min(trainer.iteration + PLOT_EVERY, cfg.max_iters)
    trainer.train()                                    # PLOT_EVERY iterations, then a checkpoint
    ax_loss.clear(); ax_lr.clear()
    plot_losses(loss_history(trainer.log), log_scale=True, ax=ax_loss,
                title=f"iteration {trainer.iteration} / {cfg.max_iters}, {time.perf_counter() - t0:.0f} s")
    ax_lr.plot(trainer.log["lr"]); ax_lr.set_xlim(0, cfg.max_iters); ax_lr.set_ylim(0, 1.1 * cfg.lr)
    ax_lr.set_title("learning rate"); ax_lr.set_xlabel("iteration"); ax_lr.grid(alpha=0.3)
    if handle is not None:                             # (None outside IPython)
        handle.update(live)
seconds = np.array(trainer.log["seconds"])
print(f"{trainer.iteration} iterations in {time.perf_counter() - t0:.1f} s "
      f"(median {np.median(seconds):.3f} s per iteration of {cfg.images_per_batch} images)")
""")

code("""
log = trainer.log
total = np.array(loss_history(log)["total"])
n = max(cfg.max_iters // 10, 1)
print(f"total loss: first {n} iterations {total[:n].mean():.3f}, last {n} {total[-n:].mean():.3f}")
assert trainer.iteration == cfg.max_iters and len(log["losses"]) == len(log["lr"]) == cfg.max_iters
assert np.allclose(log["lr"], [trainer.schedule(i) for i in range(cfg.max_iters)])   # the schedule was used
assert all(np.isfinite(v) for rec in log["losses"] for v in rec.values())
assert total[-n:].mean() < 0.6 * total[:n].mean()                                   # it learned something
assert os.path.exists(trainer.checkpoint_path)
""")

md("""
### Each loss on its own

The five curves have different sizes and speeds, so each gets its own panel (log scale, dotted line: the
learning-rate drop). Typical shapes:

* **objectness** barely moves while the learning rate is tiny, then falls steadily for the whole run: "object or
  not" is the easiest question, asked of the most samples, and the clearest sign that training works;
* **RPN box** is small throughout (few positive anchors, normalised by all sampled anchors) and noisy;
* **classifier** drops quickly from $\\ln 4$ as the network learns that most RoIs are background; then it
  can level off or even rise for a while, as better proposals turn more RoIs into positives, which are harder
  to classify than background (telling the shapes apart takes far longer than this run);
* **box regression** can *rise* at first: as the RPN improves, more proposals pass IoU 0.5 and become
  positives, and every positive adds to this sum (normalised by all sampled RoIs, not by the positives);
* **mask** falls fastest of all at first, from its large initial value (the He-initialised logits shrink),
  then slowly: sharp edges and small objects take thousands of iterations.
""")

code("""
history = loss_history(log)
fig, axes = plt.subplots(2, 3, figsize=(12, 4.6), layout="constrained")
for ax, (name, values) in zip(axes.ravel(), history.items()):
    plot_losses({name: values}, log_scale=True, ax=ax, title=name)
    for step in cfg.lr_steps:
        ax.axvline(step, color="0.5", ls=":", lw=1)
    ax.get_legend().remove()
plt.show()
first, last = ({k: np.mean(v[sl]) for k, v in history.items()} for sl in (slice(0, n), slice(-n, None)))
print("mean of the first / last", n, "iterations:")
for k in history:
    print(f"  {k:12s} {first[k]:.3f} -> {last[k]:.3f}")
assert last["objectness"] < first["objectness"] and last["mask"] < first["mask"]
""")

md("""
## 6. Checkpoints, and resuming exactly

A long run will be interrupted (a closed laptop, a killed job). `Trainer.save()` writes `last.npz`
atomically (to a temporary file, then renamed, so a crash mid-write never leaves half a checkpoint), with
plain arrays only (no pickle): everything the next iteration depends on.
""")

code("""
ckpt = load_npz(trainer.checkpoint_path)
groups = {}
for key in ckpt:
    groups.setdefault(key.split(".")[0], []).append(key)
for prefix, keys in groups.items():
    size = sum(ckpt[k].nbytes for k in keys) / 1e6
    print(f"{prefix}.*: {len(keys):4d} arrays, {size:.1f} MB   e.g. {keys[:2]}")
meta = json.loads(str(ckpt["meta.json"]))
print("meta:", {k: v for k, v in meta.items() if k not in ("config", "rng")})
print("meta['rng']:", meta["rng"]["bit_generator"], "state;  meta['config']: the model's", len(meta["config"]),
      "settings")
assert meta["iteration"] == cfg.max_iters and set(groups) == {"model", "optim", "meta"}
""")

md("""
* `model.*`: the weights **and buffers** (batch norm's running means and variances change during training
  too);
* `optim.velocity.*`: SGD's momentum buffers. Without them the first steps after a resume would be plain SGD:
  a different trajectory;
* `meta.json`: the iteration (hence the learning rate) and the **data loader's position** (epoch, batch). The
  random draws need no saved state: the trainer draws each image's anchor and RoI samples from a generator
  seeded by (seed, iteration, the image's place in the batch), and the flips from one seeded by (seed, epoch,
  batch, place), so the iteration and the position restore them (section 9 says why per image).

**The test of a resume is exactness.** Three runs from the same initial weights: *A* trains K iterations and
saves; *B*, a brand-new model, loader and trainer (as a new process would build them), loads A's checkpoint
and trains K more; *C* trains 2K iterations without stopping. B and C must hold identical weights, momentum
and loader position. A fourth run, *D*, resumes from the weights only (`model.load_state_dict`, the usual
shortcut): it drifts away from C.
""")

code("""
def fresh_trainer(out_dir, max_iters):
    # What a new process builds: the model (the same initial weights, seeded by cfg.seed), the loader, the trainer.
    model = build_model(cfg)
    loader = DataLoader(train_set, cfg.images_per_batch, seed=SEED, hflip_prob=cfg.hflip_prob)
    return Trainer(model, loader, out_dir, max_iters=max_iters, checkpoint_every=0, progress=False)

K, base = RESUME_K, Path(WORK.name)
t0 = time.perf_counter()
a = fresh_trainer(base / "resume", K)
a.train()                                             # K iterations, then resume/last.npz
b = fresh_trainer(base / "resume", 2 * K)
b.load()                                              # weights, momentum, iteration, loader, random state
print(f"B resumes at iteration {b.iteration}, loader at {b.loader.state_dict()}")
b.train()
c = fresh_trainer(base / "straight", 2 * K)
c.train()
d = fresh_trainer(base / "weights_only", 2 * K)
_, weights, _ = read_checkpoint(a.checkpoint_path)     # the model.* arrays only
d.model.load_state_dict(weights)
d.iteration = K                                       # same learning rate; but no momentum, loader or rng state
d.train()
print(f"4 runs, {2 * K + 2 * K + K + K} iterations: {time.perf_counter() - t0:.1f} s")

def differences(x, y):
    sx, sy = x.model.state_dict(), y.model.state_dict()
    return {k: float(np.abs(sx[k] - sy[k]).max()) for k in sx if not np.array_equal(sx[k], sy[k])}

bc, dc = differences(b, c), differences(d, c)
print(f"B vs C: {len(bc)} of {len(c.model.state_dict())} arrays differ")
print(f"D vs C: {len(dc)} arrays differ, by up to {max(dc.values(), default=0):.2e}")
assert not bc and len(dc) > 0
assert all(np.array_equal(b.optimizer.velocity[k], v) for k, v in c.optimizer.velocity.items())
assert b.model.rng.bit_generator.state == c.model.rng.bit_generator.state
assert b.loader.state_dict() == c.loader.state_dict()
assert [r["loss_mask"] for r in b.log["losses"]] == [r["loss_mask"] for r in c.log["losses"]]
""")

md("""
B's log equals C's as well: `load()` also restores `log.json`, cut at the checkpoint's iteration, so the loss
curves of a resumed run continue without a gap or a repeat. The command line does the same with
`python -m minimaskrcnn demo --resume`.

## 7. The NaN guard

A diverging run (too high a learning rate, a bad annotation, an overflow) shows up as a loss or a gradient
that is no longer a finite number. After that, every SGD step writes NaN into the weights and the run is
silently lost, checkpoints included. `Trainer.step` checks the five losses (`forward_train` raises
`FloatingPointError`) and every gradient before updating, and stops with `TrainingDiverged`: the message names
the iteration, the culprit, and the last good checkpoint, which is *not* overwritten.

We poison one weight of the trained model's classifier and take a step:
""")

code("""
victim = dict(model.named_parameters())["roi_heads.box_predictor.cls_score.weight"]
victim.data[0, 0] = np.nan
message = None
try:
    with np.errstate(invalid="ignore"):               # NumPy would also warn about the NaNs it meets
        trainer.step(*next(trainer.loader))
except TrainingDiverged as e:
    message = str(e)
print("TrainingDiverged:", message)
assert message is not None and "loss_classifier is nan" in message and trainer.checkpoint_path in message
assert trainer.iteration == cfg.max_iters             # no update happened

trainer.load()                                        # back to the last good checkpoint
assert all(np.isfinite(p.data).all() for _, p in model.named_parameters())
print("restored iteration", trainer.iteration, "- all weights finite again")
""")

md(f"""
## 8. A first look at the predictions

`model.predict(images)` runs the test-time path (notebook 07 takes it apart): proposals, box branch, score
threshold 0.05, per-class NMS, the best `detections_per_img`, then masks for those boxes only. After a hundred
iterations the model is not a detector yet: the classifier has learned that most RoIs are background, so every
score is low. We draw the **three best detections of each image, whatever their score**, to see where the
model looks. `FULL = True` trains the demo's model for its {TINY.max_iters:,} iterations; notebook 07 shows a model that
has memorised a few images, with confident detections.
""")

code("""
n_show = 4
val_images = [val_set.load_image(i) for i in range(n_show)]
val_targets = [val_set.get_target(i) for i in range(n_show)]
t0 = time.perf_counter()
preds = model.predict(val_images)
print(f"predict: {1000 * (time.perf_counter() - t0) / n_show:.0f} ms per image")
top3 = [{k: v[:3] for k, v in p.items()} for p in preds]         # predictions are sorted by score
display(draw_comparison_grid(val_images, val_targets, top3, NAMES, score_thresh=0.0))
for i, p in enumerate(preds):
    top = ", ".join(f"{NAMES[k]} {s:.2f}" for k, s in zip(p["labels"][:4], p["scores"][:4]))
    print(f"image {i}: {len(p['scores'])} detections; best: {top}")
    D = len(p["scores"])
    assert p["boxes"].shape == (D, 4) and p["masks"].shape == (D, IMAGE_SIZE, IMAGE_SIZE)
    assert p["masks"].dtype == bool and D <= cfg.detections_per_img
    assert np.all(p["scores"] >= cfg.box_score_thresh) and np.all(np.diff(p["scores"]) <= 0)
""")

# ---- issue 13: data-parallel training (section 9), a block of its own -------------------------------------
md("""
## 9. Past one process: data parallelism

The paper trained on 8 GPUs with 2 images each. **Data parallelism**: every process (a *rank*) holds the same
weights, computes the gradients of its own images, the ranks **sum their gradients** (an *allreduce*), and
every rank takes the same SGD step, so the weights stay equal everywhere. `mpiexec -n 2 python -m minimaskrcnn
train ...` does it with MPI (`minimaskrcnn/engine/distributed.py`; the README says how to run it). Launching
`mpiexec` from a notebook is impractical, so here the ranks are **threads of this process** with the same
collectives (`run_ranks`, `ThreadCommunicator`); the test suite runs the same check under a real `mpiexec -n 2`.

**Why summing is exact.** The loss of a batch is a sum over its images' terms, divided by a count: sampled
anchors, sampled RoIs, positive RoIs of the whole batch. The gradient of a sum is the sum of the gradients, so
if each rank divides *its* terms by the *whole batch's* count (one allreduce of the counts), its loss is its
share of the batch's loss, its gradient its share of the batch's gradient, and the allreduced sum is exactly
what one process computes. (Averaging per-rank means instead would weigh a rank that sampled fewer RoIs as
much as one that sampled more.)

**What breaks: batch norm.** Every other layer treats the images of a batch independently; batch norm
normalises each channel by the mean and variance *of the batch*. A rank with half the images would
normalise by half a batch's statistics: another function, noisier. `SyncBatchNorm` allreduces the per-channel
sums and sums of squares in the forward pass (and the two gradient sums in the backward pass), so the
statistics are the whole batch's.

**Random draws** would break it too: if rank 1 drew its images' anchor samples from the next numbers of a
shared generator, they would depend on how many images rank 0 had. Each image draws from its own generator,
seeded by (seed, iteration, its place in the batch).

Below: three iterations of this notebook's model, in float64, by one process, by 2 simulated ranks, and by 2
ranks with plain batch norm. (Float64 because the two ways add the same numbers in another order: a
difference of ~1e-16 per operation. In float32, ~1e-7 can flip a proposal at the top-k boundary after a few
iterations, and two correct runs then part ways; the tests check float32 on the first iteration.)
""")

code("""
import unittest.mock

from minimaskrcnn.engine.distributed import run_ranks, train_iterations

cfg64, PARALLEL_ITERS = cfg.replace(dtype="float64"), 3
t0 = time.perf_counter()
losses_one, w_one, _ = train_iterations(cfg64, train_set, PARALLEL_ITERS)                 # one process
two = run_ranks(lambda comm: train_iterations(cfg64, train_set, PARALLEL_ITERS, comm), 2)  # 2 ranks, SyncBN
# the control: each rank normalises by its own images' statistics (no conversion to SyncBatchNorm)
with unittest.mock.patch("minimaskrcnn.nn.norm.convert_sync_batchnorm", lambda model, comm: model):
    plain = run_ranks(lambda comm: train_iterations(cfg64, train_set, PARALLEL_ITERS, comm), 2)
print(f"{PARALLEL_ITERS} iterations, three ways: {time.perf_counter() - t0:.1f} s\\n")
print(f"{'iteration':>9s} {'loss':>16s} {'1 process':>12s} {'2 ranks':>12s} {'2 ranks, plain BN':>18s}")
for it in range(PARALLEL_ITERS):
    for k in ("loss_objectness", "loss_classifier", "loss_mask"):
        print(f"{it:9d} {k:>16s} {losses_one[it][k]:12.8f} {two[0][0][it][k]:12.8f} {plain[0][0][it][k]:18.8f}")


def largest_difference(weights):
    return max(float(np.abs(weights[k] - w_one[k]).max()) for k in w_one)


print(f"\\nlargest weight difference from one process after {PARALLEL_ITERS} steps: "
      f"2 ranks {largest_difference(two[0][1]):.1e}, 2 ranks with plain BN {largest_difference(plain[0][1]):.1e}")
assert largest_difference(two[0][1]) < 1e-10 and largest_difference(plain[0][1]) > 1e-6
assert all(np.array_equal(two[0][1][k], two[1][1][k]) for k in w_one)     # both ranks hold the same weights
""")

md("""
With SyncBN the two ranks reproduce the one process to ~1e-15, and hold identical weights; with plain batch
norm they train another model from the first iteration on. What the allreduce costs, and how the speed-up
would grow to 8 or 64 ranks, is `bench/distributed.py`'s question.
""")
# ---- end of issue 13's block --------------------------------------------------------------------------------

md("""
## Summary

* A training iteration: an image-centric mini-batch → `forward_train` (five losses) → `backward` (gradient of
  their sum into every weight) → finite-check → SGD step at the scheduled rate.
* The five losses: RPN objectness (BCE on sampled anchors), RPN box (smooth L1 on positive anchors), classifier
  (softmax CE on sampled RoIs), box regression (smooth L1 on the GT class's deltas of positive RoIs) and mask
  (per-pixel sigmoid BCE on the GT class's 28 × 28 mask of positive RoIs). At initialisation objectness ≈ ln 2
  and the classifier ≈ ln(K + 1): a free check of the wiring.
* The learning rate warms up linearly, then drops by 10 at fixed steps; SGD uses momentum 0.9 and weight decay
  1e-4 (paper §3.1), `v ← μv + g + λw`, `w ← w − ηv`.
* A checkpoint holds weights, buffers, momentum, iteration, loader position and random state: resuming from it
  gives bit-identical weights; resuming from the weights alone does not.
* Non-finite losses or gradients stop training with `TrainingDiverged` before any weight is damaged, and the
  last good checkpoint is kept.
* Data parallelism: each rank divides its losses by the whole batch's counts, the ranks sum their gradients,
  batch norm is synchronised, random draws are per image: N ranks train the model one process trains.

## Exercises

1. **Longer, bigger.** Set `ITERS = 400` and `NUM_TRAIN = 256` (a few minutes), or `FULL = True`. Which loss
   curve keeps falling longest? Evaluate the result with notebook 07.
2. **Too hot.** Set `LR = 0.02` with `WARMUP_ITERS = 20` and rerun section 5. Which loss explodes first, and at
   which iteration does the guard stop the run? Then try `WARMUP_ITERS = 100`.
3. **No warm-up at all.** `WARMUP_ITERS = 0` and `LR = 0.01`: does the run survive? Plot the first 20
   iterations of each loss next to the warmed-up run.
4. **What a resume needs.** In section 6, resume run B without the momentum (`b.optimizer.velocity = {}` after
   `b.load()`), then without the loader position, then without the random state. Check that each omission
   alone breaks exactness. Which one moves the weights furthest from run C after K iterations, and why?
5. **Batch norm.** `config.tiny` trains its batch norm layers (`norm="bn"`), the paper freezes them
   (`frozen_bn`, statistics from ImageNet pre-training). With 4 images of 64 px per batch, how noisy are the
   batch statistics? Try `images_per_batch=2` and compare the loss curves.
6. **Weight decay.** Measure the norm of all weights every 10 iterations with `weight_decay=1e-4` and with
   `weight_decay=1e-2`. How large is the decay term `λw` compared with the gradient `g` for the classifier's
   weights?
""")


if __name__ == "__main__":
    NB.write()
