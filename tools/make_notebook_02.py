"""Build notebooks/02_backbone_fpn.ipynb (without outputs) from the cells below.

    python tools/make_notebook_02.py
"""
from notebook_builder import NotebookBuilder

NB = NotebookBuilder("02_backbone_fpn.ipynb")
md, code = NB.md, NB.code


md(r"""
# 02 · The backbone: ResNet and the Feature Pyramid Network

Every later part of Mask R-CNN (the RPN, the box head, the mask head) reads the same feature maps. This
notebook builds them: a **ResNet** turns the image into four maps of decreasing resolution and increasing
meaning, and a **Feature Pyramid Network** (FPN) mixes them into five maps P2…P6 that are all 256 channels
deep, one per object scale. You will:

1. follow a real image through ResNet-50 and through our CPU-sized `tiny` backbone: the shapes of C2…C5,
   their **strides** and their **receptive fields** (computed, then measured with the backward pass);
2. compare the **basic block** (ResNet-18/34) and the **bottleneck block** (ResNet-50/101);
3. see why a pretrained backbone uses **frozen batch norm** when a batch holds 2 images, and what batch norm
   and group norm do instead;
4. read the FPN's **top-down path** in code (lateral 1×1, nearest upsampling, 3×3 output, P6 by max-pool),
   redo it by hand, **look at** P2…P6, and **check its backward pass** numerically;
5. count the parameters of ResNet-50-FPN Mask R-CNN, stage by stage, against torchvision's 44,401,393.

> "We denote the *backbone* architecture using the nomenclature *network-depth-features*. We evaluate ResNet
> and ResNeXt networks of depth 50 or 101 layers. [...] We also explore another more effective backbone
> recently proposed by Lin et al., called a Feature Pyramid Network (FPN). FPN uses a top-down architecture
> with lateral connections to build an in-network feature pyramid from a single-scale input."
> — He, Gkioxari, Dollár, Girshick, *Mask R-CNN*, §3 "Network Architecture"

**Read alongside:** K. He, X. Zhang, S. Ren, J. Sun, *Deep Residual Learning for Image Recognition* (CVPR 2016),
§3–4 and Table 1; T.-Y. Lin et al., *Feature Pyramid Networks for Object Detection* (CVPR 2017), §3 and Fig. 3;
Y. Wu, K. He, *Group Normalization* (ECCV 2018), §1.
""")

md("""
## Setup

The parameter cell is all you need to change: another seed draws other images and other random weights.
""")

code("""
# Parameters (defaults keep the notebook well under a minute on a laptop CPU)
SEED = 0
IMAGE_SIZE = 128        # side of the synthetic shapes images
NUM_IMAGES = 16         # images for the batch-norm statistics of section 3
""")

code("""
import importlib.util
import inspect
import os
import sys

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

if importlib.util.find_spec("minimaskrcnn") is None:  # a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.abspath(".."))            # (run from notebooks/): use the repository root

from minimaskrcnn import config, nn
from minimaskrcnn.data.shapes import draw_shapes_image
from minimaskrcnn.model import build_model
from minimaskrcnn.model.fpn import BackboneWithFPN, FeaturePyramidNetwork
from minimaskrcnn.model.resnet import BasicBlock, Bottleneck, ResNet
from minimaskrcnn.model.transform import preprocess_batch
from minimaskrcnn.nn import functional as F
from minimaskrcnn.nn.gradcheck import check_directional, check_gradient
from minimaskrcnn.nn.resample import upsample_nearest_backward, upsample_nearest_forward

rng = np.random.default_rng(SEED)
nn.init.manual_seed(SEED)
np.set_printoptions(precision=3, suppress=True, linewidth=110)
plt.rcParams.update({"figure.dpi": 80, "font.size": 9})

image, masks, labels = draw_shapes_image(np.random.default_rng(SEED), IMAGE_SIZE)
# The model's input transform (notebook 00): normalise with ImageNet statistics, pad to a multiple of 32.
x, _, _ = preprocess_batch([image], IMAGE_SIZE, IMAGE_SIZE)
print("input batch", x.shape, x.dtype)
""")

md("""
## 1. ResNet: stages, strides and receptive fields

A ResNet is a **stem** (a 7×7 convolution with stride 2, a norm, ReLU, and a 3×3 max-pool with stride 2) and
four **stages** `layer1…layer4`. Inside a stage every block keeps the resolution; the first block of stages
2–4 halves it. The outputs of the four stages are called **C2, C3, C4, C5**: Ck has stride 2^k with respect
to the image (4, 8, 16, 32). The classification network's average pool and fully connected layer are
dropped: detection only needs the maps.

Here is a shapes image through ResNet-50 (random weights: shapes do not depend on them) and through the
backbone of the `tiny` configuration, the one we train on a CPU (ResNet-18 layout with 16…128 channels
instead of 64…512):
""")

code("""
r50 = ResNet(50, norm="frozen_bn")
tiny_cfg = config.tiny(num_classes=4)
tiny_body = ResNet(tiny_cfg.depth, norm="frozen_bn", widths=tiny_cfg.stage_widths,
                   stem_channels=tiny_cfg.stem_channels)

c_r50 = r50(x)
c_tiny = tiny_body(x)
r50.free_cache(), tiny_body.free_cache()    # (a training-mode forward keeps caches for a backward)
print(f"{'':4} {'stride':>6} | {'ResNet-50 (N, C, H, W)':>24} | {'tiny (N, C, H, W)':>20}")
for k, (a, b) in enumerate(zip(c_r50, c_tiny), start=2):
    print(f"C{k:<3} {2 ** k:>6} | {str(a.shape):>24} | {str(b.shape):>20}")
    assert a.shape[-2:] == b.shape[-2:] == (IMAGE_SIZE // 2 ** k,) * 2
assert [c.shape[1] for c in c_r50] == r50.out_channels == [256, 512, 1024, 2048]
""")

