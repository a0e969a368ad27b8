"""Dataset registration, category metadata, vocabularies, OVD json preparation, synthetic data."""
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import REPO
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES
from PIL import Image

import regionclip  # noqa: F401  (registers the datasets)
from regionclip.data.datasets.lvis_ovd import (
    load_custom_images,
    load_lvis_ovd_json,
    register_lvis_ovd,
)
from regionclip.data.synthetic import make_synthetic_coco, register_synthetic_dataset
from regionclip.data.vocabularies import VOCABULARY_NAMES, get_vocabulary

# The OVR-CNN split as listed in the spec (section 1.13), in COCO category-id order.
NOVEL = ("airplane bus cat dog cow elephant umbrella tie snowboard skateboard cup knife cake "
         "couch keyboard sink scissors").split()
BASE = ["person", "bicycle", "car", "motorcycle", "train", "truck", "boat", "bench", "bird",
        "horse", "sheep", "bear", "zebra", "giraffe", "backpack", "handbag", "suitcase",
        "frisbee", "skis", "kite", "surfboard", "bottle", "fork", "spoon", "bowl", "banana",
        "apple", "sandwich", "orange", "broccoli", "carrot", "pizza", "donut", "chair", "bed",
        "toilet", "tv", "laptop", "mouse", "remote", "microwave", "oven", "toaster",
        "refrigerator", "book", "clock", "vase", "toothbrush"]
UNUSED = ["traffic light", "fire hydrant", "stop sign", "parking meter", "sports ball",
          "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog",
          "potted plant", "dining table", "cell phone", "teddy bear", "hair drier"]
OUR_NAMES = ([f"coco_2017_ovd_{s}_{p}" for s in ("all", "b", "t") for p in ("train", "test")]
             + [f"lvis_v1_{s}_{f}" for s in ("train", "val", "test_dev", "test_challenge")
                for f in ("ovd", "custom_img", "fullysup")])
COCO_THINGS = sorted((c for c in COCO_CATEGORIES if c["isthing"]), key=lambda c: c["id"])
LVIS_SORTED = sorted(LVIS_CATEGORIES, key=lambda c: c["id"])


def _load_script(name):
    path = os.path.join(REPO, "datasets", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _poly(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _write_json(path, payload):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f)
    return str(path)


def _lvis_json(freqs, image_anns, split="val2017"):
    """LVIS-format json: category i+1 has frequency freqs[i]; image_anns: {image id: [cat ids]}."""
    cats = [{"id": i + 1, "name": f"c{i + 1}", "synonyms": [f"c{i + 1}"], "frequency": f,
             "synset": f"c{i + 1}.n.01", "def": "", "image_count": 1, "instance_count": 1}
            for i, f in enumerate(freqs)]
    images, anns = [], []
    for img_id, cat_ids in image_anns.items():
        images.append({"id": img_id, "height": 50, "width": 60,
                       "coco_url": f"http://images.cocodataset.org/{split}/{img_id:012d}.jpg",
                       "not_exhaustive_category_ids": [1, 2], "neg_category_ids": [3, 4]})
        for k, cid in enumerate(cat_ids):
            box = [k % 40, k % 30, 5 + k % 7, 4]
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cid,
                         "bbox": box, "area": 20.0, "segmentation": _poly(*box)})
    return {"images": images, "annotations": anns, "categories": cats}


