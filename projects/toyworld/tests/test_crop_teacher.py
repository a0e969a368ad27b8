"""The controls of the pseudo labels: the crop teacher (toyworld.crop_teacher: crops cut exactly,
the teacher's labels computed from crops instead of its feature map) and the true labels
(toyworld.true_labels: regions on objects get their object's concept)."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, ImageList, Instances
from torchvision.ops import box_iou
from toyworld.analysis import CROP_CONTEXT, pseudo_label_accuracy
from toyworld.crop_teacher import CropTeacherPretrainFastRCNN, crop_regions
from toyworld.pipeline import run_pipeline, stage_paths
from toyworld.pretrain import build_pretrain_model, pretrain_batches, pretrain_cfg
from toyworld.settings import load_settings
from toyworld.train_clip import normalize
from toyworld.true_labels import TrueLabelPretrainFastRCNN, label_targets, true_concepts
from toyworld.world import World

from regionclip.checkpoint import read_torch_file
from regionclip.modeling.meta_arch import PretrainFastRCNN


def _ramps(height=12, width=10):
    """(1, 2, H, W): channel 0 holds each pixel's column index, channel 1 its row index."""
    cols = torch.arange(width, dtype=torch.float32).expand(height, width)
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    return torch.stack([cols, rows])[None]


def test_crop_regions_cuts_the_box_pixels():
    image = _ramps()
    crop = crop_regions(image, [torch.tensor([[2.0, 1.0, 6.0, 5.0]])], 4, context=1.0)
    assert crop.shape == (1, 2, 4, 4)
    assert torch.equal(crop[0, 0, 0], torch.tensor([2.0, 3.0, 4.0, 5.0]))  # columns 2..5
    assert torch.equal(crop[0, 1, :, 0], torch.tensor([1.0, 2.0, 3.0, 4.0]))  # rows 1..4
    # context scales the box about its centre: [3, 2, 5, 4] x 2 is the box above
    wider = crop_regions(image, [torch.tensor([[3.0, 2.0, 5.0, 4.0]])], 4, context=2.0)
    assert torch.equal(wider, crop)
    assert not torch.equal(crop_regions(image, [torch.tensor([[3.0, 2.0, 5.0, 4.0]])], 4,
                                        context=1.0), crop)
    # clipped to the image; boxes of several images stay with their image
    two = torch.cat([image, image + 100])
    out = crop_regions(two, [torch.tensor([[-2.0, -2.0, 2.0, 2.0]]),
                             torch.tensor([[8.0, 10.0, 10.0, 12.0]])], 2, context=1.0)
    assert torch.equal(out[0, 0, 0], torch.tensor([0.0, 1.0]))
    assert torch.equal(out[1, 0, 0], torch.tensor([108.0, 109.0]))
    assert torch.equal(out[1, 1, :, 0], torch.tensor([110.0, 111.0]))
    # in a padded batch, boxes are clipped to their own image (here 6 x 5 of the 12 x 10)
    own = crop_regions(image, [torch.tensor([[3.0, 3.0, 7.0, 7.0]])], 2, context=1.0,
                       image_sizes=[(6, 5)])
    assert torch.equal(own[0, 0, 0], torch.tensor([3.0, 4.0]))  # columns 3..4 of [3, 5)


@pytest.fixture(scope="module")
def crop_run(tmp_path_factory):
    """A micro world, teacher and RPN, then stage 3 with ``PRETRAIN.TEACHER_CROPS``."""
    out = str(tmp_path_factory.mktemp("toy_crops") / "run")
    settings = load_settings("micro", ["NUM_THREADS", "1", "PRETRAIN.TEACHER_CROPS", "True"])
    run_pipeline(settings, out, stages=["world", "clip", "rpn", "pretrain"], progress=False)
    return settings, out


def _control_model(settings, out, cls):
    """The pretraining model of ``settings`` on the run ``out``'s teacher and RPN, checked to be
    the control ``cls``; also returns the config."""
    paths = stage_paths(out)
    pool = os.path.join(out, "pretrain", "concept_emb.pth")
    cfg = pretrain_cfg(settings, paths["clip"], paths["rpn"], pool)
    assert cfg.MODEL.META_ARCHITECTURE == cls.__name__
    model = build_pretrain_model(cfg).eval()
    assert isinstance(model, cls)
    return model, cfg


