"""Named class vocabularies (class names in class order) for text embeddings and evaluation.

========== ======= ==========================================================================
name       classes content
========== ======= ==========================================================================
coco_65    65      COCO OVD benchmark (48 base + 17 novel), COCO category-id order
coco_48    48      COCO OVD base classes, COCO category-id order
coco_17    17      COCO OVD novel classes, COCO category-id order
coco_80    80      all COCO classes, COCO category-id order
lvis_1203  1203    all LVIS v1 classes, LVIS id order
lvis_866   866     LVIS v1 base classes (frequent + common, i.e. not rare), LVIS id order
========== ======= ==========================================================================

COCO names are the COCO 2017 names (``"tv"``, ``"couch"``...). LVIS names are cleaned like the
original's ``get_cls_names``: the category ``name`` with ``_`` replaced by a space and parentheses
removed (``"bow_(weapon)"`` -> ``"bow weapon"``). These orders match the contiguous class ids of
the registered datasets (``coco_2017_ovd_all_*``: coco_65; ``lvis_v1_train_ovd``: lvis_866;
other LVIS datasets: lvis_1203).
"""
from .categories import clean_lvis_name, coco_ovd_categories, lvis_v1_categories

_BUILDERS = {
    "coco_65": lambda: [c["name"] for c in coco_ovd_categories(("base", "novel"))],
    "coco_48": lambda: [c["name"] for c in coco_ovd_categories(("base",))],
    "coco_17": lambda: [c["name"] for c in coco_ovd_categories(("novel",))],
    "coco_80": lambda: [c["name"] for c in coco_ovd_categories(("base", "novel", "unused"))],
    "lvis_1203": lambda: [clean_lvis_name(c["name"]) for c in lvis_v1_categories()],
    "lvis_866": lambda: [clean_lvis_name(c["name"]) for c in lvis_v1_categories(("c", "f"))],
}

VOCABULARY_NAMES = tuple(_BUILDERS)


def get_vocabulary(name):
    """Return the class names of a named vocabulary, in class order.

    Args:
        name (str): one of :data:`VOCABULARY_NAMES`.

    Returns:
        list[str]: a new list of class names.

    Raises:
        KeyError: for an unknown name (the message lists the valid names).
    """
    if name not in _BUILDERS:
        raise KeyError(f"Unknown vocabulary {name!r}; valid names are: "
                       f"{', '.join(VOCABULARY_NAMES)}")
    return _BUILDERS[name]()
