"""COCO evaluation of boxes, masks and keypoints with pycocotools' COCOeval (Mask R-CNN's Tables 1-6).

COCO's AP ("AP" alone, or AP@[.5:.95]) averages, over the ten IoU thresholds 0.50, 0.55, ..., 0.95 and
over the categories, the area under an interpolated precision-recall curve sampled at 101 recall
levels. A detection is a true positive at threshold t when its IoU with a not-yet-matched ground-truth
object of its category is >= t (detections taken in decreasing score order; at most 100 per image).
Box IoU for ``'bbox'``, mask IoU for ``'segm'``. AP50 / AP75 fix t; APs / APm / APl keep objects of
area < 32^2, 32^2..96^2, > 96^2 pixels; AR is the recall with 1, 10 or 100 detections per image.

Predictions, one dict per image, in the *original* image's pixels (after ``postprocess_boxes`` and
mask pasting)::

    {'boxes': (D, 4) x1, y1, x2, y2,  'labels': (D,) contiguous labels 1..K,  'scores': (D,),
     'masks': (D, H, W) binary (bool / uint8; floats are thresholded at 0.5, as the paper binarises)}

become COCO results (``[{'image_id', 'category_id', 'bbox': [x, y, w, h], 'score'}, ...]`` for ``'bbox'``;
``'segmentation'`` as compressed RLE *instead of* ``'bbox'`` for ``'segm'``, so that COCOeval takes a mask
detection's area from its mask, as it does for the ground truth), are saved as JSON, and go through
``COCO.loadRes`` -> ``COCOeval.evaluate / accumulate / summarize``.

Keypoints (paper §5, ``'keypoints'``): a prediction's ``'keypoints'`` (D, K, 3) become results with the flat
``keypoints`` list and the box's score; COCOeval matches them to the ground truth by OKS, the object keypoint
similarity ``mean over labelled keypoints of exp(-d^2 / (2 s^2 k^2))`` (d: the distance to the GT keypoint,
s^2: the GT's area, k = 2 sigma: a per-keypoint tolerance), in place of IoU. The sigmas are COCO's for COCO's
17 person keypoints; any other keypoint set needs the user's (``keypoint_sigmas``). Its table has 10 numbers
(no small objects): AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
KP_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")
ALL_IOU_TYPES = ("bbox", "segm", "keypoints")


def prediction_to_coco_results(prediction: dict, image_id: int, label_to_cat_id: dict, iou_type: str,
                               image_size: tuple[int, int] | None = None) -> list[dict]:
    """One image's prediction dict -> a list of COCO result dicts for ``iou_type`` ('bbox' or 'segm').

    Boxes go from (x1, y1, x2, y2) to COCO's (x, y, w, h); labels back to the JSON's category ids; for
    'segm' each mask becomes compressed RLE (``counts`` as a str, so the list is JSON-ready) and the result
    has *no* ``'bbox'``: ``COCO.loadRes`` takes a detection's area (for APs / APm / APl) from its box when it
    has one, and from its mask only when it has none, so segm results with boxes are scored in the wrong
    area ranges (torchvision's and Detectron2's evaluators leave the box out for the same reason).
    ``image_size`` (H, W), when given, is checked against the masks.
    """
    from pycocotools import mask as mask_util

    if iou_type not in ALL_IOU_TYPES:
        raise ValueError(f"iou_type must be one of {ALL_IOU_TYPES}, got {iou_type!r}")
    boxes = np.asarray(prediction["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(prediction["scores"], dtype=np.float64).reshape(-1)
    labels = np.asarray(prediction["labels"]).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"prediction for image {image_id}: boxes {boxes.shape}, scores {scores.shape} and "
                         f"labels {labels.shape} must have the same length D")
    unknown = sorted(set(labels.tolist()) - set(label_to_cat_id))
    if unknown:
        raise ValueError(f"prediction for image {image_id}: labels {unknown} have no category id "
                         f"(known labels: {sorted(label_to_cat_id)})")
    results = [{"image_id": int(image_id), "category_id": int(label_to_cat_id[int(lab)]), "score": float(s)}
               for lab, s in zip(labels, scores, strict=True)]
    if iou_type == "keypoints":      # torchvision's evaluator: the flat [x, y, v] list and the box's score
        kps = np.asarray(prediction["keypoints"], np.float64)
        if kps.ndim != 3 or kps.shape[0] != len(results) or kps.shape[2] != 3:
            raise ValueError(f"prediction for image {image_id}: keypoints must be (D, K, 3) with D = {len(results)}, "
                             f"got {kps.shape}")
        for result, kp in zip(results, kps, strict=True):
            result["keypoints"] = [round(float(v), 3) for v in kp.reshape(-1)]
        return results
    if iou_type == "bbox":
        for result, (x1, y1, x2, y2) in zip(results, boxes, strict=True):
            result["bbox"] = [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
    elif results:
        masks = np.asarray(prediction["masks"])
        if masks.ndim == 4 and masks.shape[1] == 1:           # torchvision's (D, 1, H, W)
            masks = masks[:, 0]
        expected = (len(results), *(image_size or masks.shape[1:]))
        if masks.shape != expected:
            raise ValueError(f"prediction for image {image_id}: masks must be (D, H, W) = {expected}, "
                             f"got {masks.shape}")
        if masks.dtype.kind == "f":
            masks = masks > 0.5  # as the paper binarises and torchvision evaluates: prob > 0.5
        rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
        for result, rle in zip(results, rles, strict=True):
            result["segmentation"] = {"size": [int(s) for s in rle["size"]],
                                      "counts": rle["counts"].decode("ascii")}
    return results


def _empty_results(coco_gt):
    """What ``coco_gt.loadRes([])`` should return but cannot (pycocotools fails on an empty list):
    a results object with the ground truth's images and categories and no detections."""
    from pycocotools.coco import COCO

    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                       "categories": list(coco_gt.dataset["categories"]), "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


