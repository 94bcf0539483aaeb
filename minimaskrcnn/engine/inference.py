"""Run a model over a data set and score it with COCO's tools."""
from __future__ import annotations

from .evaluator import CocoEvaluator


def predict_dataset(model, dataset, batch_size: int = 8, progress: bool = True, desc: str = "predict"):
    """Predictions for every image of ``dataset`` (a CocoDataset), in dataset order.

    Holds every full-size mask of the split: for large images and sets, :func:`evaluate_model` with
    ``keep_masks`` keeps only what it needs."""
    return [p for _, p in _predictions(model, dataset, batch_size, progress, desc)]


def _predictions(model, dataset, batch_size, progress, desc):
    """Yields ``(index, prediction)`` batch by batch, so that a caller can drop each one once used."""
    from tqdm.auto import tqdm

    with tqdm(total=len(dataset), disable=not progress, desc=desc, dynamic_ncols=True) as bar:
        for start in range(0, len(dataset), batch_size):
            indices = range(start, min(start + batch_size, len(dataset)))
            images = [dataset.load_image(i) for i in indices]
            yield from zip(indices, model.predict(images))
            bar.update(len(images))


def model_iou_types(model) -> tuple:
    """What a model predicts, as COCOeval's iou types: 'bbox', plus 'segm' with a mask branch (a Faster R-CNN,
    ``mask_on=False``, has none: Table 3) and 'keypoints' with a keypoint branch (paper §5)."""
    heads = getattr(model, "roi_heads", None)
    if heads is None:                   # a stand-in with only predict(): boxes and masks, as before keypoints
        return ("bbox", "segm")
    return ("bbox",) + (("segm",) if heads.has_mask else ()) + (("keypoints",) if heads.has_keypoint else ())


def evaluate_model(model, dataset, batch_size: int = 8, out_dir=None, verbose: bool = True, progress: bool = True,
                   keep_masks: int | None = None, keypoint_sigmas=None):
    """COCO AP of ``model`` on ``dataset`` for boxes, masks and keypoints (those the model predicts; OKS
    sigmas: ``keypoint_sigmas``, or COCO's for COCO's person keypoints).

    Each image's masks are encoded to COCO's RLE as its prediction arrives (``CocoEvaluator.update``), so
    a split is scored without holding its full-size masks (one 2000x1500 image's 100 masks: ~300 MB as bool).

    Args:
        keep_masks: how many of the returned predictions keep their ``'masks'`` (the first ones, e.g. for a
            figure); None keeps them all (a notebook's few images). The others keep boxes, labels, scores.

    Returns ``(metrics, evaluator, predictions)``; ``metrics`` is ``{'bbox': {...}, 'segm': {...}}`` with
    COCOeval's 12 numbers each (``AP``, ``AP50``, ``AP75``, ...).
    """
    evaluator = CocoEvaluator.from_dataset(dataset, model_iou_types(model), keypoint_sigmas)
    preds = []
    for i, p in _predictions(model, dataset, batch_size, progress, desc="evaluate"):
        evaluator.update(dataset.image_ids[i], p)
        if keep_masks is not None and i >= keep_masks:
            p = {k: v for k, v in p.items() if k != "masks"}
        preds.append(p)
    return evaluator.evaluate(out_dir, verbose), evaluator, preds
