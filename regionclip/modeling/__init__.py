"""Models; importing this package registers every component with detectron2's registries:
backbones (build_clip_resnet_backbone / _fpn_backbone), ROI heads (CLIPRes5ROIHeads,
PretrainRes5ROIHeads) and meta-architectures (CLIPFastRCNN, PretrainFastRCNN, ...)."""
from . import backbone, meta_arch, roi_heads  # noqa: F401
from .text_encoder import build_clip_language_encoder  # noqa: F401
