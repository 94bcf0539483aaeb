"""Run a model over a data set and score it with COCO's tools."""
from __future__ import annotations

import numpy as np

from .evaluator import evaluate_predictions


def predict_dataset(model, dataset, batch_size: int = 8, progress: bool = True, desc: str = "predict"):
    """Predictions for every image of ``dataset`` (a CocoDataset), in dataset order."""
    from tqdm.auto import tqdm

    preds = []
    indices = np.arange(len(dataset))
    with tqdm(total=len(dataset), disable=not progress, desc=desc, dynamic_ncols=True) as bar:
        for start in range(0, len(dataset), batch_size):
            images = [dataset.load_image(int(i)) for i in indices[start:start + batch_size]]
            preds += model.predict(images)
            bar.update(len(images))
    return preds


def evaluate_model(model, dataset, batch_size: int = 8, out_dir=None, verbose: bool = True, progress: bool = True):
    """COCO AP of ``model`` on ``dataset`` for boxes and masks.

    Returns ``(metrics, evaluator, predictions)``; ``metrics`` is ``{'bbox': {...}, 'segm': {...}}`` with
    COCOeval's 12 numbers each (``AP``, ``AP50``, ``AP75``, ...).
    """
    preds = predict_dataset(model, dataset, batch_size, progress, desc="evaluate")
    metrics, ev = evaluate_predictions(dataset, preds, out_dir, verbose)
    return metrics, ev, preds
