"""COCO-style box AP50 per class split, with bootstrap confidence intervals over test images.

The headline numbers of the toy world come from the library's split evaluator
(:class:`detectron2_ext.evaluation.COCOSplitEvaluator`). Only their spread comes from here: a
bootstrap re-evaluates every split's AP50 on 200 resamples of the test images, and the evaluator
(pycocotools at 10 IoU thresholds and 4 areas) takes about 0.5 s per evaluation of 300 images,
i.e. ~100 s per model and ~10 minutes per ``make toyworld``, against ~1.5 s here. This module
recomputes AP50 the same way (per image and class: detections by score, at most ``max_dets``,
greedily matched to the unmatched ground truth of highest IoU >= 0.5; precision made monotone
and read at COCO's 101 recall points) from per-image match tables, so that resampling test
images with replacement (a bootstrap) costs no new matching.
``projects/toyworld/tests/test_toyworld.py`` checks it against pycocotools and against the
evaluator's AP50 of every stage.
"""
from typing import Dict, List, Sequence

import numpy as np

__all__ = ["match_image", "MatchTable", "average_precision", "split_ap50", "bootstrap_ap50"]

_RECALLS = np.linspace(0.0, 1.0, 101)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of XYXY boxes (COCO's: areas w*h, no +1)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_image(det_boxes: np.ndarray, det_scores: np.ndarray, gt_boxes: np.ndarray,
                iou: float = 0.5, max_dets: int = 100):
    """Greedy COCO matching of one image and one class.

    Args:
        det_boxes (ndarray): (D, 4) XYXY detections.
        det_scores (ndarray): (D,) scores.
        gt_boxes (ndarray): (G, 4) XYXY ground truth.
        iou (float): IoU threshold.
        max_dets (int): detections kept (highest scores).

    Returns:
        tuple[ndarray, ndarray]: scores (D',) and true-positive flags (D',) of the kept detections.
    """
    order = np.argsort(-det_scores, kind="mergesort")[:max_dets]
    scores = det_scores[order]
    tp = np.zeros(len(order), dtype=bool)
    if len(order) and len(gt_boxes):
        overlaps = _iou(det_boxes[order], gt_boxes)
        taken = np.zeros(len(gt_boxes), dtype=bool)
        for d in range(len(order)):
            best, best_iou = -1, min(iou, 1 - 1e-10)
            for g in range(len(gt_boxes)):
                if not taken[g] and overlaps[d, g] >= best_iou:
                    best, best_iou = g, overlaps[d, g]
            if best >= 0:
                taken[best] = True
                tp[d] = True
    return scores, tp


class MatchTable:
    """Per image and class: scores, true-positive flags and the number of ground-truth boxes.

    Args:
        predictions (list[dict]): per image ``boxes`` (D, 4) XYXY, ``scores`` (D,), ``classes``
            (D,) contiguous ids.
        ground_truth (list[dict]): per image ``boxes`` (G, 4) XYXY and ``classes`` (G,).
        num_classes (int): number of classes.
        iou (float): IoU threshold.
        max_dets (int): detections per image and class.
    """

    def __init__(self, predictions: List[dict], ground_truth: List[dict], num_classes: int,
                 iou: float = 0.5, max_dets: int = 100):
        if len(predictions) != len(ground_truth):
            raise ValueError(f"{len(predictions)} prediction entries for {len(ground_truth)} "
                             "images")
        self.num_classes = num_classes
        self.scores = [[None] * num_classes for _ in predictions]
        self.tp = [[None] * num_classes for _ in predictions]
        self.num_gt = np.zeros((len(predictions), num_classes), dtype=np.int64)
        for i, (pred, gt) in enumerate(zip(predictions, ground_truth)):
            for c in range(num_classes):
                d = pred["classes"] == c
                g = gt["boxes"][gt["classes"] == c]
                self.num_gt[i, c] = len(g)
                self.scores[i][c], self.tp[i][c] = match_image(
                    pred["boxes"][d], pred["scores"][d], g, iou, max_dets)

    def __len__(self):
        return len(self.scores)

    def class_ap(self, images: Sequence[int] = None) -> np.ndarray:
        """(num_classes,) AP in percent over the given images (repeats allowed); NaN for classes
        without ground truth."""
        images = range(len(self)) if images is None else images
        out = np.full(self.num_classes, np.nan)
        for c in range(self.num_classes):
            n_gt = int(sum(self.num_gt[i, c] for i in images))
            if n_gt == 0:
                continue
            scores = np.concatenate([self.scores[i][c] for i in images])
            tp = np.concatenate([self.tp[i][c] for i in images])
            out[c] = average_precision(scores, tp, n_gt) * 100
        return out


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    """COCO's 101-point interpolated average precision of scored detections."""
    order = np.argsort(-scores, kind="mergesort")
    tp = tp[order].astype(np.float64)
    tps, fps = np.cumsum(tp), np.cumsum(1 - tp)
    recall = tps / num_gt
    precision = tps / np.maximum(tps + fps, np.spacing(1))
    for k in range(len(precision) - 1, 0, -1):  # monotone from the right
        precision[k - 1] = max(precision[k - 1], precision[k])
    idx = np.searchsorted(recall, _RECALLS, side="left")
    return float(np.mean([precision[j] if j < len(precision) else 0.0 for j in idx]))


def split_ap50(class_ap: np.ndarray, splits: Dict[str, List[int]]) -> Dict[str, float]:
    """Mean AP over each split's classes (classes without ground truth skipped)."""
    out = {}
    for name, classes in splits.items():
        values = class_ap[classes]
        values = values[~np.isnan(values)]
        out[name] = float(values.mean()) if len(values) else float("nan")
    return out


def bootstrap_ap50(table: MatchTable, splits: Dict[str, List[int]], samples: int = 200,
                   seed: int = 0) -> Dict[str, Dict[str, float]]:
    """AP50 per split on all images, with the bootstrap standard deviation and 95% interval.

    Args:
        table (MatchTable): matches on the test images.
        splits (dict): split name -> contiguous class ids.
        samples (int): bootstrap resamples (0: none).
        seed (int): seed of the resampling.

    Returns:
        dict: per split ``{"ap50", "std", "lo", "hi"}`` (std/lo/hi NaN without resamples).
    """
    full = split_ap50(table.class_ap(), splits)
    rng = np.random.default_rng(seed)
    draws = {name: [] for name in splits}
    for _ in range(samples):
        pick = rng.integers(0, len(table), size=len(table))
        for name, value in split_ap50(table.class_ap(pick), splits).items():
            draws[name].append(value)
    out = {}
    for name in splits:
        values = np.asarray(draws[name], dtype=np.float64)
        values = values[~np.isnan(values)]
        if len(values):
            lo, hi = np.percentile(values, [2.5, 97.5])
            out[name] = {"ap50": full[name], "std": float(values.std()), "lo": float(lo),
                         "hi": float(hi)}
        else:
            out[name] = {"ap50": full[name], "std": float("nan"), "lo": float("nan"),
                         "hi": float("nan")}
    return out
