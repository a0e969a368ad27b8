"""COCO evaluation with AP reported per category split (e.g. base / novel classes).

Open-vocabulary detection reports box AP50 separately on the classes seen in training ("base")
and the held-out ones ("novel"). Which class belongs to which split is dataset metadata: the
evaluator reads ``MetadataCatalog.get(dataset).base_classes`` / ``.novel_classes`` (lists of class
names, a subset of ``thing_classes``), or takes the splits explicitly.
"""
import logging
from collections import OrderedDict

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.utils.logger import create_small_table

__all__ = ["COCOSplitEvaluator", "split_ap_from_coco_eval", "split_proposal_recall",
           "splits_from_metadata"]

logger = logging.getLogger(__name__)


def splits_from_metadata(metadata):
    """``{"novel": [...], "base": [...], "all": thing_classes}`` from metadata (empty splits
    omitted).

    Returns an empty dict when the metadata has no ``base_classes``/``novel_classes``.
    """
    classes = list(metadata.get("thing_classes", []))
    splits = OrderedDict()
    for name in ("novel", "base"):
        members = list(metadata.get(f"{name}_classes", []) or [])
        unknown = sorted(set(members) - set(classes))
        if unknown:
            raise ValueError(f"metadata '{metadata.name}': {name}_classes contains names that "
                             "are not "
                             f"in thing_classes: {unknown[:5]}")
        if members:
            splits[name] = members
    if splits:
        splits["all"] = classes
    return splits


def split_ap_from_coco_eval(coco_eval, class_names, splits, iou=None):
    """Mean precision over recall thresholds and the split's categories (area all, last maxDets).

    Args:
        coco_eval (COCOeval): evaluated and accumulated.
        class_names (list[str]): names in the order of ``coco_eval.params.catIds``.
        splits (dict[str, list[str]]): split name -> class names.
        iou (float or None): IoU threshold (e.g. 0.5), or None to average over all thresholds.

    Returns:
        dict[str, float]: split name -> AP in percent (NaN when the split has no valid entry).
    """
    precision = coco_eval.eval["precision"]  # (iou, recall, class, area, maxdets)
    if len(class_names) != precision.shape[2]:
        raise ValueError(f"{len(class_names)} class names for {precision.shape[2]} evaluated "
                         "classes")
    if iou is None:
        precision = precision[:, :, :, 0, -1]
    else:
        t = np.where(np.isclose(coco_eval.params.iouThrs, iou))[0]
        if t.size == 0:
            raise ValueError(f"IoU {iou} is not among the evaluated thresholds")
        precision = precision[t[0]][None, :, :, 0, -1]
    index = {name: i for i, name in enumerate(class_names)}
    out = OrderedDict()
    for split, members in splits.items():
        values = precision[:, :, [index[m] for m in members]]
        values = values[values > -1]
        out[split] = float(np.mean(values) * 100) if values.size else float("nan")
    return out


