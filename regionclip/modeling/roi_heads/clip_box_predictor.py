"""Box predictor whose classifier is a frozen table of text embeddings (RegionCLIP §1.9).

Scores are cosine similarities between the L2-normalised region embedding and the L2-normalised
class text embeddings, with a constant zero "background embedding" (background logit 0), all
divided by a temperature. Box regression (class-agnostic in every RegionCLIP config) reads the
un-normalised embedding. A second, open-set table replaces the training classes whenever the
module is not training.

Checkpoint keys are the original's: ``cls_score.weight`` (C, D), ``cls_bg_score.weight`` (1, D),
``test_cls_score.weight`` (C_test, D), ``bbox_pred.{weight,bias}``.
"""
import logging
import os
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cross_entropy
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, _log_classification_stats
from detectron2.structures import Instances
from torch import nn

from detectron2_ext.modeling import fast_rcnn_inference

from ..backbone.clip_resnet import ATTNPOOL_ROI_HEADS

__all__ = ["CLIPFastRCNNOutputLayers", "load_text_embeddings"]

logger = logging.getLogger(__name__)


def load_text_embeddings(path: str, key: str, num_rows: Optional[int], dim: int,
                         rows_name: str = "MODEL.ROI_HEADS.NUM_CLASSES") -> torch.Tensor:
    """Load a (num_rows, dim) float tensor of class embeddings written by the concept tools.

    The file is read without running code stored in it (see
    :func:`regionclip.checkpoint.read_torch_file`); every value must be finite.

    Args:
        path (str): ``.pth`` file holding one tensor (or ``{"embeddings"|"emb": tensor}``).
        key (str): config key that named the file (for error messages).
        num_rows (int or None): expected number of rows (None: any number > 0).
        dim (int): expected embedding width (``MODEL.CLIP.TEXT_EMB_DIM``).
        rows_name (str): what ``num_rows`` is, for the message.
    """
    from regionclip.checkpoint.io import read_torch_file

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key}: text-embedding file '{path}' does not exist")
    emb = read_torch_file(path)
    if isinstance(emb, dict):
        emb = emb.get("embeddings", emb.get("emb"))
    if not isinstance(emb, torch.Tensor):
        raise ValueError(f"{key}: '{path}' must hold a tensor of class embeddings, got {type(emb)}")
    if emb.ndim == 1:  # the original's tools squeeze a single concept to (D,)
        emb = emb[None]
    if emb.ndim != 2 or emb.shape[1] != dim or emb.shape[0] == 0:
        raise ValueError(f"{key}: '{path}' holds a tensor of shape {tuple(emb.shape)}, but "
                         f"MODEL.CLIP.TEXT_EMB_DIM is {dim} (expected (num_classes, {dim}))")
    if num_rows is not None and emb.shape[0] != num_rows:
        raise ValueError(f"{key}: '{path}' has {emb.shape[0]} class embeddings, but "
                         f"{rows_name} is {num_rows}")
    if not emb.is_floating_point():
        raise ValueError(f"{key}: '{path}' holds {emb.dtype} values, expected floating point")
    bad = ~torch.isfinite(emb).all(dim=1)
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(f"{key}: '{path}' has non-finite values (NaN or inf) in {len(rows)} of "
                         f"its {emb.shape[0]} rows, e.g. rows {rows[:10]}")
    return emb.float()


def _frozen_linear(in_features: int, out_features: int, weight: Optional[torch.Tensor] = None):
    layer = nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        if weight is None:
            layer.weight.zero_()
        else:
            layer.weight.copy_(weight)
    layer.weight.requires_grad_(False)
    return layer


