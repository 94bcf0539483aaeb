"""The networks: ResNet + FPN backbone, RPN, RoI heads, and Mask R-CNN assembled."""
from .mask_rcnn import MaskRCNN
from .mask_rcnn_c4 import MaskRCNNC4


def build_model(config):
    """The model a config describes (FPN or C4 architecture)."""
    if config.architecture == "fpn":
        return MaskRCNN(config)
    if config.architecture == "c4":
        return MaskRCNNC4(config)
    raise ValueError(f"unknown architecture {config.architecture!r} (expected 'fpn' or 'c4')")


__all__ = ["MaskRCNN", "MaskRCNNC4", "build_model"]
