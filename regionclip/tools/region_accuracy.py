"""Region classification accuracy on ground-truth boxes: pooled regions vs image crops.

Every ground-truth box of a registered dataset is classified among the dataset's classes by the
cosine similarity of its visual embedding with the class text embeddings, in two ways:

- ``roi``: RegionCLIP's way (and the zero-shot GT-box protocol's): the region is pooled from the
  feature map of the whole image (:meth:`regionclip.RegionCLIP.encode_regions`);
- ``crop``: R-CNN style, the way the paper's Fig. 1 applies CLIP to regions: the box is cut out
  and the whole visual tower runs on the crop (:meth:`regionclip.RegionCLIP.encode_crops`).

Reported (percent): top-1 and top-5 accuracy over all boxes and per class split (base / novel
from the dataset's metadata), and the mean over classes of the per-class top-1 accuracy.

Command line::

    python tools/region_accuracy.py --config-file CFG [--dataset NAME] [--modes roi crop] \\
        [--max-images N] [--text-emb FILE] [--output FILE.json] \\
        [--register-coco NAME JSON IMAGE_ROOT [SPLIT] --novel-classes ...] [KEY VALUE ...]
"""
import argparse
import json
import logging
import math
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.logger import create_small_table, setup_logger
from tqdm import tqdm

from detectron2_ext.evaluation import splits_from_metadata
from regionclip.tools import run_command

from ..api import read_rgb_image
from ..data.categories import clean_lvis_name
from ..data.datasets.custom_ovd import add_register_arguments, register_from_args
from ..modeling.roi_heads.clip_box_predictor import load_text_embeddings

__all__ = ["accuracy_table", "dataset_regions", "run", "main", "region_accuracy"]

logger = logging.getLogger(__name__)

MODES = ("roi", "crop")


def dataset_regions(dataset_name: str, max_images: Optional[int] = None) -> List[dict]:
    """``[{"file_name", "boxes": (N, 4) XYXY, "classes": (N,)}]``: the ground-truth boxes of a
    registered dataset, images in ``image_id`` order, the first ``max_images`` images that have a
    box (None: all).

    Crowd boxes and boxes less than one pixel wide or high are left out (and counted in the log),
    so that both modes classify the same boxes.

    Raises:
        KeyError: when the dataset is not registered.
        ValueError: when no box is left.
    """
    if dataset_name not in DatasetCatalog.list():
        raise KeyError(f"dataset '{dataset_name}' is not registered (register it, e.g. with "
                       "--register-coco NAME JSON IMAGE_ROOT)")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1 or None, got {max_images}")
    dicts = DatasetCatalog.get(dataset_name)
    # LVIS val dicts come sorted by annotation count: image order keeps a subset representative
    dicts = sorted(dicts, key=lambda d: d.get("image_id", 0))
    out, crowd, tiny = [], 0, 0
    for d in dicts:
        if max_images is not None and len(out) == max_images:
            break
        anns = d.get("annotations", [])
        boxes = np.array([BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
                          for a in anns], dtype=np.float32).reshape(-1, 4)
        is_crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        big = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        crowd += int(is_crowd.sum())
        tiny += int((~is_crowd & ~big).sum())
        keep = ~is_crowd & big
        if not keep.any():
            continue
        out.append({"file_name": d["file_name"], "boxes": boxes[keep],
                    "classes": np.array([a["category_id"] for a in anns], dtype=np.int64)[keep]})
    if not out:
        raise ValueError(f"dataset '{dataset_name}' has no ground-truth box to classify (crowd "
                         f"boxes and boxes under one pixel are left out)")
    if crowd or tiny:
        logger.info("'%s': %d crowd boxes and %d boxes under one pixel are not classified",
                    dataset_name, crowd, tiny)
    return out


