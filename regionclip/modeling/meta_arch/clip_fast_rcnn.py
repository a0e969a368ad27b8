"""``CLIPFastRCNN``: zero-shot and open-vocabulary detection with a CLIP ResNet (RegionCLIP §1.6).

Two branches:

* localization: regions are ground-truth boxes (``MODEL.CLIP.CROP_REGION_TYPE "GT"``) or come from
  a frozen, eval-mode backbone + RPN built from ``MODEL.CLIP.OFFLINE_RPN_CONFIG`` ("RPN");
* recognition: the CLIP ResNet backbone (C4: res4) and :class:`CLIPRes5ROIHeads`, which pool every
  region with the backbone's ``layer4`` and ``attnpool`` into CLIP's joint space and classify it
  against text embeddings.
"""
import contextlib
import logging
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_roi_heads
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage
from torch import nn

from detectron2_ext.utils import checked_autocast

from ..backbone.clip_resnet import uses_attnpool
from ..text_encoder import build_clip_language_encoder
from .offline_rpn import OfflineRPNMixin, build_offline_modules
from .pixels import normalize_images, pixel_range

__all__ = ["CLIPFastRCNN", "gt_proposals", "given_proposals"]

logger = logging.getLogger(__name__)


def gt_proposals(batched_inputs, device, with_objectness):
    """Ground-truth boxes of each input as proposals (objectness 1 in training, as the original)."""
    proposals = []
    for x in batched_inputs:
        if "instances" not in x:
            raise ValueError("MODEL.CLIP.CROP_REGION_TYPE 'GT' needs ground-truth boxes: the input "
                             f"for image {x.get('file_name', x.get('image_id', '?'))} has no "
                             "'instances'")
        gt = x["instances"]
        p = Instances(gt.image_size)
        p.proposal_boxes = gt.gt_boxes.clone().to(device)
        if with_objectness:
            p.objectness_logits = torch.ones(len(gt), device=device)
        proposals.append(p)
    return proposals


def given_proposals(batched_inputs, boxes, device):
    """Proposals holding the caller's boxes (one (N, 4) tensor or ``Boxes`` per input)."""
    if len(boxes) != len(batched_inputs):
        raise ValueError(f"boxes must hold one set of boxes per input: got {len(boxes)} sets "
                         f"for {len(batched_inputs)} inputs")
    proposals = []
    for x, b in zip(batched_inputs, boxes):
        p = Instances(tuple(x["image"].shape[-2:]))
        p.proposal_boxes = (b if isinstance(b, Boxes) else Boxes(b)).clone().to(device)
        proposals.append(p)
    return proposals


