"""Build notebooks/01_layers_and_gradients.ipynb (without outputs) from the cells below.

    python tools/make_notebook_01.py
"""
from notebook_builder import NotebookBuilder

NB = NotebookBuilder("01_layers_and_gradients.ipynb")
md, code = NB.md, NB.code


md(r"""
# 01 · Layers and their gradients

Mask R-CNN is, underneath, about 70 convolutions (with a ResNet-50-FPN backbone), two max-pools, a few fully
connected layers and three losses. In minimaskrcnn every one of them is a pair of plain NumPy functions,
`*_forward` and `*_backward`, with no autograd anywhere. This chapter opens up the most important pair, the
convolution, and the tool that tells us whether any backward pass is right, the **gradient check**.

**What you will learn**

1. Convolution as **im2col + one matrix product**, drawn on a 4×4 image; how stride, padding, dilation and
   groups change the picture; what it costs in memory.
2. The **forward/backward pair** (CS231n style): what the cache keeps, and why the backward is two more
   matrix products plus `col2im`, the adjoint of `im2col`.
3. **Gradient checking** with central differences: why in float64, how to choose the step `h`, what a
   relative error of 1e-7 means, and how kinks (ReLU at 0, max-pool ties) fool the check.
4. A **tiny CNN** built from `minimaskrcnn.nn` that memorises a batch of striped images with SGD.

**Read alongside**
- CS231n notes, *Convolutional Networks*, section "Implementation as Matrix Multiplication"
  (https://cs231n.github.io/convolutional-networks/), and *Neural Networks 3*, "Gradient checks"
  (https://cs231n.github.io/neural-networks-3/#gradcheck).
- K. Chellapilla, S. Puri, P. Simard, *High Performance Convolutional Neural Networks for Document
  Processing* (2006): convolution "unfolded" into a matrix product.
- V. Dumoulin, F. Visin, *A guide to convolution arithmetic for deep learning* (arXiv:1603.07285): stride,
  padding, dilation and transposed convolution, with pictures.
- He, Gkioxari, Dollár, Girshick, *Mask R-CNN* (ICCV 2017), §3: the backbone, heads and losses built from
  these layers.
""")

md(r"""
## Setup

The parameter cell below is all you need to change to play: a different seed, a longer training run.
""")

code(r"""
# Parameters (defaults keep the notebook well under a minute on a laptop CPU)
SEED = 0
TRAIN_STEPS = 60        # SGD steps for the tiny CNN of section 4
NUM_IMAGES = 16         # images in the batch it memorises
""")

code(r"""
import importlib.util
import inspect
import os
import sys

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

if importlib.util.find_spec("minimaskrcnn") is None:  # a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.abspath(".."))            # (run from notebooks/): use the repository root

from minimaskrcnn import nn
from minimaskrcnn.nn import functional as F
from minimaskrcnn.nn import reference
from minimaskrcnn.nn.conv import col2im, im2col
from minimaskrcnn.nn.gradcheck import check_directional, check_gradient, numerical_gradient, rel_error

rng = np.random.default_rng(SEED)
np.set_printoptions(precision=3, suppress=True, linewidth=110)
plt.rcParams.update({"figure.dpi": 80, "font.size": 9})
""")

md(r"""
## 1. Convolution is a matrix product in disguise

A convolution layer (strictly, a cross-correlation) slides a `kh × kw` kernel over the image:

$$\text{out}[o, u, v] = b[o] + \sum_{c,i,j} w[o, c, i, j]\; x[c,\; u s + i d,\; v s + j d]$$

(output pixel $(u, v)$, stride $s$, dilation $d$, and $x$ zero-padded by $p$ first). For each output position
the kernel meets one **receptive field**, a `C × kh × kw` block of the input. `im2col` copies every receptive
field into one column of a matrix `cols` of shape `(C·kh·kw, Ho·Wo)`. The weights, flattened to
`(C_out, C·kh·kw)`, then meet all fields at once in one matrix product, the operation BLAS libraries are best
at.

Start with the smallest interesting case: one 4×4 image holding the numbers 0…15, so you can follow every
pixel, and one 3×3 kernel. There are 2×2 positions for the kernel, so `cols` has 4 columns of 9 entries.
""")

code(r"""
x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)       # (N, C, H, W)
w = rng.integers(-2, 3, size=(1, 1, 3, 3)).astype(np.float64)  # (C_out, C_in, kh, kw)
cols = im2col(x, 3, 3)                                          # (N, C*kh*kw, Ho*Wo)
print("x:\n", x[0, 0], "\nw:\n", w[0, 0], "\ncols", cols.shape, ":\n", cols[0])
""")

md(r"""
Each column is one receptive field read row by row: column 0 is the top-left 3×3 block
(0 1 2 / 4 5 6 / 8 9 10), column 1 the block one pixel to the right, and so on. Pixels in the middle of the
image belong to all four fields, so they appear four times: im2col **copies**.
""")