def _expected_ovd(raw, filter_rare, cap=500):
    """The original's LVIS loader semantics, computed directly from a raw json."""
    freq = {c["id"]: c["frequency"] for c in raw["categories"]}
    base = sorted(i for i in freq if freq[i] != "r")
    to_contiguous = ({cid: k for k, cid in enumerate(base)} if filter_rare
                     else {cid: cid - 1 for cid in freq})
    per_image = {img["id"]: [] for img in raw["images"]}
    for a in raw.get("annotations", []):
        per_image[a["image_id"]].append(a)
    annotated = bool(raw.get("annotations"))
    rows = []
    for img_id in sorted(per_image):
        anns = [a for a in per_image[img_id] if not (filter_rare and freq[a["category_id"]] == "r")]
        if annotated and not anns:
            continue
        rows.append((img_id, [(to_contiguous[a["category_id"]], a["bbox"],
                               freq[a["category_id"]]) for a in anns]))
    rows.sort(key=lambda r: -len(r[1]))
    return [(img_id, anns[:cap]) for img_id, anns in rows]


def _summary(dicts):
    return [(d["image_id"], [(a["category_id"], list(a["bbox"]), a["frequency"])
                             for a in d["annotations"]]) for d in dicts]


# --------------------------------------------------------------------------- registration

def test_registration_is_lazy_and_never_shadows_detectron2(tmp_path):
    """In a fresh process: names vs detectron2's builtins; load registered datasets from files."""
    root = tmp_path / "ds"
    table = [{"id": c["id"], "frequency": c["frequency"]} for c in LVIS_SORTED]
    rare_id = next(c["id"] for c in table if c["frequency"] == "r")
    common_id = next(c["id"] for c in table if c["frequency"] == "c")
    train = _lvis_json([c["frequency"] for c in table], {5: [rare_id], 7: [common_id, rare_id]},
                       split="train2017")
    _write_json(root / "lvis" / "lvis_v1_train.json", train)
    _write_json(root / "lvis" / "lvis_v1_image_info_test_dev.json",
                {"images": train["images"], "categories": train["categories"]})
    (root / "custom_images").mkdir()
    Image.new("RGB", (30, 20)).save(root / "custom_images" / "b.png")
    Image.new("RGB", (11, 13)).save(root / "custom_images" / "a.jpg")
    script = textwrap.dedent("""
        import json, sys
        import detectron2.data
        from detectron2.data import DatasetCatalog, MetadataCatalog
        builtin = DatasetCatalog.list()
        import regionclip
        out = {"builtin": builtin, "all": DatasetCatalog.list(), "loaded": {}}
        out["json_file"] = MetadataCatalog.get("coco_2017_ovd_all_train").json_file
        for name in ["lvis_v1_train_ovd", "lvis_v1_test_dev_ovd", "lvis_v1_val_custom_img"]:
            out["loaded"][name] = [[d["image_id"], d["file_name"], d["height"], d["width"],
                                    [a["category_id"] for a in d.get("annotations", [])]]
                                   for d in DatasetCatalog.get(name)]
        out["builtin_train_classes"] = len(MetadataCatalog.get("lvis_v1_train").thing_classes)
        json.dump(out, sys.stdout)
    """)
    env = dict(os.environ, DETECTRON2_DATASETS=str(root))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    builtin, registered = set(out["builtin"]), set(out["all"])
    assert {"lvis_v1_train", "lvis_v1_val", "coco_2017_train"} <= builtin
    assert not builtin & set(OUR_NAMES)
    assert set(OUR_NAMES) <= registered
    assert out["builtin_train_classes"] == 1203  # detectron2's own lvis_v1_train is untouched
    # importing read no dataset file: the OVD jsons do not exist under this root
    assert out["json_file"].startswith(str(root)) and not os.path.exists(out["json_file"])
    base_ids = [c["id"] for c in table if c["frequency"] != "r"]
    train_rows = out["loaded"]["lvis_v1_train_ovd"]
    assert [(r[0], r[4]) for r in train_rows] == [(7, [base_ids.index(common_id)])]
    assert train_rows[0][1] == os.path.join(str(root), "coco", "train2017", "000000000007.jpg")
    # image-info json without annotations: every image kept (the original yielded nothing)
    assert [(r[0], r[4]) for r in out["loaded"]["lvis_v1_test_dev_ovd"]] == [(5, []), (7, [])]
    custom = out["loaded"]["lvis_v1_val_custom_img"]
    assert [(r[0], os.path.basename(r[1]), r[2], r[3]) for r in custom] == [
        (0, "a.jpg", 13, 11), (1, "b.png", 20, 30)]


