"""Typical wrong solutions, kept as test data: ``classroom check`` puts each into a copy of the solution and
requires it to score below full marks, so the graded tests provably tell right from wrong.

Each entry is ``(file, snippet of the solution, wrong replacement, what a student got wrong)``; the
snippet must occur exactly once in the file and inside the assignment's solution regions. This folder is
the graders' (never released): the snippets are solution code.
"""

NORM, FPN = "minimaskrcnn/nn/norm.py", "minimaskrcnn/model/fpn.py"
ANCHORS, BOXES = "minimaskrcnn/ops/anchors.py", "minimaskrcnn/ops/boxes.py"
KERNEL, OPTIM = "minimaskrcnn/ops/kernels/roi_align.cu", "minimaskrcnn/nn/optim.py"
COCO_AP = "minimaskrcnn/engine/coco_ap.py"
CONV, LOSSES, MASKS = "minimaskrcnn/nn/conv.py", "minimaskrcnn/model/losses.py", "minimaskrcnn/ops/masks.py"
ROI_ALIGN, ROI_POOL = "minimaskrcnn/ops/roi_align.py", "minimaskrcnn/ops/roi_pool.py"

MUTANTS = {
    "A1": [
        (CONV, "win = as_strided(x, (N, C, kh, kw, Ho, Wo), (s0, s1, s2 * dh, s3 * dw, s2 * sh, s3 * sw))",
         "win = as_strided(x, (N, kh, kw, C, Ho, Wo), (s0, s2 * dh, s3 * dw, s1, s2 * sh, s3 * sw))",
         "im2col with the wrong row order: kernel taps outside, channels inside"),
        (CONV, "out[:, :, y0:y0 + sh * (Ho - 1) + 1:sh, x0:x0 + sw * (Wo - 1) + 1:sw] += cols[:, :, i, j]",
         "out[:, :, y0:y0 + sh * (Ho - 1) + 1:sh, x0:x0 + sw * (Wo - 1) + 1:sw] = cols[:, :, i, j]",
         "col2im overwrites where overlapping windows should add up"),
        (CONV, "dw = xp.matmul(d3, cols.swapaxes(-1, -2)).sum(axis=0).reshape(w.shape)",
         "dw = xp.matmul(d3, cols.swapaxes(-1, -2))[0].reshape(w.shape)",
         "weight gradient of the first image only (not summed over the batch)"),
    ],
    "A2": [
        (NORM, "    dx = (m * dxhat - dxhat.sum(axis=axes).reshape(shape)\n",
         "    dx = (m * dxhat\n", "BN backward without the mean term"),
        # batch_norm_forward's line (SyncBN has the same one at another indent)
        (NORM, "\n            running_var += momentum * var * (m / (m - 1))",
         "\n            running_var += momentum * var",
         "running variance updated with the biased batch variance"),
        (NORM, "scale = weight * (1.0 / xp.sqrt(running_var + eps))", "scale = weight * (1.0 / xp.sqrt(running_var))",
         "frozen BN without eps"),
    ],
    "A3": [
        (FPN, "d_inner[k + 1] = d_inner[k + 1] + upsample_nearest_backward(d_inner[k], ups[k])",
         "d_inner[k + 1] = upsample_nearest_backward(d_inner[k], ups[k])",
         "the upsampled gradient overwrites the level's own instead of adding to it"),
        (FPN, "        for k in range(n - 1):\n", "        for k in reversed(range(n - 1)):\n",
         "top-down backward from coarse to fine: a level passes on its gradient before it is complete"),
        (FPN, "inner[k] = lateral + top_down", "inner[k] = lateral",
         "no top-down signal: every level sees only its own lateral"),
    ],
    "A4": [
        (ANCHORS, "h_ratios = np.sqrt(aspect_ratios)", "h_ratios = 1 / np.sqrt(aspect_ratios)",
         "aspect ratio taken as width / height"),
        (ANCHORS, "np.arange(grid_h) * stride_h, np.arange(grid_w) * stride_w",
         "(np.arange(grid_h) + 0.5) * stride_h, (np.arange(grid_w) + 0.5) * stride_w",
         "anchors centred on the cell centres (half-stride offset) instead of torchvision's corners"),
        (BOXES, "dw = ww * xp.log(gt_widths / ex_widths)", "dw = xp.log(gt_widths / ex_widths)",
         "encode forgets the size weights"),
        (BOXES, "half_w = 0.5 * (xp.exp(dw) * widths[:, None])", "half_w = xp.exp(dw) * widths[:, None]",
         "decode adds the whole width on each side"),
    ],
    "A5": [
        (LOSSES, "regression_targets[positive], beta,\n                                            normalizer=S)",
         "regression_targets[positive], beta,\n"
         "                                            normalizer=max(int(positive.shape[0]), 1))",
         "box loss normalised by the positives only (torchvision divides by all sampled anchors)"),
        (LOSSES, "objectness[sampled], labels[sampled].astype(objectness.dtype), normalizer=S)",
         "objectness, (labels == 1).astype(objectness.dtype), normalizer=S)",
         "objectness loss over every anchor: the unsampled ones (-1) count as negatives"),
        (LOSSES, "d_deltas[cache.positive] = smooth_l1_backward(d_loss_box, cache.box_cache)",
         "d_deltas[cache.positive] = smooth_l1_backward(d_loss_objectness, cache.box_cache)",
         "backward scales the box gradient by the objectness loss's upstream gradient"),
    ],
    "A6": [
        (ROI_ALIGN, "value = reads[..., 0, 0, :] + reads[..., 0, 1, :] + reads[..., 1, 0, :] + reads[..., 1, 1, :]",
         "value = reads[..., 0, 0, :] + reads[..., 0, 1, :] + reads[..., 1, 0, :]",
         "a sample point's value misses its bottom-right bilinear neighbour"),
        (ROI_ALIGN, "grads = d * (weight / count[:, None, None, None, None, None, None])[..., None]",
         "grads = d * (weight * xp.asarray([[1.0, 1.0], [1.0, 0.0]]) / count[:, None, None, None, None, None, None])"
         "[..., None]", "backward (avg) forgets one bilinear weight: nothing reaches the bottom-right neighbour"),
        (ROI_ALIGN, "cell = (batch * H + rows) * W + cols", "cell = rows * W + cols",
         "every RoI reads the first image of the batch (the RoI's batch index ignored)"),
        (ROI_POOL, "corners = round_half_away_from_zero(rois[:, 1:] * dtype(spatial_scale)).astype(np.int64)",
         "corners = xp.round(rois[:, 1:] * dtype(spatial_scale)).astype(np.int64)",
         "RoIPool rounds halves to even (NumPy's round) instead of away from zero (C's)"),
        (ROI_POOL, "length = xp.maximum(end - start + 1, 1).astype(dtype)",
         "length = xp.maximum(end - start, 1).astype(dtype)",
         "RoIPool's rounded RoI excludes its last row and column (the end cell is inclusive)"),
    ],
    "A7": [
        (KERNEL, "        atomicAdd(plane + y1 * width + x1, grad * w4 / divisor);\n", "",
         "backward forgets the fourth bilinear neighbour"),
        (KERNEL, "    T divisor = g.count;", "    T divisor = (T)1.0;",
         "avg mode not divided by the number of sample points"),
        (KERNEL, "atomicAdd(plane + y0 * width + x1, grad * w2 / divisor);",
         "atomicAdd(plane + y1 * width + x0, grad * w2 / divisor);",
         "the top-right weight sent to the bottom-left neighbour"),
    ],
    "A10": [
        (COCO_AP, "if ious[d, g] < best_iou:", "if ious[d, g] <= best_iou:",
         "an IoU equal to the threshold does not match"),
        (COCO_AP, "        gt_taken[m] = True\n", "",
         "a ground-truth box can be matched twice: duplicates count as true positives"),
        (COCO_AP, "return np.maximum.accumulate(precision[::-1])[::-1].copy()", "return precision.copy()",
         "no precision envelope (the raw zig-zag curve is sampled)"),
        (COCO_AP, 'idx = np.searchsorted(recall, recall_thresholds, side="left")',
         'idx = np.searchsorted(recall, recall_thresholds, side="right")',
         "a recall point is read after the detection that reaches it"),
    ],
    "A8": [
        (LOSSES, "binary_cross_entropy_with_logits_forward(mask_logits[xp.arange(P), channels],\n"
                 "                                                                    mask_targets, normalizer=pixels)",
         "binary_cross_entropy_with_logits_forward(mask_logits,\n"
         "                                                                    xp.broadcast_to(mask_targets[:, None], "
         "mask_logits.shape), normalizer=pixels)", "mask loss over every class's map instead of the GT class's"),
        (LOSSES, "    d[xp.arange(P), cache.channels] = d_selected\n", "    d[:] = d_selected[:, None]\n",
         "backward sends the GT map's gradient to every class's map"),
        (MASKS, "rois = xp.concatenate([matched_idxs[:, None].astype(dtype),",
         "rois = xp.concatenate([xp.zeros_like(matched_idxs)[:, None].astype(dtype),",
         "every RoI cropped from the first GT mask instead of its matched one"),
        (MASKS, "aligned=False, impl=impl)", "aligned=True, impl=impl)",
         "targets sampled half a pixel off (aligned=True; torchvision's targets use aligned=False)"),
    ],
    "A9": [
        (OPTIM, "                g = g + self.weight_decay * p.data\n",
         "                p.data -= self.lr * self.weight_decay * p.data\n",
         "weight decay applied outside the momentum buffer"),
        (OPTIM, "drops = sum(1 for s in self.steps if it >= s)", "drops = sum(1 for s in self.steps if it > s)",
         "learning rate drops one iteration late (> instead of >=)"),
        (OPTIM, "factor = self.warmup_factor * (1 - alpha) + alpha", "factor = self.warmup_factor * alpha",
         "warm-up that starts from zero instead of warmup_factor"),
    ],
}