code(r"""
def draw_receptive_fields(x2d, cols2d, out2d, k=3):
    # x2d: (H, W) image; cols2d: (k*k, P) its im2col matrix; w2d: (k, k); out2d: (Ho, Wo) the result.
    colors = ["tab:red", "tab:blue", "tab:green", "tab:orange"]
    Ho, Wo = out2d.shape
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), gridspec_kw={"width_ratios": [4, 4.6, 2.4]})
    ax = axes[0]
    ax.imshow(x2d, cmap="Greys", vmin=-8, vmax=24)
    for (r, c), v in np.ndenumerate(x2d):
        ax.text(c, r, f"{v:.0f}", ha="center", va="center")
    for p in range(Ho * Wo):
        oy, ox = divmod(p, Wo)
        inset = 0.07 * (p + 1)  # shrink each box a little so that overlapping borders stay visible
        ax.add_patch(Rectangle((ox - 0.5 + inset, oy - 0.5 + inset), k - 2 * inset, k - 2 * inset,
                               fill=False, lw=2, ec=colors[p]))
    ax.set_title("x (4×4) and its 4 receptive fields")
    ax.set_xticks([]), ax.set_yticks([])

    ax = axes[1]
    ax.imshow(cols2d, cmap="Greys", vmin=-8, vmax=24, aspect="auto")
    for (r, c), v in np.ndenumerate(cols2d):
        ax.text(c, r, f"{v:.0f}", ha="center", va="center")
    for p in range(cols2d.shape[1]):
        ax.add_patch(Rectangle((p - 0.45, -0.45), 0.9, cols2d.shape[0] - 0.1, fill=False, lw=2, ec=colors[p]))
    ax.set_yticks(range(k * k), [f"tap ({i},{j})" for i in range(k) for j in range(k)])
    ax.set_xticks(range(cols2d.shape[1]), [f"field {p}" for p in range(cols2d.shape[1])])
    ax.set_title("im2col(x): one column per field (9×4)")

    ax = axes[2]
    ax.imshow(np.zeros_like(out2d), cmap="Greys", vmin=0, vmax=1)
    for (r, c), v in np.ndenumerate(out2d):
        ax.text(c, r, f"{v:.0f}", ha="center", va="center", color=colors[r * Wo + c], fontweight="bold")
        ax.add_patch(Rectangle((c - 0.45, r - 0.45), 0.9, 0.9, fill=False, lw=2, ec=colors[r * Wo + c]))
    ax.set_title("(w.ravel() @ cols)\nreshaped to 2×2")
    ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    plt.show()


out_gemm = (w.reshape(1, 9) @ cols[0]).reshape(1, 1, 2, 2)   # (C_out, C*kh*kw) @ (C*kh*kw, Ho*Wo)
draw_receptive_fields(x[0, 0], cols[0], out_gemm[0, 0])
""")

md(r"""
The product gives the same numbers as the definition written as six nested loops
(`minimaskrcnn.nn.reference.conv2d_naive`, slow on purpose and easy to check by hand), and as the library's
`conv2d_forward`:
""")

code(r"""
out_loops = reference.conv2d_naive(x, w)
out_lib, _ = F.conv2d_forward(x, w)
print("W @ cols:", out_gemm.ravel(), " loops:", out_loops.ravel(), " conv2d_forward:", out_lib.ravel())
assert np.array_equal(out_gemm, out_loops) and np.array_equal(out_lib, out_loops)
""")

md(r"""
Here is the library's `im2col`. It never loops over pixels: `as_strided` builds a 6-D **view** whose axes
`(n, c, i, j, oy, ox)` address `x_padded[n, c, oy*s + i*d, ox*s + j*d]` just by choosing the byte strides, and
the final `reshape` makes the one copy.
""")

code(r"""
print(inspect.getsource(im2col))
""")

md(r"""
### Stride, padding, dilation

All three only change *which* pixels a receptive field reads, so they only change `im2col`; the matrix product
stays the same. Below, a 6×6 input (grey padding cells where `p > 0`) with a 3×3 kernel: the taps of the
first output pixel in red, of the second in blue.

- **stride** $s$ moves consecutive fields $s$ pixels apart: fewer columns (downsampling, e.g. ResNet's stride-2
  convs);
- **padding** $p$ adds zeros around the border so that fields may hang over it ("same" size for $p = (k-1)/2$);
- **dilation** $d$ spreads the taps $d$ pixels apart: a larger field with the same 9 weights
  (Yu & Koltun 2016, *Multi-scale context aggregation by dilated convolutions*).

The output size along one axis is $H_o = \lfloor (H + 2p - d(k-1) - 1)/s \rfloor + 1$.
""")

code(r"""
def draw_taps(ax, H, k, stride, padding, dilation):
    Hp = H + 2 * padding
    grid = np.zeros((Hp, Hp))
    grid[:padding], grid[Hp - padding:], grid[:, :padding], grid[:, Hp - padding:] = 1, 1, 1, 1
    ax.imshow(grid, cmap="Greys", vmin=0, vmax=3)
    Ho = F.conv_output_size(H, k, stride, padding, dilation)
    for p, color in ((0, "tab:red"), (1, "tab:blue")):
        if p >= Ho * Ho:
            continue
        oy, ox = divmod(p, Ho)
        for i in range(k):
            for j in range(k):
                y, x_ = oy * stride + i * dilation, ox * stride + j * dilation
                inset = 0.12 if p == 0 else 0.28
                ax.add_patch(Rectangle((x_ - 0.5 + inset, y - 0.5 + inset), 1 - 2 * inset, 1 - 2 * inset,
                                       color=color, alpha=0.8))
    ax.set_xticks(np.arange(-0.5, Hp), minor=True), ax.set_yticks(np.arange(-0.5, Hp), minor=True)
    ax.grid(which="minor", color="k", lw=0.5)
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(f"s={stride} p={padding} d={dilation}\nout {Ho}×{Ho}, cols (9, {Ho * Ho})")


fig, axes = plt.subplots(1, 4, figsize=(11, 3.2))
for ax, (s, p, d) in zip(axes, [(1, 0, 1), (2, 0, 1), (1, 1, 1), (1, 0, 2)]):
    draw_taps(ax, 6, 3, s, p, d)
fig.tight_layout()
plt.show()
""")

