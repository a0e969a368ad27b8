"""The frozen localization ("offline") branch: a detectron2 backbone + RPN from its own config.

RegionCLIP proposes regions with a separately built, frozen, eval-mode backbone and RPN (a plain
Mask R-CNN trained on base classes), fed with its own normalisation and channel order. Its
weights come from ``MODEL.CLIP.BB_RPN_WEIGHTS`` or from ``offline_*`` keys of ``MODEL.WEIGHTS``.
"""
import logging
import os
from typing import Optional

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_proposal_generator

from .pixels import normalize_images, pixel_range

__all__ = ["build_offline_rpn_config", "build_offline_modules", "OfflineRPNMixin"]

logger = logging.getLogger(__name__)


def build_offline_rpn_config(cfg, post_nms_topk_test: Optional[int] = None):
    """The offline branch's config: ``MODEL.CLIP.OFFLINE_RPN_CONFIG`` plus the original's overrides.

    Overrides: ``OFFLINE_RPN_LSJ_PRETRAINED`` -> FREEZE_AT 0, SyncBN in ResNet and FPN, RPN
    CONV_DIMS [-1, -1]; ``OFFLINE_RPN_NMS_THRESH`` -> RPN.NMS_THRESH; ``post_nms_topk_test`` ->
    RPN.POST_NMS_TOPK_TEST (each only when truthy, as the original).
    """
    from regionclip.yaml_config import find_config_file

    path = find_config_file(cfg.MODEL.CLIP.OFFLINE_RPN_CONFIG)
    if not path:
        raise ValueError("MODEL.CLIP.CROP_REGION_TYPE is 'RPN' but "
                         "MODEL.CLIP.OFFLINE_RPN_CONFIG is "
                         "not set: give the yaml of the region proposal network, e.g. "
                         "configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.CLIP.OFFLINE_RPN_CONFIG: '{path}' does not exist (neither "
                                f"a file nor the name of a config packaged with regionclip)")
    from regionclip.config import add_regionclip_config  # the offline yaml may use our keys
    from regionclip.yaml_config import merge_config_file

    offline_cfg = get_cfg()
    add_regionclip_config(offline_cfg)
    merge_config_file(offline_cfg, path, "MODEL.CLIP.OFFLINE_RPN_CONFIG")
    clip = cfg.MODEL.CLIP
    if clip.OFFLINE_RPN_LSJ_PRETRAINED:
        offline_cfg.MODEL.BACKBONE.FREEZE_AT = 0
        offline_cfg.MODEL.RESNETS.NORM = "SyncBN"
        offline_cfg.MODEL.FPN.NORM = "SyncBN"
        offline_cfg.MODEL.RPN.CONV_DIMS = [-1, -1]
    if clip.OFFLINE_RPN_NMS_THRESH:
        offline_cfg.MODEL.RPN.NMS_THRESH = clip.OFFLINE_RPN_NMS_THRESH
    if post_nms_topk_test:
        offline_cfg.MODEL.RPN.POST_NMS_TOPK_TEST = post_nms_topk_test
    offline_cfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    return offline_cfg


def build_offline_modules(cfg, post_nms_topk_test: Optional[int] = None):
    """Build the frozen offline backbone and RPN (see the module doc).

    Returns:
        (Backbone, nn.Module, CfgNode): backbone, proposal generator (all parameters frozen, eval
        mode) and the offline config they were built from.
    """
    offline_cfg = build_offline_rpn_config(cfg, post_nms_topk_test)
    logger.info("Offline RPN from %s (NMS %.2f, post-NMS top-k %d)",
                cfg.MODEL.CLIP.OFFLINE_RPN_CONFIG,
                offline_cfg.MODEL.RPN.NMS_THRESH, offline_cfg.MODEL.RPN.POST_NMS_TOPK_TEST)
    backbone = build_backbone(offline_cfg)
    rpn = build_proposal_generator(offline_cfg, backbone.output_shape())
    for module in (backbone, rpn):
        for p in module.parameters():
            p.requires_grad_(False)
        module.eval()
    return backbone, rpn, offline_cfg


class OfflineRPNMixin:
    """For meta-architectures with ``offline_backbone`` / ``offline_proposal_generator`` children.

    Keeps both in eval mode whatever ``train()`` is called with, and proposes regions from images
    given in the recognition branch's format. Call :meth:`_init_offline` in ``__init__``.
    """

    def _init_offline(self, offline_backbone, offline_proposal_generator, offline_cfg):
        self.offline_backbone = offline_backbone
        self.offline_proposal_generator = offline_proposal_generator
        if offline_backbone is None:
            return
        self.offline_input_format = offline_cfg.INPUT.FORMAT
        mean, std = offline_cfg.MODEL.PIXEL_MEAN, offline_cfg.MODEL.PIXEL_STD
        self.register_buffer("offline_pixel_mean", torch.tensor(mean).view(-1, 1, 1), False)
        self.register_buffer("offline_pixel_std", torch.tensor(std).view(-1, 1, 1), False)
        self.offline_pixel_range = pixel_range(
            mean, self.offline_input_format, "MODEL.PIXEL_MEAN of MODEL.CLIP.OFFLINE_RPN_CONFIG")

    def train(self, mode: bool = True):
        super().train(mode)
        for module in (self.offline_backbone, self.offline_proposal_generator):
            if module is not None:
                module.eval()
        return self

    @torch.no_grad()
    def offline_proposals(self, images, input_format):
        """Propose regions with the frozen branch.

        Args:
            images (list[Tensor]): (C, H, W) images in [0, 255], channel order ``input_format``.
            input_format (str): "RGB" or "BGR".

        Returns:
            list[Instances]: ``proposal_boxes`` and raw ``objectness_logits``, in the coordinates
            of the given (resized, unpadded) images.
        """
        flip = {input_format, self.offline_input_format} == {"RGB", "BGR"}
        batch = normalize_images(images, self.offline_pixel_mean, self.offline_pixel_std,
                                 self.offline_pixel_range, self.offline_backbone.size_divisibility,
                                 flip_channels=flip)
        features = self.offline_backbone(batch.tensor)
        proposals, _ = self.offline_proposal_generator(batch, features, None)
        return proposals
