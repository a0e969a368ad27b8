"""Export a RegionCLIP detector to ONNX or TorchScript: the logic of ``tools/export_model.py``.

The command line of detectron2's ``tools/deploy/export_model.py``::

    python tools/export_model.py --config-file CFG --output DIR [--format onnx|torchscript] \\
        [--export-method tracing] [--sample-image IMAGE] \\
        [--vocabulary "cat,dog,names.txt,coco"] [--templates T.txt] [--open-vocabulary] \\
        [--no-text-encoder] MODEL.WEIGHTS CKPT [KEY VALUE ...]

writes ``DIR/model.onnx`` (or ``model.ts``), ``DIR/text_encoder.onnx`` (``.ts``),
``DIR/export_info.json`` and, for ONNX, a runner without PyTorch (:mod:`regionclip.export`).
``--vocabulary`` takes comma-separated class names, ``.txt`` files and named vocabularies (as
``tools/demo.py``), fixed in the graph; without it, the model's embedding table
(``MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH`` / ``TEXT_EMB_PATH``). ``--open-vocabulary`` makes the
class embeddings an input of the graph instead. Configs with ``MODEL.CLIP.CROP_REGION_TYPE GT``
export with the regions as an input. Only ``--export-method tracing`` exists (detectron2's
``TracingAdapter``); docs/DEPLOY.md lists the settings that export.
"""
import argparse
import logging
from typing import Optional, Sequence

from regionclip.tools import run_command

__all__ = ["build_parser", "run", "main"]

logger = logging.getLogger(__name__)

METHODS = ("tracing", "scripting", "caffe2_tracing")


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module doc)."""
    parser = argparse.ArgumentParser(description="Export a RegionCLIP detector for deployment.")
    parser.add_argument("--format", choices=["onnx", "torchscript"], default="onnx",
                        help="output format (default: onnx)")
    parser.add_argument("--export-method", choices=METHODS, default="tracing",
                        help="only tracing (detectron2's TracingAdapter) is supported")
    parser.add_argument("--config-file", required=True, metavar="FILE",
                        help="a CLIPFastRCNN yaml")
    parser.add_argument("--sample-image", default=None,
                        help="image to trace with (default: a generated one of the test size)")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--vocabulary", default=None,
                        help="comma-separated class names, .txt files (one name per line) or "
                        "named vocabularies (coco, coco_65, lvis, ...), encoded with the model's "
                        "text tower and fixed in the graph")
    parser.add_argument("--templates", default=None,
                        help="text file of prompt templates with {} (default: the original's 81)")
    parser.add_argument("--open-vocabulary", action="store_true",
                        help="the detector takes the class embeddings as an input")
    parser.add_argument("--no-text-encoder", action="store_true",
                        help="do not export the text tower")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides KEY VALUE ... (last)")
    return parser


def run(argv: Optional[Sequence[str]] = None) -> dict:
    """Export (``argv`` without the program name; default ``sys.argv``); returns the export's
    ``export_info.json`` contents."""
    from regionclip.api import RegionCLIP
    from regionclip.export import export_model
    from regionclip.tools.demo import (
        _resolve_path,
        list_images,
        read_templates_file,
        resolve_vocabulary,
    )

    args = build_parser().parse_args(argv)
    if args.export_method != "tracing":
        raise ValueError(f"--export-method {args.export_method}: only 'tracing' is supported "
                         "(the model's inference has data-dependent Python control flow that "
                         "scripting cannot compile; caffe2 is gone from PyTorch)")
    if len(args.opts) % 2:
        raise ValueError(f"config overrides need KEY VALUE pairs, got {args.opts}")
    vocabulary = None
    if args.vocabulary is not None:
        vocabulary = resolve_vocabulary([v.strip() for v in args.vocabulary.split(",")])
    templates = read_templates_file(args.templates) if args.templates else None
    image = list_images([args.sample_image])[0] if args.sample_image else None
    rc = RegionCLIP.from_config(_resolve_path(args.config_file), opts=args.opts)
    info = export_model(rc, args.output, args.format, image, vocabulary, templates,
                        args.open_vocabulary, text_encoder=not args.no_text_encoder)
    print(f"exported {', '.join(info['files'].values())} to {args.output}")
    return info


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: :func:`run`, then the exit status (see ``run_command``)."""
    return run_command(run, argv)
