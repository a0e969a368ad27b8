"""regionclip.formats: the HF pipeline's dicts, supervision.Detections and COCO results, field by
field; supervision's own methods on the converted detections; COCO results read back by
tools/visualize_json_results.py; the converters on real detector output."""
import json
import os
import sys
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from tiny_detector import write_images

from regionclip.data.datasets.lvis_ovd import load_custom_images
from regionclip.formats import (
    category_ids_from_metadata,
    to_coco,
    to_hf_pipeline,
    to_supervision,
)
from regionclip.tools import visualize_json_results as vj

VOCAB = ["cat", "remote control", "sofa"]
# as RegionCLIP.detect returns them (best first); the last two are out of order on purpose
DETS = [
    {"box": [10.7, 20.2, 30.9, 40.99], "label": "sofa", "score": 0.9},
    {"box": [0.0, 0.5, 5.5, 6.0], "label": "cat", "score": 0.8},
    {"box": [1.25, 2.5, 3.75, 9.0], "label": "remote control", "score": 0.3},
    {"box": [50.0, 60.0, 70.2, 99.9], "label": "cat", "score": 0.6},
]


def _instances(dets, vocab, hw=(120, 100)):
    inst = Instances(hw)
    inst.pred_boxes = Boxes(torch.tensor([d["box"] for d in dets], dtype=torch.float32))
    inst.scores = torch.tensor([d["score"] for d in dets], dtype=torch.float32)
    inst.pred_classes = torch.tensor([vocab.index(d["label"]) for d in dets])
    return inst


# ------------------------------------------------------------------ HF pipeline
def test_hf_pipeline_fields_types_truncation_and_order():
    out = to_hf_pipeline(DETS)
    assert [list(d) for d in out] == [["score", "label", "box"]] * 4
    assert [d["score"] for d in out] == [0.9, 0.8, 0.6, 0.3]  # sorted, the 0.6 moved up
    assert [d["label"] for d in out] == ["sofa", "cat", "cat", "remote control"]
    assert out[0]["box"] == {"xmin": 10, "ymin": 20, "xmax": 30, "ymax": 40}  # truncated, not
    assert out[2]["box"] == {"xmin": 50, "ymin": 60, "xmax": 70, "ymax": 99}  # rounded (30.9)
    for d in out:
        assert type(d["score"]) is float and type(d["label"]) is str
        assert list(d["box"]) == ["xmin", "ymin", "xmax", "ymax"]
        assert all(type(v) is int for v in d["box"].values())
    json.dumps(out)  # plain json types
    assert to_hf_pipeline(DETS, top_k=2) == out[:2]
    assert to_hf_pipeline([]) == []


def test_hf_pipeline_ties_keep_the_input_order():
    dets = [{"box": [0, 0, 1, 1], "label": n, "score": 0.5} for n in ("a", "b", "c")]
    assert [d["label"] for d in to_hf_pipeline(dets)] == ["a", "b", "c"]


def test_instances_with_vocabulary_equal_detect_output():
    inst = _instances(DETS, VOCAB)
    from_inst = to_hf_pipeline(inst, VOCAB)
    assert [(d["label"], d["box"]) for d in from_inst] == \
        [(d["label"], d["box"]) for d in to_hf_pipeline(DETS)]
    np.testing.assert_allclose([d["score"] for d in from_inst], [0.9, 0.8, 0.6, 0.3], rtol=1e-6)
    assert to_hf_pipeline({"instances": inst}, VOCAB) == from_inst  # a model output dict
    with pytest.raises(ValueError, match="pass vocabulary="):
        to_hf_pipeline(inst)
    with pytest.raises(ValueError, match=r"pred_classes \[2\] are not indices of the vocabulary "
                       "of 2 names"):
        to_hf_pipeline(inst, VOCAB[:2])


@pytest.mark.parametrize("bad, match", [
    ([{"box": [0, 0, 1, 1], "score": 0.5}], "detection 0: expected a dict with keys"),
    ([{"box": [0, 0, 1], "label": "a", "score": 0.5}], "detection 0: expected 'box' = 4 finite"),
    ([{"box": [0, 0, 1, "x"], "label": "a", "score": 0.5}], "detection 0: expected 'box'"),
    ([{"box": [0, 0, 1, 1], "label": "a", "score": float("nan")}], "finite 'score'"),
    ({"box": [0, 0, 1, 1], "label": "a", "score": 0.5}, "detections must be the list"),
    ("cat", "detections must be the list"),
])
def test_bad_detections_are_named(bad, match):
    for convert in (to_hf_pipeline, lambda d: to_coco(d, 0, VOCAB)):
        with pytest.raises(ValueError, match=match):
            convert(bad)


