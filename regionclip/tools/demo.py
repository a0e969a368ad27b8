"""Open-vocabulary detection on one's own images: the logic of ``tools/demo.py``.

    python tools/demo.py --input IMAGE_OR_FOLDER [...] --vocabulary cat dog "remote control"
        --weights pretrained_ckpt/regionclip/regionclip_pretrained-cc_rn50.pth --output OUT
        [--config-file CFG] [--score-threshold S] [--boxes-json BOXES.json] [--templates T.txt]
        [--device cpu] [--batch-size N] [--opts KEY VALUE ...]

``--vocabulary`` takes class names, ``.txt`` files (one name per line) and named vocabularies
(``coco`` = ``coco_80``, ``coco_65``, ``coco_48``, ``coco_17``, ``lvis`` = ``lvis_1203``,
``lvis_866``), concatenated in order. Text embeddings are computed on the fly with the
checkpoint's text encoder (the original's 81-prompt ensemble, or the templates of a
``--templates`` file: one per line, ``{}`` where the name goes). Regions come from the config
(the offline RPN of the default custom-image config) or, with ``--boxes-json``, from a json
``{image: [[x0, y0, x1, y1], ...]}`` whose keys are the image paths as given or their file names.
Images run ``--batch-size`` at a time (images of one size share a batch; results equal one by
one), with a progress bar.

Writes ``OUT/<image file name>`` (boxes and labels drawn with detectron2's Visualizer) and
``OUT/detections.json`` = ``{image: [{"box": [x0, y0, x1, y1], "label": str, "score": float}]}``
(image pixels, best first). With the custom-image config (``MODEL.CLIP.MULTIPLY_RPN_SCORE`` and
``VIS``), detections from RPN regions are ranked and thresholded by ``sqrt(prob * objectness)``
but report the class probability, as the original's visualisation; given boxes are ranked and
thresholded by the probability itself.
"""
import argparse
import json
import logging
import os
import re
from typing import Dict, List, Optional, Sequence

import numpy as np

from regionclip.data.datasets.lvis_ovd import IMAGE_EXTENSIONS
from regionclip.data.vocabularies import VOCABULARY_NAMES, get_vocabulary
from regionclip.tools import read_json, run_command
from regionclip.tools.extract_concept_features import read_concepts_file

__all__ = ["resolve_vocabulary", "list_images", "load_boxes_json", "read_templates_file",
           "draw_detections", "run_demo", "build_parser", "run", "main"]

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/LVISv1-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_custom_img.yaml"
DEFAULT_RPN_CONFIG = "configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
ALIASES = {"coco": "coco_80", "lvis": "lvis_1203"}
_NAMED = re.compile(r"^(coco|lvis)(_\d+)?$")
JSON_NAME = "detections.json"


def resolve_vocabulary(items: Sequence[str]) -> List[str]:
    """Class names from words, ``.txt`` files and named vocabularies (see the module doc).

    Raises:
        KeyError: an unknown named vocabulary (``coco_*``/``lvis_*``).
        FileNotFoundError / ValueError: a missing or empty ``.txt`` file, an empty name, or no
            name at all.
    """
    names = []
    for item in items:
        if _NAMED.match(item):
            name = ALIASES.get(item, item)
            if name not in VOCABULARY_NAMES:
                raise KeyError(f"unknown named vocabulary '{item}'; valid names: "
                               f"{', '.join(list(ALIASES) + list(VOCABULARY_NAMES))}")
            names += get_vocabulary(name)
        elif item.endswith(".txt"):
            names += read_concepts_file(item)
        elif item.strip():
            names.append(item.strip())
        else:
            raise ValueError("empty class name in --vocabulary")
    if not names:
        raise ValueError("the vocabulary is empty: give class names, a .txt file or a named "
                         "vocabulary with --vocabulary")
    unique = list(dict.fromkeys(names))
    if len(unique) != len(names):
        logger.warning("--vocabulary: %d repeated names kept once", len(names) - len(unique))
    return unique


