"""The crop-teacher control (toyworld.crop_teacher): crops cut exactly, and the teacher's pseudo
labels computed from crops instead of its feature map."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, ImageList, Instances
from toyworld.analysis import CROP_CONTEXT, pseudo_label_accuracy
from toyworld.crop_teacher import CropTeacherPretrainFastRCNN, crop_regions
from toyworld.pipeline import run_pipeline, stage_paths
from toyworld.pretrain import build_pretrain_model, pretrain_cfg
from toyworld.settings import load_settings
from toyworld.train_clip import normalize
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


@pytest.mark.slow
def test_crop_teacher_labels_regions_from_crops(crop_run):
    settings, out = crop_run
    paths = stage_paths(out)
    pool = os.path.join(out, "pretrain", "concept_emb.pth")
    cfg = pretrain_cfg(settings, paths["clip"], paths["rpn"], pool)
    assert cfg.MODEL.META_ARCHITECTURE == "CropTeacherPretrainFastRCNN"
    model = build_pretrain_model(cfg).eval()
    assert isinstance(model, CropTeacherPretrainFastRCNN)
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
