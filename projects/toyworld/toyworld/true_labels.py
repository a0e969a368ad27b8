"""A positive control outside the original method: pseudo labels that are right.

docs/TOYWORLD.md explains the student's lack of a lead over its teacher by its pseudo labels:
they are right on about 70 % of the regions that overlap an object, no better than the
teacher's own RoI recognition, so region distillation has nothing better to pass on. The
explanation predicts that better labels give the student a lead. The crop control
(:mod:`.crop_teacher`) could not test it (its labels were no better). This control does:
:class:`TrueLabelPretrainFastRCNN` gives every sampled region that overlaps an object of the
image-caption picture (IoU >= 0.5 with the world's box) that object's shape concept, as a
one-hot target of both region losses; the other regions keep the teacher's labels. Everything
else is :class:`~regionclip.modeling.meta_arch.PretrainFastRCNN`'s.

It uses boxes, so it breaks the rules of the method on purpose (with ``PRETRAIN.TRUE_LABELS``
``all``, novel boxes too; with ``base`` only the base objects get right labels, the novel ones
keep the teacher's). Selected by ``PRETRAIN.TRUE_LABELS``; never the default.
"""
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList, Instances

from regionclip.modeling.meta_arch import PretrainFastRCNN

from .analysis import MATCH_IOU, matched_objects

__all__ = ["TrueLabelPretrainFastRCNN", "true_concepts", "label_targets"]


def true_concepts(regions: torch.Tensor, boxes: torch.Tensor, concepts: torch.Tensor,
                  iou: float = MATCH_IOU) -> torch.Tensor:
    """The concept of the object each region overlaps most, -1 where none reaches ``iou``
    (the matching of the analysis, :func:`~.analysis.matched_objects`).

    Args:
        regions (Tensor): (R, 4) XYXY region boxes.
        boxes (Tensor): (K, 4) XYXY object boxes, in the same pixels.
        concepts (Tensor): (K,) concept index of each object.

    Returns:
        LongTensor: (R,) concept indices or -1.
    """
    index = matched_objects(regions, boxes, iou)
    hit = index >= 0
    out = torch.full_like(index, -1)
    out[hit] = concepts.to(index.device)[index[hit]]
    return out


def label_targets(boxes: Sequence[Dict[str, np.ndarray]], class_names: Sequence[str],
                  concepts: Sequence[str], classes: Sequence[str], scale: float = 1.0):
    """Per image, the objects that get right labels: ``{"gt_boxes", "gt_concepts"}`` tensors.

    Args:
        boxes: per image ``{"boxes": (K, 4), "classes": (K,)}`` (:meth:`World.boxes`).
        class_names: the names of the contiguous class ids.
        concepts: the concept pool.
        classes: names of the classes whose objects get right labels.
        scale (float): factor from the world's pixels to the pictures the model sees.
    """
    missing = sorted(set(classes) - set(concepts))
    if missing:
        raise ValueError(f"PRETRAIN.TRUE_LABELS: the concept pool has no concept {missing}; "
                         "a right label must be a concept of the pool")
    index = {name: concepts.index(name) for name in classes}
    out = []
    for b in boxes:
        names = [class_names[c] for c in b["classes"]]
        keep = [i for i, name in enumerate(names) if name in index]
        out.append({"gt_boxes": torch.as_tensor(b["boxes"][keep] * scale, dtype=torch.float32)
                    .reshape(-1, 4),
                    "gt_concepts": torch.tensor([index[names[i]] for i in keep],
                                                dtype=torch.long)})
    return out


@META_ARCH_REGISTRY.register()
class TrueLabelPretrainFastRCNN(PretrainFastRCNN):
    """:class:`~regionclip.modeling.meta_arch.PretrainFastRCNN` whose regions on objects get
    their object's concept as pseudo label. Each input needs ``gt_boxes`` ((K, 4) XYXY in the
    pixels of its ``image``) and ``gt_concepts`` ((K,) concept indices)."""

    def get_region_proposals(self, batched_inputs: List[Dict], images: ImageList):
        proposals = super().get_region_proposals(batched_inputs, images)
        for i, (x, p) in enumerate(zip(batched_inputs, proposals)):
            if "gt_boxes" not in x or "gt_concepts" not in x:
                raise KeyError(f"input {i}: {type(self).__name__} needs 'gt_boxes' and "
                               f"'gt_concepts' (the objects whose regions get right labels)")
            p.true_concept = true_concepts(p.proposal_boxes.tensor, x["gt_boxes"],
                                           x["gt_concepts"])
        return proposals

    def pseudo_labels(self, images: ImageList, proposals: List[Instances]):
        keep, labels, q = super().pseudo_labels(images, proposals)
        true = torch.cat([p.true_concept for p in proposals])
        full_labels = torch.full_like(true, -1)
        full_q = q.new_zeros((len(true), q.shape[1]))
        full_labels[keep], full_q[keep] = labels, q
        hit = true >= 0  # regions on objects: their object's concept, whatever the teacher says
        full_labels[hit] = true[hit]
        full_q[hit] = F.one_hot(true[hit], q.shape[1]).to(q.dtype)
        keep = torch.nonzero(full_labels >= 0).flatten()
        return keep, full_labels[keep], full_q[keep]