md(r"""
### Groups

With `groups = G` the channels are split into G independent convolutions (ResNeXt, Xie et al. 2017; G = C is
a *depthwise* convolution). The weights shrink to `(C_out, C_in/G, kh, kw)` and the product becomes a batch of
G smaller products: `(G, C_out/G, K) @ (N, G, K, P)` with `K = C_in/G · kh · kw`. The table shows how each
hyper-parameter changes the shapes for one input `x` of shape `(1, 4, 8, 8)` and 8 output channels:
""")

code(r"""
x4 = rng.standard_normal((1, 4, 8, 8))
print(f"{'stride pad dil groups':>22} | {'w':>14} | {'cols (N, C*kh*kw, Ho*Wo)':>24} | {'GEMM per image':>26} | out")
for s, p, d, g in [(1, 0, 1, 1), (2, 0, 1, 1), (1, 1, 1, 1), (1, 2, 2, 1), (1, 1, 1, 2), (1, 1, 1, 4)]:
    wg = rng.standard_normal((8, 4 // g, 3, 3))
    out, _ = F.conv2d_forward(x4, wg, None, s, p, d, g)
    cols_g = im2col(x4, 3, 3, (s, s), (p, p), (d, d))
    K, P = cols_g.shape[1] // g, cols_g.shape[2]
    print(f"{s:>6} {p:>3} {d:>3} {g:>6}   | {str(wg.shape):>14} | {str(cols_g.shape):>24} | "
          f"{f'{g} x ({8 // g},{K}) @ ({K},{P})':>26} | {out.shape}")
    assert np.allclose(out, reference.conv2d_naive(x4, wg, None, s, p, d, g))
""")

md(r"""
A grouped convolution *is* G ordinary convolutions on slices of the channels, glued together:
""")

code(r"""
wg = rng.standard_normal((6, 2, 3, 3))                     # groups=2: each output sees 2 of the 4 channels
grouped, _ = F.conv2d_forward(x4, wg, None, 1, 1, 1, groups=2)
halves = [F.conv2d_forward(x4[:, 2 * g:2 * g + 2], wg[3 * g:3 * g + 3], None, 1, 1)[0] for g in range(2)]
assert np.allclose(grouped, np.concatenate(halves, axis=1))
""")

md(r"""
### The price: memory

Every pixel is copied once per kernel tap that reads it, so at stride 1 with "same" padding `cols` is
**kh·kw = 9 times** the input for a 3×3 kernel. For a 1×1 convolution (two of the three convolutions in
every ResNet bottleneck block) the columns *are* the pixels and `im2col` returns a view without copying.
""")

code(r"""
xm = rng.standard_normal((2, 16, 32, 32)).astype(np.float32)
print("3x3, pad 1: cols / x =", im2col(xm, 3, 3, padding=(1, 1)).nbytes / xm.nbytes)
print("1x1       : shares memory with x:", np.shares_memory(im2col(xm, 1, 1), xm))

# A 3x3 FPN output conv on P2 for an 800x1344 image: 256 channels at stride 4 (200x336), float32.
C, H, W = 256, 200, 336
print(f"P2 input {C * H * W * 4 / 2**20:.0f} MiB  ->  its im2col matrix {9 * C * H * W * 4 / 2**20:.0f} MiB")
""")

md(r"""
Production libraries avoid this with "implicit GEMM" or Winograd/FFT kernels (cuDNN) that never build `cols`.
We keep the explicit matrix because it makes the backward pass readable, and because, as the next section
shows, the backward pass wants exactly this matrix again.
""")

md(r"""
## 2. The forward/backward pair

Every layer in minimaskrcnn follows the contract of the CS231n assignments:

```python
out, cache = op_forward(x, w, b, ...)      # cache: whatever the backward needs, nothing more
dx, dw, db = op_backward(dout, cache)      # dout = dL/dout, same shape as out
```

There is no graph and no tape. A `Module` (e.g. `nn.Conv2d`) just stores the cache between its `forward` and
its `backward` and drops it afterwards. For the convolution, with $\text{out} = W\,\text{cols}$ (per image),
the chain rule gives two matrix products:

$$dW = d\text{out}\;\text{cols}^\top, \qquad d\text{cols} = W^\top\, d\text{out}, \qquad
   dx = \text{col2im}(d\text{cols}).$$

So the cache holds `cols` (to get `dW` without running `im2col` again), `w` (for `dcols`), and the shapes and
hyper-parameters that `col2im` needs to put each column back where it came from. Here is the backward:
""")

code(r"""
print(inspect.getsource(F.conv2d_backward))
""")

md(r"""
Let us do the backward by hand on the 4×4 example: three lines, then compare with the library.
""")

code(r"""
out, cache = F.conv2d_forward(x, w)
dout = rng.standard_normal(out.shape)                       # pretend this came from the layer above

dW_hand = (dout.reshape(1, 4) @ cols[0].T).reshape(w.shape)   # (C_out, P) @ (P, C*kh*kw)
dcols = w.reshape(1, 9).T @ dout.reshape(1, 4)                # (C*kh*kw, C_out) @ (C_out, P)
dx_hand = col2im(dcols[None], x.shape, 3, 3)                  # scatter-add each column back

dx, dW, db = F.conv2d_backward(dout, cache)
# (at stride 1 the library keeps kw row-shifted copies instead of the full im2col matrix: see
#  nn/_conv_rowshift.py; the GEMMs are the same. Wide 3x3 layers (128+ channels) take Winograd's F(2, 3),
#  2/3 of the multiplications: nn/_conv_winograd.py. conv2d_forward_im2col is the plain path.)
print(type(cache).__name__)
for name, item in cache._asdict().items():
    print(f"cache.{name:9s}", f"array {item.shape}" if hasattr(item, "shape") else item)
assert np.allclose(dx, dx_hand) and np.allclose(dW, dW_hand) and db is None
""")

