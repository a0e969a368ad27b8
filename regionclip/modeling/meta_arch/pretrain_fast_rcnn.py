"""``PretrainFastRCNN``: RegionCLIP region-text pretraining (spec §1.7, §1.10).

A CLIP ResNet student learns region representations from image-caption pairs:

* regions come from a frozen offline RPN (``MODEL.CLIP.CROP_REGION_TYPE "RPN"``; the top
  ``PRETRAIN_RPN_REGIONS`` after NMS ``OFFLINE_RPN_NMS_THRESH``, then ``PRETRAIN_SAMPLE_REGIONS``
  random ones per image) or are random grid-aligned boxes ("RANDOM");
* a frozen CLIP teacher labels every region with its best concept of a concept pool
  (``CONCEPT_POOL_EMB``); the student learns them with a KL distillation loss and a
  multiple-instance region-concept contrastive loss (:mod:`regionclip.modeling.losses`);
* the student's embedding of the whole (padded) image is matched with the caption's embedding
  from the frozen text encoder by an image-caption contrastive loss over the global batch.

Inputs (from the pretraining data loader): one dict per image with ``"image"`` (3, H, W) float
RGB in [0, 1] (already resized) and ``"captions"`` (n_caps, 77) token ids; other keys
(``key``, ``dataset``, ``orig_size``) are not used.

Differences from the original: global and random boxes are wrapped in ``Instances`` (the
original crashed); the caption is drawn per image from that image's own caption count; the
teacher is only built with a concept pool and the text encoder only with the image-caption
loss; losses are weighted by ``LOSS_WEIGHT_*``; eval mode returns region embeddings (the
original's ``inference`` returned None).
"""
import logging
import os
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_roi_heads
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn

from ..losses import (
    TEACHER_TEMPERATURE,
    image_text_contrastive_loss,
    region_concept_contrastive_loss,
    region_concept_distill_loss,
    teacher_pseudo_labels,
)
from ..text_encoder import build_clip_language_encoder, freeze
from .offline_rpn import OfflineRPNMixin, build_offline_modules
from .pixels import normalize_images, pixel_range

__all__ = ["PretrainFastRCNN", "load_concept_pool", "random_grid_boxes"]

logger = logging.getLogger(__name__)

_REGION_TYPES = ("RPN", "RANDOM")


def _check_options(crop_region_type, img_txt_level, only_eot, has_concepts, concept_thres):
    if crop_region_type == "GRID":
        raise NotImplementedError(
            "MODEL.CLIP.CROP_REGION_TYPE 'GRID' is not implemented (the original release never "
            "implemented it either); use 'RPN' or 'RANDOM' for PretrainFastRCNN")
    if crop_region_type not in _REGION_TYPES:
        raise ValueError(f"MODEL.CLIP.CROP_REGION_TYPE must be one of {list(_REGION_TYPES)} for "
                         f"PretrainFastRCNN, got {crop_region_type!r}")
    if img_txt_level and not only_eot:
        raise ValueError(
            "MODEL.CLIP.PRETRAIN_ONLY_EOT False (per-token caption embeddings) is not supported: "
            "the original's image-caption loss is shape-inconsistent on that path; set it True")
    if not img_txt_level and not has_concepts:
        raise ValueError("PretrainFastRCNN has no loss: set MODEL.CLIP.PRETRAIN_IMG_TXT_LEVEL True "
                         "and/or MODEL.CLIP.CONCEPT_POOL_EMB")
    if has_concepts and concept_thres is None:
        raise ValueError("MODEL.CLIP.CONCEPT_POOL_EMB is set but MODEL.CLIP.CONCEPT_THRES is None: "
                         "give the teacher's confidence threshold (0.1 in the original)")


