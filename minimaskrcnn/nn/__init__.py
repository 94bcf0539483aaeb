"""Hand-written layers: functional ``*_forward`` / ``*_backward`` pairs (``minimaskrcnn.nn.functional``) and
thin Modules around them, the optimizer and the gradient checker."""
from . import functional, init
from .activation import ReLU
from .conv import Conv2d, ConvTranspose2d
from .gradcheck import check_directional, check_gradient, numerical_gradient, rel_error
from .linear import Flatten, Linear
from .module import Module, ModuleList, Parameter, Sequential, load_npz, save_npz
from .norm import BatchNorm2d, FrozenBatchNorm2d, GroupNorm, SyncBatchNorm, convert_sync_batchnorm
from .optim import SGD, WarmupMultiStepLR
from .pool import MaxPool2d

__all__ = ["functional", "init", "Module", "ModuleList", "Parameter", "Sequential", "save_npz", "load_npz",
           "Conv2d", "ConvTranspose2d", "Linear", "Flatten", "ReLU", "MaxPool2d", "BatchNorm2d",
           "FrozenBatchNorm2d", "GroupNorm", "SyncBatchNorm", "convert_sync_batchnorm", "SGD", "WarmupMultiStepLR",
           "rel_error", "numerical_gradient",
           "check_gradient", "check_directional"]
