"""LVIS evaluation on current NumPy, and an evaluator that only writes predictions.

lvis-api 0.5.3 (the latest release) calls ``np.float``, which NumPy 1.24 removed; evaluation then
fails inside ``LVISEval.accumulate``. :class:`LVISEvaluatorCompat` provides the alias only while
lvis-api runs.
"""
import contextlib
import itertools
import json
import logging
import os

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, LVISEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

__all__ = ["LVISEvaluatorCompat", "PredictionWriter", "numpy_float_alias"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def numpy_float_alias():
    """Temporarily define ``np.float = float`` if this NumPy lacks it (lvis-api needs it)."""
    added = "float" not in np.__dict__
    if added:
        np.float = float
    try:
        yield
    finally:
        if added:
            del np.float


class LVISEvaluatorCompat(LVISEvaluator):
    """:class:`LVISEvaluator` that runs lvis-api under :func:`numpy_float_alias`."""

    def _eval_predictions(self, predictions):
        with numpy_float_alias():
            return super()._eval_predictions(predictions)


class PredictionWriter(DatasetEvaluator):
    """Writes detections as a COCO/LVIS-style results json and computes no metric.

    For datasets without annotations (e.g. a folder of one's own images). Category ids are mapped
    back through the metadata's ``thing_dataset_id_to_contiguous_id`` when present, else written as
    ``contiguous id + 1`` (LVIS's 1-based ids).
    """

    def __init__(self, dataset_name, output_dir, file_name="instances_results.json",
                 distributed=True):
        """
        Args:
            dataset_name (str): a registered dataset.
            output_dir (str): folder of the json (created if needed).
            file_name (str): json file name.
            distributed (bool): gather predictions from all processes first.
        """
        self._metadata = MetadataCatalog.get(dataset_name)
        self._output_dir = output_dir
        self._file_name = file_name
        self._distributed = distributed
        self._predictions = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        for x, y in zip(inputs, outputs):
            if "instances" in y:
                inst = y["instances"].to("cpu")
                self._predictions.extend(instances_to_coco_json(inst, x["image_id"]))

    def evaluate(self):
        preds = self._predictions
        if self._distributed:
            comm.synchronize()
            preds = list(itertools.chain(*comm.gather(preds, dst=0)))
            if not comm.is_main_process():
                return {}
        mapping = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
        reverse = {v: k for k, v in mapping.items()} if mapping else None
        for p in preds:
            p["category_id"] = reverse[p["category_id"]] if reverse else p["category_id"] + 1
        PathManager.mkdirs(self._output_dir)
        path = os.path.join(self._output_dir, self._file_name)
        with PathManager.open(path, "w") as f:
            json.dump(preds, f)
        logger.info("Wrote %d detections to %s (no evaluation for this dataset)", len(preds), path)
        return {}