class CocoEvaluator:
    """Collect predictions image by image, then score them with COCOeval.

    Args:
        coco_gt: the ground truth, a ``pycocotools.coco.COCO`` (``CocoDataset.coco``).
        label_to_cat_id: contiguous label -> the JSON's category id (``CocoDataset.label_to_cat_id``).
        iou_types: any of 'bbox', 'segm', 'keypoints'.
        class_names: names indexed by label (``CocoDataset.class_names``), for the per-class table.
        keypoint_sigmas: OKS sigmas, one per keypoint ('keypoints'): None takes COCO's for COCO's 17 person
            keypoints and refuses other keypoint sets (``ValueError`` saying so).

    After :meth:`evaluate`: ``self.coco_eval[iou_type]`` is the COCOeval object, and
    ``self.precision[iou_type]`` the (T, R, K) precision at IoU thresholds ``self.iou_thresholds`` (T=10),
    recall levels ``self.recall_thresholds`` (R=101) and labels 1..K (all areas, 100 detections), -1 where
    a category has no ground truth: the PR curves of :func:`minimaskrcnn.viz.detections.plot_pr_curves`.
    """

    def __init__(self, coco_gt, label_to_cat_id: dict, iou_types=IOU_TYPES, class_names=None, keypoint_sigmas=None):
        for t in iou_types:
            if t not in ALL_IOU_TYPES:
                raise ValueError(f"iou_types must be a subset of {ALL_IOU_TYPES}, got {iou_types!r}")
        self.keypoint_sigmas = self.keypoint_cat_ids = None
        if "keypoints" in iou_types:
            from ..data.keypoints import keypoint_sigmas as sigmas_for
            cats = [c for c in coco_gt.dataset["categories"] if "keypoints" in c]
            if not cats:
                raise ValueError("iou_type 'keypoints': the ground truth has no category with 'keypoints' names")
            self.keypoint_sigmas = sigmas_for(cats[0]["keypoints"], keypoint_sigmas)
            self.keypoint_cat_ids = sorted(c["id"] for c in cats)
        self.coco_gt, self.label_to_cat_id, self.iou_types = coco_gt, dict(label_to_cat_id), tuple(iou_types)
        self.class_names = class_names
        self.image_ids: list[int] = []
        self.results = {t: [] for t in self.iou_types}
        self.coco_eval, self.precision = {}, {}
        self.iou_thresholds = self.recall_thresholds = None

    @classmethod
    def from_dataset(cls, dataset, iou_types=IOU_TYPES, keypoint_sigmas=None) -> "CocoEvaluator":
        """An evaluator for a :class:`minimaskrcnn.data.coco.CocoDataset`."""
        return cls(dataset.coco, dataset.label_to_cat_id, iou_types, dataset.class_names, keypoint_sigmas)

    def update(self, image_id: int, prediction: dict) -> None:
        """Add the prediction for one image (an image with no detections still counts: its objects
        are all missed)."""
        image_id = int(image_id)
        if image_id not in self.coco_gt.imgs:
            raise ValueError(f"image_id {image_id} is not in the ground truth")
        if image_id in self.image_ids:
            raise ValueError(f"image_id {image_id} was already added")
        info = self.coco_gt.imgs[image_id]
        for t in self.iou_types:
            self.results[t] += prediction_to_coco_results(prediction, image_id, self.label_to_cat_id, t,
                                                          (info["height"], info["width"]))
        self.image_ids.append(image_id)

    def evaluate(self, out_dir=None, verbose: bool = True) -> dict:
        """Run COCOeval for every IoU type on the images added so far.

        Args:
            out_dir: if given, the results are saved there as ``<iou_type>_results.json`` (COCO's
                results format, loadable with ``COCO.loadRes``).
            verbose: print COCOeval's 12-line table (and per-class AP) for each IoU type.

        Returns:
            {iou_type: {'AP': ..., 'AP50': ..., ..., 'ARl': ..., 'per_class_AP': {name: AP}}}; values are
            COCOeval's ``stats`` (fractions in [0, 1]; -1 where undefined, e.g. no large objects).
        """
        from pycocotools.cocoeval import COCOeval

        if not self.image_ids:
            raise ValueError("no predictions added: call update(image_id, prediction) for each image first")
        summary = {}
        for t in self.iou_types:
            if out_dir is not None:
                Path(out_dir).mkdir(parents=True, exist_ok=True)
                with open(Path(out_dir) / f"{t}_results.json", "w") as f:
                    json.dump(self.results[t], f)
            with contextlib.redirect_stdout(io.StringIO()):        # pycocotools' progress chatter
                # loadRes fails on an empty list: no detections get an empty results object instead.
                coco_dt = (self.coco_gt.loadRes(self.results[t]) if self.results[t]
                           else _empty_results(self.coco_gt))
                coco_eval = COCOeval(self.coco_gt, coco_dt, iouType=t)
                coco_eval.params.imgIds = sorted(self.image_ids)
                if t == "keypoints":      # OKS needs keypoints on both sides: only the keypoint categories
                    coco_eval.params.kpt_oks_sigmas = np.asarray(self.keypoint_sigmas, np.float64)
                    coco_eval.params.catIds = self.keypoint_cat_ids
                coco_eval.evaluate()
                coco_eval.accumulate()
            table = io.StringIO()
            with contextlib.redirect_stdout(table):
                coco_eval.summarize()
            self.coco_eval[t] = coco_eval
            self.precision[t] = coco_eval.eval["precision"][:, :, :, 0, -1]      # area 'all', 100 dets
            self.iou_thresholds, self.recall_thresholds = coco_eval.params.iouThrs, coco_eval.params.recThrs
            names = KP_STAT_NAMES if t == "keypoints" else STAT_NAMES
            stats = {name: float(v) for name, v in zip(names, coco_eval.stats, strict=True)}
            stats["per_class_AP"] = self.per_class_ap(t)
            summary[t] = stats
            if verbose:
                print(f"IoU type: {t} ({len(self.results[t])} detections on {len(self.image_ids)} images)")
                print(table.getvalue().rstrip())
                per_class = stats["per_class_AP"].items()
                print("  per class AP: " + ", ".join(f"{k} {v:.3f}" for k, v in per_class))
        return summary

    def per_class_ap(self, iou_type: str) -> dict:
        """AP@[.5:.95] of each category, averaged like COCOeval's summary (NaN: no ground truth)."""
        precision = self.precision[iou_type]                        # (T, R, K)
        cat_id_to_label = {c: lab for lab, c in self.label_to_cat_id.items()}
        aps = {}
        for k, cat_id in enumerate(self.coco_eval[iou_type].params.catIds):
            p = precision[:, :, k]
            label = cat_id_to_label.get(cat_id)
            name = self.class_names[label] if self.class_names and label is not None else str(cat_id)
            aps[name] = float(p[p > -1].mean()) if np.any(p > -1) else float("nan")
        return aps


def evaluate_predictions(dataset, predictions, out_dir=None, verbose: bool = True,
                         iou_types=IOU_TYPES) -> tuple[dict, CocoEvaluator]:
    """Score predictions for a CocoDataset in one call.

    Args:
        dataset: a :class:`minimaskrcnn.data.coco.CocoDataset`.
        predictions: {image_id: prediction dict}, or a list with one prediction per dataset index.

    Returns:
        (summary dict as :meth:`CocoEvaluator.evaluate` returns it, the evaluator).
    """
    evaluator = CocoEvaluator.from_dataset(dataset, iou_types)
    items = predictions.items() if isinstance(predictions, dict) else (
        (dataset.image_ids[i], p) for i, p in enumerate(predictions))
    for image_id, prediction in items:
        evaluator.update(image_id, prediction)
    return evaluator.evaluate(out_dir, verbose), evaluator
