"""Dataset registration; each module registers its family on import (no dataset file is read)."""
from . import coco_ovd, lvis_ovd  # noqa: F401

REGISTERED_DATASETS = coco_ovd.REGISTERED_COCO_OVD + lvis_ovd.REGISTERED_LVIS
