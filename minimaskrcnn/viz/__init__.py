"""Pictures: detections and masks over images, loss curves, precision-recall curves, RoI sampling grids."""
