"""Build notebooks/04_roialign.ipynb (without outputs) from the cells below.

    python tools/make_notebook_04.py
"""
from notebook_builder import NotebookBuilder

NB = NotebookBuilder("04_roialign.ipynb")
md, code = NB.md, NB.code


md(r"""
# 04 · RoIAlign: pooling a region without rounding it

The box and mask heads of Mask R-CNN see each region of interest (RoI) as a small fixed-size feature grid,
7×7 or 14×14, cut out of a feature map that is 16 or 32 times coarser than the image. How that grid is cut
matters: it is the paper's key technical finding (§3, Table 2c/2d). You will:

1. work RoIPool's two roundings by hand and see what they cost in image pixels;
2. draw where **RoIPool**, **RoIWarp** and **RoIAlign** read the feature map;
3. **measure the misalignment**: move an object by sub-pixel steps and watch which outputs follow it;
4. read the **CUDA kernel** of RoIAlign, and run that very kernel on the CPU through an emulator;
5. check the gradients of all three operators.

> "RoIPool first quantizes a floating-number RoI to the discrete granularity of the feature map, this
> quantized RoI is then subdivided into spatial bins which are themselves quantized, and finally feature
> values covered by each bin are aggregated (usually by max pooling). [...] These quantizations introduce
> misalignments between the RoI and the extracted features. While this may not impact classification, which
> is robust to small translations, it has a large negative effect on predicting pixel-accurate masks.
> [...] Our proposed change is simple: we avoid any quantization of the RoI boundaries or bins (i.e., we use
> x/16 instead of [x/16]). We use bilinear interpolation to compute the exact values of the input features at
> four regularly sampled locations in each RoI bin, and aggregate the result (using max or average)."
> — He, Gkioxari, Dollár, Girshick, *Mask R-CNN*, §3
""")

md("""
## Setup

The parameter cell is all you change: `STRIDE = 32` repeats the experiment of Table 2d, a finer `SHIFT_STEP`
draws smoother curves.
""")

code("""
# Parameters (the defaults run in a few seconds on a laptop CPU)
STRIDE = 16          # feature-map stride in image pixels (16: C4, Table 2c; 32: C5, Table 2d)
OUTPUT = 7           # RoI output size (7x7: the box head)
SHIFT_STEP = 0.5     # px between two positions of the moving object
SEED = 0
""")

code("""
import importlib.util
import inspect
import os
import sys

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

if importlib.util.find_spec("minimaskrcnn") is None:  # a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.abspath(".."))

from minimaskrcnn.nn.gradcheck import check_gradient, rel_error
from minimaskrcnn.ops import rawkernel
from minimaskrcnn.ops.roi_align import roi_align_backward, roi_align_forward
from minimaskrcnn.ops.roi_pool import roi_pool_backward, roi_pool_cells, roi_pool_forward
from minimaskrcnn.ops.roi_warp import roi_warp_backward, roi_warp_forward
from minimaskrcnn.viz.roi import draw_roi_ops

rng = np.random.default_rng(SEED)
plt.rcParams["figure.dpi"] = 80
""")

md(r"""
## 1. RoIPool's two roundings, by hand

A RoI from the region proposal network has real-valued corners, say $x_1 = 37.3$ and $x_2 = 201.9$ image
pixels. On a stride-16 map those are cells $2.33$ and $12.62$. RoIPool (Fast R-CNN) rounds them
(**rounding 1**: C's `round`, halves away from zero) and takes cells $2 \dots 13$ *inclusive*: 12 cells.
It then splits them into 7 bins of $12/7 = 1.71$ cells and widens every bin to whole cells
(**rounding 2**): bin $p$ covers cells $\lfloor 1.71 p \rfloor \dots \lceil 1.71 (p + 1) \rceil - 1$, so
neighbouring bins may overlap by a cell: they do wherever a bin boundary $1.71 p$ falls inside a cell, as every
one does here (12 cells do not divide into 7 bins).
""")

