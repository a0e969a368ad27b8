"""Draw the detections of a COCO/LVIS-style results json on the dataset's images: the logic of
``tools/visualize_json_results.py``.

Command line (detectron2's tool plus the original RegionCLIP flags)::

    python tools/visualize_json_results.py --input RESULTS.json --output DIR \\
        [--dataset coco_2017_val] [--conf-threshold 0.5] [--show-unique-boxes] \\
        [--max-boxes N] [--small-region-px AREA]

One picture per image of the dataset, named after the image file, with its predictions only (no
ground-truth panel, as the original). Which predictions of an image are drawn
(:func:`select_predictions`), in this order, from its predictions sorted by score:

1. the first ``--max-boxes`` (default: 30 with ``--show-unique-boxes``, else all);
2. minus boxes whose area ``w * h`` is below ``--small-region-px``;
3. with ``--show-unique-boxes``, minus every prediction whose box equals an earlier one;
4. minus scores not above ``--conf-threshold``.

In the original, ``--max-boxes`` and ``--small-region-px`` acted only together with
``--show-unique-boxes``; here they act whenever given (the defaults keep the original's output).
``--dataset lvis_v1_val_custom_img`` draws the images of ``$DETECTRON2_DATASETS/custom_images``
with LVIS class names (no LVIS json needed).
"""
import argparse
import logging
import os
from collections import defaultdict
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from detectron2.structures import Boxes, BoxMode, Instances

from regionclip.tools import read_json, run_command

__all__ = ["load_predictions", "group_by_image", "select_predictions", "category_mapper",
           "create_instances", "visualize_json_results", "build_parser", "run", "main"]

logger = logging.getLogger(__name__)

DEFAULT_UNIQUE_MAX_BOXES = 30
_KEYS = ("image_id", "category_id", "bbox", "score")


def load_predictions(path: str) -> List[dict]:
    """Read a results json: a list of ``{"image_id", "category_id", "bbox" (XYWH), "score"}``.

    Raises:
        FileNotFoundError / ValueError: missing file, or not a list of such records.
    """
    preds = read_json(path, "--input")
    if not isinstance(preds, list):
        raise ValueError(f"--input '{path}' must hold a list of detections, got "
                         f"{type(preds).__name__}")
    for i, p in enumerate(preds):
        missing = [k for k in _KEYS if not isinstance(p, dict) or k not in p]
        if missing or len(p["bbox"]) != 4:
            raise ValueError(f"--input '{path}', detection {i}: expected keys {list(_KEYS)} with a "
                             f"4-number XYWH bbox, got {p!r}")
    return preds


def group_by_image(predictions: Sequence[dict]) -> Dict[object, List[dict]]:
    """Predictions per ``image_id``, each list sorted by decreasing score (stable)."""
    grouped = defaultdict(list)
    for p in predictions:
        grouped[p["image_id"]].append(p)
    return {k: sorted(v, key=lambda p: -p["score"]) for k, v in grouped.items()}


def select_predictions(predictions: Sequence[dict], conf_threshold: float = 0.5,
                       max_boxes: Optional[int] = None, small_region_px: float = 0.0,
                       show_unique_boxes: bool = False) -> List[dict]:
    """The predictions of one image to draw (see the module doc for the order of the filters).

    Args:
        predictions (sequence[dict]): the image's predictions, best first.
        conf_threshold (float): keep scores strictly above it.
        max_boxes (int or None): consider only the first this many; None means 30 with
            ``show_unique_boxes`` and no limit otherwise.
        small_region_px (float): drop boxes with ``w * h`` below it.
        show_unique_boxes (bool): keep only the first prediction of each distinct box.

    Returns:
        list[dict]: the kept predictions, in order.
    """
    if max_boxes is None:
        max_boxes = DEFAULT_UNIQUE_MAX_BOXES if show_unique_boxes else len(predictions)
    kept, seen = [], set()
    for p in list(predictions)[:max(max_boxes, 0)]:
        x, y, w, h = p["bbox"]
        if w * h < small_region_px:
            continue
        if show_unique_boxes:
            key = (x, y, w, h)
            if key in seen:
                continue
            seen.add(key)
        kept.append(p)
    return [p for p in kept if p["score"] > conf_threshold]


def category_mapper(metadata, dataset_name: str) -> Callable[[int], int]:
    """Dataset category id -> contiguous class index, as detectron2's tool.

    Raises:
        ValueError: the dataset has no id map and is not LVIS (ids - 1).
    """
    mapping = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if mapping:
        def to_contiguous(ds_id):
            if ds_id not in mapping:
                raise ValueError(f"category_id {ds_id} is not a category of dataset "
                                 f"'{dataset_name}'")
            return mapping[ds_id]
        return to_contiguous
    if "lvis" in dataset_name:
        return lambda ds_id: ds_id - 1
    raise ValueError(f"Unsupported dataset '{dataset_name}': its metadata has no "
                     "thing_dataset_id_to_contiguous_id")


