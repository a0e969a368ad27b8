"""Pretraining losses against independent float64 computations (explicit loops / numpy)."""
import logging
import math
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.utils import comm
from multiproc import launch_two

from regionclip.modeling.losses import (
    image_text_contrastive_loss,
    region_concept_contrastive_loss,
    region_concept_distill_loss,
    teacher_pseudo_labels,
)

# ----------------------------------------------------------------- references (float64)


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _softmax_row(row):
    row = np.asarray(row, dtype=np.float64)
    e = np.exp(row - row.max())
    return e / e.sum()


def ref_pseudo_labels(u, e, threshold, temp):
    u, e = _unit(u), _unit(e)
    probs = [_softmax_row([u[i] @ e[k] / temp for k in range(len(e))]) for i in range(len(u))]
    keep = [i for i, p in enumerate(probs) if p.max() > threshold]
    if not keep:
        keep = list(range(len(u)))
    labels = [int(np.argmax(probs[i])) for i in keep]
    return keep, labels, np.stack([probs[i] for i in keep])


def ref_distill(v, e, q, temp):
    v, e = _unit(v), _unit(e)
    total = 0.0
    for i in range(len(v)):
        logits = np.array([v[i] @ e[k] / temp for k in range(len(e))])
        log_p = logits - logits.max() - math.log(np.exp(logits - logits.max()).sum())
        for k in range(len(e)):
            if q[i, k] > 0:
                total += q[i, k] * (math.log(q[i, k]) - log_p[k])
    return total / len(v)


def ref_contrastive(v, e, labels, temp):
    v, e = _unit(v), _unit(e)
    n = len(v)
    total = 0.0
    for i in range(n):
        s = np.array([v[i] @ e[labels[j]] / temp for j in range(n)])
        p = _softmax_row(s)
        total += -math.log(sum(p[j] for j in range(n) if labels[i] == labels[j]))
    return total / n


def ref_img_txt(g, t, temp):
    g, t = _unit(g), _unit(t)
    n = len(g)
    logits = np.array([[g[b] @ t[c] / temp for c in range(n)] for b in range(n)])
    row = sum(-math.log(_softmax_row(logits[b])[b]) for b in range(n)) / n
    col = sum(-math.log(_softmax_row(logits[:, c])[c]) for c in range(n)) / n
    return (row + col) / 2


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------- pseudo labels


def test_pseudo_labels_match_reference_with_partial_keep():
    u, e = _randn(12, 8, seed=1), _randn(20, 8, seed=2)
    temp = 0.2  # softer than 0.01 so that the maxima spread around the threshold
    max_probs = [p.max() for p in ref_pseudo_labels(u, e, -1.0, temp)[2]]
    threshold = float(np.median(max_probs))
    keep, labels, q = teacher_pseudo_labels(u, e, threshold, temperature=temp)
    r_keep, r_labels, r_q = ref_pseudo_labels(u.numpy(), e.numpy(), threshold, temp)
    assert 0 < len(r_keep) < 12
    assert keep.tolist() == r_keep
    assert labels.tolist() == r_labels
    np.testing.assert_allclose(q.numpy(), r_q, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(len(keep)))


def test_pseudo_labels_ties_take_first_index():
    e = _randn(6, 4, seed=3)
    e[4] = e[1]  # concepts 1 and 4 identical
    u = torch.stack([e[1] * 2.0, e[3]])  # region 0 ties between concepts 1 and 4
    keep, labels, q = teacher_pseudo_labels(u, e, 0.1)
    r_keep, r_labels, _ = ref_pseudo_labels(u.numpy(), e.numpy(), 0.1, 0.01)
    assert r_labels[0] == 1  # numpy argmax: first maximal index
    assert keep.tolist() == r_keep == [0, 1]
    assert labels.tolist() == r_labels
    assert q[0, 1] == q[0, 4]
    torch.testing.assert_close(q[0, 1], torch.tensor(0.5), atol=1e-4, rtol=0)


def test_pseudo_labels_fallback_keeps_all_and_logs(caplog):
    u, e = _randn(5, 8, seed=4), _randn(10, 8, seed=5)
    with caplog.at_level(logging.WARNING, logger="regionclip.modeling.losses"):
        keep, labels, q = teacher_pseudo_labels(u, e, 0.99, temperature=10.0)  # near uniform
    r_keep, r_labels, r_q = ref_pseudo_labels(u.numpy(), e.numpy(), 0.99, 10.0)
    assert keep.tolist() == r_keep == list(range(5))
    assert labels.tolist() == r_labels
    np.testing.assert_allclose(q.numpy(), r_q, rtol=1e-5)
    assert "all 5 regions are kept" in caplog.text


# ----------------------------------------------------------------- distillation


@pytest.mark.parametrize("n", [1, 7])
def test_distill_matches_reference(n):
    v, e = _randn(n, 8, seed=6), _randn(15, 8, seed=7)
    q = torch.softmax(_randn(n, 15, seed=8) * 3, dim=1)
    q[:, 0] = 0.0  # zero-probability targets contribute 0
    q = q / q.sum(dim=1, keepdim=True)
    loss = region_concept_distill_loss(v, e, q, 0.01)
    ref = ref_distill(v.numpy(), e.numpy(), q.numpy().astype(np.float64), 0.01)
    assert loss.item() == pytest.approx(ref, rel=1e-4)


