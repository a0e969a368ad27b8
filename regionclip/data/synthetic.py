"""Synthetic detection data for tests and demos: coloured shapes with boxes and polygon masks.

:func:`make_synthetic_coco` draws ``num_images`` images (plain or noisy background, a few
non-overlapping shapes each) and writes them with a COCO-format and an LVIS-format json. Output is
deterministic for a given seed. Layout::

    out_dir/
      <split>/000000000001.png ...   # images
      coco_<split>.json              # COCO instances json (file_name relative to out_dir/<split>)
      lvis_<split>.json              # LVIS json (coco_url ".../<split>/<file>", image root out_dir)

Shapes and colours are the library's drawing primitives (:mod:`regionclip.data.shapes`). Each
category has a shape, a colour, an open-vocabulary ``split`` (``"base"``/``"novel"``) and an
LVIS ``frequency``; novel classes are rare (``"r"``), so the LVIS protocol (novel = rare) and the
COCO protocol give the same split. :func:`register_synthetic_dataset` registers the result in
detectron2's catalogs with the same metadata fields as the real datasets.
"""
import json
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from . import shapes

# Default shapes and colours of the categories (any hole-free shape and any colour of
# :mod:`regionclip.data.shapes` can be asked for).
SHAPES = ("rectangle", "ellipse", "triangle", "diamond", "pentagon", "hexagon")
COLORS = shapes.palette(("red", "green", "blue", "yellow", "purple", "cyan"))
_PLACEMENT_ATTEMPTS = 30
_POLYGON_SHAPES = tuple(s for s in shapes.SHAPES if not shapes.has_holes(s))


@dataclass
class SyntheticDataset:
    """Paths and categories of a generated dataset.

    Attributes:
        root (str): the output folder.
        split (str): the split name (image sub-folder).
        image_root (str): folder of the images (COCO ``file_name`` is relative to it).
        lvis_image_root (str): image root of the LVIS json (``root``).
        coco_json (str): COCO-format json.
        lvis_json (str): LVIS-format json.
        categories (list[dict]): ``id``, ``name``, ``shape``, ``color`` (RGB), ``split``,
            ``frequency``.
        num_annotations (int): number of objects drawn.
    """

    root: str
    split: str
    image_root: str
    lvis_image_root: str
    coco_json: str
    lvis_json: str
    categories: list = field(default_factory=list)
    num_annotations: int = 0


