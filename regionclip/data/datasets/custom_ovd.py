"""Open-vocabulary datasets of one's own: a COCO-format json plus a list of novel classes.

:func:`register_ovd_coco` registers a COCO-format json as a detectron2 dataset whose metadata
carries the base/novel split (see :mod:`regionclip.data.categories` for the keys), so that
training uses the base classes only and evaluation reports AP50 on novel, base and all
classes, as with the COCO benchmark. The novel classes are given by name, or read from the
categories' ``"split"`` field (``"unseen"``/``"novel"`` = novel, as in OVR-CNN's
``ovd_ins_*`` jsons).

``split`` selects what the registered dataset holds, like the ``all`` / ``b`` / ``t`` COCO jsons:

* ``"all"``: every category and annotation, every image;
* ``"base"`` (for training): the base categories only, their annotations, and the images with
  at least one of them (as OVR-CNN built ``ovd_ins_train2017_b.json``);
* ``"novel"``: the same with the novel categories.

Contiguous class ids follow category-id order within the kept categories: the order of the text
embedding files (``tools/extract_concept_features.py --concepts dataset:NAME`` writes them).

On the command line (``tools/train_net.py``, ``tools/extract_concept_features.py``)::

    --register-coco NAME JSON IMAGE_ROOT [all|base|novel]  (repeatable)
    --novel-classes novel.txt   (or "zebra,giraffe"; default: the json's "split" fields)
"""
import argparse
import json
import logging
import os
from typing import Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..categories import coco_metadata

__all__ = ["OVD_SPLITS", "ovd_categories", "load_ovd_coco_json", "register_ovd_coco",
           "read_class_names", "add_register_arguments", "register_from_args"]

logger = logging.getLogger(__name__)

OVD_SPLITS = ("all", "base", "novel")
_NOVEL_TAGS = {"unseen": "novel", "novel": "novel", "seen": "base", "base": "base"}
_REGISTERED: Dict[str, tuple] = {}  # name -> what it was registered with, by this module


def _read_categories(json_file: str) -> List[dict]:
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"dataset json '{json_file}' does not exist")
    with open(json_file) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"dataset json '{json_file}' is not valid json: {e}") from None
    cats = data.get("categories") if isinstance(data, dict) else None
    if not cats or not all(isinstance(c, dict) and "id" in c and "name" in c for c in cats):
        raise ValueError(f"dataset json '{json_file}' has no COCO 'categories' list of "
                         "{'id', 'name'} entries")
    return cats


def ovd_categories(json_file: str, novel_classes: Optional[Sequence[str]] = None,
                   absent_novel_ok: bool = False) -> List[dict]:
    """The json's categories in category-id order, each ``{"id", "name", "split"}``.

    Args:
        json_file (str): a COCO-format json.
        novel_classes (sequence[str] or None): names of the novel classes; None reads the
            categories' ``"split"`` fields (``"unseen"``/``"novel"`` are novel, ``"seen"``/
            ``"base"`` or no field base; other values are base, with a warning).
        absent_novel_ok (bool): novel classes missing from the json are fine (a json that holds
            only the base classes); otherwise they are an error (a misspelt name).

    Raises:
        ValueError: a novel class that is not a category of the json, or duplicate names.
    """
    cats = sorted(_read_categories(json_file), key=lambda c: c["id"])
    names = [c["name"] for c in cats]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"dataset json '{json_file}': duplicate category names {duplicates[:5]}")
    if novel_classes is None:
        tags = {c["name"]: str(c.get("split", "base")).strip().lower() for c in cats}
        odd = sorted({t for t in tags.values() if t not in _NOVEL_TAGS})
        if odd:
            logger.warning("dataset json '%s': category 'split' values %s are neither "
                           "seen/unseen nor base/novel; those categories count as base", json_file,
                           odd)
        split = {n: _NOVEL_TAGS.get(t, "base") for n, t in tags.items()}
    else:
        unknown = sorted(set(novel_classes) - set(names))
        if unknown and not absent_novel_ok:
            raise ValueError(f"novel classes {unknown[:5]} are not categories of '{json_file}' "
                             f"(it has {len(names)}: {names[:5]}...). --novel-classes applies to "
                             "every --register-coco dataset: register a json that holds only the "
                             "base classes with split 'base'")
        split = {n: "novel" if n in set(novel_classes) else "base" for n in names}
    return [{"id": c["id"], "name": c["name"], "split": split[c["name"]]} for c in cats]


