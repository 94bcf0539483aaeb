"""minimaskrcnn: Mask R-CNN (He, Gkioxari, Dollar, Girshick, ICCV 2017) from scratch in NumPy.

Every layer has an explicit forward and backward pass; CuPy arrays run the same code on a GPU.

    from minimaskrcnn import build_model, config
    model = build_model(config.tiny(num_classes=4))    # a MaskRCNN(backbone, rpn, roi_heads, transform)
"""
from . import config
from .model import MaskRCNN, build_model

__version__ = "0.1.0"
__all__ = ["MaskRCNN", "build_model", "config"]
