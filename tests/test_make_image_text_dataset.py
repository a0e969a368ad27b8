"""tools/make_image_text_dataset.py: folder + captions -> TSV / WebDataset, read back."""
import base64
import csv
import json
import os
import runpy
import sys
from pathlib import Path
from unittest import mock

import pytest
from _image_text_data import tiny_image, write_wds_shards
from conftest import REPO_PATH as REPO

from detectron2_ext.data import (
    ImageTextTSVDataset,
    TSVFile,
    WebDatasetImageText,
    discover_tsv_pairs,
)
from detectron2_ext.data.image_text_wds import iterate_shard_records
from regionclip.data.pretrain import parse_text_field
from regionclip.tools.make_image_text_dataset import convert, main


def image_folder(folder, count=5):
    """Images (PNG and JPEG, one in a subfolder) and their captions by relative file name."""
    os.makedirs(folder / "sub", exist_ok=True)
    captions, data = {}, {}
    for i in range(count):
        name = f"sub/pic{i}.png" if i == 0 else f"pic{i}.{'jpg' if i % 2 else 'png'}"
        payload = tiny_image(i, 40 + i, 30, "JPEG" if name.endswith("jpg") else "PNG")
        (folder / name).write_bytes(payload)
        captions[name] = [f"picture {i}"] + ([f"another view {i}"] if i % 2 else [])
        data[name] = payload
    return captions, data


def expected_key(name):
    return os.path.splitext(name)[0]


def read_tsv_output(folder):
    """key -> (image bytes, captions) through the TSV readers."""
    out = {}
    for image_tsv, text_tsv in discover_tsv_pairs(str(folder)):
        dataset = ImageTextTSVDataset(image_tsv, text_tsv, decode_text=parse_text_field)
        images = TSVFile(image_tsv)
        for i in range(len(dataset)):
            item = dataset[i]
            out[item["key"]] = (base64.b64decode(images[i][1]), item["captions"])
    return out


def read_wds_output(folder):
    shards = sorted(str(p) for p in Path(folder).glob("*.tar"))
    dataset = WebDatasetImageText(shards, decode_text=parse_text_field, repeat=False,
                                  shuffle=False, seed=0)
    captions = {item["key"]: item["captions"] for item in dataset}
    images = {}
    for record in iterate_shard_records(shards):
        images[record["__key__"]] = record.get("jpg", record.get("png"))
    return {k: (images[k], captions[k]) for k in captions}


@pytest.mark.parametrize("fmt", ["tsv", "wds"])
def test_json_mapping_round_trip(tmp_path, fmt):
    if fmt == "wds":
        pytest.importorskip("webdataset")
    captions, data = image_folder(tmp_path / "images")
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    summary = convert(str(tmp_path / "images"), str(tmp_path / "out"),
                      str(tmp_path / "captions.json"), fmt=fmt, shard_size=2, progress=False)
    assert summary["written"] == 5 and summary["problems"] == []
    read = read_tsv_output if fmt == "tsv" else read_wds_output
    result = read(tmp_path / "out")
    assert result == {expected_key(n): (data[n], captions[n]) for n in captions}
    assert not list((tmp_path / "out").glob("*.partial"))


def test_tsv_output_names_and_index(tmp_path):
    captions, _ = image_folder(tmp_path / "images", 3)
    (tmp_path / "c.json").write_text(json.dumps(captions))
    summary = convert(str(tmp_path / "images"), str(tmp_path / "out"), str(tmp_path / "c.json"),
                      name="cc", progress=False)
    names = sorted(os.path.basename(f) for f in summary["files"])
    assert names == ["cc.image.lineidx", "cc.image.tsv", "cc.text.lineidx", "cc.text.tsv"]
    text_rows = (tmp_path / "out" / "cc.text.tsv").read_text().splitlines()
    assert [json.loads(r.split("\t")[1]) for r in text_rows] == \
        [{"captions": c} for c in captions.values()]
    with pytest.raises(ValueError, match="choose a name"):
        convert(str(tmp_path / "images"), str(tmp_path / "o2"), str(tmp_path / "c.json"),
                name="myimg", progress=False)