def load_concept_pool(path: str, key: str) -> torch.Tensor:
    """Read a concept-pool file: one float tensor (K, D) of (un-normalised) text embeddings.

    Args:
        path (str): ``.pth`` file written with ``torch.save(tensor, path)``.
        key (str): config key that named the file (for error messages).

    Returns:
        Tensor: (K, D) float32 tensor on the CPU, K >= 1.
    """
    from regionclip.checkpoint.io import read_torch_file

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key}: concept-pool file '{path}' does not exist")
    emb = read_torch_file(path)  # no code stored in the file runs
    if not isinstance(emb, torch.Tensor):
        raise ValueError(f"{key}: '{path}' must hold one tensor (concepts, dim), got "
                         f"{type(emb).__name__}")
    if emb.dim() != 2 or not emb.is_floating_point():
        raise ValueError(f"{key}: '{path}' must hold a 2-d float tensor (concepts, dim), got "
                         f"shape {tuple(emb.shape)} of {emb.dtype}")
    if emb.shape[0] == 0:
        raise ValueError(f"{key}: concept pool '{path}' is empty (0 concepts)")
    bad = ~torch.isfinite(emb).all(dim=1)
    if bad.any():
        raise ValueError(f"{key}: concept pool '{path}' has non-finite values (NaN or inf) in "
                         f"{int(bad.sum())} of its {emb.shape[0]} rows, e.g. rows "
                         f"{bad.nonzero().flatten().tolist()[:10]}")
    return emb.float()


def random_grid_boxes(height: int, width: int, num_boxes: int, grid: int = 8,
                      device=None) -> torch.Tensor:
    """Random boxes aligned to a ``grid``-pixel grid (the original's ``create_rand_boxes``).

    The top-left corner is a uniformly drawn grid point; the right (bottom) edge is drawn
    uniformly among the grid lines from the next one to the last full cell, so every box covers
    at least one cell.

    Args:
        height, width (int): extent to draw in (the padded batch size).
        num_boxes (int): number of boxes.
        grid (int): cell size in pixels.
        device: device of the result.

    Returns:
        Tensor: (num_boxes, 4) float boxes (x0, y0, x1, y1).
    """
    cells_x, cells_y = width // grid, height // grid
    if cells_x == 0 or cells_y == 0:
        raise ValueError(f"random_grid_boxes: a {height}x{width} image has no {grid}x{grid} cell")
    x0 = torch.randint(0, cells_x, (num_boxes,))
    y0 = torch.randint(0, cells_y, (num_boxes,))
    x1 = x0 + 1 + (torch.rand(num_boxes) * (cells_x - x0)).long().clamp(max=cells_x - 1 - x0)
    y1 = y0 + 1 + (torch.rand(num_boxes) * (cells_y - y0)).long().clamp(max=cells_y - 1 - y0)
    return (torch.stack([x0, y0, x1, y1], dim=1) * grid).float().to(device)


def _embedding_dim(backbone: nn.Module) -> Optional[int]:
    attnpool = getattr(backbone, "attnpool", None)
    return attnpool.c_proj.out_features if attnpool is not None else None


def _check_pool(emb: Optional[torch.Tensor], dim: Optional[int], what: str, owner: str):
    if emb is None or dim is None:
        return
    if emb.shape[1] != dim:
        raise ValueError(f"{what} has {emb.shape[1]}-d embeddings but the {owner} embeds regions "
                         f"in {dim} dimensions")


