"""tools/demo.py: vocabularies, inputs, pictures + json from the Python API, bad inputs."""
import json
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_detector import CUSTOM, independent_features, tiny_detector_opts, write_images

from regionclip.api import RegionCLIP
from regionclip.tools import demo

VOCAB = ["cat", "dog", "remote control"]
# non-overlapping boxes: per-class NMS cannot remove a box's best class
BOXES = [[2, 2, 50, 40], [60, 4, 124, 44], [8, 50, 60, 94], [70, 52, 126, 92]]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    opts, weights = tiny_detector_opts(str(root))
    images = write_images(str(root / "images"), [("a.jpg", (96, 128)), ("b.png", (96, 128))])
    detector = RegionCLIP.from_config(CUSTOM, weights=weights, opts=opts)
    return {"root": root, "opts": opts, "weights": weights, "images": images,
            "detector": detector}


def test_vocabulary_from_words_files_and_names(tmp_path, caplog):
    txt = tmp_path / "names.txt"
    txt.write_text("zebra\n  traffic light \n")
    assert demo.resolve_vocabulary(["cat", str(txt), "dog"]) == ["cat", "zebra", "traffic light",
                                                                 "dog"]
    coco = demo.resolve_vocabulary(["coco"])
    assert len(coco) == 80 and coco[0] == "person"
    assert len(demo.resolve_vocabulary(["coco_65"])) == 65
    assert len(demo.resolve_vocabulary(["lvis"])) == 1203
    assert demo.resolve_vocabulary(["cat", "dog", "cat"]) == ["cat", "dog"]
    assert "repeated" in caplog.text


@pytest.mark.parametrize("items, error, match", [
    (["lvis_999"], KeyError, "unknown named vocabulary 'lvis_999'"),
    (["missing.txt"], FileNotFoundError, "missing.txt"),
    ([" "], ValueError, "empty class name"),
])
def test_bad_vocabularies(items, error, match):
    with pytest.raises(error, match=match):
        demo.resolve_vocabulary(items)


def test_empty_vocabulary_file(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt: no concepts"):
        demo.resolve_vocabulary([str(tmp_path / "empty.txt")])


def test_images_from_files_and_folders(world, tmp_path):
    folder = os.path.dirname(world["images"][0])
    assert demo.list_images([folder]) == world["images"]
    assert demo.list_images([world["images"][1]]) == [world["images"][1]]
    with pytest.raises(FileNotFoundError, match="image '.*nope.jpg' does not exist"):
        demo.list_images([str(tmp_path / "nope.jpg")])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="could not decode image '.*broken.jpg'"):
        demo.list_images([str(tmp_path / "broken.jpg")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no image file"):
        demo.list_images([str(tmp_path / "empty")])


def test_boxes_json_by_path_or_file_name(world, tmp_path):
    a, b = world["images"]
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({a: BOXES[:2], "b.png": BOXES[2:]}))
    boxes = demo.load_boxes_json(str(path), [a, b])
    np.testing.assert_array_equal(boxes[b], np.asarray(BOXES[2:], dtype=np.float32))
    path.write_text(json.dumps({a: BOXES}))
    with pytest.raises(ValueError, match="no boxes for image '.*b.png'"):
        demo.load_boxes_json(str(path), [a, b])
    path.write_text(json.dumps({a: [[1, 2, 3]]}))
    with pytest.raises(ValueError, match="expected a non-empty list"):
        demo.load_boxes_json(str(path), [a])


def test_given_boxes_get_their_best_class_and_pictures_are_written(world, tmp_path):
    detector, images = world["detector"], world["images"]
    boxes = {img: np.asarray(BOXES, dtype=np.float32) for img in images}
    results = demo.run_demo(detector, images, VOCAB, str(tmp_path), score_threshold=0.0,
                            boxes=boxes, progress=False)
    assert json.loads((tmp_path / "detections.json").read_text()) == results
    assert list(results) == images
    text = F.normalize(detector.encode_text(VOCAB), dim=1)
    for image in images:
        assert cv2.imread(str(tmp_path / os.path.basename(image))).shape == (96, 128, 3)
        dets = results[image]
        assert dets and all(d["label"] in VOCAB and 0 <= d["score"] <= 1 for d in dets)
        scores = [d["score"] for d in dets]
        assert scores == sorted(scores, reverse=True)
        rgb = np.asarray(Image.open(image).convert("RGB")).transpose(2, 0, 1).copy()
        feats = F.normalize(independent_features(detector.model, rgb, BOXES), dim=1)
        logits = torch.cat([feats @ text.t() / 0.01, torch.zeros(len(BOXES), 1)], dim=1)
        probs = logits.softmax(dim=1)[:, :-1]  # background (zero embedding) last, dropped
        expected = {(b, c): probs[b, c].item() for b in range(len(BOXES))
                    for c in range(len(VOCAB)) if probs[b, c] > 0}
        got = {(BOXES.index([round(v) for v in d["box"]]), VOCAB.index(d["label"])): d["score"]
               for d in dets}
        assert got.keys() == expected.keys()
        for key, score in got.items():
            assert score == pytest.approx(expected[key], rel=1e-3, abs=0)


def test_rpn_regions(world, tmp_path):
    detector, image = world["detector"], world["images"][:1]
    dets = demo.run_demo(detector, image, VOCAB, str(tmp_path), score_threshold=0.0,
                         progress=False)[image[0]]
    assert dets and all(d["label"] in VOCAB for d in dets)
    boxes = np.asarray([d["box"] for d in dets])
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 128).all() and (boxes[:, [1, 3]] <= 96).all()


