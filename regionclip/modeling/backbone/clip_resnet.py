"""CLIP's modified ResNet as a detectron2 :class:`Backbone` (C4 and FPN builders).

:class:`CLIPResNetBackbone` *is* a :class:`regionclip.clip.ModifiedResNet` (multiple inheritance,
like Mask2Former's ``D2SwinTransformer``), so its parameters keep OpenAI's names directly under
the model attribute: ``backbone.conv1.weight``, ``backbone.layer4.2.bn3.running_var``,
``backbone.attnpool.c_proj.weight``... Released RegionCLIP checkpoints load without renaming.

Every normalisation layer is detectron2's ``FrozenBatchNorm2d`` (the original ignores
``MODEL.RESNETS.NORM``). ``layer4`` is always built; in C4 mode (``OUT_FEATURES: ["res4"]``) the
backbone never runs it: the ROI heads call ``backbone.layer4`` (as the res5 head) and
``backbone.attnpool`` (as the region pooler).
"""
import logging
from typing import Optional, Sequence

import torch
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from regionclip.clip import FEATURE_NAMES, ModifiedResNet, VisualConfig, preset_for_depth

from ..clip_arch import resolve_clip_arch

__all__ = [
    "CLIPResNetBackbone",
    "ATTNPOOL_ROI_HEADS",
    "uses_attnpool",
    "build_clip_resnet_backbone",
    "build_clip_resnet_fpn_backbone",
]

logger = logging.getLogger(__name__)

# ROI heads that pool regions with backbone.attnpool when MODEL.CLIP.USE_TEXT_EMB_CLASSIFIER is on.
ATTNPOOL_ROI_HEADS = ("CLIPRes5ROIHeads",)
# ROI heads that always pool with backbone.attnpool.
ALWAYS_ATTNPOOL_ROI_HEADS = ("PretrainRes5ROIHeads",)

_STEM_MODULES = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")


class CLIPResNetBackbone(ModifiedResNet, Backbone):
    """CLIP ResNet image tower with detectron2's backbone interface.

    Args:
        config (VisualConfig): tower hyper-parameters (e.g. ``get_preset("RN50").visual``).
        out_features (Sequence[str]): features returned by :meth:`forward`, among
            ``stem, res2, res3, res4, res5``; stages after the deepest one are not run.
        freeze_at (int): 0 trains everything; ``>= 1`` freezes the stem, ``>= k + 1`` freezes
            ``layer{k}`` (detectron2's ``MODEL.BACKBONE.FREEZE_AT`` convention).
        with_attnpool (bool): keep ``attnpool``; if False the attribute is None and the state
            dict has no ``attnpool.*`` keys.
        fold_norms (bool): fold the frozen norms into the convolutions when no gradient is
            recorded (``MODEL.CLIP.INFERENCE_FOLD_BN``; see :mod:`regionclip.clip.folding`).
    """

    def __init__(self, config: VisualConfig, out_features: Sequence[str] = ("res4",),
                 freeze_at: int = 0, with_attnpool: bool = True, fold_norms: bool = True):
        super().__init__(config.layers, config.width, config.image_size, config.embed_dim,
                         config.heads, norm_layer=FrozenBatchNorm2d, fold_norms=fold_norms)
        out_features = list(out_features)
        unknown = [name for name in out_features if name not in FEATURE_NAMES]
        if unknown or not out_features:
            raise ValueError(f"CLIPResNetBackbone: MODEL.RESNETS.OUT_FEATURES={out_features} must "
                             f"be a non-empty subset of {list(FEATURE_NAMES)}")
        self.config = config
        self._out_features = out_features
        self._out_feature_channels = {n: self.feature_channels[n] for n in out_features}
        self._out_feature_strides = {n: self.feature_strides[n] for n in out_features}
        if not with_attnpool:
            self.attnpool = None
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int = 0) -> "CLIPResNetBackbone":
        """Stop gradients of the first stages (``requires_grad = False``).

        Args:
            freeze_at (int): ``>= 1`` freezes the stem (``conv1..3``, ``bn1..3``); ``>= k + 1``
                freezes ``layer{k}`` for k = 1..4. ``attnpool`` is never frozen here.

        Returns:
            CLIPResNetBackbone: self.
        """
        if freeze_at >= 1:
            for name in _STEM_MODULES:
                for param in getattr(self, name).parameters():
                    param.requires_grad = False
        for index, stage in enumerate(self.stages, start=2):
            if freeze_at >= index:
                for param in stage.parameters():
                    param.requires_grad = False
        return self

    def forward(self, x: torch.Tensor):
        """Compute the requested feature maps.

        Args:
            x (Tensor): (N, 3, H, W) normalised images.

        Returns:
            dict[str, Tensor]: exactly the features in ``out_features``.
        """
        if x.dim() != 4:
            raise ValueError(f"CLIPResNetBackbone takes (N, C, H, W) images, got {tuple(x.shape)}")
        return self.forward_features(x, self._out_features)


