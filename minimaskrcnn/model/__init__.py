"""The networks: ResNet + FPN (or C4) backbone, RPN, RoI heads, their losses, the input transform, and Mask
R-CNN assembled from them. ``build_model(config)`` is the entry point."""
from .mask_rcnn import MaskRCNN, build_maskrcnn_fpn
from .mask_rcnn_c4 import build_maskrcnn_c4, build_maskrcnn_c5


def build_model(config) -> MaskRCNN:
    """The model a config describes (FPN or C4 architecture), with the weights ``config.seed`` gives."""
    if config.architecture == "fpn":
        return build_maskrcnn_fpn(config)
    if config.architecture == "c4":
        return build_maskrcnn_c4(config)
    if config.architecture == "c5":
        return build_maskrcnn_c5(config)
    raise ValueError(f"unknown architecture {config.architecture!r} (expected 'fpn', 'c4' or 'c5')")


__all__ = ["MaskRCNN", "build_maskrcnn_c4", "build_maskrcnn_c5", "build_maskrcnn_fpn", "build_model"]