def test_an_rpn_without_proposals_gives_no_detection(world, monkeypatch):
    detector, image = world["detector"], world["images"][0]
    from detectron2.structures import Boxes, Instances

    def nothing(images, input_format):
        return [Instances(tuple(x.shape[-2:]), proposal_boxes=Boxes(torch.zeros(0, 4)),
                          objectness_logits=torch.zeros(0)) for x in images]

    monkeypatch.setattr(detector.model, "offline_proposals", nothing)
    assert detector.detect(image, VOCAB, score_threshold=0.0) == []


def test_score_threshold_on_given_boxes(world, tmp_path):
    detector, image = world["detector"], world["images"][:1]
    boxes = {image[0]: np.asarray(BOXES, dtype=np.float32)}
    dets = demo.run_demo(detector, image, VOCAB, str(tmp_path), 0.0, boxes, False)[image[0]]
    cut = sorted(d["score"] for d in dets)[len(dets) // 2]
    fewer = demo.run_demo(detector, image, VOCAB, str(tmp_path), cut, boxes, False)[image[0]]
    assert fewer == [d for d in dets if d["score"] > cut]
    assert 0 < len(fewer) < len(dets)


def test_cli_end_to_end(world, tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("cat\ndog\n")
    out = tmp_path / "out"
    results = demo.run(["--input", os.path.dirname(world["images"][0]), "--vocabulary",
                         str(vocab), "bird", "--output", str(out), "--weights", world["weights"],
                         "--score-threshold", "0", "--device", "cpu", "--opts"] + world["opts"])
    assert sorted(os.listdir(out)) == ["a.jpg", "b.png", "detections.json"]
    assert {d["label"] for dets in results.values() for d in dets} <= {"cat", "dog", "bird"}


def test_cli_templates_file_changes_the_text_embeddings(world, tmp_path):
    templates = tmp_path / "templates.txt"
    templates.write_text("a sketch of a {}.\n\n{} seen from above\n")
    boxes = tmp_path / "boxes.json"
    image = world["images"][0]
    boxes.write_text(json.dumps({os.path.basename(image): BOXES}))
    args = ["--input", image, "--vocabulary"] + VOCAB + [
        "--weights", world["weights"], "--score-threshold", "0", "--boxes-json", str(boxes),
        "--device", "cpu"]
    custom = demo.run(args + ["--templates", str(templates), "--output", str(tmp_path / "t"),
                               "--opts"] + world["opts"])[image]
    default = demo.run(args + ["--output", str(tmp_path / "d"), "--opts"] + world["opts"])[image]
    # the same as the API with those two templates, and not the 81-template result
    expected = world["detector"].detect(image, VOCAB, boxes=BOXES, score_threshold=0.0,
                                        templates=["a sketch of a {}.", "{} seen from above"])
    assert [(d["label"], d["box"]) for d in custom] == [(d["label"], d["box"]) for d in expected]
    assert [d["score"] for d in custom] == pytest.approx([d["score"] for d in expected], rel=1e-5)
    assert [d["score"] for d in custom] != pytest.approx([d["score"] for d in default], rel=1e-3)


@pytest.mark.parametrize("case", ["empty_vocab", "missing_image", "undecodable", "unknown_vocab",
                                  "bad_templates", "empty_templates"])
def test_cli_errors_before_building_the_model(world, tmp_path, case, monkeypatch):
    def fail(*a, **k):
        raise AssertionError("the model must not be built")
    monkeypatch.setattr(RegionCLIP, "from_config", fail)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.png").write_bytes(b"garbage")
    (tmp_path / "bad_templates.txt").write_text("a photo of a {}.\na photo\n")
    (tmp_path / "empty_templates.txt").write_text("\n")
    vocab = {"empty_vocab": [str(tmp_path / "empty.txt")], "unknown_vocab": ["coco_99"]}.get(
        case, ["cat"])
    image = {"missing_image": str(tmp_path / "missing.jpg"),
             "undecodable": str(tmp_path / "bad.png")}.get(case, world["images"][0])
    expected = {"empty_vocab": (ValueError, "no concepts"),
                "missing_image": (FileNotFoundError, "missing.jpg' does not exist"),
                "undecodable": (ValueError, "could not decode image '.*bad.png'"),
                "unknown_vocab": (KeyError, "unknown named vocabulary 'coco_99'"),
                "bad_templates": (ValueError,
                                  r"bad_templates.txt': prompt template 1 \('a photo'\)"),
                "empty_templates": (ValueError, "empty_templates.txt' holds no template")}[case]
    templates = ["--templates", str(tmp_path / f"{case}.txt")] if "templates" in case else []
    with pytest.raises(expected[0], match=expected[1]):
        demo.run(["--input", image, "--vocabulary"] + vocab + templates
                  + ["--output", str(tmp_path / "o"), "--weights", world["weights"], "--opts"]
                  + world["opts"])
