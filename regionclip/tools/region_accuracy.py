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

from ..data.datasets.custom_ovd import add_register_arguments, register_from_args
from ..modeling.roi_heads.clip_box_predictor import load_text_embeddings

__all__ = ["accuracy_table", "dataset_regions", "main", "region_accuracy"]

logger = logging.getLogger(__name__)

MODES = ("roi", "crop")


def dataset_regions(dataset_name: str, max_images: Optional[int] = None) -> List[dict]:
    """``[{"file_name", "boxes": (N, 4) XYXY, "classes": (N,)}]``: the non-crowd ground-truth
    boxes of the first ``max_images`` images of a registered dataset that have any.

    Raises:
        ValueError: when the dataset has no such box.
    """
    dicts = DatasetCatalog.get(dataset_name)
    out, crowd = [], 0
    for d in dicts[:max_images] if max_images else dicts:
        anns = [a for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
        crowd += len(d.get("annotations", [])) - len(anns)
        if not anns:
            continue
        boxes = np.array([BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
                          for a in anns], dtype=np.float32)
        out.append({"file_name": d["file_name"], "boxes": boxes,
                    "classes": np.array([a["category_id"] for a in anns], dtype=np.int64)})
    if not out:
        raise ValueError(f"dataset '{dataset_name}' has no (non-crowd) ground-truth boxes to "
                         "classify")
    if crowd:
        logger.info("%d crowd boxes of '%s' are not classified", crowd, dataset_name)
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


def _class_embeddings(rc, class_names, text_emb: Optional[str]) -> torch.Tensor:
    dim = rc.cfg.MODEL.CLIP.TEXT_EMB_DIM
    if text_emb:
        emb = load_text_embeddings(text_emb, "--text-emb", None, dim)
        if emb.shape[0] != len(class_names):
            raise ValueError(f"--text-emb: '{text_emb}' has {emb.shape[0]} class embeddings, but "
                             f"the dataset has {len(class_names)} classes")
        return emb
    table = rc.model.roi_heads.box_predictor.class_embeddings()
    if table.shape[0] == len(class_names):
        return table.detach().float().cpu()
    if rc.text_encoder_loaded:
        logger.info("the config's class embeddings have %d rows for %d classes: encoding the "
                    "class names with the text encoder", table.shape[0], len(class_names))
        return rc.encode_text(class_names).float().cpu()
    raise ValueError(f"the config's class embeddings (MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH or "
                     f"TEXT_EMB_PATH) have {table.shape[0]} rows but the dataset has "
                     f"{len(class_names)} classes, and MODEL.WEIGHTS has no text encoder: pass "
                     f"--text-emb with embeddings of the dataset's classes")


@torch.no_grad()
def region_accuracy(rc, dataset_name: str, modes: Sequence[str] = MODES,
                    max_images: Optional[int] = None, text_emb: Optional[str] = None,
                    crop_resize: str = "warp", crop_context: float = 1.0,
                    progress: bool = True) -> Dict[str, Dict]:
    """Classify every ground-truth box of ``dataset_name`` with ``rc`` (a
    :class:`regionclip.RegionCLIP`) in each of ``modes``.

    Returns:
        dict: mode -> :func:`accuracy_table` of that mode.
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"modes must be a non-empty subset of {MODES}, got {list(modes)}")
    metadata = MetadataCatalog.get(dataset_name)
    class_names = list(metadata.get("thing_classes", []))
    if not class_names:
        raise ValueError(f"dataset '{dataset_name}' has no thing_classes in its metadata")
    splits = splits_from_metadata(metadata)
    classes = F.normalize(_class_embeddings(rc, class_names, text_emb), dim=1)
    regions = dataset_regions(dataset_name, max_images)
    scores = {m: [] for m in modes}
    for item in tqdm(regions, desc=f"classifying boxes of {dataset_name}", disable=not progress):
        for mode in modes:
            if mode == "roi":
                emb = rc.encode_regions(item["file_name"], item["boxes"])
            else:
                emb = rc.encode_crops(item["file_name"], item["boxes"], crop_resize, crop_context)
            scores[mode].append(F.normalize(emb.float().cpu(), dim=1) @ classes.t())
    labels = torch.as_tensor(np.concatenate([r["classes"] for r in regions]))
    return OrderedDict((m, accuracy_table(torch.cat(scores[m]), labels, class_names, splits))
                       for m in modes)


def _parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="a CLIPFastRCNN yaml")
    parser.add_argument("--dataset", help="registered dataset (default: the one "
                        "--register-coco dataset, else the config's DATASETS.TEST[0])")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--max-images", type=int, help="only the first N images with boxes")
    parser.add_argument("--text-emb", help="(num_classes, D) class embeddings in the dataset's "
                        "class order (default: the config's, else the text encoder's)")
    parser.add_argument("--crop-resize", default="warp", choices=("warp", "center"))
    parser.add_argument("--crop-context", type=float, default=1.0,
                        help="scale boxes about their centre before cropping")
    parser.add_argument("--output", help="write the results as json here")
    add_register_arguments(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    setup_logger(name="regionclip")
    registered = register_from_args(args)
    from ..api import RegionCLIP

    rc = RegionCLIP.from_config(args.config_file, opts=args.opts,
                                device="cuda" if torch.cuda.is_available() else "cpu")
    dataset = args.dataset or (registered[0] if len(registered) == 1 else None) or (
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
                       "results": results}, f, indent=1)
    return results
