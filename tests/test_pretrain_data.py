"""Pretraining data: caption decoding, the transform, TSV/WebDataset datasets, the train loader."""
import io
import itertools
import json
import logging
import os
import random

import numpy as np
import pytest
import torch
from _image_text_data import (
    captions_field,
    make_samples,
    tiny_image,
    write_tsv_pair,
    write_wds_shards,
)
from conftest import REPO_PATH as REPO
from detectron2.config import get_cfg
from detectron2.data.samplers import TrainingSampler
from detectron2.utils.events import EventStorage
from PIL import Image

from detectron2_ext.data import (
    ImageTextTSVDataset,
    SkipCountingBatchLoader,
    WebDatasetImageText,
    discover_tsv_pairs,
    expand_dataset_entries,
    list_shards,
)
from regionclip.clip.prompts import PROMPT_TEMPLATES
from regionclip.clip.tokenizer import tokenize
from regionclip.config import add_regionclip_config
from regionclip.data.pretrain import (
    CaptionDecoder,
    PretrainTransform,
    build_pretrain_dataset,
    build_pretrain_train_loader,
    is_image_text_config,
    parse_text_field,
    resized_size,
)

TSV, WDS = "CLIPImgTxtPairTSVDataset", "WebDatasetImageText"


def make_cfg(paths, factory=TSV, names=("imgtxtpairs",), batch=2, workers=0, size=16,
             max_size=24, yaml=None):
    cfg = get_cfg()
    add_regionclip_config(cfg)
    if yaml:
        cfg.merge_from_file(str(REPO / yaml))
    cfg.DATASETS.TRAIN = tuple(names)
    cfg.DATASETS.FACTORY_TRAIN = (factory,) * len(paths)
    cfg.DATASETS.PATH_TRAIN = tuple(paths)
    cfg.AUG.TRAIN.IMAGE_SIZE = [size]
    cfg.AUG.TRAIN.MAX_SIZE = max_size
    cfg.SOLVER.IMS_PER_BATCH = batch
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.SEED = 7
    return cfg


def tsv_folder(folder, samples, stem="train"):
    rows = [(k, img, captions_field(caps)) for k, img, caps in samples]
    write_tsv_pair(str(folder), f"{stem}.image.tsv", f"{stem}.text.tsv", rows)
    return str(folder)


def read_all(dataset):
    return [dataset[i] for i in range(len(dataset))]


# ---------------------------------------------------------------- text decoding

def test_captions_json_first_five():
    caps = [f"c{i}" for i in range(7)]
    assert parse_text_field(json.dumps({"captions": caps})) == caps[:5]
    assert parse_text_field(json.dumps({"captions": ["a", "  ", "b"]})) == ["a", "b"]
    assert parse_text_field(json.dumps({"captions": []})) == []


def test_raw_text_and_non_object_json():
    assert parse_text_field("a dog on a sofa") == ["a dog on a sofa"]
    assert parse_text_field("123") == ["123"]
    assert parse_text_field('["x"]') == ['["x"]']
    assert parse_text_field("   ") == []
    assert parse_text_field(json.dumps({"url": "http://x"})) == []


def _template_fill(prompt, words):
    """Whether prompt is one template filled with a permutation of words (checked directly)."""
    for template in PROMPT_TEMPLATES:
        head, tail = template.split("{}")
        if prompt.startswith(head) and prompt.endswith(tail):
            middle = prompt[len(head):len(prompt) - len(tail)] if tail else prompt[len(head):]
            if sorted(middle.split(" ")) == sorted(words):
                return True
    return False


def test_tags_one_template_deterministic_under_seed():
    words = ["dog", "frisbee", "grass", "park", "sun"]
    field = json.dumps({"tags": " ".join(words)})
    outputs = []
    for seed in range(30):
        out = parse_text_field(field, random.Random(seed))
        assert out == parse_text_field(field, random.Random(seed))
        assert len(out) == 1 and _template_fill(out[0], words), out
        outputs.append(out[0])
    assert len(set(outputs)) > 10  # templates and word orders vary with the seed


def test_captions_and_tags_one_key_chosen_at_random():
    field = json.dumps({"captions": ["c1", "c2"], "tags": "cat mat"})
    kinds = set()
    for seed in range(40):
        out = parse_text_field(field, random.Random(seed))
        kinds.add("captions" if out == ["c1", "c2"] else "tags")
        if out != ["c1", "c2"]:
            assert len(out) == 1 and _template_fill(out[0], ["cat", "mat"])
    assert kinds == {"captions", "tags"}


