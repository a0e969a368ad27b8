"""LVIS v1 with the original RegionCLIP's loader semantics, under names that do not clash with
detectron2's builtin ``lvis_v1_*`` datasets.

Registered families (``{split}`` in ``train``, ``val``, ``test_dev``, ``test_challenge``; jsons in
``$DETECTRON2_DATASETS/lvis/``, images under ``$DETECTRON2_DATASETS/coco/``):

* ``lvis_v1_{split}_ovd`` (the original's ``lvis_v1_{split}``): every annotation gets
  ``frequency``; for ``train`` the annotations of rare classes are dropped and the 866 remaining
  classes re-indexed 0..865 in LVIS-id order (``not_exhaustive_category_ids``/
  ``neg_category_ids`` keep only non-rare LVIS ids; the original deleted both fields); images
  without remaining annotations are dropped, at most 500 annotations are kept per image and the
  list is sorted by annotation count, descending (stable). A json without any annotation (the
  test-dev/challenge image-info jsons) keeps all its images: the original dropped them all and
  crashed on the empty dataset.
* ``lvis_v1_{split}_fullysup``: the same without the rare-class filter (all 1203 classes).
* ``lvis_v1_{split}_custom_img``: ignores the json and lists the image files of
  ``$DETECTRON2_DATASETS/custom_images`` (the original hard-coded ``datasets/custom_images``
  relative to the working directory); metadata has ``no_evaluation=True``.

Metadata (see :mod:`regionclip.data.categories`): ``lvis_v1_train_ovd`` describes its 866 base
classes, every other dataset the 1203 LVIS classes. Registration reads no dataset file.
"""
import functools
import json
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis import load_lvis_json
from PIL import Image, UnidentifiedImageError

from ..categories import lvis_metadata, lvis_v1_categories

logger = logging.getLogger(__name__)

LVIS_V1_JSONS = {
    "train": "lvis/lvis_v1_train.json",
    "val": "lvis/lvis_v1_val.json",
    "test_dev": "lvis/lvis_v1_image_info_test_dev.json",
    "test_challenge": "lvis/lvis_v1_image_info_test_challenge.json",
}
MAX_GT_PER_IMAGE = 500
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_EXIF_ORIENTATION = 0x0112
_FILTERED_ID_FIELDS = ("not_exhaustive_category_ids", "neg_category_ids")


def _frequency_by_contiguous_id(categories):
    ids = sorted(c["id"] for c in categories)
    if ids != list(range(1, len(ids) + 1)):
        raise ValueError("LVIS categories must have ids 1..K (LVIS convention); got "
                         f"{len(ids)} categories with ids {ids[:5]}...{ids[-5:]}")
    return {c["id"] - 1: c["frequency"] for c in categories}


def postprocess_lvis_dicts(dataset_dicts, categories, filter_rare=False,
                           max_gt_per_image=MAX_GT_PER_IMAGE, source="LVIS dataset"):
    """Apply the original RegionCLIP's LVIS loader semantics to detectron2's LVIS dicts.

    Args:
        dataset_dicts (list[dict]): output of detectron2's ``load_lvis_json`` (category ids are
            LVIS id - 1).
        categories (list[dict]): the json's categories (``id`` 1..K and ``frequency``).
        filter_rare (bool): drop rare-class annotations and re-index the other classes to
            0..K'-1 in LVIS-id order.
        max_gt_per_image (int): keep at most this many annotations per image.
        source (str): name used in error messages (e.g. the json path).

    Returns:
        list[dict]: new records: every annotation has ``frequency``; images without
        (remaining) annotations are dropped unless the input has no annotation at all; sorted by
        annotation count, descending, with ties in input order; annotations capped.
    """
    frequency = _frequency_by_contiguous_id(categories)
    base_ids = [i for i in sorted(frequency) if frequency[i] != "r"]
    new_id = {old: new for new, old in enumerate(base_ids)}
    kept_lvis_ids = {i + 1 for i in base_ids}
    has_annotations = any(record.get("annotations") for record in dataset_dicts)
    if not has_annotations:
        logger.warning(f"{source} has no annotations (an image-info json?): keeping all "
                       f"{len(dataset_dicts)} images (the original dropped every image).")
    out = []
    for record in dataset_dicts:
        objs = []
        for obj in record.get("annotations", []):
            cid = obj["category_id"]
            if cid not in frequency:
                raise ValueError(f"{source}: image {record['image_id']} has an annotation of "
                                 f"category id {cid + 1}, not among the {len(frequency)} "
                                 "categories")
            if filter_rare and frequency[cid] == "r":
                continue
            obj = dict(obj, frequency=frequency[cid])
            if filter_rare:
                obj["category_id"] = new_id[cid]
            objs.append(obj)
        if has_annotations and not objs:
            continue
        record = dict(record, annotations=objs)
        if filter_rare:
            for key in _FILTERED_ID_FIELDS:
                if key in record:
                    record[key] = [i for i in record[key] if i in kept_lvis_ids]
        out.append(record)
    out.sort(key=lambda r: len(r["annotations"]), reverse=True)
    num_capped = 0
    for record in out:
        if len(record["annotations"]) > max_gt_per_image:
            record["annotations"] = record["annotations"][:max_gt_per_image]
            num_capped += 1
    logger.info(f"{source}: kept {len(out)} of {len(dataset_dicts)} images"
                + (f", {len(base_ids)} of {len(frequency)} classes (rare dropped)"
                   if filter_rare else "")
                + f"; {num_capped} images capped to {max_gt_per_image} annotations.")
    return out


