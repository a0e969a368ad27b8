#!/usr/bin/env python
"""Build the COCO open-vocabulary jsons ``ovd_ins_{train,val}2017_{all,b,t}.json`` (OVR-CNN split).

From the official ``annotations/instances_{train,val}2017.json``, as OVR-CNN and the original
RegionCLIP did: keep the categories of the subset (adding ``"split": "seen"`` for the 48 base and
``"unseen"`` for the 17 novel classes), keep only the annotations of those categories (crowd
annotations included) and keep only the images with at least one kept annotation. ``all`` = 65
classes, ``b`` = 48 base, ``t`` = 17 novel ("target"). Other top-level keys are copied.

Usage::

    python datasets/prepare_ovd_coco.py [--coco-root $DETECTRON2_DATASETS/coco] [--splits train val]

The class split is read from ``regionclip/data/metadata/coco_ovd_categories.json`` next to this
script (the repository checkout); this script needs only the Python standard library.
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CATEGORY_TABLE = os.path.join(HERE, os.pardir, "regionclip", "data", "metadata",
                              "coco_ovd_categories.json")
SUBSETS = {"all": ("base", "novel"), "b": ("base",), "t": ("novel",)}
SEEN_UNSEEN = {"base": "seen", "novel": "unseen"}


def load_split_table(path=CATEGORY_TABLE):
    """Return ``{coco category id: (name, "base"|"novel"|"unused")}`` from the category table.

    Args:
        path (str): the ``coco_ovd_categories.json`` file.

    Returns:
        dict: category id -> (name, split).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Category table {path} not found: run this script from a "
                                "RegionCLIP checkout (it reads regionclip/data/metadata/)")
    with open(path) as f:
        return {c["id"]: (c["name"], c["split"]) for c in json.load(f)["categories"]}


def build_ovd_json(instances, subset, split_table, source="instances json"):
    """Filter an official COCO instances json to one OVD subset.

    Args:
        instances (dict): the parsed ``instances_*.json``.
        subset (str): ``"all"``, ``"b"`` or ``"t"``.
        split_table (dict): output of :func:`load_split_table`.
        source (str): name used in error messages.

    Returns:
        dict: a new json dict (the input is not modified).
    """
    for key in ("images", "annotations", "categories"):
        if key not in instances:
            raise ValueError(f"{source}: missing top-level key {key!r} (expected a COCO "
                             "instances json)")
    keep_splits = SUBSETS[subset]
    categories = []
    for cat in instances["categories"]:
        if cat["id"] not in split_table:
            raise ValueError(f"{source}: unknown COCO category id {cat['id']} ({cat.get('name')})")
        name, split = split_table[cat["id"]]
        if cat.get("name") != name:
            raise ValueError(f"{source}: category id {cat['id']} is named {cat.get('name')!r}, "
                             f"expected {name!r} (COCO 2017 names)")
        if split in keep_splits:
            categories.append(dict(cat, split=SEEN_UNSEEN[split]))
    kept_ids = {c["id"] for c in categories}
    annotations = [a for a in instances["annotations"] if a["category_id"] in kept_ids]
    image_ids = {a["image_id"] for a in annotations}
    images = [img for img in instances["images"] if img["id"] in image_ids]
    out = {k: v for k, v in instances.items() if k not in ("images", "annotations", "categories")}
    out.update(images=images, annotations=annotations, categories=categories)
    return out


def prepare_split(coco_root, split, out_dir, split_table):
    """Write the three OVD jsons of one split (``train`` or ``val``).

    Args:
        coco_root (str): folder holding ``annotations/instances_{split}2017.json``.
        split (str): ``"train"`` or ``"val"``.
        out_dir (str): output folder.
        split_table (dict): output of :func:`load_split_table`.

    Returns:
        list[str]: the written files.
    """
    src = os.path.join(coco_root, "annotations", f"instances_{split}2017.json")
    if not os.path.isfile(src):
        raise FileNotFoundError(f"{src} not found: download the COCO 2017 annotations "
                                "(annotations_trainval2017.zip) and unpack them under "
                                f"{coco_root}/annotations")
    print(f"reading {src} ...", flush=True)
    start = time.time()
    with open(src) as f:
        try:
            instances = json.load(f)
        except ValueError as e:
            raise ValueError(f"{src} is not valid json: {e}") from e
    print(f"  {len(instances.get('images', []))} images, "
          f"{len(instances.get('annotations', []))} annotations ({time.time() - start:.1f} s)")
    written = []
    for subset in SUBSETS:
        out = build_ovd_json(instances, subset, split_table, source=src)
        dst = os.path.join(out_dir, f"ovd_ins_{split}2017_{subset}.json")
        with open(dst, "w") as f:
            json.dump(out, f)
        print(f"  wrote {dst}: {len(out['categories'])} categories, {len(out['images'])} "
              f"images, {len(out['annotations'])} annotations", flush=True)
        written.append(dst)
    return written


def main(argv=None):
    """Command-line entry point.

    Args:
        argv (list[str] or None): arguments (default: ``sys.argv[1:]``).

    Returns:
        int: exit status.
    """
    default_root = os.path.join(
        os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "coco")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coco-root", default=default_root,
                        help="COCO folder with annotations/ (default: %(default)s)")
    parser.add_argument("--out-dir", default=None,
                        help="output folder (default: <coco-root>/annotations)")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val"])
    args = parser.parse_args(argv)
    out_dir = args.out_dir or os.path.join(args.coco_root, "annotations")
    try:
        split_table = load_split_table()
        os.makedirs(out_dir, exist_ok=True)
        for split in args.splits:
            prepare_split(args.coco_root, split, out_dir, split_table)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
