"""Detection operators: boxes, anchors, matching, NMS, RoI pooling (RoIPool / RoIWarp / RoIAlign), masks."""
