"""Python API: zero-shot region recognition and detection with a few lines of code.

    from regionclip import RegionCLIP
    rc = RegionCLIP.from_pretrained("regionclip_pretrained-cc_rn50")  # files in ./pretrained_ckpt
    dets = rc.detect("image.jpg", ["cat", "remote control", "sofa"])

or, from a config (a file or the name of a packaged one) and a checkpoint::

    rc = RegionCLIP.from_config(
        "LVISv1-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_custom_img.yaml",
        weights="pretrained_ckpt/regionclip/regionclip_pretrained-cc_rn50.pth",
        opts=["MODEL.CLIP.OFFLINE_RPN_CONFIG",
              "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"])
"""
import logging
import os
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from PIL import Image

from detectron2_ext.utils import resolve_device

from .batching import check_batch_size, padded_key, plan_batches
from .checkpoint import load_model_weights, load_text_encoder_weights
from .clip.prompts import check_templates, ensemble_text_embeddings
from .config import load_config
from .engine.checks import require_weights
from .inputs import (
    check_boxes,
    check_score_threshold,
    image_size,
    read_rgb_image,
    resize_to_min_side,
    unique_names,
)
from .model_zoo import resolve_model
from .modeling.roi_heads import region_embeddings

__all__ = ["RegionCLIP", "crop_and_resize", "read_rgb_image"]

logger = logging.getLogger(__name__)

ImageLike = Union[str, np.ndarray]
# one image, or a list / tuple of images (then the results are a list, one entry per image)
Images = Union[ImageLike, Sequence[ImageLike]]