code("""
x1, x2 = 37.3, 201.9
start, end = int(np.floor(x1 / STRIDE + 0.5)), int(np.floor(x2 / STRIDE + 0.5))  # C round (positive x)
cells = end - start + 1
bin_size = cells / OUTPUT
print(f"RoI x {x1}..{x2} px = cells {x1 / STRIDE:.2f}..{x2 / STRIDE:.2f} "
      f"-> rounded {start}..{end} ({cells} cells)")
print(f"pooled region covers pixels {start * STRIDE}..{(end + 1) * STRIDE}: "
      f"{start * STRIDE - x1:+.1f} px at the left edge, {(end + 1) * STRIDE - x2:+.1f} px at the right")
by_hand = [(start + int(np.floor(p * bin_size)), start + int(np.ceil((p + 1) * bin_size)))
           for p in range(OUTPUT)]
print("bins (first cell, last cell + 1):", by_hand)

# The library's RoIPool geometry agrees (rows and columns are computed the same way):
_, cols = roi_pool_cells((x1, 0, x2, 10), OUTPUT, 1 / STRIDE, height=1, width=100)
assert [tuple(c) for c in cols] == by_hand
""")

md("""
RoIAlign keeps $x/16$ as it is: the RoI covers cells $2.33 \\dots 12.62$, each bin is exactly
$10.29/7 = 1.47$ cells wide, and each bin is read at `sampling_ratio`² regularly spaced points by bilinear
interpolation of the four surrounding cells. RoIWarp (from MNC, the middle rows of Table 2c) sits in between:
it rounds the RoI like RoIPool, then samples bilinearly like RoIAlign.

## 2. Where each operator reads

One RoI over a random 12×14 feature map: the dashed red box is the RoI itself; coloured boxes are the
operator's bins; dots are RoIWarp's and RoIAlign's sample points (2×2 per bin), shaded cells RoIPool's
max-pooling windows. Cell $(i, j)$ is drawn centred on $(x, y) = (j, i)$.
""")

code("""
feature = rng.random((12, 14))
roi = (37.3, 45.9, 161.2, 150.4)  # image pixels; stride 16 below
fig = draw_roi_ops(feature, roi, output_size=2, spatial_scale=1 / 16, sampling_ratio=2, aligned=True)
fig.suptitle("aligned=True", fontsize=10)
display(fig)
fig = draw_roi_ops(feature, roi, output_size=2, spatial_scale=1 / 16, sampling_ratio=2, aligned=False,
                   ops=("align",))
fig.axes[0].set_title("RoIAlign, aligned=False", fontsize=9)
display(fig)
""")

md("""
Two things to see. RoIPool's windows overshoot the RoI (up to a cell on each side) and overlap; RoIWarp's
grid is regular but belongs to the rounded RoI. And the second picture: with `aligned=False` (the paper's and
torchvision's default) even RoIAlign's grid sits half a cell to the bottom-right of the RoI, because the
value of cell $i$ describes the pixels around $i + 0.5$, not $i$. Detectron2's `aligned=True` subtracts that
half cell. It is a constant shift, which the heads can learn to undo; the roundings are not constant, as the
next experiment shows.

The three operators share one signature, `op(features, rois, output_size, spatial_scale, sampling_ratio,
aligned)`, with `rois` as `(K, 5)` rows `(batch_index, x1, y1, x2, y2)` in image pixels:
""")

code("""
print(inspect.signature(roi_align_forward))
print(inspect.signature(roi_warp_forward))
print(inspect.signature(roi_pool_forward))
""")

md(r"""
## 3. The misalignment, measured

An object moves to the right in steps of `SHIFT_STEP` pixels, and its RoI moves with it (as a perfect
detector's box would). The object is a Gaussian blob; its "feature map" is the blob sampled at the centre of
every stride-`STRIDE` cell. Since object and RoI move together, the pooled 7×7 output *should not change*.
We track where each operator places the object: the centroid of its output, converted back to image pixels,
minus the object's true centre.
""")

