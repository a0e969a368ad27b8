"""``make demo``: detect a vocabulary on generated scenes (or your images) with the toy detector.

The shipped package (:mod:`.weights`, produced by ``make toyworld``) is unpacked and loaded with
the Python API :class:`regionclip.RegionCLIP`; class names are embedded by the package's own
text tower with the toy prompt templates (:class:`ToyRegionCLIP`). Any vocabulary works: the
world's categories (novel ones included), synonyms, or attribute phrases such as "red star" (the
text tower has seen colour and texture words in captions; words it never saw mean nothing to it).
"""
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from regionclip.api import RegionCLIP

from .common import write_json
from .scenes import SceneSpec, draw_scene
from .text import text_embeddings
from .weights import unpack_detector

__all__ = ["DEFAULT_PACKAGE", "DEFAULT_SCORE_THRESHOLD", "DEFAULT_AGNOSTIC_NMS", "DEFAULT_TOP_K",
           "ToyRegionCLIP", "load_detector", "load_images", "run_demo", "web_model"]

logger = logging.getLogger(__name__)

DEFAULT_PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "weights", "toyworld_detector.pth")  # projects/toyworld/weights
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# what the demo shows: the toy detector's class probabilities are soft (a softmax over the
# vocabulary and background at the teacher's temperature), one label per object, a few per scene
DEFAULT_SCORE_THRESHOLD = 0.15
DEFAULT_AGNOSTIC_NMS = 0.3
DEFAULT_TOP_K = 6


class ToyRegionCLIP(RegionCLIP):
    """:class:`RegionCLIP` whose class names are embedded with the toy world's prompts (unless
    ``templates`` are given)."""

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], prompt_ensemble: bool = True,
                    templates: Optional[Sequence[str]] = None) -> torch.Tensor:
        if templates is not None:
            return super().encode_text(texts, prompt_ensemble, templates)
        if isinstance(texts, str):
            texts = [texts]
        texts = [str(t).strip() for t in texts]
        if not texts or not all(texts):
            raise ValueError(f"the vocabulary must be a non-empty list of non-empty names, got "
                             f"{texts!r}")
        key = (tuple(texts), prompt_ensemble)
        if key not in self._text_cache:
            self._text_cache[key] = text_embeddings(self.model.lang_encoder.encode_text, texts,
                                                    "toy" if prompt_ensemble else "none")
        return self._text_cache[key]


def load_detector(package: str, out_dir: str, opts: Sequence[str] = (),
                  device: Optional[str] = None):
    """Unpack the detector package into ``out_dir`` and load it.

    Returns:
        (ToyRegionCLIP, dict): the detector and the unpacked files (see :func:`unpack_detector`).
    """
    files = unpack_detector(package, out_dir)
    detector = ToyRegionCLIP.from_config(files["config"], weights=files["weights"], opts=opts,
                                         device=device)
    return detector, files


def web_model(opts: Sequence[str] = (), device: Optional[str] = None,
              package: str = DEFAULT_PACKAGE):
    """The shipped detector for ``tools/web_demo.py`` without flags, with this demo's settings
    (unpacked into a temporary folder removed at exit)."""
    import atexit
    import shutil
    import tempfile

    from regionclip.tools.web_demo import ServedModel

    folder = tempfile.mkdtemp(prefix="toyworld_web_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    detector, files = load_detector(package, folder, opts, device)
    return ServedModel(detector, f"the toy-world detector ({os.path.basename(package)}, trained "
                       "on generated shapes only)", vocabulary=list(files["classes"]),
                       score_threshold=DEFAULT_SCORE_THRESHOLD,
                       agnostic_nms=DEFAULT_AGNOSTIC_NMS, max_detections=DEFAULT_TOP_K)


def load_images(path: str) -> List[tuple]:
    """``(name, HxWx3 uint8 RGB)`` for an image file or every image in a folder (sorted)."""
    from regionclip.api import read_rgb_image

    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.lower().endswith(_IMAGE_EXTENSIONS))
        if not files:
            raise FileNotFoundError(f"IMAGES folder '{path}' holds no image "
                                    f"({', '.join(_IMAGE_EXTENSIONS)})")
        return [(f, read_rgb_image(os.path.join(path, f))) for f in files]
    return [(os.path.basename(path), read_rgb_image(path))]


