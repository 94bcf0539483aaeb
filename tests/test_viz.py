"""The plots render to PNG and hold what they should (counted artists, not pixels)."""
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from minimaskrcnn.viz.detections import (
    class_color,
    draw_comparison_grid,
    draw_instances,
    draw_target,
    mask_contour,
    plot_losses,
    plot_pr_curves,
    smooth,
)

NAMES = ["__background__", "circle", "rectangle", "triangle"]


def _instances(n=3, size=32):
    masks = np.zeros((n, size, size), np.uint8)
    boxes = np.zeros((n, 4), np.float32)
    for i in range(n):
        masks[i, 4 * i: 4 * i + 8, 3 * i: 3 * i + 10] = 1
        boxes[i] = [3 * i, 4 * i, 3 * i + 10, 4 * i + 8]
    return {"boxes": boxes, "labels": np.arange(n) % 3 + 1, "masks": masks,
            "scores": np.linspace(0.9, 0.3, n)}


def _is_png(path):
    with Image.open(path) as im:
        return im.format == "PNG" and im.size[0] > 50


def test_draw_instances(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    target = _instances()
    fig = draw_target(image, target, NAMES, score_thresh=0.5, save_path=tmp_path / "one.png")
    ax = fig.axes[0]
    assert len(ax.images) == 2                                   # the image and one mask overlay
    assert sum(isinstance(p, Rectangle) for p in ax.patches) == 2  # scores 0.9, 0.6 pass 0.5; 0.3 does not
    assert sorted(t.get_text() for t in ax.texts) == ["circle 0.90", "rectangle 0.60"]
    assert _is_png(tmp_path / "one.png")
    # The overlay colours each kept mask with its class colour.
    overlay = ax.images[1].get_array()
    np.testing.assert_allclose(overlay[1, 1, :3], class_color(1))        # only instance 0 is there
    np.testing.assert_allclose(overlay[5, 4, :3], class_color(2))        # instance 1 drawn over 0
    assert overlay[target["masks"][2].astype(bool) & ~target["masks"][1].astype(bool), 3].max() == 0


def test_mask_contour_is_the_inner_outline():
    mask = np.zeros((6, 7), bool)
    mask[1:5, 2:6] = True                                        # a 4 x 4 square
    mask[0, 0] = True                                            # a lone pixel at the image's corner
    outline = mask_contour(mask)
    expected = mask.copy()
    expected[2:4, 3:5] = False                                   # the 2 x 2 interior is not outline
    np.testing.assert_array_equal(outline, expected)
    assert not mask_contour(np.zeros((3, 3), bool)).any()
    full = mask_contour(np.ones((3, 3), bool))                   # the image's edge counts as outside
    assert full.sum() == 8 and not full[1, 1]


def test_draw_instances_draws_opaque_contours():
    image = np.zeros((32, 32, 3), np.uint8)
    target = _instances(1)
    mask = target["masks"][0].astype(bool)                       # rows 0..7, columns 0..9
    overlay = draw_target(image, target, NAMES).axes[0].images[1].get_array()
    edge, inside = mask_contour(mask), mask & ~mask_contour(mask)
    assert edge.sum() == 2 * (8 + 10) - 4 and inside.sum() == 6 * 8
    np.testing.assert_allclose(overlay[edge, 3], 1.0)            # the outline is opaque ...
    np.testing.assert_allclose(overlay[edge, :3], np.tile(class_color(1), (edge.sum(), 1)))
    np.testing.assert_allclose(overlay[inside, 3], 0.45)         # ... the fill translucent
    assert overlay[~mask, 3].max() == 0
    plain = draw_target(image, target, NAMES, contours=False).axes[0].images[1].get_array()
    np.testing.assert_allclose(plain[mask, 3], 0.45)             # contours=False: the fill only


def test_draw_into_a_given_axes():
    fig = Figure()
    ax = fig.subplots()
    out = draw_instances(np.zeros((8, 8, 3), np.uint8), boxes=np.array([[1, 1, 5, 5]]), ax=ax, title="t")
    assert out is fig and ax.get_title() == "t" and [t.get_text() for t in ax.texts] == ["1"]


def test_comparison_grid(tmp_path):
    image = np.zeros((32, 32, 3), np.uint8)
    fig = draw_comparison_grid([image] * 3, [_instances()] * 3, [_instances(2)] * 3, NAMES, pairs_per_row=2,
                               save_path=tmp_path / "grid.png")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(fig.axes) == 8 and len(visible) == 6              # 2 rows x 4 columns, one pair unused
    assert visible[0].get_title() == "ground truth"
    assert _is_png(tmp_path / "grid.png")
    with pytest.raises(ValueError, match="same length"):
        draw_comparison_grid([image], [], [], NAMES)


def test_smooth_is_a_debiased_moving_average():
    np.testing.assert_allclose(smooth([2.0, 2.0, 2.0], 0.9), [2.0, 2.0, 2.0])
    np.testing.assert_allclose(smooth([1.0, 3.0], 0.5), [1.0, (0.25 * 1 + 0.5 * 3) / 0.75])
    np.testing.assert_array_equal(smooth([1.0, 5.0], 0.0), [1.0, 5.0])


def test_plot_losses_formats(tmp_path):
    hist = {"loss_rpn": np.linspace(2, 0.5, 50), "loss_mask": (np.arange(0, 100, 2), np.linspace(1, 0.1, 50))}
    fig = plot_losses(hist, log_scale=True, save_path=tmp_path / "loss.png")
    ax = fig.axes[0]
    assert len(ax.lines) == 4 and ax.get_yscale() == "log"
    assert ax.lines[2].get_xdata()[-1] == 98
    records = [{"iteration": 10 * i, "loss": 1.0 / (i + 1), "loss_box": 0.5} for i in range(20)]
    ax = plot_losses(records).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["loss", "loss_box"]
    assert ax.lines[0].get_xdata()[-1] == 190
    assert _is_png(tmp_path / "loss.png")


def test_pr_curves(tmp_path):
    recall = np.linspace(0, 1, 101)
    ious = np.linspace(0.5, 0.95, 10)
    precision = np.tile(np.linspace(1, 0, 101)[None, :, None], (10, 1, 3))
    precision[:, :, 2] = -1                                      # no ground truth for class 3
    fig = plot_pr_curves(precision, recall, ious, NAMES, at=(0.5, 0.75), save_path=tmp_path / "pr.png")
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert len(ax.lines) == 3                                # two classes + mean
        assert ax.get_legend().get_texts()[0].get_text() == "circle (AP 0.500)"
    assert _is_png(tmp_path / "pr.png")
    with pytest.raises(ValueError, match="not among"):
        plot_pr_curves(precision, recall, ious, NAMES, at=(0.62,))