def uses_attnpool(cfg) -> bool:
    """Whether the recognition backbone needs ``attnpool`` (the original's rule).

    Args:
        cfg: detectron2 config with the RegionCLIP keys.

    Returns:
        bool: True iff ``ROI_HEADS.NAME`` is CLIPRes5ROIHeads and
        ``MODEL.CLIP.USE_TEXT_EMB_CLASSIFIER`` is on, or ``ROI_HEADS.NAME`` is PretrainRes5ROIHeads.
    """
    name = cfg.MODEL.ROI_HEADS.NAME
    return ((name in ATTNPOOL_ROI_HEADS and bool(cfg.MODEL.CLIP.USE_TEXT_EMB_CLASSIFIER))
            or name in ALWAYS_ATTNPOOL_ROI_HEADS)


@BACKBONE_REGISTRY.register()
def build_clip_resnet_backbone(cfg, input_shape: Optional[ShapeSpec] = None,
                               depth: Optional[int] = None,
                               arch: Optional[str] = None) -> CLIPResNetBackbone:
    """Build the CLIP ResNet backbone from a config (registered in ``BACKBONE_REGISTRY``).

    Reads ``MODEL.RESNETS.DEPTH`` (50 RN50, 101 RN101, 200 RN50x4), ``MODEL.RESNETS.OUT_FEATURES``,
    ``MODEL.BACKBONE.FREEZE_AT``, ``MODEL.CLIP.INFERENCE_FOLD_BN`` and, for the attention pool,
    ``MODEL.ROI_HEADS.NAME`` and ``MODEL.CLIP.USE_TEXT_EMB_CLASSIFIER`` (see
    :func:`uses_attnpool`). The attention pool is built for the CLIP input resolution: a 7x7
    grid for RN50 (224 px), 9x9 for RN50x4 (288 px).

    Args:
        cfg: detectron2 config with the RegionCLIP keys.
        input_shape (ShapeSpec): input shape; only 3 channels are supported.
        depth (int): overrides ``MODEL.RESNETS.DEPTH``, e.g. ``MODEL.CLIP.TEACHER_RESNETS_DEPTH``
            for the pretraining teacher.
        arch (str): overrides ``MODEL.CLIP.ARCH`` (a preset name or a JSON file, see
            :mod:`regionclip.modeling.clip_arch`), e.g. ``MODEL.CLIP.TEACHER_ARCH``. When neither
            ``arch`` nor ``MODEL.CLIP.ARCH`` is set, the depth flag decides.

    Returns:
        CLIPResNetBackbone: randomly initialised backbone (load weights with a checkpointer).
    """
    if input_shape is not None and input_shape.channels not in (None, 3):
        raise ValueError(f"build_clip_resnet_backbone: CLIP takes 3-channel images, got "
                         f"input_shape.channels={input_shape.channels}")
    if arch is None:
        arch = cfg.MODEL.CLIP.ARCH if depth is None else ""
    depth = cfg.MODEL.RESNETS.DEPTH if depth is None else depth
    visual = resolve_clip_arch(arch, depth).visual
    with_attnpool = uses_attnpool(cfg)
    logger.info("CLIP ResNet backbone: %s, out_features %s, freeze_at %d, attnpool %s",
                arch or f"DEPTH {depth} -> {preset_for_depth(depth)}",
                list(cfg.MODEL.RESNETS.OUT_FEATURES), cfg.MODEL.BACKBONE.FREEZE_AT, with_attnpool)
    return CLIPResNetBackbone(visual, cfg.MODEL.RESNETS.OUT_FEATURES,
                              cfg.MODEL.BACKBONE.FREEZE_AT, with_attnpool,
                              fold_norms=cfg.MODEL.CLIP.INFERENCE_FOLD_BN)


@BACKBONE_REGISTRY.register()
def build_clip_resnet_fpn_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> FPN:
    """CLIP ResNet bottom-up (``MODEL.RESNETS.OUT_FEATURES``) + detectron2's :class:`FPN`.

    Uses ``MODEL.FPN.IN_FEATURES``, ``OUT_CHANNELS``, ``NORM``, ``FUSE_TYPE`` and a
    ``LastLevelMaxPool`` top block (p6); checkpoint keys of the CLIP part are
    ``backbone.bottom_up.*``.

    Args:
        cfg: detectron2 config with the RegionCLIP keys.
        input_shape (ShapeSpec): input shape (3 channels).

    Returns:
        FPN: the feature pyramid backbone.
    """
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    available = list(cfg.MODEL.RESNETS.OUT_FEATURES)
    if not in_features or any(name not in available for name in in_features):
        raise ValueError(f"build_clip_resnet_fpn_backbone: MODEL.FPN.IN_FEATURES={in_features} "
                         f"must be a non-empty subset of MODEL.RESNETS.OUT_FEATURES={available}")
    bottom_up = build_clip_resnet_backbone(cfg, input_shape)
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