md(r"""
### col2im is the adjoint of im2col

`im2col` is a linear map $A$ from images to column matrices (it copies, so $A$ is a matrix of 0s and 1s).
Its transpose $A^\top$ must send each column entry back to the pixel it was copied from, **adding** where
copies overlap: that is `col2im`. The defining property of a transpose is
$\langle A x, c\rangle = \langle x, A^\top c\rangle$ for every $x$ and $c$; check it numerically with stride,
padding and dilation all switched on:
""")

code(r"""
args = dict(kh=3, kw=3, stride=(2, 2), padding=(1, 1), dilation=(2, 1))
xa = rng.standard_normal((2, 3, 7, 6))
ca = rng.standard_normal(im2col(xa, **args).shape)
lhs = np.sum(im2col(xa, **args) * ca)
rhs = np.sum(xa * col2im(ca, xa.shape, **args))
print(f"<im2col(x), c> = {lhs:.12f}\n<x, col2im(c)> = {rhs:.12f}")
assert abs(lhs - rhs) < 1e-12 * (abs(lhs) + abs(rhs))
""")

md(r"""
`col2im` of a matrix of ones counts how many fields read each pixel, the "overlap" that the backward sums
over. With a 3×3 kernel at stride 1 the centre pixels are read 9 times; at stride 2 (ResNet's stem
max-pool is 3×3 with stride 2) rows and columns on field borders are shared by 2 or 4 fields.
""")

code(r"""
fig, axes = plt.subplots(1, 2, figsize=(6, 3))
for ax, s in zip(axes, (1, 2)):
    shape = (1, 1, 7, 7)
    counts = col2im(np.ones_like(im2col(np.zeros(shape), 3, 3, (s, s))), shape, 3, 3, (s, s))[0, 0]
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=9)
    for (r, c), v in np.ndenumerate(counts):
        ax.text(c, r, f"{v:.0f}", ha="center", va="center")
    ax.set_title(f"col2im(ones): 3×3 kernel, stride {s}"), ax.set_xticks([]), ax.set_yticks([])
fig.tight_layout()
plt.show()
""")

md(r"""
The same idea gives the **transposed convolution** (`conv_transpose2d`), the mask head's 2×2 stride-2
"deconv" (paper Fig. 4): it is the input-gradient of a convolution, used as a forward pass to upsample.
Feeding a convolution's `dout` through `conv_transpose2d_forward` with the same weights gives exactly
`conv2d_backward`'s `dx`:
""")

code(r"""
xc, wc = rng.standard_normal((2, 3, 7, 7)), rng.standard_normal((4, 3, 3, 3))
yc, cache_c = F.conv2d_forward(xc, wc, None, stride=2, padding=1)          # (2, 4, 4, 4)
dyc = rng.standard_normal(yc.shape)
dx_conv = F.conv2d_backward(dyc, cache_c)[0]
up, _ = F.conv_transpose2d_forward(dyc, wc, None, stride=2, padding=1)     # (2, 3, 7, 7): upsampled
print(yc.shape, "->", up.shape)
assert np.allclose(up, dx_conv)
""")

md(r"""
## 3. Gradient checking

A backward pass can be wrong and still let training "work" (slowly, or to a worse model). The cure is to
compare it with a derivative computed from the forward pass alone, the **central difference**

$$\frac{\partial L}{\partial x_i} \approx \frac{L(x + h e_i) - L(x - h e_i)}{2h}.$$

For a layer with an array output, we check the vector-Jacobian product the backward computes: take a random
`dout` and use the scalar $L(x) = \sum \text{out}(x) \cdot d\text{out}$. `numerical_gradient` does this entry by
entry, nudging `x` in place (so `f` must read `x` afresh on every call):
""")

code(r"""
print(inspect.getsource(numerical_gradient))
""")

md(r"""
`check_gradient` runs it and compares the result with an analytic gradient using `rel_error`:
""")

code(r"""
print(inspect.getsource(rel_error))
""")

md(r"""
**How to read it** (CS231n): in float64, ~1e-7 or less means the two agree (our tests and this notebook
require < 1e-7); 1e-4…1e-2 means something is off (or a kink, see below); > 1e-2 is a bug.
""")

md(r"""
**One number for the whole array, not CS231n's entry-by-entry ratio.** CS231n's `rel_error` is
$\max_i |x_i - y_i| / \max(10^{-8}, |x_i| + |y_i|)$: the worst *per-entry* relative error. Ours divides the
largest absolute error by the largest magnitude anywhere in the array. That keeps entries near zero, where only
the absolute error means anything, from failing a correct gradient on round-off; the price is that an error
confined to entries much smaller than the largest one is diluted by the ratio between them. In a RoI op,
for example, the cells at a RoI's border receive gradient only from the few bilinear samples that reach them,
with small weights: a backward pass that got *only those* wrong could pass. Here is such a bug, next to a
gradient that is right:
""")

code(r"""
def rel_error_per_entry(x, y):                 # CS231n's formula
    return float(np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y))))

true_grad = np.array([1.0, -0.7, 0.4, 5e-8, -8e-8])      # three large entries and two tiny "border" ones
buggy = true_grad.copy()
buggy[3:] *= 2                                            # the tiny entries are wrong by 100 %
print(f"whole array (ours): {rel_error(buggy, true_grad):.1e}   per entry (CS231n): "
      f"{rel_error_per_entry(buggy, true_grad):.1e}")
assert rel_error(buggy, true_grad) < 1e-7 < rel_error_per_entry(buggy, true_grad)
""")

md(r"""
So a passing check says the gradient is right *at the scale of its largest entries*. Where a bug could hide in
small entries, check them on their own: give the backward a `dout` that is non-zero only where the small
entries come from (e.g. only the border bins of a RoI), or compare the entries above a floor one by one.
""")