def default_categories(num_categories=4, num_novel=None):
    """Return ``num_categories`` shape/colour categories, the last ``num_novel`` of them novel.

    Args:
        num_categories (int): 1..36.
        num_novel (int or None): defaults to ``num_categories // 3``.

    Returns:
        list[dict]: category specs (``name``, ``shape``, ``color``, ``split``).
    """
    color_names = list(COLORS)
    if not 1 <= num_categories <= len(SHAPES) * len(color_names):
        raise ValueError(f"num_categories must be in 1..{len(SHAPES) * len(color_names)}, "
                         f"got {num_categories}")
    num_novel = num_categories // 3 if num_novel is None else num_novel
    if not 0 <= num_novel <= num_categories:
        raise ValueError(f"num_novel must be in 0..{num_categories}, got {num_novel}")
    cats = []
    for i in range(num_categories):
        shape = SHAPES[i % len(SHAPES)]
        color = color_names[(i + i // len(SHAPES)) % len(color_names)]
        split = "novel" if i >= num_categories - num_novel else "base"
        cats.append({"name": f"{color} {shape}", "shape": shape, "color": color, "split": split})
    return cats


def _complete_categories(categories):
    """Validate category specs and fill ids, RGB colours and LVIS frequencies."""
    if isinstance(categories, int):
        categories = default_categories(categories)
    if not categories:
        raise ValueError("At least one category is needed")
    out, num_base = [], 0
    for i, spec in enumerate(categories):
        if "name" not in spec:
            raise ValueError(f"Category spec {spec} needs a 'name'")
        shape = spec.get("shape", SHAPES[i % len(SHAPES)])
        if shape not in _POLYGON_SHAPES:
            raise ValueError(f"Category {spec['name']!r}: unknown shape {shape!r}; use one of "
                             f"{_POLYGON_SHAPES} (shapes without holes)")
        color = spec.get("color", list(COLORS)[i % len(COLORS)])
        if isinstance(color, str):
            if color not in shapes.COLOURS:
                raise ValueError(f"Category {spec['name']!r}: unknown colour {color!r}; use "
                                 f"{list(shapes.COLOURS)} or an RGB triple")
            color = shapes.COLOURS[color]
        split = spec.get("split", "base")
        if split not in ("base", "novel"):
            raise ValueError(f"Category {spec['name']!r}: split must be 'base' or 'novel'")
        default_freq = "r" if split == "novel" else ("f", "c")[num_base % 2]
        frequency = spec.get("frequency", default_freq)
        if (frequency == "r") != (split == "novel") or frequency not in ("r", "c", "f"):
            raise ValueError(f"Category {spec['name']!r}: frequency {frequency!r} does not match "
                             f"split {split!r} (novel classes are rare 'r', base are 'c' or 'f')")
        num_base += split == "base"
        out.append({"id": i + 1, "name": spec["name"], "shape": shape,
                    "color": [int(v) for v in color], "split": split, "frequency": frequency})
    names = [c["name"] for c in out]
    if len(set(names)) != len(names):
        raise ValueError(f"Category names must be unique: {names}")
    return out


def shape_polygon(shape, x0, y0, w, h):
    """Return the outline of a shape inscribed in a box as a flat ``[x1, y1, x2, y2, ...]`` list.

    Args:
        shape (str): a shape of :mod:`regionclip.data.shapes` without holes.
        x0, y0, w, h (float): the box (XYWH).

    Returns:
        list[float]: polygon vertices (rounded to 0.01) whose bounding box is the given box.
    """
    if shape not in _POLYGON_SHAPES:
        raise ValueError(f"Unknown shape {shape!r}; expected one of {_POLYGON_SHAPES} (shapes "
                         "without holes)")
    (outline,) = shapes.shape_in_box(shape, x0, y0, w, h)
    return [round(float(v), 2) for p in outline for v in p]


def _polygon_area(poly):
    xs, ys = poly[0::2], poly[1::2]
    return abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2


def _background(rng, height, width, background):
    kind = background if background != "mixed" else ("plain", "noisy")[int(rng.integers(2))]
    if kind not in ("plain", "noisy"):
        raise ValueError(f"background must be 'plain', 'noisy' or 'mixed', got {background!r}")
    base = rng.integers(150, 250, size=3)
    pixels = np.broadcast_to(base, (height, width, 3)).astype(np.float64)
    if kind == "noisy":
        pixels = pixels + rng.normal(0.0, 18.0, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _place_boxes(rng, num, height, width):
    """Sample up to ``num`` non-overlapping boxes (XYWH) inside the image."""
    boxes = []
    for _ in range(num):
        for _ in range(_PLACEMENT_ATTEMPTS):
            w = float(rng.uniform(0.15, 0.45) * width)
            h = float(rng.uniform(0.15, 0.45) * height)
            x0 = float(rng.uniform(0, width - w - 1))
            y0 = float(rng.uniform(0, height - h - 1))
            if all(x0 > bx + bw + 1 or bx > x0 + w + 1 or y0 > by + bh + 1 or by > y0 + h + 1
                   for bx, by, bw, bh in boxes):
                boxes.append((x0, y0, w, h))
                break
    return boxes


def make_synthetic_coco(out_dir, num_images=4, image_size=(96, 128), categories=4, seed=0,
                        split="train", objects_per_image=(1, 3), background="mixed",
                        image_format="png"):
    """Draw a synthetic detection dataset and write its images, COCO json and LVIS json.

    Args:
        out_dir (str): output folder (created).
        num_images (int): number of images.
        image_size (tuple[int, int]): (height, width), at least 32x32.
        categories (int or list[dict]): number of default categories
            (:func:`default_categories`), or specs with ``name`` and optional ``shape``,
            ``color`` (name or RGB), ``split`` (``"base"``/``"novel"``), ``frequency``.
        seed (int): random seed; the output is a function of the arguments.
        split (str): split name (image folder and json suffix).
        objects_per_image (tuple[int, int]): inclusive range of the number of shapes per image
            (fewer when they do not fit without overlap).
        background (str): ``"plain"``, ``"noisy"`` or ``"mixed"``.
        image_format (str): ``"png"`` or ``"jpg"``.

    Returns:
        SyntheticDataset: paths and categories.
    """
    height, width = image_size
    if height < 32 or width < 32:
        raise ValueError(f"image_size must be at least (32, 32), got {image_size}")
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    lo, hi = objects_per_image
    if not 0 <= lo <= hi:
        raise ValueError(f"objects_per_image must be (min, max) with 0 <= min <= max, "
                         f"got {objects_per_image}")
    cats = _complete_categories(categories)
    rng = np.random.default_rng(seed)
    image_root = os.path.join(out_dir, split)
    os.makedirs(image_root, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        img = _background(rng, height, width, background)
        draw = ImageDraw.Draw(img)
        present = set()
        for box in _place_boxes(rng, int(rng.integers(lo, hi + 1)), height, width):
            cat = cats[int(rng.integers(len(cats)))]
            poly = shape_polygon(cat["shape"], *box)
            draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=tuple(cat["color"]))
            xs, ys = poly[0::2], poly[1::2]
            bbox = [min(xs), min(ys), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": cat["id"], "bbox": bbox,
                                "area": round(_polygon_area(poly), 2), "segmentation": [poly]})
            present.add(cat["id"])
        file_name = f"{image_id:012d}.{image_format}"
        img.save(os.path.join(image_root, file_name))
        absent = [c["id"] for c in cats if c["id"] not in present]
        neg = sorted(int(i) for i in rng.permutation(absent)[:2]) if absent else []
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width,
                       "neg_category_ids": neg})
    data = SyntheticDataset(
        root=out_dir, split=split, image_root=image_root, lvis_image_root=out_dir,
        coco_json=os.path.join(out_dir, f"coco_{split}.json"),
        lvis_json=os.path.join(out_dir, f"lvis_{split}.json"), categories=cats,
        num_annotations=len(annotations))
    _write_coco_json(data.coco_json, images, annotations, cats)
    _write_lvis_json(data.lvis_json, images, annotations, cats, split)
    return data