def test_caption_decoder_tokenizes_each_caption():
    decoder = CaptionDecoder()
    ids = decoder(json.dumps({"captions": ["a red car", "two cats"]}))
    assert ids.dtype == torch.long and ids.shape == (2, 77)
    assert torch.equal(ids, tokenize(["a red car", "two cats"]))
    assert decoder(json.dumps({"captions": []})) is None
    long_caption = " ".join(["word"] * 100)
    assert CaptionDecoder(truncate=True)(long_caption).shape == (1, 77)
    with pytest.raises(ValueError):
        CaptionDecoder(truncate=False)(long_caption)


# ---------------------------------------------------------------- transform

def expected_size(w, h, size, max_size):
    """Independent: scale the shorter side to size; if the longer side would exceed max_size,
    fix it at max_size and scale the other side by the same (floored) ratio; the original skips
    resizing when the shorter side already equals size."""
    if min(w, h) == size:
        return w, h
    if w <= h:
        nh = (size * h) // w
        return ((max_size * size) // nh, max_size) if max_size and nh > max_size else (size, nh)
    nw = (size * w) // h
    return (max_size, (max_size * size) // nw) if max_size and nw > max_size else (nw, size)


@pytest.mark.parametrize("w, h", [(48, 32), (32, 48), (30, 31), (20, 90), (90, 20), (16, 40),
                                  (40, 16), (8, 8), (200, 150)])
def test_resized_size(w, h):
    assert resized_size(w, h, 16, 24) == expected_size(w, h, 16, 24)
    assert resized_size(w, h, 16, None) == expected_size(w, h, 16, None)


def test_resize_matches_torchvision_except_the_quirk():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    for w, h in [(48, 32), (32, 48), (20, 90), (90, 20), (200, 150), (7, 9)]:
        out = tvf.resize(Image.new("RGB", (w, h)), [16], max_size=24)
        assert out.size == resized_size(w, h, 16, 24)
    # quirk: the shorter side is already 16, the longer (40) exceeds 24, the image is unchanged;
    # current torchvision caps it instead
    assert resized_size(16, 40, 16, 24) == (16, 40)
    assert tvf.resize(Image.new("RGB", (16, 40)), [16], max_size=24).size != (16, 40)


def test_transform_output_and_flip():
    image = Image.open(io.BytesIO(tiny_image(3, 16, 40))).convert("RGB")
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
    no_flip = PretrainTransform(16, 24, 3, flip_prob=0.0)(image)  # quirk: not resized
    assert no_flip.dtype == torch.float32 and no_flip.shape == (3, 40, 16)
    assert torch.allclose(no_flip, pixels)
    flipped = PretrainTransform(16, 24, 3, flip_prob=1.0)(image)
    assert torch.allclose(flipped, pixels.flip(-1))
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8))
    out = PretrainTransform(16, 24, 3)(big)
    assert out.shape == (3, 16, 24) and out.min() >= 0 and out.max() <= 1
    torch.manual_seed(0)
    transform = PretrainTransform(16, 24, 3, flip_prob=0.5)
    flips = [torch.allclose(transform(image), pixels.flip(-1)) for _ in range(40)]
    assert 5 < sum(flips) < 35


def test_transform_config_errors():
    cfg = make_cfg(["unused"], size=16)
    cfg.AUG.TRAIN.IMAGE_SIZE = [224, 224]
    with pytest.raises(ValueError, match="one-element"):
        build_pretrain_dataset(cfg)
    with pytest.raises(ValueError, match="greater"):
        PretrainTransform(16, 16)
    cfg = make_cfg(["unused"])
    cfg.INPUT.TEXT_TOKENIZER = "bert"
    with pytest.raises(ValueError, match="bpe"):
        build_pretrain_dataset(cfg)


# ---------------------------------------------------------------- datasets