def test_csv_and_coco_captions(tmp_path):
    captions, data = image_folder(tmp_path / "images", 3)
    with open(tmp_path / "c.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "caption"])
        for name, caps in captions.items():
            for cap in caps:
                writer.writerow([name, cap])
    convert(str(tmp_path / "images"), str(tmp_path / "a"), str(tmp_path / "c.csv"),
            progress=False)
    assert read_tsv_output(tmp_path / "a") == \
        {expected_key(n): (data[n], captions[n]) for n in captions}
    coco = {"images": [{"id": i + 1, "file_name": n} for i, n in enumerate(captions)],
            "annotations": [{"id": 100 + j, "image_id": i + 1, "caption": c}
                            for i, n in enumerate(captions) for j, c in enumerate(captions[n])]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    convert(str(tmp_path / "images"), str(tmp_path / "b"), str(tmp_path / "coco.json"),
            progress=False)
    assert read_tsv_output(tmp_path / "b") == read_tsv_output(tmp_path / "a")
    (tmp_path / "bad.csv").write_text("name,text\nx,y\n")
    with pytest.raises(ValueError, match="'file' and 'caption'"):
        convert(str(tmp_path / "images"), str(tmp_path / "c"), str(tmp_path / "bad.csv"))


def test_missing_files_reported_with_count(tmp_path):
    captions, data = image_folder(tmp_path / "images", 4)
    captions["gone1.jpg"] = ["lost"]
    captions["gone2.jpg"] = ["lost too"]
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    captions["broken.png"] = ["broken"]
    (tmp_path / "c.json").write_text(json.dumps(captions))
    with pytest.raises(ValueError) as err:
        convert(str(tmp_path / "images"), str(tmp_path / "out"), str(tmp_path / "c.json"),
                progress=False)
    assert "2 sample(s)" in str(err.value) and "gone1.jpg" in str(err.value)
    assert "--skip-missing" in str(err.value)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
    summary = convert(str(tmp_path / "images"), str(tmp_path / "out"), str(tmp_path / "c.json"),
                      skip_missing=True, progress=False)
    assert summary["written"] == 4 and len(summary["problems"]) == 3
    assert any("broken.png" in p and "decode" in p for p in summary["problems"])
    assert set(read_tsv_output(tmp_path / "out")) == {expected_key(n) for n in data}


def test_img2dataset_tar_and_files_layouts(tmp_path):
    pytest.importorskip("webdataset")
    records = [{"__key__": f"{i:09d}", "jpg": tiny_image(i, fmt="JPEG"), "txt": f"cap {i}",
                "json": json.dumps({"caption": f"cap {i}", "status": "success"})}
               for i in range(5)]
    write_wds_shards(str(tmp_path / "dl"), records, per_shard=2, prefix="0")
    convert(str(tmp_path / "dl"), str(tmp_path / "out"), progress=False)
    assert read_tsv_output(tmp_path / "out") == \
        {r["__key__"]: (r["jpg"], [r["txt"]]) for r in records}
    files = tmp_path / "files" / "00000"
    files.mkdir(parents=True)
    for r in records[:3]:
        (files / f"{r['__key__']}.jpg").write_bytes(r["jpg"])
        (files / f"{r['__key__']}.json").write_text(r["json"])
    (files / f"{records[0]['__key__']}.txt").write_text("from the txt")
    (files / "000000099.json").write_text(json.dumps({"caption": "orphan"}))
    with pytest.raises(ValueError, match="000000099.json has no image"):
        convert(str(tmp_path / "files"), str(tmp_path / "out2"), progress=False)
    convert(str(tmp_path / "files"), str(tmp_path / "out2"), skip_missing=True, progress=False)
    result = read_tsv_output(tmp_path / "out2")
    assert result == {f"00000/{r['__key__']}": (r["jpg"], [r["txt"]]) for r in records[1:3]} | {
        f"00000/{records[0]['__key__']}": (records[0]["jpg"], ["from the txt"])}


def test_main_and_script(tmp_path, capsys):
    captions, _ = image_folder(tmp_path / "images", 2)
    (tmp_path / "c.json").write_text(json.dumps(captions))
    assert main(["--images", str(tmp_path / "images"), "--captions", str(tmp_path / "c.json"),
                 "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    assert "Wrote 2 samples" in capsys.readouterr().out
    script = str(REPO / "tools" / "make_image_text_dataset.py")
    argv = [script, "--images", str(tmp_path / "nope"), "--output", str(tmp_path / "x")]
    with mock.patch.object(sys, "argv", argv), pytest.raises(SystemExit) as exit_info:
        runpy.run_path(script, run_name="__main__")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "error: " in err and "images folder not found" in err
