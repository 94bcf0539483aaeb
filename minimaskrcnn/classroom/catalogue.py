"""The assignments: what each hands out, where it sits in the course and the paper, and what grades it.

An assignment's *parts* are functions of the package (``path::qualname``); a release replaces their
marked regions (``### BEGIN SOLUTION`` ... ``### END SOLUTION``) by a stub. Its graded tests carry the
pytest marker ``@pytest.mark.assignment(id="A2", points=1)`` (each collected case earns ``points``);
*tests* are the visible files holding them, *hidden* the files that graders keep (``tests/hidden/``,
never released). *independent* names a few tests of other parts that must still pass in the release
(``classroom check`` runs them). The typical wrong solutions that the tests must catch are in
:mod:`minimaskrcnn.classroom.mutants`.

To add an assignment: mark the regions in the source, mark its tests, add an entry here and two or
more mutants there, and run ``python -m minimaskrcnn classroom check <id>`` (see docs/TEACHERS.md).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Assignment:
    id: str
    title: str
    chapter: str                    # the notebook where the topic is taught
    paper: str                      # paper section(s)
    parts: tuple[str, ...]          # "path::qualname" of each function the student writes
    tests: tuple[str, ...]          # visible test files holding the assignment's marked tests
    hidden: tuple[str, ...] = ()    # hidden test files (tests/hidden/...), kept out of the release
    goals: tuple[str, ...] = ()
    prerequisites: tuple[str, ...] = ()
    minutes: int = 60               # time estimate for a student who has read the chapter
    difficulty: str = "medium"      # easy | medium | hard
    independent: tuple[str, ...] = ()   # test node ids of other parts, which must pass in the release
    enabled: bool = True            # planned assignments are listed but not yet released or checked
    note: str = ""                  # what a planned assignment waits for

    @property
    def notebook_number(self) -> str:
        return self.chapter[:2]

    def stub_message(self, qualname: str) -> str:
        return f"{self.id}: implement {qualname} (notebook {self.notebook_number}; {self.paper}; see STUDENT.md)"

    def part_files(self) -> dict[str, list[str]]:
        """``path -> [qualname, ...]`` of the parts."""
        files: dict[str, list[str]] = {}
        for part in self.parts:
            path, qualname = part.split("::")
            files.setdefault(path, []).append(qualname)
        return files


INDEPENDENT = ("tests/test_roi_ops.py::test_round_half_away_from_zero",
               "tests/test_layers.py::test_relu",
               "tests/test_boxes.py::test_box_area_by_hand")

CATALOGUE: tuple[Assignment, ...] = (
    Assignment(
        "A1", "Convolution as im2col + GEMM, forward and backward", "01_layers_and_gradients.ipynb",
        "Mask R-CNN §3 (the backbone's and heads' convolutions); CS231n's im2col",
        parts=("minimaskrcnn/nn/conv.py::im2col", "minimaskrcnn/nn/conv.py::col2im",
               "minimaskrcnn/nn/conv.py::conv2d_forward_im2col", "minimaskrcnn/nn/conv.py::conv2d_backward_im2col"),
        tests=("tests/test_layers.py",), hidden=("tests/hidden/test_a1_conv.py",),
        goals=("a convolution is one matrix product once every receptive field is a column (im2col)",
               "stride, padding, dilation and groups as index arithmetic on the columns",
               "the backward pass is two more products, and col2im (the adjoint of im2col) adds overlapping "
               "windows back up"),
        prerequisites=("notebook 01 §1 'Convolution is a matrix product in disguise' and §3 'Gradient checking'",
                       "nn/reference.py's conv2d_naive: the definition, as loops"),
        minutes=120, difficulty="medium",
        independent=("tests/test_layers.py::test_conv2d_forward_matches_loops[case0]",
                     "tests/test_layers.py::test_conv2d_gradients[case0]") + INDEPENDENT[1:]),
    Assignment(
        "A2", "Batch normalisation (training mode) and frozen BN", "01_layers_and_gradients.ipynb",
        "Ioffe & Szegedy 2015; Mask R-CNN §3.1 (frozen BN in the backbone)",
        parts=("minimaskrcnn/nn/norm.py::batch_norm_forward", "minimaskrcnn/nn/norm.py::batch_norm_backward",
               "minimaskrcnn/nn/norm.py::frozen_batch_norm_forward",
               "minimaskrcnn/nn/norm.py::frozen_batch_norm_backward"),
        tests=("tests/test_layers.py",), hidden=("tests/hidden/test_a2_batch_norm.py",),
        goals=("batch statistics and their gradient: the mean and variance depend on every input",
               "running statistics (unbiased variance, momentum) and eval mode",
               "why detection backbones freeze BN: an affine map with nothing to learn"),
        prerequisites=("notebook 01: forward/backward pairs and gradient checking",
                       "notebook 02 §3 'Frozen BN, BN and GN'"),
        minutes=90, difficulty="medium", independent=INDEPENDENT[:1] + INDEPENDENT[2:]),
    Assignment(
        "A3", "FPN top-down pathway, forward and backward", "02_backbone_fpn.ipynb",
        "FPN (Lin et al. 2017) §3; Mask R-CNN §3 (Fig. 4, right)",
        parts=("minimaskrcnn/model/fpn.py::FeaturePyramidNetwork.forward",
               "minimaskrcnn/model/fpn.py::FeaturePyramidNetwork.backward"),
        tests=("tests/test_fpn.py",), hidden=("tests/hidden/test_a3_fpn.py",),
        goals=("the top-down pathway: lateral 1x1 convs plus upsampled coarser maps",
               "a gradient that reaches a level along two paths is summed, in the right order"),
        prerequisites=("notebook 01: forward/backward pairs", "notebook 02 §4 'The Feature Pyramid Network'"),
        minutes=60, difficulty="easy", independent=INDEPENDENT),
    Assignment(
        "A4", "Anchors and box coding (BoxCoder.encode / decode)", "03_rpn.ipynb",
        "Faster R-CNN §3.1 and Eq. (2); FPN §4.1; Mask R-CNN §3.1",
        parts=("minimaskrcnn/ops/anchors.py::AnchorGenerator.generate_anchors",
               "minimaskrcnn/ops/anchors.py::AnchorGenerator.anchors_per_level",
               "minimaskrcnn/ops/boxes.py::BoxCoder.encode", "minimaskrcnn/ops/boxes.py::BoxCoder.decode"),
        tests=("tests/test_anchors.py", "tests/test_boxes.py"), hidden=("tests/hidden/test_a4_anchors_boxes.py",),
        goals=("anchors of one area and three aspect ratios at every location of every level",
               "the (dx, dy, dw, dh) parameterisation and its inverse, with weights and the exp clip"),
        prerequisites=("notebook 03 §1 'Anchors' and §2 'Box parameterisation: the box coder'",),
        minutes=75, difficulty="easy",
        independent=INDEPENDENT[:2]),
    Assignment(
        "A5", "The RPN loss, forward and backward", "03_rpn.ipynb", "Faster R-CNN §3.1.2, Eq. (1); Mask R-CNN §3.1",
        parts=("minimaskrcnn/model/losses.py::rpn_loss_forward", "minimaskrcnn/model/losses.py::rpn_loss_backward"),
        tests=("tests/test_losses.py",), hidden=("tests/hidden/test_a5_rpn_loss.py",),
        goals=("Faster R-CNN's two-part loss: objectness on the sampled anchors, box regression on the positives",
               "torchvision's normalisation (both by the sampled anchors) and why unsampled anchors get no gradient",
               "composing a loss from building blocks (sigmoid BCE, smooth L1) and scattering their gradients "
               "back to every anchor"),
        prerequisites=("notebook 03 §3 'Matching anchors to objects, and sampling' and §6 'The RPN loss, its "
                       "gradient, and approximate joint training'",
                       "nn/losses.py: binary_cross_entropy_with_logits_* and smooth_l1_* (notebook 01)"),
        minutes=60, difficulty="easy",
        independent=("tests/test_losses.py::test_fastrcnn_loss_values_against_a_loop",) + INDEPENDENT[1:]),
    Assignment(
        "A6", "RoIPool and RoIAlign in NumPy, forward and backward", "04_roialign.ipynb",
        "Mask R-CNN §3 ('RoIAlign'), Table 2c; Fast R-CNN §2.1 (RoI pooling)",
        parts=("minimaskrcnn/ops/roi_align.py::_point_reads", "minimaskrcnn/ops/roi_align.py::_simple_forward",
               "minimaskrcnn/ops/roi_align.py::_simple_backward", "minimaskrcnn/ops/roi_pool.py::_bins",
               "minimaskrcnn/ops/roi_pool.py::_bin_edges", "minimaskrcnn/ops/roi_pool.py::_numpy_forward",
               "minimaskrcnn/ops/roi_pool.py::roi_pool_backward"),
        tests=("tests/test_roi_ops.py",), hidden=("tests/hidden/test_a6_roi_ops.py",),
        goals=("RoIPool's two roundings (the RoI to whole cells, its bins to whole cells) and its max/argmax",
               "RoIAlign without rounding: bilinear reads at regular sample points, averaged (or maxed) per bin, "
               "from the geometry tables of ops/roi_align.py (where the points are, their neighbours, weights)",
               "both backward passes as one scatter-add: the gradient goes back along the forward's reads",
               "torchvision's conventions: aligned=False/True, adaptive sampling, the border rules"),
        prerequisites=("notebook 04 §1 'RoIPool's two roundings, by hand', §2 'Where each operator reads', §6 "
                       "'Gradients'",
                       "ops/reference.py: RoIAlign and RoIPool as plain loops (the definition)",
                       "ops/roi_align.py's module docstring, _sample_points and _neighbours (given)"),
        minutes=180, difficulty="hard",
        independent=("tests/test_roi_ops.py::test_roi_align_matches_torchvision[3x4-2-False-numpy]",
                     "tests/test_roi_ops.py::test_roi_sample_points_are_where_roi_align_reads",
                     "tests/test_masks.py::test_fixture_project") + INDEPENDENT),
    Assignment(
        "A7", "The RoIAlign backward CUDA kernel (bilinear weights, atomicAdd)", "04_roialign.ipynb",
        "Mask R-CNN §3 ('RoIAlign')",
        parts=("minimaskrcnn/ops/kernels/roi_align.cu::roi_align_backward",),
        tests=("tests/test_roi_align_kernel.py",), hidden=("tests/hidden/test_a7_roi_align_kernel.py",),
        goals=("one GPU thread per output gradient, scattered to the 4 bilinear neighbours of every sample",
               "why the scatter needs atomicAdd", "avg and max modes route the gradient differently"),
        prerequisites=("notebook 04 §5 'The CUDA kernel, run on a CPU' and §6 'Gradients'",
                       "the forward kernel in the same file", "a C++ compiler (g++ or clang++)"),
        minutes=90, difficulty="hard", independent=INDEPENDENT),
    Assignment(
        "A8", "Mask targets and the mask loss, forward and backward", "05_heads_and_masks.ipynb",
        "Mask R-CNN §3 ('Mask Representation', L_mask), §3.1 ('Training')",
        parts=("minimaskrcnn/ops/masks.py::project_masks_on_boxes",
               "minimaskrcnn/model/losses.py::maskrcnn_loss_forward",
               "minimaskrcnn/model/losses.py::maskrcnn_loss_backward"),
        tests=("tests/test_losses.py", "tests/test_masks.py"), hidden=("tests/hidden/test_a8_masks.py",),
        goals=("the m x m target: the GT mask cropped to the RoI and resampled, by RoIAlign over the GT masks",
               "L_mask: per-pixel sigmoid BCE on the GT class's map only, positives only: classes do not compete",
               "the gradient is exactly zero on every other class's map"),
        prerequisites=("notebook 05 §4 'Mask targets: the GT mask, seen through the RoI' and §5 'One sigmoid per "
                       "class, or a softmax across classes?'",
                       "notebook 04 (RoIAlign); nn/losses.py's binary_cross_entropy_with_logits_* (notebook 01)"),
        minutes=75, difficulty="medium",
        independent=("tests/test_losses.py::test_maskrcnn_loss_values_against_a_loop[softmax]",
                     "tests/test_masks.py::test_project_edge_cases") + INDEPENDENT[1:]),
    Assignment(
        "A9", "SGD with momentum and weight decay; warm-up + step schedule", "06_training.ipynb",
        "Mask R-CNN §3.1 ('Training'); Goyal et al. 2017 (warm-up)",
        parts=("minimaskrcnn/nn/optim.py::SGD.step", "minimaskrcnn/nn/optim.py::WarmupMultiStepLR.__call__"),
        tests=("tests/test_module_optim.py",), hidden=("tests/hidden/test_a9_optim.py",),
        goals=("PyTorch's momentum rule: weight decay enters the velocity", "linear warm-up, then drops by 10x"),
        prerequisites=("notebook 06 §3 'The learning-rate schedule' and §4 'The update'",),
        minutes=45, difficulty="easy",
        independent=INDEPENDENT),
    Assignment(
        "A10", "COCO AP from scratch: matching, precision envelope, 101-point interpolation",
        "07_inference_and_evaluation.ipynb", "Mask R-CNN §4 (COCO AP); Lin et al. 2014 (COCO)",
        parts=("minimaskrcnn/engine/coco_ap.py::match_detections",
               "minimaskrcnn/engine/coco_ap.py::precision_envelope",
               "minimaskrcnn/engine/coco_ap.py::interpolated_precision"),
        tests=("tests/test_coco_ap.py",), hidden=("tests/hidden/test_a10_coco_ap.py",),
        goals=("greedy matching of detections to ground truth in score order, crowd regions ignored",
               "the precision envelope and COCO's 101 recall points", "AP@[.5:.95] equal to COCOeval's"),
        prerequisites=("notebook 07 §2 'COCO AP, by hand'",), minutes=120, difficulty="medium",
        independent=INDEPENDENT),
)

BY_ID = {a.id: a for a in CATALOGUE}


class ClassroomError(ValueError):
    """A problem with a classroom command's input, reported in one line."""


class UnknownAssignment(ClassroomError):
    pass


def get(assignment_id: str, enabled_only: bool = True) -> Assignment:
    a = BY_ID.get(assignment_id) or BY_ID.get(assignment_id.upper())
    if a is None:
        raise UnknownAssignment(f"unknown assignment {assignment_id!r}; the catalogue has "
                                f"{', '.join(BY_ID)} (python -m minimaskrcnn classroom list)")
    if enabled_only and not a.enabled:
        raise UnknownAssignment(f"assignment {a.id} is planned but not released yet: {a.note}")
    return a


def enabled() -> list[Assignment]:
    return [a for a in CATALOGUE if a.enabled]


__all__ = ["Assignment", "CATALOGUE", "BY_ID", "get", "enabled", "UnknownAssignment", "ClassroomError"]