md("""
On the paper's inputs (shorter side 800, longer at most 1333, padded to 800 × 1344) the same arithmetic
gives C2 = 200 × 336 and C5 = 25 × 42. Each stride-2 layer computes
$H_o = \\lfloor (H + 2p - k)/2 \\rfloor + 1$, which halves H exactly when H is even: padding every image to a
multiple of 32 (`size_divisible`) is what makes C2…C5 exact quarters, eighths, … of the input, so that the
FPN can add a 2× upsampled map to the next finer one.
""")

code("""
def stage_sizes(h, w):
    # Spatial sizes after the stem conv (7x7/2, pad 3), the max-pool (3x3/2, pad 1), then three 3x3/2 convs.
    sizes = []
    for k, p in [(7, 3), (3, 1), (3, 1), (3, 1), (3, 1)]:
        h, w = (h + 2 * p - k) // 2 + 1, (w + 2 * p - k) // 2 + 1
        sizes.append((h, w))
    return sizes[1:]  # C2..C5 (the stem conv's output is not a C level)


assert stage_sizes(IMAGE_SIZE, IMAGE_SIZE) == [c.shape[-2:] for c in c_r50]
print("800 x 1344 ->", stage_sizes(800, 1344))
""")

md("""
### Receptive fields

A unit of Ck "sees" a square of the image, its **receptive field**. Walking the layers in order, a k×k layer
widens it by $(k-1)\\,j$ where $j$ is the product of the strides so far (the *jump* between neighbouring
units, in image pixels), and a stride-s layer multiplies $j$ by s. Only the main path of each block matters:
the shortcut's 1×1 convolutions see less. The code below walks the modules of a ResNet in order:
""")

code("""
def receptive_fields(body):
    # (stride, receptive field) of C2..C5 along the main path: stem conv, max-pool, then each block's convs.
    rf, jump = 1, 1

    def layer(k, s):
        nonlocal rf, jump
        rf += (k - 1) * jump
        jump *= s

    layer(body.conv1.weight.shape[-1], body.conv1.stride)
    layer(body.maxpool.kernel_size, body.maxpool.stride)
    out = []
    for stage in body.stages():
        for block in stage:
            for conv in (block.conv1, block.conv2, getattr(block, "conv3", None)):
                if conv is not None:
                    layer(conv.weight.shape[-1], conv.stride)
        out.append((jump, rf))
    return out


rf_r50, rf_tiny = receptive_fields(r50), receptive_fields(tiny_body)
for k, ((s, a), (_, b)) in enumerate(zip(rf_r50, rf_tiny), start=2):
    print(f"C{k}: stride {s:2d}   receptive field: ResNet-50 {a:3d} px, ResNet-18 / tiny {b:3d} px")
assert [r for _, r in rf_r50] == [35, 91, 267, 427]
""")

md("""
A C5 unit of ResNet-50 sees 427 × 427 pixels, more than half of an 800-pixel image; a C2 unit sees 35 × 35.
That is the dilemma the FPN solves: the fine maps know *where*, the coarse maps know *what*.

The receptive field is also what the backward pass says: the gradient of one unit with respect to the
image is zero outside its receptive field. Take ResNet-18 (tiny widths) on a 224 × 224 image, set
`dout` to 1 at the centre unit of one level and 0 elsewhere, and run `backward`. Frozen BN is used here
because it is a per-pixel affine map; section 3 explains why trainable BN would spread the gradient over
the whole image.
""")

code("""
nn.init.manual_seed(SEED)
probe = ResNet(18, norm="frozen_bn", widths=(8, 8, 8, 8), stem_channels=8)
x_probe = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
for ax, k in zip(axes, (2, 3, 4)):
    feats = probe(x_probe)
    grads = [np.zeros_like(f) for f in feats]
    u = feats[k - 2].shape[-1] // 2                        # the centre unit of Ck ...
    c = int(feats[k - 2][0, :, u, u].argmax())             # ... in its most active channel (not cut by a ReLU)
    grads[k - 2][0, c, u, u] = 1.0
    g = np.abs(probe.backward(grads)).sum(axis=(0, 1))     # (224, 224): |d Ck[0, c, u, u] / d image|
    stride, rf = rf_tiny[k - 2]
    lo, hi = u * stride - (rf - 1) // 2, u * stride + (rf - 1) // 2   # the receptive field, in pixels
    ys, xs = np.nonzero(g)
    assert lo <= ys.min() and ys.max() <= hi and lo <= xs.min() and xs.max() <= hi   # nothing outside
    ax.imshow(np.log10(g + 1e-12), cmap="magma", vmin=np.log10(g.max()) - 6)
    ax.add_patch(Rectangle((lo - 0.5, lo - 0.5), rf, rf, fill=False, ec="c", lw=1.5, ls="--"))
    ax.set_title(f"C{k}: support {ys.max() - ys.min() + 1} px, computed {rf} px", fontsize=9)
    ax.set_xlim(-0.5, 223.5), ax.set_ylim(223.5, -0.5), ax.set_axis_off()
fig.suptitle("log10 |gradient of one centre unit| over a 224 px input (dashed: computed receptive field)")
fig.tight_layout()
plt.show()
""")

md("""
The support matches the computed square (the max-pool sends each gradient to one pixel of its window, so
the measured support can be a pixel or two smaller). Most of the gradient, though, sits near the centre:
the *effective* receptive field (Luo et al., 2016) is much smaller than the theoretical one, roughly a
Gaussian blob, because there are many more paths through the centre pixels than through the border ones.

## 2. Basic block and bottleneck block

Both blocks compute `relu(F(x) + shortcut(x))`. The shortcut is the identity, or a 1×1 convolution (plus
norm) where the block changes the resolution or the width. ResNet-18/34 use the **basic block**, two 3×3
convolutions. ResNet-50/101/152 use the **bottleneck**: a 1×1 convolution reduces the width 4×, the 3×3
runs on the narrow tensor, a second 1×1 expands again. Like torchvision ("ResNet v1.5"), we put the stride
on the 3×3 convolution, not on the first 1×1 (which would skip three quarters of the pixels).
""")

