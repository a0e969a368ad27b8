"""Run an exported RegionCLIP detector with onnxruntime, numpy and Pillow only (no PyTorch).

Every ONNX export folder holds a copy of this file (``regionclip_onnx.py``) next to
``export_info.json``, the graphs and the tokenizer (``clip_tokenizer.py``, which needs ``ftfy``
and ``regex``)::

    import sys; sys.path.insert(0, "exported")
    from regionclip_onnx import OnnxDetector

    det = OnnxDetector("exported")
    det.detect("photo.jpg")                         # the vocabulary fixed at export
    det.detect("photo.jpg", ["cat", "sofa"])        # --open-vocabulary exports: any names
    det.detect("photo.jpg", boxes=[[10, 20, 200, 240]])   # ground-truth-box exports

It does what ``RegionCLIP.detect`` does around the graph: reads the image (EXIF orientation;
16-bit files go through Pillow's ``convert("RGB")``, which RegionCLIP replaces by a scaling),
resizes it as detectron2's ``ResizeShortestEdge`` (Pillow bilinear), runs the graph, and maps the
boxes back to the image's pixels (scaled, clipped, empty boxes dropped).
"""
import importlib.util
import json
import os
from typing import List, Optional, Sequence

import numpy as np

__all__ = ["INFO_FILE", "OnnxDetector", "resized_shape", "load_rgb"]

INFO_FILE = "export_info.json"


def resized_shape(h: int, w: int, short: int, max_size: int, min_side: int = 32):
    """(new_h, new_w) of detectron2's ``ResizeShortestEdge(short, max_size)`` (with RegionCLIP's
    minimum side for very elongated images)."""
    scale = short / min(h, w)
    new_h, new_w = (short, scale * w) if h < w else (scale * h, short)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return max(int(new_h + 0.5), min_side), max(int(new_w + 0.5), min_side)


def load_rgb(image) -> np.ndarray:
    """HxWx3 uint8 RGB array from a path (EXIF orientation applied) or an array."""
    from PIL import Image, ImageOps

    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be an HxWx3 uint8 RGB array, got {image.shape} "
                             f"{image.dtype}")
        return image
    with Image.open(image) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


