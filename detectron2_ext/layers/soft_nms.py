"""Soft-NMS (Bodla et al., ICCV 2017) for axis-aligned boxes, vectorised over classes.

The reference behaviour is the greedy loop of detectron2 pull request #1183 (the one RegionCLIP
used): repeatedly take the highest current score, record it, decay every remaining score by a
function of its IoU with the taken box, drop scores <= ``prune_threshold``. Decays:

* ``"gaussian"``: ``exp(-iou**2 / sigma)`` (the Soft-NMS paper's form; note: not ``2 * sigma**2``),
* ``"linear"``: ``1 - iou`` where ``iou > linear_threshold``, else 1,
* ``"hard"``: 0 where ``iou >= linear_threshold``, else 1 (plain NMS).

This implementation gives the same kept set, scores and order, but runs all classes at once: the
loop is over the rank within a class (at most the largest class size, usually much fewer steps
thanks to pruning) instead of over every kept box, with no host synchronisation per step.
"""
import torch

__all__ = ["soft_nms", "batched_soft_nms"]

_METHODS = ("gaussian", "linear", "hard")
# how many greedy steps run between checks whether any class still has live boxes (a host sync)
_SYNC_EVERY = 16


def _decay(iou, method, gaussian_sigma, linear_threshold):
    if method == "gaussian":
        return torch.exp(-torch.pow(iou, 2) / gaussian_sigma)
    if method == "linear":
        return torch.where(iou > linear_threshold, 1 - iou, torch.ones_like(iou))
    return (iou < linear_threshold).to(iou.dtype)


def _iou_one_to_many(top, boxes):
    """IoU of ``top`` (C, 4) with ``boxes`` (C, M, 4) -> (C, M), same arithmetic as detectron2."""
    area_top = (top[:, 2] - top[:, 0]) * (top[:, 3] - top[:, 1])
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    wh = torch.min(top[:, None, 2:], boxes[..., 2:]) - torch.max(top[:, None, :2], boxes[..., :2])
    inter = wh.clamp(min=0).prod(dim=2)
    union = area_top[:, None] + area - inter
    return torch.where(inter > 0, inter / union, torch.zeros(1, dtype=inter.dtype,
                                                             device=inter.device))


def soft_nms(boxes, scores, method, gaussian_sigma, linear_threshold, prune_threshold):
    """Soft-NMS over all boxes as one class. See :func:`batched_soft_nms`."""
    idxs = torch.zeros(scores.shape[0], dtype=torch.int64, device=scores.device)
    return batched_soft_nms(boxes, scores, idxs, method, gaussian_sigma, linear_threshold,
                            prune_threshold)


def batched_soft_nms(boxes, scores, idxs, method, gaussian_sigma, linear_threshold,
                     prune_threshold):
    """Per-class soft-NMS.

    Args:
        boxes (Tensor[N, 4]): XYXY boxes.
        scores (Tensor[N]): scores.
        idxs (Tensor[N]): class index of each box; boxes of different classes never interact.
        method (str): "gaussian", "linear" or "hard".
        gaussian_sigma (float): sigma of the gaussian decay ``exp(-iou^2 / sigma)``.
        linear_threshold (float): IoU threshold of the linear and hard decays.
        prune_threshold (float): boxes whose decayed score drops to this value or below are removed.

    Returns:
        (Tensor[K] int64, Tensor[K]): indices into the inputs of the kept boxes, in decreasing order
        of their decayed score (the order in which the greedy algorithm selects them), and those
        decayed scores.
    """
    if method not in _METHODS:
        raise ValueError(f"soft-NMS method must be one of {_METHODS}, got {method!r}")
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"expected boxes (N, 4) and scores (N,), got {tuple(boxes.shape)} and "
                         f"{tuple(scores.shape)}")
    device = scores.device
    if scores.numel() == 0:
        return (torch.empty((0,), dtype=torch.int64, device=device),
                torch.empty((0,), dtype=scores.dtype, device=device))

    # The reference loop handles all classes together: its first step prunes every box whose
    # initial score is <= prune_threshold except the one it selects. Afterwards classes evolve
    # independently, because boxes of different classes have IoU 0 (decay 1).
    alive_in = scores > prune_threshold
    alive_in[torch.argmax(scores)] = True
    cand = alive_in.nonzero().squeeze(1)

    # The reference offsets boxes by class before computing IoUs; do the same so that every IoU
    # (and hence every decayed score) is bit-identical.
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    cand_boxes = (boxes + offsets[:, None])[cand]
    cand_scores = scores[cand]
    classes, group = torch.unique(idxs[cand], return_inverse=True)
    num_classes = classes.numel()
    order = torch.argsort(group, stable=True)  # contiguous per class, input order inside a class
    counts = torch.bincount(group, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(order.numel(), device=device) - starts[group[order]]
    max_count = int(counts.max())

    # padded per-class tables (C, M)
    pad_boxes = cand_boxes.new_zeros((num_classes, max_count, 4))
    cur = cand_scores.new_zeros((num_classes, max_count))
    orig = torch.full((num_classes, max_count), -1, dtype=torch.int64, device=device)
    alive = torch.zeros((num_classes, max_count), dtype=torch.bool, device=device)
    row = group[order]
    pad_boxes[row, slot] = cand_boxes[order]
    cur[row, slot] = cand_scores[order]
    orig[row, slot] = cand[order]
    alive[row, slot] = True

    rows = torch.arange(num_classes, device=device)
    out_idx = torch.full((num_classes, max_count), -1, dtype=torch.int64, device=device)
    out_score = cur.new_zeros((num_classes, max_count))
    neg_inf = torch.tensor(float("-inf"), dtype=cur.dtype, device=device)
    for step in range(max_count):
        if step % _SYNC_EVERY == 0 and step > 0 and not bool(alive.any()):
            break
        has = alive.any(dim=1)
        top = torch.argmax(torch.where(alive, cur, neg_inf),
                           dim=1)  # first maximum, as the reference
        out_idx[:, step] = torch.where(has, orig[rows, top], out_idx[:, step])
        out_score[:, step] = cur[rows, top]
        iou = _iou_one_to_many(pad_boxes[rows, top], pad_boxes)
        cur = torch.where(alive, cur * _decay(iou, method, gaussian_sigma, linear_threshold), cur)
        alive = alive & (cur > prune_threshold)
        alive[rows, top] = False

    taken = out_idx >= 0
    keep, kept_scores = out_idx[taken], out_score[taken]
    # The reference selects the global maximum each step; selected scores never increase, so its
    # output is sorted by decreasing score, ties broken by the lower input index.
    by_index = torch.argsort(keep)
    keep, kept_scores = keep[by_index], kept_scores[by_index]
    by_score = torch.argsort(kept_scores, descending=True, stable=True)
    return keep[by_score], kept_scores[by_score]