# ------------------------------------------------------------------ supervision
try:
    import supervision as sv
except ImportError:  # optional: make install installs it (the [test] extra)
    sv = None
needs_sv = pytest.mark.skipif(sv is None, reason="supervision is not installed "
                              "(pip install supervision)")


@needs_sv
def test_supervision_fields():
    det = to_supervision(DETS, VOCAB + ["cat"])  # a repeated name counts once, as in detect
    assert isinstance(det, sv.Detections) and len(det) == 4
    np.testing.assert_allclose(det.xyxy, [d["box"] for d in DETS], rtol=1e-6)
    assert det.xyxy.dtype == np.float32 and det.confidence.dtype == np.float32
    np.testing.assert_allclose(det.confidence, [0.9, 0.8, 0.3, 0.6], rtol=1e-6)
    assert det.class_id.tolist() == [2, 0, 1, 0]
    assert det.data["class_name"].tolist() == ["sofa", "cat", "remote control", "cat"]
    assert det.mask is None and det.tracker_id is None
    # without a vocabulary: ids in the order labels first appear
    assert to_supervision(DETS).class_id.tolist() == [0, 1, 2, 1]
    with pytest.raises(ValueError, match=r"labels \['sofa'\] are not in the vocabulary"):
        to_supervision(DETS, ["cat", "remote control"])


@needs_sv
def test_supervision_methods_keep_class_names():
    det = to_supervision(DETS, VOCAB)
    kept = det[det.confidence > 0.5]
    assert kept.data["class_name"].tolist() == ["sofa", "cat", "cat"]
    assert kept.class_id.tolist() == [2, 0, 0]
    np.testing.assert_allclose(kept.xyxy[2], DETS[3]["box"], rtol=1e-6)
    cats = det[det.data["class_name"] == "cat"]
    np.testing.assert_allclose(cats.confidence, [0.8, 0.6], rtol=1e-6)
    assert det["class_name"].tolist() == det.data["class_name"].tolist()  # __getitem__(str)
    # NMS of supervision: two overlapping cats, the weaker one goes
    dup = [DETS[1], {"box": [0.5, 0.5, 5.5, 6.0], "label": "cat", "score": 0.4}, DETS[0]]
    nms = to_supervision(dup, VOCAB).with_nms(threshold=0.5)
    np.testing.assert_allclose(nms.confidence, [0.8, 0.9], rtol=1e-6)  # input order
    assert nms.data["class_name"].tolist() == ["cat", "sofa"]
    np.testing.assert_allclose(nms.xyxy[0], DETS[1]["box"], rtol=1e-6)
    merged = sv.Detections.merge([det, to_supervision(dup, VOCAB)])
    assert len(merged) == 7 and merged.data["class_name"][4] == "cat"


@needs_sv
def test_supervision_empty_and_instances():
    empty = to_supervision([], VOCAB)
    assert len(empty) == 0 and empty.xyxy.shape == (0, 4)
    assert len(empty[empty.confidence > 0.5]) == 0
    det = to_supervision(_instances(DETS, VOCAB), VOCAB)
    assert det.data["class_name"].tolist() == ["sofa", "cat", "remote control", "cat"]
    assert det.class_id.tolist() == [2, 0, 1, 0]


def test_supervision_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)  # import supervision raises
    with pytest.raises(ImportError, match="pip install supervision"):
        to_supervision(DETS, VOCAB)


# ------------------------------------------------------------------ COCO
def test_coco_fields():
    out = to_coco(DETS, image_id=7, vocabulary=VOCAB)
    assert [list(d) for d in out] == [["image_id", "category_id", "bbox", "score"]] * 4
    assert [d["category_id"] for d in out] == [3, 1, 2, 1]  # index + 1
    np.testing.assert_allclose(out[0]["bbox"], [10.7, 20.2, 20.2, 20.79], rtol=1e-9)
    np.testing.assert_allclose(out[2]["bbox"], [1.25, 2.5, 2.5, 6.5], rtol=1e-9)
    assert [d["score"] for d in out] == [0.9, 0.8, 0.3, 0.6]  # input order
    assert {d["image_id"] for d in out} == {7}
    ids = {"cat": 17, "remote control": 75, "sofa": 63}
    assert [d["category_id"] for d in to_coco(DETS, "img.jpg", category_ids=ids)] == \
        [63, 17, 75, 17]
    with pytest.raises(ValueError, match="needs vocabulary="):
        to_coco(DETS, 0)
    with pytest.raises(ValueError, match=r"labels \['remote control'\] have no category id"):
        to_coco(DETS, 0, category_ids={"cat": 1, "sofa": 2})


