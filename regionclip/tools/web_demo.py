"""A web page to try a detector on one's own pictures (Gradio): the logic of ``tools/web_demo.py``.

    python tools/web_demo.py                       # the checkout's shipped demo detector
    python tools/web_demo.py --config-file CFG --weights W.pth [--opts KEY VALUE ...]
    python tools/web_demo.py --model NAME          # a model-zoo name (RegionCLIP.from_pretrained)
        [--host 127.0.0.1] [--port 7860] [--vocabulary "cat, remote control"]
        [--score-threshold S] [--agnostic-nms IOU] [--max-detections N] [--device cpu]

The page: upload a picture, type a comma-separated vocabulary, move the score threshold, press
Detect; it shows the picture with boxes and labels and the detections as JSON in the format of
transformers' ``zero-shot-object-detection`` pipeline (:func:`regionclip.formats.to_hf_pipeline`).
Wrong input (no picture, an empty vocabulary, a file that is not an image) is a message in the
page. Needs the optional extra ``web`` (``pip install -e .[web]``: gradio).

Listed detections score at least the threshold (with ``MULTIPLY_RPN_SCORE`` configs the model's
own threshold applies to another score, see :meth:`regionclip.RegionCLIP.detect`; the page then
also drops returned scores below it). ``--agnostic-nms IOU`` keeps one label per object
(class-agnostic NMS over the per-class detections); ``--max-detections`` keeps the best N.
"""
import argparse
import json
import logging
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from regionclip.tools import run_command

__all__ = ["ServedModel", "DetectionPage", "parse_vocabulary", "build_app", "load_model",
           "build_parser", "run", "main"]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
ERROR_PREFIX = "Error:"


class PageError(ValueError):
    """Wrong input from the page: shown to the user as a message."""


@dataclass
class ServedModel:
    """A detector and the page's starting values.

    Attributes:
        detector (RegionCLIP): the model.
        name (str): shown in the page's header.
        vocabulary (sequence[str]): the vocabulary box's starting names (may be empty).
        score_threshold (float or None): the slider's start (None: the config's
            ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``).
        agnostic_nms (float or None): IoU of a class-agnostic NMS (None: off).
        max_detections (int): detections listed per picture.
    """

    detector: object
    name: str
    vocabulary: Sequence[str] = ()
    score_threshold: Optional[float] = None
    agnostic_nms: Optional[float] = None
    max_detections: int = 100


def parse_vocabulary(text: Optional[str]) -> List[str]:
    """Class names from comma- (or newline-) separated text: stripped, empty parts and repeats
    dropped.

    Raises:
        PageError: no name at all.
    """
    names = [part.strip() for line in str(text or "").splitlines() for part in line.split(",")]
    names = list(dict.fromkeys(n for n in names if n))
    if not names:
        raise PageError("the vocabulary is empty: type class names separated by commas, e.g. "
                        "'cat, remote control'")
    return names


def _path_of(upload) -> Optional[str]:
    """The file path of a Gradio upload value (a path, or an object with ``path``/``name``)."""
    if upload is None or isinstance(upload, (str, os.PathLike)):
        return upload
    for attr in ("path", "name"):
        if isinstance(getattr(upload, attr, None), str):
            return getattr(upload, attr)
    if isinstance(upload, dict) and isinstance(upload.get("path"), str):
        return upload["path"]
    raise PageError(f"unexpected upload value {type(upload).__name__}")


def read_picture(upload) -> np.ndarray:
    """The RGB array of an uploaded file.

    Raises:
        PageError: nothing uploaded, or the file is not an image.
    """
    from regionclip.inputs import read_rgb_image

    path = _path_of(upload)
    if not path:
        raise PageError("no picture: upload an image file (PNG, JPEG, ...) first")
    name = os.path.basename(path)
    try:
        return read_rgb_image(path)
    except (OSError, ValueError) as e:
        logger.info("upload %s: %s", path, e)  # the page does not show the server's paths
        raise PageError(f"'{name}' is not an image that can be read: upload a PNG, JPEG, BMP "
                        "or WebP picture") from None


def _agnostic_nms(dets: List[dict], iou: float) -> List[dict]:
    """Keep the best detection among those overlapping by more than ``iou`` (any label)."""
    import torch
    from torchvision.ops import nms

    if len(dets) < 2:
        return dets
    boxes = torch.tensor([d["box"] for d in dets], dtype=torch.float32)
    scores = torch.tensor([d["score"] for d in dets], dtype=torch.float32)
    return [dets[int(i)] for i in nms(boxes, scores, iou)]


