"""RegionCLIP (Zhong et al., CVPR 2022) as a detectron2 plugin.

``import regionclip`` registers everything the original's configs name: backbones, meta
architectures, ROI heads and datasets. ``add_regionclip_config(cfg)`` prepares a config for every
component of this project (it also calls ``detectron2_ext.add_detectron2_ext_config``).
``list_models()`` names the released checkpoints that ``RegionCLIP.from_pretrained`` builds
(:mod:`regionclip.model_zoo`).
"""
from ._deps import check_dependencies

check_dependencies()

import detectron2_ext  # noqa: E402,F401  (generic detectron2 additions)

from . import data, modeling  # noqa: E402,F401  (register the datasets and the models)
from .api import RegionCLIP  # noqa: E402
from .config import add_regionclip_config  # noqa: E402
from .model_zoo import list_models  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ["add_regionclip_config", "RegionCLIP", "list_models", "__version__"]