def split_proposal_recall(predictions, coco_api, category_ids, limit=100, ious=(0.5,)):
    """Recall of class-agnostic proposals on the ground-truth boxes of some categories.

    A box (non-crowd, of a category in ``category_ids``) is recalled at IoU ``t`` when one of the
    image's ``limit`` best proposals (by objectness when given) overlaps it with IoU >= t. No
    one-to-one matching, unlike detectron2's ``AR@``: the question asked is whether the
    recognition stage is given a region at all.

    Args:
        predictions (list[dict]): ``image_id`` and ``proposals`` (Instances with proposal_boxes,
            sorted by objectness as the RPN outputs them).
        coco_api (COCO): ground truth.
        category_ids (iterable[int]): json category ids to count.
        limit (int): proposals per image (the first ones, as the RPN ranks them).
        ious (sequence[float]): IoU thresholds.

    Returns:
        tuple: (recall per threshold as a float array in [0, 1], NaN when there is no such box;
        number of boxes).
    """
    category_ids = set(category_ids)
    hits, total = np.zeros(len(ious)), 0
    for prediction in predictions:
        anns = coco_api.loadAnns(coco_api.getAnnIds(imgIds=prediction["image_id"]))
        gt = [a["bbox"] for a in anns if not a.get("iscrowd",
                                                   0) and a["category_id"] in category_ids]
        if not gt:
            continue
        total += len(gt)
        proposals = prediction["proposals"]
        if proposals.has("objectness_logits"):  # best first (an RPN's output already is)
            proposals = proposals[proposals.objectness_logits.argsort(descending=True)]
        boxes = proposals.proposal_boxes[:limit]
        if len(boxes) == 0:
            continue
        gt = Boxes(BoxMode.convert(torch.as_tensor(gt, dtype=torch.float32).view(-1, 4),
                                   BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
        best = pairwise_iou(gt, boxes.to("cpu")).max(dim=1).values
        hits += np.array([(best >= t).sum().item() for t in ious])
    recall = hits / total if total else np.full(len(ious), np.nan)
    return recall, total


class COCOSplitEvaluator(COCOEvaluator):
    """:class:`COCOEvaluator` that also reports ``AP50_<split>`` and ``AP_<split>`` for bbox/segm.

    Results keep every key of the parent (``AP``, ``AP50``, ...) and add, e.g. for the COCO
    open-vocabulary benchmark, ``AP50_novel``, ``AP50_base``, ``AP50_all`` (percent).
    """

    def __init__(self, dataset_name, *args, splits=None, **kwargs):
        """
        Args:
            dataset_name, args, kwargs: as :class:`COCOEvaluator`.
            splits (dict[str, list[str]] or None): split name -> class names; default read from the
                dataset's metadata (:func:`splits_from_metadata`).
        """
        super().__init__(dataset_name, *args, **kwargs)
        self._splits = splits if splits is not None else splits_from_metadata(
            MetadataCatalog.get(dataset_name))

    def _eval_box_proposals(self, predictions):
        """detectron2's proposal AR, plus the recall per class split (``R50@100_novel``: the
        fraction of novel-class boxes covered at IoU 0.5 by one of the 100 best proposals;
        ``R@100_<split>``: the same averaged over IoU 0.5:0.95), see
        :func:`split_proposal_recall`."""
        super()._eval_box_proposals(predictions)
        if not self._do_evaluation or not self._splits or "box_proposals" not in self._results:
            return
        to_contiguous = self._metadata.thing_dataset_id_to_contiguous_id
        classes = self._metadata.thing_classes
        by_name = {classes[c]: d for d, c in to_contiguous.items()}
        ious = np.linspace(0.5, 0.95, 10)
        res = OrderedDict()
        for split, members in self._splits.items():
            for limit in (100, 1000):
                recall, count = split_proposal_recall(
                    predictions, self._coco_api, [by_name[m] for m in members], limit, ious)
                res[f"R50@{limit}_{split}"] = float(recall[0] * 100)
                res[f"R@{limit}_{split}"] = float(np.mean(recall) * 100)
        logger.info("Proposal recall per class split:\n" + create_small_table(res))
        self._results["box_proposals"].update(res)

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)
        if not self._splits or iou_type not in ("bbox", "segm"):
            return results
        if coco_eval is None:
            # no predictions at all: the parent reports NaN for every metric; so do the splits,
            # so that the results always carry the same keys
            results.update((f"{prefix}_{split}", float("nan"))
                           for prefix in ("AP50", "AP") for split in self._splits)
            return results
        if class_names is None:
            class_names = self._metadata.get("thing_classes")
        split_results = OrderedDict()
        for prefix, iou in (("AP50", 0.5), ("AP", None)):
            for split, value in split_ap_from_coco_eval(coco_eval, class_names, self._splits,
                                                        iou).items():
                split_results[f"{prefix}_{split}"] = value
        sizes = ", ".join(f"{k}: {len(v)} classes" for k, v in self._splits.items())
        logger.info(f"{iou_type} AP per class split ({sizes}):\n"
                    + create_small_table(split_results))
        results.update(split_results)
        return results