def _load_tokenizer(folder: str):
    path = os.path.join(folder, "clip_tokenizer.py")
    spec = importlib.util.spec_from_file_location("clip_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer(os.path.join(folder, "bpe_simple_vocab_16e6.txt.gz"))


class OnnxDetector:
    """An ONNX export folder (see :mod:`regionclip.export`), run with onnxruntime.

    Args:
        folder (str): the ``--output`` folder of ``tools/export_model.py --format onnx``.
        providers (sequence[str]): onnxruntime execution providers.
    """

    def __init__(self, folder: str, providers: Sequence[str] = ("CPUExecutionProvider",)):
        import onnxruntime as ort

        with open(os.path.join(folder, INFO_FILE)) as f:
            self.info = json.load(f)
        if self.info.get("format") != "onnx":
            raise ValueError(f"{folder}: an export in format {self.info.get('format')!r}; "
                             "OnnxDetector runs ONNX exports")
        self.folder = folder
        self._ort, self._providers = ort, list(providers)
        self.session = ort.InferenceSession(os.path.join(folder, self.info["files"]["detector"]),
                                            providers=self._providers)
        self._text = self._tokenizer = None
        self._cache = {}

    # ------------------------------------------------------------------ vocabularies
    def encode_text(self, names: Sequence[str], templates: Optional[Sequence[str]] = None,
                    batch_size: int = 256) -> np.ndarray:
        """(C, D) class embeddings: the mean, over the prompt templates (default: the ones of
        ``export_info.json``, the original's 81), of the text tower's un-normalised outputs."""
        text_file = self.info["files"].get("text_encoder")
        if not text_file:
            raise ValueError(f"{self.folder} has no text encoder (the weights had none)")
        if self._text is None:
            self._text = self._ort.InferenceSession(os.path.join(self.folder, text_file),
                                                    providers=self._providers)
            self._tokenizer = _load_tokenizer(self.folder)
        names = [str(n) for n in names]
        if not names or any(not n.strip() for n in names):
            raise ValueError(f"the vocabulary must be a non-empty list of names, got {names!r}")
        templates = list(templates or self.info["prompt_templates"])
        prompts = [t.format(n) for n in names for t in templates]
        ids = self._tokenizer.token_array(prompts, self.info["context_length"],
                                          self.info["truncate"])
        out = np.concatenate([self._text.run(None, {"input_ids": ids[i:i + batch_size]})[0]
                              for i in range(0, len(ids), batch_size)])
        return out.reshape(len(names), len(templates), -1).mean(axis=1)

    # ------------------------------------------------------------------ images
    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """The graph's ``image`` input: (3, H', W') uint8 in the model's channel order, resized
        as at test time."""
        from PIL import Image

        h, w = rgb.shape[:2]
        new_h, new_w = resized_shape(h, w, self.info["min_size_test"], self.info["max_size_test"],
                                     self.info["min_side"])
        resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR))
        if self.info["input_format"] == "BGR":
            resized = resized[:, :, ::-1]
        return np.ascontiguousarray(resized.transpose(2, 0, 1))

    def run(self, image: np.ndarray, boxes: Optional[np.ndarray] = None,
            class_embeddings: Optional[np.ndarray] = None) -> dict:
        """The graph's raw outputs (by name) for a preprocessed ``image``."""
        feed = {"image": image}
        if self.info["boxes_input"]:
            if boxes is None:
                raise ValueError("this export classifies given regions: pass boxes=[[x0, y0, x1, "
                                 "y1], ...]")
            feed["boxes"] = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if self.info["open_vocabulary"]:
            feed["class_embeddings"] = np.asarray(class_embeddings, dtype=np.float32)
        outputs = self.session.run(None, feed)
        return dict(zip((o.name for o in self.session.get_outputs()), outputs))

    def detect(self, image, vocabulary: Optional[Sequence[str]] = None, boxes=None,
               templates: Optional[Sequence[str]] = None) -> List[dict]:
        """Detections ``{"box": [x0, y0, x1, y1], "label", "score"}`` in image pixels, best
        first, as ``RegionCLIP.detect``.

        Args:
            image: path or HxWx3 uint8 RGB array.
            vocabulary (sequence[str] or None): class names, for open-vocabulary exports (None:
                the names given at export).
            boxes: (N, 4) XYXY regions in image pixels, for ground-truth-box exports.
            templates (sequence[str] or None): prompt templates for ``vocabulary``.
        """
        rgb = load_rgb(image)
        h, w = rgb.shape[:2]
        x = self.preprocess(rgb)
        sx, sy = x.shape[2] / w, x.shape[1] / h
        names, emb = self.info["class_names"], None
        if vocabulary is not None:
            if not self.info["open_vocabulary"]:
                raise ValueError("this export has a fixed vocabulary; export with "
                                 "--open-vocabulary to pass names at run time")
            names = list(dict.fromkeys(vocabulary))
            key = (tuple(names), tuple(templates or ()))
            if key not in self._cache:
                self._cache[key] = self.encode_text(names, templates)
            emb = self._cache[key]
        elif self.info["open_vocabulary"]:
            emb = np.load(os.path.join(self.folder, self.info["files"]["class_embeddings"]))
        given = None
        if boxes is not None:
            given = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
            given[:, [0, 2]] = given[:, [0, 2]].clip(0, w) * sx
            given[:, [1, 3]] = given[:, [1, 3]].clip(0, h) * sy
        out = self.run(x, given, emb)
        pred = out["pred_boxes"] / np.array([sx, sy, sx, sy], dtype=np.float32)
        pred[:, [0, 2]] = pred[:, [0, 2]].clip(0, w)
        pred[:, [1, 3]] = pred[:, [1, 3]].clip(0, h)
        keep = (pred[:, 2] > pred[:, 0]) & (pred[:, 3] > pred[:, 1])
        labels = [names[c] if names else int(c) for c in out["pred_classes"][keep]]
        return [{"box": b.tolist(), "label": label, "score": float(s)}
                for b, label, s in zip(pred[keep], labels, out["scores"][keep])]