def test_tsv_dataset_samples(tmp_path):
    samples = make_samples(5)
    cfg = make_cfg([tsv_folder(tmp_path, samples)])
    dataset = build_pretrain_dataset(cfg)
    assert len(dataset) == 5
    for (key, img, caps), item in zip(samples, read_all(dataset)):
        w, h = Image.open(io.BytesIO(img)).size
        assert item["key"] == key and item["dataset"] == "imgtxtpairs"
        assert item["orig_size"] == (h, w)
        assert torch.equal(item["captions"], tokenize(caps))
        nw, nh = expected_size(w, h, 16, 24)
        assert item["image"].shape == (3, nh, nw)


def test_folder_discovery_more_than_20_pairs_and_name_rules(tmp_path):
    for i in range(23):
        tsv_folder(tmp_path, make_samples(1, start=i), stem=f"part{i:02d}")
    write_tsv_pair(str(tmp_path), "x_images.tsv", "x_text.tsv",
                   [("a", tiny_image(0), "raw caption")])
    write_tsv_pair(str(tmp_path), "y_img.tsv", "y_caption.tsv", [("b", tiny_image(1), "c")])
    pairs = discover_tsv_pairs(str(tmp_path))
    assert len(pairs) == 25
    assert [os.path.basename(p[0]) for p in pairs] == sorted(os.path.basename(p[0]) for p in pairs)
    names = {os.path.basename(i): os.path.basename(t) for i, t in pairs}
    assert names["x_images.tsv"] == "x_text.tsv" and names["y_img.tsv"] == "y_caption.tsv"
    assert names["part00.image.tsv"] == "part00.text.tsv"
    dataset = build_pretrain_dataset(make_cfg([str(tmp_path)]))
    assert len(dataset) == 25
    assert {dataset[i]["key"] for i in range(len(dataset))} == \
        {f"img{i:04d}" for i in range(23)} | {"a", "b"}


def test_missing_text_tsv_is_an_error(tmp_path):
    write_tsv_pair(str(tmp_path), "a.image.tsv", "a.text.tsv", [("k", tiny_image(0), "c")])
    os.remove(tmp_path / "a.text.tsv")
    with pytest.raises(FileNotFoundError, match="a.text.tsv"):
        discover_tsv_pairs(str(tmp_path))


def test_plus_joined_names_and_paths(tmp_path):
    a = tsv_folder(tmp_path / "a", make_samples(2, start=0))
    b = tsv_folder(tmp_path / "b", make_samples(3, start=10))
    c = os.path.join(tsv_folder(tmp_path / "c", make_samples(1, start=20)), "train.image.tsv")
    dataset = build_pretrain_dataset(make_cfg([f"{a}+{b}"]))
    assert [d["dataset"] for d in read_all(dataset)] == ["imgtxtpairs"] * 5
    cfg = make_cfg([a, f"{b}+{c}"], names=("imgtxtpairs", "cc+coco"))
    assert is_image_text_config(cfg)
    items = read_all(build_pretrain_dataset(cfg))
    assert [(d["dataset"], d["key"]) for d in items] == [
        ("imgtxtpairs", "img0000"), ("imgtxtpairs", "img0001"), ("cc", "img0010"),
        ("cc", "img0011"), ("cc", "img0012"), ("coco", "img0020")]
    with pytest.raises(ValueError, match="must match"):
        expand_dataset_entries(("x+y+z",), (TSV,), (f"{a}+{b}",))
    with pytest.raises(ValueError, match="each entry needs"):
        expand_dataset_entries(("x", "y"), (TSV,), (a, b))
    assert not is_image_text_config(make_cfg([a], names=("imgtxtpairs+cc",)))


def test_key_mismatch_error_names_files_row_and_keys(tmp_path):
    image_path, _ = write_tsv_pair(str(tmp_path), "d.image.tsv", "d.text.tsv",
                                   [("k0", tiny_image(0), "c"), ("k1", tiny_image(1), "c")])
    with open(tmp_path / "d.text.tsv", "w") as f:
        f.write("k0\tc\nkX\tc\n")
    dataset = ImageTextTSVDataset(image_path, str(tmp_path / "d.text.tsv"))
    assert dataset[0]["key"] == "k0"
    with pytest.raises(ValueError) as err:
        dataset[1]
    message = str(err.value)
    for part in ("d.image.tsv", "d.text.tsv", "row 1", "'k1'", "'kX'"):
        assert part in message


def test_row_count_mismatch_is_an_error(tmp_path):
    image_path, text_path = write_tsv_pair(str(tmp_path), "e.image.tsv", "e.text.tsv",
                                           [("k0", tiny_image(0), "c")])
    with open(text_path, "a") as f:
        f.write("k1\tc\n")
    with pytest.raises(ValueError, match="e.text.tsv has 2"):
        ImageTextTSVDataset(image_path, text_path)


