"""Vectorised soft-NMS against a naive greedy reference written here from the algorithm's definition
(on every available device: ``device`` fixture of conftest.py)."""
import math

import pytest
import torch

from detectron2_ext.layers import batched_soft_nms, soft_nms


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    if inter <= 0:
        return 0.0
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def naive_soft_nms(boxes, scores, classes, method, sigma, thresh, prune):
    """One box at a time over all classes, in float64 Python arithmetic."""
    live = list(range(len(scores)))
    cur = [float(s) for s in scores]
    out = []
    while live:
        top = max(live, key=lambda i: (cur[i], -i))  # first index among equal maxima
        out.append((top, cur[top]))
        nxt = []
        for i in live:
            iou = _iou(boxes[top], boxes[i]) if classes[i] == classes[top] else 0.0
            if method == "gaussian":
                d = math.exp(-iou * iou / sigma)
            elif method == "linear":
                d = 1 - iou if iou > thresh else 1.0
            else:
                d = 1.0 if iou < thresh else 0.0
            cur[i] *= d
            if i != top and cur[i] > prune:
                nxt.append(i)
        live = nxt
    return out


def _random_case(seed, n=60, num_classes=4):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 80
    wh = torch.rand(n, 2, generator=g) * 40 + 2
    # clusters of overlapping boxes: copy some boxes with jitter
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[n // 2:] = boxes[: n - n // 2] + torch.randn(n - n // 2, 4, generator=g)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    scores = torch.rand(n, generator=g)
    classes = torch.randint(0, num_classes, (n,), generator=g)
    return boxes.double(), scores.double(), classes


@pytest.mark.parametrize("method", ["gaussian", "linear", "hard"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_greedy_reference(method, seed, device):
    boxes, scores, classes = _random_case(seed)
    keep, kept = batched_soft_nms(boxes.to(device), scores.to(device), classes.to(device), method,
                                  0.5, 0.3, 0.001)
    assert keep.device.type == kept.device.type == torch.device(device).type
    keep, kept = keep.cpu(), kept.cpu()
    ref = naive_soft_nms(boxes.tolist(), scores.tolist(), classes.tolist(), method, 0.5, 0.3, 0.001)
    assert keep.tolist() == [i for i, _ in ref]
    torch.testing.assert_close(kept, torch.tensor([s for _, s in ref], dtype=kept.dtype),
                               rtol=1e-9, atol=1e-12)


def test_gaussian_uses_sigma_not_two_sigma_squared():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5]])  # IoU 0.5
    keep, kept = soft_nms(boxes, torch.tensor([0.9, 0.8]), "gaussian", 0.5, 0.3, 0.001)
    assert keep.tolist() == [0, 1]
    assert kept[1].item() == pytest.approx(0.8 * math.exp(-0.25 / 0.5), rel=1e-6)


def test_hard_mode_is_plain_nms(device):
    from torchvision.ops import batched_nms

    boxes, scores, classes = (t.to(device) for t in _random_case(3, n=80))
    keep, kept = batched_soft_nms(boxes.float(), scores.float(), classes, "hard", 0.5, 0.5, 0.0)
    ref = batched_nms(boxes.float(), scores.float(), classes, 0.5)  # torchvision's on the device
    assert sorted(keep.tolist()) == sorted(ref.tolist())
    torch.testing.assert_close(kept, scores.float()[keep])  # hard NMS never rescales kept boxes


def test_low_scores_pruned_after_first_step_even_in_other_classes():
    # Box 2 (class 1) starts below the prune threshold: the global first step removes it,
    # although no box of its own class was selected.
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.5, 0.0005])
    keep, _ = batched_soft_nms(boxes, scores, torch.tensor([0, 0, 1]), "gaussian", 0.5, 0.3, 0.001)
    assert keep.tolist() == [0, 1]
    # ...but a single box is always selected once, whatever its score
    keep, kept = soft_nms(boxes[2:], scores[2:], "gaussian", 0.5, 0.3, 0.001)
    assert keep.tolist() == [0] and kept.tolist() == pytest.approx([0.0005])


def test_float32_bit_identical_to_reference_loop_on_offset_boxes():
    """The reference computes IoUs on class-offset boxes in the input dtype; so does ours."""
    from detectron2.structures import Boxes, pairwise_iou

    boxes, scores, classes = _random_case(4, n=50)
    boxes, scores = boxes.float(), scores.float()
    off = boxes + (classes.float() * (boxes.max() + 1))[:, None]
    live, cur, out = torch.arange(50), scores.clone(), []
    b = off.clone()
    while cur.numel():
        t = int(torch.argmax(cur))
        out.append((int(live[t]), cur[t].item()))
        cur = cur * torch.exp(-pairwise_iou(Boxes(b[t:t + 1]), Boxes(b))[0] ** 2 / 0.5)
        k = cur > 0.001
        k[t] = False
        b, cur, live = b[k], cur[k], live[k]
    keep, kept = batched_soft_nms(boxes, scores, classes, "gaussian", 0.5, 0.3, 0.001)
    assert keep.tolist() == [i for i, _ in out]
    assert kept.tolist() == [s for _, s in out]


def test_empty_and_bad_input():
    k, s = soft_nms(torch.zeros(0, 4), torch.zeros(0), "linear", 0.5, 0.3, 0.001)
    assert k.numel() == 0 and s.numel() == 0
    with pytest.raises(ValueError, match="method"):
        soft_nms(torch.zeros(1, 4), torch.ones(1), "cosine", 0.5, 0.3, 0.001)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        soft_nms(torch.zeros(2, 5), torch.ones(2), "linear", 0.5, 0.3, 0.001)
