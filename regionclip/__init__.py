"""RegionCLIP (Zhong et al., CVPR 2022) as a detectron2 plugin.

``import regionclip`` registers everything the original's configs name: backbones, meta
architectures, ROI heads and datasets. ``add_regionclip_config(cfg)`` prepares a config for every
component of this project (it also calls ``detectron2_ext.add_detectron2_ext_config``).
"""
from ._deps import check_dependencies

check_dependencies()

__version__ = "0.1.0"

import detectron2_ext  # noqa: F401,E402  (generic detectron2 additions)

from .config import add_regionclip_config  # noqa: E402
from . import data  # noqa: F401,E402  (registers datasets)
from . import modeling  # noqa: F401,E402  (registers models)
from .api import RegionCLIP  # noqa: E402

__all__ = ["add_regionclip_config", "RegionCLIP", "__version__"]