def create_instances(predictions: Sequence[dict], image_size, to_contiguous) -> Instances:
    """Instances (``pred_boxes`` XYXY, ``scores``, ``pred_classes``, RLE ``pred_masks`` when every
    prediction has a ``segmentation``) for detectron2's Visualizer."""
    ret = Instances(image_size)
    boxes = np.asarray([p["bbox"] for p in predictions], dtype=np.float64).reshape(-1, 4)
    ret.pred_boxes = Boxes(BoxMode.convert(boxes, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
    ret.scores = np.asarray([p["score"] for p in predictions], dtype=np.float64)
    ret.pred_classes = np.asarray([to_contiguous(p["category_id"]) for p in predictions],
                                  dtype=np.int64)
    if predictions and all("segmentation" in p for p in predictions):
        ret.pred_masks = [p["segmentation"] for p in predictions]
    return ret


def _output_names(dicts: Sequence[dict]) -> List[str]:
    names, owner = [], {}
    for d in dicts:
        name = os.path.basename(d["file_name"])
        if name in owner:
            raise ValueError(f"images '{owner[name]}' and '{d['file_name']}' would both be drawn "
                             f"to '{name}'")
        owner[name] = d["file_name"]
        names.append(name)
    return names


def visualize_json_results(input_path: str, output_dir: str, dataset: str = "coco_2017_val",
                           conf_threshold: float = 0.5, max_boxes: Optional[int] = None,
                           small_region_px: float = 0.0, show_unique_boxes: bool = False,
                           progress: bool = True) -> Dict[str, List[dict]]:
    """Draw the selected predictions of every image of ``dataset`` into ``output_dir``.

    Returns:
        dict: output picture path -> the predictions drawn on it.
    """
    import cv2
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data import detection_utils as utils
    from detectron2.utils.visualizer import Visualizer
    from tqdm import tqdm

    import regionclip  # noqa: F401  (registers the datasets)

    by_image = group_by_image(load_predictions(input_path))
    if dataset not in DatasetCatalog.list():
        raise KeyError(f"--dataset '{dataset}' is not registered")
    dicts = list(DatasetCatalog.get(dataset))
    metadata = MetadataCatalog.get(dataset)
    to_contiguous = category_mapper(metadata, dataset)
    names = _output_names(dicts)
    unknown = set(by_image) - {d["image_id"] for d in dicts}
    if unknown:
        logger.warning("%d image ids of %s are not in dataset '%s' and are not drawn: %s",
                       len(unknown), input_path, dataset, sorted(unknown, key=str)[:10])
    os.makedirs(output_dir, exist_ok=True)
    drawn = {}
    for d, name in tqdm(list(zip(dicts, names)), disable=not progress, desc="drawing", unit="img"):
        try:
            img = utils.read_image(d["file_name"], format="RGB")
        except Exception as e:  # PIL raises several types for undecodable files
            raise ValueError(f"cannot read image '{d['file_name']}': {e}") from None
        kept = select_predictions(by_image.get(d["image_id"], []), conf_threshold, max_boxes,
                                  small_region_px, show_unique_boxes)
        instances = create_instances(kept, img.shape[:2], to_contiguous)
        picture = Visualizer(img, metadata).draw_instance_predictions(instances).get_image()
        path = os.path.join(output_dir, name)
        if not cv2.imwrite(path, picture[:, :, ::-1]):
            raise ValueError(f"could not write '{path}' (unsupported extension?)")
        drawn[path] = kept
    return drawn


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module doc)."""
    parser = argparse.ArgumentParser(
        description="Draw the json predictions of a COCO or LVIS-style dataset.")
    parser.add_argument("--input", required=True, help="JSON file produced by the model")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--dataset", default="coco_2017_val", help="name of the dataset")
    parser.add_argument("--conf-threshold", default=0.5, type=float,
                        help="draw scores above this")
    parser.add_argument("--show-unique-boxes", action="store_true",
                        help="draw only the first prediction of each box")
    parser.add_argument("--max-boxes", default=None, type=int,
                        help="consider only the first N predictions of an image (default 30 "
                        "with --show-unique-boxes, else all)")
    parser.add_argument("--small-region-px", default=0.0, type=float,
                        help="skip boxes whose area w*h is below this")
    return parser


def run(argv: Optional[Sequence[str]] = None) -> Dict[str, List[dict]]:
    """Run the tool (``argv`` without the program name; default ``sys.argv``)."""
    from detectron2.utils.logger import setup_logger

    args = build_parser().parse_args(argv)
    setup_logger(name=__name__)
    drawn = visualize_json_results(args.input, args.output, args.dataset, args.conf_threshold,
                                   args.max_boxes, args.small_region_px, args.show_unique_boxes)
    print(f"Drew {sum(len(v) for v in drawn.values())} boxes on {len(drawn)} images in "
          f"{args.output}")
    return drawn


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: :func:`run`, then the exit status (see ``run_command``)."""
    return run_command(run, argv)
