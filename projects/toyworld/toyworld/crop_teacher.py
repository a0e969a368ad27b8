"""A control experiment outside the original method: pseudo labels from the teacher's crops.

The original labels each region with the teacher's embedding of that region pooled from its
feature map of the whole picture (RoIAlign), the picture the student sees too. In the toy world
those labels are exactly as good as the teacher's RoI recognition, and the student does not
surpass its teacher (docs/TOYWORLD.md). :class:`CropTeacherPretrainFastRCNN` changes only that
input: the teacher embeds each region cut out of the picture (with 10 % context on each side)
and resized to its own input size, as CLIP classifies crops in the paper's Fig. 1. Everything
else (regions, losses, student, concept pool) is
:class:`~regionclip.modeling.meta_arch.PretrainFastRCNN`'s.
Selected by ``PRETRAIN.TEACHER_CROPS``; never the default.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList, Instances
from torchvision.ops import roi_align

from regionclip.modeling.meta_arch import PretrainFastRCNN

from .analysis import CROP_CONTEXT  # the region stage's crops: 10 % context on each side

__all__ = ["CropTeacherPretrainFastRCNN", "crop_regions"]


def crop_regions(images: torch.Tensor, boxes: List[torch.Tensor], size: int,
                 context: float = CROP_CONTEXT,
                 image_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> torch.Tensor:
    """Cut boxes out of a batch of (normalised) images and resize them to ``size`` x ``size``.

    Args:
        images (Tensor): (N, C, H, W) images.
        boxes (list[Tensor]): per image, (R_i, 4) XYXY boxes in pixels of ``images``.
        size (int): output side.
        context (float): boxes are scaled by this factor about their centre, then clipped to
            the image.
        image_sizes (list[(int, int)]): (height, width) of each image inside a padded batch
            (default: the whole tensor).

    Returns:
        Tensor: (sum R_i, C, size, size) crops, resized bilinearly (RoIAlign, one sample per
        output pixel at its centre).
    """
    sizes = image_sizes or [tuple(images.shape[-2:])] * len(boxes)
    scaled = []
    for b, (height, width) in zip(boxes, sizes):
        centre = (b[:, :2] + b[:, 2:]) / 2
        half = (b[:, 2:] - b[:, :2]) * (context / 2)
        box = torch.cat([centre - half, centre + half], dim=1)
        box[:, 0::2] = box[:, 0::2].clamp(0, width)
        box[:, 1::2] = box[:, 1::2].clamp(0, height)
        scaled.append(box.to(images.dtype))
    return roi_align(images, scaled, output_size=(size, size), spatial_scale=1.0,
                     sampling_ratio=1, aligned=True)


@META_ARCH_REGISTRY.register()
class CropTeacherPretrainFastRCNN(PretrainFastRCNN):
    """:class:`~regionclip.modeling.meta_arch.PretrainFastRCNN` whose teacher labels regions
    from their crops."""

    def teacher_region_embeddings(self, images: ImageList, proposals: List[Instances]):
        backbone = self.teacher_backbone
        crops = crop_regions(images.tensor, [p.proposal_boxes.tensor for p in proposals],
                             backbone.config.image_size, image_sizes=images.image_sizes)
        res5 = backbone.forward_features(crops, ("res5",))["res5"]
        return backbone.attnpool(res5)
