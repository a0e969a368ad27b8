"""Models; importing this package registers every component with detectron2's registries."""
from . import backbone  # noqa: F401  (registers build_clip_resnet_backbone / _fpn_backbone)
from .text_encoder import build_clip_language_encoder  # noqa: F401
from . import roi_heads  # noqa: F401,E402  (registers CLIPRes5ROIHeads, PretrainRes5ROIHeads)
from . import meta_arch  # noqa: F401,E402  (registers CLIPFastRCNN)
