"""The toy world: generator, captions, AP implementation, and the whole pipeline at micro size."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from toyworld.ap import MatchTable, bootstrap_ap50, split_ap50
from toyworld.captions import caption_nouns, make_caption
from toyworld.pipeline import MARKERS, STAGES, run_pipeline
from toyworld.scenes import SceneSpec, draw_scene, render_shape
from toyworld.settings import load_settings
from toyworld.vocabulary import (
    BACKGROUNDS,
    BASE_SHAPES,
    COLOUR_WORDS,
    NOVEL_SHAPES,
    SHAPE_SYNONYMS,
    SHAPES,
    categories,
)
from toyworld.world import World, crop_closeup, generate_world

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # projects/toyworld
REPO = os.path.dirname(os.path.dirname(PROJECT))
NOVEL_WORDS = {w for s in NOVEL_SHAPES for w in SHAPE_SYNONYMS[s]}


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_settings():
    """The pipeline sets the thread count and deterministic kernels for the whole process (as
    its command line wants); the tests after this module get the settings they had before."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _micro(*opts):
    return load_settings("micro", ["NUM_THREADS", "1", *opts])


@pytest.fixture(scope="module")
def micro_world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("world") / "world")
    generate_world(_micro("WORLD.NUM_CAPTION_IMAGES", "120"), root, progress=False)
    return World(root)


