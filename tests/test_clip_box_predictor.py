"""The text-embedding box predictor against independent computations written in the tests."""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torchvision.ops import batched_nms

from regionclip.modeling.roi_heads import CLIPFastRCNNOutputLayers, load_text_embeddings

D, C = 16, 5


def _predictor(**kw):
    g = torch.Generator().manual_seed(0)
    args = dict(box2box_transform=Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)), num_classes=C,
                cls_agnostic_bbox_reg=True, test_score_thresh=0.001, test_nms_thresh=0.5,
                test_topk_per_image=100, use_text_emb_classifier=True,
                text_emb=torch.randn(C, D, generator=g), temperature=0.01)
    args.update(kw)
    p = CLIPFastRCNNOutputLayers(ShapeSpec(channels=D), **args)
    with torch.no_grad():
        p.bbox_pred.weight.normal_(0, 0.01, generator=g)
    return p


def _proposals(n, logits=None, image_size=(100, 120), seed=1):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 60
    wh = torch.rand(n, 2, generator=g) * 40 + 5
    inst = Instances(image_size)
    inst.proposal_boxes = Boxes(torch.cat([xy, xy + wh], 1))
    if logits is not None:
        inst.objectness_logits = logits
    return inst


def test_scores_are_cosines_over_temperature_with_zero_background():
    p = _predictor()
    x = torch.randn(7, D)
    scores, deltas = p(x)
    xn = x / x.norm(dim=1, keepdim=True)
    wn = p.cls_score.weight / p.cls_score.weight.norm(dim=1, keepdim=True)
    torch.testing.assert_close(scores[:, :C], xn @ wn.t() / 0.01, rtol=1e-5, atol=1e-4)
    assert torch.all(scores[:, C] == 0)
    # regression reads the un-normalised embedding
    torch.testing.assert_close(deltas, x @ p.bbox_pred.weight.t() + p.bbox_pred.bias)
    assert not p.cls_score.weight.requires_grad and not p.cls_bg_score.weight.requires_grad


def test_open_set_table_replaces_training_classes_only_when_not_training():
    test_emb = torch.randn(9, D)
    p = _predictor(test_text_emb=test_emb)
    x = torch.randn(4, D)
    p.train()
    assert p(x)[0].shape == (4, C + 1)
    p.eval()
    scores = p(x)[0]
    assert scores.shape == (4, 10)
    expected = F.normalize(x, dim=1) @ F.normalize(test_emb, dim=1).t() / 0.01
    torch.testing.assert_close(scores[:, :9], expected, rtol=1e-5, atol=1e-4)
    p.set_test_embeddings(torch.randn(3, D))
    assert p(x)[0].shape == (4, 4)
    with pytest.raises(ValueError, match=r"\(C>0, 16\)"):
        p.set_test_embeddings(torch.randn(0, D))


def _labelled(n, classes, seed=2):
    inst = _proposals(n, seed=seed)
    inst.gt_classes = classes
    inst.gt_boxes = Boxes(inst.proposal_boxes.tensor + 2.0)
    return inst


def test_focal_scaled_loss_with_background_weight_is_a_plain_mean():
    p = _predictor(focal_scaled_loss=0.5, bg_cls_loss_weight=0.2)
    x = torch.randn(8, D)
    gt = torch.tensor([0, 1, C, C, 2, 4, C, 3])
    with EventStorage():
        loss = p.losses(p(x), [_labelled(8, gt)])["loss_cls"]
    scores = p(x)[0].double()
    total = 0.0
    for i in range(8):
        logp = scores[i] - torch.logsumexp(scores[i], 0)
        pt = math.exp(logp[gt[i]])
        li = -logp[gt[i]].item() * (1 - pt) ** 0.5
        total += li * (0.2 if gt[i] == C else 1.0)
    assert loss.item() == pytest.approx(total / 8, rel=1e-5)


def test_weighted_ce_normalises_by_the_sum_of_weights():
    p = _predictor(bg_cls_loss_weight=0.8)
    x = torch.randn(6, D)
    gt = torch.tensor([0, C, C, 2, 1, C])
    with EventStorage():
        loss = p.losses(p(x), [_labelled(6, gt)])["loss_cls"]
    scores = p(x)[0].double()
    w = [0.8 if g == C else 1.0 for g in gt.tolist()]
    ce = [-(scores[i, gt[i]] - torch.logsumexp(scores[i], 0)).item() for i in range(6)]
    assert loss.item() == pytest.approx(sum(a * b for a, b in zip(w, ce)) / sum(w), rel=1e-5)


def test_empty_batch_losses_are_zero_and_connected():
    p = _predictor(focal_scaled_loss=0.5, bg_cls_loss_weight=0.2)
    x = torch.randn(0, D, requires_grad=True)
    with EventStorage():
        losses = p.losses(p(x), [_labelled(0, torch.zeros(0, dtype=torch.long))])
    assert losses["loss_cls"].item() == 0 and losses["loss_cls"].requires_grad