def load_ovd_coco_json(json_file: str, image_root: str, kept: Dict[int, int],
                       drop_empty: bool, declared: Optional[Sequence[int]] = None) -> List[dict]:
    """detectron2 dataset dicts of a COCO json, keeping the categories in ``kept``.

    Args:
        kept (dict[int, int]): json category id -> contiguous id of the kept categories.
        drop_empty (bool): drop the images left without annotation.
        declared (sequence[int] or None): the ids of all the json's categories (None: read from
            the json; the registration passes them, so the json is parsed once per load).

    Raises:
        ValueError: an annotation whose category id is not among the json's categories.
    """
    from detectron2.data.datasets import load_coco_json

    declared = set(declared if declared is not None
                   else (c["id"] for c in _read_categories(json_file)))
    dicts = []
    for record in load_coco_json(json_file, image_root, dataset_name=None):
        annotations = []
        for ann in record.get("annotations", []):
            if ann["category_id"] not in declared:
                raise ValueError(f"dataset json '{json_file}': an annotation of image "
                                 f"'{record['file_name']}' has category_id {ann['category_id']}, "
                                 "which is not in its 'categories'")
            if ann["category_id"] in kept:
                annotations.append(dict(ann, category_id=kept[ann["category_id"]]))
        if annotations or not drop_empty:
            dicts.append(dict(record, annotations=annotations))
    return dicts


def register_ovd_coco(name: str, json_file: str, image_root: str,
                      novel_classes: Optional[Sequence[str]] = None, split: str = "all") -> dict:
    """Register a COCO-format json as an open-vocabulary dataset (see the module doc).

    Args:
        name (str): new dataset name (registered names, e.g. detectron2's, cannot be reused).
        json_file (str): COCO-format annotations.
        image_root (str): folder the json's ``file_name`` entries are relative to.
        novel_classes (sequence[str] or None): novel class names (None: the json's split fields).
        split (str): ``"all"``, ``"base"`` or ``"novel"``.

    Returns:
        dict: the metadata set (``thing_classes``, ``base_classes``, ``novel_classes``, ...).
    """
    if split not in OVD_SPLITS:
        raise ValueError(f"dataset '{name}': split must be one of {OVD_SPLITS}, got {split!r}")
    key = (os.path.abspath(json_file), os.path.abspath(image_root),
           None if novel_classes is None else tuple(novel_classes), split)
    if _REGISTERED.get(name) == key:  # the same registration again (e.g. a second main() call)
        return MetadataCatalog.get(name).as_dict()
    if name in DatasetCatalog.list():
        raise ValueError(f"dataset '{name}' is already registered; choose another name")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"dataset '{name}': image folder '{image_root}' does not exist")
    cats = ovd_categories(json_file, novel_classes, absent_novel_ok=split == "base")
    declared = [c["id"] for c in cats]
    if split != "all":
        cats = [c for c in cats if c["split"] == split]
        if not cats:
            raise ValueError(f"dataset '{name}': '{json_file}' has no {split} category (give the "
                             "novel classes, or 'split' fields in its categories)")
    meta = coco_metadata(cats)
    kept = meta["thing_dataset_id_to_contiguous_id"]
    DatasetCatalog.register(name, lambda: load_ovd_coco_json(json_file, image_root, kept,
                                                            drop_empty=split != "all",
                                                            declared=declared))
    # the json itself serves evaluation only when nothing was removed from it; otherwise the COCO
    # evaluator converts the dataset dicts
    extra = {"json_file": json_file} if split == "all" else {}
    MetadataCatalog.get(name).set(image_root=image_root, evaluator_type="coco", **meta, **extra)
    _REGISTERED[name] = key
    return meta


def read_class_names(value: str) -> List[str]:
    """Class names from a ``.txt`` file (one per line) or a comma-separated list."""
    if os.path.isfile(value) or value.endswith(".txt"):
        if not os.path.isfile(value):
            raise FileNotFoundError(f"--novel-classes file '{value}' does not exist")
        with open(value, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    else:
        names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--novel-classes '{value}' names no class")
    return names


def add_register_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--register-coco NAME JSON IMAGE_ROOT [SPLIT]`` (repeatable) and ``--novel-classes``."""
    parser.add_argument("--register-coco", nargs="+", action="append", default=[],
                        metavar="NAME JSON IMAGE_ROOT [SPLIT]",
                        help="register a COCO-format json as dataset NAME; SPLIT = all (default), "
                        "base or novel (see regionclip/data/datasets/custom_ovd.py)")
    parser.add_argument("--novel-classes", default=None,
                        help="novel class names of the --register-coco datasets: a .txt file "
                        "(one per line) or a comma-separated list (default: the jsons' "
                        "category 'split' fields)")
    return parser


def register_from_args(args: argparse.Namespace) -> List[str]:
    """Register the ``--register-coco`` datasets of parsed arguments; returns their names."""
    novel = read_class_names(args.novel_classes) if getattr(args, "novel_classes", None) else None
    names = []
    for spec in getattr(args, "register_coco", None) or []:
        if len(spec) not in (3, 4):
            raise ValueError(f"--register-coco takes NAME JSON IMAGE_ROOT [SPLIT], got {spec} "
                             "(config overrides KEY VALUE must follow another --option, not "
                             "--register-coco)")
        register_ovd_coco(spec[0], spec[1], spec[2], novel, spec[3] if len(spec) == 4 else "all")
        names.append(spec[0])
    return names
