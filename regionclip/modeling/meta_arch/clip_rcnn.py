"""detectron2's GeneralizedRCNN / ProposalNetwork with a CLIP backbone (RegionCLIP §1.16).

The original edited detectron2's ``rcnn.py`` so that these meta-architectures (1) divide pixels
by 255 when ``MODEL.PIXEL_MEAN`` is in [0, 1] units (CLIP's statistics) and (2) hand the CLIP
backbone's ``layer4`` (and ``attnpool``) to :class:`CLIPRes5ROIHeads`. A plugin cannot edit
detectron2, so these subclasses do it under new names, used by the ``mask_rcnn_CLIP_*`` configs.
"""
from typing import Dict, List

import torch
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, ProposalNetwork

from .pixels import normalize_images, pixel_range

__all__ = ["CLIPGeneralizedRCNN", "CLIPProposalNetwork"]


class _PixelRangeMixin:
    """Pixel normalisation by :func:`~.pixels.normalize_images` (means in [0, 1] units too)."""

    def _init_pixel_range(self):
        self.pixel_range = pixel_range(self.pixel_mean, self.input_format)

    def preprocess_image(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        images = [self._move_to_current_device(x["image"]) for x in batched_inputs]
        return normalize_images(images, self.pixel_mean, self.pixel_std, self.pixel_range,
                                self.backbone.size_divisibility,
                                padding_constraints=self.backbone.padding_constraints)


@META_ARCH_REGISTRY.register()
class CLIPGeneralizedRCNN(_PixelRangeMixin, GeneralizedRCNN):
    """GeneralizedRCNN for CLIP backbones; hands the backbone's res5/attnpool to C4 CLIP heads."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_pixel_range()
        if hasattr(self.roi_heads, "use_backbone_blocks") and hasattr(self.backbone, "layer4"):
            predictor = getattr(self.roi_heads, "box_predictor", None)
            use_attnpool = getattr(predictor, "use_text_emb_classifier", False)
            self.roi_heads.use_backbone_blocks(
                self.backbone.layer4, self.backbone.attnpool if use_attnpool else None)


@META_ARCH_REGISTRY.register()
class CLIPProposalNetwork(_PixelRangeMixin, ProposalNetwork):
    """ProposalNetwork for CLIP backbones (pixel means in [0, 1] units are handled)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_pixel_range()