code("""
def draw_block(ax, title, layers, shortcut):
    # layers: box labels, bottom to top; the shortcut runs up the right-hand side into the "+".
    top = 0.2 + 1.3 * len(layers)                           # height of the "+"
    ax.set_xlim(0, 10), ax.set_ylim(-1.1, top + 1.3), ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    ax.text(4, -0.9, "x", ha="center", fontsize=11)
    arrow = dict(arrowstyle="->", lw=1)
    y = 0.2
    for text in layers:
        ax.annotate("", (4, y), (4, y - 0.6), arrowprops=arrow)
        ax.add_patch(Rectangle((1.4, y), 5.2, 0.7, fc="#cfe2f3", ec="k"))
        ax.text(4, y + 0.35, text, ha="center", va="center", fontsize=8.5)
        y += 1.3
    ax.annotate("", (4, top - 0.25), (4, y - 0.6), arrowprops=arrow)
    ax.add_patch(plt.Circle((4, top), 0.25, fc="w", ec="k"))
    ax.text(4, top, "+", ha="center", va="center", fontsize=11)
    ax.plot([4, 8.2, 8.2], [-0.4, -0.4, top], color="tab:red", lw=1.2)          # the shortcut
    ax.annotate("", (4.25, top), (8.2, top), arrowprops=dict(arrowstyle="->", color="tab:red", lw=1.2))
    ax.text(8.5, top / 2, shortcut, ha="left", va="center", color="tab:red", fontsize=8, rotation=90)
    ax.annotate("relu", (4, top + 1.0), (4, top + 0.25), ha="center", arrowprops=arrow, fontsize=9)


fig, axes = plt.subplots(1, 2, figsize=(8, 4.4))
draw_block(axes[0], "basic block (ResNet-18/34), 64-d",
           ["3×3 conv, 64", "norm, relu", "3×3 conv, 64", "norm"], "identity")
draw_block(axes[1], "bottleneck (ResNet-50/101), 256-d",
           ["1×1 conv, 64  (reduce)", "norm, relu", "3×3 conv, 64  (stride here)", "norm, relu",
            "1×1 conv, 256  (expand)", "norm"], "identity, or 1×1 conv + norm")
fig.tight_layout()
plt.show()
print(r50.layer2[0])
""")

md("""
Why the bottleneck? At the same cost the network gets deeper and wider. A bottleneck on 256 channels has
about as many weights as a basic block on 64 channels, and 17 times fewer than a basic block on 256:
""")

code("""
def block_weights(block):
    return block.num_parameters() - sum(p.size for n, p in block.named_parameters() if "bn" in n)


basic64, basic256 = BasicBlock(64, 64, norm="bn"), BasicBlock(256, 256, norm="bn")
bottleneck = Bottleneck(256, 64, norm="bn")
for name, b in [("basic, 64-d", basic64), ("basic, 256-d", basic256), ("bottleneck, 256-d", bottleneck)]:
    print(f"{name:18s}: {block_weights(b):9,d} conv weights")
assert block_weights(bottleneck) == 256 * 64 + 9 * 64 * 64 + 64 * 256 == 69632
assert block_weights(basic256) == 2 * 9 * 256 * 256
""")

md("""
## 3. Frozen BN, BN and GN

In training mode a **batch norm** layer normalises each channel with the mean and variance of the current
batch, over all images and pixels: $y = \\gamma\\,(x - \\mu_B)/\\sqrt{\\sigma_B^2 + \\epsilon} + \\beta$. That
works with 32+ images per batch. Detection trains on large images, **2 per GPU** (paper §3.1), and the batch
statistics become noisy; worse, every image's output depends on the other image in the batch. Wu & He
(*Group Normalization*) report BN's ImageNet error rising by more than 10 points as the batch shrinks from 32
to 2 images per GPU.

The standard remedy for an ImageNet-pretrained backbone (Detectron's `AffineChannel`, torchvision's
`FrozenBatchNorm2d`, and our `frozen_bn`) is to **freeze** BN: keep the pretrained running statistics and
affine parameters fixed, so each BN becomes a fixed per-channel affine map
$y = x\\cdot s + t$ with $s = \\gamma/\\sqrt{\\sigma^2_{run}+\\epsilon}$ and $t = \\beta - \\mu_{run}\\, s$.
Nothing is learned and nothing depends on the batch.

Let us measure the noise. A 7×7/2 convolution (the stem's shape) with random weights runs over
`NUM_IMAGES` shapes images; each channel's mean over *all* images stands in for the running mean, and each
dot is the batch mean of one random batch of 2 images (left) or 8 (right):
""")

code("""
images = [draw_shapes_image(np.random.default_rng(SEED + 1000 + i), IMAGE_SIZE)[0] for i in range(NUM_IMAGES)]
xs, _, _ = preprocess_batch(images, IMAGE_SIZE, IMAGE_SIZE)
nn.init.manual_seed(SEED)
stem = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
h = stem(xs)                                   # (NUM_IMAGES, 8, 64, 64)
stem.free_cache()
population_mean = h.mean(axis=(0, 2, 3))       # plays the running mean

fig, axes = plt.subplots(1, 2, figsize=(9, 3), sharey=True)
spread = {}
for ax, n in zip(axes, (2, 8)):
    batch_means = np.stack([h[rng.choice(NUM_IMAGES, n, replace=False)].mean(axis=(0, 2, 3)) for _ in range(40)])
    for c in range(h.shape[1]):
        ax.plot(np.full(40, c) + rng.uniform(-0.2, 0.2, 40), batch_means[:, c], ".", ms=3, color="tab:blue")
        ax.plot([c - 0.35, c + 0.35], [population_mean[c]] * 2, "k-", lw=2)
    spread[n] = float((batch_means - population_mean).std())
    ax.set_title(f"batch means, {n} images per batch (std {spread[n]:.3f})")
    ax.set_xlabel("channel")
axes[0].set_ylabel("mean activation")
fig.tight_layout()
plt.show()
assert spread[2] > spread[8]
""")

