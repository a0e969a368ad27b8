"""One's own open-vocabulary dataset: registration, class order, RPN recall per split, fine-tuning.

The recipe of docs/CUSTOM_DATASETS.md on a generated COCO-format dataset (3 base, 2 novel classes),
through the command-line tools: ``--register-coco``, embeddings with ``dataset:NAME``, an offline
RPN trained on the base boxes and its recall per split, and RegionCLIP transfer learning with it.
"""
import json
import os
import pickle

import numpy as np
import ovd_world
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from ovd_world import REPO, load_train_net
from tiny_clip import TINY_OPTS, write_tiny_clip

from regionclip.data.datasets.custom_ovd import ovd_categories, read_class_names, register_ovd_coco
from regionclip.data.synthetic import make_synthetic_coco
from regionclip.tools import extract_concept_features as concepts_tool

# contiguous order follows category ids: ids 1..5 in this order
CATS = [{"name": "red square", "shape": "rectangle", "color": "red", "split": "base"},
        {"name": "blue kite", "shape": "diamond", "color": "blue", "split": "novel"},
        {"name": "green wheel", "shape": "ellipse", "color": "green", "split": "base"},
        {"name": "yellow tent", "shape": "triangle", "color": "yellow", "split": "base"},
        {"name": "purple star", "shape": "pentagon", "split": "novel"}]
BASE = ["red square", "green wheel", "yellow tent"]
NOVEL = ["blue kite", "purple star"]
SMALL = ovd_world.SMALL + ["SOLVER.CHECKPOINT_PERIOD", "1000", "SOLVER.MAX_ITER", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom")
    train = make_synthetic_coco(str(root / "gen_train"), num_images=6, categories=CATS, seed=0,
                                split="train", objects_per_image=(2, 3))
    val = make_synthetic_coco(str(root / "gen_val"), num_images=4, categories=CATS, seed=1,
                              split="val", objects_per_image=(2, 3))
    for d in (train, val):  # one's own json: no "split" fields
        coco = json.load(open(d.coco_json))
        for c in coco["categories"]:
            c.pop("split")
        json.dump(coco, open(d.coco_json, "w"))
    (root / "novel.txt").write_text("\n".join(NOVEL) + "\n")
    return {"root": root, "train": train, "val": val, "novel": str(root / "novel.txt")}


def _register_args(data, suffix):
    return ["--register-coco", f"mine_train_{suffix}", data["train"].coco_json,
            data["train"].image_root, "base",
            "--register-coco", f"mine_val_{suffix}", data["val"].coco_json,
            data["val"].image_root, "--novel-classes", data["novel"]]


def test_register_splits_filter_and_reindex(data):
    train = data["train"]
    coco = json.load(open(train.coco_json))
    meta = register_ovd_coco("mine_unit_base", train.coco_json, train.image_root, NOVEL, "base")
    assert meta["thing_classes"] == BASE and meta["novel_classes"] == []
    dicts = DatasetCatalog.get("mine_unit_base")
    id_to_name = {c["id"]: c["name"] for c in coco["categories"]}
    expected = {}  # image file -> sorted base class names, images without base objects dropped
    for img in coco["images"]:
        names = sorted(id_to_name[a["category_id"]] for a in coco["annotations"]
                       if a["image_id"] == img["id"] and id_to_name[a["category_id"]] in BASE)
        if names:
            expected[img["file_name"]] = names
    got = {os.path.basename(d["file_name"]):
           sorted(BASE[a["category_id"]] for a in d["annotations"])
           for d in dicts}
    assert got == expected
    meta = register_ovd_coco("mine_unit_all", train.coco_json, train.image_root, NOVEL)
    assert meta["thing_classes"] == [c["name"] for c in CATS]
    assert meta["base_classes"] == BASE and meta["novel_classes"] == NOVEL
    assert meta["class_split"] == [c["split"] for c in CATS]
    assert len(DatasetCatalog.get("mine_unit_all")) == len(coco["images"])
    assert MetadataCatalog.get("mine_unit_all").json_file == train.coco_json
    # registering the same thing again is a no-op; another registration under the name is not
    register_ovd_coco("mine_unit_all", train.coco_json, train.image_root, NOVEL)
    with pytest.raises(ValueError, match="'mine_unit_all' is already registered"):
        register_ovd_coco("mine_unit_all", train.coco_json, train.image_root, ["blue kite"])


def test_novel_classes_from_split_fields_and_names(data, tmp_path):
    tagged = json.load(open(data["train"].coco_json))
    for c in tagged["categories"]:
        c["split"] = "unseen" if c["name"] in NOVEL else "seen"
    path = tmp_path / "tagged.json"
    path.write_text(json.dumps(tagged))
    assert [c["split"] for c in ovd_categories(str(path))] == [c["split"] for c in CATS]
    assert [c["split"] for c in ovd_categories(data["train"].coco_json)] == ["base"] * 5
    assert read_class_names("blue kite, purple star") == NOVEL
    assert read_class_names(data["novel"]) == NOVEL


def test_base_only_json_undeclared_ids_and_odd_split_tags(data, tmp_path, caplog):
    train = data["train"]
    coco = json.load(open(train.coco_json))
    novel_ids = {c["id"] for c in coco["categories"] if c["name"] in NOVEL}
    base_only = dict(coco, categories=[c for c in coco["categories"] if c["id"] not in novel_ids],
                     annotations=[a for a in coco["annotations"]
                                  if a["category_id"] not in novel_ids])
    path = tmp_path / "base_only.json"
    path.write_text(json.dumps(base_only))
    # the novel names are absent from a base-only json: fine with split "base", an error otherwise
    meta = register_ovd_coco("mine_pre_split", str(path), train.image_root, NOVEL, "base")
    assert meta["thing_classes"] == BASE
    with pytest.raises(ValueError, match="register a json that holds only the base classes"):
        register_ovd_coco("mine_pre_split_all", str(path), train.image_root, NOVEL, "all")
    # an annotation of an undeclared category is an error when the data is read, not dropped
    path = tmp_path / "undeclared.json"
    path.write_text(json.dumps(dict(base_only, annotations=coco["annotations"])))
    register_ovd_coco("mine_undeclared", str(path), train.image_root, NOVEL, "base")
    with pytest.raises(ValueError,
                       match="undeclared.json'.*category_id .* not in its 'categories'"):
        DatasetCatalog.get("mine_undeclared")
    # split values other than seen/unseen/base/novel count as base, with a warning
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(dict(coco, categories=[dict(c, split="target") for c in
                                                      coco["categories"]])))
    with caplog.at_level("WARNING"):
        assert {c["split"] for c in ovd_categories(str(path))} == {"base"}
    assert "['target'] are neither seen/unseen nor base/novel" in caplog.text