def test_coco_ovd_metadata_matches_the_spec_split():
    in_split = [c for c in COCO_THINGS if c["name"] in set(BASE) | set(NOVEL)]
    assert [c["name"] for c in in_split if c["name"] in BASE] == BASE  # spec lists are id-ordered
    assert [c["name"] for c in in_split if c["name"] in NOVEL] == NOVEL
    assert [c["name"] for c in COCO_THINGS if c["name"] not in set(BASE) | set(NOVEL)] == UNUSED
    for subset, cats in (("all", in_split), ("b", [c for c in in_split if c["name"] in BASE]),
                         ("t", [c for c in in_split if c["name"] in NOVEL])):
        for phase in ("train", "test"):
            meta = MetadataCatalog.get(f"coco_2017_ovd_{subset}_{phase}")
            assert meta.evaluator_type == "coco"
            assert meta.thing_classes == [c["name"] for c in cats]
            assert meta.thing_dataset_id_to_contiguous_id == {c["id"]: i
                                                             for i, c in enumerate(cats)}
            assert meta.class_split == ["novel" if c["name"] in NOVEL else "base" for c in cats]
            assert meta.base_classes == [c["name"] for c in cats if c["name"] in BASE]
            assert meta.novel_classes == [c["name"] for c in cats if c["name"] in NOVEL]
            split_dir = "train2017" if phase == "train" else "val2017"
            assert meta.json_file.endswith(f"ovd_ins_{split_dir}_{subset}.json")
            assert meta.image_root.endswith(os.path.join("coco", split_dir))
    assert len(MetadataCatalog.get("coco_2017_ovd_all_test").thing_classes) == 65
    # the split evaluator accepts this metadata and finds the 17/48/65 splits
    from detectron2_ext.evaluation.coco_split_evaluation import splits_from_metadata
    splits = splits_from_metadata(MetadataCatalog.get("coco_2017_ovd_all_test"))
    assert (splits["novel"], splits["base"], len(splits["all"])) == (NOVEL, BASE, 65)
    assert list(splits_from_metadata(MetadataCatalog.get("coco_2017_ovd_b_test"))) == [
        "base", "all"]


def test_lvis_metadata_and_category_table():
    with open(os.path.join(REPO, "regionclip", "data", "metadata", "lvis_v1_categories.json")) as f:
        table = json.load(f)["categories"]
    assert [(c["id"], c["name"], c["synset"], c["frequency"]) for c in table] == [
        (c["id"], c["name"], c["synset"], c["frequency"]) for c in LVIS_SORTED]
    counts = {f: sum(c["frequency"] == f for c in table) for f in "rcf"}
    assert counts == {"r": 337, "c": 461, "f": 405}
    rare = [c["synonyms"][0] for c in LVIS_SORTED if c["frequency"] == "r"]
    non_rare = [c for c in LVIS_SORTED if c["frequency"] != "r"]
    train = MetadataCatalog.get("lvis_v1_train_ovd")
    assert train.thing_classes == [c["synonyms"][0] for c in non_rare]
    assert len(train.thing_classes) == 866 and set(train.class_split) == {"base"}
    assert train.base_classes == train.thing_classes and train.novel_classes == []
    assert train.class_frequency == [c["frequency"] for c in non_rare]
    assert train.thing_dataset_id_to_contiguous_id == {c["id"]: i for i, c in enumerate(non_rare)}
    assert [c["id"] for c in train.class_image_count] == [c["id"] for c in non_rare]
    builtin_val = MetadataCatalog.get("lvis_v1_val")
    for name in ("lvis_v1_val_ovd", "lvis_v1_test_dev_ovd", "lvis_v1_train_fullysup",
                 "lvis_v1_val_custom_img"):
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "lvis"
        assert meta.thing_classes == builtin_val.thing_classes  # 1203, detectron2's names
        assert meta.class_split.count("novel") == 337 and len(meta.class_split) == 1203
        assert meta.novel_classes == rare and len(meta.base_classes) == 866
        assert meta.get("no_evaluation", False) == name.endswith("_custom_img")