md("""
With 2 images the normaliser itself jumps around from step to step. Now the second problem: in training
mode, the output for image A depends on which image it is paired with. Frozen BN (an affine map) and
**group norm** (statistics per image over groups of channels, Wu & He 2018) do not have this problem:
""")

code("""
C = h.shape[1]
gamma, beta = np.ones(C, np.float32), np.zeros(C, np.float32)
running_mean, running_var = population_mean, h.var(axis=(0, 2, 3))
A, B, D = h[0:1], h[1:2], h[2:3]


def outputs_for_A(partner):
    batch = np.concatenate([A, partner])
    bn = F.batch_norm_forward(batch, gamma, beta, training=True)[0][0]
    frozen = F.frozen_batch_norm_forward(batch, gamma, beta, running_mean, running_var)[0][0]
    gn = F.group_norm_forward(batch, gamma, beta, num_groups=4)[0][0]
    return bn, frozen, gn


(bn_b, fr_b, gn_b), (bn_d, fr_d, gn_d) = outputs_for_A(B), outputs_for_A(D)
print(f"image A's output, paired with B vs with D: max difference  BN {np.abs(bn_b - bn_d).max():.3f}   "
      f"frozen BN {np.abs(fr_b - fr_d).max():.3f}   GN {np.abs(gn_b - gn_d).max():.3f}")
assert np.abs(bn_b - bn_d).max() > 0.05
assert np.array_equal(fr_b, fr_d) and np.array_equal(gn_b, gn_d)
""")

md("""
Frozen BN is exactly BN in evaluation mode, written as one multiply-add per channel. Its backward is
`dout * s` (no batch coupling, no parameter gradients): the library's pair is two lines each.
""")

code("""
print(inspect.getsource(F.frozen_batch_norm_forward))
out_frozen, scale = F.frozen_batch_norm_forward(h, gamma, beta, running_mean, running_var)
out_eval, _ = F.batch_norm_forward(h, gamma, beta, running_mean.copy(), running_var.copy(), training=False)
assert np.allclose(out_frozen, out_eval, atol=1e-5)
shift = -running_mean * scale.ravel()
assert np.allclose(out_frozen, h * scale + shift.reshape(1, -1, 1, 1), atol=1e-5)
print("per-channel scale s:", scale.ravel(), "\\nper-channel shift t:", shift)
# FrozenBatchNorm2d keeps its four vectors as buffers: in the state_dict, but not parameters.
fbn = nn.FrozenBatchNorm2d(C)
print("FrozenBatchNorm2d: parameters", fbn.num_parameters(), " state_dict keys", list(fbn.state_dict()))
""")

md("""
A consequence of BN's batch coupling, visible in the backward pass: in training mode every output pixel
depends on every input pixel of the batch (through $\\mu_B$ and $\\sigma_B$), so the gradient of one unit
reaches the whole image, receptive field or not. With frozen BN it stays inside:
""")

code("""
support = {}
for norm in ("frozen_bn", "bn"):
    nn.init.manual_seed(SEED)
    net = ResNet(18, norm=norm, widths=(8, 8, 8, 8), stem_channels=8)
    feats = net(x_probe)
    grads = [np.zeros_like(f) for f in feats]
    grads[0][0, int(feats[0][0, :, 28, 28].argmax()), 28, 28] = 1.0     # one active C2 unit near the centre
    g = np.abs(net.backward(grads)).sum(axis=(0, 1))
    support[norm] = float((g > 0).mean())
    print(f"{norm:9s}: the gradient of one C2 unit is non-zero on {support[norm]:.1%} of the image")
assert support["frozen_bn"] < 0.05 and support["bn"] == 1.0
""")

md("""
Which one does minimaskrcnn use? The configurations that mirror torchvision (`r50_fpn`, `resnet18_fpn`)
use **frozen BN**, as torchvision does, and freeze the stem and `layer1` entirely (`frozen_stages=2`). The `tiny`
configuration is trained **from scratch** on 128-pixel images, 4 per batch: there are no pretrained statistics
to freeze, so it uses trainable BN (`norm='bn'`); `norm='gn'` is the choice of Detectron's
"GN from scratch" baselines and is independent of the batch.

## 4. The Feature Pyramid Network

The FPN (Lin et al. 2017, Fig. 3) builds P5 from C5 and then walks **down** the pyramid: each level is the
coarser level upsampled 2× (nearest neighbour) plus a **lateral** 1×1 projection of Ck to 256 channels.
A 3×3 convolution on each sum reduces the aliasing of the upsampling and gives Pk. P6, used only for the
largest RPN anchors, is P5 subsampled by a max-pool with kernel 1 and stride 2.

$$
\\text{inner}_5 = \\text{lat}_5(C_5),\\quad \\text{inner}_k = \\text{lat}_k(C_k) + \\text{up}_2(\\text{inner}_{k+1}),
\\quad P_k = \\text{conv}^{3\\times3}_k(\\text{inner}_k),\\quad P_6 = \\text{maxpool}_{1,2}(P_5)
$$
""")

