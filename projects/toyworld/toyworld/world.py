"""Stage 0: generate the toy world on disk, load it back, register it with detectron2.

Layout of ``<out>/world``::

    captions/  det_train/  test/      # PNG images (COCO file names)
    images_<split>.npy                 # the same images as one (N, H, W, 3) uint8 array
    captions.json                      # [{"image_id", "file_name", "captions": [...]}] per split
    <split>_all.json                   # COCO instances, every category (analysis, evaluation)
    det_train_base.json                # COCO instances of det_train, base categories only
    concepts.txt                       # concept pool: caption nouns seen >= MIN_CONCEPT_COUNT times
    world.json                         # categories, splits, counts (written last: stage done)

Splits: ``captions`` (image-caption pairs: CLIP and RegionCLIP pretraining; a fraction
``CLOSEUP_FRACTION`` of them are single-object close-ups, like the object-centric photos of web
image-text data; ``CROP_CLOSEUPS`` of those are cut out of full scenes, :func:`crop_closeup`),
``det_train``
(detection training with base boxes only; novel objects are in the images but unannotated, as in
COCO's open-vocabulary split), ``test`` (all boxes). Every split is drawn from its own random
stream, so changing one split's size does not change another.
"""
import hashlib
import json
import logging
import os
from typing import Dict, List

import numpy as np
from PIL import Image

from .captions import concept_counts, make_caption
from .scenes import Scene, SceneSpec, draw_scene
from .vocabulary import BASE_SHAPES, NOVEL_SHAPES, categories

__all__ = ["SPLITS", "scene_spec", "crop_closeup", "generate_world", "register_world", "World"]

logger = logging.getLogger(__name__)

SPLITS = ("captions", "det_train", "test")


def scene_spec(settings, closeup: bool = False) -> SceneSpec:
    """:class:`SceneSpec` of the settings' ``WORLD`` node (or of its single-object close-ups)."""
    w = settings.WORLD
    if closeup:
        return SceneSpec(image_size=(w.IMAGE_SIZE, w.IMAGE_SIZE), objects=(1, 1),
                         object_size=tuple(w.CLOSEUP_SIZE), max_overlap=w.MAX_OVERLAP,
                         clutter=w.CLUTTER)
    return SceneSpec(image_size=(w.IMAGE_SIZE, w.IMAGE_SIZE), objects=tuple(w.OBJECTS),
                     object_size=tuple(w.OBJECT_SIZE), max_overlap=w.MAX_OVERLAP,
                     clutter=w.CLUTTER)


def crop_closeup(rng, spec: SceneSpec, context=(1.0, 2.0)) -> Scene:
    """A close-up cut out of a full scene: one object (chosen at random) with ``context`` times
    its box around it (uniform, the centre jittered by up to a tenth of the crop), resized to the
    scene's size, like a web photo taken of one thing among others. The returned scene lists
    that object only, with its box in the new image; parts of its neighbours may show."""
    scene = draw_scene(rng, spec)
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    height, width = scene.image.shape[:2]
    x, y, w, h = obj["bbox"]
    scale = float(rng.uniform(*context))
    cw, ch = max(w * scale, 1.0), max(h * scale, 1.0)
    cx = x + w / 2 + rng.uniform(-0.1, 0.1) * cw
    cy = y + h / 2 + rng.uniform(-0.1, 0.1) * ch
    x0, y0 = int(max(np.floor(cx - cw / 2), 0)), int(max(np.floor(cy - ch / 2), 0))
    x1 = int(min(np.ceil(cx + cw / 2), width))
    y1 = int(min(np.ceil(cy + ch / 2), height))
    x0, y0 = min(x0, int(x)), min(y0, int(y))  # the whole object stays in view
    x1, y1 = max(x1, int(np.ceil(x + w))), max(y1, int(np.ceil(y + h)))
    image = np.array(Image.fromarray(scene.image[y0:y1, x0:x1]).resize((width, height),
                                                                       Image.BICUBIC))
    sx, sy = width / (x1 - x0), height / (y1 - y0)
    box = [(x - x0) * sx, (y - y0) * sy, w * sx, h * sy]
    new = dict(obj, bbox=[round(v, 2) for v in box], area=obj["area"] * sx * sy)
    return Scene(image=image, background=scene.background, objects=[new])


def _coco(images: List[dict], annotations: List[dict], cats: List[dict]) -> dict:
    return {"info": {"description": "RegionCLIP toy world"}, "licenses": [], "images": images,
            "annotations": annotations,
            "categories": [{"id": c["id"], "name": c["name"], "supercategory": "shape",
                            "split": c["split"]} for c in cats]}