code("""
SIGMA, HALF, SIZE = 1.25 * STRIDE, 3 * STRIDE, 24  # blob width, RoI half-size (px), map size (cells)
centres = STRIDE * (np.arange(SIZE) + 0.5)


def blob_features(cx, cy):
    \"\"\"(1, 1, SIZE, SIZE): a Gaussian blob centred at (cx, cy) px, sampled at the cell centres.\"\"\"
    d2 = (centres[None, :] - cx) ** 2 + (centres[:, None] - cy) ** 2
    return np.exp(-d2 / (2 * SIGMA ** 2))[None, None]


def where_is_it(out, roi):
    \"\"\"The x of the output's centroid, in image pixels.\"\"\"
    profile = out[0, 0].sum(axis=0)
    c = (profile * np.arange(OUTPUT)).sum() / profile.sum()       # in bins
    return roi[0, 1] + (c + 0.5) * (roi[0, 3] - roi[0, 1]) / OUTPUT


OPS = {
    "RoIPool": lambda f, r: roi_pool_forward(f, r, OUTPUT, 1 / STRIDE)[0],
    "RoIWarp": lambda f, r: roi_warp_forward(f, r, OUTPUT, 1 / STRIDE, 2, True)[0],
    "RoIAlign, aligned=False": lambda f, r: roi_align_forward(f, r, OUTPUT, 1 / STRIDE, 2, False)[0],
    "RoIAlign, aligned=True": lambda f, r: roi_align_forward(f, r, OUTPUT, 1 / STRIDE, 2, True)[0],
}
shifts = np.arange(0, 2 * STRIDE + 1e-9, SHIFT_STEP)
error = {name: [] for name in OPS}
change = {name: [] for name in OPS}
for t in shifts:
    cx, cy = 9.3 * STRIDE + t, 10.6 * STRIDE
    f = blob_features(cx, cy)
    roi = np.array([[0, cx - HALF, cy - HALF, cx + HALF, cy + HALF]])
    for name, op in OPS.items():
        out = op(f, roi)
        error[name].append(where_is_it(out, roi) - cx)
        change[name].append(out)
for name in OPS:
    outs = np.array(change[name])
    change[name] = np.abs(outs - outs[0]).max(axis=(1, 2, 3, 4)) / np.abs(outs[0]).max()
    e = np.array(error[name])
    print(f"{name:24s} position error {e.min():+6.2f} .. {e.max():+6.2f} px (spread {np.ptp(e):5.2f} px); "
          f"output changes by up to {100 * change[name].max():4.1f}%")
""")

code("""
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
for name in OPS:
    axes[0].plot(shifts, error[name], label=name)
    axes[1].plot(shifts, 100 * change[name], label=name)
axes[0].set(xlabel="object shift (px)", ylabel="centroid - true centre (px)",
            title="where the pooled features put the object")
axes[1].set(xlabel="object shift (px)", ylabel="max |out(t) - out(0)| (%)",
            title="how much the output changes")
for ax in axes:
    for k in range(0, 2 * STRIDE + 1, STRIDE):
        ax.axvline(k, color="0.85", zorder=0)
axes[0].legend(fontsize=8)
plt.show()

spread = {name: np.ptp(error[name]) for name in OPS}
assert spread["RoIPool"] > 0.25 * STRIDE and spread["RoIWarp"] > 0.25 * STRIDE  # jumps: most of a cell
assert spread["RoIAlign, aligned=True"] < 0.05 * STRIDE                          # follows the object
assert abs(np.mean(error["RoIAlign, aligned=True"])) < 0.05 * STRIDE             # ... and sits on it
assert np.mean(error["RoIAlign, aligned=False"]) < -0.25 * STRIDE                # a constant half-cell shift
""")

md("""
RoIPool and RoIWarp follow the object in jumps: as long as the rounded RoI stays on the same cells, the
object slides across a fixed window, then the window jumps by a whole cell (16 px). The position error saws
back and forth over most of a cell. RoIAlign's output hardly moves: its error is flat. With
`aligned=False` it is flat but offset by about half a cell (the half-pixel convention of section 2);
`aligned=True` removes the offset too.

A 28×28 mask predicted from these features is hurt most by that error, but boxes are too. This is Table 2c/2d
of the paper (COCO minival; mask AP, and for stride 32 box AP as well, Table 2d):

| RoI layer | stride | AP | AP50 | AP75 | APbb | APbb50 | APbb75 |
|---|---|---|---|---|---|---|---|
| RoIPool (max) | 16 (R50-C4) | 26.9 | 48.8 | 26.4 | | | |
| RoIWarp (max) | 16 | 27.2 | 49.2 | 27.1 | | | |
| RoIWarp (avg) | 16 | 27.1 | 48.9 | 27.1 | | | |
| RoIAlign (max) | 16 | 30.2 | 51.0 | 31.8 | | | |
| RoIAlign (avg) | 16 | **30.3** | 51.2 | 31.5 | | | |
| RoIPool | 32 (R50-C5) | 23.6 | 46.5 | 21.6 | 28.2 | 52.7 | 26.9 |
| RoIAlign | 32 | **30.9** | 51.8 | 32.1 | **34.0** | 55.3 | 36.4 |

RoIWarp's bilinear sampling alone buys nothing: the rounding of the RoI is what hurts. The gain is largest at
AP75, the strict IoU, and at stride 32, where a cell is 32 px: +7.3 mask AP (+10.5 AP75), and +5.8 box AP
(+9.5 APbb75), so the box branch needs aligned features too, above all for tight boxes. With FPN, whose
strides are finer, RoIAlign still adds 1.5 mask AP and 0.5 box AP (§4.2). Try `STRIDE = 32` above.

## 4. Side by side on one feature map

The three 7×7 outputs for one RoI on a smooth random map (so neighbouring cells are related, as in real
features). RoIPool's max makes a blockier, brighter output; RoIWarp and RoIAlign interpolate.
""")