code("""
def draw_fpn(ax):
    ys = [0, 1.6, 3.0, 4.2]                                   # C2..C5, bottom to top
    for k, y in zip(range(2, 6), ys):
        w = 2.4 / 2 ** ((k - 2) / 2)
        ax.add_patch(Rectangle((1.6 - w / 2, y), w, 0.8, fc="#d9ead3", ec="k"))
        ax.text(1.6, y + 0.4, f"C{k}\\nstride {2 ** k}", ha="center", va="center", fontsize=8)
        ax.add_patch(Rectangle((6.6 - w / 2, y), w, 0.8, fc="#cfe2f3", ec="k"))
        ax.text(6.6, y + 0.4, f"P{k}\\n256 ch", ha="center", va="center", fontsize=8)
        ax.annotate("", (6.6 - w / 2 - 0.6, y + 0.4), (1.6 + w / 2, y + 0.4),
                    arrowprops=dict(arrowstyle="->", color="tab:green"))
        ax.text(3.6, y + 0.5, "1×1", color="tab:green", fontsize=8)
        ax.text(6.6 - w / 2 - 0.45, y + 0.4, "+", fontsize=12, va="center", ha="center")
        ax.text(6.6 - w / 2 - 0.35, y + 0.75, "3×3", fontsize=7, color="tab:purple")
    for y_hi, y_lo in zip(ys[:0:-1], ys[-2::-1]):
        ax.annotate("", (8.6, y_lo + 0.5), (8.6, y_hi + 0.3),
                    arrowprops=dict(arrowstyle="->", color="tab:red", connectionstyle="arc3,rad=-0.3"))
        ax.text(9.05, (y_lo + y_hi) / 2 + 0.4, "2× up", color="tab:red", fontsize=8)
    ax.add_patch(Rectangle((6.3, 5.4), 0.6, 0.5, fc="#cfe2f3", ec="k"))
    ax.text(6.6, 5.65, "P6", ha="center", va="center", fontsize=8)
    ax.annotate("", (6.6, 5.4), (6.6, 5.0), arrowprops=dict(arrowstyle="<-"))
    ax.text(7.0, 5.15, "max-pool 1, stride 2", fontsize=8)
    ax.set_xlim(0, 10.5), ax.set_ylim(-0.3, 6.1), ax.set_axis_off()


fig, ax = plt.subplots(figsize=(6.5, 4))
draw_fpn(ax)
ax.set_title("ResNet (left, bottom-up) and FPN (right, top-down with lateral connections)")
plt.show()
""")

md("""
Here is the library's forward. `inner_blocks[k]` are the laterals, `layer_blocks[k]` the 3×3 outputs
(torchvision's names, so its weights load unchanged); the upsampling's target size is the lateral map's:
""")

code("""
print(inspect.getsource(FeaturePyramidNetwork.forward))
""")

md("""
Redo it by hand for the tiny model's FPN on the tiny ResNet's C2…C5, with the functional layers and
`np.repeat` as the nearest-neighbour upsampling, and compare:
""")

code("""
nn.init.manual_seed(SEED)
fpn = FeaturePyramidNetwork(tiny_body.out_channels, tiny_cfg.fpn_channels)
p_lib = fpn(c_tiny)
fpn.free_cache()


def conv(block, t):  # block: nn.Sequential holding one nn.Conv2d
    c = block[0]
    return F.conv2d_forward(t, c.weight.data, c.bias.data, c.stride, c.padding)[0]


inner = [None] * 4
inner[3] = conv(fpn.inner_blocks[3], c_tiny[3])
for k in (2, 1, 0):
    inner[k] = conv(fpn.inner_blocks[k], c_tiny[k]) + inner[k + 1].repeat(2, axis=2).repeat(2, axis=3)
p_hand = [conv(fpn.layer_blocks[k], inner[k]) for k in range(4)]
p_hand.append(p_hand[3][:, :, ::2, ::2])          # max-pool with a 1x1 window and stride 2 = subsampling
for k, (a, b) in enumerate(zip(p_lib, p_hand), start=2):
    print(f"P{k}: {str(a.shape):18s} max |library - by hand| = {np.abs(a - b).max():.1e}")
    assert a.shape == b.shape and np.allclose(a, b, atol=1e-5)
""")

md("""
### What the levels look like

P2…P6 of the tiny model's backbone (untrained) on our shapes image. The first column is the mean absolute
activation over all 64 channels, then come the 6 channels that vary most over the image, each scaled to its
own range. The model runs in evaluation mode, so BN uses its running statistics, which start as the identity
(mean 0, variance 1). Even random filters respond to the shapes and to the background gradient: the maps are
functions of the image. The coarse levels see more of the image per pixel, with fewer pixels; after
training, their channels become detectors of whole objects (notebook 03 trains the RPN on these maps).
""")

code("""
nn.init.manual_seed(SEED)
tiny_model = build_model(tiny_cfg).eval()
levels = tiny_model.backbone(x)
n_show = 6
fig, axes = plt.subplots(len(levels), n_show + 2, figsize=(1.3 * (n_show + 2), 1.35 * len(levels)))
for row, (k, f) in enumerate(zip(range(2, 7), levels)):
    f = f[0]                                                       # (64, H_k, W_k)
    busiest = np.argsort(-f.reshape(len(f), -1).std(axis=1))[:n_show]
    axes[row, 0].imshow(image)
    axes[row, 0].set_ylabel(f"P{k}\\n{f.shape[1]}×{f.shape[2]}", rotation=0, labelpad=22, va="center")
    axes[row, 1].imshow(np.abs(f).mean(axis=0), cmap="magma", interpolation="nearest")
    for col, ch in enumerate(busiest):
        axes[row, col + 2].imshow(f[ch], cmap="viridis", interpolation="nearest")
        axes[row, col + 2].set_title(f"ch {ch}", fontsize=7, pad=2)
    for ax in axes[row]:
        ax.set_xticks([]), ax.set_yticks([])
axes[0, 1].set_title("mean |P|", fontsize=8)
fig.tight_layout()
plt.show()
assert [f.shape[1:] for f in levels] == [(64, 32, 32), (64, 16, 16), (64, 8, 8), (64, 4, 4), (64, 2, 2)]
tiny_model.train()
""")

md("""
### The backward pass

Backward runs the same graph in reverse. The 3×3 output convolutions come first; then the top-down path is
walked from fine to coarse: `inner_{k+1}` reached `P_k` through the upsampling, so it also receives the
**adjoint of the upsampling**, which sums each 2×2 block of the finer gradient. P6's gradient goes back
through the max-pool into the even pixels of P5.
""")

code("""
print(inspect.getsource(FeaturePyramidNetwork.backward))
g_fine = rng.standard_normal((1, 2, 8, 8))
up, cache = upsample_nearest_forward(rng.standard_normal((1, 2, 4, 4)), size=(8, 8))
summed = upsample_nearest_backward(g_fine, cache)
assert np.allclose(summed, g_fine.reshape(1, 2, 4, 2, 4, 2).sum(axis=(3, 5)))   # each 2x2 block, summed
""")

