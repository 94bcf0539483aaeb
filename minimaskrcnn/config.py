"""Model configurations: one dataclass with every knob, and the named configurations built from it.

- :func:`tiny`: a small ResNet-FPN that trains on a laptop CPU on 128 px images (the demo).
- :func:`resnet18_fpn`: torchvision's ``MaskRCNN(resnet_fpn_backbone('resnet18'))``, same architecture.
- :func:`r50_fpn`: the paper's ResNet-50-FPN, torchvision's ``maskrcnn_resnet50_fpn`` (its weights load 1:1).
- :func:`r50_c4`: the paper's ResNet-50-C4 (res5 as the RoI head, 14x14 masks).
- :func:`r50_fpn_keypoints`: the paper's §5 keypoint model, torchvision's ``keypointrcnn_resnet50_fpn``.
- :func:`tiny_keypoints`: :func:`tiny` with a keypoint branch (and its mask branch: Table 5's keypoint & mask).
- :func:`tiny_c4`, :func:`tiny_c5`: small single-level models (stride 16: C4 + res5 head; stride 32: C5 + the FPN
  heads) for the paper's Table 2 ablations on a CPU (``python -m minimaskrcnn ablate``).

Defaults are torchvision's, which follow the paper (§3.1) and Detectron.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class MaskRCNNConfig:
    num_classes: int                                  # including the background class 0
    # backbone (paper §3 "Network Architecture")
    architecture: str = "fpn"                         # 'fpn', 'c4' or 'c5' (one map at stride 32, Table 2d)
    depth: int = 50
    groups: int = 1                                   # ResNeXt cardinality
    width_per_group: int = 64
    norm: str = "frozen_bn"                           # 'frozen_bn' | 'bn' | 'gn'
    stage_widths: tuple = (64, 128, 256, 512)
    stem_channels: int = 64
    frozen_stages: int = 2                            # stem + layer1 frozen (torchvision's trainable_layers=3)
    fpn_channels: int = 256
    fpn_norm: str | None = None
    # anchors: areas 32^2..512^2 on P2..P6, ratios 1:2, 1:1, 2:1
    anchor_sizes: tuple = ((32,), (64,), (128,), (256,), (512,))
    aspect_ratios: tuple = (0.5, 1.0, 2.0)
    # RPN
    rpn_conv_depth: int = 1
    rpn_pre_nms_top_n: tuple = (2000, 1000)           # (training, testing), per level
    rpn_post_nms_top_n: tuple = (2000, 1000)          # (training, testing), per image
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_score_thresh: float = 0.0
    # RoI heads
    roi_op: str = "align"                             # 'align' | 'warp' | 'pool' (Table 2c)
    roi_mode: str | None = None                       # 'avg' | 'max' | None: the op's own (pool: max, else avg)
    roi_aligned: bool = False                         # torchvision's default; Detectron2 uses True
    roi_impl: str = "numpy"                           # 'numpy' | 'simple' (readable NumPy) | 'kernel'
    sampling_ratio: int = 2
    box_pool_size: int = 7
    mask_pool_size: int = 14
    representation_size: int = 1024
    mask_layers: tuple = (256, 256, 256, 256)
    mask_dim_reduced: int = 256
    mask_head: str = "fcn"                            # 'fcn' (paper) or 'mlp' (Table 2e)
    mask_loss: str = "sigmoid"                        # 'sigmoid' (paper) or 'softmax' (Table 2b)
    class_agnostic_masks: bool = False
    mask_on: bool = True                              # False: no mask branch (Faster R-CNN / keypoint-only)
    # keypoint branch (paper §5): RoIAlign 14x14, len(keypoint_layers) 3x3 convs, deconv, 2x bilinear -> 56x56
    keypoint_on: bool = False
    num_keypoints: int = 17
    keypoint_layers: tuple = (512,) * 8
    keypoint_pool_size: int = 14
    keypoint_names: tuple = ()                        # the data set's names and skeleton (1-based pairs), kept
    keypoint_skeleton: tuple = ()                     # with checkpoints for drawing and evaluation
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections_per_img: int = 100
    # input (torchvision's GeneralizedRCNNTransform)
    min_size: int = 800
    max_size: int = 1333
    image_mean: tuple = IMAGENET_MEAN
    image_std: tuple = IMAGENET_STD
    size_divisible: int = 32
    # training schedule (paper §3.1 for 16 images per batch: lr 0.02, momentum 0.9, weight decay 1e-4)
    images_per_batch: int = 2
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_factor: float = 1.0 / 1000
    lr_steps: tuple = (120000,)
    max_iters: int = 160000
    hflip_prob: float = 0.5
    dtype: str = "float32"
    seed: int = 0
    class_names: tuple = field(default=())

    def __post_init__(self):
        choices = {"architecture": ("fpn", "c4", "c5"), "norm": ("frozen_bn", "bn", "gn"),
                   "roi_op": ("align", "warp", "pool"), "roi_impl": ("numpy", "simple", "kernel"),
                   "mask_head": ("fcn", "mlp"),
                   "mask_loss": ("sigmoid", "softmax"), "dtype": ("float32", "float64")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"config.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.roi_mode not in (None, "avg", "max"):
            raise ValueError(f"config.roi_mode must be None, 'avg' or 'max', got {self.roi_mode!r}")
        if self.num_classes < 2:
            raise ValueError(f"config.num_classes counts the background too, so it must be >= 2, "
                             f"got {self.num_classes}")
        if self.keypoint_on and self.architecture != "fpn":
            raise ValueError("config: the keypoint branch is built for the FPN architecture (keypoint_on with "
                             f"architecture={self.architecture!r})")
        if self.keypoint_on and self.keypoint_names and len(self.keypoint_names) != self.num_keypoints:
            raise ValueError(f"config: {len(self.keypoint_names)} keypoint_names for num_keypoints="
                             f"{self.num_keypoints}")
        if self.mask_loss == "softmax" and self.class_agnostic_masks:
            raise ValueError("config: mask_loss='softmax' classifies each pixel among the classes, which needs a "
                             "mask per class; it cannot be combined with class_agnostic_masks=True")

    def replace(self, **changes) -> "MaskRCNNConfig":
        """A copy with some fields changed; unknown names raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MaskRCNNConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(unknown)}")
        # JSON turns tuples into lists; turn them back (nested, for anchor_sizes)
        def tup(v):
            return tuple(tup(x) for x in v) if isinstance(v, list) else v
        return cls(**{k: tup(v) for k, v in d.items()})