def crop_and_resize(rgb: np.ndarray, box, size: int, resize: str = "warp",
                    context: float = 1.0) -> np.ndarray:
    """The ``size`` x ``size`` uint8 crop of XYXY ``box`` (scaled by ``context`` about its centre,
    clipped to the image, at least one pixel), resized with bicubic interpolation: "warp"
    stretches it; "center" resizes its short side to ``size`` and keeps the central square, with
    the rounding of CLIP's preprocessing (torchvision ``Resize`` + ``CenterCrop``)."""
    h, w = rgb.shape[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half_w, half_h = (box[2] - box[0]) * context / 2, (box[3] - box[1]) * context / 2
    x0 = min(int(np.floor(max(cx - half_w, 0))), w - 1)
    y0 = min(int(np.floor(max(cy - half_h, 0))), h - 1)
    x1 = max(int(np.ceil(min(cx + half_w, w))), x0 + 1)
    y1 = max(int(np.ceil(min(cy + half_h, h))), y0 + 1)
    crop = Image.fromarray(rgb[y0:y1, x0:x1])
    if resize == "warp":
        return np.array(crop.resize((size, size), Image.BICUBIC))
    cw, ch = crop.size
    if cw <= ch:
        cw, ch = size, int(size * ch / cw)
    else:
        cw, ch = int(size * cw / ch), size
    crop = crop.resize((cw, ch), Image.BICUBIC)
    left, top = int(round((cw - size) / 2.0)), int(round((ch - size) / 2.0))
    return np.array(crop.crop((left, top, left + size, top + size)))


class RegionCLIP:
    """A RegionCLIP detector built from a config, for inference on the CPU or a GPU.

    Attributes:
        cfg (CfgNode): the frozen config.
        model (CLIPFastRCNN): the model in eval mode; the API never changes it.
        text_encoder_loaded (bool): the weights had a text encoder (vocabularies can be encoded).
    """

    def __init__(self, cfg, model, text_encoder_loaded: bool = True):
        self.cfg = cfg
        self.model = model
        self._text_cache: Dict = {}
        self.text_encoder_loaded = text_encoder_loaded
        self._resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)

    @classmethod
    def from_config(cls, config_file: str, weights: Optional[str] = None, opts: Sequence = (),
                    device: Optional[str] = None, random_weights: bool = False) -> "RegionCLIP":
        """Build the model of ``config_file`` and load its weights.

        Files are read safely: the config with ``yaml.safe_load`` only, checkpoints and
        embedding files without running code stored in them (docs/RELIABILITY.md).

        Args:
            config_file (str): a CLIPFastRCNN yaml (e.g. one of configs/*/CLIP_fast_rcnn_*.yaml),
                or the name of a config packaged with regionclip (e.g.
                ``"LVISv1-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_custom_img.yaml"``).
            weights (str or None): checkpoint for ``MODEL.WEIGHTS`` (RegionCLIP, detectron2 or
                OpenAI CLIP file); None keeps the config's.
            opts (sequence): ``KEY VALUE`` overrides, as on the command line.
            device (str or None): "cpu" or "cuda[:i]"; None takes the config's ``MODEL.DEVICE``
                (after ``opts``), where ``cuda`` falls back to the CPU, with a message, when no
                GPU is present. A device given here must exist.
            random_weights (bool): allow a model without weights (no ``weights`` and an empty
                ``MODEL.WEIGHTS``); otherwise that is an error.
        """
        return cls._build(cls._config(config_file, weights, opts, device, random_weights))

    @staticmethod
    def _config(config_file, weights, opts, device, random_weights):
        """The frozen config of :meth:`from_config`."""
        cfg = load_config(config_file, opts, cpu_fallback=device is None)
        if cfg.MODEL.META_ARCHITECTURE != "CLIPFastRCNN":
            raise ValueError(f"RegionCLIP needs a CLIPFastRCNN config; {config_file} builds "
                             f"{cfg.MODEL.META_ARCHITECTURE}")
        if weights is not None:
            cfg.MODEL.WEIGHTS = weights
        require_weights(cfg, random_weights, "random_weights=True")
        cfg.MODEL.DEVICE = str(device if device is not None else cfg.MODEL.DEVICE)
        resolve_device(cfg.MODEL.DEVICE, "device" if device is not None else "MODEL.DEVICE")
        cfg.MODEL.CLIP.GET_CONCEPT_EMB = True  # the text encoder makes vocabularies on the fly
        cfg.freeze()
        return cfg

    @classmethod
    def _build(cls, cfg, text_encoder: Optional[str] = None) -> "RegionCLIP":
        """The model of the frozen ``cfg`` with its weights (and the text tower of
        ``text_encoder``, when given, loaded after them)."""
        model = build_model(cfg)
        before = {k: v.clone() for k, v in model.lang_encoder.state_dict().items()}
        load_model_weights(cfg, model)
        if text_encoder is not None:
            load_text_encoder_weights(model, text_encoder)
        after = model.lang_encoder.state_dict()
        text_loaded = any(not torch.equal(before[k], after[k]) for k in before)
        if not text_loaded:
            logger.warning("MODEL.WEIGHTS '%s' has no text-encoder weights: encode_text() and "
                           "detect() with a vocabulary are unavailable", cfg.MODEL.WEIGHTS)
        model.eval()
        return cls(cfg, model, text_encoder_loaded=text_loaded)

    @classmethod
    def from_pretrained(cls, name: str, device: Optional[str] = None,
                        folder: Optional[str] = None, opts: Sequence = (),
                        sha256: Optional[Mapping[str, str]] = None) -> "RegionCLIP":
        """A released RegionCLIP model by name (:func:`regionclip.list_models`), from local files.

        Every file the model needs is looked up in ``folder`` first (``<folder>/<sub-folder>/
        <file>`` as in the original's ``pretrained_ckpt/``, or ``<folder>/<file>``) and checked
        before anything is built: a missing file is an error naming it and where to put it; a
        file whose keys and shapes are not those of the named model (another architecture, a
        detector under a pretrained model's name, a truncated download), or whose SHA256 differs
        from a registered one, is an error naming the file (:mod:`regionclip.model_zoo`).

        Args:
            name (str): e.g. ``"regionclip_pretrained-cc_rn50"``.
            device (str or None): as in :meth:`from_config`.
            folder (str or None): the files' folder (default ``./pretrained_ckpt``).
            opts (sequence): further ``KEY VALUE`` overrides, after the model's own.
            sha256 (mapping or None): file name -> SHA256 hex digest to check (see also
                :func:`regionclip.model_zoo.register_hash`).

        Raises:
            KeyError: unknown name. FileNotFoundError: a missing file. ValueError: a wrong file.
        """
        resolved = resolve_model(name, folder, sha256)
        cfg = cls._config(resolved.model.config, None, resolved.opts + list(opts), device, False)
        rc = cls._build(cfg, resolved.text_encoder)
        logger.info("%s: %s", name, resolved.model.about)
        return rc

    @property
    def device(self):
        return self.model.device

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], prompt_ensemble: bool = True,
                    templates: Optional[Sequence[str]] = None) -> torch.Tensor:
        """Un-normalised text embeddings (N, D), cached per vocabulary and templates.

        Args:
            texts (sequence[str]): class names or phrases.
            prompt_ensemble (bool): mean over the prompt templates; False encodes each text as
                given.
            templates (sequence[str] or None): prompt templates, each with ``{}`` where the name
                goes (e.g. ``["a photo of a {}.", "a blurry photo of a {}."]``); None: the
                original's 81.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = [str(t) for t in texts]
        if not texts or any(not t.strip() for t in texts):
            raise ValueError("the vocabulary must be a non-empty list of non-empty names, got "
                             f"{texts!r}")
        if not self.text_encoder_loaded:
            raise RuntimeError(f"MODEL.WEIGHTS '{self.cfg.MODEL.WEIGHTS}' has no text-encoder "
                               "weights (lang_encoder.* or OpenAI text keys)")
        if templates is not None:
            templates = check_templates(templates)
        key = (tuple(texts), prompt_ensemble, templates if prompt_ensemble else None)
        if key not in self._text_cache:
            self._text_cache[key] = ensemble_text_embeddings(
                self.model.lang_encoder.encode_text, texts, prompt_ensemble=prompt_ensemble,
                device=self.device, truncate=self.cfg.MODEL.CLIP.TOKENIZE_TRUNCATE,
                templates=templates)
        return self._text_cache[key]

    # ------------------------------------------------------------------ images
    def _prepare(self, image: ImageLike, boxes=None, what: str = "boxes"):
        """The model's input dict of ``image`` (test-time resize) and ``boxes`` (checked, in
        image pixels) as ``Boxes`` in the resized image's coordinates (None without boxes)."""
        rgb = read_rgb_image(image)
        h, w = rgb.shape[:2]
        if boxes is not None:
            boxes = check_boxes(boxes, (h, w), what)
        transform = resize_to_min_side(self._resize.get_transform(rgb))
        resized = transform.apply_image(rgb)
        if self.cfg.INPUT.FORMAT == "BGR":
            resized = resized[:, :, ::-1]
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        inputs = {"image": tensor, "height": h, "width": w}
        if boxes is not None:
            boxes = Boxes(torch.as_tensor(transform.apply_box(boxes)))
        return inputs, boxes

    # ------------------------------------------------------------------ batches
    def _divisibilities(self) -> List[int]:
        model = self.model
        divisibilities = [model.backbone.size_divisibility]
        if getattr(model, "offline_backbone", None) is not None:
            divisibilities.append(model.offline_backbone.size_divisibility)
        return divisibilities

    def _input_size(self, image: ImageLike) -> Tuple[int, int]:
        """(height, width) of the model's input for ``image`` (a file's header is read, not its
        pixels)."""
        if isinstance(image, (str, os.PathLike)):
            if not os.path.isfile(image):
                raise FileNotFoundError(f"image '{image}' does not exist")
            try:
                h, w = image_size(image)
            except Exception as e:  # PIL raises several types for undecodable files
                raise ValueError(f"could not decode image '{image}': {e}") from None
        else:
            h, w = read_rgb_image(image).shape[:2]
        shape_only = np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (h, w, 3))
        transform = resize_to_min_side(self._resize.get_transform(shape_only))
        return transform.new_h, transform.new_w

    def _run_batches(self, images, boxes, batch_size: int, progress: bool, desc: str,
                     run: Callable[[list], list]) -> list:
        """``run`` (prepared inputs of a batch -> one result each) over ``images`` in batches of
        images of one padded size (:mod:`regionclip.batching`); results in input order."""
        from tqdm import tqdm

        images = list(images)
        if not images:
            raise ValueError("the list of images is empty")
        check_batch_size(batch_size)
        per_image = isinstance(boxes, (list, tuple)) and len(boxes) == len(images)
        if boxes is not None and not per_image:
            got = (f"{len(boxes)} entries" if isinstance(boxes, (list, tuple))
                   else type(boxes).__name__)
            raise ValueError(f"with a list of {len(images)} images, boxes must be a list of as "
                             f"many (N, 4) arrays (one per image), got {got}")
        divisibilities = self._divisibilities()
        keys = [padded_key(self._input_size(image), divisibilities) for image in images]
        results = [None] * len(images)
        with tqdm(total=len(images), disable=not progress, desc=desc, unit="img") as bar:
            for batch in plan_batches(keys, batch_size):
                prepared = [self._prepare(images[i], None if boxes is None else boxes[i],
                                          f"boxes of image {i}") for i in batch]
                # sizes were planned from file headers: group again by the decoded ones
                actual = [padded_key(tuple(p[0]["image"].shape[-2:]), divisibilities)
                          for p in prepared]
                for part in plan_batches(actual, batch_size):
                    for k, result in zip(part, run([prepared[k] for k in part])):
                        results[batch[k]] = result
                bar.update(len(batch))
        return results

    @torch.no_grad()
    def encode_regions(self, image: Images, boxes, batch_size: int = 4,
                       progress: bool = False) -> Union[torch.Tensor, List[torch.Tensor]]:
        """Un-normalised float32 region embeddings (N, D) of XYXY ``boxes`` given in ``image``
        pixels, on the model's device.

        The config's test-time resize (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``) applies.
        Boxes are checked as :func:`regionclip.inputs.check_boxes` (errors for non-finite,
        inverted, zero-area and out-of-image boxes; partly outside ones are clipped).

        With a list of images, ``boxes`` is a list of as many (N_i, 4) arrays and the result a
        list of (N_i, D) tensors, equal to one call per image; images run ``batch_size`` at a
        time (only images of one size share a batch, see :mod:`regionclip.batching`), with a
        tqdm progress bar if ``progress``.
        """
        model = self.model
        heads = model.roi_heads

        def run(prepared):
            images = model.preprocess_image([inputs for inputs, _ in prepared])
            with model._compute_precision():  # MODEL.CLIP.INFERENCE_DTYPE, as in detect()
                features = model.backbone(images.tensor)
                emb, _ = region_embeddings(heads.pooler, [features[f] for f in heads.in_features],
                                           [b.to(self.device) for _, b in prepared],
                                           model.backbone.layer4, model.backbone.attnpool,
                                           heads.inference_chunk_size)
            return emb.float().split([len(b) for _, b in prepared])

        if isinstance(image, (list, tuple)):
            if boxes is None:
                raise ValueError("encode_regions needs boxes: a list of (N, 4) arrays, one per "
                                 "image")
            return self._run_batches(image, boxes, batch_size, progress, "encoding regions", run)
        return run([self._prepare(image, boxes)])[0]

    @torch.no_grad()
    def encode_crops(self, image: ImageLike, boxes, resize: str = "warp", context: float = 1.0,
                     batch_size: int = 32) -> torch.Tensor:
        """Un-normalised embeddings (N, D) of image crops, R-CNN style: each XYXY box (in image
        pixels) is cut out of the image and the whole visual tower (stem to attention pooling)
        runs on it at the tower's input size (224 for RN50, 288 for RN50x4).

        This is how CLIP is applied to regions without RegionCLIP's feature pooling (the paper's
        Fig. 1); compare with :meth:`encode_regions`, which pools the regions from the feature
        map of the whole image.

        Args:
            image: path or HxWx3 uint8 RGB array.
            boxes: (N, 4) XYXY boxes in image pixels, N >= 1 (checked as in
                :meth:`encode_regions`).
            resize (str): "warp" stretches each crop to a square (R-CNN); "center" resizes its
                short side and keeps the central square (CLIP's own preprocessing).
            context (float): boxes are scaled by this factor about their centre before cropping
                (clipped to the image); 1.0 crops the box itself.
            batch_size (int): crops per forward pass.
        """
        if resize not in ("warp", "center"):
            raise ValueError(f"resize must be 'warp' or 'center', got {resize!r}")
        if not context > 0:
            raise ValueError(f"context must be > 0, got {context}")
        backbone = self.model.backbone
        if getattr(backbone, "attnpool", None) is None or not hasattr(backbone, "config"):
            raise ValueError("encode_crops needs a CLIP ResNet backbone with attention pooling "
                             "(MODEL.BACKBONE.NAME build_clip_resnet_backbone, "
                             "MODEL.ROI_HEADS.NAME CLIPRes5ROIHeads and "
                             "MODEL.CLIP.USE_TEXT_EMB_CLASSIFIER True)")
        rgb = read_rgb_image(image)
        crops = [crop_and_resize(rgb, box, backbone.config.image_size, resize, context)
                 for box in check_boxes(boxes, rgb.shape[:2])]
        out = []
        for start in range(0, len(crops), batch_size):
            batch = [{"image": torch.as_tensor(np.ascontiguousarray(
                c[:, :, ::-1] if self.cfg.INPUT.FORMAT == "BGR" else c).transpose(2, 0, 1))}
                for c in crops[start:start + batch_size]]
            x = self.model.preprocess_image(batch).tensor
            with self.model._compute_precision():
                res5 = backbone.forward_features(x, ("res5",))["res5"]
                out.append(backbone.attnpool(res5).float())
        return torch.cat(out)

    @torch.no_grad()
    def detect(self, image: Images, vocabulary: Sequence[str], boxes=None,
               score_threshold: Optional[float] = None, prompt_ensemble: bool = True,
               templates: Optional[Sequence[str]] = None, batch_size: int = 4,
               progress: bool = False) -> Union[List[dict], List[List[dict]]]:
        """Detect ``vocabulary`` in ``image`` (or in each image of a list).

        Args:
            image: path or HxWx3 uint8 RGB array, or a list of them: then ``boxes`` (if given)
                is a list with one (N_i, 4) array per image and the result a list with one list
                of detections per image, equal to one call per image.
            vocabulary (sequence[str]): class names; embeddings are made on the fly. Repeated
                names are kept once (with a warning), as on the demo's command line.
            boxes: optional (N, 4) XYXY regions in image pixels to classify instead of the
                config's regions (offline RPN or ground truth); checked as in
                :meth:`encode_regions`.
            score_threshold (float or None): detections must score above it, a number in
                [0, 1] (default: the config's ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``). With
                ``MULTIPLY_RPN_SCORE`` and ``VIS`` (the custom-image config) the threshold
                applies to sqrt(probability * RPN logit) while the returned score is the class
                probability, as in the original, so returned scores can be below it.
            prompt_ensemble (bool), templates: see :meth:`encode_text`.
            batch_size (int): images per forward pass for a list (only images of one size share
                a batch, so that results do not depend on batching: :mod:`regionclip.batching`).
            progress (bool): a tqdm progress bar over a list of images.

        Returns:
            list[dict]: ``{"box": [x0, y0, x1, y1], "label": str, "score": float}`` in image
            pixels, best first.
        """
        vocabulary = list(vocabulary) if not isinstance(vocabulary, str) else [vocabulary]
        vocabulary = unique_names([str(v) for v in vocabulary])
        score_threshold = check_score_threshold(score_threshold)
        if boxes is None and self.model.clip_crop_region_type == "GT":
            raise ValueError("this config takes regions from ground-truth boxes "
                             "(MODEL.CLIP.CROP_REGION_TYPE GT): pass boxes=...")
        emb = self.encode_text(vocabulary, prompt_ensemble, templates)

        def run(prepared):
            outs = self.model.inference([inputs for inputs, _ in prepared], class_embeddings=emb,
                                        boxes=None if boxes is None else [b for _, b in prepared],
                                        score_threshold=score_threshold)
            return [_detections(out["instances"].to("cpu"), vocabulary) for out in outs]

        if isinstance(image, (list, tuple)):
            return self._run_batches(image, boxes, batch_size, progress, "detecting", run)
        return run([self._prepare(image, boxes)])[0]


def _detections(inst, vocabulary) -> List[dict]:
    return [{"box": b.tolist(), "label": vocabulary[int(c)], "score": float(s)}
            for b, c, s in zip(inst.pred_boxes.tensor, inst.pred_classes, inst.scores)]