def test_category_ids_from_metadata():
    name = f"test_fmt_meta_{uuid.uuid4().hex}"
    meta = MetadataCatalog.get(name).set(thing_classes=VOCAB,
                                         thing_dataset_id_to_contiguous_id={5: 0, 9: 1, 2: 2})
    assert category_ids_from_metadata(meta) == {"cat": 5, "remote control": 9, "sofa": 2}
    lvis = MetadataCatalog.get(name + "_lvis").set(thing_classes=VOCAB)
    assert category_ids_from_metadata(lvis) == {"cat": 1, "remote control": 2, "sofa": 3}
    with pytest.raises(ValueError, match="has no thing_classes"):
        category_ids_from_metadata(MetadataCatalog.get(name + "_empty"))


def test_coco_results_round_trip_through_visualize_json_results(tmp_path):
    """detect output -> to_coco -> results json -> tools/visualize_json_results.py draws the
    same boxes with the same class names, for a dataset with non-contiguous category ids."""
    images = tmp_path / "imgs"
    write_images(str(images), [("a.png", (120, 100)), ("b.png", (80, 90))])
    name = f"test_fmt_rt_{uuid.uuid4().hex}"
    DatasetCatalog.register(name, lambda: load_custom_images(str(images)))
    meta = MetadataCatalog.get(name).set(thing_classes=VOCAB,
                                         thing_dataset_id_to_contiguous_id={11: 0, 4: 1, 30: 2})
    ids = category_ids_from_metadata(meta)
    per_image = {0: DETS, 1: DETS[1:2]}
    results = [r for image_id, dets in per_image.items() for r in to_coco(dets, image_id,
                                                                          category_ids=ids)]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    drawn = vj.visualize_json_results(str(path), str(tmp_path / "out"), name,
                                      conf_threshold=0.0, progress=False)
    by_name = {os.path.basename(p): kept for p, kept in drawn.items()}
    to_contiguous = vj.category_mapper(meta, name)
    for file_name, image_id, hw in (("a.png", 0, (120, 100)), ("b.png", 1, (80, 90))):
        expected = sorted(per_image[image_id], key=lambda d: -d["score"])
        inst = vj.create_instances(by_name[file_name], hw, to_contiguous)
        np.testing.assert_allclose(inst.pred_boxes.tensor.numpy(),
                                   [d["box"] for d in expected], atol=1e-4)
        assert [VOCAB[c] for c in inst.pred_classes] == [d["label"] for d in expected]
        np.testing.assert_allclose(inst.scores, [d["score"] for d in expected])
    assert os.path.isfile(tmp_path / "out" / "a.png")


# ------------------------------------------------------------------ real detector output
@pytest.fixture(scope="module")
def toy_detections(tmp_path_factory):
    from toyworld.demo import DEFAULT_PACKAGE, ToyRegionCLIP
    from toyworld.scenes import SceneSpec, draw_scene
    from toyworld.weights import unpack_detector

    files = unpack_detector(DEFAULT_PACKAGE, str(tmp_path_factory.mktemp("toy")))
    rc = ToyRegionCLIP.from_config(files["config"], weights=files["weights"])
    image = draw_scene(np.random.default_rng(3), SceneSpec(image_size=(128, 160))).image
    vocab = ["star", "circle", "red square", "heart"]
    return image, vocab, rc.detect(image, vocab, score_threshold=0.1)


@needs_sv
def test_converters_agree_on_detector_output(toy_detections):
    image, vocab, dets = toy_detections
    assert len(dets) >= 3  # the checks below are not vacuous
    h, w = image.shape[:2]
    hf = to_hf_pipeline(dets)
    assert [d["score"] for d in hf] == sorted((d["score"] for d in dets), reverse=True)
    for d, ref in zip(hf, sorted(dets, key=lambda d: -d["score"])):
        assert d["label"] == ref["label"] and d["label"] in vocab
        assert list(d["box"].values()) == [int(v) for v in ref["box"]]
        assert 0 <= d["box"]["xmin"] <= d["box"]["xmax"] <= w
        assert 0 <= d["box"]["ymin"] <= d["box"]["ymax"] <= h
    det = to_supervision(dets, vocab)
    assert [vocab[c] for c in det.class_id] == det.data["class_name"].tolist() == \
        [d["label"] for d in dets]
    coco = to_coco(dets, 0, vocab)
    np.testing.assert_allclose([c["bbox"][2] for c in coco],
                               [d["box"][2] - d["box"][0] for d in dets], rtol=1e-6)
    assert [c["category_id"] for c in coco] == [vocab.index(d["label"]) + 1 for d in dets]
