"""Parity with the original RegionCLIP (microsoft/RegionCLIP @ 4b8513b) on seeded weights.

The fixtures in tests/parity/fixtures were produced by running the ORIGINAL code
(tests/parity/generate_fixtures.py; how and with which shims: tests/parity/README.md). Here the
same models are built from this project's same-named yaml files with the same overrides
(tests/parity/inputs.py), filled with the same seeded weights (tests/parity/seeded_weights.py,
a function of the state-dict key only, so identical key lists give identical checkpoints) and run
on the same inputs.

Tolerances: both sides run float32 on the same PyTorch/torchvision kernels; measured differences
are at the level of float rounding, at most 1e-6 relative (see the README). Region embeddings and
losses are compared with rtol 1e-4 (plus 1e-4 of the tensor's largest magnitude; 1e-3 for the
embeddings of RPN proposals), detection scores with 1e-3 (the 0.01 temperature amplifies
embedding noise up to 100x); detections must have identical classes in identical order and boxes
within 0.1 pixel (+ rtol 1e-4): the fixtures were made with AVX-512 kernels, and AVX2 or plain
kernels move boxes by up to 0.04 px (measured by emulating those CPUs here). Float
noise of another CPU could reorder detections of different classes whose scores tie within the
score tolerance (two coco_rpn detections differ by 2e-6 of the top score): only such swaps are
accepted.
"""
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from parity.inputs import (
    CAPTIONS,
    CHECKPOINT_OFFSETS,
    CONCEPTS,
    GT_CLASSES_48,
    detection_inputs,
    make_image,
    scenario,
    write_embedding_files,
)
from parity.seeded_weights import load_seeded, seeded_state_dict, seeded_tensor, state_dict_specs

from regionclip.config import add_regionclip_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "parity", "fixtures")
GRAD_PARAMS = ("backbone.layer2.0.conv1.weight", "backbone.layer3.5.conv3.weight",
               "backbone.layer4.2.conv3.weight", "backbone.attnpool.positional_embedding",
               "backbone.attnpool.c_proj.weight", "roi_heads.box_predictor.bbox_pred.weight")
RTOL = 1e-4
# Detection scores are softmax(cos / 0.01): a relative error e of the embeddings becomes up to
# ~100 e in the scores, hence a looser tolerance for them.
SCORE_RTOL = 1e-3
# pixels (plus RTOL of the coordinate): regressed boxes amplify noise. Measured on other kernels
# than the fixtures' (AVX-512 oneDNN convolutions): up to 0.015 px with AVX2, 0.04 px without SIMD
BOX_ATOL = 1e-1
# Region embeddings of RPN proposals: the proposal coordinates' noise moves the RoIAlign samples;
# 2.9e-4 (AVX2 kernels) and 1.4e-4 x 3 (no SIMD) of the largest magnitude measured
RPN_EMB_RTOL = 1e-3


@pytest.fixture(scope="module")
def expected():
    with np.load(os.path.join(FIXTURES, "outputs.npz")) as f:
        out = {k: f[k] for k in f.files}
    with np.load(os.path.join(FIXTURES, "keys.npz")) as f:
        out.update({"keys:" + k: f[k] for k in f.files})
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_embedding_files(str(tmp_path_factory.mktemp("parity_emb")))


def test_fixture_inputs_are_ours(expected):
    """The generator saw the same images and recorded the original's commit."""
    assert [int(make_image(i).sum()) for i in range(2)] == expected["meta/image_sum"].tolist()
    assert str(expected["meta/original_commit"]).startswith("4b8513b")


def make_cfg(name, files, device="cpu"):
    config, opts = scenario(name, REPO, files, original=False)
    cfg = get_cfg()
    add_regionclip_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(opts + ["MODEL.DEVICE", device])
    cfg.freeze()
    return cfg


def build(name, files, device="cpu"):
    with torch.device(device):  # on "meta": no memory, no initialisation
        return build_model(make_cfg(name, files, device))


def seeded_model(name, files):
    model = build(name, files)
    load_seeded(model, offsets=CHECKPOINT_OFFSETS.get(name))  # strict: no missing/unexpected
    return model.eval()


def _specs_from_fixture(expected, name):
    names = expected[f"keys:{name}/names"].tolist()
    shapes = [tuple(int(s) for s in x.split("x")) if x else () for x in
              expected[f"keys:{name}/shapes"].tolist()]
    return list(zip(names, shapes, expected[f"keys:{name}/dtypes"].tolist()))