def bad_rows():
    good = make_samples(6)
    rows = [(k, img, captions_field(c)) for k, img, c in good]
    rows[1] = (rows[1][0], b"not an image", rows[1][2])
    rows[3] = (rows[3][0], rows[3][1], captions_field([]))
    rows[4] = (rows[4][0], "%%% not base64 %%%", rows[4][2])
    return rows, {1, 3, 4}


def test_corrupt_image_and_empty_caption_skipped_and_counted(tmp_path, caplog):
    rows, bad = bad_rows()
    write_tsv_pair(str(tmp_path), "s.image.tsv", "s.text.tsv", rows)
    dataset = build_pretrain_dataset(make_cfg([str(tmp_path)]))
    with caplog.at_level(logging.WARNING):
        items = read_all(dataset)
    assert {i for i, item in enumerate(items) if item is None} == bad
    assert dataset.num_skipped == 3
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "s.image.tsv row 1" in messages and "no caption" in messages


def test_skipped_count_in_loader_metrics(tmp_path, caplog):
    rows, bad = bad_rows()
    write_tsv_pair(str(tmp_path), "s.image.tsv", "s.text.tsv", rows)
    cfg = make_cfg([str(tmp_path)], batch=2, workers=0)
    loader = build_pretrain_train_loader(cfg)
    assert isinstance(loader, SkipCountingBatchLoader)
    num_batches = 6
    # independent replay of the sampler: how many bad indices come before the 12th good one
    expected, good = 0, 0
    for index in TrainingSampler(6, shuffle=True, seed=cfg.SEED):
        if index in bad:
            expected += 1
        else:
            good += 1
            if good == num_batches * 2:
                break
    with EventStorage(0) as storage, caplog.at_level(logging.INFO):
        batches = list(itertools.islice(iter(loader), num_batches))
        value = storage.latest()["data/skipped_samples"][0]
    assert expected > 0 and value == expected == loader.num_skipped
    assert all(len(b) == 2 and all(s is not None for s in b) for b in batches)
    assert any("Skipped" in r.getMessage() for r in caplog.records)


def test_batch_format_with_workers_and_pretrain_yaml(tmp_path):
    samples = make_samples(8)
    cfg = make_cfg([tsv_folder(tmp_path, samples)], batch=4, workers=2,
                   yaml="configs/pretrain/RegionCLIP_RN50.yaml")
    batches = list(itertools.islice(iter(build_pretrain_train_loader(cfg)), 4))
    by_key = {k: caps for k, _, caps in samples}
    for batch in batches:
        assert isinstance(batch, list) and len(batch) == 4
        for item in batch:
            assert set(item) == {"image", "captions", "key", "dataset", "orig_size"}
            assert item["image"].dtype == torch.float32 and item["image"].dim() == 3
            assert item["image"].shape[0] == 3
            assert 0 <= item["image"].min() <= item["image"].max() <= 1
            assert item["captions"].dtype == torch.long and item["captions"].shape[1] == 77
            assert torch.equal(item["captions"], tokenize(by_key[item["key"]]))
            assert isinstance(item["orig_size"], tuple) and len(item["orig_size"]) == 2
            assert item["dataset"] == "imgtxtpairs"
    keys = [item["key"] for batch in batches for item in batch]
    assert sorted(keys[:8]) == sorted(by_key)  # one shuffled pass over 8 samples first


def test_trainer_uses_image_text_loader(tmp_path):
    from regionclip.engine.trainer import Trainer

    cfg = make_cfg([tsv_folder(tmp_path, make_samples(2))])
    assert isinstance(Trainer.build_train_loader(cfg), SkipCountingBatchLoader)


# ---------------------------------------------------------------- WebDataset

def wds_records(samples):
    records = []
    for i, (key, img, caps) in enumerate(samples):
        record = {"__key__": key, "png": img}
        if i % 3 == 0:  # img2dataset style: .txt plus metadata .json with "caption"
            record.update(txt=caps[0], json=json.dumps({"caption": caps[0], "url": "u"}))
            caps[:] = caps[:1]
        elif i % 3 == 1:  # json only, with the TSV text format
            record["json"] = captions_field(caps)
        else:  # json with only img2dataset's "caption"
            record["json"] = json.dumps({"caption": caps[0], "status": "success"})
            caps[:] = caps[:1]
        records.append(record)
    return records