def test_evaluation_never_reuses_a_stale_converted_json(data, tmp_path):
    from regionclip.engine.trainer import build_evaluator

    train = data["train"]
    register_ovd_coco("mine_stale", train.coco_json, train.image_root, NOVEL, "novel")
    stale = tmp_path / "mine_stale_coco_format.json"
    stale.write_text(json.dumps({"images": [], "annotations": [], "categories": [
        {"id": 1, "name": "red square"}]}))
    build_evaluator(None, "mine_stale", str(tmp_path))
    converted = json.load(open(stale))
    assert [c["name"] for c in converted["categories"]] == NOVEL and converted["images"]


@pytest.mark.parametrize("case", ["missing_json", "unknown_novel", "bad_split", "builtin_name",
                                  "missing_images", "no_novel", "not_coco", "empty_novel_list"])
def test_bad_registrations_are_clear_errors(data, tmp_path, case):
    train = data["train"]
    (tmp_path / "x.json").write_text(json.dumps({"images": []}))
    args = {"missing_json": ("mine_e1", str(tmp_path / "nope.json"), train.image_root, NOVEL,
                             "all"),
            "unknown_novel": ("mine_e2", train.coco_json, train.image_root, ["zebra"], "all"),
            "bad_split": ("mine_e3", train.coco_json, train.image_root, NOVEL, "seen"),
            "builtin_name": ("coco_2017_val", train.coco_json, train.image_root, NOVEL, "all"),
            "missing_images": ("mine_e4", train.coco_json, str(tmp_path / "no"), NOVEL, "all"),
            "no_novel": ("mine_e5", train.coco_json, train.image_root, None, "novel"),
            "not_coco": ("mine_e6", str(tmp_path / "x.json"), train.image_root, None, "all")}
    expected = {"missing_json": (FileNotFoundError, "nope.json' does not exist"),
                "unknown_novel": (ValueError, r"\['zebra'\] are not categories"),
                "bad_split": (ValueError, "split must be one of"),
                "builtin_name": (ValueError, "'coco_2017_val' is already registered"),
                "missing_images": (FileNotFoundError, "image folder '.*no' does not exist"),
                "no_novel": (ValueError, "has no novel category"),
                "not_coco": (ValueError, "x.json' has no COCO 'categories'"),
                "empty_novel_list": (ValueError, "names no class")}[case]
    with pytest.raises(expected[0], match=expected[1]):
        if case == "empty_novel_list":
            read_class_names(" , ")
        else:
            register_ovd_coco(*args[case])