code("""
smooth = rng.standard_normal((1, 1, 20, 20))
for _ in range(3):  # a few passes of a 3x3 box blur
    padded = np.pad(smooth, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    smooth = sum(padded[..., i:i + 20, j:j + 20] for i in range(3) for j in range(3)) / 9
roi = np.array([[0, 51.7, 43.2, 219.5, 260.8]])
outputs = {"RoIPool": roi_pool_forward(smooth, roi, OUTPUT, 1 / 16)[0],
           "RoIWarp": roi_warp_forward(smooth, roi, OUTPUT, 1 / 16, 2, True)[0],
           "RoIAlign": roi_align_forward(smooth, roi, OUTPUT, 1 / 16, 2, True)[0]}
fig, axes = plt.subplots(1, 4, figsize=(12, 3))
axes[0].imshow(smooth[0, 0], cmap="viridis")
x1, y1, x2, y2 = roi[0, 1:] / 16 - 0.5
axes[0].add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red", linestyle="--"))
axes[0].set_title("feature map and RoI", fontsize=9)
low, high = min(o.min() for o in outputs.values()), max(o.max() for o in outputs.values())
for ax, (name, out) in zip(axes[1:], outputs.items()):
    ax.imshow(out[0, 0], cmap="viridis", vmin=low, vmax=high)
    ax.set_title(name, fontsize=9)
plt.show()
""")

md("""
## 5. The CUDA kernel, run on a CPU

On a GPU, RoIAlign is a CUDA kernel: one thread per output value `out[k, c, ph, pw]`, each computing its
bin's sample points and averaging their bilinear reads; in the backward pass each thread adds its gradient
into the four cells around every point, with `atomicAdd` because threads of neighbouring bins and RoIs hit
the same cells. `minimaskrcnn/ops/kernels/roi_align.cu` is that kernel: CuPy compiles it with NVRTC on a
GPU (`cupy.RawKernel`). Here is the forward pass:
""")

code("""
source = rawkernel.kernel_source("roi_align.cu")
start = source.index("template <typename T>\\n__device__ void roi_align_forward")
print(source[start:source.index("// Backward:")])
""")

md("""
Without a GPU, the same file runs through `minimaskrcnn.ops.rawkernel`: it compiles the source with the
system C++ compiler against a small header, `kernels/cuda_emulation.h`, that defines `blockIdx`,
`threadIdx`, `atomicAdd`, ... as plain C++, and adds a generated *launcher* per kernel that loops over all
blocks and threads, setting the indices and calling the kernel, one thread after another. This is what the
compiler gets, after the kernel source:
""")

code("""
generated = rawkernel.emulation_source(source, "roi_align.cu")
launcher = generated[generated.index("extern \\"C\\" void minimaskrcnn_launch_roi_align_forward_f32"):]
print(launcher[:launcher.index("\\n}\\n") + 3])
""")

md("""
Running threads one at a time gives the same result as running them in parallel only if threads never wait
for each other. Kernels that use `__shared__` memory, `__syncthreads()` or warp shuffles do, so the emulator
refuses them (with the file and line) instead of computing something wrong:
""")

code("""
tiled = '''extern "C" __global__ void block_sum(const float* x, float* out) {
  __shared__ float partial[256];
  partial[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
}'''
try:
    rawkernel.EmulatedKernel(tiled, "block_sum", filename="block_sum.cu")
except rawkernel.UnsupportedKernelError as e:
    print("refused:", e)
""")