class CLIPFastRCNNOutputLayers(FastRCNNOutputLayers):
    """Fast R-CNN outputs with RegionCLIP's text classifier, losses and inference options."""

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        use_text_emb_classifier: bool = False,
        text_emb: Optional[torch.Tensor] = None,
        test_text_emb: Optional[torch.Tensor] = None,
        temperature: float = 0.01,
        bg_cls_loss_weight: Optional[float] = None,
        focal_scaled_loss: Optional[float] = None,
        no_box_delta: bool = False,
        multiply_rpn_score: bool = False,
        multiply_rpn_score_sigmoid: bool = False,
        vis: bool = False,
        soft_nms: Optional[Dict] = None,
        text_emb_files: Optional[Dict[str, Tuple[str, str]]] = None,
        **kwargs,
    ):
        """
        Args:
            input_shape (ShapeSpec): region feature shape (channels = embedding width ``D`` when
                the text classifier is used).
            use_text_emb_classifier (bool): classify with frozen text embeddings; otherwise the
                usual learned linear classifier of detectron2.
            text_emb (Tensor or None): (NUM_CLASSES, D) training-class embeddings; None leaves
                zeros (e.g. filled later from a checkpoint).
            test_text_emb (Tensor or None): (C_test, D) embeddings used whenever not training.
            temperature (float): logits are cosine / temperature (``MODEL.CLIP.CLSS_TEMP``).
            bg_cls_loss_weight (float or None): background weight in the classification loss.
            focal_scaled_loss (float or None): gamma of the focal-scaled softmax CE.
            no_box_delta (bool): at inference, return proposal boxes without regression.
            multiply_rpn_score (bool): at inference, score <- sqrt(prob * objectness).
            multiply_rpn_score_sigmoid (bool): use sigmoid(objectness logit) there instead of the
                raw logit the original used.
            vis (bool): report class probabilities before the RPN multiplication.
            soft_nms (dict or None): ``{"method", "sigma", "prune"}`` to use soft-NMS.
            text_emb_files (dict or None): ``{"cls_score" | "test_cls_score": (config key,
                file)}`` of the tables filled from embedding files; a checkpoint's own tables
                do not replace them (see :mod:`regionclip.checkpoint.guards`).
            kwargs: arguments of :class:`FastRCNNOutputLayers` (``box2box_transform``,
                ``num_classes``, thresholds, ...).
        """
        super().__init__(input_shape, **kwargs)
        input_size = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        self.use_text_emb_classifier = use_text_emb_classifier
        self.temperature = temperature
        self.bg_cls_loss_weight = bg_cls_loss_weight
        self.focal_scaled_loss = focal_scaled_loss
        self.no_box_delta = no_box_delta
        self.multiply_rpn_score = multiply_rpn_score
        self.multiply_rpn_score_sigmoid = multiply_rpn_score_sigmoid
        self.vis = vis
        self.soft_nms = soft_nms
        self.text_emb_files = dict(text_emb_files or {})
        self.test_cls_score = None
        if use_text_emb_classifier:
            self.cls_score = _frozen_linear(input_size, self.num_classes, text_emb)
            self.cls_bg_score = _frozen_linear(input_size, 1)  # constant zero background embedding
            if test_text_emb is not None:
                self.test_cls_score = _frozen_linear(input_size, test_text_emb.shape[0],
                                                     test_text_emb)
        weight = torch.ones(self.num_classes + 1)
        if bg_cls_loss_weight is not None:
            weight[-1] = bg_cls_loss_weight
        self.register_buffer("cls_loss_weight", weight, persistent=False)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        clip = cfg.MODEL.CLIP
        use_text = clip.USE_TEXT_EMB_CLASSIFIER
        text_emb = test_text_emb = None
        files = {}
        if use_text:
            if cfg.MODEL.ROI_HEADS.NAME in ATTNPOOL_ROI_HEADS:  # region embeddings
                input_shape = ShapeSpec(channels=clip.TEXT_EMB_DIM)
            if clip.TEXT_EMB_PATH:
                text_emb = load_text_embeddings(clip.TEXT_EMB_PATH, "MODEL.CLIP.TEXT_EMB_PATH",
                                                cfg.MODEL.ROI_HEADS.NUM_CLASSES, clip.TEXT_EMB_DIM)
                files["cls_score"] = ("MODEL.CLIP.TEXT_EMB_PATH", clip.TEXT_EMB_PATH)
            if clip.OPENSET_TEST_TEXT_EMB_PATH:
                test_text_emb = load_text_embeddings(
                    clip.OPENSET_TEST_TEXT_EMB_PATH, "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH", None,
                    clip.TEXT_EMB_DIM)
                files["test_cls_score"] = ("MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH",
                                           clip.OPENSET_TEST_TEXT_EMB_PATH)
        roi = cfg.MODEL.ROI_HEADS
        ret.update({
            "input_shape": input_shape,
            "use_text_emb_classifier": use_text,
            "text_emb": text_emb,
            "test_text_emb": test_text_emb,
            "temperature": clip.CLSS_TEMP,
            "bg_cls_loss_weight": clip.BG_CLS_LOSS_WEIGHT,
            "focal_scaled_loss": clip.FOCAL_SCALED_LOSS,
            "no_box_delta": bool(clip.NO_BOX_DELTA or clip.CROP_REGION_TYPE == "GT"),
            "multiply_rpn_score": clip.MULTIPLY_RPN_SCORE,
            "multiply_rpn_score_sigmoid": clip.MULTIPLY_RPN_SCORE_SIGMOID,
            "vis": clip.VIS,
            "soft_nms": ({"method": roi.SOFT_NMS_METHOD, "sigma": roi.SOFT_NMS_SIGMA,
                          "prune": roi.SOFT_NMS_PRUNE} if roi.SOFT_NMS_ENABLED else None),
            "text_emb_files": files,
        })
        return ret

    # ------------------------------------------------------------------ classifier
    def set_test_embeddings(self, emb: Optional[torch.Tensor]):
        """Replace the open-set (inference) class embeddings, e.g. with a new vocabulary.

        Args:
            emb (Tensor or None): (C_test, D) un-normalised embeddings; None removes the open-set
                table (inference then uses the training classes).
        """
        if not self.use_text_emb_classifier:
            raise RuntimeError("set_test_embeddings needs MODEL.CLIP.USE_TEXT_EMB_CLASSIFIER True")
        if emb is None:
            self.test_cls_score = None
            return
        w = self.cls_score.weight
        emb = self._check_embeddings(emb)
        self.test_cls_score = _frozen_linear(w.shape[1], emb.shape[0], emb.to(w)).to(w.device)

    def _check_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        d = self.cls_score.weight.shape[1]
        if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[1] != d \
                or emb.shape[0] == 0:
            raise ValueError(f"class embeddings must be a tensor of shape (C>0, {d}), got "
                             f"{tuple(getattr(emb, 'shape', ())) or type(emb).__name__}")
        return emb

    def class_embeddings(self) -> torch.Tensor:
        """(C, D) embeddings in use: the open-set table when not training and present."""
        if not self.training and self.test_cls_score is not None:
            return self.test_cls_score.weight
        return self.cls_score.weight

    def forward(self, x, class_embeddings: Optional[torch.Tensor] = None):
        """Class logits (R, C + 1) and box deltas of region embeddings ``x``.

        Args:
            x (Tensor): (R, D) region embeddings.
            class_embeddings (Tensor or None): (C, D) un-normalised embeddings to classify
                against in this call instead of :meth:`class_embeddings` (text classifier only).
        """
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        if not self.use_text_emb_classifier:
            if class_embeddings is not None:
                raise ValueError("class_embeddings need MODEL.CLIP.USE_TEXT_EMB_CLASSIFIER True")
            return self.cls_score(x), self.bbox_pred(x)
        if class_embeddings is None:
            table = self.class_embeddings()
        else:
            table = self._check_embeddings(class_embeddings).to(x)
        x_norm = F.normalize(x, p=2.0, dim=1)
        cls = x_norm @ F.normalize(table, p=2.0, dim=1).t()
        bg = self.cls_bg_score(x_norm)
        scores = torch.cat([cls, bg], dim=1) / self.temperature
        return scores, self.bbox_pred(x)

    # ------------------------------------------------------------------ training
    def losses(self, predictions, proposals):
        scores, proposal_deltas = predictions
        gt_classes = (torch.cat([p.gt_classes for p in proposals], dim=0) if len(proposals)
                      else torch.empty(0, dtype=torch.long, device=scores.device))
        _log_classification_stats(scores, gt_classes)
        if len(proposals):
            proposal_boxes = torch.cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            gt_boxes = torch.cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor
                                  for p in proposals], dim=0)
        else:
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=proposal_deltas.device)
        if self.focal_scaled_loss is not None:
            loss_cls = self.focal_scaled_ce(scores, gt_classes)
        elif self.bg_cls_loss_weight is not None:
            loss_cls = cross_entropy(scores, gt_classes, reduction="mean",
                                     weight=self.cls_loss_weight.to(scores.dtype))
        else:
            loss_cls = cross_entropy(scores, gt_classes, reduction="mean")
        losses = {
            "loss_cls": loss_cls,
            "loss_box_reg": self.box_reg_loss(proposal_boxes, gt_boxes, proposal_deltas,
                                              gt_classes),
        }
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    def focal_scaled_ce(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean over samples of ``CE_i * (1 - p_i)^gamma``, background samples times its weight."""
        if targets.numel() == 0:
            return logits.sum() * 0.0  # keeps the graph connected
        ce = F.cross_entropy(logits, targets, reduction="none")
        p_t = F.softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
        # (1 - p_t)^gamma has an infinite derivative at p_t = 1 (reached in float32 with a 0.01
        # temperature), which made the original's gradients NaN; clamping changes the loss by at
        # most ce * tiny^gamma and keeps the gradient finite.
        loss = ce * (1 - p_t).clamp(min=torch.finfo(p_t.dtype).tiny) ** self.focal_scaled_loss
        if self.bg_cls_loss_weight is not None:
            loss = torch.where(targets == self.num_classes, loss * self.bg_cls_loss_weight, loss)
        return loss.mean()

    # ------------------------------------------------------------------ inference
    def predict_boxes(self, predictions, proposals: List[Instances],
                      regress: Optional[bool] = None):
        """Boxes per image: regressed from the proposals, or the proposals themselves when
        ``regress`` is False (default: regress unless ``no_box_delta``)."""
        if not len(proposals):
            return []
        if regress is None:
            regress = not self.no_box_delta
        if regress:
            return super().predict_boxes(predictions, proposals)
        boxes = torch.cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        return boxes.split([len(p) for p in proposals])

    def rescore_with_objectness(self, probs: List[torch.Tensor], proposals: List[Instances]):
        """``sqrt(prob * o)`` with o the raw objectness logit (original) or its sigmoid (flag)."""
        out = []
        for p, inst in zip(probs, proposals):
            if not inst.has("objectness_logits"):
                raise ValueError("MODEL.CLIP.MULTIPLY_RPN_SCORE needs proposals with objectness "
                                 "logits (CROP_REGION_TYPE 'RPN'); these regions have none")
            o = inst.objectness_logits
            if self.multiply_rpn_score_sigmoid:
                o = torch.sigmoid(o)
            out.append((p * o[:, None]) ** 0.5)
        return out

    def inference(self, predictions: Tuple[torch.Tensor, torch.Tensor],
                  proposals: List[Instances], *, score_threshold: Optional[float] = None,
                  given_boxes: bool = False):
        """Detections per image, as ``FastRCNNOutputLayers.inference``.

        Args:
            predictions, proposals: as detectron2's.
            score_threshold (float or None): keep detections scoring above it (default:
                ``test_score_thresh``, from ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``).
            given_boxes (bool): the proposals are boxes given by the caller: they are returned
                as they are (no regression) and scored by class probability only (no RPN
                rescoring).
        """
        boxes = self.predict_boxes(predictions, proposals,
                                   regress=False if given_boxes else None)
        probs = self.predict_probs(predictions, proposals)
        scores = probs
        if self.multiply_rpn_score and not self.training and not given_boxes:
            scores = self.rescore_with_objectness(probs, proposals)
        threshold = self.test_score_thresh if score_threshold is None else score_threshold
        return fast_rcnn_inference(
            boxes, scores, [p.image_size for p in proposals], threshold,
            self.test_nms_thresh, self.test_topk_per_image, soft_nms=self.soft_nms,
            report_scores=probs if self.vis else None)