class DetectionPage:
    """What the page does, without Gradio (testable as is).

    Args:
        served (ServedModel): the detector and starting values.
    """

    def __init__(self, served: ServedModel):
        self.served = served
        cfg = served.detector.cfg
        threshold = served.score_threshold
        if threshold is None:
            threshold = float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)
        self.default_threshold = float(threshold)

    def detections(self, rgb: np.ndarray, vocabulary: Sequence[str],
                   threshold: float) -> List[dict]:
        """The listed detections (``detect`` format): score >= ``threshold``, then NMS and the
        limit of the served model."""
        dets = self.served.detector.detect(rgb, vocabulary, score_threshold=threshold)
        dets = [d for d in dets if d["score"] >= threshold]
        if self.served.agnostic_nms is not None:
            dets = _agnostic_nms(dets, self.served.agnostic_nms)
        return dets[:self.served.max_detections]

    def preview(self, upload) -> Tuple[Optional[np.ndarray], str]:
        """On upload: the picture and a message (or no picture and the error)."""
        if _path_of(upload) is None:
            return None, ""
        try:
            rgb = read_picture(upload)
        except PageError as e:
            return None, f"{ERROR_PREFIX} {e}"
        return rgb, (f"Loaded '{os.path.basename(_path_of(upload))}' ({rgb.shape[1]} x "
                     f"{rgb.shape[0]} px). Press Detect.")

    def predict(self, upload, vocabulary_text: str,
                threshold) -> Tuple[Optional[np.ndarray], str, str]:
        """On Detect: ``(annotated picture or None, JSON text, message)``; never raises."""
        from regionclip.formats import to_hf_pipeline
        from regionclip.tools.demo import draw_detections

        try:
            rgb = read_picture(upload)
            vocabulary = parse_vocabulary(vocabulary_text)
            try:
                threshold = float(threshold)
            except (TypeError, ValueError):
                raise PageError(f"the score threshold must be a number, got {threshold!r}") \
                    from None
            if not 0.0 <= threshold <= 1.0:
                raise PageError(f"the score threshold must be in [0, 1], got {threshold}")
            dets = self.detections(rgb, vocabulary, threshold)
            picture = draw_detections(rgb, dets, vocabulary)
        except PageError as e:
            return None, "", f"{ERROR_PREFIX} {e}"
        except Exception as e:  # the page shows a message; the server log keeps the traceback
            logger.exception("detection failed")
            return None, "", f"{ERROR_PREFIX} the detector failed: {type(e).__name__}: {e}"
        payload = json.dumps(to_hf_pipeline(dets), indent=1)
        return picture, payload, (f"{len(dets)} detections of {len(vocabulary)} names with "
                                  f"score >= {threshold:g}.")


def build_app(page: DetectionPage):
    """The Gradio Blocks app of ``page`` (element ids: ``picture``, ``vocabulary``,
    ``threshold``, ``detect``, ``result``, ``status``, ``detections-json``)."""
    try:
        import gradio as gr
    except ImportError:
        raise ImportError("the web demo needs gradio: pip install -e '.[web]'") from None

    served = page.served
    with gr.Blocks(title="RegionCLIP web demo", analytics_enabled=False) as app:
        gr.Markdown(f"## RegionCLIP: open-vocabulary detection\nModel: {served.name}. Upload a "
                    "picture, type the names to look for, separated by commas, and press "
                    "Detect.")
        with gr.Row():
            with gr.Column():
                picture = gr.File(label="Picture", elem_id="picture", type="filepath")
                vocabulary = gr.Textbox(label="Vocabulary (comma-separated)",
                                        value=", ".join(served.vocabulary),
                                        placeholder="cat, remote control, sofa",
                                        elem_id="vocabulary")
                threshold = gr.Slider(0.0, 1.0, value=page.default_threshold, step=0.01,
                                      label="Score threshold", elem_id="threshold")
                button = gr.Button("Detect", variant="primary", elem_id="detect")
            with gr.Column():
                result = gr.Image(label="Detections", type="numpy", interactive=False,
                                  elem_id="result")
                status = gr.Markdown(elem_id="status")
                detections = gr.Textbox(label="Detections (JSON, transformers' zero-shot-object-"
                                        "detection format)", lines=12, max_lines=30,
                                        interactive=False, elem_id="detections-json")
        picture.change(page.preview, inputs=picture, outputs=[result, status])
        button.click(page.predict, inputs=[picture, vocabulary, threshold],
                     outputs=[result, detections, status])
    return app