# ---------------------------------------------------------------- generator and captions
def test_boxes_are_tight_around_the_painted_shape():
    rng = np.random.default_rng(3)
    spec = SceneSpec(image_size=(64, 64), clutter=0.0)
    for shape in SHAPES:
        scene = draw_scene(rng, spec, shapes=[shape])
        (obj,) = scene.objects
        x, y, w, h = obj["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64
        assert 0.2 * w * h < obj["area"] <= w * h, shape  # the box holds the mask's pixels
        # the outline (holes aside: the crescent's horns stop short of the right side) is
        # stretched to fill the box it is drawn in
        mask = render_shape(shape, 40, 30, 17.0) >= 0.5
        ys, xs = np.nonzero(mask)
        right = 30 if shape == "crescent" else 37
        assert xs.min() <= 2 and xs.max() >= right and ys.min() <= 2 and ys.max() >= 27, shape
        assert 0.2 < mask.mean() < 1.0, shape  # a real outline, not the full box


@pytest.mark.parametrize("context", [(1.0, 1.0), (1.5, 2.0)])
def test_crop_closeups_frame_one_object_of_a_full_scene(context):
    spec = SceneSpec(image_size=(96, 96), objects=(3, 4))
    for seed in range(20):
        crop = crop_closeup(np.random.default_rng(seed), spec, context)
        full = draw_scene(np.random.default_rng(seed), spec)  # the scene it was cut from
        (obj,) = crop.objects
        source = [o for o in full.objects
                  if (o["shape"], o["colour"], o["texture"]) == (obj["shape"], obj["colour"],
                                                                 o["texture"])]
        assert source and crop.image.shape == (96, 96, 3) and crop.background == full.background
        x, y, w, h = obj["bbox"]
        assert -0.01 <= x and -0.01 <= y and x + w <= 96.01 and y + h <= 96.01  # all in view
        # the crop is its box times the context, warped to a square (as crops are evaluated):
        # each side of the object fills 1 / context of the image (up to jitter and clipping)
        for side in (w / 96, h / 96):
            if context == (1.0, 1.0):
                assert side > 0.8, (seed, obj["bbox"])
            else:
                assert 1 / 2.5 < side < 1 / 1.2, (seed, obj["bbox"])


def test_detection_inputs_resize_scene_and_boxes_and_keep_the_scene_size():
    from toyworld.common import detection_inputs

    rng = np.random.default_rng(0)
    scene = draw_scene(rng, SceneSpec(image_size=(64, 64), objects=(2, 2), clutter=0.0))
    image = scene.image[None]
    box = np.array([[o["bbox"][0], o["bbox"][1], o["bbox"][0] + o["bbox"][2],
                     o["bbox"][1] + o["bbox"][3]] for o in scene.objects], np.float32)
    boxes = [{"boxes": box, "classes": np.array([0, 1])}]
    same = detection_inputs(image, boxes, 0)
    big = detection_inputs(image, boxes, 0, size=96)
    assert same["image"].shape == (3, 64, 64) and big["image"].shape == (3, 96, 96)
    assert (big["height"], big["width"]) == (64, 64)  # outputs come back in scene pixels
    np.testing.assert_allclose(big["instances"].gt_boxes.tensor.numpy(), box * 1.5, atol=1e-4)
    # the picture is the scene's, upsampled: each object's mean colour is kept
    for (x0, y0, x1, y1) in box.astype(int):
        small = same["image"][:, y0 + 2:y1 - 2, x0 + 2:x1 - 2].mean((1, 2))
        large = big["image"][:, int(y0 * 1.5) + 3:int(y1 * 1.5) - 3,
                             int(x0 * 1.5) + 3:int(x1 * 1.5) - 3].mean((1, 2))
        assert torch.allclose(small, large, atol=12), (small, large)
    flipped = detection_inputs(image, boxes, 0, flip=True, size=96)
    np.testing.assert_allclose(flipped["instances"].gt_boxes.tensor.numpy()[:, [2, 0]],
                               96 - box[:, [0, 2]] * 1.5, atol=1e-4)


def test_input_size_scales_the_rpn_anchors_and_every_stage_input():
    from toyworld.common import stage_cfg
    from toyworld.train_rpn import rpn_cfg

    plain = rpn_cfg(_micro("INPUT_SIZE", "0"), "arch.json")
    big = rpn_cfg(_micro("INPUT_SIZE", "96"), "arch.json")
    assert plain.INPUT.MAX_SIZE_TRAIN == 64 and big.INPUT.MAX_SIZE_TRAIN == 96
    assert big.INPUT.MIN_SIZE_TEST == 96
    assert np.allclose(np.array(big.MODEL.ANCHOR_GENERATOR.SIZES),
                       1.5 * np.array(plain.MODEL.ANCHOR_GENERATOR.SIZES))
    # the RoI pooler follows CLIP's attention grid (its training pictures), not the input size
    settings = _micro("INPUT_SIZE", "96")
    transfer = stage_cfg(settings, settings.TRANSFER)
    assert transfer.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION == 2 * (64 // 32)
    assert transfer.INPUT.MAX_SIZE_TEST == 96
    with pytest.raises(ValueError, match="INPUT_SIZE"):
        _micro("INPUT_SIZE", "32")
    with pytest.raises(ValueError, match="WORKERS"):
        _micro("WORKERS", "0")


def test_pretrain_input_size_upsamples_pretraining_and_scales_its_rpn_anchors(tmp_path):
    from toyworld.common import stage_cfg
    from toyworld.pretrain import offline_rpn_config, pretrain_cfg
    from toyworld.train_rpn import rpn_cfg

    same = _micro("INPUT_SIZE", "96")
    rpn_yaml = tmp_path / "rpn.yaml"
    rpn_yaml.write_text(rpn_cfg(same, "arch.json").dump())
    # same size: the stage-2 config itself
    assert offline_rpn_config(same, str(rpn_yaml), str(tmp_path)) == str(rpn_yaml)
    bigger = _micro("INPUT_SIZE", "96", "PRETRAIN.INPUT_SIZE", "192")
    assert stage_cfg(bigger, bigger.PRETRAIN).INPUT.MAX_SIZE_TRAIN == 192
    assert stage_cfg(bigger, bigger.TRANSFER).INPUT.MAX_SIZE_TRAIN == 96  # only stage 3
    scaled = offline_rpn_config(bigger, str(rpn_yaml), str(tmp_path))
    assert scaled != str(rpn_yaml)
    # pretraining is wired to the scaled copy
    pool = str(tmp_path / "concept_emb.pth")
    cfg = pretrain_cfg(bigger, {"arch": "arch.json", "weights": "clip.pth"},
                       {"config": str(rpn_yaml), "weights": "rpn.pth"}, pool)
    assert cfg.MODEL.CLIP.OFFLINE_RPN_CONFIG == scaled
    from detectron2.config import get_cfg

    from regionclip.config import add_regionclip_config

    cfg = get_cfg()
    add_regionclip_config(cfg)
    cfg.merge_from_file(scaled)
    assert np.allclose(np.array(cfg.MODEL.ANCHOR_GENERATOR.SIZES),
                       2 * np.array(rpn_cfg(same, "arch.json").MODEL.ANCHOR_GENERATOR.SIZES))
    with pytest.raises(ValueError, match="PRETRAIN.INPUT_SIZE"):
        _micro("PRETRAIN.INPUT_SIZE", "1000")


def test_captions_mention_a_subset_of_objects_with_their_nouns():
    rng = np.random.default_rng(0)
    spec = SceneSpec(objects=(4, 5))
    partial = 0
    for _ in range(60):
        scene = draw_scene(rng, spec)
        caption = make_caption(rng, scene)
        nouns = set(caption_nouns(caption))
        present = {w for o in scene.objects for w in SHAPE_SYNONYMS[o["shape"]]}
        absent = {w for ws in SHAPE_SYNONYMS.values() for w in ws} - present
        assert not nouns & absent, (caption, scene.objects)  # never names a missing shape
        named = {s for s in SHAPES if set(SHAPE_SYNONYMS[s]) & nouns}
        partial += len(named) < len({o["shape"] for o in scene.objects})
    assert partial > 10  # captions often leave objects out, like real captions


def _mention_rates(mention, n=400):
    """Share of single-object captions that name the colour / the background."""
    rng = np.random.default_rng(1)
    spec = SceneSpec(objects=(1, 1))
    colour = background = 0
    for _ in range(n):
        scene = draw_scene(rng, spec)
        words = set(re.findall(r"[a-z]+", make_caption(rng, scene, mention=mention)))
        colour += bool(words & set(COLOUR_WORDS[scene.objects[0]["colour"]]))
        background += bool(words & {w for p in BACKGROUNDS[scene.background]
                                    for w in re.findall(r"[a-z]+", p)} - {"a", "the", "on", "in"})
    return colour / n, background / n


def test_caption_mention_probabilities_follow_the_setting():
    rare = _mention_rates({"colour": 0.05, "texture": 0.05, "background": 0.05})
    often = _mention_rates({"colour": 0.9, "texture": 0.5, "background": 0.9})
    assert rare[0] < 0.12 and rare[1] < 0.15
    assert often[0] > 0.8 and often[1] > 0.8
    with pytest.raises(ValueError, match="CAPTION_MENTION"):
        load_settings("micro", ["WORLD.CAPTION_MENTION", "[0.4, 1.5, 0.6]"])


def test_caption_nouns_lemmatises_plurals():
    assert caption_nouns("two red discs and a moon on the grass.") == ["disc", "moon", "grass"]
    assert caption_nouns("several crosses") == ["cross"]


def test_novel_shapes_in_captions_never_in_detection_training(micro_world):
    base_json = micro_world.coco("det_train_base")
    novel_ids = {c["id"] for c in categories() if c["split"] == "novel"}
    assert [c["name"] for c in base_json["categories"]] == list(BASE_SHAPES)
    assert base_json["annotations"] and not any(a["category_id"] in novel_ids
                                                for a in base_json["annotations"])
    # novel objects are in the training images (unannotated) and in the captions
    full = micro_world.coco("det_train_all")
    assert any(a["category_id"] in novel_ids for a in full["annotations"])
    words = {w for caps in micro_world.captions("captions") for c in caps
             for w in caption_nouns(c)}
    assert words & NOVEL_WORDS
    assert set(micro_world.concepts()) & NOVEL_WORDS  # the concept pool has novel nouns
    test = micro_world.coco("test_all")
    assert {a["category_id"] for a in test["annotations"]} & novel_ids


def test_world_files_are_consistent(micro_world):
    images = micro_world.images("test")
    meta = micro_world.meta
    assert images.shape == (meta["splits"]["test"]["images"], 64, 64, 3)
    assert images.dtype == np.uint8
    from PIL import Image

    png = np.asarray(Image.open(os.path.join(micro_world.root, "test", "000001.png")))
    np.testing.assert_array_equal(png, images[0])
    assert micro_world.class_names == list(SHAPES)
    boxes = micro_world.boxes("test_all")
    assert sum(len(b["boxes"]) for b in boxes) == meta["splits"]["test"]["objects"]
    assert all((b["boxes"][:, 2:] > b["boxes"][:, :2]).all() for b in boxes if len(b["boxes"]))


def test_same_seed_same_world_other_seed_other_world(tmp_path):
    paths = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        generate_world(_micro("SEED", str(seed)), str(tmp_path / name), progress=False)
        paths[name] = World(str(tmp_path / name))
    np.testing.assert_array_equal(paths["a"].images("captions"), paths["b"].images("captions"))
    assert paths["a"].captions() == paths["b"].captions()
    assert not np.array_equal(paths["a"].images("captions"), paths["c"].images("captions"))


# ---------------------------------------------------------------- AP50 and bootstrap
def _random_detections(seed, num_images=12, num_classes=3):
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for _ in range(num_images):
        k = int(rng.integers(0, 4))
        xy = rng.uniform(0, 60, (k, 2))
        gt = np.concatenate([xy, xy + rng.uniform(8, 30, (k, 2))], 1).astype(np.float32)
        gts.append({"boxes": gt, "classes": rng.integers(0, num_classes, k)})
        d = int(rng.integers(0, 7))
        jitter = gt[rng.integers(0, max(k, 1), d)] if k else np.zeros((d, 4), np.float32)
        boxes = jitter + rng.normal(0, 4, (d, 4)).astype(np.float32)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        preds.append({"boxes": boxes, "scores": rng.uniform(0, 1, d).round(3),
                      "classes": rng.integers(0, num_classes, d)})
    return gts, preds


def _pycocotools_ap50(gts, preds, num_classes):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = [{"id": i + 1, "width": 100, "height": 100} for i in range(len(gts))]
    anns = [{"id": len(images) * 100 + j + 1000 * i, "image_id": i + 1, "category_id": int(c) + 1,
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
             "area": float((b[2] - b[0]) * (b[3] - b[1])), "iscrowd": 0}
            for i, g in enumerate(gts) for j, (b, c) in enumerate(zip(g["boxes"], g["classes"]))]
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
    gt.createIndex()
    dets = [{"image_id": i + 1, "category_id": int(c) + 1, "score": float(s),
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
            for i, p in enumerate(preds) for b, s, c in zip(p["boxes"], p["scores"], p["classes"])]
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    precision = ev.eval["precision"][0, :, :, 0, -1]  # IoU 0.5, all areas, 100 detections
    return np.array([precision[:, c][precision[:, c] > -1].mean() * 100
                     if (precision[:, c] > -1).any() else np.nan for c in range(num_classes)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap50_equals_pycocotools(seed):
    gts, preds = _random_detections(seed)
    ours = MatchTable(preds, gts, 3).class_ap()
    theirs = _pycocotools_ap50(gts, preds, 3)
    np.testing.assert_allclose(ours, theirs, atol=1e-6, equal_nan=True)


def test_bootstrap_spread_and_determinism():
    gts, preds = _random_detections(5, num_images=40)
    table = MatchTable(preds, gts, 3)
    splits = {"a": [0], "all": [0, 1, 2]}
    one = bootstrap_ap50(table, splits, samples=50, seed=7)
    assert one == bootstrap_ap50(table, splits, samples=50, seed=7)
    full = split_ap50(table.class_ap(), splits)
    for name in splits:
        assert one[name]["ap50"] == pytest.approx(full[name])
        assert one[name]["std"] > 0 and one[name]["lo"] < one[name]["hi"]
    # a perfect detector has AP 100 and no spread
    perfect = [{"boxes": g["boxes"], "scores": np.ones(len(g["boxes"])), "classes": g["classes"]}
               for g in gts]
    res = bootstrap_ap50(MatchTable(perfect, gts, 3), splits, samples=20)
    assert res["all"]["ap50"] == pytest.approx(100.0) and res["all"]["std"] == pytest.approx(0.0)


# ---------------------------------------------------------------- the whole pipeline
def _numbers(out):
    report = json.load(open(os.path.join(out, "report.json")))
    values = {}
    for table in ("zeroshot", "transfer"):
        for model, res in report[table].items():
            for regions, r in (res.items() if table == "zeroshot" else [("RPN", res)]):
                for split in ("novel", "base", "all"):
                    values[f"{table}/{model}/{regions}/{split}"] = r["coco"][f"AP50_{split}"]
    return values


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("toy") / "run")
    ran = run_pipeline(_micro(), out, progress=False)
    return out, ran


@pytest.mark.slow
def test_every_stage_writes_its_outputs(micro_run):
    out, ran = micro_run
    assert list(ran) == [s for s in STAGES if s != "report"]
    for stage in STAGES:
        assert os.path.isfile(os.path.join(out, MARKERS[stage])), stage
    from toyworld.text import load_clip

    arch = os.path.join(out, "clip", "arch.json")
    teacher = load_clip(arch, os.path.join(out, "clip", "clip.pth"))
    student = load_clip(arch, os.path.join(out, "pretrain", "student_clip.pth"))
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    assert any(not torch.equal(t_sd[k], s_sd[k]) for k in t_sd if k.startswith("visual.layer"))
    assert all(torch.equal(t_sd[k], s_sd[k]) for k in t_sd
               if not k.startswith("visual.") and k != "logit_scale")  # frozen text tower
    assert all(torch.equal(t_sd[k], s_sd[k]) for k in t_sd if k.startswith("visual.layer1"))
    clip_loss = json.load(open(os.path.join(out, "clip", "metrics.json")))["loss"]
    assert np.isfinite(clip_loss).all() and np.mean(clip_loss[-3:]) < np.mean(clip_loss[:3])
    rpn = json.load(open(os.path.join(out, "rpn", "metrics.json")))
    rpn_loss = [r["total"] for r in rpn["loss"]]
    assert np.isfinite(rpn_loss).all() and np.mean(rpn_loss[-3:]) < np.mean(rpn_loss[:3])
    assert 0 <= rpn["recall50_base"] <= 1 and 0 <= rpn["recall50_novel"] <= 1
    pre = json.load(open(os.path.join(out, "pretrain", "metrics.json")))
    assert set(pre["loss"][0]) == {"loss_region_distill", "loss_concept_contrastive",
                                   "loss_img_txt_level", "total"}
    assert all(np.isfinite(list(r.values())).all() for r in pre["loss"])
    pool = torch.load(os.path.join(out, "pretrain", "concept_emb.pth"))
    assert pool.shape == (pre["concepts"], 32)
    numbers = _numbers(out)
    assert len(numbers) == 21 and all(v is None or 0 <= v <= 100 for v in numbers.values())
    # the oracle learns all 12 categories' boxes; the two transfer detectors only the 8 base ones
    from detectron2.config import CfgNode

    for name, classes, emb in (("teacher", 8, "base"), ("student", 8, "base"),
                               ("oracle", 12, "all")):
        cfg = CfgNode.load_yaml_with_base(os.path.join(out, "transfer", name, "config.yaml"))
        assert cfg["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == classes, name
        assert cfg["MODEL"]["CLIP"]["TEXT_EMB_PATH"].endswith(f"{emb}_class_emb.pth"), name
        assert torch.load(cfg["MODEL"]["CLIP"]["TEXT_EMB_PATH"]).shape[0] == classes
    regions = json.load(open(os.path.join(out, "report.json")))["regions"]
    for model in ("teacher", "student"):
        for mode in ("roi", "crop"):
            assert all(0 <= regions[model][mode][s] <= 1 for s in ("all", "base", "novel"))
    assert "Fig. 1 at toy scale" in open(os.path.join(out, "report.md")).read()
    # the bootstrap's own AP50 on all test images is the split evaluator's
    report = json.load(open(os.path.join(out, "report.json")))
    results = [r for m in report["zeroshot"].values() for r in m.values()]
    results += list(report["transfer"].values())
    for res in results:
        for split in ("novel", "base", "all"):
            ours, coco = res["bootstrap"][split]["ap50"], res["coco"][f"AP50_{split}"]
            assert (ours is None and coco is None) or ours == pytest.approx(coco, abs=1e-6)
    demo = json.load(open(os.path.join(out, "demo", "detections.json")))
    assert len(demo["images"]) == 2 and set(NOVEL_SHAPES) <= set(demo["vocabulary"])
    package = os.path.join(out, "demo", "toyworld_detector.pth")
    final = os.path.join(out, "transfer", "student", "model_final.pth")
    assert os.path.getsize(package) < os.path.getsize(final)  # float16, no unused token rows
    unpacked = torch.load(os.path.join(out, "demo", "package", "detector.pth"))["model"]
    trained = torch.load(final, weights_only=False)["model"]
    for key, value in trained.items():
        if key.startswith("offline_backbone.layer4") or "test_cls_score" in key:
            continue
        torch.testing.assert_close(unpacked[key], value.float(), rtol=2e-3, atol=1e-4)
    student_text = torch.load(os.path.join(out, "pretrain", "student_clip.pth"))
    torch.testing.assert_close(unpacked["lang_encoder.text_projection"],
                               student_text["text_projection"], rtol=2e-3, atol=1e-4)
    report = open(os.path.join(out, "report.md")).read()
    assert "| RegionCLIP student (stage 3) | GT |" in report and "Made by" not in report


@torch.no_grad()
def _reference_roi_embeddings(clip, images, rows, size):
    """Region embeddings computed by hand from a CLIP file: the scenes resized to ``size``
    (PIL bilinear), RoIAlign of (image, x0, y0, x1, y1) rows on res4 (stride 16, output 2x the
    attention-pool grid), then res5 and the attention pool; the reference for the library's
    :meth:`RegionCLIP.encode_regions`."""
    from PIL import Image
    from torchvision.ops import roi_align
    from toyworld.train_clip import normalize

    scale = size / images.shape[1]
    images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))
                       for im in images])
    rows = rows.clone().float()
    rows[:, 1:] *= scale
    visual = clip.visual
    res = 2 * int(round((visual.attnpool.positional_embedding.shape[0] - 1) ** 0.5))
    feats = visual.forward_features(normalize(images), ["res4"])["res4"]
    return visual.attnpool(visual.layer4(roi_align(feats, rows, res, 1 / 16, 0, True)))


@torch.no_grad()
def _reference_crop_embeddings(clip, images, rows, size, context=1.2):
    from toyworld.train_clip import normalize

    from regionclip.api import crop_and_resize

    crops = np.stack([crop_and_resize(images[int(b)], box, images.shape[1], "warp", context)
                      for b, *box in rows.tolist()])
    return clip.encode_image(normalize(crops))


@pytest.mark.slow
def test_analysis_agrees_with_a_reference_on_the_clip_files(micro_run, tmp_path):
    """The region analysis classifies GT boxes with the library (the zero-shot detector of each
    CLIP file, ``tools/region_accuracy.py``, ``RegionCLIP.encode_regions``/``encode_crops``);
    a reference computed by hand from the CLIP files (RoIAlign + res5 + attention pool, crops
    through the whole tower) must give the same embeddings and the same accuracies."""
    import torch.nn.functional as F
    from toyworld.analysis import CROP_CONTEXT, analyze, zero_shot_detector
    from toyworld.pipeline import stage_paths
    from toyworld.text import load_clip, text_embeddings

    out, _ = micro_run
    settings = _micro()
    result = analyze(out, settings)
    saved = os.path.join(out, "regions", "results.json")
    assert json.load(open(saved)) == json.loads(json.dumps(result))
    paths = stage_paths(out)
    world = World(os.path.join(out, "world"))
    images, gt = world.images("test"), world.boxes("test_all")
    rows = torch.tensor([[i, *b] for i, g in enumerate(gt) for b in g["boxes"]])
    labels = torch.tensor([int(c) for g in gt for c in g["classes"]])
    is_base = torch.isin(labels, torch.tensor([world.class_names.index(c)
                                               for c in world.base_classes]))
    reference, files = {}, {"teacher": paths["clip"], "student": paths["student"]}
    for name, file in files.items():
        clip = load_clip(file["arch"], file["weights"])
        text = F.normalize(text_embeddings(clip.encode_text, world.class_names,
                                           settings.EVAL.PROMPTS), dim=-1)
        for mode, fn in (("roi", _reference_roi_embeddings), ("crop", _reference_crop_embeddings)):
            emb = fn(clip, images, rows, settings.INPUT_SIZE)
            reference[name, mode] = emb
            hit = ((F.normalize(emb, dim=-1) @ text.t()).argmax(1) == labels).float()
            for split, mask in (("all", torch.ones_like(is_base)), ("base", is_base),
                                ("novel", ~is_base)):
                assert result[name][mode][split] == pytest.approx(float(hit[mask].mean()),
                                                                  abs=1e-6), (name, mode, split)
    # a micro teacher predicts one name for nearly everything: compare the embeddings too, and
    # show that they tell the two CLIP files apart (the comparison is not vacuous)
    assert not torch.allclose(reference["teacher", "roi"], reference["student", "roi"], atol=1e-3)
    emb = str(tmp_path / "teacher_class_emb.pth")
    torch.save(text_embeddings(load_clip(paths["clip"]["arch"], paths["clip"]["weights"])
                               .encode_text, world.class_names, settings.EVAL.PROMPTS), emb)
    rc = zero_shot_detector(settings, out, paths["clip"]["arch"], paths["clip"]["weights"], emb)
    with torch.no_grad():
        roi = torch.cat([rc.encode_regions(im, g["boxes"]) for im, g in zip(images, gt)
                         if len(g["boxes"])])
        crop = torch.cat([rc.encode_crops(im, g["boxes"], context=CROP_CONTEXT)
                          for im, g in zip(images, gt) if len(g["boxes"])])
    torch.testing.assert_close(roi, reference["teacher", "roi"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(crop, reference["teacher", "crop"], rtol=1e-4, atol=1e-5)
    pseudo = result["teacher_pseudo_labels"]
    assert pseudo["regions"] > 0
    for key in ("correct", "most_common_share", "any_shape_noun"):
        assert 0 <= pseudo[key] <= 1


@pytest.mark.slow
def test_resume_skips_finished_stages_and_force_reruns(micro_run):
    out, _ = micro_run
    settings = _micro()
    assert run_pipeline(settings, out, progress=False) == {}
    ran = run_pipeline(settings, out, stages=["demo", "report"], force=True, progress=False)
    assert list(ran) == ["demo"]
    custom = _micro("EVAL.GRID_VOCAB", "['heart', 'red circle']")
    assert list(run_pipeline(custom, out, progress=False)) == ["demo"]
    grid = json.load(open(os.path.join(out, "demo", "detections.json")))
    assert grid["vocabulary"] == ["heart", "red circle"]
    with pytest.raises(RuntimeError, match="has not run yet"):
        run_pipeline(settings, out + "_empty", stages=["clip"], progress=False)


@pytest.mark.slow
def test_same_seed_gives_the_same_numbers(micro_run, tmp_path):
    out, _ = micro_run
    again = str(tmp_path / "again")
    # stage 5's three fine-tunings now run in two worker processes (one thread each, as before)
    run_pipeline(_micro("WORKERS", "2"), again, progress=False)
    assert _numbers(again) == _numbers(out)
    for stage_file in ("clip/clip.pth", "pretrain/student_clip.pth",
                       "transfer/student/model_final.pth", "transfer/oracle/model_final.pth"):
        a = torch.load(os.path.join(out, stage_file))
        b = torch.load(os.path.join(again, stage_file))
        a, b = a.get("model", a), b.get("model", b)
        assert all(torch.equal(a[k], b[k]) for k in a), stage_file
    first = torch.load(os.path.join(out, "transfer/teacher/model_final.pth"))["model"]
    assert not all(torch.equal(first[k], a[k]) for k in a)  # the check can tell models apart


@pytest.mark.slow
def test_demo_cli_with_user_vocabulary_and_images(micro_run, tmp_path):
    out, _ = micro_run
    images = tmp_path / "imgs"
    images.mkdir()
    from PIL import Image

    world = World(os.path.join(out, "world"))
    for k in range(2):
        Image.fromarray(world.images("test")[k]).save(images / f"mine_{k}.png")
    cmd = [sys.executable, os.path.join(REPO, "tools", "toyworld.py"), "demo",
           "--package", os.path.join(out, "demo", "toyworld_detector.pth"),
           "--output", str(tmp_path / "demo"), "--vocab", "red star, circle,heart",
           "--images", str(images), "--threshold", "0.0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, PROJECT])))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.load(open(tmp_path / "demo" / "detections.json"))
    assert result["vocabulary"] == ["red star", "circle", "heart"]
    assert [e["image"] for e in result["images"]] == ["mine_0.png", "mine_1.png"]
    labels = {d["label"] for e in result["images"] for d in e["detections"]}
    assert labels and labels <= {"red star", "circle", "heart"}
    assert (tmp_path / "demo" / "mine_0_detections.png").is_file()
    assert "precision and recall: not measured: the objects of these images" in proc.stdout


@pytest.mark.slow
def test_demo_prints_precision_and_recall_on_generated_scenes(micro_run, tmp_path, capsys):
    from toyworld.cli import main
    from toyworld.demo import _generated
    from toyworld.demo_score import score_detections

    out, _ = micro_run
    args = ["demo", "--package", os.path.join(out, "demo", "toyworld_detector.pth"),
            "--output", str(tmp_path / "demo"), "--num-scenes", "3", "--threshold", "0.0"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    result = json.load(open(tmp_path / "demo" / "detections.json"))
    # the scores are those of the detections against the scenes' own objects
    _, objects = _generated(3, 2024, 64)
    novel = json.load(open(os.path.join(out, "world", "world.json")))["novel_classes"]
    expected = score_detections([e["detections"] for e in result["images"]], objects, novel)
    assert result["scores"] == json.loads(json.dumps(expected))
    assert expected["all"]["objects"] == sum(len(o) for o in objects) > 0
    assert "recall %" in printed and "precision %" in printed
    all_row = [line for line in printed.splitlines() if line.startswith("all ")][0]
    assert all_row.split()[1:3] == [str(expected["all"]["objects"]), str(expected["all"]["found"])]
    assert main(args + ["--vocab", "star,ring"]) == 0  # not every category named
    assert "not measured: the vocabulary does not name" in capsys.readouterr().out


_ROW = re.compile(r"^\| (.+?) \| (?:(GT|RPN) \| )?([\d.]+) ± ([\d.]+) \| ([\d.]+) ± ([\d.]+) "
                  r"\| ([\d.]+) ± ([\d.]+) \|$", flags=re.M)


def _without(args, flag):
    """``args`` without ``flag`` and its value."""
    if flag not in args:
        return args
    i = args.index(flag)
    return args[:i] + args[i + 2:]


@pytest.mark.skipif(not os.environ.get("REGIONCLIP_TOYWORLD_FULL"),
                    reason="reruns `make toyworld` (about 13 minutes on a quiet machine); "
                    "set REGIONCLIP_TOYWORLD_FULL=1")
def test_committed_table_is_reproduced_by_its_command(tmp_path):
    from toyworld.report import MARK_BEGIN

    text = open(os.path.join(REPO, "docs", "TOYWORLD.md")).read().split(MARK_BEGIN)[1]
    command = re.search(r"Made by:\n\n```\n(.*?)\n```", text).group(1).split()
    rows = _ROW.findall(text)  # 4 zero-shot rows, 3 transfer rows (teacher, student, oracle)
    assert command[:2] == ["python", "tools/toyworld.py"] and len(rows) == 7
    args = _without(_without(command[2:], "--ship-weights"), "--doc")
    out = str(tmp_path / "run")
    args[args.index("--output") + 1] = out
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "toyworld.py"), *args,
                    "--no-progress"], check=True, cwd=REPO)
    fresh = _ROW.findall(open(os.path.join(out, "report.md")).read())
    assert [r[:2] for r in fresh] == [r[:2] for r in rows]
    for old, new in zip(rows, fresh):
        for k in (2, 4, 6):  # novel, base, all: within 3 bootstrap deviations + 0.5 points
            assert abs(float(new[k]) - float(old[k])) <= 3 * float(old[k + 1]) + 0.5, (old, new)


def test_demo_scores_count_each_object_once_with_its_name():
    from toyworld.demo_score import score_detections, score_table

    objects = [[{"box": [0, 0, 10, 10], "name": "star"}, {"box": [20, 20, 40, 40], "name": "ring"}],
               [{"box": [0, 0, 30, 30], "name": "heart"}]]
    dets = [[{"box": [1, 1, 10, 10], "label": "star", "score": 0.9},   # right
             {"box": [0, 0, 10, 11], "label": "star", "score": 0.8},   # duplicate: wrong
             {"box": [20, 20, 40, 40], "label": "heart", "score": 0.7}],  # wrong name
            [{"box": [0, 0, 30, 14], "label": "heart", "score": 0.5}]]  # IoU 0.47: missed
    s = score_detections(dets, objects, novel=["heart", "ring"])
    assert (s["base"]["objects"], s["base"]["found"], s["base"]["detections"]) == (1, 1, 2)
    assert (s["novel"]["objects"], s["novel"]["found"], s["novel"]["detections"]) == (2, 0, 2)
    assert s["all"]["recall"] == pytest.approx(1 / 3) and s["all"]["precision"] == 0.25
    dets[1][0]["box"] = [0, 0, 30, 16]  # IoU 0.53: found
    s = score_detections(dets, objects, novel=["heart", "ring"])
    assert s["novel"]["found"] == 1 and s["novel"]["precision"] == 0.5
    assert "novel" in score_table(s) and " 50.0" in score_table(s)
    with pytest.raises(ValueError, match="2 images of detections but 1"):
        score_detections(dets, objects[:1], novel=[])