def assert_same_specs(ours, theirs):
    ours_d, theirs_d = {k: (s, d) for k, s, d in ours}, {k: (s, d) for k, s, d in theirs}
    missing = sorted(set(theirs_d) - set(ours_d))
    unexpected = sorted(set(ours_d) - set(theirs_d))
    assert not missing and not unexpected, (
        f"checkpoint keys differ: {len(missing)} original keys missing in ours {missing[:8]}, "
        f"{len(unexpected)} unexpected {unexpected[:8]}")
    differ = [(k, ours_d[k], theirs_d[k]) for k in ours_d if ours_d[k] != theirs_d[k]]
    assert not differ, f"shape/dtype differs (ours, original): {differ[:8]}"


@pytest.mark.parametrize("name", ["keys_coco", "keys_coco_rn50x4", "keys_lvis", "keys_pretrain"])
def test_checkpoint_format_matches_original(name, expected, files):
    """A checkpoint of the original's model loads into ours with no missing/unexpected keys."""
    # built on the meta device: only names, shapes and dtypes are needed
    model = build(name, files, device="meta")
    assert_same_specs(state_dict_specs(model.state_dict()), _specs_from_fixture(expected, name))


# ---------------------------------------------------------------------------------- detection
def capture(module):
    store = []
    return store, module.register_forward_hook(lambda m, i, o: store.append(o))


def assert_close(actual, wanted, what, rtol=RTOL, atol=None):
    actual = np.asarray(actual, dtype=np.float64)
    wanted = np.asarray(wanted, dtype=np.float64)
    assert actual.shape == wanted.shape, f"{what}: shape {actual.shape} vs original {wanted.shape}"
    if atol is None:  # relative to the magnitude of the whole tensor
        atol = rtol * max(float(np.abs(wanted).max(initial=0.0)), 1e-12)
    np.testing.assert_allclose(actual, wanted, rtol=rtol, atol=atol, err_msg=what)


def _match_ties(classes, boxes, scores, want_classes, want_boxes, want_scores, tie):
    """Our index for each expected detection, allowing reorderings among near-equal scores only.

    Two detections may swap places when their scores differ by at most ``tie`` (float noise can
    reorder near-ties between classes). At the top-k cut, an expected detection may be replaced
    by a different one whose score is also within ``tie`` of the cut. Returns the permutation
    (-1 for such a replaced detection).
    """
    perm, used = [], set()
    for i in range(len(want_classes)):
        candidates = [j for j in range(len(classes)) if j not in used
                      and classes[j] == want_classes[i] and abs(scores[j] - want_scores[i]) <= tie
                      and np.all(np.abs(boxes[j] - want_boxes[i])
                                 <= BOX_ATOL + RTOL * np.abs(want_boxes[i]))]
        if candidates:
            j = min(candidates, key=lambda j: abs(j - i))
            used.add(j)
            perm.append(j)
        else:
            assert want_scores[i] - want_scores[-1] <= tie, (
                f"expected detection {i} (class {want_classes[i]}, score {want_scores[i]:.6g}) "
                "has no counterpart and is not a near-tie at the top-k cut")
            perm.append(-1)
    extra = [j for j in range(len(classes)) if j not in used]
    assert all(scores[j] - want_scores[-1] <= tie for j in extra), \
        f"detections {extra} are not in the original's output"
    return np.array(perm)


def assert_same_detections(inst, expected, prefix):
    """Same classes in the same order, boxes and scores close; an order change
    is accepted only between detections whose scores are equal within the score tolerance."""
    classes, boxes = inst.pred_classes.numpy(), inst.pred_boxes.tensor.numpy()
    scores = inst.scores.numpy()
    want = {k: expected[prefix + k] for k in ("classes", "boxes", "scores")}
    assert len(want["classes"]) > 0, f"{prefix}: the original produced no detection (weak fixture)"
    assert len(classes) == len(want["classes"]), f"{prefix}: number of detections"
    index = np.arange(len(classes))
    if not np.array_equal(classes, want["classes"]):
        tie = SCORE_RTOL * float(np.abs(want["scores"]).max())
        index = _match_ties(classes, boxes, scores, want["classes"], want["boxes"],
                            want["scores"], tie)
    kept = index >= 0
    np.testing.assert_array_equal(classes[index[kept]], want["classes"][kept],
                                  err_msg=f"{prefix}classes (in order)")
    assert_close(boxes[index[kept]], want["boxes"][kept], prefix + "boxes", atol=BOX_ATOL)
    assert_close(scores[index[kept]], want["scores"][kept], prefix + "scores", rtol=SCORE_RTOL)
    if prefix + "masks" in expected:
        assert_close(inst.pred_masks.numpy()[index[kept]], expected[prefix + "masks"][kept],
                     prefix + "masks", atol=2e-3)


