"""Category tables of the open-vocabulary benchmarks and the dataset metadata derived from them.

The tables are package data in ``regionclip/data/metadata/`` (see ``datasets/README.md`` for their
provenance):

* ``coco_ovd_categories.json``: the 80 COCO categories in COCO category-id order, each with
  ``split`` = ``"base"`` (48, seen in training), ``"novel"`` (17, OVR-CNN's target classes) or
  ``"unused"`` (15 classes outside the 65-class benchmark).
* ``lvis_v1_categories.json``: the 1203 LVIS v1 categories (``id``, ``name``, ``synonyms``,
  ``synset``, ``frequency`` in r/c/f, ``image_count`` in ``lvis_v1_train.json``). In the
  open-vocabulary protocol the 337 rare classes are novel and the other 866 are base.

Metadata keys produced here (read them from ``MetadataCatalog.get(name)``):

* ``thing_classes``: class names in contiguous-id order.
* ``thing_dataset_id_to_contiguous_id``: json category id -> contiguous id.
* ``class_split``: ``"base"`` or ``"novel"`` per contiguous id.
* ``base_classes`` / ``novel_classes``: the names in ``thing_classes`` that are base / novel
  (subsets of ``thing_classes``; one of them is empty for datasets holding only one part, e.g.
  ``coco_2017_ovd_b_*`` or ``lvis_v1_train_ovd``).
* LVIS only: ``class_frequency`` (``"r"``/``"c"``/``"f"`` per contiguous id) and
  ``class_image_count`` (detectron2's format, used by its federated loss).
"""
import copy
import functools
import json
import os

METADATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metadata")
COCO_OVD_FILE = "coco_ovd_categories.json"
LVIS_V1_FILE = "lvis_v1_categories.json"
COCO_SPLITS = ("base", "novel", "unused")
LVIS_FREQUENCIES = ("r", "c", "f")


@functools.lru_cache(maxsize=None)
def _read_table(filename):
    path = os.path.join(METADATA_DIR, filename)
    try:
        with open(path) as f:
            payload = json.load(f)
    except (OSError, ValueError) as e:
        raise RuntimeError(f"Cannot read the category table {path}: {e}. It is package data of "
                           "regionclip; regenerate it with "
                           "datasets/generate_category_metadata.py") from e
    if not isinstance(payload, dict) or "categories" not in payload:
        raise RuntimeError(f"{path}: expected a json object with a 'categories' list")
    return payload["categories"]


def coco_ovd_categories(splits=("base", "novel")):
    """Return the COCO categories of the given OVD splits, in COCO category-id order.

    Args:
        splits (Iterable[str]): any of ``"base"``, ``"novel"``, ``"unused"``.

    Returns:
        list[dict]: copies of the table entries ``{"id", "name", "split"}``.
    """
    splits = tuple(splits)
    unknown = set(splits) - set(COCO_SPLITS)
    if unknown:
        raise ValueError(f"Unknown COCO OVD split(s) {sorted(unknown)}; expected {COCO_SPLITS}")
    table = _read_table(COCO_OVD_FILE)
    return [dict(c) for c in table if c["split"] in splits]


def lvis_v1_categories(frequencies=LVIS_FREQUENCIES):
    """Return the LVIS v1 categories with the given frequencies, sorted by LVIS id.

    Args:
        frequencies (Iterable[str]): any of ``"r"``, ``"c"``, ``"f"``.

    Returns:
        list[dict]: copies of the table entries (``id``, ``name``, ``synonyms``, ``synset``,
        ``frequency``, ``image_count``).
    """
    frequencies = tuple(frequencies)
    unknown = set(frequencies) - set(LVIS_FREQUENCIES)
    if unknown:
        raise ValueError(f"Unknown LVIS frequency {sorted(unknown)}; expected {LVIS_FREQUENCIES}")
    return [copy.deepcopy(c) for c in _read_table(LVIS_V1_FILE) if c["frequency"] in frequencies]


def clean_lvis_name(name):
    """Clean an LVIS class name as the original's ``get_cls_names``: ``_`` -> space, no parentheses.

    Args:
        name (str): e.g. ``"bow_(weapon)"``.

    Returns:
        str: e.g. ``"bow weapon"``.
    """
    return name.replace("_", " ").replace("(", "").replace(")", "")


def _sorted_by_id(categories, what):
    cats = sorted(categories, key=lambda c: c["id"])
    ids = [c["id"] for c in cats]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{what}: duplicate category ids in {ids}")
    return cats


def coco_metadata(categories):
    """Build the metadata of a COCO-style open-vocabulary dataset.

    Args:
        categories (list[dict]): the dataset's categories, each with ``id``, ``name`` and
            ``split`` (``"base"`` or ``"novel"``); contiguous ids follow category-id order, as
            detectron2's ``load_coco_json`` assigns them.

    Returns:
        dict: ``thing_classes``, ``thing_dataset_id_to_contiguous_id``, ``class_split``,
        ``base_classes``, ``novel_classes``.
    """
    cats = _sorted_by_id(categories, "coco_metadata")
    for c in cats:
        if c.get("split") not in ("base", "novel"):
            raise ValueError(f"Category {c} needs 'split' = 'base' or 'novel'")
    return {
        "thing_classes": [c["name"] for c in cats],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats)},
        "class_split": [c["split"] for c in cats],
        "base_classes": [c["name"] for c in cats if c["split"] == "base"],
        "novel_classes": [c["name"] for c in cats if c["split"] == "novel"],
    }


def lvis_metadata(categories, base_only=False):
    """Build the metadata of an LVIS-style dataset (novel = rare, base = common + frequent).

    Args:
        categories (list[dict]): LVIS categories with ``id`` (1..K), ``name``, ``frequency`` and
            optionally ``synonyms`` (``thing_classes`` uses ``synonyms[0]`` like detectron2) and
            ``image_count``.
        base_only (bool): describe the rare-filtered dataset (only the base classes, re-indexed
            in id order) instead of all classes.

    Returns:
        dict: ``thing_classes``, ``thing_dataset_id_to_contiguous_id``, ``class_frequency``,
        ``class_split``, ``base_classes``, ``novel_classes`` and, when every category has an
        ``image_count``, ``class_image_count``.
    """
    cats = _sorted_by_id(categories, "lvis_metadata")
    for c in cats:
        if c.get("frequency") not in LVIS_FREQUENCIES:
            raise ValueError(f"LVIS category {c.get('id')} ({c.get('name')}) needs 'frequency' "
                             f"in {LVIS_FREQUENCIES}, got {c.get('frequency')!r}")
    kept = [c for c in cats if not (base_only and c["frequency"] == "r")]

    def display_name(c):
        return c["synonyms"][0] if c.get("synonyms") else c["name"]

    meta = {
        "thing_classes": [display_name(c) for c in kept],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(kept)},
        "class_frequency": [c["frequency"] for c in kept],
        "class_split": ["novel" if c["frequency"] == "r" else "base" for c in kept],
        "base_classes": [display_name(c) for c in kept if c["frequency"] != "r"],
        "novel_classes": [display_name(c) for c in kept if c["frequency"] == "r"],
    }
    if all("image_count" in c for c in kept):
        meta["class_image_count"] = [{"id": c["id"], "image_count": c["image_count"]}
                                     for c in kept]
    return meta