@pytest.mark.slow
def test_crop_teacher_labels_regions_from_crops(crop_run):
    settings, out = crop_run
    paths = stage_paths(out)
    model, _ = _control_model(settings, out, CropTeacherPretrainFastRCNN)
    # the offline RPN got its weights although the original's rule names its own meta-archs only
    rpn = read_torch_file(paths["rpn"]["weights"])
    rpn = rpn.get("model", rpn)
    key = next(k for k in rpn if k.startswith("proposal_generator.") and k.endswith("weight"))
    assert torch.equal(model.state_dict()["offline_" + key], rpn[key].float())

    size = model.teacher_backbone.config.image_size
    scenes = normalize(World(os.path.join(out, "world")).images("test")[:2])
    images = F.interpolate(scenes, size=(96, 96), mode="bilinear", align_corners=False)
    batch = ImageList(images, [(96, 96)] * 2)
    backbone = model.teacher_backbone
    # a box whose 1.2x context is the whole picture: the teacher's embedding of the picture
    # resized to its input size (an independent path: F.interpolate)
    whole = torch.tensor([[8.0, 8.0, 88.0, 88.0]])
    proposals = [Instances((96, 96), proposal_boxes=Boxes(whole)) for _ in range(2)]
    with torch.no_grad():
        crops_emb = model.teacher_region_embeddings(batch, proposals)
        resized = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        reference = backbone.attnpool(backbone.forward_features(resized, ("res5",))["res5"])
    assert crops_emb.shape == reference.shape == (2, reference.shape[1])
    torch.testing.assert_close(crops_emb, reference, rtol=0, atol=1e-4)
    # the micro teacher is weak, but its embeddings of the two scenes differ far beyond that
    # tolerance, so the check above can fail
    assert (reference[0] - reference[1]).abs().max() > 1e-3
    # negative control: for object-sized boxes the original's RoI pooling gives other embeddings
    small = [Instances((96, 96), proposal_boxes=Boxes(torch.tensor([[10.0, 12.0, 40.0, 44.0],
                                                                     [50.0, 40.0, 90.0, 70.0]])))
             for _ in range(2)]
    with torch.no_grad():
        crops_emb = model.teacher_region_embeddings(batch, small)
        roi_emb = PretrainFastRCNN.teacher_region_embeddings(model, batch, small)
    assert crops_emb.shape == roi_emb.shape == (4, reference.shape[1])
    assert ((crops_emb - roi_emb).abs().amax(dim=1) > 1e-3).all()


@pytest.mark.slow
def test_crop_teacher_pretraining_trains_the_student(crop_run):
    _, out = crop_run
    losses = json.load(open(os.path.join(out, "pretrain", "metrics.json")))["loss"]
    first, last = losses[0], losses[-1]
    assert {"loss_region_distill", "loss_concept_contrastive"} <= set(first)
    assert all(torch.isfinite(torch.tensor(v)) for v in last.values())
    teacher = read_torch_file(os.path.join(out, "clip", "clip.pth"))
    student = read_torch_file(os.path.join(out, "pretrain", "student_clip.pth"))
    changed = [k for k in teacher if k.startswith("visual.layer4")
               and not torch.equal(teacher[k], student[k])]
    assert changed  # the student learned from the crop teacher's labels


class _FakeWorld:
    class_names = ["circle", "star"]
    base_classes = ["circle"]

    def images(self, split):
        return np.zeros((1, 8, 8, 3), dtype=np.uint8)

    def boxes(self, split):
        return [{"boxes": [[0.0, 0.0, 4.0, 4.0]], "classes": [1]}]  # one star


class _FakeDetector:
    """RoI embeddings say "circle", crop embeddings "star"; records the crops' context."""

    def __init__(self):
        self.contexts = []

    def encode_regions(self, image, boxes):
        return torch.tensor([[1.0, 0.0]]).repeat(len(boxes), 1)

    def encode_crops(self, image, boxes, context=1.0):
        self.contexts.append(context)
        return torch.tensor([[0.0, 1.0]]).repeat(len(boxes), 1)


def test_pseudo_label_accuracy_of_the_crop_control_labels_from_crops():
    rc, pool = _FakeDetector(), torch.eye(2)
    proposals = [torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.5, 0.0, 4.0, 4.0], [5.0, 5.0, 8.0, 8.0]])]
    roi = pseudo_label_accuracy(rc, _FakeWorld(), ["circle", "star"], pool, proposals)
    crop = pseudo_label_accuracy(rc, _FakeWorld(), ["circle", "star"], pool, proposals,
                                 crops=True)
    assert roi["regions"] == crop["regions"] == 2  # the third proposal misses the star
    assert roi["correct"] == 0.0 and roi["most_common"] == "circle"
    assert crop["correct"] == 1.0 and crop["correct_novel"] == 1.0
    assert rc.contexts == [CROP_CONTEXT]


