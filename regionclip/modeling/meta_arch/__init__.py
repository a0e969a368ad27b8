"""Meta-architectures (registered in detectron2's ``META_ARCH_REGISTRY`` on import)."""
from .clip_fast_rcnn import CLIPFastRCNN  # noqa: F401
from .clip_rcnn import CLIPGeneralizedRCNN, CLIPProposalNetwork  # noqa: F401,E402
from .pretrain_fast_rcnn import PretrainFastRCNN  # noqa: F401,E402