md("""
`impl="kernel"` runs the kernel (CuPy on a GPU, the emulator on NumPy arrays); `impl="numpy"` the vectorised
NumPy version, tuned for the CPU's cache (`ops/_roi_align_fast.py`); `impl="simple"` the same computation
written to be read (`ops/roi_align.py`). They agree to round-off, and with the plain loops of
`ops/reference.py`. Below, the Python side of a launch, then a launch by hand: arguments go in a tuple,
scalars as NumPy scalars of the kernel's parameter types, as `cupy.RawKernel` wants them.
""")

code("""
from minimaskrcnn.ops import roi_align as roi_align_module

x = rng.standard_normal((2, 8, 12, 15)).astype(np.float32)
rois = np.array([[0, 3.3, 7.9, 120.2, 90.0], [1, -20.0, 15.5, 60.1, 250.0], [1, 100.0, 100.0, 101.0, 101.0]],
                dtype=np.float32)
out_np, cache_np = roi_align_forward(x, rois, 7, 1 / 16, 2, True, impl="numpy")
out_k, cache_k = roi_align_forward(x, rois, 7, 1 / 16, 2, True, impl="kernel")
print("NumPy vs kernel, forward:", rel_error(out_np, out_k))
assert rel_error(out_np, out_k) < 1e-6
dout = rng.standard_normal(out_np.shape).astype(np.float32)
assert rel_error(roi_align_backward(dout, cache_np), roi_align_backward(dout, cache_k)) < 1e-6

print(inspect.getsource(roi_align_module._kernel_forward))
""")

code("""
kernel = rawkernel.get_kernel("roi_align.cu", "roi_align_forward_f32", np)
print(kernel)
K, C, (N, _, H, W) = len(rois), x.shape[1], x.shape
out = np.empty((K, C, 7, 7), dtype=np.float32)
unused_argmax = np.empty(1, dtype=np.int32)
kernel((64,), (128,), (np.int32(out.size), x, rois, np.int32(C), np.int32(H), np.int32(W), np.int32(7),
                       np.int32(7), np.float32(1 / 16), np.int32(2), np.int32(True), np.int32(False),
                       np.int32(False), out, unused_argmax))
assert np.array_equal(out, out_k)
try:  # a Python float where the kernel takes `const float`: CuPy would pass a double
    kernel((64,), (128,), (np.int32(out.size), x, rois, np.int32(C), np.int32(H), np.int32(W), np.int32(7),
                           np.int32(7), 1 / 16, np.int32(2), np.int32(1), np.int32(0), np.int32(0), out,
                           unused_argmax))
except ValueError as e:
    print("refused:", e)
""")

md("""
## 6. Gradients

All three operators are linear in the features (piecewise linear for the max modes), so their backward
passes are sparse "scatters": each output gradient goes to the cells its bin read, with the same weights.
Central differences in float64 confirm them, for both implementations and both aggregations of Table 2c.
""")

code("""
xg = rng.standard_normal((1, 2, 6, 7))
rois_g = np.array([[0, 3.1, 5.7, 20.9, 17.3], [0, -4.2, 10.3, 9.8, 30.6]])
dout_g = rng.standard_normal((2, 2, 3, 3))
cases = [("RoIPool", roi_pool_forward, roi_pool_backward, "max"),
         ("RoIWarp avg", roi_warp_forward, roi_warp_backward, "avg"),
         ("RoIWarp max", roi_warp_forward, roi_warp_backward, "max"),
         ("RoIAlign avg", roi_align_forward, roi_align_backward, "avg"),
         ("RoIAlign max", roi_align_forward, roi_align_backward, "max")]
for name, forward, backward, mode in cases:
    for impl in ("numpy", "kernel"):
        _, cache = forward(xg, rois_g, 3, 0.5, 2, False, mode=mode, impl=impl)
        analytic = backward(dout_g, cache)
        err = check_gradient(lambda f: forward(f, rois_g, 3, 0.5, 2, False, mode=mode, impl=impl)[0],
                             xg, analytic, dout_g)
        print(f"{name:13s} {impl:6s} rel error {err:.1e}")
        assert err < 1e-7
""")