def _write_json(path: str, payload) -> None:
    with open(path, "w") as f:
        json.dump(payload, f)


def generate_world(settings, out_dir: str, progress: bool = True) -> str:
    """Draw every split and write the layout of the module doc.

    Args:
        settings (CfgNode): toy-world settings (``SEED``, ``WORLD``).
        out_dir (str): the world folder (created).
        progress (bool): show a progress bar.

    Returns:
        str: path of ``world.json``.
    """
    from tqdm import tqdm

    w = settings.WORLD
    spec, closeup = scene_spec(settings), scene_spec(settings, closeup=True)
    cats = categories()
    mention = dict(zip(("colour", "texture", "background"), w.CAPTION_MENTION))
    cat_id = {c["name"]: c["id"] for c in cats}
    sizes = {"captions": w.NUM_CAPTION_IMAGES, "det_train": w.NUM_DET_IMAGES,
             "test": w.NUM_TEST_IMAGES}
    os.makedirs(out_dir, exist_ok=True)
    all_captions, stats = {}, {}
    for index, split in enumerate(SPLITS):
        rng = np.random.default_rng([settings.SEED, index])
        folder = os.path.join(out_dir, split)
        os.makedirs(folder, exist_ok=True)
        arrays, images, anns, caps = [], [], [], []
        for image_id in tqdm(range(1, sizes[split] + 1), desc=f"world/{split}",
                             disable=not progress, leave=False):
            is_closeup = split == "captions" and rng.random() < w.CLOSEUP_FRACTION
            if is_closeup and rng.random() < w.CROP_CLOSEUPS:
                scene = crop_closeup(rng, spec, tuple(w.CROP_CONTEXT))
            else:
                scene = draw_scene(rng, closeup if is_closeup else spec)
            name = f"{image_id:06d}.png"
            Image.fromarray(scene.image).save(os.path.join(folder, name))
            arrays.append(scene.image)
            h, wd = scene.image.shape[:2]
            images.append({"id": image_id, "file_name": name, "height": h, "width": wd,
                           "background": scene.background})
            for obj in scene.objects:
                anns.append({"id": len(anns) + 1, "image_id": image_id,
                             "category_id": cat_id[obj["shape"]], "bbox": obj["bbox"],
                             "area": obj["area"], "iscrowd": 0, "colour": obj["colour"],
                             "texture": obj["texture"]})
            size_range = tuple(w.CLOSEUP_SIZE if is_closeup else w.OBJECT_SIZE)
            caps.append({"image_id": image_id, "file_name": name, "captions": [
                make_caption(rng, scene, size_range, mention)
                for _ in range(w.CAPTIONS_PER_IMAGE)]})
        np.save(os.path.join(out_dir, f"images_{split}.npy"), np.stack(arrays))
        _write_json(os.path.join(out_dir, f"{split}_all.json"), _coco(images, anns, cats))
        all_captions[split] = caps
        stats[split] = {"images": len(images), "objects": len(anns)}
        if split == "det_train":
            base = [c for c in cats if c["split"] == "base"]
            base_ids = {c["id"] for c in base}
            base_anns = [a for a in anns if a["category_id"] in base_ids]
            _write_json(os.path.join(out_dir, "det_train_base.json"),
                        _coco(images, base_anns, base))
            stats[split]["base_objects"] = len(base_anns)
    _write_json(os.path.join(out_dir, "captions.json"), all_captions)
    counts = concept_counts(c for entry in all_captions["captions"] for c in entry["captions"])
    pool = sorted((n for n, k in counts.items() if k >= w.MIN_CONCEPT_COUNT),
                  key=lambda n: (-counts[n], n))
    if not pool:
        raise ValueError(f"no caption noun occurs WORLD.MIN_CONCEPT_COUNT={w.MIN_CONCEPT_COUNT} "
                         "times: the concept pool would be empty")
    with open(os.path.join(out_dir, "concepts.txt"), "w") as f:
        f.write("".join(f"{n}\n" for n in pool))
    meta = {"categories": cats, "base_classes": list(BASE_SHAPES),
            "novel_classes": list(NOVEL_SHAPES), "splits": stats, "concepts": len(pool),
            "concept_counts": dict(counts.most_common()), "seed": settings.SEED,
            "world_settings": json.loads(json.dumps(dict(w)))}
    path = os.path.join(out_dir, "world.json")
    _write_json(path, meta)
    logger.info("Toy world written to %s: %s", out_dir, stats)
    return path