class _ThreeObjectWorld(_FakeWorld):
    """Two stars and a circle; the detector's label depends on where the box starts."""

    def boxes(self, split):
        return [{"boxes": [[0.0, 0.0, 4.0, 4.0], [10.0, 0.0, 14.0, 4.0], [20.0, 0.0, 24.0, 4.0]],
                 "classes": [1, 1, 0]}]


class _PlaceDetector:
    """Says "star" for boxes starting at x < 0.3 or x >= 20, else "circle"."""

    def encode_regions(self, image, boxes):
        x = torch.as_tensor(boxes)[:, 0]
        star = (x < 0.3) | (x >= 20)
        return torch.stack([(~star).float(), star.float()], dim=1)


def test_pseudo_label_consistency_known_answer():
    # star 1: proposals at x 0.0, 0.2 (star), 0.4 (circle) -> majority right, mixed
    # star 2: proposals at x 10.0, 10.2 (circle) -> none right
    # circle: proposals at x 20.0, 20.2 (star) -> none right; its category's plurality is wrong
    proposals = [torch.tensor([[x, 0.0, x + 4.0, 4.0]
                               for x in (0.0, 0.2, 0.4, 10.0, 10.2, 20.0, 20.2)])]
    result = pseudo_label_accuracy(_PlaceDetector(), _ThreeObjectWorld(), ["circle", "star"],
                                   torch.eye(2), proposals)
    assert result["regions"] == 7 and result["objects"] == 3
    assert result["correct"] == pytest.approx(2 / 7)
    assert result["object_majority_correct"] == pytest.approx(1 / 3)
    assert result["objects_all_correct"] == 0.0
    assert result["objects_none_correct"] == pytest.approx(2 / 3)
    assert result["class_plurality"] == {"circle": ["star", 1.0], "star": ["circle", 0.6]}
    assert result["classes_plurality_wrong"] == ["circle", "star"]


# ---------------------------------------------------------------- the true-label control
def test_true_concepts_known_answer():
    regions = torch.tensor([[0.0, 0.0, 10.0, 10.0],     # object 0 itself (IoU 1)
                            [20.0, 20.0, 30.0, 30.0],   # on object 1 (IoU 0.81)
                            [0.0, 0.0, 5.0, 5.0],       # a quarter of object 0 (IoU 0.25)
                            [0.0, 0.0, 10.0, 4.0],      # 40 % of object 0 (IoU 0.4)
                            [0.0, 0.0, 10.0, 5.0]])     # half of object 0 (IoU 0.5: counts)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [21.0, 21.0, 30.0, 30.0]])
    concepts = torch.tensor([3, 7])
    assert true_concepts(regions, boxes, concepts).tolist() == [3, 7, -1, -1, 3]
    assert true_concepts(regions, boxes, concepts, iou=0.35).tolist() == [3, 7, -1, 3, 3]
    assert true_concepts(regions, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)).tolist() \
        == [-1] * 5


def test_label_targets_scale_and_classes():
    boxes = [{"boxes": np.array([[1.0, 2.0, 5.0, 6.0], [0.0, 0.0, 4.0, 4.0]], np.float32),
              "classes": np.array([1, 0])}]
    concepts = ["shape", "circle", "star", "grass"]
    out = label_targets(boxes, ["circle", "star"], concepts, ["circle", "star"], scale=2.0)
    assert out[0]["gt_boxes"].tolist() == [[2.0, 4.0, 10.0, 12.0], [0.0, 0.0, 8.0, 8.0]]
    assert out[0]["gt_concepts"].tolist() == [2, 1]
    base = label_targets(boxes, ["circle", "star"], concepts, ["circle"])
    assert base[0]["gt_boxes"].tolist() == [[0.0, 0.0, 4.0, 4.0]]
    assert base[0]["gt_concepts"].tolist() == [1]
    with pytest.raises(ValueError, match=r"no concept \['star'\]"):
        label_targets(boxes, ["circle", "star"], ["circle"], ["circle", "star"])


def test_true_label_settings_are_checked():
    with pytest.raises(ValueError, match="TRUE_LABELS must be"):
        load_settings("micro", ["PRETRAIN.TRUE_LABELS", "novel"])
    with pytest.raises(ValueError, match="choose one"):
        load_settings("micro", ["PRETRAIN.TRUE_LABELS", "all", "PRETRAIN.TEACHER_CROPS", "True"])