def test_vocabularies():
    lengths = {"coco_65": 65, "coco_48": 48, "coco_17": 17, "coco_80": 80, "lvis_1203": 1203,
               "lvis_866": 866}
    assert set(VOCABULARY_NAMES) == set(lengths)
    for name, n in lengths.items():
        assert len(get_vocabulary(name)) == n
    assert get_vocabulary("coco_48") == BASE and get_vocabulary("coco_17") == NOVEL
    assert get_vocabulary("coco_80") == [c["name"] for c in COCO_THINGS]
    assert get_vocabulary("coco_65") == [c["name"] for c in COCO_THINGS if c["name"] not in UNUSED]

    def clean(name):
        return re.sub(r"[()]", "", name.replace("_", " "))

    lvis = get_vocabulary("lvis_1203")
    assert lvis == [clean(c["name"]) for c in LVIS_SORTED]
    assert get_vocabulary("lvis_866") == [clean(c["name"]) for c in LVIS_SORTED
                                          if c["frequency"] != "r"]
    assert lvis[0] == "aerosol can" and "bow weapon" in lvis and "bull" in lvis
    assert not any("_" in n or "(" in n for n in lvis)
    vocab = get_vocabulary("coco_65")
    vocab.append("x")  # callers get a copy
    assert len(get_vocabulary("coco_65")) == 65
    with pytest.raises(KeyError, match="coco_65.*lvis_866"):
        get_vocabulary("lvis_1230")


# --------------------------------------------------------------------------- LVIS loader

def test_lvis_ovd_known_answer(tmp_path):
    raw = _lvis_json(["f", "r", "c", "r"], {1: [2], 2: [3, 2, 1], 3: [], 4: [1, 1], 9: [4, 3, 1]})
    path = _write_json(tmp_path / "lvis.json", raw)
    cats = raw["categories"]
    train = load_lvis_ovd_json(path, str(tmp_path), cats, filter_rare=True)
    # rare classes 2 and 4 dropped, 1 -> 0 and 3 -> 1; images 1 and 3 dropped; stable sort
    assert [(d["image_id"], [a["category_id"] for a in d["annotations"]]) for d in train] == [
        (2, [1, 0]), (4, [0, 0]), (9, [1, 0])]
    assert all(a["frequency"] != "r" for d in train for a in d["annotations"])
    assert all(d["neg_category_ids"] == [3] and d["not_exhaustive_category_ids"] == [1]
               for d in train)
    val = load_lvis_ovd_json(path, str(tmp_path), cats, filter_rare=False)
    assert [(d["image_id"], [a["category_id"] for a in d["annotations"]]) for d in val] == [
        (2, [2, 1, 0]), (9, [3, 2, 0]), (4, [0, 0]), (1, [1])]
    assert [a["frequency"] for a in val[0]["annotations"]] == ["c", "r", "f"]
    assert val[0]["file_name"] == os.path.join(str(tmp_path), "val2017", "000000000002.jpg")