def _write_coco_json(path, images, annotations, cats):
    payload = {
        "info": {"description": "regionclip synthetic shapes"},
        "licenses": [],
        "images": [{k: img[k] for k in ("id", "file_name", "height", "width")} for img in images],
        "annotations": [dict(a, iscrowd=0) for a in annotations],
        "categories": [{"id": c["id"], "name": c["name"], "supercategory": c["shape"],
                        "split": "seen" if c["split"] == "base" else "unseen"} for c in cats],
    }
    with open(path, "w") as f:
        json.dump(payload, f)


def _write_lvis_json(path, images, annotations, cats, split):
    image_count = {c["id"]: len({a["image_id"] for a in annotations if a["category_id"] == c["id"]})
                   for c in cats}
    instance_count = {c["id"]: sum(a["category_id"] == c["id"] for a in annotations)
                      for c in cats}
    lvis_images = [{
        "id": img["id"], "height": img["height"], "width": img["width"],
        "coco_url": f"https://synthetic.invalid/{split}/{img['file_name']}",
        "not_exhaustive_category_ids": [], "neg_category_ids": img["neg_category_ids"],
    } for img in images]
    lvis_cats = []
    for c in cats:
        name = c["name"].replace(" ", "_")
        lvis_cats.append({"id": c["id"], "name": name, "synonyms": [name],
                          "synset": f"{name}.n.01", "def": f"a {c['name']}",
                          "frequency": c["frequency"], "image_count": image_count[c["id"]],
                          "instance_count": instance_count[c["id"]]})
    payload = {"info": {"description": "regionclip synthetic shapes"}, "licenses": [],
               "images": lvis_images, "annotations": annotations, "categories": lvis_cats}
    with open(path, "w") as f:
        json.dump(payload, f)


def lvis_categories_of(data):
    """Return the LVIS category table (``id``, ``name``, ``synonyms``, ``frequency``, ...).

    Args:
        data (SyntheticDataset): a generated dataset.

    Returns:
        list[dict]: the ``categories`` of its LVIS json.
    """
    with open(data.lvis_json) as f:
        return json.load(f)["categories"]


def register_synthetic_dataset(name, data, style="coco", filter_rare=False):
    """Register a generated dataset in detectron2's DatasetCatalog and MetadataCatalog.

    Args:
        name (str): the new dataset name.
        data (SyntheticDataset): output of :func:`make_synthetic_coco`.
        style (str): ``"coco"`` (detectron2's COCO loader, ``evaluator_type="coco"``) or
            ``"lvis"`` (this project's LVIS loader with the original's semantics,
            ``evaluator_type="lvis"``).
        filter_rare (bool): LVIS style only: drop the rare (novel) classes and re-index, like
            ``lvis_v1_train_ovd``.

    Returns:
        str: ``name``.
    """
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    from .categories import coco_metadata
    from .datasets.lvis_ovd import register_lvis_ovd

    if name in DatasetCatalog.list():
        raise ValueError(f"Dataset {name!r} is already registered")
    if style == "coco":
        if filter_rare:
            raise ValueError("filter_rare applies to style='lvis' only")
        register_coco_instances(name, coco_metadata(data.categories), data.coco_json,
                                data.image_root)
    elif style == "lvis":
        register_lvis_ovd(name, data.lvis_json, data.lvis_image_root,
                          categories=lvis_categories_of(data), filter_rare=filter_rare)
    else:
        raise ValueError(f"style must be 'coco' or 'lvis', got {style!r}")
    return name
