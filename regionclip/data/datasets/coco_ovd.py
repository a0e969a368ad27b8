"""COCO open-vocabulary detection (OVR-CNN split: 48 base / 17 novel classes).

Registers, rooted at ``$DETECTRON2_DATASETS`` (default ``datasets``):

* ``coco_2017_ovd_{all,b,t}_train``: images ``coco/train2017``, annotations
  ``coco/annotations/ovd_ins_train2017_{all,b,t}.json``;
* ``coco_2017_ovd_{all,b,t}_test``: images ``coco/val2017``, annotations
  ``coco/annotations/ovd_ins_val2017_{all,b,t}.json``;

where ``all`` holds the 65 benchmark classes, ``b`` the 48 base and ``t`` the 17 novel ("target")
classes, with contiguous ids in COCO category-id order.

The jsons are built by ``datasets/prepare_ovd_coco.py``. Unlike the original (empty metadata, the
classes came from the json when it was loaded), the metadata is set at registration from the
package's category table, so evaluators can read the base/novel split without loading data:
see :mod:`regionclip.data.categories` for the keys. Registration reads no dataset file.
"""
import os

from detectron2.data.datasets import register_coco_instances

from ..categories import coco_metadata, coco_ovd_categories

# subset -> OVD splits it contains
COCO_OVD_SUBSETS = {"all": ("base", "novel"), "b": ("base",), "t": ("novel",)}
# phase -> (image folder, json split name)
COCO_OVD_PHASES = {"train": ("coco/train2017", "train2017"), "test": ("coco/val2017", "val2017")}


def coco_ovd_dataset_name(subset, phase):
    """Return the registered name, e.g. ``coco_2017_ovd_all_train``.

    Args:
        subset (str): ``"all"``, ``"b"`` or ``"t"``.
        phase (str): ``"train"`` or ``"test"``.

    Returns:
        str: the dataset name.
    """
    return f"coco_2017_ovd_{subset}_{phase}"


def coco_ovd_metadata(subset):
    """Return the metadata of the COCO OVD datasets of a subset.

    Args:
        subset (str): ``"all"`` (65 classes), ``"b"`` (48 base) or ``"t"`` (17 novel).

    Returns:
        dict: see :func:`regionclip.data.categories.coco_metadata`.
    """
    if subset not in COCO_OVD_SUBSETS:
        raise KeyError(f"Unknown COCO OVD subset {subset!r}; expected one of "
                       f"{sorted(COCO_OVD_SUBSETS)}")
    return coco_metadata(coco_ovd_categories(COCO_OVD_SUBSETS[subset]))


def register_all_coco_ovd(root):
    """Register the six ``coco_2017_ovd_{all,b,t}_{train,test}`` datasets.

    Args:
        root (str): the datasets root (``$DETECTRON2_DATASETS``).

    Returns:
        list[str]: the registered names.
    """
    names = []
    for subset in COCO_OVD_SUBSETS:
        meta = coco_ovd_metadata(subset)
        for phase, (image_dir, split) in COCO_OVD_PHASES.items():
            name = coco_ovd_dataset_name(subset, phase)
            json_file = os.path.join(root, "coco", "annotations", f"ovd_ins_{split}_{subset}.json")
            register_coco_instances(name, dict(meta), json_file, os.path.join(root, image_dir))
            names.append(name)
    return names


_ROOT = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
REGISTERED_COCO_OVD = register_all_coco_ovd(_ROOT)