def test_lvis_ovd_matches_independent_computation_and_caps(tmp_path):
    rng = np.random.default_rng(0)
    freqs = list(rng.choice(["r", "c", "f"], size=12))
    image_anns = {int(i): [int(c) for c in rng.integers(1, 13, size=rng.integers(0, 6))]
                  for i in rng.permutation(np.arange(1, 40))[:25]}
    base_ids = [i + 1 for i, f in enumerate(freqs) if f != "r"]
    rare_ids = [i + 1 for i, f in enumerate(freqs) if f == "r"]
    assert base_ids and rare_ids
    image_anns[1000] = [int(c) for c in rng.choice(base_ids, size=510)] + rare_ids * 3
    raw = _lvis_json(freqs, image_anns)
    path = _write_json(tmp_path / "lvis.json", raw)
    for filter_rare in (True, False):
        got = load_lvis_ovd_json(path, str(tmp_path), raw["categories"], filter_rare=filter_rare)
        assert _summary(got) == _expected_ovd(raw, filter_rare)
        assert got[0]["image_id"] == 1000 and len(got[0]["annotations"]) == 500
    name = "test_datasets_lvis_train_like"
    register_lvis_ovd(name, path, str(tmp_path), raw["categories"], filter_rare=True)
    try:
        assert _summary(DatasetCatalog.get(name)) == _expected_ovd(raw, True)
        n_base = sum(f != "r" for f in freqs)
        assert len(MetadataCatalog.get(name).thing_classes) == n_base
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_lvis_ovd_without_annotations_keeps_all_images(tmp_path):
    raw = _lvis_json(["f", "r"], {3: [], 1: []})
    with_empty = _write_json(tmp_path / "empty_anns.json", raw)
    raw.pop("annotations")
    without_key = _write_json(tmp_path / "image_info.json", raw)
    for path in (with_empty, without_key):
        got = load_lvis_ovd_json(path, str(tmp_path), raw["categories"])
        assert [(d["image_id"], d["annotations"]) for d in got] == [(1, []), (3, [])]
        assert got[0]["file_name"] == os.path.join(str(tmp_path), "val2017", "000000000001.jpg")


def test_lvis_ovd_errors(tmp_path):
    raw = _lvis_json(["f", "c"], {1: [3]})
    path = _write_json(tmp_path / "bad_cat.json", raw)
    with pytest.raises(ValueError, match="category id 3"):
        load_lvis_ovd_json(path, str(tmp_path), raw["categories"])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_lvis_ovd_json(str(tmp_path / "missing.json"), str(tmp_path))


# --------------------------------------------------------------------------- custom images

def test_custom_images(tmp_path, caplog):
    folder = tmp_path / "custom"
    folder.mkdir()
    Image.new("RGB", (40, 30), (9, 9, 9)).save(folder / "b.png")
    rotated = Image.new("RGB", (50, 20), (200, 10, 10))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rotated.save(folder / "a.jpg", exif=exif)
    (folder / "notes.txt").write_text("not an image")
    records = load_custom_images(str(folder))
    assert [(r["image_id"], os.path.basename(r["file_name"])) for r in records] == [
        (0, "a.jpg"), (1, "b.png")]
    from detectron2.data.detection_utils import read_image
    for r in records:  # sizes agree with how detectron2 reads the image
        assert read_image(r["file_name"]).shape[:2] == (r["height"], r["width"])
    assert (records[0]["height"], records[0]["width"]) == (50, 20)
    assert "notes.txt" in caplog.text

    (folder / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(ValueError, match="c.png"):
        load_custom_images(str(folder))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="No image file"):
        load_custom_images(str(empty))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_custom_images(str(tmp_path / "nowhere"))


# --------------------------------------------------------------------------- prepare_ovd_coco

def _mini_instances():
    by_name = {c["name"]: c["id"] for c in COCO_THINGS}
    cats = [{"id": c["id"], "name": c["name"], "supercategory": "x"} for c in COCO_THINGS]
    image_cats = {1: ["stop sign"], 2: ["person", "tv"], 3: ["cat"], 4: ["dog", "person",
                  "hot dog"], 5: ["sink"], 6: []}
    images, anns = [], []
    for img_id, names in image_cats.items():
        images.append({"id": img_id, "file_name": f"{img_id:012d}.jpg", "height": 10, "width": 10})
        for name in names:
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": by_name[name],
                         "bbox": [1, 1, 3, 3], "area": 9, "iscrowd": int(img_id == 5),
                         "segmentation": _poly(1, 1, 3, 3)})
    return {"info": {"year": 2017}, "licenses": [], "images": images, "annotations": anns,
            "categories": cats}


