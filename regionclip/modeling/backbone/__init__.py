"""Backbones (registered in detectron2's ``BACKBONE_REGISTRY`` on import)."""
from .clip_resnet import (  # noqa: F401
    CLIPResNetBackbone,
    build_clip_resnet_backbone,
    build_clip_resnet_fpn_backbone,
    uses_attnpool,
)