def test_distill_is_finite_where_log_softmax_of_probs_underflows():
    e = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[1.0, 0.0]])  # logits 100, -100, 0 at temperature 0.01
    q = torch.tensor([[0.5, 0.25, 0.25]])
    logits = torch.nn.functional.normalize(v) @ torch.nn.functional.normalize(e).t() / 0.01
    assert torch.isinf(torch.softmax(logits, dim=1).log()).any()  # the original's form fails
    loss = region_concept_distill_loss(v, e, q, 0.01)
    assert torch.isfinite(loss)
    ref = ref_distill(v.numpy(), e.numpy(), q.numpy(), 0.01)
    assert loss.item() == pytest.approx(ref, rel=1e-5)


def test_distill_gradient_is_finite_for_extreme_logits():
    e = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    v = torch.tensor([[1.0, 1e-3]], requires_grad=True)
    region_concept_distill_loss(v, e, torch.tensor([[0.3, 0.7]]), 0.01).backward()
    assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


# ----------------------------------------------------------------- region-concept contrastive


@pytest.mark.parametrize("labels", [[0, 3, 3, 1, 0, 2, 3], [4], [2, 2, 2, 2]])
def test_contrastive_matches_reference(labels):
    v, e = _randn(len(labels), 8, seed=9), _randn(5, 8, seed=10)
    loss = region_concept_contrastive_loss(v, e, torch.tensor(labels), 0.01)
    ref = ref_contrastive(v.numpy(), e.numpy(), labels, 0.01)
    assert loss.item() == pytest.approx(ref, rel=1e-4, abs=1e-6)


def test_contrastive_all_equal_labels_is_zero_and_distinct_labels_is_cross_entropy():
    v, e = _randn(4, 8, seed=11), _randn(6, 8, seed=12)
    same = region_concept_contrastive_loss(v, e, torch.tensor([5, 5, 5, 5]), 0.01)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    labels = torch.tensor([0, 1, 2, 3])
    logits = torch.nn.functional.normalize(v) @ torch.nn.functional.normalize(e[labels]).t() / 0.01
    ce = torch.nn.functional.cross_entropy(logits, torch.arange(4))
    torch.testing.assert_close(region_concept_contrastive_loss(v, e, labels, 0.01), ce)


def test_contrastive_finite_when_positive_probability_underflows():
    e = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    v = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])  # each region points at the other's concept
    loss = region_concept_contrastive_loss(v, e, torch.tensor([0, 1]), 0.01)
    assert torch.isfinite(loss)
    ref = ref_contrastive(v.numpy(), e.numpy(), [0, 1], 0.01)
    assert loss.item() == pytest.approx(ref, rel=1e-5)


# ----------------------------------------------------------------- image-text


@pytest.mark.parametrize("b", [1, 5])
def test_img_txt_matches_reference(b):
    g, t = _randn(b, 8, seed=13), _randn(b, 8, seed=14)
    loss = image_text_contrastive_loss(g, t, 0.01)
    assert loss.item() == pytest.approx(ref_img_txt(g.numpy(), t.numpy(), 0.01), rel=1e-4, abs=1e-6)


def test_img_txt_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="same shape"):
        image_text_contrastive_loss(torch.randn(3, 4), torch.randn(2, 4), 0.01)


def _local(rank, sizes):
    return _randn(sizes[rank], 8, seed=20 + rank), _randn(sizes[rank], 8, seed=30 + rank)


SIZE_CASES = ((3, 3), (3, 2))  # equal per-rank batches, and unequal ones (truncated to 2)


def _img_txt_worker(out_dir):
    rank = comm.get_rank()
    results = []
    for sizes in SIZE_CASES:
        g, t = (x.requires_grad_(True) for x in _local(rank, sizes))
        loss = image_text_contrastive_loss(g, t, 0.05, gather=True)
        loss.backward()
        results.append((loss.item(), g.grad, t.grad))
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(results, f)


@pytest.mark.dist
def test_img_txt_two_processes_equal_one_process_on_joined_batch(tmp_path):
    launch_two(_img_txt_worker, str(tmp_path), args=(str(tmp_path),))
    per_rank = [pickle.load(open(tmp_path / f"rank{r}.pkl", "rb")) for r in range(2)]
    for case, sizes in enumerate(SIZE_CASES):
        res = [per_rank[r][case] for r in range(2)]
        n = min(sizes)  # every rank is truncated to the smallest per-rank batch, as the original
        parts = [_local(r, sizes) for r in range(2)]
        g = torch.cat([p[0][:n] for p in parts]).requires_grad_(True)
        t = torch.cat([p[1][:n] for p in parts]).requires_grad_(True)
        joined = image_text_contrastive_loss(g, t, 0.05, gather=False)
        joined.backward()
        ref = ref_img_txt(g.detach().numpy(), t.detach().numpy(), 0.05)
        assert joined.item() == pytest.approx(ref, rel=1e-4)
        for r in range(2):
            assert res[r][0] == pytest.approx(joined.item(), rel=1e-5)
            # each rank's rows get world_size x the joined gradient; DDP divides by world_size
            for local_grad, joined_grad in ((res[r][1], g.grad), (res[r][2], t.grad)):
                torch.testing.assert_close(local_grad[:n] / 2, joined_grad[r * n:(r + 1) * n])
                assert torch.all(local_grad[n:] == 0)  # truncated rows get no gradient