def _with(cfg: MaskRCNNConfig, overrides: dict) -> MaskRCNNConfig:
    return cfg.replace(**overrides) if overrides else cfg


def r50_fpn(num_classes: int = 91, **overrides) -> MaskRCNNConfig:
    """ResNet-50-FPN (paper Table 2a, 2e): torchvision's ``maskrcnn_resnet50_fpn`` with frozen BN."""
    return _with(MaskRCNNConfig(num_classes=num_classes), overrides)


def r50_c4(num_classes: int = 81, **overrides) -> MaskRCNNConfig:
    """ResNet-50-C4: RPN and RoIAlign on C4 (stride 16), res5 as the RoI head, 14x14 masks; 64 RoIs per
    image for training, 300 proposals at test (paper §3.1); anchors of 5 sizes x 3 ratios on C4."""
    cfg = MaskRCNNConfig(num_classes=num_classes, architecture="c4", anchor_sizes=((32, 64, 128, 256, 512),),
                         rpn_pre_nms_top_n=(12000, 6000), rpn_post_nms_top_n=(2000, 300),
                         box_batch_size_per_image=64, mask_pool_size=14, box_pool_size=14, mask_dim_reduced=256)
    return _with(cfg, overrides)


def resnet18_fpn(num_classes: int, min_size: int = 800, max_size: int = 1333, **overrides) -> MaskRCNNConfig:
    """torchvision's ``MaskRCNN(resnet_fpn_backbone('resnet18', weights=None), num_classes)``: ResNet-18
    with frozen BN, stem + layer1 frozen, FPN 256, the standard heads."""
    cfg = MaskRCNNConfig(num_classes=num_classes, depth=18, min_size=min_size, max_size=max_size)
    return _with(cfg, overrides)


def tiny(num_classes: int, **overrides) -> MaskRCNNConfig:
    """A small ResNet-FPN for learning on a CPU with 128 px images (the demo's model).

    Trained from scratch, so BN is trainable (batch statistics) and nothing is frozen; channels are
    narrow, anchors start at 16 px (objects on 128 px images are small), and fewer proposals and RoIs are
    used: every choice trades a little accuracy for a lot of speed on 2 CPU cores. The demo's schedule:
    2,800 iterations, lr / 10 at 1,900 (the same run stopped at 2,400 reached mask AP 0.698, at 2,800 0.706;
    bench/RESULTS.md).
    """
    cfg = MaskRCNNConfig(
        num_classes=num_classes, depth=18, norm="bn", stage_widths=(16, 32, 64, 128), stem_channels=16,
        frozen_stages=0, fpn_channels=64, anchor_sizes=((16,), (32,), (64,), (128,), (256,)),
        rpn_pre_nms_top_n=(600, 300), rpn_post_nms_top_n=(300, 150), rpn_batch_size_per_image=128,
        representation_size=256, mask_layers=(32, 32), mask_dim_reduced=32, box_batch_size_per_image=128,
        min_size=128, max_size=128, images_per_batch=4, lr=0.02, warmup_iters=100, lr_steps=(1900,),
        max_iters=2800, detections_per_img=30)
    return _with(cfg, overrides)