def accuracy_table(scores: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                   splits: Dict[str, Sequence[str]], topk: Sequence[int] = (1, 5)) -> Dict:
    """Accuracies in percent from (N, C) class scores and (N,) labels.

    Keys: ``top{k}`` (all boxes), ``top{k}_{split}`` (boxes whose class is in the split; NaN when
    there are none), ``mean_class_top1`` (per-class top-1 accuracy averaged over the classes that
    have boxes), ``num_regions``.
    """
    if scores.shape != (labels.numel(), len(class_names)):
        raise ValueError(f"scores of shape {tuple(scores.shape)} for {labels.numel()} regions and "
                         f"{len(class_names)} classes")
    k_max = min(max(topk), scores.shape[1])
    hits = scores.topk(k_max, dim=1).indices == labels[:, None]  # (N, k_max)
    index = {name: i for i, name in enumerate(class_names)}
    res = OrderedDict()
    for k in topk:
        correct = hits[:, :k].any(dim=1).float()
        res[f"top{k}"] = float(correct.mean() * 100)
        for split, members in splits.items():
            if split == "all":
                continue
            inside = torch.isin(labels, torch.tensor([index[m] for m in members]))
            res[f"top{k}_{split}"] = (float(correct[inside].mean() * 100) if inside.any()
                                      else float("nan"))
    top1 = hits[:, 0].float()
    present = labels.unique()
    res["mean_class_top1"] = float(torch.stack([top1[labels == c].mean() for c in present]).mean()
                                   * 100)
    res["num_regions"] = int(labels.numel())
    return res


def _class_embeddings(rc, class_names, text_emb: Optional[str], lvis_names: bool) -> torch.Tensor:
    dim = rc.cfg.MODEL.CLIP.TEXT_EMB_DIM
    if text_emb:
        emb = load_text_embeddings(text_emb, "--text-emb", None, dim)
        if emb.shape[0] != len(class_names):
            raise ValueError(f"--text-emb: '{text_emb}' has {emb.shape[0]} class embeddings, but "
                             f"the dataset has {len(class_names)} classes")
        logger.info("class embeddings: --text-emb %s", text_emb)
        return emb
    clip = rc.cfg.MODEL.CLIP
    key = "OPENSET_TEST_TEXT_EMB_PATH" if clip.OPENSET_TEST_TEXT_EMB_PATH else "TEXT_EMB_PATH"
    table = rc.model.roi_heads.box_predictor.class_embeddings().detach().float().cpu()
    if clip.get(key) and table.shape[0] == len(class_names) and table.abs().max() > 0:
        logger.info("class embeddings: MODEL.CLIP.%s %s (its rows must follow the dataset's "
                    "class order)", key, clip.get(key))
        return table
    names = [clean_lvis_name(n) for n in class_names] if lvis_names else list(class_names)
    if rc.text_encoder_loaded:
        logger.info("class embeddings: the class names encoded by the checkpoint's text encoder")
        return rc.encode_text(names).float().cpu()
    raise ValueError(f"no class embeddings for the dataset's {len(class_names)} classes: "
                     f"MODEL.CLIP.{key} is '{clip.get(key)}' ({table.shape[0]} rows) and "
                     "MODEL.WEIGHTS has no text encoder; pass --text-emb with embeddings of the "
                     "dataset's classes in its class order")


