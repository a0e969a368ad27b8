"""Trace a RegionCLIP detector through detectron2's ``TracingAdapter`` and save it as ONNX or
TorchScript.

The traced graph is one image's inference without the final rescaling (detectron2's
``tools/deploy/export_model.py`` does the same, ``do_postprocess=False``):

* inputs: ``image`` (3, H, W) uint8 in ``INPUT.FORMAT``, already resized to the test size;
  ``boxes`` (N, 4) float32 XYXY in that image's pixels (ground-truth-box configs,
  ``MODEL.CLIP.CROP_REGION_TYPE GT``); ``class_embeddings`` (C, D) float32 (open-vocabulary
  exports);
* outputs: ``pred_boxes`` (R, 4) in the input image's pixels, ``scores`` (R,), ``pred_classes``
  (R,) int64, and with ``MODEL.MASK_ON`` ``pred_masks`` (R, 1, M, M) per-box mask probabilities.

Without ``class_embeddings`` as an input, the vocabulary is fixed in the graph: names encoded
when exporting, or the model's embedding table (``MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH`` /
``TEXT_EMB_PATH``). See docs/DEPLOY.md for the settings that export.
"""
import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import torch
from detectron2.export import TracingAdapter
from detectron2.export.torchscript_patch import patch_builtin_len

__all__ = ["FORMATS", "OPSET", "RegionCLIPTracingAdapter", "DetectorTrace", "check_exportable",
           "trace_detector", "export_detector", "save_traced", "sample_image", "sample_boxes"]

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
# 16 is the first opset whose RoiAlign has half-pixel coordinates (detectron2's ROIAlignV2)
OPSET = 17


def check_exportable(rc) -> None:
    """Raise a ``ValueError`` naming the config key of every setting the traced graph cannot
    reproduce; log the ones changed for the export (results unchanged)."""
    cfg, model = rc.cfg, rc.model
    problems = []
    if cfg.MODEL.ROI_HEADS.SOFT_NMS_ENABLED:
        problems.append("MODEL.ROI_HEADS.SOFT_NMS_ENABLED True: soft-NMS runs a loop whose number "
                        "of steps depends on the image, which a traced graph would fix to the "
                        "sample image's; export with MODEL.ROI_HEADS.SOFT_NMS_ENABLED False "
                        "(per-class NMS at MODEL.ROI_HEADS.NMS_THRESH_TEST)")
    if cfg.MODEL.CLIP.INFERENCE_DTYPE != "float32":
        problems.append(f"MODEL.CLIP.INFERENCE_DTYPE {cfg.MODEL.CLIP.INFERENCE_DTYPE!r}: autocast "
                        "does not export; export with 'float32'")
    if cfg.MODEL.KEYPOINT_ON:
        problems.append("MODEL.KEYPOINT_ON True: RegionCLIP has no keypoint head")
    if problems:
        raise ValueError("this config does not export:\n  - " + "\n  - ".join(problems))
    if model.roi_heads.inference_chunk_size:
        logger.info("MODEL.CLIP.INFERENCE_REGION_CHUNK %d: the exported graph runs all regions at "
                    "once (same results)", model.roi_heads.inference_chunk_size)


@contextlib.contextmanager
def _no_chunking(model):
    heads = model.roi_heads
    saved = heads.inference_chunk_size
    heads.inference_chunk_size = 0  # a chunk loop's length would be fixed by the sample image
    try:
        yield
    finally:
        heads.inference_chunk_size = saved


