"""Fast R-CNN post-processing with optional soft-NMS and separately reported scores.

Same contract as :func:`detectron2.modeling.roi_heads.fast_rcnn.fast_rcnn_inference`, plus:

* ``soft_nms``: a dict ``{"method", "sigma", "prune"}`` to replace per-class NMS by per-class
  soft-NMS (:func:`detectron2_ext.layers.batched_soft_nms`, linear/hard threshold = ``nms_thresh``);
  the decayed scores replace the scores of the kept detections;
* ``report_scores``: per image, an (R, K+1) tensor of scores to report in ``Instances.scores``
  instead of the scores used for thresholding and ranking (e.g. class probabilities before a
  re-scoring). With soft-NMS the reported scores are the decayed scores.
"""
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.layers import batched_nms
from detectron2.structures import Boxes, Instances

from ..layers import batched_soft_nms

__all__ = ["fast_rcnn_inference", "fast_rcnn_inference_single_image"]


def fast_rcnn_inference(
    boxes: List[torch.Tensor],
    scores: List[torch.Tensor],
    image_shapes: List[Tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
    soft_nms: Optional[Dict] = None,
    report_scores: Optional[List[torch.Tensor]] = None,
):
    """Run :func:`fast_rcnn_inference_single_image` on every image.

    Returns:
        (list[Instances], list[Tensor]): detections and, per image, the index of the proposal each
        detection came from.
    """
    if report_scores is None:
        report_scores = [None] * len(scores)
    results = [
        fast_rcnn_inference_single_image(b, s, shape, score_thresh, nms_thresh, topk_per_image,
                                         soft_nms=soft_nms, report_scores=r)
        for b, s, shape, r in zip(boxes, scores, image_shapes, report_scores)
    ]
    return [r[0] for r in results], [r[1] for r in results]


def fast_rcnn_inference_single_image(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_shape: Tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
    soft_nms: Optional[Dict] = None,
    report_scores: Optional[torch.Tensor] = None,
):
    """Threshold, (soft-)NMS and top-k for one image.

    Args:
        boxes (Tensor): (R, K*4) class-specific or (R, 4) class-agnostic boxes.
        scores (Tensor): (R, K+1) scores, background last.
        image_shape (tuple): (height, width) to clip boxes to.
        score_thresh (float): keep (box, class) pairs with score above it.
        nms_thresh (float): per-class NMS IoU threshold (also soft-NMS's linear/hard threshold).
        topk_per_image (int): keep at most this many detections (< 0: all).
        soft_nms (dict or None): ``{"method": str, "sigma": float, "prune": float}`` or None.
        report_scores (Tensor or None): (R, K+1) scores reported instead of ``scores``.

    Returns:
        (Instances, Tensor): detections with ``pred_boxes``, ``scores``, ``pred_classes``; and
        the proposal index of each detection.
    """
    if report_scores is None:
        report_scores = scores
    # Rows with any non-finite box or score are dropped, with their proposals.
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    rows = torch.arange(boxes.shape[0], device=boxes.device)
    # a traced graph (ONNX / TorchScript export) always filters: the branch taken on the sample
    # image would otherwise be fixed in it
    if torch.jit.is_tracing() or not bool(valid.all()):
        boxes, scores = boxes[valid], scores[valid]
        report_scores, rows = report_scores[valid], rows[valid]
    scores, report_scores = scores[:, :-1], report_scores[:, :-1]
    num_reg = boxes.shape[1] // 4
    boxes = Boxes(boxes.reshape(-1, 4))
    boxes.clip(image_shape)
    boxes = boxes.tensor.view(-1, num_reg, 4)

    mask = scores > score_thresh
    inds = mask.nonzero()  # (R', 2): proposal row, class
    boxes = boxes[inds[:, 0], 0] if num_reg == 1 else boxes[mask]
    scores, report_scores = scores[mask], report_scores[mask]

    if soft_nms is None:
        keep = batched_nms(boxes, scores, inds[:, 1], nms_thresh)
    else:
        keep, decayed = batched_soft_nms(boxes, scores, inds[:, 1], soft_nms["method"],
                                         soft_nms["sigma"], nms_thresh, soft_nms["prune"])
        scores = scores.clone()
        scores[keep] = decayed.to(scores.dtype)
        report_scores = scores
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    result = Instances(image_shape)
    result.pred_boxes = Boxes(boxes[keep])
    result.scores = report_scores[keep]
    result.pred_classes = inds[keep, 1]
    return result, rows[inds[keep, 0]]
