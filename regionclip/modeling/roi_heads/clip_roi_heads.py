"""C4 ROI heads for CLIP ResNets (RegionCLIP §1.8).

The recognition backbone owns CLIP's ``layer4`` (used as res5) and ``attnpool``; the
meta-architecture hands them to these heads once (:meth:`BackboneBlocksMixin.use_backbone_blocks`),
and the heads RoIAlign each region on res4, run ``layer4`` and pool every region
to one embedding in CLIP's joint space (attention pooling) or by spatial mean.

* :class:`CLIPRes5ROIHeads`: detection (box predictor on the region embeddings, optional mask
  head on the res5 region features), with the option to sample only foreground proposals.
* :class:`PretrainRes5ROIHeads`: returns the region embeddings (pretraining student and teacher).
"""
from typing import List, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, nonzero_tuple
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, ROIHeads, select_foreground_proposals
from detectron2.modeling.roi_heads.mask_head import build_mask_head
from detectron2.structures import Boxes
from torch import nn

from .clip_box_predictor import CLIPFastRCNNOutputLayers
from .region_pooling import pool_regions

__all__ = ["BackboneBlocksMixin", "CLIPRes5ROIHeads", "PretrainRes5ROIHeads", "region_embeddings"]


class BackboneBlocksMixin:
    """ROI heads that run the backbone's own res5 block (CLIP ``layer4``) and ``attnpool``.

    The meta-architecture hands them over once, at construction, with
    :meth:`use_backbone_blocks`; they are not registered as submodules of the heads (no
    duplicate checkpoint keys; they move with the backbone).
    """

    def use_backbone_blocks(self, res5: nn.Module, attnpool: Optional[nn.Module]):
        """Run ``res5`` on every pooled region, then ``attnpool`` (None: spatial mean)."""
        self._backbone_blocks = (res5, attnpool)  # a tuple: not a submodule

    def backbone_blocks(self):
        """``(res5, attnpool)`` given by :meth:`use_backbone_blocks`."""
        blocks = self.__dict__.get("_backbone_blocks")
        if blocks is None:
            raise ValueError(
                f"{type(self).__name__} needs the backbone's res5 block (CLIP layer4): use it "
                "through CLIPFastRCNN / PretrainFastRCNN / CLIPGeneralizedRCNN, or call "
                "use_backbone_blocks(backbone.layer4, backbone.attnpool) first")
        return blocks


def region_embeddings(pooler: ROIPooler, features: List[torch.Tensor], boxes: List[Boxes],
                      res5: nn.Module, attnpool: Optional[nn.Module], chunk_size: int = 0):
    """RoIAlign -> res5 -> attention (or mean) pooling, optionally in chunks of regions.

    Args:
        pooler (ROIPooler): pools each box from ``features``.
        features (list[Tensor]): feature maps (one, res4, in C4 mode).
        boxes (list[Boxes]): regions per image.
        res5 (nn.Module): CLIP ``layer4``.
        attnpool (nn.Module or None): CLIP ``attnpool``; None averages res5 spatially.
        chunk_size (int): if > 0, run res5 and pooling on at most this many regions at a time
            (bounds peak memory at inference; same result).

    Returns:
        (Tensor, Tensor or None): (R, D) region embeddings, and the (R, C, h, w) res5 region
        features when ``chunk_size`` is 0 (else None, they are not kept).
    """
    pooled = pool_regions(pooler, features, boxes)  # on all threads at inference (same values)

    def head(x):
        x = res5(x)
        return (attnpool(x) if attnpool is not None else x.mean(dim=[2, 3])), x

    if chunk_size <= 0 or pooled.shape[0] <= chunk_size:
        emb, res5_feats = head(pooled)
        return emb, (res5_feats if chunk_size <= 0 else None)
    embs = [head(part)[0] for part in pooled.split(chunk_size)]
    return torch.cat(embs, dim=0), None


def _build_pooler(cfg, input_shape, resolution=None):
    in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
    if len(in_features) != 1:
        raise ValueError(f"C4 CLIP ROI heads need exactly one MODEL.ROI_HEADS.IN_FEATURES, got "
                         f"{list(in_features)}")
    if in_features[0] not in input_shape:
        raise ValueError(f"MODEL.ROI_HEADS.IN_FEATURES {in_features[0]!r} is not produced by the "
                         f"backbone (it outputs {sorted(input_shape)})")
    return ROIPooler(
        output_size=resolution or cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION,
        scales=(1.0 / input_shape[in_features[0]].stride,),
        sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
        pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
    )