def _generated(num: int, seed: int, image_size: int) -> Tuple[List[tuple], List[List[dict]]]:
    """Generated scenes ``(name, RGB)`` and their objects ``{"box": XYXY, "name"}``."""
    rng = np.random.default_rng(seed)
    spec = SceneSpec(image_size=(image_size, image_size))
    scenes = [draw_scene(rng, spec) for _ in range(num)]
    objects = [[{"box": [o["bbox"][0], o["bbox"][1], o["bbox"][0] + o["bbox"][2],
                         o["bbox"][1] + o["bbox"][3]], "name": o["shape"]} for o in s.objects]
               for s in scenes]
    return [(f"scene_{k:02d}.png", s.image) for k, s in enumerate(scenes)], objects


def _declutter(dets: List[dict], iou: float, top_k: int) -> List[dict]:
    """Class-agnostic NMS (one label per object in the picture), then the ``top_k`` best."""
    if not dets or iou >= 1:
        return dets[:top_k]
    from torchvision.ops import nms

    boxes = torch.tensor([d["box"] for d in dets], dtype=torch.float32)
    scores = torch.tensor([d["score"] for d in dets], dtype=torch.float32)
    return [dets[int(i)] for i in nms(boxes, scores, iou)[:top_k]]


def _scores(entries: List[dict], objects: Optional[List[List[dict]]], vocabulary: List[str],
            novel: set):
    from .demo_score import score_detections

    if objects is None:
        return "not measured: the objects of these images are not known"
    missing = sorted({o["name"] for objs in objects for o in objs} - set(vocabulary))
    if missing:
        return f"not measured: the vocabulary does not name the categories {missing}"
    return score_detections([e["detections"] for e in entries], objects, novel)


def run_demo(out_dir: str, package: str = DEFAULT_PACKAGE, vocabulary: Optional[List[str]] = None,
             images: Optional[List[tuple]] = None, num_scenes: int = 8, seed: int = 2024,
             score_threshold: float = DEFAULT_SCORE_THRESHOLD, novel: Sequence[str] = (),
             top_k: int = DEFAULT_TOP_K, agnostic_nms: float = DEFAULT_AGNOSTIC_NMS,
             objects: Optional[List[List[dict]]] = None) -> Dict:
    """Detect ``vocabulary`` in images and write pictures, a grid and ``detections.json``.

    Args:
        out_dir (str): output folder.
        package (str): toy detector package.
        vocabulary (list[str]): names to detect (default: the world's 12 categories).
        images (list[tuple]): ``(name, RGB array)``; default: ``num_scenes`` generated scenes.
        num_scenes (int): generated scenes when ``images`` is None.
        seed (int): seed of the generated scenes.
        score_threshold (float): minimum score drawn and listed (the toy detector's class
            probabilities are soft: a softmax over the vocabulary and background at the teacher's
            temperature).
        novel (sequence[str]): names to mark as novel in the pictures (default: the package's
            novel categories).
        top_k (int): detections kept per image.
        agnostic_nms (float): IoU of a class-agnostic NMS over the detector's per-class output
            (1 disables it).
        objects (list[list[dict]]): the objects of ``images`` when known (``{"box": XYXY,
            "name"}``; known for generated scenes).

    Returns:
        dict: the content of ``detections.json``; ``scores`` holds precision and recall
        (:func:`~.demo_score.score_detections`) when the objects are known and the vocabulary
        names all their categories, else the reason why not.
    """
    from .visualize import draw_detections, save_grid

    detector, files = load_detector(package, os.path.join(out_dir, "package"))
    extra = files["extra"]
    vocabulary = list(vocabulary) if vocabulary else list(files["classes"])
    novel = set(novel or extra.get("novel_classes", []))
    if images is None:
        images, objects = _generated(num_scenes, seed, int(extra.get("image_size", 96)))
    entries, pictures = [], []
    for name, rgb in images:
        dets = _declutter(detector.detect(rgb, vocabulary, score_threshold=score_threshold),
                          agnostic_nms, top_k)
        entries.append({"image": name, "height": int(rgb.shape[0]), "width": int(rgb.shape[1]),
                        "detections": dets})
        picture = draw_detections(rgb, dets, novel)
        picture.save(os.path.join(out_dir, os.path.splitext(name)[0] + "_detections.png"))
        pictures.append(picture)
    save_grid(pictures, os.path.join(out_dir, "grid.png"))
    payload = {"vocabulary": vocabulary, "score_threshold": score_threshold, "top_k": top_k,
               "agnostic_nms": agnostic_nms,
               "package": os.path.abspath(package), "images": entries,
               "scores": _scores(entries, objects, vocabulary, novel)}
    write_json(os.path.join(out_dir, "detections.json"), payload)
    return payload