def r50_fpn_keypoints(num_classes: int = 2, **overrides) -> MaskRCNNConfig:
    """The paper's §5 keypoint model, torchvision's ``keypointrcnn_resnet50_fpn``: ResNet-50-FPN, person vs
    background, no mask branch (Table 5 "keypoint-only"; ``mask_on=True`` gives "keypoint & mask"), 17 COCO
    keypoints from 8 x 512 3x3 convs on RoIAlign 14x14, 56x56 heatmaps."""
    return _with(MaskRCNNConfig(num_classes=num_classes, keypoint_on=True, mask_on=False,
                                **_coco_keypoints(overrides)), overrides)


def tiny_keypoints(num_classes: int = 2, **overrides) -> MaskRCNNConfig:
    """:func:`tiny` with a keypoint branch of 4 x 32-channel convs (56x56 heatmaps as the paper), beside the
    mask branch, for the synthetic pose set on 2 CPU cores (the keypoint demo): 1,300 iterations of 4 images,
    lr / 10 at 1,050. An iteration costs ~1.65x the mask demo's (0.53 s on 2 quiet cores), so the demo fits its
    15 minutes; 1,800 iterations took 17 minutes."""
    return tiny(num_classes, **{"keypoint_on": True, "keypoint_layers": (32,) * 4, "max_iters": 1300,
                                "lr_steps": (1050,), **_coco_keypoints(overrides), **overrides})


def _coco_keypoints(overrides: dict) -> dict:
    """COCO's 17 person keypoints and skeleton: the keypoint configs' defaults (a run on other data replaces
    them with the data's, ``engine.run.run_config``), so a converted COCO checkpoint draws its skeletons. None
    when ``overrides`` ask for another number of keypoints."""
    from .data.keypoints import COCO_PERSON_KEYPOINTS, COCO_PERSON_SKELETON
    if overrides.get("num_keypoints", len(COCO_PERSON_KEYPOINTS)) != len(COCO_PERSON_KEYPOINTS):
        return {}
    return {"keypoint_names": COCO_PERSON_KEYPOINTS, "keypoint_skeleton": COCO_PERSON_SKELETON}


def tiny_c4(num_classes: int, **overrides) -> MaskRCNNConfig:
    """:func:`tiny`'s ResNet as a C4 model (:func:`r50_c4`'s design): RPN and RoI pooling on the one stride-16
    map, res5 (128 channels) as the RoI head, 14x14 masks. Table 2b/2c's setting. res5 runs on every sampled RoI
    and is most of an iteration's time on a CPU, so 16 RoIs are sampled per image (64 per batch of 4; the paper's
    C4: 64 per image, 2 images per GPU) and 100 proposals are kept at test (the paper's C4 keeps 300 where FPN
    keeps 1000; ``tiny`` keeps 150)."""
    t = tiny(num_classes)
    cfg = r50_c4(num_classes, depth=18, norm="bn", stage_widths=t.stage_widths, stem_channels=t.stem_channels,
                 frozen_stages=0, anchor_sizes=((16, 32, 64, 128),), rpn_pre_nms_top_n=(600, 300),
                 rpn_post_nms_top_n=(300, 100), rpn_batch_size_per_image=128, mask_dim_reduced=32,
                 box_batch_size_per_image=16, min_size=t.min_size, max_size=t.max_size,
                 images_per_batch=t.images_per_batch, lr=t.lr, warmup_iters=t.warmup_iters, lr_steps=t.lr_steps,
                 max_iters=t.max_iters, detections_per_img=t.detections_per_img)
    return _with(cfg, overrides)


def tiny_c5(num_classes: int, **overrides) -> MaskRCNNConfig:
    """:func:`tiny` without the pyramid: RPN and RoI pooling on C5 alone (stride 32) and FPN's heads (2 fc box
    head, FCN mask head, 28x28 masks), as the paper's Table 2d ("the res5 head is not applicable")."""
    return tiny(num_classes, **{"architecture": "c5", "anchor_sizes": ((16, 32, 64, 128),), **overrides})


CONFIGS = {"tiny": tiny, "resnet18_fpn": resnet18_fpn, "r50_fpn": r50_fpn, "r50_c4": r50_c4, "tiny_c4": tiny_c4,
           "tiny_c5": tiny_c5, "tiny_keypoints": tiny_keypoints, "r50_fpn_keypoints": r50_fpn_keypoints}


def get_config(name: str, num_classes: int, **overrides) -> MaskRCNNConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose one of {', '.join(CONFIGS)}")
    return CONFIGS[name](num_classes=num_classes, **overrides)