@ROI_HEADS_REGISTRY.register()
class CLIPRes5ROIHeads(BackboneBlocksMixin, ROIHeads):
    """Res5-style ROI heads that borrow CLIP's ``layer4`` and ``attnpool`` from the backbone."""

    @configurable
    def __init__(self, *, in_features: List[str], pooler: ROIPooler, box_predictor: nn.Module,
                 mask_head: Optional[nn.Module] = None, only_sample_fg_proposals: bool = False,
                 inference_chunk_size: int = 0, **kwargs):
        """
        Args:
            in_features (list[str]): the one feature map to pool from (``["res4"]``).
            pooler (ROIPooler): region pooler on that map.
            box_predictor (nn.Module): e.g. :class:`CLIPFastRCNNOutputLayers`.
            mask_head (nn.Module or None): mask head on the res5 region features.
            only_sample_fg_proposals (bool): in training, sample only foreground proposals.
            inference_chunk_size (int): regions per chunk of the per-region head at inference.
            kwargs: arguments of :class:`ROIHeads` (matcher, sampling sizes, num_classes).
        """
        super().__init__(**kwargs)
        self.in_features = in_features
        self.pooler = pooler
        self.box_predictor = box_predictor
        self.mask_on = mask_head is not None
        if self.mask_on:
            self.mask_head = mask_head
        self.only_sample_fg_proposals = only_sample_fg_proposals
        self.inference_chunk_size = inference_chunk_size

    @classmethod
    def from_config(cls, cfg, input_shape):
        if cfg.MODEL.KEYPOINT_ON:
            raise ValueError("CLIPRes5ROIHeads does not support keypoints (MODEL.KEYPOINT_ON)")
        ret = super().from_config(cfg)
        ret["in_features"] = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        ret["pooler"] = _build_pooler(cfg, input_shape)
        out_channels = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS * 8
        ret["box_predictor"] = CLIPFastRCNNOutputLayers(
            cfg, ShapeSpec(channels=out_channels, height=1, width=1))
        if cfg.MODEL.MASK_ON:
            res = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
            ret["mask_head"] = build_mask_head(
                cfg, ShapeSpec(channels=out_channels, width=res, height=res))
        ret["only_sample_fg_proposals"] = cfg.MODEL.CLIP.ONLY_SAMPLE_FG_PROPOSALS
        ret["inference_chunk_size"] = cfg.MODEL.CLIP.INFERENCE_REGION_CHUNK
        return ret

    def _sample_proposals(self, matched_idxs, matched_labels, gt_classes):
        if not self.only_sample_fg_proposals:
            return super()._sample_proposals(matched_idxs, matched_labels, gt_classes)
        has_gt = gt_classes.numel() > 0
        if has_gt:
            gt_classes = gt_classes[matched_idxs]
            gt_classes[matched_labels == 0] = self.num_classes
            gt_classes[matched_labels == -1] = -1
        else:
            gt_classes = torch.zeros_like(matched_idxs) + self.num_classes
        if not has_gt:  # keep one background proposal so that the image still has a sample
            sampled = torch.zeros_like(matched_idxs[:1])
            return sampled, gt_classes[sampled]
        positive = nonzero_tuple((gt_classes != -1) & (gt_classes != self.num_classes))[0]
        num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
        perm = torch.randperm(positive.numel(), device=positive.device)[:num_pos]
        sampled = positive[perm]
        return sampled, gt_classes[sampled]

    def forward(self, images, features, proposals, targets=None, *,
                class_embeddings: Optional[torch.Tensor] = None,
                score_threshold: Optional[float] = None, given_boxes: bool = False):
        """See :meth:`ROIHeads.forward`. The keyword arguments apply to inference only and are
        passed to the box predictor (:meth:`CLIPFastRCNNOutputLayers.inference`): the class
        embeddings to classify against, the score threshold, and whether the proposals are
        boxes given by the caller (classified as they are)."""
        del images
        res5, attnpool = self.backbone_blocks()
        if self.training:
            if not targets:
                raise ValueError("CLIPRes5ROIHeads needs ground-truth instances in training")
            proposals = self.label_and_sample_proposals(proposals, targets)
        del targets
        feats = [features[f] for f in self.in_features]
        chunk = 0 if self.training else self.inference_chunk_size
        emb, box_features = region_embeddings(self.pooler, feats,
                                              [p.proposal_boxes for p in proposals],
                                              res5, attnpool, chunk)
        with torch.autocast(emb.device.type, enabled=False):  # classify in full precision
            predictions = self.box_predictor(emb.float(), class_embeddings=class_embeddings)
        if self.training:
            losses = self.box_predictor.losses(predictions, proposals)
            if self.mask_on:
                proposals, fg_masks = select_foreground_proposals(proposals, self.num_classes)
                losses.update(self.mask_head(box_features[torch.cat(fg_masks, dim=0)], proposals))
            return [], losses
        pred_instances, _ = self.box_predictor.inference(
            predictions, proposals, score_threshold=score_threshold, given_boxes=given_boxes)
        return self.forward_with_given_boxes(features, pred_instances), {}

    def forward_with_given_boxes(self, features, instances):
        """Mask predictions for given boxes (no-op without a mask head)."""
        if self.training:
            raise RuntimeError("forward_with_given_boxes is for inference")
        if not self.mask_on:
            return instances
        res5, _ = self.backbone_blocks()
        x = self.pooler([features[f] for f in self.in_features], [i.pred_boxes for i in instances])
        return self.mask_head(res5(x), instances)


@ROI_HEADS_REGISTRY.register()
class PretrainRes5ROIHeads(BackboneBlocksMixin, ROIHeads):
    """Region embeddings for pretraining: pooler only, no predictor, no sampling."""

    @configurable
    def __init__(self, *, in_features: List[str], pooler: ROIPooler, **kwargs):
        """
        Args:
            in_features (list[str]): the one feature map to pool from.
            pooler (ROIPooler): region pooler.
            kwargs: arguments of :class:`ROIHeads`.
        """
        super().__init__(**kwargs)
        self.in_features = in_features
        self.pooler = pooler

    @classmethod
    def from_config(cls, cfg, input_shape, pooler_resolution=None):
        ret = super().from_config(cfg)
        ret["in_features"] = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        ret["pooler"] = _build_pooler(cfg, input_shape, pooler_resolution)
        return ret

    def forward(self, images, features, proposals, targets=None):
        """Returns (sum R_i, D) embeddings of ``proposals[i].proposal_boxes``, concatenated."""
        del images, targets
        res5, attnpool = self.backbone_blocks()
        emb, _ = region_embeddings(self.pooler, [features[f] for f in self.in_features],
                                   [p.proposal_boxes for p in proposals], res5, attnpool)
        return emb