@pytest.mark.slow
def test_true_label_model_replaces_the_labels_of_regions_on_objects(crop_run):
    _, out = crop_run
    settings = load_settings("micro", ["NUM_THREADS", "1", "PRETRAIN.TRUE_LABELS", "all"])
    model, cfg = _control_model(settings, out, TrueLabelPretrainFastRCNN)
    world = World(os.path.join(out, "world"))
    with open(os.path.join(out, "pretrain", "concepts.txt")) as f:
        concepts = [line.strip() for line in f if line.strip()]
    images = world.images("captions")
    size = cfg.INPUT.MAX_SIZE_TRAIN
    targets = label_targets(world.boxes("captions_all"), world.class_names, concepts,
                            world.class_names, size / images.shape[1])
    batch = next(pretrain_batches(images, torch.zeros(len(images), 1, 77, dtype=torch.long), 4,
                                  0, size=size, targets=targets))
    with torch.no_grad():
        imgs = model.preprocess_image(batch)
        proposals = model.get_region_proposals(batch, imgs)
        # regions: each image's objects (exact boxes) and its RPN proposals
        proposals = [Instances(p.image_size, proposal_boxes=Boxes(
            torch.cat([x["gt_boxes"], p.proposal_boxes.tensor])), true_concept=torch.cat(
            [x["gt_concepts"], p.true_concept])) for p, x in zip(proposals, batch)]
        keep, labels, q = model.pseudo_labels(imgs, proposals)
        t_keep, t_labels, t_q = PretrainFastRCNN.pseudo_labels(model, imgs, proposals)
    true = torch.cat([p.true_concept for p in proposals])
    # cross-check the matching with torchvision's IoU: regions on an object get its concept
    for p, x in zip(proposals, batch):
        iou = box_iou(p.proposal_boxes.tensor, x["gt_boxes"])
        best, index = iou.max(dim=1)
        expected = torch.where(best >= 0.5, x["gt_concepts"][index], -1)
        assert torch.equal(p.true_concept, expected)
    hit = true >= 0
    assert hit.sum() >= sum(len(x["gt_boxes"]) for x in batch) > 0
    position = {int(k): i for i, k in enumerate(keep)}
    for r in range(len(true)):
        if hit[r]:
            i = position[r]
            assert labels[i] == true[r] and q[i, true[r]] == 1.0 and q[i].sum() == 1.0
    teacher_at = {int(k): i for i, k in enumerate(t_keep)}
    for r in set(teacher_at) - set(int(k) for k in torch.nonzero(hit).flatten()):
        assert labels[position[r]] == t_labels[teacher_at[r]]
        assert torch.equal(q[position[r]], t_q[teacher_at[r]])
    assert (~hit).any()  # some regions keep the teacher's labels
    # negative control: the micro teacher is wrong on some object regions, so the control
    # changes labels (the checks above could fail)
    wrong = [r for r in teacher_at if hit[r] and t_labels[teacher_at[r]] != true[r]]
    assert wrong
    with pytest.raises(KeyError, match="gt_boxes"):
        model.get_region_proposals([{k: v for k, v in batch[0].items() if k != "gt_boxes"}],
                                   imgs)


@pytest.mark.slow
def test_true_label_pretraining_runs_from_the_pipeline(crop_run, tmp_path):
    _, out = crop_run
    run = str(tmp_path / "run")
    os.makedirs(run)
    for stage in ("world", "clip", "rpn"):
        shutil.copytree(os.path.join(out, stage), os.path.join(run, stage))
    settings = load_settings("micro", ["NUM_THREADS", "1", "PRETRAIN.TRUE_LABELS", "base"])
    run_pipeline(settings, run, stages=["pretrain"], progress=False)
    config = open(os.path.join(run, "pretrain", "config.yaml")).read()
    assert "TrueLabelPretrainFastRCNN" in config
    losses = json.load(open(os.path.join(run, "pretrain", "metrics.json")))["loss"]
    assert all(np.isfinite(v) for step in losses for v in step.values())
    teacher = read_torch_file(os.path.join(run, "clip", "clip.pth"))
    student = read_torch_file(os.path.join(run, "pretrain", "student_clip.pth"))
    changed = [k for k in teacher if k.startswith("visual.layer4")
               and not torch.equal(teacher[k], student[k])]
    assert changed  # the student learned from the right labels