def load_model(args: argparse.Namespace,
               default_model: Optional[Callable[..., ServedModel]] = None) -> ServedModel:
    """The detector of the command line: ``--model``, ``--config-file``/``--weights``, else
    ``default_model(opts=..., device=...)``.

    Raises:
        ValueError: conflicting flags, or no model at all.
    """
    from regionclip.api import RegionCLIP

    if len(args.opts) % 2:
        raise ValueError(f"--opts needs KEY VALUE pairs, got {args.opts}")
    kwargs = {"device": args.device} if args.device else {}
    if args.model:
        if args.config_file or args.weights:
            raise ValueError("give either --model or --config-file/--weights, not both")
        if args.opts:
            kwargs["opts"] = list(args.opts)
        return ServedModel(RegionCLIP.from_pretrained(args.model, **kwargs), args.model)
    if args.config_file or args.weights:
        from regionclip.tools.demo import DEFAULT_CONFIG, _model_opts, _resolve_path

        config = _resolve_path(args.config_file or DEFAULT_CONFIG)
        opts = _model_opts(config, args.weights, args.opts)
        detector = RegionCLIP.from_config(config, weights=args.weights, opts=opts, **kwargs)
        return ServedModel(detector, os.path.basename(args.weights or detector.cfg.MODEL.WEIGHTS))
    if default_model is None:
        raise ValueError("no model: give --config-file and --weights, or --model NAME")
    return default_model(opts=list(args.opts), device=args.device)


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module doc)."""
    p = argparse.ArgumentParser(description="RegionCLIP web demo (Gradio).")
    p.add_argument("--config-file", default=None,
                   help="a CLIPFastRCNN yaml (default with --weights: the demo's custom-image "
                   "config)")
    p.add_argument("--weights", default=None, help="checkpoint (MODEL.WEIGHTS)")
    p.add_argument("--model", default=None,
                   help="a model-zoo name for RegionCLIP.from_pretrained")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only; "
                   "0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s)")
    p.add_argument("--vocabulary", default=None,
                   help="the vocabulary box's starting text, comma-separated")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="the slider's start (default: the model's)")
    p.add_argument("--agnostic-nms", type=float, default=None,
                   help="IoU of a class-agnostic NMS: one label per object (default: the "
                   "model's, off for a config)")
    p.add_argument("--max-detections", type=int, default=None,
                   help="detections listed per picture (default: the model's, 100)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the config's)")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="config overrides KEY VALUE ... (last option)")
    return p


def _apply_flags(served: ServedModel, args: argparse.Namespace) -> ServedModel:
    from regionclip.inputs import check_score_threshold

    if args.vocabulary is not None:
        served.vocabulary = parse_vocabulary(args.vocabulary)
    if args.score_threshold is not None:
        served.score_threshold = check_score_threshold(args.score_threshold, "--score-threshold")
    if args.agnostic_nms is not None:
        if not 0.0 < args.agnostic_nms <= 1.0:
            raise ValueError(f"--agnostic-nms must be an IoU in (0, 1], got {args.agnostic_nms}")
        served.agnostic_nms = None if args.agnostic_nms == 1.0 else args.agnostic_nms
    if args.max_detections is not None:
        if args.max_detections < 1:
            raise ValueError(f"--max-detections must be >= 1, got {args.max_detections}")
        served.max_detections = args.max_detections
    return served


def run(argv: Optional[Sequence[str]] = None,
        default_model: Optional[Callable[..., ServedModel]] = None):
    """Load the model and serve the page until interrupted (``argv`` without the program name).

    Args:
        default_model (callable or None): ``default_model(opts=list, device=str or None)`` ->
            :class:`ServedModel`, used without ``--model``/``--config-file``/``--weights``
            (``tools/web_demo.py`` passes the checkout's shipped demo detector).
    """
    args = build_parser().parse_args(argv)
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    page = DetectionPage(_apply_flags(load_model(args, default_model), args))
    app = build_app(page)
    logger.info("serving %s on http://%s:%d", page.served.name, args.host, args.port)
    app.launch(server_name=args.host, server_port=args.port, show_error=False)
    return page


def main(argv: Optional[Sequence[str]] = None,
         default_model: Optional[Callable[..., ServedModel]] = None) -> int:
    """The command line: :func:`run`, then the exit status (see ``run_command``)."""
    return run_command(lambda a: run(a, default_model), argv)