md(r"""
### Why float64, and which h?

Two errors fight. The formula's **truncation** error shrinks like $h^2$ (Taylor: the odd terms cancel).
The **round-off** error of computing $L$ in floating point, about $\epsilon |L|$ with machine epsilon
$\epsilon$, gets divided by $2h$ and grows like $\epsilon/h$. The total is smallest near
$h \approx \epsilon^{1/3}$: about 1e-5 for float64 ($\epsilon \approx 2\cdot10^{-16}$) and 5e-3 for float32
($\epsilon \approx 1.2\cdot10^{-7}$). Let us measure it on batch norm (a nonlinear layer; a convolution is linear
in $x$, so its truncation error is zero and there would be no right arm). The forward runs in float32 or
float64; the reference is the float64 analytic gradient.
""")

code(r"""
xb = rng.standard_normal((4, 3, 3, 3)).astype(np.float32).astype(np.float64)  # representable in both
gamma, beta = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
dout_b = rng.standard_normal(xb.shape)
_, cache_b = F.batch_norm_forward(xb, gamma, beta)
dx_true = F.batch_norm_backward(dout_b, cache_b)[0]

hs = np.logspace(-12, 0, 25)
errors = {}
for dtype in (np.float32, np.float64):
    def bn_out(z, dtype=dtype):  # z is float64; the layer runs in `dtype`
        return F.batch_norm_forward(z.astype(dtype), gamma.astype(dtype), beta.astype(dtype))[0]
    errors[dtype.__name__] = [check_gradient(bn_out, xb, dx_true, dout_b, h=h) for h in hs]

fig, ax = plt.subplots(figsize=(5, 3.2))
for name, e in errors.items():
    ax.loglog(hs, e, "o-", ms=3, label=name)
ax.axhline(1e-7, color="gray", ls="--", lw=1)
ax.text(1.5e-12, 1.5e-7, "1e-7", color="gray")
ax.set_xlabel("step h"), ax.set_ylabel("relative error"), ax.legend()
ax.set_title("central differences on batch norm")
plt.show()
for name, e in errors.items():
    i = int(np.argmin(e))
    print(f"{name}: best h = {hs[i]:.0e}, relative error {e[i]:.1e}")
assert min(errors["float32"]) > 1e-7 > min(errors["float64"])
""")

md(r"""
The classic V: on the right both dtypes follow the same $h^2$ line (truncation); on the left round-off takes
over, about $10^9$ times larger in float32 (the ratio of the two epsilons). For tiny `h` the float32
perturbation vanishes altogether ($x + h$ rounds back to $x$) and the error hits 1. **No step size gets a
float32 check down to 1e-7**, which is why `numerical_gradient` refuses float32 input. Every check below
runs in float64 with the default `h = 1e-6`, near the bottom of the float64 V.

### Checking every layer

A small helper: run the forward, draw a random `dout`, run the backward, and check each gradient it returns
(for a loss, the output is a scalar and `dout` is 1).
""")

code(r"""
def check_layer(forward, backward, inputs, names):
    # Relative error of each analytic gradient vs central differences of sum(forward(*inputs)[0] * dout).
    out, cache = forward(*inputs)
    dout = rng.standard_normal(np.shape(out)) if np.ndim(out) else 1.0
    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    errs = {}
    for name, x_k, g_k in zip(names, inputs, grads):
        if name is not None:  # None: an input without a gradient (labels, targets)
            errs[name] = check_gradient(lambda _: forward(*inputs)[0], x_k, g_k, dout)
    return errs


results = {}
xc, wc, bc = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
results["conv2d s=2 p=1 d=1"] = check_layer(lambda x, w, b: F.conv2d_forward(x, w, b, 2, 1),
                                            F.conv2d_backward, (xc, wc, bc), "xwb")
results["conv2d dilation 2, groups 3"] = check_layer(
    lambda x, w, b: F.conv2d_forward(x, w, b, 1, 2, 2, groups=3), F.conv2d_backward,
    (rng.standard_normal((2, 6, 6, 6)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)), "xwb")
results["conv_transpose2d 2x2/2 (mask head)"] = check_layer(
    lambda x, w, b: F.conv_transpose2d_forward(x, w, b, 2), F.conv_transpose2d_backward,
    (rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((3, 2, 2, 2)), rng.standard_normal(2)), "xwb")
results["linear"] = check_layer(F.linear_forward, F.linear_backward,
                                (rng.standard_normal((5, 7)), rng.standard_normal((3, 7)),
                                 rng.standard_normal(3)), "xwb")

for name, errs in results.items():
    print(f"{name:36s}", "  ".join(f"d{k}: {v:.1e}" for k, v in errs.items()))
    assert all(e < 1e-7 for e in errs.values()), (name, errs)
""")

md(r"""
### Kinks: where the check lies

Central differences assume $L$ is smooth between $x - h$ and $x + h$. Two of our layers have points where it
is not:

- **ReLU at 0.** If an input sits within `h` of 0, the difference straddles the kink and measures a mix of the
  two slopes (0.5 for an input exactly at 0), while the backward says 0 or 1. Exact zeros are common: the
  output of an earlier ReLU, zero padding, an integer-valued test input.
- **Max-pool ties.** If two inputs in a window share the maximum, pushing either one up raises the output,
  pushing it down does not: the numeric slope is 0.5 for each, while the backward gives all of the gradient
  to one of them (the first argmax).

In both cases the backward is a perfectly valid subgradient: the *check* is wrong, not the layer. Watch the
check fail, then fix the *input*:
""")

