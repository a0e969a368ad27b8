"""Models; importing this package registers every component with detectron2's registries."""
from . import backbone  # noqa: F401  (registers build_clip_resnet_backbone / _fpn_backbone)
from .text_encoder import build_clip_language_encoder  # noqa: F401
