"""Every layer as a functional pair ``<op>_forward(...) -> (out, cache)`` / ``<op>_backward(dout, cache)``.

This module only gathers them; each lives beside its Module in its own file.
"""
from .activation import relu_backward, relu_forward
from .conv import (col2im, conv2d_backward, conv2d_forward, conv_output_size, conv_transpose2d_backward,
                   conv_transpose2d_forward, im2col)
from .linear import linear_backward, linear_forward
from .losses import (binary_cross_entropy_with_logits_backward, binary_cross_entropy_with_logits_forward,
                     l1_backward, l1_forward, smooth_l1_backward, smooth_l1_forward,
                     softmax_cross_entropy_backward, softmax_cross_entropy_forward)
from .norm import (batch_norm_backward, batch_norm_forward, frozen_batch_norm_backward, frozen_batch_norm_forward,
                   group_norm_backward, group_norm_forward, sync_batch_norm_backward, sync_batch_norm_forward)
from .pool import max_pool2d_backward, max_pool2d_forward
from .resample import upsample_nearest_backward, upsample_nearest_forward

__all__ = [
    "conv2d_forward", "conv2d_backward", "conv_transpose2d_forward", "conv_transpose2d_backward",
    "im2col", "col2im", "conv_output_size",
    "linear_forward", "linear_backward", "relu_forward", "relu_backward",
    "max_pool2d_forward", "max_pool2d_backward", "upsample_nearest_forward", "upsample_nearest_backward",
    "batch_norm_forward", "batch_norm_backward", "frozen_batch_norm_forward", "frozen_batch_norm_backward",
    "group_norm_forward", "group_norm_backward", "sync_batch_norm_forward", "sync_batch_norm_backward",
    "softmax_cross_entropy_forward", "softmax_cross_entropy_backward", "smooth_l1_forward", "smooth_l1_backward",
    "l1_forward", "l1_backward",
    "binary_cross_entropy_with_logits_forward", "binary_cross_entropy_with_logits_backward",
]