@pytest.fixture(scope="module")
def zs_model(files):
    return seeded_model("zs_gt", files)


def zero_shot(model):
    embs, handle = capture(model.backbone.attnpool)
    with torch.no_grad():
        result = model(detection_inputs(True))[0]["instances"]
    handle.remove()
    return torch.cat(embs), result


def test_zero_shot_gt_boxes_match_original(zs_model, expected):
    """(b) Region embeddings of ground-truth boxes and the final detections."""
    emb, result = zero_shot(zs_model)
    assert_close(emb.numpy(), expected["zs_gt/region_emb"], "region embeddings")
    assert_same_detections(result, expected, "zs_gt/")


def test_parity_checks_detect_changes(zs_model, expected):
    """Negative controls: a different temperature or attention pool is caught by the checks."""
    predictor, attnpool = zs_model.roi_heads.box_predictor, zs_model.backbone.attnpool
    temperature = predictor.temperature
    predictor.temperature = temperature * 1.1
    try:
        _, result = zero_shot(zs_model)
        with pytest.raises(AssertionError):
            assert_same_detections(result, expected, "zs_gt/")
    finally:
        predictor.temperature = temperature
    saved = attnpool.positional_embedding.detach().clone()
    with torch.no_grad():  # 1 % larger positional embedding: a 6e-4 relative change
        attnpool.positional_embedding *= 1.01
    try:
        emb, _ = zero_shot(zs_model)
        with pytest.raises(AssertionError):
            assert_close(emb.numpy(), expected["zs_gt/region_emb"], "region embeddings")
    finally:
        with torch.no_grad():
            attnpool.positional_embedding.copy_(saved)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lvis_rpn", "coco_rpn"])
def test_rpn_mode_inference_matches_original(name, expected, files):
    """(c) Offline-RPN proposals, region embeddings and detections (soft-NMS; LVIS: raw-logit
    RPN rescoring, LSJ SyncBN RPN, masks)."""
    model = seeded_model(name, files)
    proposals, h1 = capture(model.offline_proposal_generator)
    embs, h2 = capture(model.backbone.attnpool)
    with torch.no_grad():
        results = model.inference(detection_inputs(False), do_postprocess=False)
    h1.remove()
    h2.remove()
    props = proposals[0][0][0]
    assert_close(props.proposal_boxes.tensor.numpy(), expected[f"{name}/proposal_boxes"],
                 "proposal boxes", atol=BOX_ATOL)
    assert_close(props.objectness_logits.numpy(), expected[f"{name}/objectness_logits"],
                 "objectness logits")
    proj = seeded_tensor("region_emb_projection", (embs[0].shape[1], 16))
    assert_close((torch.cat(embs) @ proj).numpy(), expected[f"{name}/region_emb_proj"],
                 "region embeddings (projected)", rtol=RPN_EMB_RTOL)
    assert_same_detections(results[0], expected, f"{name}/")
    if name == "coco_rpn":  # negative control: the box tolerance still sees the box deltas
        model.roi_heads.box_predictor.no_box_delta = True
        with torch.no_grad():
            results = model.inference(detection_inputs(False), do_postprocess=False)
        with pytest.raises(AssertionError):
            assert_same_detections(results[0], expected, f"{name}/")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["train_gt", "train_rpn"])
def test_training_losses_match_original(name, expected, files):
    """(d) One training forward/backward of the COCO config (focal-scaled CE, bg weight 0.2).

    GT mode: the regions are the 5 GT boxes plus the same boxes appended as GT proposals, all
    foreground; RPN mode: 12 offline proposals + 5 GT, foreground and background. Fewer than
    BATCH_SIZE_PER_IMAGE * POSITIVE_FRACTION (128) positives and 512 in all, so sampling keeps
    every proposal; only their order is random, and both losses are order-invariant means.
    """
    model = seeded_model(name, files).train()
    with EventStorage(0):
        losses = model(detection_inputs(True, GT_CLASSES_48))
    sum(losses.values()).backward()
    assert sorted(losses) == ["loss_box_reg", "loss_cls"]
    for key, value in losses.items():
        assert_close(value.item(), expected[f"{name}/{key}"], f"{name} {key}")
    params = dict(model.named_parameters())
    norms = [params[p].grad.norm().item() for p in GRAD_PARAMS]
    assert_close(norms, expected[f"{name}/grad_norms"], f"{name} gradient norms {GRAD_PARAMS}",
                 rtol=1e-3)
    assert_close(params[GRAD_PARAMS[-1]].grad.numpy(), expected[f"{name}/bbox_pred_grad"],
                 f"{name} bbox_pred gradient", rtol=1e-3)