class World:
    """A generated world, loaded lazily from its folder.

    Args:
        root (str): the world folder written by :func:`generate_world`.
    """

    def __init__(self, root: str):
        path = os.path.join(root, "world.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{root} holds no toy world ({path} is missing; run stage "
                                    "'world' of tools/toyworld.py)")
        self.root = root
        with open(path) as f:
            self.meta = json.load(f)
        self._cache: Dict[str, object] = {}

    @property
    def class_names(self) -> List[str]:
        """All category names in contiguous-id order (base first)."""
        return [c["name"] for c in self.meta["categories"]]

    @property
    def base_classes(self) -> List[str]:
        """Names of the base categories (boxes in detection training)."""
        return list(self.meta["base_classes"])

    @property
    def novel_classes(self) -> List[str]:
        """Names of the novel categories (in captions only)."""
        return list(self.meta["novel_classes"])

    def images(self, split: str) -> np.ndarray:
        """(N, H, W, 3) uint8 images of a split (image id = row + 1)."""
        key = f"images_{split}"
        if key not in self._cache:
            self._cache[key] = np.load(os.path.join(self.root, f"{key}.npy"))
        return self._cache[key]

    def coco(self, name: str) -> dict:
        """A COCO json of the world: ``captions_all``, ``det_train_base``, ``test_all`` ..."""
        if name not in self._cache:
            with open(self.json_path(name)) as f:
                self._cache[name] = json.load(f)
        return self._cache[name]

    def json_path(self, name: str) -> str:
        """Path of one of the world's COCO jsons."""
        return os.path.join(self.root, f"{name}.json")

    def captions(self, split: str = "captions") -> List[List[str]]:
        """Captions per image of a split, in image-id order."""
        if "captions" not in self._cache:
            with open(os.path.join(self.root, "captions.json")) as f:
                self._cache["captions"] = json.load(f)
        return [entry["captions"] for entry in self._cache["captions"][split]]

    def concepts(self) -> List[str]:
        """The concept pool (caption nouns), most frequent first."""
        with open(os.path.join(self.root, "concepts.txt")) as f:
            return [line.strip() for line in f if line.strip()]

    def boxes(self, name: str) -> List[dict]:
        """Per image of a COCO json: ``{"boxes": (K, 4) XYXY float32, "classes": (K,) int64}``
        with contiguous class ids in the json's category order."""
        coco = self.coco(name)
        contiguous = {c["id"]: i for i, c in enumerate(coco["categories"])}
        out = [{"boxes": [], "classes": []} for _ in coco["images"]]
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            out[a["image_id"] - 1]["boxes"].append([x, y, x + w, y + h])
            out[a["image_id"] - 1]["classes"].append(contiguous[a["category_id"]])
        return [{"boxes": np.asarray(o["boxes"], np.float32).reshape(-1, 4),
                 "classes": np.asarray(o["classes"], np.int64)} for o in out]


def register_world(world: World) -> Dict[str, str]:
    """Register the world's detection datasets with detectron2 (idempotent per folder).

    Returns:
        dict: ``{"det_train": name, "test": name}``; the test set's metadata has
        ``base_classes``/``novel_classes`` (for AP50 novel/base/all) and ``evaluator_type``
        ``"coco"``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    tag = hashlib.sha1(os.path.realpath(world.root).encode()).hexdigest()[:8]
    names = {"det_train": f"toyworld_{tag}_det_train_base", "test": f"toyworld_{tag}_test"}
    specs = {"det_train": ("det_train_base", "det_train", world.base_classes, []),
             "test": ("test_all", "test", world.base_classes, world.novel_classes)}
    for key, (json_name, folder, base, novel) in specs.items():
        name = names[key]
        if name in DatasetCatalog.list():
            continue
        json_file, image_root = world.json_path(json_name), os.path.join(world.root, folder)
        DatasetCatalog.register(name, lambda j=json_file, r=image_root, n=name:
                                load_coco_json(j, r, n))
        classes = [c["name"] for c in world.coco(json_name)["categories"]]
        MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root,
                                      evaluator_type="coco", thing_classes=classes,
                                      base_classes=list(base), novel_classes=list(novel),
                                      thing_dataset_id_to_contiguous_id={
                                          c["id"]: i for i, c in enumerate(
                                              world.coco(json_name)["categories"])})
    return names
