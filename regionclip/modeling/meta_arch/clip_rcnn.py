"""detectron2's GeneralizedRCNN / ProposalNetwork with a CLIP backbone (RegionCLIP §1.16).

The original edited detectron2's ``rcnn.py`` so that these meta-architectures (1) divide pixels
by 255 when ``MODEL.PIXEL_MEAN`` is in [0, 1] units (CLIP's statistics) and (2) hand the CLIP
backbone's ``layer4`` (and ``attnpool``) to :class:`CLIPRes5ROIHeads`. A plugin cannot edit
detectron2, so these subclasses do it under new names, used by the ``mask_rcnn_CLIP_*`` configs.
"""
from typing import Dict, List

import torch
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, ProposalNetwork
from detectron2.structures import ImageList

__all__ = ["CLIPGeneralizedRCNN", "CLIPProposalNetwork"]


class _UnitScaleMixin:
    """Pixel normalisation that first divides by 255 when the mean is given in [0, 1] units."""

    def _unit_scale(self):
        return float(self.pixel_mean.sum()) < 3.0

    def preprocess_image(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        images = [self._move_to_current_device(x["image"]) for x in batched_inputs]
        scale = 255.0 if self._unit_scale() else 1.0
        images = [(x / scale - self.pixel_mean) / self.pixel_std for x in images]
        return ImageList.from_tensors(images, self.backbone.size_divisibility,
                                      padding_constraints=self.backbone.padding_constraints)


@META_ARCH_REGISTRY.register()
class CLIPGeneralizedRCNN(_UnitScaleMixin, GeneralizedRCNN):
    """GeneralizedRCNN for CLIP backbones; binds the backbone's res5/attnpool to C4 CLIP heads."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if hasattr(self.roi_heads, "bind_backbone") and hasattr(self.backbone, "layer4"):
            self.roi_heads.bind_backbone(self.backbone)
        if self._unit_scale() and self.input_format != "RGB":
            raise ValueError("MODEL.PIXEL_MEAN in [0, 1] units (CLIP) needs INPUT.FORMAT RGB")


@META_ARCH_REGISTRY.register()
class CLIPProposalNetwork(_UnitScaleMixin, ProposalNetwork):
    """ProposalNetwork for CLIP backbones (pixel means in [0, 1] units are handled)."""