def test_prepare_ovd_coco(tmp_path, capsys):
    prepare = _load_script("prepare_ovd_coco")
    raw = _mini_instances()
    for split in ("train", "val"):
        _write_json(tmp_path / "coco" / "annotations" / f"instances_{split}2017.json", raw)
    assert prepare.main(["--coco-root", str(tmp_path / "coco")]) == 0
    assert "wrote" in capsys.readouterr().out
    id_to_name = {c["id"]: c["name"] for c in COCO_THINGS}
    expected = {"all": ({2, 3, 4, 5}, set(BASE) | set(NOVEL)), "b": ({2, 4}, set(BASE)),
                "t": ({3, 4, 5}, set(NOVEL))}
    for split in ("train", "val"):
        for subset, (image_ids, names) in expected.items():
            path = tmp_path / "coco" / "annotations" / f"ovd_ins_{split}2017_{subset}.json"
            out = json.loads(path.read_text())
            assert {img["id"] for img in out["images"]} == image_ids
            assert [c["name"] for c in out["categories"]] == [
                c["name"] for c in COCO_THINGS if c["name"] in names]
            assert all(c["split"] == ("seen" if c["name"] in BASE else "unseen")
                       for c in out["categories"])
            assert sorted(a["id"] for a in out["annotations"]) == sorted(
                a["id"] for a in raw["annotations"] if id_to_name[a["category_id"]] in names)
            assert out["info"] == {"year": 2017}
            from pycocotools.coco import COCO
            coco = COCO(str(path))
            assert len(coco.getCatIds()) == len(names)
    # the registered metadata agrees with what detectron2's loader derives from the json
    name = "test_datasets_ovd_all"
    from detectron2.data.datasets import register_coco_instances

    from regionclip.data.datasets.coco_ovd import coco_ovd_metadata
    register_coco_instances(name, coco_ovd_metadata("all"),
                            str(tmp_path / "coco" / "annotations" / "ovd_ins_val2017_all.json"),
                            str(tmp_path))
    try:
        dicts = DatasetCatalog.get(name)
        assert {d["image_id"] for d in dicts} == {2, 3, 4, 5}
        assert MetadataCatalog.get(name).thing_classes[11] == "cat"
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_prepare_ovd_coco_errors(tmp_path, capsys):
    prepare = _load_script("prepare_ovd_coco")
    assert prepare.main(["--coco-root", str(tmp_path), "--splits", "val"]) == 1
    assert "instances_val2017.json not found" in capsys.readouterr().err
    raw = _mini_instances()
    raw["categories"][0]["name"] = "human"
    with pytest.raises(ValueError, match="'human'"):
        prepare.build_ovd_json(raw, "all", prepare.load_split_table())


# --------------------------------------------------------------------------- synthetic data