# ---------------------------------------------------------------------------------- text
@pytest.mark.slow
def test_concept_features_match_original(expected, files):
    """(e) extract_concept_features: 81 prompts per concept through lang_encoder, mean.

    Also the (a) key check of the zero-shot LVIS config with GET_CONCEPT_EMB (lang_encoder.*).
    """
    from regionclip.clip import build_prompts, tokenize
    from regionclip.modeling.text_encoder import build_clip_language_encoder
    from regionclip.tools.extract_concept_features import compute_concept_embeddings

    model = build("concepts", files, device="meta")
    specs = state_dict_specs(model.state_dict())
    assert_same_specs(specs, _specs_from_fixture(expected, "concepts"))
    # the model's lang_encoder comes from this builder; only it is materialised, with the
    # seeded values of the model's lang_encoder.* keys
    encoder = build_clip_language_encoder(make_cfg("concepts", files))
    assert type(encoder) is type(model.lang_encoder)
    prefix = "lang_encoder."
    seeded = seeded_state_dict([s for s in specs if s[0].startswith(prefix)])
    encoder.load_state_dict({k[len(prefix):]: v for k, v in seeded.items()}, strict=True)
    for i, concept in enumerate(CONCEPTS):
        np.testing.assert_array_equal(tokenize(build_prompts(concept)).numpy(),
                                      expected[f"concepts/tokens_{i}"], err_msg=concept)
    emb = compute_concept_embeddings(encoder.eval(), CONCEPTS, progress=False)
    assert_close(emb.numpy(), expected["concepts/embeddings"], "concept embeddings")


# ---------------------------------------------------------------------------------- pretraining
@pytest.mark.slow
def test_pretraining_losses_match_original(expected, files, monkeypatch):
    """(f) PretrainFastRCNN training forward: the three losses and the teacher's pseudo labels.

    The original crashes on its global boxes (bare Boxes); the generator wrapped them in
    Instances, nothing else. All 10 offline proposals per image are sampled (100 allowed), in a
    random order on both sides: the losses are order-invariant, pseudo labels compared as a
    multiset.
    """
    from regionclip.clip import tokenize
    from regionclip.modeling.meta_arch import pretrain_fast_rcnn

    model = seeded_model("pretrain", files)
    batch = []
    for i, caption in enumerate(CAPTIONS):
        image = make_image(i)
        tokens = tokenize([caption])
        np.testing.assert_array_equal(tokens[0].numpy(), expected[f"pretrain/tokens_{i}"])
        batch.append({"image": torch.as_tensor(image.transpose(2, 0, 1) / 255.0).float(),
                      "captions": tokens})
    with torch.no_grad():
        props = model.get_region_proposals(batch, model.preprocess_image(batch))
    for i, p in enumerate(props):
        assert_close(p.proposal_boxes.tensor.numpy(), expected[f"pretrain/proposal_boxes_{i}"],
                     f"offline proposals of image {i}", atol=BOX_ATOL)
    labels = []
    pseudo = pretrain_fast_rcnn.teacher_pseudo_labels

    def record(*args, **kwargs):
        labels.append(pseudo(*args, **kwargs))
        return labels[-1]

    monkeypatch.setattr(pretrain_fast_rcnn, "teacher_pseudo_labels", record)
    model.train()
    losses = model(batch)
    assert sorted(losses) == ["loss_concept_contrastive", "loss_img_txt_level",
                              "loss_region_distill"]
    for key, value in losses.items():
        assert_close(value.item(), expected[f"pretrain/{key}"], f"pretraining {key}")
    keep, target, q = labels[0]
    assert sum(len(p) for p in props) == int(expected["pretrain/num_regions"])
    np.testing.assert_array_equal(np.sort(target.numpy()),
                                  expected["pretrain/pseudo_labels_sorted"])
    assert_close(np.sort(q.max(dim=1).values.numpy()), expected["pretrain/pseudo_max_prob_sorted"],
                 "teacher max concept probabilities")
