"""Stage 2: a class-agnostic region proposal network trained on base-category boxes.

detectron2's ``ProposalNetwork`` with the small CLIP image tower as its backbone (res4 features,
initialised from the teacher), trained on ``det_train`` boxes of base categories only (every
class mapped to one "object" class). The frozen result is the offline RPN of stages 3-6. Its
recall of base and of novel test boxes shows how far a base-trained RPN generalises.
"""
import logging
import os
from typing import Dict, List

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, pairwise_iou

from regionclip.checkpoint import RegionCLIPCheckpointer

from .common import (
    detection_batches,
    detection_inputs,
    save_trained,
    scale_anchors,
    stage_cfg,
    stage_input_size,
    train_loop,
    write_json,
)

__all__ = ["train_rpn", "proposal_recall", "rpn_cfg"]

logger = logging.getLogger(__name__)


def rpn_cfg(settings, arch: str, weights: str = ""):
    """The RPN's detectron2 config for this run (architecture JSON and initial weights).

    Anchor sizes (rpn.yaml, ``RPN.OPTS``) are in pixels of scenes at ``WORLD.IMAGE_SIZE``; they
    are scaled by ``INPUT_SIZE / WORLD.IMAGE_SIZE``, as the objects are.
    """
    cfg = stage_cfg(settings, settings.RPN, ["MODEL.CLIP.ARCH", arch, "MODEL.WEIGHTS", weights])
    return scale_anchors(cfg, stage_input_size(settings) / settings.WORLD.IMAGE_SIZE)


@torch.no_grad()
def proposal_recall(proposals: List[torch.Tensor], gt: List[dict], classes: List[int],
                    iou: float = 0.5) -> float:
    """Fraction of ground-truth boxes of the given classes covered by a proposal (IoU >= iou).

    Args:
        proposals (list[Tensor]): (R, 4) XYXY proposals per image.
        gt (list[dict]): per image ``boxes`` (K, 4) and ``classes`` (K,).
        classes (list[int]): contiguous class ids to count.
        iou (float): IoU threshold.

    Returns:
        float: recall (NaN when there is no such box).
    """
    hit = total = 0
    for props, target in zip(proposals, gt):
        mask = np.isin(target["classes"], classes)
        if not mask.any():
            continue
        total += int(mask.sum())
        if len(props) == 0:
            continue
        overlap = pairwise_iou(Boxes(torch.as_tensor(target["boxes"][mask])), Boxes(props))
        hit += int((overlap.max(dim=1).values >= iou).sum())
    return hit / total if total else float("nan")


def train_rpn(settings, world, clip_paths: Dict[str, str], out_dir: str,
              progress: bool = True) -> Dict[str, str]:
    """Train the RPN; write ``config.yaml``, ``model_final.pth`` and ``metrics.json``.

    Args:
        settings (CfgNode): toy-world settings.
        world (World): the generated world.
        clip_paths (dict): stage-1 outputs (``arch``, ``weights``).
        out_dir (str): stage folder.
        progress (bool): show a progress bar.

    Returns:
        dict: paths of ``config``, ``weights``, ``metrics``.
    """
    os.makedirs(out_dir, exist_ok=True)
    cfg = rpn_cfg(settings, os.path.abspath(clip_paths["arch"]),
                  os.path.abspath(clip_paths["weights"]))
    torch.manual_seed(settings.SEED)
    model = build_model(cfg)
    RegionCLIPCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    images = world.images("det_train")
    boxes = world.boxes("det_train_base")
    batches = detection_batches(images, boxes, cfg.SOLVER.IMS_PER_BATCH, settings.SEED,
                                class_agnostic=True, size=cfg.INPUT.MAX_SIZE_TRAIN)
    history = train_loop(model, cfg, batches, "stage 2: RPN", progress)
    weights, config = save_trained(model, cfg, out_dir)
    model.eval()
    test_images, test_boxes = world.images("test"), world.boxes("test_all")
    proposals = []
    with torch.no_grad():
        for start in range(0, len(test_images), 32):
            batch = [detection_inputs(test_images, test_boxes, i, with_instances=False,
                                      size=cfg.INPUT.MAX_SIZE_TEST)
                     for i in range(start, min(start + 32, len(test_images)))]
            proposals += [o["proposals"].proposal_boxes.tensor for o in model(batch)]
    names = world.class_names
    base = [names.index(c) for c in world.base_classes]
    novel = [names.index(c) for c in world.novel_classes]
    metrics = {"loss": history, "proposals_per_image": float(np.mean([len(p) for p in proposals])),
               "recall50_base": proposal_recall(proposals, test_boxes, base),
               "recall50_novel": proposal_recall(proposals, test_boxes, novel)}
    write_json(os.path.join(out_dir, "metrics.json"), metrics)
    logger.info("RPN: recall@IoU0.5 base %.3f novel %.3f with %.1f proposals per image",
                metrics["recall50_base"], metrics["recall50_novel"],
                metrics["proposals_per_image"])
    return {"config": config, "weights": weights, "metrics": os.path.join(out_dir, "metrics.json")}
