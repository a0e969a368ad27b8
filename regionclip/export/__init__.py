"""Export a RegionCLIP detector to ONNX or TorchScript (``tools/export_model.py``).

:func:`export_model` writes an export folder (:mod:`.bundle`): the detector traced through
detectron2's ``TracingAdapter`` (:mod:`.detector`), the CLIP text tower (:mod:`.text`), and, for
ONNX, what runs it with onnxruntime and numpy only (:mod:`.runtime`). docs/DEPLOY.md lists the
settings that export.
"""
from .bundle import MODEL_FILES, TEXT_FILES, export_model
from .detector import FORMATS, OPSET, check_exportable, trace_detector
from .text import export_text_encoder

__all__ = ["export_model", "export_text_encoder", "check_exportable", "trace_detector",
           "FORMATS", "OPSET", "MODEL_FILES", "TEXT_FILES"]