def test_embeddings_follow_the_registered_class_order(data, tmp_path):
    _, weights = write_tiny_clip(str(tmp_path))
    out = tmp_path / "base.pth"
    emb = concepts_tool.run(["--concepts", "dataset:mine_train_emb", "--weights", weights,
                             "--output", str(out), "--device", "cpu"]
                            + _register_args(data, "emb"))
    encoder = concepts_tool.load_text_encoder(weights)
    expected = concepts_tool.compute_concept_embeddings(encoder, BASE, True, 256, True)
    assert emb.shape == (3, 64)
    torch.testing.assert_close(torch.load(out), expected)
    with pytest.raises(KeyError, match="no registered dataset 'mine_nothing'"):
        concepts_tool.expand_concepts(["dataset:mine_nothing"])
    with pytest.raises(SystemExit):  # the config form reads INPUT_DIR/concepts.txt
        concepts_tool.run(["--config-file",
                            os.path.join(REPO, "configs/pretrain/RegionCLIP_RN50.yaml")]
                           + _register_args(data, "cfg"))
    # KEY VALUE overrides swallowed by --register-coco are named
    with pytest.raises(ValueError, match="takes NAME JSON IMAGE_ROOT .*'MODEL.DEVICE'"):
        concepts_tool.run(["--register-coco", "mine_x", data["val"].coco_json,
                            data["val"].image_root, "MODEL.DEVICE", "cpu", "--concepts", "a",
                            "--weights", weights, "--output", str(out)])


def _recall_at_05(proposals_pkl, coco_json, names, limit=100):
    """Independent recall: a gt box counts when some of the first `limit` proposals has
    IoU >= 0.5."""
    props = pickle.load(open(proposals_pkl, "rb"))
    coco = json.load(open(coco_json))
    ids = {c["id"] for c in coco["categories"] if c["name"] in names}
    hit = total = 0
    for image_id, boxes in zip(props["ids"], props["boxes"]):
        boxes = np.asarray(boxes)[:limit]
        for a in coco["annotations"]:
            if a["image_id"] != image_id or a["category_id"] not in ids:
                continue
            x, y, w, h = a["bbox"]
            ix = np.clip(np.minimum(boxes[:, 2], x + w) - np.maximum(boxes[:, 0], x), 0, None)
            iy = np.clip(np.minimum(boxes[:, 3], y + h) - np.maximum(boxes[:, 1], y), 0, None)
            inter = ix * iy
            union = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + w * h - inter
            total += 1
            hit += bool(len(boxes)) and bool((inter / union >= 0.5).any())
    return 100.0 * hit / total


