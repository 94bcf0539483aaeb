"""minimaskrcnn: Mask R-CNN (He, Gkioxari, Dollar, Girshick, ICCV 2017) from scratch in NumPy.

Every layer has an explicit forward and backward pass; CuPy arrays run the same code on a GPU.
"""
__version__ = "0.1.0"
