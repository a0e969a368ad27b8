"""Bad inputs get a clear error or are skipped and counted, never a silently wrong result: boxes,
score thresholds, repeated and over-long names, elongated and 16-bit images, null captions,
damaged WebDataset shards and images missing from a captions file."""
import io
import json
import logging
import math
import os

import numpy as np
import pytest
import torch
from _image_text_data import captions_field, make_samples, write_tsv_pair, write_wds_shards
from conftest import REPO
from PIL import Image
from tiny_clip import TINY_OPTS, write_tiny_clip

from regionclip import RegionCLIP

ZS = os.path.join(REPO, "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd_zsinf.yaml")
W, H = 120, 80


@pytest.fixture(scope="module")
def rc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    arch, weights = write_tiny_clip(str(folder))
    return RegionCLIP.from_config(ZS, weights=weights, opts=TINY_OPTS + [
        "MODEL.CLIP.ARCH", arch, "MODEL.CLIP.CROP_REGION_TYPE", "GT",
        "MODEL.CLIP.TEXT_EMB_PATH", "", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160"])


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


BAD_BOXES = {
    "nan": ([10, 10, float("nan"), 50], "non-finite"),
    "inf": ([10, 10, float("inf"), 50], "non-finite"),
    "inverted": ([60, 10, 20, 50], "inverted"),
    "zero-area": ([20, 10, 20, 50], "zero area"),
    "out-of-image": ([W + 5, 10, W + 40, 50], "outside the image"),
}
ENTRY_POINTS = {
    "detect": lambda rc, img, boxes: rc.detect(img, ["cat", "dog"], boxes=boxes),
    "encode_regions": lambda rc, img, boxes: rc.encode_regions(img, boxes),
    "encode_crops": lambda rc, img, boxes: rc.encode_crops(img, boxes),
}


@pytest.mark.parametrize("bad", list(BAD_BOXES))
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_bad_boxes_are_errors_naming_box_and_image_size(rc, image, entry, bad):
    box, reason = BAD_BOXES[bad]
    boxes = [[5, 5, 30, 30], box]
    with pytest.raises(ValueError) as info:
        ENTRY_POINTS[entry](rc, image, boxes)
    message = str(info.value)
    assert reason in message and f"box 1 {[float(v) for v in box]}" in message, message
    assert f"{W}x{H}" in message


def test_partly_outside_box_is_the_clipped_box(rc, image):
    inside = rc.encode_regions(image, [[30, 20, W, H]])
    partly = rc.encode_regions(image, [[30, 20, W + 30, H + 30]])
    torch.testing.assert_close(partly, inside)


def _write_image(path, array):
    Image.fromarray(array).save(path)
    return str(path)


@pytest.mark.parametrize("bad", list(BAD_BOXES))
def test_demo_boxes_json_is_checked_against_each_image(tmp_path, image, bad):
    from regionclip.tools.demo import load_boxes_json

    path = _write_image(tmp_path / "photo.png", image)
    box, reason = BAD_BOXES[bad]
    table = tmp_path / "boxes.json"
    table.write_text(json.dumps({"photo.png": [[5, 5, 30, 30], box]}))  # NaN, Infinity: json5
    with pytest.raises(ValueError) as info:
        load_boxes_json(str(table), [path])
    message = str(info.value)
    assert str(table) in message and "photo.png" in message and reason in message
    assert f"box 1 {[float(v) for v in box]}" in message and f"{W}x{H}" in message


@pytest.mark.parametrize("threshold", [1.5, float("nan"), -0.5, "0.5", True])
def test_score_threshold_must_be_a_number_in_0_1(rc, image, threshold):
    with pytest.raises((ValueError, TypeError), match="score_threshold"):
        rc.detect(image, ["cat"], boxes=[[5, 5, 30, 30]], score_threshold=threshold)


@pytest.mark.parametrize("threshold", ["1.5", "nan", "-0.5"])
def test_demo_score_threshold_is_checked_first(tmp_path, image, threshold):
    from regionclip.tools.demo import run

    path = _write_image(tmp_path / "photo.png", image)
    with pytest.raises(ValueError, match="--score-threshold"):
        run(["--input", path, "--vocabulary", "cat", "--output", str(tmp_path / "out"),
              "--weights", str(tmp_path / "never_read.pth"), "--score-threshold", threshold])


def test_repeated_names_are_kept_once_as_on_the_command_line(rc, image, caplog):
    boxes = [[5, 5, 60, 60], [40, 20, 110, 75]]
    once = rc.detect(image, ["cat", "dog"], boxes=boxes, score_threshold=0.0)
    with caplog.at_level(logging.WARNING):
        twice = rc.detect(image, ["cat", "dog", "cat"], boxes=boxes, score_threshold=0.0)
    assert "repeated names kept once" in caplog.text
    assert [(d["label"], d["box"]) for d in twice] == [(d["label"], d["box"]) for d in once]
    for a, b in zip(once, twice):
        assert math.isclose(a["score"], b["score"], rel_tol=1e-6)


def test_over_long_names_are_warned_about_once(rc, caplog):
    long_name = " ".join(["supercalifragilistic"] * 40)
    with caplog.at_level(logging.WARNING):
        rc.encode_text([long_name, "cat"])
        rc.encode_text([long_name], prompt_ensemble=False)
    warnings = [r.getMessage() for r in caplog.records if "longer than 77 tokens" in r.getMessage()]
    assert len(warnings) == 1 and "supercalifragilistic" in warnings[0]
    assert "cat'" not in warnings[0]


@pytest.mark.parametrize("size", [(1, 3000), (3000, 1)])
def test_extremely_elongated_images_work_in_the_api(rc, size):
    h, w = size
    image = np.full((h, w, 3), 128, np.uint8)
    emb = rc.encode_regions(image, [[0, 0, w, h]])
    assert emb.shape == (1, 64) and torch.isfinite(emb).all()
    dets = rc.detect(image, ["cat", "dog"], boxes=[[0, 0, w, h]], score_threshold=0.0)
    assert dets and all(np.allclose(d["box"], [0, 0, w, h], atol=1e-3) for d in dets)


def _png16(path, value, size=(40, 30)):
    array = np.full(size[::-1], value, np.uint16)
    Image.fromarray(array).save(path)  # mode I;16
    return str(path)


def test_16bit_png_is_scaled_to_8_bits_in_the_api_and_demo(tmp_path):
    from regionclip.api import read_rgb_image

    path = _png16(tmp_path / "gray16.png", 32896)  # 128 * 257: mid-gray
    with Image.open(path) as img:
        assert img.mode.startswith("I")
    rgb = read_rgb_image(path)  # the API's and the demo's reader
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
    assert np.all(rgb == 128)


def test_16bit_png_is_scaled_to_8_bits_in_pretraining(tmp_path):
    from detectron2_ext.data import decode_image_bytes

    buffer = io.BytesIO()
    Image.fromarray(np.full((30, 40), 16448, np.uint16)).save(buffer, format="PNG")  # 64 * 257
    image, reason = decode_image_bytes(buffer.getvalue())
    assert reason is None and np.all(np.asarray(image) == 64)


def test_pretraining_skips_and_counts_images_too_elongated_to_resize(tmp_path):
    from detectron2_ext.data import ImageTextTSVDataset
    from regionclip.data.pretrain import CaptionDecoder, PretrainTransform

    rows = [(k, img, captions_field(caps)) for k, img, caps in make_samples(3)]
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((1, 400, 3), np.uint8)).save(buffer, format="PNG")
    rows.insert(1, ("sliver", buffer.getvalue(), captions_field(["a thin line"])))
    image_tsv, text_tsv = write_tsv_pair(str(tmp_path), "a.image.tsv", "a.text.tsv", rows)
    dataset = ImageTextTSVDataset(image_tsv, text_tsv, PretrainTransform(64, 96), CaptionDecoder())
    items = [dataset[i] for i in range(len(dataset))]
    assert items[1] is None and dataset.num_skipped == 1
    assert all(item["image"].shape[0] == 3 for i, item in enumerate(items) if i != 1)


@pytest.mark.parametrize("text", ["null", '{"captions": null}', '{"tags": null}',
                                  '{"captions": [null]}'])
def test_null_captions_are_skipped_and_counted(tmp_path, text):
    from detectron2_ext.data import ImageTextTSVDataset
    from regionclip.data.pretrain import CaptionDecoder, parse_text_field

    assert parse_text_field(text) == []
    assert parse_text_field('{"captions": [null, "a dog"]}') == ["a dog"]
    rows = [(k, img, captions_field(caps)) for k, img, caps in make_samples(2)]
    rows.append(("nocap", rows[0][1], text))
    image_tsv, text_tsv = write_tsv_pair(str(tmp_path), "a.image.tsv", "a.text.tsv", rows)
    dataset = ImageTextTSVDataset(image_tsv, text_tsv, None, CaptionDecoder())
    assert dataset[2] is None and dataset.num_skipped == 1


def _damaged_shards(tmp_path):
    samples = make_samples(6)
    records = [{"__key__": k, "png": img, "txt": caps[0]} for k, img, caps in samples]
    shards = write_wds_shards(str(tmp_path / "shards"), records, per_shard=3)
    data = open(shards[1], "rb").read()
    with open(shards[1], "wb") as f:
        f.write(data[:len(data) // 2])  # cut in the middle of a member
    return shards


def test_webdataset_read_errors_are_counted(tmp_path, caplog):
    pytest.importorskip("webdataset")
    from detectron2_ext.data import WebDatasetImageText
    from regionclip.data.pretrain import CaptionDecoder

    shards = _damaged_shards(tmp_path)
    dataset = WebDatasetImageText(shards, decode_text=CaptionDecoder(), repeat=False,
                                  shuffle=False)
    with caplog.at_level(logging.WARNING):
        items = [item for item in dataset if item is not None]
    assert 3 <= len(items) < 6
    counted = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipping")]
    assert any("read error" in m and "shard-00001.tar" in m for m in counted), counted
    assert dataset.num_skipped == len(counted)


def test_make_image_text_dataset_counts_read_errors(tmp_path):
    pytest.importorskip("webdataset")
    from regionclip.tools.make_image_text_dataset import convert

    _damaged_shards(tmp_path)
    with pytest.raises(ValueError, match="read error"):
        convert(str(tmp_path / "shards"), str(tmp_path / "out"), progress=False)
    summary = convert(str(tmp_path / "shards"), str(tmp_path / "out"), skip_missing=True,
                      progress=False)
    assert any("read error" in p and "shard-00001.tar" in p for p in summary["problems"])


def test_make_image_text_dataset_reports_images_missing_from_the_captions(tmp_path):
    from regionclip.tools.make_image_text_dataset import convert

    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        _write_image(images / name, np.zeros((8, 8, 3), np.uint8))
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"a.png": "a black square", "b.png": None,
                                    "c.png": ["a square", None]}))
    (images / "extra.png").write_bytes((images / "a.png").read_bytes())
    with pytest.raises(ValueError, match="extra.png"):
        convert(str(images), str(tmp_path / "out"), str(captions), progress=False)
    summary = convert(str(images), str(tmp_path / "out"), str(captions), skip_missing=True,
                      progress=False)
    assert summary["written"] == 2  # a.png and c.png; b.png has a null caption
    problems = " | ".join(summary["problems"])
    assert "extra.png" in problems and "b.png" in problems and len(summary["problems"]) == 2