def _damped_r50(config_file, path):
    """A random R50-C4 detector whose blocks' last FrozenBN scales are 0.2 (an undamped random R50
    overflows to NaN features, and an RPN on them proposes nothing)."""
    from detectron2.modeling import build_model

    from regionclip.config import load_config

    torch.manual_seed(0)
    model = build_model(load_config(config_file, ["MODEL.DEVICE", "cpu", "MODEL.MASK_ON", "False",
                                                  "MODEL.ROI_HEADS.NUM_CLASSES", "3"]))
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("conv3.norm"):
                module.weight.mul_(0.2)
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.mark.slow
def test_rpn_on_base_boxes_then_transfer_learning(data, tmp_path, monkeypatch):
    """The whole recipe: RPN trained on base boxes, its recall per split, RegionCLIP fine-tuned."""
    from detectron2.engine import default_argument_parser

    from regionclip.data.datasets.custom_ovd import add_register_arguments

    monkeypatch.chdir(tmp_path)
    train_net = load_train_net()
    parser = add_register_arguments(default_argument_parser())
    reg = _register_args(data, "e2e")
    fsd = os.path.join(REPO, "configs/COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x_ovd_FSD.yaml")
    rpn_out = tmp_path / "rpn"
    # 1. a detector on the base classes (only its backbone and RPN are used afterwards), from a
    # random R50 whose residual branches are damped (as ImageNet weights, it keeps activations
    # finite)
    init = _damped_r50(fsd, str(tmp_path / "r50_init.pth"))
    train_net.main(parser.parse_args(
        ["--config-file", fsd] + reg + SMALL + [
            "MODEL.WEIGHTS", init, "MODEL.MASK_ON", "False", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
            "DATASETS.TRAIN", "('mine_train_e2e',)", "DATASETS.TEST", "()",
            "OUTPUT_DIR", str(rpn_out)]))
    rpn_weights = rpn_out / "model_final.pth"
    assert rpn_weights.is_file()
    # 2. its proposals' recall on the novel and base classes of the validation set
    res = train_net.main(parser.parse_args(
        ["--config-file", fsd, "--eval-only"] + reg + SMALL + [
            "MODEL.META_ARCHITECTURE", "ProposalNetwork", "MODEL.WEIGHTS", str(rpn_weights),
            "DATASETS.TEST", "('mine_val_e2e',)", "OUTPUT_DIR", str(rpn_out / "eval")]))
    recall = res["box_proposals"]
    pkl = rpn_out / "eval" / "inference" / "box_proposals.pkl"
    assert all(len(b) > 20 for b in pickle.load(open(pkl, "rb"))["boxes"])  # finite, non-empty
    for split, names in (("novel", NOVEL), ("base", BASE), ("all", BASE + NOVEL)):
        assert recall[f"R50@100_{split}"] == pytest.approx(
            _recall_at_05(pkl, data["val"].coco_json, names), abs=1e-6)
        assert 0 <= recall[f"R@100_{split}"] <= recall[f"R50@100_{split}"]
    assert "AR@100" in recall  # detectron2's own numbers are kept
    # 3. RegionCLIP transfer learning on the base classes with that RPN, evaluated on all classes
    arch, clip_weights = write_tiny_clip(str(tmp_path))
    embeddings = {}
    for name, rows in (("mine_train_e2e", 3), ("mine_val_e2e", 5)):
        path = str(tmp_path / f"{name}.pth")
        concepts_tool.run(["--concepts", f"dataset:{name}", "--weights", clip_weights,
                            "--output", path, "--device", "cpu"])
        assert torch.load(path).shape == (rows, 64)
        embeddings[name] = path
    ovd = os.path.join(REPO, "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd.yaml")
    opts = SMALL + TINY_OPTS + [
        "MODEL.CLIP.ARCH", arch, "MODEL.WEIGHTS", clip_weights,
        "MODEL.CLIP.OFFLINE_RPN_CONFIG", fsd, "MODEL.CLIP.BB_RPN_WEIGHTS", str(rpn_weights),
        "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.CLIP.TEXT_EMB_PATH",
                                embeddings["mine_train_e2e"],
        "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH", embeddings["mine_val_e2e"],
        "DATASETS.TRAIN", "('mine_train_e2e',)", "DATASETS.TEST", "('mine_val_e2e',)",
        "OUTPUT_DIR", str(tmp_path / "transfer")]
    train_net.main(parser.parse_args(["--config-file", ovd] + reg + opts))
    final = torch.load(tmp_path / "transfer" / "model_final.pth", map_location="cpu",
                       weights_only=False)["model"]
    rpn_state = torch.load(rpn_weights, map_location="cpu", weights_only=False)["model"]
    # the offline RPN is the one trained in step 1, untouched by transfer learning
    for key, value in rpn_state.items():
        if key.startswith("proposal_generator."):
            torch.testing.assert_close(final["offline_" + key], value)
    # the fine-tuned checkpoint alone (it holds the offline RPN): no BB_RPN_WEIGHTS
    i = opts.index("MODEL.CLIP.BB_RPN_WEIGHTS")
    bbox = train_net.main(parser.parse_args(
        ["--config-file", ovd, "--eval-only"] + reg + opts[:i] + opts[i + 2:-2] + [
            "MODEL.WEIGHTS", str(tmp_path / "transfer" / "model_final.pth"),
            "OUTPUT_DIR", str(tmp_path / "transfer_eval")]))["bbox"]
    for key in ("AP50_novel", "AP50_base", "AP50_all"):
        assert key in bbox and bbox[key] == bbox[key]  # reported and not NaN
    with_rpn = train_net.main(parser.parse_args(
        ["--config-file", ovd, "--eval-only"] + reg + opts[:-2] + [
            "MODEL.WEIGHTS", str(tmp_path / "transfer" / "model_final.pth"),
            "OUTPUT_DIR", str(tmp_path / "transfer_eval2")]))["bbox"]
    assert with_rpn == pytest.approx(bbox, nan_ok=True)
    detections = [json.load(open(tmp_path / out / "inference" / "coco_instances_results.json"))
                  for out in ("transfer_eval", "transfer_eval2")]
    assert detections[0] and detections[0] == detections[1]  # the same regions, the same boxes
