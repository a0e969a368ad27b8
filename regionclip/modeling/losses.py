"""RegionCLIP pretraining losses (spec §1.10), as pure functions of embeddings.

Notation: student region embeddings ``v_i``, teacher region embeddings ``u_i`` (same boxes),
student concept pool ``E`` (K, D), teacher concept pool ``E^t`` (K, D_t); ``cos`` is the cosine
similarity (every embedding is L2-normalised inside these functions); ``tau`` the matching
temperature (``MODEL.CLIP.CLSS_TEMP`` = 0.01).

* :func:`teacher_pseudo_labels`: ``q_i = softmax_k(cos(u_i, E^t_k) / 0.01)``; keep
  ``S = {i : max_k q_ik > theta}`` (all regions when none passes), labels ``y_i = argmax_k q_ik``
  (the lowest index among ties).
* :func:`region_concept_distill_loss` (``loss_region_distill``):
  ``(1/|S|) sum_{i in S} sum_k q_ik (log q_ik - log p_ik)``, ``p_i = softmax(cos(v_i, E) / tau)``.
* :func:`region_concept_contrastive_loss` (``loss_concept_contrastive``):
  ``(1/|S|) sum_i -log sum_j M_ij softmax_j(s_ij)``, ``s_ij = cos(v_i, E_{y_j}) / tau``,
  ``M_ij = 1[y_i = y_j]``; negatives are the kept regions of this process only.
* :func:`image_text_contrastive_loss` (``loss_img_txt_level``):
  ``(CE(L, diag) + CE(L^T, diag)) / 2`` with ``L = cos(g_b, t_c) / tau`` over the batch gathered
  from every process (each truncated to the smallest per-process batch).

Under autocast (``SOLVER.AMP.ENABLED``) every cosine is computed in float32: a float16 cosine is
off by up to ~1e-3, i.e. ~0.1 nats after dividing by the temperature 0.01.

The log-probabilities are computed with ``log_softmax`` / ``logsumexp`` where the original took
the log of a softmax; the values are mathematically identical but stay finite when a
probability underflows to 0 in float32 (cosines / 0.01 span 200 nats).
"""
import logging

import torch
import torch.nn.functional as F

from detectron2_ext.utils.comm import all_gather_with_grad

__all__ = [
    "TEACHER_TEMPERATURE",
    "teacher_pseudo_labels",
    "region_concept_distill_loss",
    "region_concept_contrastive_loss",
    "image_text_contrastive_loss",
]

logger = logging.getLogger(__name__)

# The original hard-codes the teacher's softmax temperature (argument ``s_temp``), not CLSS_TEMP.
TEACHER_TEMPERATURE = 0.01


def _cosine_logits(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """cos(a_i, b_j) / temperature in float32, also inside an autocast region."""
    with torch.autocast(a.device.type, enabled=False):
        return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).t() / temperature


def _check_2d(name: str, x: torch.Tensor):
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-d (rows, dim) tensor, got shape {tuple(x.shape)}")


@torch.no_grad()
def teacher_pseudo_labels(teacher_region_emb: torch.Tensor, teacher_concept_emb: torch.Tensor,
                          threshold: float, temperature: float = TEACHER_TEMPERATURE):
    """Pseudo concept labels of regions from the teacher (no gradient).

    Args:
        teacher_region_emb (Tensor): (N, D_t) teacher region embeddings (not normalised).
        teacher_concept_emb (Tensor): (K, D_t) teacher concept pool (not normalised).
        threshold (float): keep a region iff its largest concept probability is ``> threshold``
            (``MODEL.CLIP.CONCEPT_THRES``); if no region passes, all regions are kept (logged).
        temperature (float): softmax temperature of the teacher (0.01 in the original).

    Returns:
        (LongTensor, LongTensor, Tensor): kept region indices S (|S|,), in increasing order;
        their labels ``argmax_k q_ik`` (|S|,) (the first index among tied maxima); their soft
        targets q (|S|, K), rows summing to 1.
    """
    _check_2d("teacher_region_emb", teacher_region_emb)
    _check_2d("teacher_concept_emb", teacher_concept_emb)
    probs = _cosine_logits(teacher_region_emb.float(), teacher_concept_emb.float(),
                           temperature).softmax(dim=1)
    max_prob = probs.max(dim=1).values
    labels = probs.argmax(dim=1)
    keep = torch.nonzero(max_prob > threshold).flatten()
    if keep.numel() == 0:
        logger.warning("No region has a teacher concept probability above %s: all %d regions "
                       "are kept for the region-concept losses", threshold, probs.shape[0])
        keep = torch.arange(probs.shape[0], device=probs.device)
    return keep, labels[keep], probs[keep]