md("""
## Summary

* RoIPool rounds twice: the RoI to whole cells, then every bin to whole cells. At stride 16 that moves the
  pooled window by up to a cell (16 px), and by a different amount for every RoI position.
* RoIWarp rounds only the RoI and samples bilinearly; it is no better than RoIPool (Table 2c): the rounding
  of the RoI is the harmful part.
* RoIAlign rounds nothing: bins of exactly `size / 7` cells, bilinear reads at regular points. Its output
  follows an object smoothly; `aligned=True` also removes a constant half-cell offset.
* +3 mask AP at stride 16, +7 at stride 32, most of it at AP75.
* One CUDA kernel file serves the GPU (NVRTC) and, through a small emulation header and generated
  launchers, the CPU, as long as its threads never wait for each other.

## Exercises

1. Rerun section 3 with `mode="max"` for RoIAlign. Table 2c says max and avg are equally good: does the
   max follow the object as smoothly?
2. Set `STRIDE = 32`. How many pixels does RoIPool's position error span now?
3. "The results are not sensitive to the exact sampling locations, or how many points are sampled, as long as
   no quantization is performed": try `sampling_ratio` 1, 2 and adaptive (`-1`) in section 3.
4. Write RoIAlign (avg) as four nested Python loops over RoIs, channels, bins and sample points, straight
   from the kernel in section 5, and check it against `roi_align_forward` on the example of section 5.
   Then compare yours with `minimaskrcnn.ops.reference.roi_align_reference`, the loops the tests use.
5. In `roi_align.cu`'s backward pass, replace `atomicAdd(p, v)` by `*p += v`. The emulator's results do not
   change. Why not, and what would happen on a GPU?
""")


md(r"""
### Answer key

A worked solution of the exercises (a release for students replaces it by a stub: try them first).
""")