def list_images(inputs: Sequence[str]) -> List[str]:
    """Image files from files and folders (a folder's image files, sorted), checked to decode.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a folder has no image file, or a file is not a readable image.
    """
    from PIL import Image

    files = []
    for path in inputs:
        if os.path.isdir(path):
            entries = sorted(os.listdir(path))
            found = [os.path.join(path, e) for e in entries if e.lower().endswith(IMAGE_EXTENSIONS)
                     and os.path.isfile(os.path.join(path, e))]
            taken = set(found)
            others = [e for e in entries if os.path.join(path, e) not in taken]
            if others:
                logger.warning("%s: ignoring %d entries that are not image files (%s): %s", path,
                               len(others), ", ".join(IMAGE_EXTENSIONS), others[:10])
            if not found:
                raise ValueError(f"folder '{path}' has no image file "
                                 f"({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"image '{path}' does not exist")
    for f in files:
        try:
            with Image.open(f) as img:
                img.verify()
        except Exception as e:  # PIL raises several types for undecodable files
            raise ValueError(f"could not decode image '{f}': {e}") from None
    return files


def read_templates_file(path: str) -> List[str]:
    """Prompt templates from a text file, one per line (blank lines skipped), each with ``{}``.

    Raises:
        FileNotFoundError / ValueError: missing file, no template, or a line without ``{}``.
    """
    from regionclip.clip.prompts import check_templates

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--templates '{path}' does not exist")
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    if not lines:
        raise ValueError(f"--templates '{path}' holds no template")
    try:
        return list(check_templates(lines))
    except ValueError as e:
        raise ValueError(f"--templates '{path}': {e}") from None


def load_boxes_json(path: str, images: Sequence[str]) -> Dict[str, np.ndarray]:
    """Given regions per image from ``{image: [[x0, y0, x1, y1], ...]}`` (keys: path or file name).

    Boxes are checked against each image's size (:func:`regionclip.inputs.check_boxes`):
    non-finite, inverted, zero-area and out-of-image boxes are errors; partly outside ones are
    clipped.

    Raises:
        ValueError: bad json, an image without an entry, or a malformed, empty or bad box.
    """
    from regionclip.inputs import check_boxes, image_size

    table = read_json(path, "--boxes-json")
    if not isinstance(table, dict):
        raise ValueError(f"--boxes-json '{path}' must map image paths to box lists")
    out = {}
    for image in images:
        key = image if image in table else os.path.basename(image)
        if key not in table:
            raise ValueError(f"--boxes-json '{path}' has no boxes for image '{image}' (keys are "
                             "image paths as given or file names)")
        where = f"--boxes-json '{path}', image '{key}'"
        try:
            boxes = np.asarray(table[key], dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected a list of [x0, y0, x1, y1] numbers, got "
                             f"{table[key]!r:.100}") from None
        if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
            raise ValueError(f"{where}: expected a non-empty list of [x0, y0, x1, y1], got "
                             f"shape {boxes.shape}")
        out[image] = check_boxes(boxes, image_size(image), where)
    return out


def draw_detections(image: np.ndarray, detections: Sequence[dict], vocabulary: Sequence[str]):
    """An RGB picture of ``detections`` (boxes, "label score" captions) on ``image`` (RGB)."""
    import torch
    from detectron2.data.catalog import Metadata
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.visualizer import Visualizer

    index = {name: i for i, name in enumerate(vocabulary)}
    inst = Instances(image.shape[:2])
    inst.pred_boxes = Boxes(torch.tensor([d["box"] for d in detections],
                                         dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor([d["score"] for d in detections], dtype=torch.float32)
    inst.pred_classes = torch.tensor([index[d["label"]] for d in detections], dtype=torch.long)
    metadata = Metadata(name="regionclip_demo", thing_classes=list(vocabulary))
    return Visualizer(image, metadata).draw_instance_predictions(inst).get_image()


def _picture_names(images: Sequence[str]) -> List[str]:
    owner = {}
    for image in images:
        name = os.path.basename(image)
        if name in owner:
            raise ValueError(f"images '{owner[name]}' and '{image}' would both be drawn to "
                             f"'{name}'")
        owner[name] = image
    return [os.path.basename(i) for i in images]


def run_demo(detector, images: Sequence[str], vocabulary: Sequence[str], output_dir: str,
             score_threshold: Optional[float] = None,
             boxes: Optional[Dict[str, np.ndarray]] = None, progress: bool = True,
             templates: Optional[Sequence[str]] = None, batch_size: int = 4) -> dict:
    """Detect ``vocabulary`` in ``images`` and write the pictures and ``detections.json``.

    Args:
        detector (RegionCLIP): the model.
        images (sequence[str]): image files.
        vocabulary (sequence[str]): class names.
        output_dir (str): created if needed.
        score_threshold (float or None): None keeps the config's.
        boxes (dict or None): given regions per image (from :func:`load_boxes_json`).
        progress (bool): tqdm progress bar.
        templates (sequence[str] or None): prompt templates with ``{}`` (None: the original's 81).
        batch_size (int): images per forward pass (``RegionCLIP.detect`` on the list).

    Returns:
        dict: ``{image: [{"box", "label", "score"}, ...]}`` as written to the json.
    """
    import cv2

    from regionclip.api import read_rgb_image

    images = list(images)
    names = _picture_names(images)
    os.makedirs(output_dir, exist_ok=True)
    per_image = detector.detect(images, vocabulary,
                                boxes=None if boxes is None else [boxes[i] for i in images],
                                score_threshold=score_threshold, templates=templates,
                                batch_size=batch_size, progress=progress)
    results = {}
    for image, name, dets in zip(images, names, per_image):
        picture = draw_detections(read_rgb_image(image), dets, vocabulary)
        path = os.path.join(output_dir, name)
        if not cv2.imwrite(path, np.ascontiguousarray(picture[:, :, ::-1])):
            raise ValueError(f"could not write '{path}' (unsupported extension?)")
        results[image] = dets
    with open(os.path.join(output_dir, JSON_NAME), "w") as f:
        json.dump(results, f, indent=1)
    return results


def _resolve_path(path: str) -> str:
    """``path`` as given, else relative to the repository (for the default configs)."""
    if os.path.exists(path) or os.path.isabs(path):
        return path
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    candidate = os.path.join(repo, path)
    return candidate if os.path.exists(candidate) else path


def _model_opts(config_file: str, weights: Optional[str], opts: Sequence[str]) -> List[str]:
    """Check the config early and add the default offline RPN config when it has none."""
    from detectron2.config import get_cfg

    from regionclip.config import add_regionclip_config
    from regionclip.yaml_config import merge_config_file

    cfg = get_cfg()
    add_regionclip_config(cfg)
    merge_config_file(cfg, config_file, "--config-file")
    cfg.merge_from_list(list(opts))
    if not (weights or cfg.MODEL.WEIGHTS):
        raise ValueError("no checkpoint: give --weights (a RegionCLIP or OpenAI CLIP file)")
    opts = list(opts)
    if cfg.MODEL.CLIP.CROP_REGION_TYPE == "RPN" and not cfg.MODEL.CLIP.OFFLINE_RPN_CONFIG:
        rpn = _resolve_path(DEFAULT_RPN_CONFIG)
        logger.info("MODEL.CLIP.OFFLINE_RPN_CONFIG not set: using %s", rpn)
        opts += ["MODEL.CLIP.OFFLINE_RPN_CONFIG", rpn]
    return opts


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module doc)."""
    parser = argparse.ArgumentParser(description="RegionCLIP open-vocabulary detection demo.")
    parser.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    parser.add_argument("--vocabulary", nargs="+", required=True,
                        help="class names, .txt files (one per line) or named vocabularies ("
                        f"{', '.join(list(ALIASES) + list(VOCABULARY_NAMES))})")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="a CLIPFastRCNN yaml")
    parser.add_argument("--weights", default=None, help="checkpoint (MODEL.WEIGHTS)")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="minimum score in [0, 1] (default: the config's "
                        "SCORE_THRESH_TEST); with RPN regions and MULTIPLY_RPN_SCORE it applies "
                        "to sqrt(prob * objectness) while the reported score is the class "
                        "probability (MODEL.CLIP.VIS)")
    parser.add_argument("--boxes-json", default=None,
                        help="json {image: [[x0, y0, x1, y1], ...]} of regions to classify")
    parser.add_argument("--templates", default=None,
                        help="text file of prompt templates, one per line, each with {} where "
                        "the class name goes (default: the original's 81)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:1 ... (default: the config's "
                        "MODEL.DEVICE; cuda falls back to the CPU when no GPU is present)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="images per forward pass (default 4; images of one size share a "
                        "batch, results equal one by one)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides KEY VALUE ... (last option)")
    return parser


def run(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the demo (``argv`` without the program name; default ``sys.argv``)."""

    from regionclip.api import RegionCLIP
    from regionclip.inputs import check_score_threshold

    args = build_parser().parse_args(argv)
    if len(args.opts) % 2:
        raise ValueError(f"--opts needs KEY VALUE pairs, got {args.opts}")
    check_score_threshold(args.score_threshold, "--score-threshold")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    vocabulary = resolve_vocabulary(args.vocabulary)
    images = list_images(args.input)
    boxes = load_boxes_json(args.boxes_json, images) if args.boxes_json else None
    templates = read_templates_file(args.templates) if args.templates else None
    config_file = _resolve_path(args.config_file)
    opts = _model_opts(config_file, args.weights, args.opts)
    device = args.device  # None: the config's MODEL.DEVICE (after the KEY VALUE overrides)
    detector = RegionCLIP.from_config(config_file, weights=args.weights, opts=opts, device=device)
    results = run_demo(detector, images, vocabulary, args.output, args.score_threshold, boxes,
                       templates=templates, batch_size=args.batch_size)
    print(f"{sum(len(v) for v in results.values())} detections on {len(results)} images; "
          f"pictures and {JSON_NAME} in {args.output}")
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: :func:`run`, then the exit status (see ``run_command``)."""
    return run_command(run, argv)
