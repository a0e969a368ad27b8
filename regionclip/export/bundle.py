"""An export folder: the detector graph, the text tower graph, and what a deployment needs.

``export_model`` writes into ``output_dir``:

* ``model.onnx`` / ``model.ts``: the detector (:mod:`.detector`);
* ``text_encoder.onnx`` / ``text_encoder.ts``: the CLIP text tower (:mod:`.text`), when the
  weights have one;
* ``export_info.json``: inputs, outputs, test-time resize, channel order, class names, prompt
  templates, score threshold...;
* ``class_embeddings.npy``: the exported vocabulary's (C, D) embeddings (open-vocabulary
  exports: the default for the ``class_embeddings`` input);
* ONNX only: ``regionclip_onnx.py`` (:mod:`.runtime`) and ``clip_tokenizer.py`` with its merges
  file, to run the folder with onnxruntime and numpy, without PyTorch.
"""
import json
import logging
import os
import shutil
from typing import Optional, Sequence

import numpy as np

from ..clip import tokenizer as tokenizer_module
from ..clip.prompts import PROMPT_TEMPLATES, check_templates
from ..inputs import MIN_SIDE, read_rgb_image
from ..version import __version__
from . import runtime
from .detector import FORMATS, OPSET, check_exportable, export_detector, sample_image
from .text import export_text_encoder

__all__ = ["export_model", "MODEL_FILES", "TEXT_FILES"]

logger = logging.getLogger(__name__)

MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.ts"}
TEXT_FILES = {"onnx": "text_encoder.onnx", "torchscript": "text_encoder.ts"}


def _dataset_class_names(cfg, count: int):
    """``thing_classes`` of the config's first test dataset when it has ``count`` of them."""
    from detectron2.data import MetadataCatalog

    for name in cfg.DATASETS.TEST[:1]:
        try:
            names = MetadataCatalog.get(name).get("thing_classes")
        except Exception:  # an unregistered or unreadable dataset: no names
            names = None
        if names and len(names) == count:
            return list(names)
    return None


def export_model(rc, output_dir: str, fmt: str = "onnx", image=None,
                 vocabulary: Optional[Sequence[str]] = None,
                 templates: Optional[Sequence[str]] = None, open_vocabulary: bool = False,
                 text_encoder: bool = True) -> dict:
    """Export ``rc`` (a :class:`regionclip.RegionCLIP`) into ``output_dir``.

    Args:
        rc (RegionCLIP): the detector.
        output_dir (str): created if needed.
        fmt (str): "onnx" or "torchscript".
        image: sample image to trace with (path or HxWx3 uint8 RGB); None: a generated one.
        vocabulary (sequence[str] or None): class names, encoded with the model's text tower;
            None: the model's embedding table (with names from the test dataset when known).
        templates (sequence[str] or None): prompt templates for ``vocabulary`` (default: the
            original's 81).
        open_vocabulary (bool): the class embeddings become an input of the detector graph.
        text_encoder (bool): also export the text tower (when the weights have one).

    Returns:
        dict: the contents of ``export_info.json``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    check_exportable(rc)  # before anything is written
    templates = list(check_templates(templates)) if templates is not None else None
    emb, names = None, None
    if vocabulary is not None:
        from ..inputs import unique_names

        names = unique_names([str(v) for v in vocabulary])
        emb = rc.encode_text(names, templates=templates)
    os.makedirs(output_dir, exist_ok=True)
    if image is None:
        logger.info("no --sample-image: tracing with a generated %dpx image",
                    rc.cfg.INPUT.MIN_SIZE_TEST)
        image = sample_image(rc)
    rgb = read_rgb_image(image)
    model_file = MODEL_FILES[fmt]
    trace = export_detector(rc, os.path.join(output_dir, model_file), fmt, rgb, emb,
                            open_vocabulary)
    predictor = rc.model.roi_heads.box_predictor
    table = emb
    if table is None and predictor.use_text_emb_classifier:
        table = predictor.class_embeddings().detach()
    if names is None and table is not None:
        names = _dataset_class_names(rc.cfg, table.shape[0])
        if names is None:
            logger.warning("class names unknown (no vocabulary given, and the test dataset has "
                           "no %d names): labels are class indices", table.shape[0])
    files = {"detector": model_file}
    if table is not None:
        np.save(os.path.join(output_dir, "class_embeddings.npy"),
                table.float().cpu().numpy())
        files["class_embeddings"] = "class_embeddings.npy"
    if text_encoder and rc.text_encoder_loaded:
        export_text_encoder(rc, os.path.join(output_dir, TEXT_FILES[fmt]), fmt)
        files["text_encoder"] = TEXT_FILES[fmt]
    elif text_encoder:
        logger.warning("MODEL.WEIGHTS has no text-encoder weights: no text tower exported")
    if fmt == "onnx":
        shutil.copy(tokenizer_module.__file__, os.path.join(output_dir, "clip_tokenizer.py"))
        shutil.copy(tokenizer_module.default_bpe_path(), output_dir)
        shutil.copy(runtime.__file__, os.path.join(output_dir, "regionclip_onnx.py"))
    cfg = rc.cfg
    info = {
        "format": fmt,
        "opset": OPSET if fmt == "onnx" else None,
        "regionclip_version": __version__,
        "weights": cfg.MODEL.WEIGHTS,
        "files": files,
        "inputs": trace.input_names,
        "outputs": trace.output_names,
        "input_format": cfg.INPUT.FORMAT,
        "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
        "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
        "min_side": MIN_SIDE,
        "boxes_input": "boxes" in trace.input_names,
        "open_vocabulary": open_vocabulary,
        "class_names": names,
        "score_threshold": cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
        "nms_threshold": cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
        "detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        "multiply_rpn_score": cfg.MODEL.CLIP.MULTIPLY_RPN_SCORE,
        "mask_on": "pred_masks" in trace.output_names,
        "prompt_templates": list(templates or PROMPT_TEMPLATES),
        "context_length": tokenizer_module.CONTEXT_LENGTH,
        "truncate": bool(cfg.MODEL.CLIP.TOKENIZE_TRUNCATE),
    }
    with open(os.path.join(output_dir, runtime.INFO_FILE), "w") as f:
        json.dump(info, f, indent=1)
    logger.info("exported %s to %s", ", ".join(files.values()), output_dir)
    return info