def region_concept_distill_loss(student_region_emb: torch.Tensor, concept_emb: torch.Tensor,
                                q: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(q || p) between the teacher's and the student's concept distributions, batch-averaged.

    ``p_i = softmax_k(cos(v_i, E_k) / temperature)``; the loss is
    ``(1/N) sum_i sum_k q_ik (log q_ik - log p_ik)`` (terms with ``q_ik = 0`` count 0), i.e.
    ``F.kl_div(log p, q, reduction="batchmean")``. ``log p`` comes from ``log_softmax``: the
    original's ``log(softmax)`` has the same value but is ``-inf`` (and the loss inf/NaN)
    whenever a probability underflows in float32.

    Args:
        student_region_emb (Tensor): (N, D) student embeddings of the kept regions.
        concept_emb (Tensor): (K, D) student concept pool (not normalised).
        q (Tensor): (N, K) teacher probabilities (from :func:`teacher_pseudo_labels`).
        temperature (float): ``MODEL.CLIP.CLSS_TEMP``.

    Returns:
        Tensor: scalar loss.
    """
    _check_2d("student_region_emb", student_region_emb)
    if q.shape != (student_region_emb.shape[0], concept_emb.shape[0]):
        raise ValueError(f"q has shape {tuple(q.shape)}, expected (regions, concepts) = "
                         f"({student_region_emb.shape[0]}, {concept_emb.shape[0]})")
    log_p = F.log_softmax(_cosine_logits(student_region_emb, concept_emb, temperature), dim=1)
    return F.kl_div(log_p, q.to(log_p.dtype), reduction="batchmean")


def region_concept_contrastive_loss(student_region_emb: torch.Tensor, concept_emb: torch.Tensor,
                                    labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Multiple-instance contrastive loss between regions and their pseudo concepts.

    With ``s_ij = cos(v_i, E_{y_j}) / temperature`` over the N x N kept regions and
    ``M_ij = 1[y_i = y_j]``, the loss is ``(1/N) sum_i -log sum_j M_ij softmax_j(s_ij)``
    (probabilities of all positive columns summed, not averaged; column i is always positive).
    Computed as ``logsumexp_j(s_ij) - logsumexp_{j: M_ij}(s_ij)``, which equals the original's
    max-subtracted form but stays finite when positives underflow. Negatives are the concepts of
    the other kept regions of the local batch (no cross-process gather, as the original).

    Args:
        student_region_emb (Tensor): (N, D) student embeddings of the kept regions.
        concept_emb (Tensor): (K, D) student concept pool (not normalised).
        labels (LongTensor): (N,) pseudo labels ``y_i`` (indices into ``concept_emb``).
        temperature (float): ``MODEL.CLIP.CLSS_TEMP``.

    Returns:
        Tensor: scalar loss.
    """
    _check_2d("student_region_emb", student_region_emb)
    if labels.shape != (student_region_emb.shape[0],):
        raise ValueError(f"labels has shape {tuple(labels.shape)}, expected "
                         f"({student_region_emb.shape[0]},)")
    logits = _cosine_logits(student_region_emb, concept_emb[labels], temperature)
    positive = labels.view(-1, 1) == labels.view(1, -1)
    log_pos = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)
    return (torch.logsumexp(logits, dim=1) - log_pos).mean()


def image_text_contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor,
                                temperature: float, gather: bool = True) -> torch.Tensor:
    """Symmetric image-caption InfoNCE over the global batch.

    Both sides are normalised and, if ``gather``, all-gathered with gradient from every process
    (each process contributes its first ``min_r B_r`` rows, as the original); with ``L_bc =
    cos(g_b, t_c) / temperature`` (G x G) the loss is
    ``(CE(L, arange(G)) + CE(L^T, arange(G))) / 2``
    with mean reduction. Every process computes the same value; each local embedding receives
    ``world_size`` times the gradient of that loss, which DistributedDataParallel's averaging
    turns into the exact gradient (see :func:`detectron2_ext.utils.comm.all_gather_with_grad`).

    Args:
        image_emb (Tensor): (B, D) image (global-region) embeddings of this process.
        text_emb (Tensor): (B, D) caption embeddings of this process, pairwise with ``image_emb``.
        temperature (float): ``MODEL.CLIP.CLSS_TEMP``.
        gather (bool): gather across processes (``MODEL.CLIP.GATHER_GPUS``); a no-op with one
            process.

    Returns:
        Tensor: scalar loss.
    """
    _check_2d("image_emb", image_emb)
    _check_2d("text_emb", text_emb)
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image_emb {tuple(image_emb.shape)} and text_emb "
                         f"{tuple(text_emb.shape)} must have the same shape (one caption per "
                         "image)")
    image_emb = F.normalize(image_emb.float(), dim=-1)
    text_emb = F.normalize(text_emb.float(), dim=-1)
    if gather:
        image_emb = all_gather_with_grad(image_emb, truncate_to_min=True)
        text_emb = all_gather_with_grad(text_emb, truncate_to_min=True)
    with torch.autocast(image_emb.device.type, enabled=False):  # float32 cosines (module doc)
        logits = image_emb @ text_emb.t() / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2.0
