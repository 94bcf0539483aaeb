"""Matcher: assign each prediction (anchor or proposal) to a ground-truth box, or to none, by IoU.

The RPN labels an anchor positive if its IoU with some GT box is >= 0.7, negative if its best IoU is < 0.3,
and ignores it otherwise; in addition, for each GT box the anchor(s) with the highest IoU are positive
even below 0.7, so that every GT box gets at least one anchor (Faster R-CNN §3.1.2). The box and mask
heads use one threshold, 0.5: a RoI is positive with IoU >= 0.5 and background otherwise (Mask R-CNN §3.1).

This is torchvision's ``models.detection._utils.Matcher``, including its treatment of ties.
"""
from __future__ import annotations

from ..backend import get_xp


class Matcher:
    """Match predictions to ground truth given a ``(G, N)`` quality (IoU) matrix.

    Args:
        high_threshold: a best IoU ``>= high_threshold`` is a match.
        low_threshold: a best IoU ``< low_threshold`` is ``BELOW_LOW_THRESHOLD`` (-1, a negative);
            in ``[low, high)`` it is ``BETWEEN_THRESHOLDS`` (-2, ignored by the RPN loss).
        allow_low_quality_matches: also match, for every GT box, each prediction whose IoU with it equals
            that GT box's best IoU (ties included) to the prediction's own best GT box.

    ``matcher(match_quality_matrix)`` returns ``(N,)`` int64: a GT index in ``[0, G)``, -1 or -2.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False):
        if low_threshold > high_threshold:
            raise ValueError(f"low_threshold ({low_threshold}) must be <= high_threshold ({high_threshold})")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __repr__(self):
        return (f"Matcher(high_threshold={self.high_threshold}, low_threshold={self.low_threshold}, "
                f"allow_low_quality_matches={self.allow_low_quality_matches})")

    def __call__(self, match_quality_matrix):
        """Args: match_quality_matrix (G, N), entry ``[g, n]`` the IoU of GT ``g`` and prediction ``n``.

        Returns: (N,) int64 matches.

        Empty inputs (torchvision raises on both): with no GT box (G = 0) every prediction is
        ``BELOW_LOW_THRESHOLD``, i.e. background, which is what torchvision's RPN and RoI heads do for an
        image without objects; with no prediction (N = 0) the result is empty.
        """
        m = match_quality_matrix
        if not hasattr(m, "ndim") or m.ndim != 2:
            raise ValueError(f"match_quality_matrix must have shape (num_gt, num_predictions), got "
                             f"{getattr(m, 'shape', type(m).__name__)}")
        xp = get_xp(m)
        num_gt, num_pred = m.shape
        if num_gt == 0 or num_pred == 0:
            return xp.full((num_pred,), self.BELOW_LOW_THRESHOLD, dtype=xp.int64)
        if bool(xp.isnan(m).any()):
            raise ValueError("match_quality_matrix contains NaN (an IoU between two zero-area boxes?); "
                             "remove empty boxes first")

        # Best GT for each prediction (the first one on ties, as torch.max(dim=0)).
        all_matches = m.argmax(axis=0)
        matched_vals = m.max(axis=0)
        matches = all_matches.astype(xp.int64)
        matches[matched_vals < self.low_threshold] = self.BELOW_LOW_THRESHOLD
        matches[(matched_vals >= self.low_threshold) & (matched_vals < self.high_threshold)] = \
            self.BETWEEN_THRESHOLDS

        if self.allow_low_quality_matches:
            # For each GT, every prediction reaching that GT's best IoU (ties included) gets its best GT
            # back. Note: that best GT may be another GT box than the one whose maximum was hit, and a GT
            # with no overlapping prediction at all (best IoU 0) revives every prediction - a quirk of the
            # torchvision/Detectron rule kept here for exactness.
            highest_quality_foreach_gt = m.max(axis=1)
            hit = (m == highest_quality_foreach_gt[:, None]).any(axis=0)
            matches[hit] = all_matches[hit]
        return matches