def test_webdataset_reads_same_as_tsv(tmp_path):
    pytest.importorskip("webdataset")
    samples = make_samples(7)
    records = wds_records(samples)  # trims captions where a shard holds one caption
    tsv_items = read_all(build_pretrain_dataset(make_cfg([tsv_folder(tmp_path / "t", samples)])))
    shards = write_wds_shards(str(tmp_path / "w"), records, per_shard=3)
    assert list_shards(str(tmp_path / "w")) == shards
    assert list_shards(str(tmp_path / "w" / "shard-{00000..00002}.tar")) == shards
    cfg = make_cfg([str(tmp_path / "w")], factory=WDS)
    wds_items = list(build_pretrain_dataset(cfg, repeat=False))
    assert len(wds_items) == len(tsv_items) == 7
    tsv_by_key = {d["key"]: d for d in tsv_items}
    for item in wds_items:
        ref = tsv_by_key[item["key"]]
        assert torch.equal(item["captions"], ref["captions"])
        assert item["orig_size"] == ref["orig_size"]
        assert item["image"].shape == ref["image"].shape


def test_webdataset_split_across_workers_without_duplicates(tmp_path):
    pytest.importorskip("webdataset")
    samples = make_samples(10)
    shards = write_wds_shards(str(tmp_path), wds_records(samples), per_shard=2)
    dataset = WebDatasetImageText(shards, decode_text=CaptionDecoder(), repeat=False, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    keys = [item["key"] for item in loader]
    assert sorted(keys) == sorted(k for k, _, _ in samples)


def test_webdataset_skips_counted_and_training_loader(tmp_path):
    pytest.importorskip("webdataset")
    samples = make_samples(6)
    records = wds_records(samples)
    records[1]["png"] = b"broken"
    records[2] = {"__key__": records[2]["__key__"], "png": records[2]["png"]}  # no caption
    shards = write_wds_shards(str(tmp_path), records, per_shard=3)
    dataset = WebDatasetImageText(shards, decode_text=CaptionDecoder(), repeat=False, seed=0)
    items = list(dataset)
    assert sum(item is None for item in items) == 2 and dataset.num_skipped == 2
    loader = build_pretrain_train_loader(make_cfg([str(tmp_path)], factory=WDS, batch=2))
    with EventStorage(0) as storage:
        batches = list(itertools.islice(iter(loader), 4))  # 8 samples: needs a second pass
        assert storage.latest()["data/skipped_samples"][0] == loader.num_skipped >= 2
    assert all(len(b) == 2 for b in batches)


def test_webdataset_needs_a_shard_per_process(tmp_path, monkeypatch):
    pytest.importorskip("webdataset")
    shards = write_wds_shards(str(tmp_path), wds_records(make_samples(2)), per_shard=2)
    from detectron2.utils import comm

    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    with pytest.raises(ValueError, match="1 WebDataset shards for 2 processes"):
        WebDatasetImageText(shards, seed=0)


def test_unknown_or_mixed_factories(tmp_path):
    a = tsv_folder(tmp_path, make_samples(1))
    cfg = make_cfg([a], factory="Nope")
    with pytest.raises(ValueError, match="unknown reader"):
        build_pretrain_dataset(cfg)
    cfg = make_cfg([a, a], names=("imgtxtpairs", "x"))
    cfg.DATASETS.FACTORY_TRAIN = (TSV, WDS)
    with pytest.raises(ValueError, match="mixes"):
        build_pretrain_dataset(cfg)


def test_webdataset_split_across_processes_without_duplicates(tmp_path, monkeypatch):
    pytest.importorskip("webdataset")
    from detectron2.utils import comm

    samples = make_samples(9)
    shards = write_wds_shards(str(tmp_path), wds_records(samples), per_shard=2)  # 5 shards
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        dataset = WebDatasetImageText(shards, decode_text=CaptionDecoder(), repeat=False, seed=5)
        per_rank.append({item["key"] for item in dataset})
    assert per_rank[0] and per_rank[1] and not per_rank[0] & per_rank[1]
    assert per_rank[0] | per_rank[1] == {k for k, _, _ in samples}
