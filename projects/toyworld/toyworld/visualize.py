"""Stage 6: the detector package and a picture grid of test scenes with detections.

The RegionCLIP student's transfer detector is packed (:mod:`.weights`) and run through the same
code as ``make demo`` (:func:`.demo.run_demo`) on test scenes with a vocabulary of all 12
categories, novel ones included (drawn in magenta with a ``*``), or on the images and vocabulary
of ``EVAL.GRID_IMAGES_PATH`` / ``EVAL.GRID_VOCAB``.
"""
import logging
import os
import shutil
from typing import List, Sequence

import numpy as np
from PIL import Image, ImageDraw

from regionclip.clip import tokenize

from .common import read_json
from .text import toy_prompts
from .vocabulary import COLOUR_WORDS, SHAPE_SYNONYMS, TEXTURE_WORDS

__all__ = ["draw_detections", "save_grid", "vocabulary_token_ids", "demo_stage"]

logger = logging.getLogger(__name__)

_SCALE = 3
_BASE_COLOUR, _NOVEL_COLOUR = (255, 255, 255), (255, 0, 255)


def draw_detections(rgb: np.ndarray, detections: List[dict], novel: Sequence[str] = (),
                    scale: int = _SCALE) -> Image.Image:
    """The image enlarged ``scale`` times with boxes, labels, scores (novel: magenta, ``*``)."""
    img = Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    for det in detections:
        x0, y0, x1, y1 = [v * scale for v in det["box"]]
        is_novel = det["label"] in novel
        colour = _NOVEL_COLOUR if is_novel else _BASE_COLOUR
        draw.rectangle([x0, y0, x1, y1], outline=(0, 0, 0), width=3)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=1)
        text = f"{det['label']}{'*' if is_novel else ''} {det['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x0 + 2, y0 + 1), text)
        draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=(0, 0, 0))
        draw.text((x0 + 2, y0 + 1), text, fill=colour)
    return img


def save_grid(pictures: List[Image.Image], path: str, columns: int = 4) -> str:
    """Tile pictures (same size) into one image."""
    if not pictures:
        raise ValueError("save_grid: no picture")
    w, h = pictures[0].size
    rows = (len(pictures) + columns - 1) // columns
    grid = Image.new("RGB", (columns * w + (columns - 1) * 4, rows * h + (rows - 1) * 4),
                     (40, 40, 40))
    for k, pic in enumerate(pictures):
        grid.paste(pic, ((k % columns) * (w + 4), (k // columns) * (h + 4)))
    grid.save(path)
    return path


def vocabulary_token_ids(world) -> np.ndarray:
    """Token ids of every caption of the world and of the toy prompts of its words."""
    texts = [c for split in ("captions", "det_train", "test") for caps in world.captions(split)
             for c in caps]
    words = (list(world.concepts()) + [w for ws in SHAPE_SYNONYMS.values() for w in ws]
             + [w for ws in COLOUR_WORDS.values() for w in ws]
             + [w for ws in TEXTURE_WORDS.values() for w in ws])
    texts += [p for w in words for p in toy_prompts(w)]
    ids = set()
    for start in range(0, len(texts), 4096):
        ids.update(tokenize(texts[start:start + 4096]).unique().tolist())
    return np.asarray(sorted(ids))


def demo_stage(settings, world, out: str, ship_to: str = None) -> str:
    """Pack the student's transfer detector and draw the grid; returns the grid's path."""
    from .demo import load_images, run_demo
    from .weights import pack_detector

    demo_dir = os.path.join(out, "demo")
    os.makedirs(demo_dir, exist_ok=True)
    student = os.path.join(out, "transfer", "student")
    package = os.path.join(demo_dir, "toyworld_detector.pth")
    results = read_json(os.path.join(out, "transfer", "results.json"))["student"]["coco"]
    pack_detector(os.path.join(student, "model_final.pth"),
                  os.path.join(out, "pretrain", "student_clip.pth"),
                  os.path.join(out, "clip", "arch.json"), os.path.join(student, "config.yaml"),
                  os.path.join(out, "rpn", "config.yaml"), world.class_names,
                  vocabulary_token_ids(world), package,
                  extra={"base_classes": world.base_classes, "novel_classes": world.novel_classes,
                         "image_size": settings.WORLD.IMAGE_SIZE, "seed": settings.SEED,
                         "transfer_ap50": {k: v for k, v in results.items() if "AP50" in k}})
    objects = None
    if settings.EVAL.GRID_IMAGES_PATH:
        images = load_images(settings.EVAL.GRID_IMAGES_PATH)[:settings.EVAL.GRID_IMAGES]
    else:
        images = [(f"test_{k + 1:06d}.png", img)
                  for k, img in enumerate(world.images("test")[:settings.EVAL.GRID_IMAGES])]
        names = world.class_names
        objects = [[{"box": box.tolist(), "name": names[int(c)]}
                    for box, c in zip(g["boxes"], g["classes"])]
                   for g in world.boxes("test_all")[:len(images)]]
    run_demo(demo_dir, package, vocabulary=list(settings.EVAL.GRID_VOCAB) or None, images=images,
             score_threshold=settings.EVAL.GRID_SCORE_THRESH, objects=objects)
    if ship_to:
        os.makedirs(ship_to, exist_ok=True)
        shutil.copy(package, os.path.join(ship_to, os.path.basename(package)))
        logger.info("detector package copied to %s (%.1f MB)", ship_to,
                    os.path.getsize(package) / 2 ** 20)
    return os.path.join(demo_dir, "grid.png")
