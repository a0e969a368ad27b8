"""COCO evaluation with AP reported per category split (e.g. base / novel classes).

Open-vocabulary detection reports box AP50 separately on the classes seen in training ("base")
and the held-out ones ("novel"). Which class belongs to which split is dataset metadata: the
evaluator reads ``MetadataCatalog.get(dataset).base_classes`` / ``.novel_classes`` (lists of class
names, a subset of ``thing_classes``), or takes the splits explicitly.
"""
import logging
from collections import OrderedDict

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.logger import create_small_table

__all__ = ["COCOSplitEvaluator", "split_ap_from_coco_eval", "splits_from_metadata"]

logger = logging.getLogger(__name__)


def splits_from_metadata(metadata):
    """``{"novel": [...], "base": [...], "all": thing_classes}`` from metadata; empty splits omitted.

    Returns an empty dict when the metadata has no ``base_classes``/``novel_classes``.
    """
    classes = list(metadata.get("thing_classes", []))
    splits = OrderedDict()
    for name in ("novel", "base"):
        members = list(metadata.get(f"{name}_classes", []) or [])
        unknown = sorted(set(members) - set(classes))
        if unknown:
            raise ValueError(f"metadata '{metadata.name}': {name}_classes contains names that are not "
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
        raise ValueError(f"{len(class_names)} class names for {precision.shape[2]} evaluated classes")
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

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)
        if coco_eval is None or not self._splits or iou_type not in ("bbox", "segm"):
            return results
        if class_names is None:
            class_names = self._metadata.get("thing_classes")
        split_results = OrderedDict()
        for prefix, iou in (("AP50", 0.5), ("AP", None)):
            for split, value in split_ap_from_coco_eval(coco_eval, class_names, self._splits,
                                                        iou).items():
                split_results[f"{prefix}_{split}"] = value
        logger.info(f"{iou_type} AP per class split ({', '.join(f'{k}: {len(v)} classes' for k, v in self._splits.items())}):\n"
                    + create_small_table(split_results))
        results.update(split_results)
        return results