code(r"""
def relu_error(x):
    return check_layer(F.relu_forward, F.relu_backward, (x,), "x")["x"]


def pool_error(x):  # ResNet's stem pool: 3x3, stride 2, padding 1 (overlapping windows)
    return check_layer(lambda x: F.max_pool2d_forward(x, 3, 2, 1), F.max_pool2d_backward, (x,), "x")["x"]


x_relu = rng.standard_normal((3, 4, 5))
x_relu[:, :, ::2] = 0.0                                  # exact zeros, e.g. from a previous ReLU
x_relu_safe = x_relu + np.where(x_relu >= 0, 0.1, -0.1)  # every entry at least 0.1 from the kink

shape = (2, 3, 7, 6)
x_pool = rng.integers(0, 3, shape).astype(np.float64)       # small integers: ties in almost every window
x_pool_safe = rng.permutation(np.prod(shape)).reshape(shape) * 0.1   # distinct values, gaps of 0.1 >> h

print(f"ReLU     with exact zeros: {relu_error(x_relu):.1e}   kept 0.1 away: {relu_error(x_relu_safe):.1e}")
print(f"max pool with ties       : {pool_error(x_pool):.1e}   distinct     : {pool_error(x_pool_safe):.1e}")
assert relu_error(x_relu) > 1e-2 and relu_error(x_relu_safe) < 1e-7
assert pool_error(x_pool) > 1e-2 and pool_error(x_pool_safe) < 1e-7
""")

md(r"""
The same rule applies further on: smooth L1 has a kink at $|d| = \beta$ (and L1 at 0), and later chapters
meet RoIAlign's bin boundaries and integer sampling coordinates. The tests in `tests/test_layers.py` keep their
random inputs away from all of them and say so.

### Batch norm and the losses

Batch norm (Ioffe & Szegedy 2015) is the layer whose backward students most often get wrong: the mean and
variance depend on every input, so each `dx` entry collects a term from every other entry of its channel.
The losses are Mask R-CNN's three (paper §3): softmax cross-entropy for the class ($L_{cls}$), smooth L1 for
the box ($L_{box}$), and per-pixel sigmoid binary cross-entropy for the mask ($L_{mask}$).
""")

code(r"""
results = {}
xn = rng.standard_normal((4, 3, 3, 3))
results["batch_norm (training)"] = check_layer(
    lambda x, g, b: F.batch_norm_forward(x, g, b), F.batch_norm_backward,
    (xn, rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)), ("x", "gamma", "beta"))

logits, labels = rng.standard_normal((6, 4)) * 3, np.array([0, 3, -1, 2, 1, -1])   # -1: ignored rows
results["softmax cross-entropy (L_cls)"] = check_layer(
    lambda z, y: F.softmax_cross_entropy_forward(z, y), F.softmax_cross_entropy_backward, (logits, labels),
    ("logits", None))

pred, target, beta_l1 = rng.standard_normal((5, 4)), rng.standard_normal((5, 4)), 1 / 9
d = pred - target
d = np.where(np.abs(np.abs(d) - beta_l1) < 1e-2, d + 0.05, d)        # stay clear of the kink |d| = beta
results["smooth L1, beta=1/9 (L_box)"] = check_layer(
    lambda p, t: F.smooth_l1_forward(p, t, beta_l1, normalizer=5.0), F.smooth_l1_backward,
    (target + d, target), ("pred", None))

mask_logits, mask_targets = rng.standard_normal((3, 5, 5)) * 3, (rng.uniform(size=(3, 5, 5)) > 0.5) * 1.0
results["sigmoid BCE (L_mask)"] = check_layer(
    F.binary_cross_entropy_with_logits_forward, F.binary_cross_entropy_with_logits_backward,
    (mask_logits, mask_targets), ("logits", None))

for name, errs in results.items():
    print(f"{name:30s}", "  ".join(f"d{k}: {v:.1e}" for k, v in errs.items()))
    assert all(e < 1e-7 for e in errs.values()), (name, errs)
""")

md(r"""
## 4. A tiny CNN that memorises a batch

Modules wrap the pairs: `nn.Conv2d` owns a `weight` and a `bias` `Parameter` (each with `.data` and `.grad`),
calls `conv2d_forward` in `forward`, and in `backward` calls `conv2d_backward`, adds `dw` and `db` into the
parameters' `.grad`, and returns `dx`. `nn.Sequential` runs `backward` through its children in reverse.
""")

code(r"""
print(inspect.getsource(nn.Conv2d.backward))
""")

md(r"""
The data: `NUM_IMAGES` 16×16 images of noisy stripes, horizontal, vertical or diagonal (3 classes), with a
random period and phase. A network that cannot fit 16 images is broken, so "memorise a small batch" is the
first test of any training loop (CS231n, *Neural Networks 3*, "Sanity checks").
""")

code(r"""
def stripes(n, size=16, seed=SEED):
    # n images (n, 1, size, size) of noisy stripes; label 0 horizontal, 1 vertical, 2 diagonal.
    r = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    coord = np.stack([yy, xx, (xx + yy) / np.sqrt(2)])[labels]          # (n, size, size)
    period = r.uniform(3, 6, (n, 1, 1))
    phase = r.uniform(0, 2 * np.pi, (n, 1, 1))
    images = np.sin(2 * np.pi * coord / period + phase) + 0.3 * r.standard_normal((n, size, size))
    return images[:, None].astype(np.float32), labels


images, labels = stripes(NUM_IMAGES)
fig, axes = plt.subplots(1, 8, figsize=(10, 1.6))
for ax, img, lab in zip(axes, images, labels):
    ax.imshow(img[0], cmap="gray"), ax.set_title(["horizontal", "vertical", "diagonal"][lab], fontsize=8)
    ax.axis("off")
plt.show()
""")

