"""Dataset registration; each benchmark module registers its family on import (no dataset file
is read). :mod:`.custom_ovd` registers one's own COCO-format datasets on request."""
from . import coco_ovd, lvis_ovd  # noqa: F401
from .custom_ovd import register_ovd_coco  # noqa: F401

REGISTERED_DATASETS = coco_ovd.REGISTERED_COCO_OVD + lvis_ovd.REGISTERED_LVIS