@META_ARCH_REGISTRY.register()
class CLIPFastRCNN(OfflineRPNMixin, nn.Module):
    """Fast R-CNN on CLIP features with regions from ground truth or a frozen offline RPN."""

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        roi_heads: nn.Module,
        pixel_mean,
        pixel_std,
        input_format: str = "RGB",
        crop_region_type: str = "GT",
        offline_backbone: Optional[nn.Module] = None,
        offline_proposal_generator: Optional[nn.Module] = None,
        offline_cfg=None,
        language_encoder: Optional[nn.Module] = None,
        use_clip_c4: bool = True,
        use_clip_attpool: bool = True,
        vis_period: int = 0,
        inference_dtype: str = "float32",
    ):
        """
        Args:
            backbone: recognition backbone (CLIP ResNet; owns ``layer4`` and ``attnpool``).
            roi_heads: :class:`CLIPRes5ROIHeads`.
            pixel_mean, pixel_std: recognition normalisation (see :func:`.pixels.pixel_range`).
            input_format (str): channel order of the input images.
            crop_region_type (str): "GT" or "RPN".
            offline_backbone, offline_proposal_generator, offline_cfg: the frozen localization
                branch (RPN mode), see :func:`build_offline_modules`.
            language_encoder: optional CLIP text tower (``lang_encoder``), for concept embeddings.
            use_clip_c4 (bool): C4 mode, the ROI heads borrow ``backbone.layer4``.
            use_clip_attpool (bool): pool regions with ``backbone.attnpool`` (else spatial mean).
            vis_period (int): log proposal pictures to the event storage every this many iterations.
            inference_dtype (str): "float32" (default) or "bfloat16" / "float16": the backbone and
                the per-region head run under autocast at inference; classification stays fp32.
        """
        super().__init__()
        if crop_region_type not in ("GT", "RPN"):
            raise ValueError(f"MODEL.CLIP.CROP_REGION_TYPE must be 'GT' or 'RPN' for CLIPFastRCNN, "
                             f"got {crop_region_type!r}")
        if crop_region_type == "RPN" and offline_backbone is None:
            raise ValueError("CROP_REGION_TYPE 'RPN' needs the offline backbone and RPN")
        self.backbone = backbone
        self.lang_encoder = language_encoder
        self.roi_heads = roi_heads
        self._init_offline(offline_backbone, offline_proposal_generator, offline_cfg)
        self.input_format = input_format
        self.clip_crop_region_type = crop_region_type
        self.use_clip_c4 = use_clip_c4
        self.use_clip_attpool = use_clip_attpool
        self.vis_period = vis_period
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if inference_dtype not in dtypes:
            raise ValueError(f"MODEL.CLIP.INFERENCE_DTYPE must be one of {sorted(dtypes)}, got "
                             f"{inference_dtype!r}")
        self.inference_dtype = dtypes[inference_dtype]
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.pixel_range = pixel_range(pixel_mean, input_format)
        if not use_clip_c4:  # FPN recognition backbone: no res5 block to borrow (the original's
            # dead path)
            raise NotImplementedError("CLIPFastRCNN needs the C4 CLIP backbone "
                                      "(MODEL.BACKBONE.NAME build_clip_resnet_backbone)")
        roi_heads.use_backbone_blocks(backbone.layer4,
                                      backbone.attnpool if use_clip_attpool else None)

    @classmethod
    def from_config(cls, cfg):
        clip = cfg.MODEL.CLIP
        offline_backbone = offline_rpn = offline_cfg = None
        if clip.CROP_REGION_TYPE == "RPN":
            offline_backbone, offline_rpn, offline_cfg = build_offline_modules(
                cfg, clip.OFFLINE_RPN_POST_NMS_TOPK_TEST)
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "roi_heads": build_roi_heads(cfg, backbone.output_shape()),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "crop_region_type": clip.CROP_REGION_TYPE,
            "offline_backbone": offline_backbone,
            "offline_proposal_generator": offline_rpn,
            "offline_cfg": offline_cfg,
            "language_encoder": build_clip_language_encoder(cfg) if clip.GET_CONCEPT_EMB else None,
            "use_clip_c4": cfg.MODEL.BACKBONE.NAME == "build_clip_resnet_backbone",
            "use_clip_attpool": uses_attnpool(cfg),
            "vis_period": cfg.VIS_PERIOD,
            "inference_dtype": clip.INFERENCE_DTYPE,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    # ------------------------------------------------------------------ pieces
    def preprocess_image(self, batched_inputs: List[Dict]):
        """Normalise (CLIP statistics) and pad the images of ``batched_inputs``."""
        images = [x["image"].to(self.device) for x in batched_inputs]
        return normalize_images(images, self.pixel_mean, self.pixel_std, self.pixel_range,
                                self.backbone.size_divisibility)

    def get_proposals(self, batched_inputs: List[Dict]):
        """Regions for each image: its ground-truth boxes or the offline RPN's proposals."""
        if self.clip_crop_region_type == "GT":
            return gt_proposals(batched_inputs, self.device, with_objectness=self.training)
        images = [x["image"].to(self.device) for x in batched_inputs]
        return self.offline_proposals(images, self.input_format)

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[Dict]):
        """Training: losses; inference: see :meth:`inference`."""
        if not self.training:
            return self.inference(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        with torch.no_grad():
            proposals = self.get_proposals(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        _, losses = self.roi_heads(images, features, proposals, gt_instances)
        if self.vis_period > 0:
            storage = get_event_storage()
            if storage.iter % self.vis_period == 0:
                self.visualize_training(batched_inputs, proposals)
        return losses

    def inference(self, batched_inputs: List[Dict], do_postprocess: bool = True, *,
                  class_embeddings: Optional[torch.Tensor] = None,
                  boxes: Optional[List] = None, score_threshold: Optional[float] = None):
        """Detections for each input, rescaled to its ``height`` x ``width`` when
        ``do_postprocess``. The keyword arguments hold for this call only; the model is not
        changed.

        Args:
            batched_inputs (list[dict]): detectron2's inputs (``image`` (C, H, W) 0-255 in
                ``input_format``; ``height``/``width``; ``instances`` in GT mode).
            do_postprocess (bool): rescale to the original image size.
            class_embeddings (Tensor or None): (C, D) class embeddings to classify against
                (default: the model's test table, else its training classes).
            boxes (list or None): per image, (N, 4) XYXY boxes (Tensor or ``Boxes``) in the
                coordinates of its ``image`` tensor, to classify as they are (no regression,
                no RPN rescoring) instead of the model's regions.
            score_threshold (float or None): keep detections scoring above it (default:
                ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``).
        """
        if self.training:
            raise RuntimeError("inference() needs the model in eval mode")
        if boxes is None:
            proposals = self.get_proposals(batched_inputs)
        else:
            proposals = given_proposals(batched_inputs, boxes, self.device)
        images = self.preprocess_image(batched_inputs)
        with self._compute_precision():
            features = self.backbone(images.tensor)
            results, _ = self.roi_heads(images, features, proposals, None,
                                        class_embeddings=class_embeddings,
                                        score_threshold=score_threshold,
                                        given_boxes=boxes is not None)
        if not do_postprocess:
            return results
        return self._postprocess(results, batched_inputs)

    def _compute_precision(self):
        """Autocast context for the recognition branch at inference (``MODEL.CLIP.INFERENCE_DTYPE``)
        on the model's device; a dtype the device does not support is an error, not float32."""
        if self.inference_dtype == torch.float32:
            return contextlib.nullcontext()
        return checked_autocast(self.device.type, self.inference_dtype,
                                "MODEL.CLIP.INFERENCE_DTYPE")

    @staticmethod
    def _postprocess(instances, batched_inputs):
        out = []
        for inst, x in zip(instances, batched_inputs):
            h, w = x.get("height", inst.image_size[0]), x.get("width", inst.image_size[1])
            out.append({"instances": detector_postprocess(inst, h, w)})
        return out

    def visualize_training(self, batched_inputs, proposals, max_boxes=20):
        """Log the first image with its top proposals (the original called a missing method)."""
        from detectron2.data.detection_utils import convert_image_to_rgb
        from detectron2.utils.visualizer import Visualizer

        storage = get_event_storage()
        img = convert_image_to_rgb(batched_inputs[0]["image"].permute(1, 2, 0), self.input_format)
        boxes = proposals[0].proposal_boxes[:max_boxes].tensor.cpu().numpy()
        vis = Visualizer(img, None).overlay_instances(boxes=boxes).get_image()
        storage.put_image("Proposals (CLIPFastRCNN)", vis.transpose(2, 0, 1))
