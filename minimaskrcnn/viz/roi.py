"""Where RoIPool, RoIWarp and RoIAlign read a feature map (Mask R-CNN §3, Figure 3; Table 2c).

One panel per operator, over the same feature map and RoI: the RoI itself (dashed), the operator's
bins, and what each bin reads: whole cells for RoIPool, bilinear sample points for RoIWarp and
RoIAlign. Coordinates are feature-map cells, cell ``(i, j)`` drawn centred on ``(x, y) = (j, i)`` as
``plt.imshow`` draws it; the RoI ``(x1, y1, x2, y2)`` in image pixels covers ``x1 * spatial_scale - 0.5
.. x2 * spatial_scale - 0.5`` there (pixel ``u`` of the image spans ``[u, u + 1)``).

As every function of this package: draws into ``axes`` when given, else into a new
``matplotlib.figure.Figure`` (made without pyplot: nothing stays open, no display is needed), returns the
figure, and writes it as a PNG when ``save_path`` is given. In a notebook, ``display(fig)``.
"""
from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..backend import to_numpy
from ..ops.roi_align import roi_sample_points
from ..ops.roi_pool import roi_pool_cells

TITLES = {"pool": "RoIPool: RoI and bins rounded", "warp": "RoIWarp: RoI rounded, then bilinear",
          "align": "RoIAlign: no rounding"}


def draw_roi_ops(feature_map, roi, output_size=2, spatial_scale=1.0, sampling_ratio=2, aligned=False,
                 ops=("pool", "warp", "align"), axes=None, cmap="Greys", save_path=None) -> Figure:
    """Draw each operator's bins and reads for one RoI over one feature map.

    Args:
        feature_map: (H, W) array (one channel).
        roi: ``(x1, y1, x2, y2)`` in image pixels.
        output_size, spatial_scale, sampling_ratio, aligned: as the operators take them.
        ops: which panels, from ``"pool"``, ``"warp"``, ``"align"``.
        axes: matplotlib axes to draw in (one per op); a new figure's if None.
        save_path: also write the figure there as a PNG.
    Returns:
        the figure; ``fig.axes`` holds one panel per op, in order, each with its bins and reads as
        patches and lines.
    """
    feature_map = to_numpy(feature_map)
    H, W = feature_map.shape
    if axes is None:
        fig = Figure(figsize=(3.2 * len(ops), 3.2 * H / W + 0.4), layout="constrained")
        axes = fig.subplots(1, len(ops), squeeze=False)[0]
    fig = axes[0].figure
    true_box = np.asarray(roi, dtype=np.float64) * spatial_scale - 0.5
    colours = colormaps["tab10"]
    for ax, op in zip(axes, ops, strict=True):
        ax.imshow(feature_map, cmap=cmap)
        ax.set_xticks(np.arange(-0.5, W, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, H, 1), minor=True)
        ax.grid(which="minor", color="0.75", linewidth=0.4)
        ax.tick_params(which="both", length=0, labelsize=7)
        if op == "pool":
            rows, cols = roi_pool_cells(roi, output_size, spatial_scale, H, W)
            for i, (h0, h1) in enumerate(rows):
                for j, (w0, w1) in enumerate(cols):
                    colour = colours((i * len(cols) + j) % 10)
                    ax.add_patch(Rectangle((w0 - 0.5, h0 - 0.5), w1 - w0, h1 - h0, facecolor=colour,
                                           alpha=0.35, edgecolor=colour, linewidth=1.5))
        else:
            p = roi_sample_points(roi, output_size, spatial_scale, sampling_ratio, aligned,
                                  quantize=op == "warp")
            for i in range(len(p["y_edges"]) - 1):
                for j in range(len(p["x_edges"]) - 1):
                    colour = colours((i * (len(p["x_edges"]) - 1) + j) % 10)
                    y0, y1 = p["y_edges"][i:i + 2]
                    x0, x1 = p["x_edges"][j:j + 2]
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour,
                                           linewidth=1.5))
                    yy, xx = np.meshgrid(p["y"][i], p["x"][j], indexing="ij")
                    ax.plot(xx.ravel(), yy.ravel(), "o", color=colour, markersize=3.5)
        x1, y1, x2, y2 = true_box
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red", linestyle="--",
                               linewidth=1.2))
        ax.set_xlim(-0.5, W - 0.5)
        ax.set_ylim(H - 0.5, -0.5)
        ax.set_title(TITLES.get(op, op), fontsize=9)
    if save_path is not None:
        fig.savefig(save_path, dpi=100)
    return fig