@META_ARCH_REGISTRY.register()
class PretrainFastRCNN(OfflineRPNMixin, nn.Module):
    """RegionCLIP pretraining: student CLIP ResNet, frozen teacher, text encoder, concept pool."""

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        roi_heads: nn.Module,
        pixel_mean,
        pixel_std,
        input_format: str = "RGB",
        crop_region_type: str = "RPN",
        offline_backbone: Optional[nn.Module] = None,
        offline_proposal_generator: Optional[nn.Module] = None,
        offline_cfg=None,
        teacher_backbone: Optional[nn.Module] = None,
        teacher_roi_heads: Optional[nn.Module] = None,
        language_encoder: Optional[nn.Module] = None,
        concept_emb: Optional[torch.Tensor] = None,
        teacher_concept_emb: Optional[torch.Tensor] = None,
        concept_thres: Optional[float] = None,
        teacher_temp: float = TEACHER_TEMPERATURE,
        matching_temp: float = 0.01,
        num_regions_per_img: Optional[int] = None,
        img_txt_level: bool = True,
        only_eot: bool = True,
        gather_gpus: bool = False,
        loss_weights: Optional[Dict[str, float]] = None,
    ):
        """
        Args:
            backbone: student CLIP ResNet (C4; owns ``layer4`` and ``attnpool``).
            roi_heads: :class:`PretrainRes5ROIHeads` of the student.
            pixel_mean, pixel_std: CLIP normalisation; a mean summing to < 3 normalises the
                [0, 1] input directly, otherwise the input is first scaled to [0, 255].
            input_format (str): channel order of the input ("RGB").
            crop_region_type (str): "RPN" (offline proposals) or "RANDOM" (random grid boxes).
            offline_backbone, offline_proposal_generator, offline_cfg: frozen offline branch
                (RPN mode), see :func:`build_offline_modules`.
            teacher_backbone, teacher_roi_heads: frozen CLIP teacher (needed with a concept pool).
            language_encoder: frozen CLIP text tower (needed with ``img_txt_level``).
            concept_emb (Tensor): (K, D) student concept pool; None disables both region losses.
            teacher_concept_emb (Tensor): (K, D_t) teacher concept pool (default: ``concept_emb``).
            concept_thres (float): teacher confidence threshold of the pseudo labels.
            teacher_temp (float): temperature of the teacher's softmax over the concept pool
                (``TEACHER_CONCEPT_TEMP``; the original hard-codes 0.01).
            matching_temp (float): temperature of the three losses (``CLSS_TEMP``).
            num_regions_per_img (int or None): regions sampled per image in training (None: all;
                required in RANDOM mode, where it is the number of random boxes).
            img_txt_level (bool): add the image-caption contrastive loss.
            only_eot (bool): end-of-text caption embedding (must be True).
            gather_gpus (bool): gather image/caption embeddings across processes.
            loss_weights (dict): factors of ``loss_region_distill``, ``loss_concept_contrastive``
                and ``loss_img_txt_level`` (1.0 when absent).
        """
        super().__init__()
        has_concepts = concept_emb is not None
        _check_options(crop_region_type, img_txt_level, only_eot, has_concepts, concept_thres)
        if crop_region_type == "RPN" and offline_backbone is None:
            raise ValueError("CROP_REGION_TYPE 'RPN' needs the offline backbone and RPN")
        if crop_region_type == "RANDOM" and not num_regions_per_img:
            raise ValueError("CROP_REGION_TYPE 'RANDOM' needs MODEL.CLIP.PRETRAIN_SAMPLE_REGIONS "
                             "(the number of random boxes per image)")
        for name, module in (("backbone", backbone), ("teacher_backbone", teacher_backbone)):
            if module is not None and (getattr(module, "layer4", None) is None
                                       or getattr(module, "attnpool", None) is None):
                raise ValueError(f"PretrainFastRCNN: the {name} must be a CLIP ResNet with layer4 "
                                 "and attnpool (MODEL.BACKBONE.NAME build_clip_resnet_backbone, "
                                 "MODEL.ROI_HEADS.NAME PretrainRes5ROIHeads)")
        self.backbone = backbone
        self.roi_heads = roi_heads
        self._init_offline(offline_backbone, offline_proposal_generator, offline_cfg)
        self.input_format = input_format
        self.clip_crop_region_type = crop_region_type
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.pixel_range = pixel_range(pixel_mean, input_format)
        roi_heads.use_backbone_blocks(backbone.layer4, backbone.attnpool)
        self.matching_temp = matching_temp
        self.num_regions_per_img = num_regions_per_img
        self.img_txt_level = img_txt_level
        self.only_eot = only_eot
        self.gather_gpus = gather_gpus
        self.loss_weights = dict(loss_weights or {})

        self.lang_encoder = None
        if img_txt_level:
            if language_encoder is None:
                raise ValueError("PRETRAIN_IMG_TXT_LEVEL needs the language encoder")
            text_dim, image_dim = language_encoder.text_embed_dim, _embedding_dim(backbone)
            if image_dim is not None and text_dim != image_dim:
                raise ValueError(f"the language encoder outputs {text_dim}-d embeddings but the "
                                 f"student embeds images in {image_dim} dimensions")
            self.lang_encoder = freeze(language_encoder)

        self.teacher_backbone = self.teacher_roi_heads = None
        self.concept_thres = concept_thres
        if not teacher_temp > 0:
            raise ValueError(f"MODEL.CLIP.TEACHER_CONCEPT_TEMP must be > 0, got {teacher_temp}")
        self.teacher_temp = teacher_temp
        if has_concepts:
            if teacher_backbone is None or teacher_roi_heads is None:
                raise ValueError("a concept pool needs the teacher backbone and ROI heads")
            if teacher_concept_emb is None:
                teacher_concept_emb = concept_emb.clone()
            if teacher_concept_emb.shape[0] != concept_emb.shape[0]:
                raise ValueError(f"the teacher concept pool has {teacher_concept_emb.shape[0]} "
                                 f"concepts, the student pool {concept_emb.shape[0]}: they must "
                                 "list the same concepts")
            _check_pool(concept_emb, _embedding_dim(backbone), "concept_emb", "student")
            _check_pool(teacher_concept_emb, _embedding_dim(teacher_backbone),
                        "teacher_concept_emb", "teacher")
            self.teacher_backbone = freeze(teacher_backbone)
            self.teacher_roi_heads = freeze(teacher_roi_heads)
            self.teacher_roi_heads.use_backbone_blocks(teacher_backbone.layer4,
                                                       teacher_backbone.attnpool)
            self.register_buffer("concept_emb", concept_emb.float(), False)
            self.register_buffer("teacher_concept_emb", teacher_concept_emb.float(), False)
        else:
            self.concept_emb = self.teacher_concept_emb = None

    @classmethod
    def from_config(cls, cfg):
        clip = cfg.MODEL.CLIP
        pool_path = clip.CONCEPT_POOL_EMB  # options are validated once, by __init__
        if cfg.MODEL.ROI_HEADS.NAME != "PretrainRes5ROIHeads":
            raise ValueError("PretrainFastRCNN needs MODEL.ROI_HEADS.NAME PretrainRes5ROIHeads, "
                             f"got {cfg.MODEL.ROI_HEADS.NAME!r}")
        ret = {"offline_backbone": None, "offline_proposal_generator": None, "offline_cfg": None}
        if clip.CROP_REGION_TYPE == "RPN":
            offline = build_offline_modules(cfg, clip.PRETRAIN_RPN_REGIONS)
            ret.update(zip(("offline_backbone", "offline_proposal_generator", "offline_cfg"),
                           offline))
        if pool_path:  # read the pools first: a bad file fails before any tower is built
            concept_emb = load_concept_pool(pool_path, "MODEL.CLIP.CONCEPT_POOL_EMB")
            teacher_path = clip.TEACHER_CONCEPT_POOL_EMB or pool_path
            teacher_key = ("MODEL.CLIP.TEACHER_CONCEPT_POOL_EMB" if clip.TEACHER_CONCEPT_POOL_EMB
                           else "MODEL.CLIP.CONCEPT_POOL_EMB (used by the teacher)")
            teacher_emb = (load_concept_pool(teacher_path, teacher_key)
                           if clip.TEACHER_CONCEPT_POOL_EMB else concept_emb.clone())
        backbone = build_backbone(cfg)
        if pool_path:
            teacher_cfg = cfg.clone()
            teacher_cfg.defrost()
            teacher_cfg.MODEL.RESNETS.DEPTH = clip.TEACHER_RESNETS_DEPTH
            teacher_cfg.MODEL.CLIP.ARCH = clip.TEACHER_ARCH  # '' = by the depth flag
            teacher_cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = clip.TEACHER_POOLER_RESOLUTION
            teacher_backbone = build_backbone(teacher_cfg)
            _check_pool(concept_emb, _embedding_dim(backbone),
                        f"MODEL.CLIP.CONCEPT_POOL_EMB ('{pool_path}')",
                        f"student (MODEL.RESNETS.DEPTH {cfg.MODEL.RESNETS.DEPTH})")
            _check_pool(teacher_emb, _embedding_dim(teacher_backbone),
                        f"{teacher_key} ('{teacher_path}')",
                        f"teacher (MODEL.CLIP.TEACHER_RESNETS_DEPTH {clip.TEACHER_RESNETS_DEPTH})")
            ret.update(concept_emb=concept_emb, teacher_concept_emb=teacher_emb,
                       teacher_backbone=teacher_backbone,
                       teacher_roi_heads=build_roi_heads(teacher_cfg,
                                                         teacher_backbone.output_shape()))
        if clip.PRETRAIN_IMG_TXT_LEVEL:
            ret["language_encoder"] = build_clip_language_encoder(cfg)
        ret.update(
            backbone=backbone,
            roi_heads=build_roi_heads(cfg, backbone.output_shape()),
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            input_format=cfg.INPUT.FORMAT,
            crop_region_type=clip.CROP_REGION_TYPE,
            concept_thres=clip.CONCEPT_THRES,
            teacher_temp=clip.TEACHER_CONCEPT_TEMP,
            matching_temp=clip.CLSS_TEMP,
            num_regions_per_img=clip.PRETRAIN_SAMPLE_REGIONS,
            img_txt_level=clip.PRETRAIN_IMG_TXT_LEVEL,
            only_eot=clip.PRETRAIN_ONLY_EOT,
            gather_gpus=clip.GATHER_GPUS,
            loss_weights={
                "loss_region_distill": clip.LOSS_WEIGHT_REGION_DISTILL,
                "loss_concept_contrastive": clip.LOSS_WEIGHT_CONCEPT_CONTRASTIVE,
                "loss_img_txt_level": clip.LOSS_WEIGHT_IMG_TXT,
            },
        )
        return ret

    @property
    def device(self):
        return self.pixel_mean.device

    def train(self, mode: bool = True):
        """Set the student's mode; teacher, text encoder and offline branch stay in eval mode."""
        super().train(mode)
        for module in (self.teacher_backbone, self.teacher_roi_heads, self.lang_encoder):
            if module is not None:
                module.eval()
        return self

    # ------------------------------------------------------------------ inputs and regions
    def _check_inputs(self, batched_inputs: List[Dict]):
        if not isinstance(batched_inputs, (list, tuple)) or not batched_inputs:
            raise ValueError("PretrainFastRCNN takes a non-empty list of per-image dicts")
        for i, x in enumerate(batched_inputs):
            image = x.get("image") if isinstance(x, dict) else None
            if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"input {i}: 'image' must be a (3, H, W) tensor, got "
                                 f"{getattr(image, 'shape', type(image).__name__)}")
            if not image.is_floating_point():
                raise ValueError(f"input {i}: 'image' must be float RGB in [0, 1] (pretraining "
                                 f"loader format), got {image.dtype}")

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """CLIP-normalise the [0, 1] images (scaled to [0, 255] first for 0-255 means) and pad."""
        images = [x["image"].to(self.device) for x in batched_inputs]
        return normalize_images(images, self.pixel_mean, self.pixel_std, self.pixel_range,
                                self.backbone.size_divisibility, input_range=1.0)

    def get_region_proposals(self, batched_inputs: List[Dict], images: ImageList):
        """Candidate regions of every image (no sampling): offline RPN or random grid boxes.

        Returns:
            list[Instances]: ``proposal_boxes`` per image, in input-image coordinates.
        """
        if self.clip_crop_region_type == "RPN":
            raw = [x["image"].to(self.device).float() * 255.0 for x in batched_inputs]
            return self.offline_proposals(raw, self.input_format)
        height, width = images.tensor.shape[-2:]
        boxes = random_grid_boxes(height, width, self.num_regions_per_img, device=self.device)
        out = []
        for size in images.image_sizes:  # the same boxes for every image, as the original
            inst = Instances(tuple(size))
            inst.proposal_boxes = Boxes(boxes.clone())
            out.append(inst)
        return out

    def sample_regions(self, proposals: List[Instances]) -> List[Instances]:
        """A random subset of ``num_regions_per_img`` regions per image (all when None)."""
        out = []
        for p in proposals:
            order = torch.randperm(len(p), device=self.device)
            out.append(p[order[: self.num_regions_per_img or None]])
        return out

    def global_proposals(self, images: ImageList) -> List[Instances]:
        """One box per image: the padded batch tensor [0, 0, W_pad, H_pad] (as the original)."""
        height, width = images.tensor.shape[-2:]
        box = torch.tensor([[0.0, 0.0, float(width), float(height)]], device=self.device)
        out = []
        for size in images.image_sizes:
            inst = Instances(tuple(size))
            inst.proposal_boxes = Boxes(box.clone())
            out.append(inst)
        return out

    # ------------------------------------------------------------------ losses
    def encode_captions(self, batched_inputs: List[Dict]) -> torch.Tensor:
        """EOT embedding of one caption per image, drawn uniformly among that image's captions."""
        tokens = []
        for i, x in enumerate(batched_inputs):
            caps = x.get("captions")
            if not isinstance(caps, torch.Tensor) or caps.dim() != 2 or caps.shape[0] == 0:
                raise ValueError(f"input {i}: 'captions' must be a (n_caps >= 1, context_length) "
                                 f"token tensor, got {getattr(caps, 'shape', type(caps).__name__)}")
            if tokens and caps.shape[1] != tokens[0].shape[1]:
                raise ValueError(f"input {i}: captions have {caps.shape[1]} tokens, input 0 has "
                                 f"{tokens[0].shape[1]}")
            pick = int(torch.randint(caps.shape[0], (1,)).item())
            tokens.append(caps[pick: pick + 1])
        tokens = torch.cat(tokens).to(self.device)
        with torch.no_grad():
            return self.lang_encoder.encode_text(tokens, only_eot=True)

    def teacher_region_embeddings(self, images: ImageList, proposals: List[Instances]):
        """The frozen teacher's (sum R_i, D) embeddings of ``proposals``, pooled from its feature
        map of the same images as the student's (the original's pseudo-labelling input).
        Subclasses may override it to study other teachers' views of the regions."""
        features = self.teacher_backbone(images.tensor)
        return self.teacher_roi_heads(images, features, proposals)

    def pseudo_labels(self, images: ImageList, proposals: List[Instances]):
        """The teacher's pseudo labels of ``proposals``: kept region indices, their concept
        labels and soft targets (:func:`~regionclip.modeling.losses.teacher_pseudo_labels`).
        Subclasses may override it to study other labels of the same regions."""
        teacher_emb = self.teacher_region_embeddings(images, proposals)
        return teacher_pseudo_labels(teacher_emb, self.teacher_concept_emb, self.concept_thres,
                                     self.teacher_temp)

    def region_concept_losses(self, images, proposals, region_emb):
        """``loss_region_distill`` and ``loss_concept_contrastive`` from teacher pseudo labels."""
        if region_emb.shape[0] == 0:
            logger.warning("No region in this batch: region-concept losses are 0")
            zero = region_emb.sum() * 0.0
            return {"loss_region_distill": zero, "loss_concept_contrastive": zero}
        with torch.no_grad():
            keep, labels, q = self.pseudo_labels(images, proposals)
        kept = region_emb[keep]
        return {
            "loss_region_distill": region_concept_distill_loss(
                kept, self.concept_emb, q, self.matching_temp),
            "loss_concept_contrastive": region_concept_contrastive_loss(
                kept, self.concept_emb, labels, self.matching_temp),
        }

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[Dict]):
        """Training: dict of weighted losses; eval mode: see :meth:`inference`."""
        if not self.training:
            return self.inference(batched_inputs)
        self._check_inputs(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        losses = {}
        if self.img_txt_level:
            global_emb = self.roi_heads(images, features, self.global_proposals(images))
            text_emb = self.encode_captions(batched_inputs)
            losses["loss_img_txt_level"] = image_text_contrastive_loss(
                global_emb, text_emb, self.matching_temp, gather=self.gather_gpus)
        if self.concept_emb is not None:
            with torch.no_grad():
                proposals = self.sample_regions(self.get_region_proposals(batched_inputs, images))
            region_emb = self.roi_heads(images, features, proposals)
            losses.update(self.region_concept_losses(images, proposals, region_emb))
        return {name: loss * self.loss_weights.get(name, 1.0) for name, loss in losses.items()}

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict]):
        """Student region embeddings of every region (the original's ``inference`` returned None).

        RPN mode uses all offline proposals (top ``PRETRAIN_RPN_REGIONS``), RANDOM mode
        ``PRETRAIN_SAMPLE_REGIONS`` random boxes; no sampling.

        Returns:
            list[dict]: per image ``{"region_feats": (R, D) un-normalised embeddings,
            "proposals": Instances}`` with boxes in input-image (resized) coordinates.
        """
        self._check_inputs(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        proposals = self.get_region_proposals(batched_inputs, images)
        features = self.backbone(images.tensor)
        emb = self.roi_heads(images, features, proposals)
        parts = emb.split([len(p) for p in proposals])
        return [{"region_feats": e, "proposals": p} for e, p in zip(parts, proposals)]
