"""The ablations' picture: per metric (AP, AP50, AP75; mask, box and/or keypoint AP), our mean over seeds as a
bar with each seed's value as a dot, and the paper's number as a hatched bar beside it. Drawn into a new
``matplotlib.figure.Figure`` without pyplot (as :mod:`minimaskrcnn.viz.detections`).
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .detections import PALETTE

STATS = ("AP", "AP50", "AP75")
METRIC_NAME = {"segm": "mask", "bbox": "box", "keypoints": "keypoint"}    # keypoint AP: AP^kp, by OKS


def plot_ablation(summary, save_path=None, figsize=None) -> Figure:
    """One table's summary (an entry of ``ablations.json``'s ``tables``) as grouped bars.

    Panels: one per (metric, statistic), a row per metric. In each, one group per variant: our mean (solid;
    dots: the seeds) and the paper's value (hatched; absent where the paper gives none). Our numbers and the
    paper's are both COCO AP in %, but on different data and models: compare the *gaps* between variants, not
    the heights.
    """
    panels = [(m, s) for m in summary["metrics"] for s in STATS]      # one row per metric
    variants = summary["variants"]
    rows = len(summary["metrics"])
    fig = Figure(figsize=figsize or (max(9.0, 1.4 * len(variants) * 3), 3.4 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, len(STATS))).reshape(-1)
    x = np.arange(len(variants))
    for ax, (m, s) in zip(axes, panels):
        for i, v in enumerate(variants):
            ours, paper = v["ours"][m][s], v["paper"][m][s]
            colour = PALETTE[i % len(PALETTE)]
            if ours["mean"] is not None:
                ax.bar(i - 0.2, ours["mean"], 0.4, color=colour, label="ours" if i == 0 else None)
                ax.plot(np.full(len(ours["seeds"]), i - 0.2), ours["seeds"], "o", color="black", ms=3,
                        label="ours, each seed" if i == 0 else None)
            if paper is not None:
                ax.bar(i + 0.2, paper, 0.4, color=colour, alpha=0.35, hatch="//", edgecolor=colour,
                       label="paper" if i == 0 else None)
        ax.set_xticks(x, [v["name"] for v in variants], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{METRIC_NAME[m]} {s}", fontsize=10)
        ax.set_ylabel("COCO AP, OKS (%)" if m == "keypoints" else "COCO AP (%)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{summary['title']}\nours: {summary['iterations']} iterations, {summary['seeds']} seed(s); "
                 f"hatched: the paper", fontsize=10)
    if save_path is not None:
        fig.savefig(save_path, dpi=100)
    return fig