code(r"""
def make_net(dtype="float32"):
    nn.init.manual_seed(SEED)  # same weights every time
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, dtype=dtype), nn.ReLU(), nn.MaxPool2d(2),    # 16x16 -> 8x8
        nn.Conv2d(8, 16, 3, padding=1, dtype=dtype), nn.ReLU(), nn.MaxPool2d(2),   # 8x8 -> 4x4
        nn.Flatten(), nn.Linear(16 * 4 * 4, 3, dtype=dtype))


net = make_net()
print(net)
print("parameters:", net.num_parameters())
""")

md(r"""
Before training, check the assembled network's gradient. Checking every one of its ~2,000 weights entry by
entry would be slow, so `check_directional` checks them all at once along one random direction $v$:
$\langle \nabla L, v\rangle$ against $(L(\theta + hv) - L(\theta - hv))/2h$. As always, in float64.
""")

code(r"""
net64 = make_net("float64")
x64 = images.astype(np.float64)


def loss64():
    return F.softmax_cross_entropy_forward(net64(x64), labels)[0]


loss, cache = F.softmax_cross_entropy_forward(net64(x64), labels)
net64.zero_grad()
net64.backward(F.softmax_cross_entropy_backward(1.0, cache))
params = {name: p.data for name, p in net64.named_parameters()}
grads = {name: p.grad for name, p in net64.named_parameters()}
err = check_directional(loss64, params, grads)
print(f"whole network, directional check: {err:.1e}")
assert err < 1e-7
""")

md(r"""
Now train in float32, as real training does, with SGD and momentum 0.9 (paper §3.1 uses the same optimizer).
One step is: forward, loss, `zero_grad`, backward from `dL/dlogits`, `opt.step()`.
""")

code(r"""
opt = nn.SGD(net.named_parameters(), lr=0.05, momentum=0.9, weight_decay=0.0)
losses = []
for _ in range(TRAIN_STEPS):
    logits = net(images)
    loss, cache = F.softmax_cross_entropy_forward(logits, labels)
    net.zero_grad()
    net.backward(F.softmax_cross_entropy_backward(1.0, cache))
    opt.step()
    losses.append(loss)

net.eval()
accuracy = float(np.mean(net(images).argmax(axis=1) == labels))
net.train()
fig, ax = plt.subplots(figsize=(5, 3))
ax.semilogy(losses)
ax.set_xlabel("SGD step"), ax.set_ylabel("cross-entropy"), ax.set_title(f"memorising {NUM_IMAGES} striped images")
plt.show()
print(f"loss {losses[0]:.3f} -> {losses[-1]:.1e}, accuracy on the batch {accuracy:.0%}")
assert losses[-1] < 0.05 and accuracy == 1.0
""")

md(r"""
## Summary

- A convolution is `im2col` (copy every receptive field into a column) followed by one matrix product.
  Stride, padding and dilation only change which pixels `im2col` reads; groups split the product into G
  smaller ones. The price is memory: `cols` is about kh·kw times the input.
- The backward pass is two more products, $dW = d\text{out}\,\text{cols}^\top$ and
  $d\text{cols} = W^\top d\text{out}$, and `col2im`, the adjoint (transpose) of `im2col`, which adds overlapping
  copies back together. The cache keeps `cols` and `w` from the forward for exactly this. Transposed
  convolution is the same adjoint used as a forward pass.
- Gradient checks compare a backward pass with central differences. Run them in float64 with h ≈ 1e-6 and
  expect a relative error below 1e-7; float32 cannot get there at any h. Keep inputs away from kinks (ReLU
  at 0, max-pool ties, |d| = β in smooth L1), where the check is wrong, not the layer.
- Modules wrap the pairs and accumulate parameter gradients; a network that memorises a small batch, with
  a gradient that passes a directional check, is ready to train on real data.

## Exercises

1. **Convolution as a sum of shifted images.** Without `im2col`, write `conv2d_shifted(x, w)` (stride 1,
   no padding) as a loop over the kh·kw taps only:
   `out += np.einsum("oc,nchw->nohw", w[:, :, i, j], x[:, :, i:i + Ho, j:j + Wo])`. Check it against
   `F.conv2d_forward`. How much memory does it need compared with `im2col`? Add stride and dilation.
2. **Derive the batch norm backward.** Starting from $\hat x = (x - \mu)/\sqrt{\sigma^2 + \epsilon}$ with
   $\mu$ and $\sigma^2$ the mean and biased variance over the $m$ values of a channel, show that
   $dx = \frac{1}{m\sqrt{\sigma^2+\epsilon}}\left(m\,d\hat x - \sum d\hat x - \hat x \sum d\hat x\,\hat x\right)$,
   compare with `inspect.getsource(F.batch_norm_backward)`, and confirm with `check_layer`. Then do the
   same for eval mode, where $\mu$ and $\sigma^2$ are constants.
3. **Dilation's gradient.** Check `conv2d_backward` for `dilation=(2, 3)`, `stride=(1, 2)`, `padding=(2, 0)`
   with `check_layer`. Then break `col2im` on purpose (e.g. drop the `* dh` in its tap offsets, in a copy) and
   see which gradient the check flags, and by how much.
4. **The V, predicted.** Estimate the truncation and round-off terms of the central difference and predict
   the best `h` and the best error for float32 and float64; compare with the plot. Why is the left arm a line
   of slope −1 on the log-log plot, and why does the float32 curve stop at exactly 1?
5. **Overlapping pools.** Explain from the `col2im(ones)` picture why `max_pool2d_backward` must *add* (not
   assign) when two 3×3/2 windows pick the same pixel. Build an input where one pixel wins two windows and
   check that its gradient is the sum of two `dout` entries.
6. **Break the training loop.** Remove `net.zero_grad()` from the training cell. What happens to the loss,
   and why? (Parameters *accumulate* gradients.)
""")