@torch.no_grad()
def region_accuracy(rc, dataset_name: str, modes: Sequence[str] = MODES,
                    max_images: Optional[int] = None, text_emb: Optional[str] = None,
                    crop_resize: str = "warp", crop_context: float = 1.0,
                    progress: bool = True, return_scores: bool = False):
    """Classify every ground-truth box of ``dataset_name`` with ``rc`` (a
    :class:`regionclip.RegionCLIP`) in each of ``modes``.

    Returns:
        dict: mode -> :func:`accuracy_table` of that mode; with ``return_scores`` also the
        per-box cosine similarities ``{mode: (N, C) Tensor}`` and the (N,) labels, boxes in the
        order of :func:`dataset_regions`.
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"modes must be a non-empty subset of {MODES}, got {list(modes)}")
    regions = dataset_regions(dataset_name, max_images)  # loads the dataset: sets lazy metadata
    metadata = MetadataCatalog.get(dataset_name)
    class_names = list(metadata.get("thing_classes", []))
    if not class_names:
        raise ValueError(f"dataset '{dataset_name}' has no thing_classes in its metadata")
    splits = splits_from_metadata(metadata)
    lvis = metadata.get("evaluator_type", None) == "lvis"
    classes = F.normalize(_class_embeddings(rc, class_names, text_emb, lvis), dim=1)
    scores = {m: [] for m in modes}
    for item in tqdm(regions, desc=f"classifying boxes of {dataset_name}", disable=not progress):
        rgb = read_rgb_image(item["file_name"])  # decoded once for both modes
        for mode in modes:
            if mode == "roi":
                emb = rc.encode_regions(rgb, item["boxes"])
            else:
                emb = rc.encode_crops(rgb, item["boxes"], crop_resize, crop_context)
            scores[mode].append(F.normalize(emb.float().cpu(), dim=1) @ classes.t())
    labels = torch.as_tensor(np.concatenate([r["classes"] for r in regions]))
    scores = {m: torch.cat(v) for m, v in scores.items()}
    tables = OrderedDict((m, accuracy_table(scores[m], labels, class_names, splits)) for m in modes)
    return (tables, scores, labels) if return_scores else tables


def _parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="a CLIPFastRCNN yaml")
    parser.add_argument("--dataset", help="registered dataset (default: the one "
                        "--register-coco dataset, else the config's DATASETS.TEST[0])")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                        help="roi, crop or both (put another --option between it and the "
                        "KEY VALUE overrides)")
    parser.add_argument("--max-images", type=int,
                        help="only the first N images (by image id) that have boxes")
    parser.add_argument("--text-emb", help="(num_classes, D) class embeddings in the dataset's "
                        "class order (default: the config's, else the text encoder's)")
    parser.add_argument("--crop-resize", default="warp", choices=("warp", "center"))
    parser.add_argument("--crop-context", type=float, default=1.0,
                        help="scale boxes about their centre before cropping")
    parser.add_argument("--output", help="write the results as json here (empty splits: null)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the config's "
                        "MODEL.DEVICE; cuda falls back to the CPU when no GPU is present)")
    add_register_arguments(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def _json_safe(value):
    """NaN (an empty split) -> None, which json writes as null (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def run(argv=None):
    args = _parser().parse_args(argv)
    setup_logger(name="regionclip")
    registered = register_from_args(args)
    if not args.dataset and len(registered) > 1:
        raise SystemExit(f"--register-coco registered {registered}: choose one with --dataset")

    device = args.device  # None: the config's MODEL.DEVICE (after the KEY VALUE overrides)
    # the tool gives the boxes itself: no offline RPN is built or needed
    opts = list(args.opts) + ["MODEL.CLIP.CROP_REGION_TYPE", "GT",
                              "MODEL.CLIP.MULTIPLY_RPN_SCORE", "False"]
    from ..api import RegionCLIP

    rc = RegionCLIP.from_config(args.config_file, opts=opts, device=device)
    dataset = args.dataset or (registered[0] if registered else None) or (
        rc.cfg.DATASETS.TEST[0] if rc.cfg.DATASETS.TEST else None)
    if not dataset:
        raise SystemExit("no --dataset given and the config has no DATASETS.TEST")
    results = region_accuracy(rc, dataset, args.modes, args.max_images, args.text_emb,
                              args.crop_resize, args.crop_context)
    for mode, table in results.items():
        print(f"{dataset}, {mode}: region classification accuracy (%) on ground-truth boxes\n"
              + create_small_table(table))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump({"dataset": dataset, "config": args.config_file, "opts": args.opts,
                       "results": _json_safe(results)}, f, indent=1)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: :func:`run`, then the exit status (see ``run_command``)."""
    return run_command(run, argv)