def test_synthetic_dataset_is_valid_and_deterministic(tmp_path):
    from lvis import LVIS
    from pycocotools.coco import COCO

    data = make_synthetic_coco(str(tmp_path / "a"), num_images=5, image_size=(64, 80),
                               categories=6, seed=3, objects_per_image=(2, 3))
    coco, lvis = COCO(data.coco_json), LVIS(data.lvis_json)
    assert len(coco.getImgIds()) == len(lvis.get_img_ids()) == 5
    assert len(coco.anns) == len(lvis.anns) == data.num_annotations >= 5
    assert [c["frequency"] for c in lvis.load_cats(None)] == ["f", "c", "f", "c", "r", "r"]
    for ann in coco.anns.values():
        img = coco.imgs[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]
        xs, ys = ann["segmentation"][0][0::2], ann["segmentation"][0][1::2]
        assert np.allclose([min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], [x, y, w, h],
                           atol=0.02)
        # the shape is drawn where it is annotated: its colour at the box centre
        pixels = np.asarray(Image.open(os.path.join(data.image_root, img["file_name"])))
        cat = data.categories[ann["category_id"] - 1]
        assert tuple(pixels[int(y + h / 2), int(x + w / 2)]) == tuple(cat["color"])
        assert abs(coco.annToMask(ann).sum() - ann["area"]) <= 0.2 * ann["area"] + 8
    for img in lvis.load_imgs(None):
        present = {a["category_id"] for a in lvis.img_ann_map[img["id"]]}
        assert not present & set(img["neg_category_ids"])
    again = make_synthetic_coco(str(tmp_path / "b"), num_images=5, image_size=(64, 80),
                                categories=6, seed=3, objects_per_image=(2, 3))
    other = make_synthetic_coco(str(tmp_path / "c"), num_images=5, image_size=(64, 80),
                                categories=6, seed=4, objects_per_image=(2, 3))
    assert open(data.coco_json).read() == open(again.coco_json).read()
    assert open(data.coco_json).read() != open(other.coco_json).read()
    name = "000000000001.png"
    assert (open(os.path.join(data.image_root, name), "rb").read()
            == open(os.path.join(again.image_root, name), "rb").read())


def test_synthetic_registration_and_perfect_predictions(tmp_path, monkeypatch):
    from lvis import LVIS, LVISEval, LVISResults
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cats = [{"name": "red box", "shape": "rectangle", "color": "red"},
            {"name": "blue ball", "shape": "ellipse", "color": "blue", "split": "novel"},
            {"name": "green tri", "shape": "triangle", "color": (0, 200, 0)}]
    data = make_synthetic_coco(str(tmp_path), num_images=6, categories=cats, seed=1,
                               image_format="jpg")
    coco_name = register_synthetic_dataset("test_datasets_syn_coco", data, style="coco")
    lvis_name = register_synthetic_dataset("test_datasets_syn_lvis", data, style="lvis",
                                           filter_rare=True)
    try:
        meta = MetadataCatalog.get(coco_name)
        assert meta.thing_classes == ["red box", "blue ball", "green tri"]
        assert meta.class_split == ["base", "novel", "base"] and meta.novel_classes == ["blue ball"]
        dicts = DatasetCatalog.get(coco_name)
        assert sum(len(d["annotations"]) for d in dicts) == data.num_annotations
        lvis_meta = MetadataCatalog.get(lvis_name)
        assert lvis_meta.thing_classes == ["red_box", "green_tri"]
        assert lvis_meta.novel_classes == [] and lvis_meta.base_classes == ["red_box", "green_tri"]
        lvis_dicts = DatasetCatalog.get(lvis_name)
        assert {a["category_id"] for d in lvis_dicts for a in d["annotations"]} <= {0, 1}
        with pytest.raises(ValueError, match="already registered"):
            register_synthetic_dataset(coco_name, data)
    finally:
        for name in (coco_name, lvis_name):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    gt = COCO(data.coco_json)
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "score": 1.0} for a in gt.anns.values()]
    coco_eval = COCOeval(gt, gt.loadRes(results), "bbox")
    coco_eval.evaluate(), coco_eval.accumulate(), coco_eval.summarize()
    assert coco_eval.stats[1] == pytest.approx(1.0)  # AP50 of perfect predictions
    # lvis-api 0.5.3 still uses np.float, removed in NumPy 1.24
    monkeypatch.setattr(np, "float", float, raising=False)
    lvis_gt = LVIS(data.lvis_json)
    lvis_eval = LVISEval(lvis_gt, LVISResults(lvis_gt, results), "bbox")
    lvis_eval.run()
    assert lvis_eval.get_results()["AP50"] == pytest.approx(1.0)