md(r"""
### Answer key

A worked solution of the exercises (a release for students replaces it by a stub: try them first).
""")

code(r"""
### BEGIN SOLUTION
# 1. Convolution as a sum of shifted images: kh*kw small products over strided *views* of x, no copy.
def conv2d_shifted(x, w, stride=1, dilation=1):
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    Ho = (H - dilation * (kh - 1) - 1) // stride + 1
    Wo = (W - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((N, O, Ho, Wo))
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dilation, j * dilation
            view = x[:, :, y0:y0 + stride * (Ho - 1) + 1:stride, x0:x0 + stride * (Wo - 1) + 1:stride]
            out += np.einsum("oc,nchw->nohw", w[:, :, i, j], view)
    return out


x1, w1 = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((4, 3, 3, 3))
for s, d in [(1, 1), (2, 1), (1, 2), (2, 2)]:
    diff = np.abs(conv2d_shifted(x1, w1, s, d) - F.conv2d_forward(x1, w1, None, s, 0, d)[0]).max()
    print(f"1. stride {s}, dilation {d}: largest difference from conv2d_forward {diff:.1e}")
# Memory: the output (and one output's worth of temporaries), where im2col copies the input kh*kw times
# (9x for a 3x3 at stride 1). The price: kh*kw small products instead of one large GEMM.

# 2. With xhat = (x - mu) * s, s = 1/sqrt(var + eps), over the m values of a channel, and dxhat = dout * gamma:
#    dvar = -s^3 / 2 * sum(dxhat * (x - mu)); dmu = -s * sum(dxhat) (dvar's share vanishes: sum(x - mu) = 0);
#    dx = dxhat * s + dvar * 2 (x - mu) / m + dmu / m = s/m * (m dxhat - sum(dxhat) - xhat sum(dxhat xhat)).
#    In eval mode mu and var are constants: dx = dxhat * s.
xb, gb, bb = rng.standard_normal((4, 3, 2, 2)), rng.standard_normal(3), rng.standard_normal(3)
print("2. batch norm, training:", check_layer(F.batch_norm_forward, F.batch_norm_backward, (xb, gb, bb), "xgb"))
rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
print("   batch norm, eval:    ", check_layer(
    lambda x, g, b: F.batch_norm_forward(x, g, b, rm.copy(), rv.copy(), training=False), F.batch_norm_backward,
    (xb, gb, bb), "xgb"))

# 3. Dilation (2, 3), stride (1, 2), padding (2, 0): a stride other than 1 takes the im2col path.
xd, wd = rng.standard_normal((1, 2, 9, 12)), rng.standard_normal((3, 2, 3, 3))


def conv3(x, w):
    return F.conv2d_forward(x, w, None, (1, 2), (2, 0), (2, 3))


def conv3_backward(dout, cache):
    return F.conv2d_backward(dout, cache)[:2]


print("3. dilated conv:", check_layer(conv3, conv3_backward, (xd, wd), "xw"))
from minimaskrcnn.nn import conv as conv_module  # noqa: E402
good_col2im = conv_module.col2im


def col2im_without_dh(cols, x_shape, kh, kw, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    # a copy of col2im with the bug: kernel row i lands i rows down instead of i * dh
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    N, C, H, W = x_shape
    Ho, Wo = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cols = cols.reshape(N, C, kh, kw, Ho, Wo)
    padded = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    for i in range(kh):
        for j in range(kw):
            rows = slice(i, i + sh * (Ho - 1) + 1, sh)                 # the bug: i, not i * dh
            padded[:, :, rows, j * dw:j * dw + sw * (Wo - 1) + 1:sw] += cols[:, :, i, j]
    return padded[:, :, ph:ph + H, pw:pw + W]


conv_module.col2im = col2im_without_dh
try:
    print("   with col2im broken (dw does not use col2im, dx does):",
          check_layer(conv3, conv3_backward, (xd, wd), "xw"))
finally:
    conv_module.col2im = good_col2im

# 4. Truncation ~ h^2 |f'''| / 6 and round-off ~ eps |f| / h: their sum is smallest at h ~ (3 eps)^(1/3), with an
#    error ~ eps^(2/3). Left of the optimum round-off dominates, an error proportional to 1/h: slope -1 on a
#    log-log plot. In float32, once h is below half the spacing of the floats near x, x + h rounds to x: both
#    sides are equal, the estimate is 0 and the relative error |0 - g| / |g| is exactly 1.
for dtype in (np.float32, np.float64):
    eps = np.finfo(dtype).eps
    print(f"4. {np.dtype(dtype).name}: best h ~ {(3 * eps) ** (1 / 3):.0e}, best error ~ {eps ** (2 / 3):.0e}")

# 5. A pixel that wins all four 3x3/2 windows of a 5x5 input: its gradient is the sum of the four douts.
x5 = np.zeros((1, 1, 5, 5))
x5[0, 0, 2, 2] = 10.0
out5, cache5 = F.max_pool2d_forward(x5, 3, 2)
dx5 = F.max_pool2d_backward(np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2), cache5)
print("5. the four windows:", out5.ravel(), "; gradient of the shared pixel:", dx5[0, 0, 2, 2], "= 1 + 2 + 3 + 4")
# Assigning instead of adding would keep one window's dout and lose the others'.

# 6. Without zero_grad each step adds the new gradient to all the previous ones: the step is the sum of every
#    gradient so far (momentum 1, nothing forgotten), it keeps growing, and the loss oscillates, then diverges.
### END SOLUTION
""")


if __name__ == "__main__":
    NB.write()
