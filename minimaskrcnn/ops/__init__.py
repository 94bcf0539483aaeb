"""Detection operators: boxes, anchors, matching, NMS, RoI pooling (RoIPool / RoIWarp / RoIAlign), masks."""
from .anchors import AnchorGenerator
from .boxes import BoxCoder, batched_nms, box_area, box_iou, clip_boxes_to_image, nms, remove_small_boxes
from .masks import paste_masks_in_image, project_masks_on_boxes
from .matcher import Matcher
from .poolers import LevelMapper, multiscale_roi_backward, multiscale_roi_forward
from .roi_align import roi_align_backward, roi_align_forward
from .roi_pool import roi_pool_backward, roi_pool_forward
from .roi_warp import roi_warp_backward, roi_warp_forward
from .sampler import BalancedPositiveNegativeSampler

__all__ = ["AnchorGenerator", "BoxCoder", "batched_nms", "box_area", "box_iou", "clip_boxes_to_image", "nms",
           "remove_small_boxes", "paste_masks_in_image", "project_masks_on_boxes", "Matcher", "LevelMapper",
           "multiscale_roi_forward", "multiscale_roi_backward", "roi_align_forward", "roi_align_backward",
           "roi_pool_forward", "roi_pool_backward", "roi_warp_forward", "roi_warp_backward",
           "BalancedPositiveNegativeSampler"]
