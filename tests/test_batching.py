"""Batched inference: RegionCLIP.detect / encode_regions on a list of images equal one call per
image, with images of several sizes; the demo on a folder uses it."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_detector import CUSTOM, tiny_detector_opts, write_images

from regionclip import RegionCLIP
from regionclip.batching import check_batch_size, padded_key, plan_batches
from regionclip.tools import demo

VOCAB = ["cat", "dog", "remote control"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    opts, weights = tiny_detector_opts(str(root))
    # a, b (twice a's size) and the array e are resized to the same 96x128 input; c (96x120)
    # and the portrait d each have their own input size
    paths = write_images(str(root / "images"), [("a.png", (96, 128)), ("b.png", (192, 256)),
                                                ("c.png", (96, 120)), ("d.png", (150, 90))],
                         seed=5)
    array = np.asarray(Image.open(write_images(str(root / "more"), [("e.png", (96, 128))],
                                               seed=6)[0]))
    detector = RegionCLIP.from_config(CUSTOM, weights=weights, opts=opts)
    return {"root": root, "rc": detector, "images": paths + [array], "opts": opts,
            "weights": weights}


def _record_batches(monkeypatch, rc, method):
    sizes = []
    original = getattr(rc.model, method)

    def recording(batched_inputs, *args, **kwargs):
        sizes.append(len(batched_inputs))
        return original(batched_inputs, *args, **kwargs)

    monkeypatch.setattr(rc.model, method, recording)
    return sizes


def assert_same_dets(a, b):
    assert len(a) == len(b) > 0
    assert [d["label"] for d in a] == [d["label"] for d in b]
    np.testing.assert_allclose([d["score"] for d in a], [d["score"] for d in b], atol=1e-4)
    np.testing.assert_allclose([d["box"] for d in a], [d["box"] for d in b], atol=1e-3)


def test_plan_batches_groups_equal_keys_in_order():
    keys = ["x", "y", "x", "x", "z", "y", "x"]
    assert plan_batches(keys, 2) == [[0, 2], [3, 6], [1, 5], [4]]
    assert plan_batches(keys, 10) == [[0, 2, 3, 6], [1, 5], [4]]
    assert padded_key((96, 120), [0, 32]) == ((96, 120), (96, 128))
    assert padded_key((96, 128), [0, 32]) != padded_key((96, 120), [0, 32])
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        check_batch_size(0)


def test_detect_on_a_list_equals_one_by_one(world, monkeypatch):
    rc, images = world["rc"], world["images"]
    single = [rc.detect(image, VOCAB) for image in images]
    sizes = _record_batches(monkeypatch, rc, "inference")
    batched = rc.detect(images, VOCAB, batch_size=2)
    assert sizes == [2, 1, 1, 1]  # a, b: one input size; then e (same size) and c, d alone
    assert len(batched) == len(images)
    for a, b in zip(batched, single):
        assert_same_dets(a, b)
    sizes.clear()
    three = rc.detect([images[0], images[1], images[4]], VOCAB, batch_size=8)
    assert sizes == [3]
    for a, b in zip(three, [single[0], single[1], single[4]]):
        assert_same_dets(a, b)


def test_one_batch_of_images_of_different_sizes_would_change_results(world):
    """Negative control: why batches hold images of one size only (c padded to a's width)."""
    rc = world["rc"]
    a, c = (rc._prepare(world["images"][i])[0] for i in (0, 2))
    assert a["image"].shape != c["image"].shape
    emb = rc.encode_text(VOCAB)
    with torch.no_grad():
        alone = rc.model.inference([c], class_embeddings=emb)[0]["instances"]
        padded = rc.model.inference([a, c], class_embeddings=emb)[1]["instances"]
    assert len(alone) != len(padded) or not torch.allclose(alone.scores, padded.scores,
                                                           atol=1e-3)


def test_given_boxes_per_image(world, monkeypatch):
    rc, images = world["rc"], world["images"]
    boxes = [[[2, 2, 60, 40], [70, 10, 120, 80]], [[10, 10, 200, 150]], [[5, 5, 100, 90]],
             [[0, 0, 80, 140], [10, 20, 60, 60], [30, 30, 89, 149]], [[1, 1, 127, 95]]]
    single = [rc.detect(i, VOCAB, boxes=b, score_threshold=0.0) for i, b in zip(images, boxes)]
    sizes = _record_batches(monkeypatch, rc, "inference")
    batched = rc.detect(images, VOCAB, boxes=boxes, score_threshold=0.0, batch_size=4)
    assert max(sizes) == 3
    for a, b in zip(batched, single):
        assert_same_dets(a, b)
    with pytest.raises(ValueError, match="boxes must be a list of as many .* got 2 entries"):
        rc.detect(images, VOCAB, boxes=boxes[:2])
    with pytest.raises(ValueError, match="boxes of image 1: box 0 .* lies outside the image"):
        rc.detect(images[:2], VOCAB, boxes=[boxes[0], [[300, 300, 400, 400]]])
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        rc.detect(images, VOCAB, batch_size=0)
    with pytest.raises(ValueError, match="the list of images is empty"):
        rc.detect([], VOCAB)


def test_encode_regions_on_a_list_equals_one_by_one(world):
    rc, images = world["rc"], world["images"]
    boxes = [[[2, 2, 60, 40]], [[10, 10, 200, 150], [0, 0, 256, 192]], [[5, 5, 100, 90]],
             [[0, 0, 80, 140]], [[1, 1, 127, 95], [50, 40, 90, 80]]]
    single = [rc.encode_regions(i, b) for i, b in zip(images, boxes)]
    batched = rc.encode_regions(images, boxes, batch_size=3)
    assert [e.shape for e in batched] == [e.shape for e in single]
    for a, b in zip(batched, single):  # float32 sums of a batch: ~1e-6 of the embeddings' size
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    assert not torch.allclose(batched[0], batched[4][:1], atol=1e-2)  # regions told apart
    with pytest.raises(ValueError, match="encode_regions needs boxes"):
        rc.encode_regions(images, None)


def test_demo_on_a_folder_runs_in_batches(world, monkeypatch, tmp_path):
    rc = world["rc"]
    folder = str(world["root"] / "images")
    sizes = _record_batches(monkeypatch, rc, "inference")
    files = demo.list_images([folder])
    batched = demo.run_demo(rc, files, VOCAB, str(tmp_path / "b"), batch_size=4)
    assert sizes == [2, 1, 1]
    one = demo.run_demo(rc, files, VOCAB, str(tmp_path / "one"), batch_size=1, progress=False)
    for image in files:
        assert_same_dets(batched[image], one[image])
    assert json.loads((tmp_path / "b" / "detections.json").read_text()).keys() == set(files)
    with pytest.raises(ValueError, match="--batch-size must be >= 1, got 0"):
        demo.run(["--input", folder, "--vocabulary", "cat", "--output", str(tmp_path / "x"),
                  "--config-file", CUSTOM, "--weights", world["weights"], "--batch-size", "0",
                  "--opts"] + world["opts"])


def test_benchmark_row_batched_against_one_by_one(world):
    from regionclip.benchmark.deploy import batched_throughput

    row = batched_throughput(world["rc"], VOCAB, num_images=3, size=96, batch_size=2)
    assert row["images"] == 3 and row["image_size"] == "96x128" and row["batch_size"] == 2
    assert row["batched_img_per_s"] > 0 and row["one_by_one_img_per_s"] > 0
    assert row["speedup"] == pytest.approx(row["batched_img_per_s"] / row["one_by_one_img_per_s"])
    assert row["max_score_diff"] <= 1e-4 and row["max_box_diff_px"] <= 1e-3