def _reference_inference(p, x, proposals, multiply, sigmoid=False, vis=False):
    """Softmax, optional sqrt(prob * objectness), drop non-finite rows, threshold, per-class NMS."""
    scores, deltas = p(x)
    probs = F.softmax(scores, -1)
    boxes = proposals.proposal_boxes.tensor
    if not p.no_box_delta:
        boxes = p.box2box_transform.apply_deltas(deltas, boxes)
    s = probs
    if multiply:
        o = proposals.objectness_logits
        s = (probs * (torch.sigmoid(o) if sigmoid else o)[:, None]) ** 0.5
    ok = torch.isfinite(s).all(1)
    rows = torch.nonzero(ok)[:, 0]
    b = Boxes(boxes[ok].clone())
    b.clip(proposals.image_size)
    s, probs = s[ok][:, :-1], probs[ok][:, :-1]
    r, c = torch.nonzero(s > p.test_score_thresh, as_tuple=True)
    keep = batched_nms(b.tensor[r], s[r, c], c, p.test_nms_thresh)
    out = probs if vis else s
    return b.tensor[r[keep]], out[r[keep], c[keep]], c[keep], rows[r[keep]]


@pytest.mark.parametrize("sigmoid", [False, True])
@pytest.mark.parametrize("vis", [False, True])
def test_multiply_rpn_score_raw_logit_drops_negative_logits(sigmoid, vis):
    p = _predictor(multiply_rpn_score=True, multiply_rpn_score_sigmoid=sigmoid, vis=vis,
                   no_box_delta=True)
    p.eval()
    logits = torch.tensor([2.5, -0.3, 0.7, -2.0, 4.0, 0.1, -0.01, 1.5])
    props = _proposals(8, logits)
    x = torch.randn(8, D)
    (inst,), (kept,) = p.inference(p(x), [props])
    rb, rs, rc, rrows = _reference_inference(p, x, props, True, sigmoid, vis)
    torch.testing.assert_close(inst.pred_boxes.tensor, rb)
    torch.testing.assert_close(inst.scores, rs)
    assert inst.pred_classes.tolist() == rc.tolist()
    assert kept.tolist() == rrows.tolist()
    if not sigmoid:  # negative logits give NaN scores: those proposals never appear
        assert not set(kept.tolist()) & {1, 3, 6}
        if not vis:
            assert inst.scores.max() > 1.0  # sqrt(p * 4.0) can exceed 1


def test_no_box_delta_returns_proposals_and_delta_mode_regresses():
    x = torch.randn(6, D)
    props = _proposals(6)
    p = _predictor(no_box_delta=True)
    p.eval()
    (boxes,) = p.predict_boxes(p(x), [props])
    assert torch.equal(boxes, props.proposal_boxes.tensor)
    p2 = _predictor(no_box_delta=False)
    p2.eval()
    (inst,), _ = p2.inference(p2(x), [props])
    rb, rs, _, _ = _reference_inference(p2, x, props, False)
    torch.testing.assert_close(inst.pred_boxes.tensor, rb)
    assert not torch.equal(p2.predict_boxes(p2(x), [props])[0], props.proposal_boxes.tensor)


def test_multiply_needs_objectness():
    p = _predictor(multiply_rpn_score=True)
    p.eval()
    with pytest.raises(ValueError, match="objectness"):
        p.inference(p(torch.randn(3, D)), [_proposals(3)])


def test_soft_nms_path_reports_decayed_scores():
    from detectron2_ext.layers import batched_soft_nms

    p = _predictor(soft_nms={"method": "gaussian", "sigma": 0.5, "prune": 0.001},
                   no_box_delta=True, temperature=0.1)
    p.eval()
    props = _proposals(12)
    x = torch.randn(12, D)
    (inst,), _ = p.inference(p(x), [props])
    probs = F.softmax(p(x)[0], -1)[:, :-1]
    r, c = torch.nonzero(probs > 0.001, as_tuple=True)
    b = props.proposal_boxes.tensor.clone()
    keep, dec = batched_soft_nms(b[r], probs[r, c], c, "gaussian", 0.5, 0.5, 0.001)
    torch.testing.assert_close(inst.scores, dec[:100])
    assert inst.pred_classes.tolist() == c[keep][:100].tolist()


def test_embedding_file_errors_name_key_and_numbers(tmp_path):
    path = tmp_path / "emb.pth"
    torch.save(torch.randn(48, 1024), path)
    assert load_text_embeddings(str(path), "MODEL.CLIP.TEXT_EMB_PATH", 48, 1024).shape == (48, 1024)
    with pytest.raises(ValueError, match=r"48 class embeddings.*NUM_CLASSES is 65"):
        load_text_embeddings(str(path), "MODEL.CLIP.TEXT_EMB_PATH", 65, 1024)
    with pytest.raises(ValueError, match=r"TEXT_EMB_PATH.*\(48, 1024\).*TEXT_EMB_DIM is 640"):
        load_text_embeddings(str(path), "MODEL.CLIP.TEXT_EMB_PATH", 48, 640)
    with pytest.raises(FileNotFoundError, match="OPENSET_TEST_TEXT_EMB_PATH"):
        load_text_embeddings(str(tmp_path / "nope.pth"), "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH",
                             None, 1024)


def test_focal_loss_gradient_is_finite_when_the_target_probability_is_one():
    """(1 - p)^0.5 has an infinite slope at p = 1; the original's gradients became NaN there."""
    p = _predictor(focal_scaled_loss=0.5, bg_cls_loss_weight=0.2)
    logits = torch.tensor([[200.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0, 0.5]],
                          requires_grad=True)
    targets = torch.tensor([0, 1])
    assert F.softmax(logits, -1)[0, 0].item() == 1.0
    loss = p.focal_scaled_ce(logits, targets)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # the value is unchanged: sample 0 contributes 0, sample 1 its focal-scaled CE
    p1 = F.softmax(logits.detach()[1], -1)[1]
    assert loss.item() == pytest.approx((-torch.log(p1) * (1 - p1) ** 0.5).item() / 2, rel=1e-6)