def sample_image(rc, seed: int = 0) -> np.ndarray:
    """A generated RGB image (noise texture with bright rectangles) of the test size, to trace
    with when no ``--sample-image`` is given."""
    short = rc.cfg.INPUT.MIN_SIZE_TEST
    h, w = short, min(int(short * 4 / 3), rc.cfg.INPUT.MAX_SIZE_TEST)
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    for _ in range(4):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        img[y0:y0 + h // 3, x0:x0 + w // 3] = rng.integers(120, 255, 3, dtype=np.uint8)
    return img


def sample_boxes(hw) -> np.ndarray:
    """Three boxes inside an image of size ``hw`` (for tracing ground-truth-box configs)."""
    h, w = hw
    return np.array([[0, 0, w / 2, h / 2], [w / 4, h / 4, w, h], [w / 8, h / 3, w / 2, h]],
                    dtype=np.float32)


class RegionCLIPTracingAdapter(TracingAdapter):
    """detectron2's ``TracingAdapter`` that also makes ``len()`` of instances traceable in this
    project's inference modules, as detectron2 does in its own ROI heads: the number of
    regions of an image is then a value of the graph, not the sample image's constant."""

    MODULES = ("regionclip.modeling.roi_heads.clip_box_predictor",
               "regionclip.modeling.roi_heads.clip_roi_heads",
               "regionclip.modeling.meta_arch.clip_fast_rcnn")

    def forward(self, *args: torch.Tensor):
        with patch_builtin_len(self.MODULES):
            return super().forward(*args)


@dataclass
class DetectorTrace:
    """A detector ready to trace: the adapter, its example inputs and the graph's names."""

    adapter: RegionCLIPTracingAdapter
    inputs: tuple
    input_names: List[str]
    output_names: List[str]
    dynamic_axes: dict = field(default_factory=dict)


def trace_detector(rc, image, class_embeddings: Optional[torch.Tensor] = None,
                   open_vocabulary: bool = False, boxes=None) -> DetectorTrace:
    """Wrap ``rc.model`` in a ``TracingAdapter`` for one image.

    Args:
        rc (RegionCLIP): the detector (eval mode).
        image: sample image (path or HxWx3 uint8 RGB array) to trace with.
        class_embeddings (Tensor or None): (C, D) vocabulary fixed in the graph; None: the
            model's own table (ignored with ``open_vocabulary``).
        open_vocabulary (bool): make the class embeddings an input of the graph.
        boxes: sample XYXY boxes in ``image`` pixels, for ground-truth-box configs (default:
            :func:`sample_boxes`).
    """
    check_exportable(rc)
    model = rc.model
    predictor = model.roi_heads.box_predictor
    text_classifier = predictor.use_text_emb_classifier
    if not text_classifier and (open_vocabulary or class_embeddings is not None):
        raise ValueError("a vocabulary needs MODEL.CLIP.USE_TEXT_EMB_CLASSIFIER True (this model "
                         "classifies with a learned linear layer)")
    gt_mode = model.clip_crop_region_type == "GT"
    rgb = image if isinstance(image, np.ndarray) else None
    if rgb is None:
        from ..inputs import read_rgb_image

        rgb = read_rgb_image(image)
    if gt_mode and boxes is None:
        boxes = sample_boxes(rgb.shape[:2])
    inputs, given = rc._prepare(rgb, boxes if gt_mode else None)
    example = [inputs["image"]]
    names, axes = ["image"], {"image": {1: "height", 2: "width"}}
    if gt_mode:
        example.append(given.tensor.float())
        names.append("boxes")
        axes["boxes"] = {0: "num_boxes"}
    fixed = None
    if open_vocabulary:
        table = class_embeddings if class_embeddings is not None else predictor.class_embeddings()
        example.append(table.detach().float().to(model.device))
        names.append("class_embeddings")
        axes["class_embeddings"] = {0: "num_classes"}
    elif text_classifier:
        fixed = (class_embeddings if class_embeddings is not None
                 else predictor.class_embeddings()).detach().float().to(model.device)
        if not bool(fixed.abs().sum() > 0):
            raise ValueError("the model's class-embedding table is all zeros: give a vocabulary "
                             "(--vocabulary) or MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH / "
                             "TEXT_EMB_PATH")
    mask_on = model.roi_heads.mask_on

    def inference(model, image, *rest):
        rest = list(rest)
        given_boxes = [rest.pop(0)] if gt_mode else None
        emb = rest.pop(0) if open_vocabulary else fixed
        (inst,) = model.inference([{"image": image}], do_postprocess=False,
                                  class_embeddings=emb, boxes=given_boxes)
        out = (inst.pred_boxes.tensor, inst.scores, inst.pred_classes)
        return out + (inst.pred_masks,) if mask_on else out

    outputs = ["pred_boxes", "scores", "pred_classes"] + (["pred_masks"] if mask_on else [])
    axes.update({name: {0: "num_detections"} for name in outputs})
    adapter = RegionCLIPTracingAdapter(model, tuple(example), inference).eval()
    return DetectorTrace(adapter, tuple(example), names, outputs, axes)


@contextlib.contextmanager
def _quiet_tracing():
    """Tracer warnings about values turned into constants are expected (sizes of the sample
    image's tensors that the graph recomputes): count them instead of printing them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    if caught:
        logger.info("%d tracer warnings (constants taken from the sample), e.g. %s", len(caught),
                    str(caught[0].message).splitlines()[0][:160])


def save_traced(module: torch.nn.Module, inputs: Sequence[torch.Tensor], path: str, fmt: str,
                input_names: Sequence[str], output_names: Sequence[str],
                dynamic_axes: Optional[dict] = None, opset: int = OPSET) -> str:
    """Trace ``module`` on ``inputs`` and write it to ``path`` as ``fmt`` ("onnx" or
    "torchscript"); returns ``path``."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    module.eval()
    with torch.no_grad(), _quiet_tracing():
        if fmt == "torchscript":
            traced = torch.jit.trace(module, tuple(inputs), check_trace=False)
            torch.jit.save(traced, path)
        else:
            torch.onnx.export(module, tuple(inputs), path, dynamo=False, opset_version=opset,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=dynamic_axes or {}, do_constant_folding=True)
    module.eval()  # the exporters restore the mode they found; keep the module usable
    return path


def export_detector(rc, path: str, fmt: str, image, class_embeddings=None,
                    open_vocabulary: bool = False, boxes=None) -> DetectorTrace:
    """:func:`trace_detector` then :func:`save_traced` to ``path``; returns the trace."""
    trace = trace_detector(rc, image, class_embeddings, open_vocabulary, boxes)
    with _no_chunking(rc.model):
        save_traced(trace.adapter, trace.inputs, path, fmt, trace.input_names,
                    trace.output_names, trace.dynamic_axes)
    return trace