code(r"""
### BEGIN SOLUTION
def position_errors(op, stride=STRIDE, step=SHIFT_STEP):
    # Section 3's experiment for any operator op(features, roi, stride) and stride: centroid - true centre.
    sigma, half, cell_centres = 1.25 * stride, 3 * stride, stride * (np.arange(SIZE) + 0.5)
    errors = []
    for t in np.arange(0, 2 * stride + 1e-9, step):
        cx, cy = 9.3 * stride + t, 10.6 * stride
        d2 = (cell_centres[None, :] - cx) ** 2 + (cell_centres[:, None] - cy) ** 2
        roi_t = np.array([[0, cx - half, cy - half, cx + half, cy + half]])
        errors.append(where_is_it(op(np.exp(-d2 / (2 * sigma ** 2))[None, None], roi_t, stride), roi_t) - cx)
    return np.array(errors)


def align(mode="avg", ratio=2):
    return lambda f, r, s: roi_align_forward(f, r, OUTPUT, 1 / s, ratio, True, mode=mode)[0]


def pool(f, r, s):
    return roi_pool_forward(f, r, OUTPUT, 1 / s)[0]


# 1. RoIAlign with max: still no rounding, so no jumps of a cell; but the max of 4 points switches from one
#    point to another as the object moves, so the curve has kinks and wobbles more than avg's.
e_avg, e_max = position_errors(align("avg")), position_errors(align("max"))
print(f"1. RoIAlign aligned=True, spread of the position error: avg {np.ptp(e_avg):.2f} px, "
      f"max {np.ptp(e_max):.2f} px; RoIPool {np.ptp(error['RoIPool']):.2f} px")
assert np.ptp(e_avg) <= np.ptp(e_max) < 0.25 * STRIDE < np.ptp(error["RoIPool"])

# 2. At stride 32 every rounding is to a 32 px cell: RoIPool's error saws over about twice as many pixels.
e_pool = {s: position_errors(pool, stride=s) for s in (16, 32)}
for s_, e in e_pool.items():
    print(f"2. RoIPool, stride {s_}: position error {e.min():+.1f} .. {e.max():+.1f} px (spread {np.ptp(e):.1f} px)")
assert np.ptp(e_pool[32]) > 1.5 * np.ptp(e_pool[16])
e_align32 = position_errors(align(), stride=32)
print(f"   RoIAlign, stride 32: spread {np.ptp(e_align32):.2f} px")
assert np.ptp(e_align32) < 0.05 * 32

# 3. The sampling ratio: 1, 2 or adaptive (ceil(bin size) points: here the RoI is 6 cells, a bin 6/7 cell,
#    so -1 means 1 point). Every choice follows the object; they differ by a little smoothing, not by jumps.
for ratio in (1, 2, -1):
    e = position_errors(align(ratio=ratio))
    print(f"3. sampling_ratio {ratio:2d}: spread of the position error {np.ptp(e):.2f} px")
    assert np.ptp(e) < 0.05 * STRIDE


# 4. RoIAlign (avg) as four nested loops, from the kernel: RoI in cells (minus half a cell when aligned),
#    bins of exactly roi/7 cells, grid_h x grid_w points per bin at the centres of a regular sub-grid.
def bilinear(plane, y, x):
    H_, W_ = plane.shape
    if y < -1.0 or y > H_ or x < -1.0 or x > W_:          # a point off the map reads 0
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= H_ - 1:
        y0 = y1 = H_ - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= W_ - 1:
        x0 = x1 = W_ - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * plane[y0, x0] + (1 - ly) * lx * plane[y0, x1]
            + ly * (1 - lx) * plane[y1, x0] + ly * lx * plane[y1, x1])


def roi_align_loops(features, rois, size, scale, ratio, aligned):
    out = np.zeros((len(rois), features.shape[1], size, size))
    for k, (n, *corners) in enumerate(rois.astype(np.float64)):
        x1, y1, x2, y2 = (v * scale - (0.5 if aligned else 0.0) for v in corners)
        w, h = (x2 - x1, y2 - y1) if aligned else (max(x2 - x1, 1.0), max(y2 - y1, 1.0))
        gh = ratio if ratio > 0 else int(np.ceil(h / size))
        gw = ratio if ratio > 0 else int(np.ceil(w / size))
        for c in range(features.shape[1]):
            for ph in range(size):
                for pw in range(size):
                    total = 0.0
                    for iy in range(gh):
                        for ix in range(gw):
                            y = y1 + ph * h / size + (iy + 0.5) * h / size / gh
                            x = x1 + pw * w / size + (ix + 0.5) * w / size / gw
                            total += bilinear(features[int(n), c], y, x)
                    out[k, c, ph, pw] = total / max(gh * gw, 1)
    return out


mine = roi_align_loops(x.astype(np.float64), rois, 7, 1 / 16, 2, True)
print(f"4. four loops vs roi_align_forward (section 5's example): relative error {rel_error(mine, out_np):.1e}")
assert rel_error(mine, out_np) < 1e-6
from minimaskrcnn.ops.reference import roi_align_reference  # noqa: E402
for aligned in (True, False):
    ref = roi_align_reference(x, rois, 7, 1 / 16, 2, aligned)
    assert rel_error(roi_align_loops(x.astype(np.float64), rois, 7, 1 / 16, 2, aligned), ref) < 1e-12
print("   and equal to ops.reference.roi_align_reference, aligned True and False")

# 5. The emulator runs the threads one after another: no two read-modify-write sequences ever interleave,
#    so *p += v gives exactly atomicAdd's result there. On a GPU thousands of threads run at once; two of them
#    can both read the old value of a cell, add their share, and write: one of the two additions is lost, and
#    the gradient comes out too small, by a different amount on every run. Here is the kernel without atomics:
import re  # noqa: E402
racy_source = re.sub(r"atomicAdd\(([^,]+), ([^;]*)\);", r"*(\1) += \2;", source)
racy = rawkernel.EmulatedKernel(racy_source, "roi_align_backward_f32", filename="roi_align_racy.cu")
d_racy = np.zeros(x.shape, np.float32)
racy((64,), (128,), (np.int32(dout.size), dout, rois, np.empty(1, np.int32), np.int32(C), np.int32(H), np.int32(W),
                     np.int32(7), np.int32(7), np.float32(1 / 16), np.int32(2), np.int32(True), np.int32(False),
                     np.int32(False), d_racy))
print("5. emulated backward with *p += v vs atomicAdd: max difference",
      np.abs(d_racy - roi_align_backward(dout, cache_k)).max())
assert racy_source.count("+= grad * w") == 4 and np.allclose(d_racy, roi_align_backward(dout, cache_k), atol=1e-6)
#    NumPy has the same trap: a[idx] += v with repeated indices keeps one update per index (the "last write
#    wins" of a race), np.add.at(a, idx, v) adds them all (the atomicAdd).
idx, v = np.array([3, 3, 3, 5]), np.ones(4)
lost, kept = np.zeros(8), np.zeros(8)
lost[idx] += v
np.add.at(kept, idx, v)
print(f"   a[idx] += 1 with idx {idx.tolist()}: a[3] = {lost[3]:.0f}; np.add.at: a[3] = {kept[3]:.0f}")
assert lost[3] == 1 and kept[3] == 3
### END SOLUTION
""")


if __name__ == "__main__":
    NB.write()