def _file_name_from_coco_url(image_root, img, json_file):
    url = img.get("coco_url")
    if not url or url.count("/") < 1:
        raise ValueError(f"{json_file}: image {img.get('id')} has no usable 'coco_url' "
                         f"(expected '.../<split folder>/<file name>'), got {url!r}")
    split_folder, file_name = url.split("/")[-2:]
    return os.path.join(image_root, split_folder, file_name)


def _load_image_info_json(json_file, image_root):
    """Read an LVIS image-info json (no ``annotations`` key, which lvis-api cannot index)."""
    with open(json_file) as f:
        images = json.load(f).get("images")
    if not isinstance(images, list):
        raise ValueError(f"{json_file}: expected an 'images' list")
    records = []
    for img in sorted(images, key=lambda x: x["id"]):
        records.append({
            "file_name": _file_name_from_coco_url(image_root, img, json_file),
            "height": img["height"],
            "width": img["width"],
            "image_id": img["id"],
            "not_exhaustive_category_ids": img.get("not_exhaustive_category_ids", []),
            "neg_category_ids": img.get("neg_category_ids", []),
            "annotations": [],
        })
    return records


def load_lvis_ovd_json(json_file, image_root, categories=None, filter_rare=False,
                       max_gt_per_image=MAX_GT_PER_IMAGE):
    """Load an LVIS json with detectron2's ``load_lvis_json`` and the original's semantics.

    Args:
        json_file (str): LVIS-format json.
        image_root (str): folder holding the ``<split>/<file>`` paths named by ``coco_url``.
        categories (list[dict] or None): the json's categories (``id``, ``frequency``); defaults
            to the LVIS v1 table.
        filter_rare (bool): see :func:`postprocess_lvis_dicts`.
        max_gt_per_image (int): see :func:`postprocess_lvis_dicts`.

    Returns:
        list[dict]: detectron2 dataset dicts.
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"LVIS json {json_file} not found (see datasets/README.md for "
                                "the expected layout under $DETECTRON2_DATASETS)")
    categories = lvis_v1_categories() if categories is None else categories
    # detectron2 joins image_root and the split folder by string concatenation
    image_root = os.path.join(image_root, "")
    try:
        dicts = load_lvis_json(json_file, image_root)
    except KeyError as e:
        if e.args != ("annotations",):
            raise
        logger.info(f"{json_file} has no 'annotations': reading it as an image-info json.")
        dicts = _load_image_info_json(json_file, image_root)
    return postprocess_lvis_dicts(dicts, categories, filter_rare, max_gt_per_image, json_file)


def _oriented_size(img):
    width, height = img.size
    orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    # orientations 5-8 rotate by 90 degrees: detectron2's read_image swaps the sides
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def load_custom_images(image_dir):
    """List the image files of a folder as detectron2 dicts without annotations.

    Args:
        image_dir (str): folder of images (not searched recursively).

    Returns:
        list[dict]: ``file_name``, ``height``, ``width`` (after EXIF orientation, as detectron2
        reads the image) and ``image_id`` = index in sorted file-name order.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: the folder has no image file, or an image file cannot be read.
    """
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"Custom image folder {image_dir} does not exist (put images in "
                                "$DETECTRON2_DATASETS/custom_images)")
    entries = sorted(e for e in os.listdir(image_dir)
                     if os.path.isfile(os.path.join(image_dir, e)))
    names = [e for e in entries if e.lower().endswith(IMAGE_EXTENSIONS)]
    others = [e for e in entries if e not in names]
    if others:
        logger.warning(f"Ignoring {len(others)} non-image file(s) in {image_dir} (extensions "
                       f"{IMAGE_EXTENSIONS}): {others[:10]}")
    if not names:
        raise ValueError(f"No image file in custom image folder {image_dir} (expected files "
                         f"with extensions {IMAGE_EXTENSIONS})")
    records = []
    for image_id, name in enumerate(names):
        path = os.path.join(image_dir, name)
        try:
            with Image.open(path) as img:
                img.verify()  # structural check (must come right after opening)
            with Image.open(path) as img:
                width, height = _oriented_size(img)
        except (OSError, UnidentifiedImageError, SyntaxError) as e:
            raise ValueError(f"Cannot read custom image file {path}: {e}") from e
        records.append({"file_name": path, "height": height, "width": width,
                        "image_id": image_id})
    logger.info(f"Listed {len(records)} custom images in {image_dir}.")
    return records


def register_lvis_ovd(name, json_file, image_root, categories=None, filter_rare=False,
                      max_gt_per_image=MAX_GT_PER_IMAGE, **extra_metadata):
    """Register an LVIS-format dataset loaded by :func:`load_lvis_ovd_json`.

    Args:
        name (str): dataset name (must not be registered yet).
        json_file (str): LVIS-format json (read only when the dataset is loaded).
        image_root (str): image root, see :func:`load_lvis_ovd_json`.
        categories (list[dict] or None): the json's categories; defaults to LVIS v1.
        filter_rare (bool): rare-class filtering and re-indexing (base-class training set).
        max_gt_per_image (int): annotation cap per image.
        **extra_metadata: more metadata fields.
    """
    categories = lvis_v1_categories() if categories is None else categories
    DatasetCatalog.register(name, functools.partial(
        load_lvis_ovd_json, json_file, image_root, categories, filter_rare, max_gt_per_image))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="lvis",
        **lvis_metadata(categories, base_only=filter_rare), **extra_metadata)


def register_lvis_custom_img(name, json_file, image_dir, categories=None):
    """Register a folder of images with LVIS metadata, for inference without evaluation.

    Args:
        name (str): dataset name.
        json_file (str): the LVIS json recorded as ``json_file`` metadata (evaluator setup).
        image_dir (str): the image folder (listed when the dataset is loaded).
        categories (list[dict] or None): class table; defaults to LVIS v1.
    """
    categories = lvis_v1_categories() if categories is None else categories
    DatasetCatalog.register(name, functools.partial(load_custom_images, image_dir))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_dir, evaluator_type="lvis", no_evaluation=True,
        **lvis_metadata(categories))


def register_all_lvis_ovd(root):
    """Register the ``_ovd``, ``_custom_img`` and ``_fullysup`` LVIS v1 families.

    Args:
        root (str): the datasets root (``$DETECTRON2_DATASETS``).

    Returns:
        list[str]: the registered names.
    """
    categories = lvis_v1_categories()
    image_root = os.path.join(root, "coco")
    names = []
    for split, rel_json in LVIS_V1_JSONS.items():
        json_file = os.path.join(root, rel_json)
        name = f"lvis_v1_{split}"
        register_lvis_ovd(f"{name}_ovd", json_file, image_root, categories,
                          filter_rare=(split == "train"))
        register_lvis_custom_img(f"{name}_custom_img", json_file,
                                 os.path.join(root, "custom_images"), categories)
        register_lvis_ovd(f"{name}_fullysup", json_file, image_root, categories)
        names += [f"{name}_ovd", f"{name}_custom_img", f"{name}_fullysup"]
    return names


_ROOT = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
REGISTERED_LVIS = register_all_lvis_ovd(_ROOT)