md("""
Now check it numerically, in float64 (notebook 01, section 3), on the FPN alone with random C2…C5: the
gradients for the inputs entry by entry on a sample of 20 entries per level, and those for all the
parameters along one random direction (`check_directional`). The FPN has no ReLU and its max-pool has a
1×1 window, so there is no kink anywhere: the loss is linear in C2…C5, and a polynomial of degree 2 in the
weights (a lateral's times an output conv's), for which central differences are exact up to round-off.
""")

code("""
nn.init.manual_seed(SEED)
fpn64 = FeaturePyramidNetwork([4, 4, 8, 8], 6, dtype="float64")
cs = [rng.standard_normal((2, c, 64 // s, 64 // s)) for c, s in zip([4, 4, 8, 8], [4, 8, 16, 32])]
douts = [rng.standard_normal(p.shape) for p in fpn64(cs)]
fpn64.free_cache()


def fpn_loss():
    out = fpn64(cs)
    fpn64.free_cache()
    return float(sum(np.sum(o * d) for o, d in zip(out, douts)))


fpn64.zero_grad()
fpn64(cs)
d_cs = fpn64.backward(douts)
errors = {}
for k, (c, dc) in enumerate(zip(cs, d_cs), start=2):
    errors[f"dC{k} (20 entries)"] = check_gradient(lambda _: fpn_loss(), c, dc, max_checks=20, seed=k)
params = {n: p.data for n, p in fpn64.named_parameters()}
errors["FPN parameters (directional)"] = check_directional(fpn_loss, params,
                                                           {n: p.grad for n, p in fpn64.named_parameters()})

for name, e in errors.items():
    print(f"{name:30s} relative error {e:.1e}")
assert all(e < 1e-7 for e in errors.values())
""")

md("""
Then the whole backbone: a narrow ResNet-18 with trainable BN, and the FPN, on two 64 px images (so that C5
is 2 × 2 and BN's batch statistics are not degenerate), along one random direction through all its parameter
arrays at once. Watch the step `h`. The direction moves every weight at the same time, and the network has
about 20,000 ReLU units and 2,000 max-pool windows: a step of 1e-5 is likely to push a few of their inputs
across a kink (notebook 01), and the check then measures the kink, not the gradient. So we try three steps.
A wrong backward pass is wrong at every `h`; a kink only spoils the steps large enough to reach it, and the
smaller steps still agree to 1e-7 (round-off, about $10^{-16}|L|/h$, stays far below that).
""")

code("""
nn.init.manual_seed(SEED)
body64 = ResNet(18, norm="bn", widths=(4, 4, 8, 8), stem_channels=4, dtype="float64")
bb64 = BackboneWithFPN(body64, FeaturePyramidNetwork(body64.out_channels, 6, dtype="float64"))
rng_bb = np.random.default_rng(SEED)
x64 = rng_bb.standard_normal((2, 3, 64, 64))
douts = [rng_bb.standard_normal(p.shape) for p in bb64(x64)]
bb64.free_cache()


def backbone_loss():
    out = bb64(x64)
    bb64.free_cache()
    return float(sum(np.sum(o * d) for o, d in zip(out, douts)))


bb64.zero_grad()
bb64(x64)
bb64.backward(douts)
params = {n: p.data for n, p in bb64.named_parameters()}
grads = {n: p.grad for n, p in bb64.named_parameters()}
by_h = {h: check_directional(backbone_loss, params, grads, h=h) for h in (1e-5, 1e-6, 1e-7)}
for h, e in by_h.items():
    print(f"ResNet-18 + FPN, all {len(params)} parameter arrays, h = {h:.0e}: relative error {e:.1e}")
assert min(by_h.values()) < 1e-7
""")

md("""
## 5. Counting parameters: ResNet-50-FPN Mask R-CNN

The ResNet-50-FPN of the paper's Table 2a and 2e (`config.r50_fpn`; Table 3's box results are for ResNet-101-FPN
and ResNeXt-101-FPN only), built with random weights (a second or so; we do not
run it here). Its parameter names and shapes are torchvision's `maskrcnn_resnet50_fpn`, so the count must be
torchvision's too: **44,401,393**.
""")

code("""
model = build_model(config.r50_fpn(num_classes=91))
body = model.backbone.body
parts = [("stem (conv1)", body.conv1), ("layer1 -> C2", body.layer1), ("layer2 -> C3", body.layer2),
         ("layer3 -> C4", body.layer3), ("layer4 -> C5", body.layer4), ("FPN", model.backbone.fpn),
         ("RPN head", model.rpn.head), ("box head (2 fc)", model.roi_heads.box_head),
         ("box predictor", model.roi_heads.box_predictor), ("mask head (4 convs)", model.roi_heads.mask_head),
         ("mask predictor", model.roi_heads.mask_predictor)]
total = model.num_parameters()
print(f"{'part':22s} {'parameters':>12} {'share':>7}  trainable")
for name, m in parts:
    n = m.num_parameters()
    print(f"{name:22s} {n:12,d} {n / total:7.1%}  {'yes' if m.num_parameters(trainable_only=True) else 'frozen'}")
print(f"{'total':22s} {total:12,d}   (torchvision: 44,401,393)")
print(f"{'trainable':22s} {model.num_parameters(trainable_only=True):12,d}")
assert sum(m.num_parameters() for _, m in parts) == total == 44_401_393
""")

md("""
Some sanity checks on these numbers:

* The ResNet-50 body has 23.45 M parameters here. torchvision's classification ResNet-50 has 25,557,032: add
  the BN layers' 53,120 affine parameters (frozen BN keeps them as buffers) and the 2048 × 1000 + 1000
  classifier we dropped.
* `layer4` (C5) holds 64% of the ResNet's parameters, but runs on 1/64 of C2's pixels: parameters and
  compute live in different places.
* The box head's first fully connected layer (256·7·7 → 1024) alone has 12.8 M parameters, more than
  layer1…layer3 together (8.5 M).
* Freezing the stem and `layer1` (`frozen_stages=2`, torchvision's `trainable_layers=3`) removes 222,400
  parameters from training, and most of the backward pass's cost at the highest resolution.
""")

code("""
fc = 2048 * 1000 + 1000
bn_affine = sum(2 * m.weight.shape[0] for _, m in body.named_modules() if isinstance(m, nn.FrozenBatchNorm2d))
print(f"body {body.num_parameters():,d} + BN affine {bn_affine:,d} + classifier {fc:,d} = "
      f"{body.num_parameters() + bn_affine + fc:,d}")
assert body.num_parameters() + bn_affine + fc == 25_557_032
assert model.roi_heads.box_head.num_parameters() > body.layer1.num_parameters() + body.layer2.num_parameters() \\
    + body.layer3.num_parameters()
assert total - model.num_parameters(trainable_only=True) == body.conv1.num_parameters() + \\
    body.layer1.num_parameters() == 222_400

tiny_total = tiny_model.num_parameters()
print(f"tiny configuration: {tiny_total:,d} parameters ({tiny_total / total:.1%} of ResNet-50-FPN)")
del model
""")

md("""
## Summary

* A ResNet is a stem and four stages; their outputs C2…C5 have strides 4, 8, 16, 32 and, in ResNet-50,
  256…2048 channels. Padding the input to a multiple of 32 makes every level an exact fraction of it.
* Receptive fields grow by $(k-1)\\cdot$stride-so-far per layer: 35 px for C2, 427 px for C5 of ResNet-50.
  The backward pass shows it: one unit's gradient vanishes outside its receptive field.
* The bottleneck block (1×1 reduce, 3×3, 1×1 expand) makes deep networks affordable; the stride sits on the
  3×3 ("v1.5").
* With 2 images per batch, BN's batch statistics are noisy and couple the images. A pretrained backbone
  freezes BN into a per-channel affine map; models trained from scratch use BN with larger batches or GN.
* The FPN adds the 2× upsampled coarser level to a 1×1 lateral projection of each Ck, smooths the sum with a
  3×3 conv, and subsamples P5 into P6. Its backward sums 2×2 blocks of the finer gradient into the coarser
  level; our implementation agrees with central differences to better than 1e-7.
* ResNet-50-FPN Mask R-CNN has 44,401,393 parameters, as torchvision's; the backbone body holds about half.

## Exercises

1. **ResNeXt.** Build `ResNet(50, groups=32, width_per_group=4)` (ResNeXt-50 32×4d) and compare its stage
   shapes, receptive fields and parameter count with ResNet-50. Where does the grouped 3×3 save weights?
2. **Image sizes that are not multiples of 32.** Feed a 100 × 150 input through `tiny_model.backbone`. What
   are the shapes of C2…C5? Why does `FeaturePyramidNetwork.forward` upsample to the lateral's *size* rather
   than by a factor of 2? When 4 rows are upsampled to 7, which coarse rows are copied once instead of twice,
   and what does that do to the alignment between a P level and the image?
3. **The top-down path and receptive fields.** Repeat the gradient experiment of section 1 for one unit of
   P2 of a frozen-BN backbone with an FPN. How large is its receptive field? Then cut the top-down path (zero the
   lateral 1×1 weights and biases of C3…C5) and measure again.
4. **Batch-statistics noise.** Plot the spread of the batch means of section 3 against the batch size (1, 2,
   4, 8, 16). Which power law do you expect, and why does a batch of 2 *large* images not help as much as
   the pixel count suggests?
5. **Frozen BN as a convolution.** Fold a frozen BN into the preceding convolution (scale the weights, add a
   bias) and check that `conv + frozen BN` and the folded conv give the same output. Why is this folding
   valid for frozen BN but not for BN in training mode?
""")


md(r"""
### Answer key

A worked solution of the exercises (a release for students replaces it by a stub: try them first).
""")

code(r"""
### BEGIN SOLUTION
# 1. ResNeXt-50 32x4d: same stages, strides and receptive fields (same kernels, same strides), fewer weights.
#    Its bottleneck is twice as wide (128 in layer1 vs 64), but the 3x3 is split into 32 groups of 4
#    channels: 9 * 128 * 128 / 32 = 4,608 weights instead of 9 * 64 * 64 = 36,864 in ResNet-50's 3x3.
rx50 = ResNet(50, groups=32, width_per_group=4, norm="frozen_bn")
c_rx = rx50(x)
rx50.free_cache()
assert [c.shape for c in c_rx] == [c.shape for c in c_r50]
assert receptive_fields(rx50) == rf_r50
print(f"1. parameters: ResNet-50 body {r50.num_parameters():,d}, ResNeXt-50 32x4d body {rx50.num_parameters():,d}")
for name, net in (("ResNet-50", r50), ("ResNeXt-50", rx50)):
    conv2 = net.layer1[0].conv2
    print(f"   {name}: layer1's 3x3 conv {tuple(conv2.weight.shape)}, groups {conv2.groups}, "
          f"{conv2.weight.size:,d} weights")
assert rx50.layer1[0].conv2.weight.size == 4608 and rx50.num_parameters() < r50.num_parameters()

# 2. 100 x 150: every stride-2 layer rounds up, (H + 2p - k) // 2 + 1, so C2..C5 are ceil(H / 2^k).
x_odd = rng.standard_normal((1, 3, 100, 150)).astype(np.float32)
c_odd = tiny_model.backbone.body(x_odd)
p_odd = tiny_model.backbone.fpn(c_odd)
tiny_model.backbone.free_cache()
print("2. C2..C5:", [c.shape[-2:] for c in c_odd], " P2..P6:", [p.shape[-2:] for p in p_odd])
assert [c.shape[-2:] for c in c_odd] == stage_sizes(100, 150) == [(25, 38), (13, 19), (7, 10), (4, 5)]
#    C4 has 7 rows, C5 4: a factor of 2 would give 8 rows, which cannot be added to 7. So the FPN upsamples to
#    the lateral's size. Nearest neighbour reads coarse row floor(i * 4 / 7) for fine row i: 0,0,1,1,2,2,3,
#    exactly floor(i / 2), i.e. "2x, then drop the last row". Only the last coarse row is copied once.
rows = upsample_nearest_forward(np.arange(4.0).reshape(1, 1, 4, 1), size=(7, 1))[0][0, 0, :, 0]
print("   fine rows 0..6 read coarse rows", rows.astype(int))
assert np.array_equal(rows, np.arange(7) // 2)
#    So the alignment is kept: coarse unit r still sits over fine units 2r and 2r+1, every level keeps its
#    stride 2^k; the last coarse row just hangs half off the end (it was computed on padding). In the model
#    preprocess pads to a multiple of 32 anyway, where the sizes are exact halves.

# 3. One P2 unit of a frozen-BN ResNet-18 + FPN sees through C5 (the top-down path), so its receptive field
#    is C5's plus the upsampling and the 3x3: here larger than the 224 px image. With the laterals of
#    C3..C5 zeroed, only C2's path is left: C2's receptive field + 2 * 4 px (the 3x3 at stride 4).
nn.init.manual_seed(SEED)
probe_body = ResNet(18, norm="frozen_bn", widths=(8, 8, 8, 8), stem_channels=8)
probe_fpn = BackboneWithFPN(probe_body, FeaturePyramidNetwork(probe_body.out_channels, 8))


def p2_support():
    p = probe_fpn(x_probe)
    grads = [np.zeros_like(f) for f in p]
    u = p[0].shape[-1] // 2
    grads[0][0, int(np.abs(p[0][0, :, u, u]).argmax()), u, u] = 1.0
    g = np.abs(probe_fpn.backward(grads)).sum(axis=(0, 1))
    ys, xs = np.nonzero(g)
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


full_support = p2_support()
for block in probe_fpn.fpn.inner_blocks[1:]:                     # the laterals of C3, C4, C5
    block[0].weight.data[...] = 0
    block[0].bias.data[...] = 0
cut_support = p2_support()
rf_c2 = receptive_fields(probe_body)[0][1]
rf_c5 = receptive_fields(probe_body)[3][1]
print(f"3. P2 unit: support {full_support} px with the top-down path (C5's receptive field alone is {rf_c5} px),"
      f" {cut_support} px without it (C2's receptive field {rf_c2} px + 8 = {rf_c2 + 8} px)")
assert max(cut_support) <= rf_c2 + 8 < min(full_support)

# 4. With independent images the std of a batch mean falls as 1/sqrt(n); drawn without replacement from
#    NUM_IMAGES images it is sigma * sqrt((N - n) / (n (N - 1))), and 0 at n = N (the whole population).
sizes_n = [1, 2, 4, 8, 16]
N = NUM_IMAGES
h_stem = stem(xs)                                  # section 3's activations (the name h was reused since)
stem.free_cache()
spread_n = [float(np.std([h_stem[rng.choice(N, n, replace=False)].mean(axis=(0, 2, 3)) - population_mean
                          for _ in range(200)])) for n in sizes_n]
predicted = [spread_n[0] * np.sqrt((N - n) / (n * (N - 1))) for n in sizes_n]
fig, ax = plt.subplots(figsize=(4.5, 3))
ax.loglog(sizes_n[:-1], spread_n[:-1], "o-", label="measured")
ax.loglog(sizes_n[:-1], predicted[:-1], "k--", label="$\\sigma\\sqrt{(N-n)/(n(N-1))}$")
ax.set_xlabel("images per batch"), ax.set_ylabel("std of the batch mean"), ax.legend()
plt.show()
print("4. spread:", {n: round(v, 4) for n, v in zip(sizes_n, spread_n)})
assert all(a > b for a, b in zip(spread_n, spread_n[1:])) and spread_n[-1] < 1e-5
#    Pixels of one image are strongly correlated (one background gradient, a few objects): the noise is in the
#    image-to-image differences, so the effective sample size is the number of images, not of pixels. Using a
#    quarter of each map (32 x 32 of 64 x 64 pixels) barely changes the spread, where independent pixels
#    would double it:
quarter = float(np.std([h_stem[rng.choice(N, 2, replace=False)][:, :, :32, :32].mean(axis=(0, 2, 3))
                        - h_stem[:, :, :32, :32].mean(axis=(0, 2, 3)) for _ in range(200)]))
print(f"   2 images, all pixels: {spread_n[1]:.4f}; 2 images, a quarter of the pixels: {quarter:.4f}")
assert quarter < 1.6 * spread_n[1]

# 5. Frozen BN is y = s * conv(x) + t per output channel, so it folds into the convolution:
#    w' = w * s (each output channel's filter scaled), b' = t (+ s * b if the conv had a bias).
r_mean, r_var = rng.standard_normal(8).astype(np.float32), rng.uniform(0.5, 2, 8).astype(np.float32)
g5, b5 = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
conv_out = F.conv2d_forward(xs[:2], stem.weight.data, None, 2, 3)[0]
two_layers = F.frozen_batch_norm_forward(conv_out, g5, b5, r_mean, r_var)[0]
s5 = g5 / np.sqrt(r_var + 1e-5)
folded = F.conv2d_forward(xs[:2], stem.weight.data * s5[:, None, None, None], b5 - r_mean * s5, 2, 3)[0]
print(f"5. conv + frozen BN vs folded conv: max difference {np.abs(two_layers - folded).max():.1e}")
assert np.allclose(two_layers, folded, atol=1e-4)
#    In training mode mu_B and sigma_B are functions of the current batch, not constants: no fixed w', b'
#    reproduces them for every batch (and the backward would miss the gradient through mu_B and sigma_B).
### END SOLUTION
""")


if __name__ == "__main__":
    NB.write()
