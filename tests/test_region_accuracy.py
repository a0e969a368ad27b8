"""Region classification on ground-truth boxes: crops (CLIP, Fig. 1) vs pooled regions, the
accuracy table, and tools/region_accuracy.py, against computations written out in the test."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from PIL import Image
from tiny_clip import TINY, TINY_OPTS, write_tiny_clip
from tiny_detector import MEAN, STD, independent_features

from regionclip import RegionCLIP
from regionclip.api import crop_and_resize
from regionclip.clip import build_clip_from_state_dict
from regionclip.data.datasets import register_ovd_coco
from regionclip.tools import region_accuracy as ra

ZS = os.path.join(REPO, "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd_zsinf.yaml")
CLASSES = ["red cube", "blue ball", "green cone", "gold ring"]
NOVEL = ["green cone", "gold ring"]
LVIS_ZS = os.path.join(REPO,
                       "configs/LVISv1-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_zsinf.yaml")
# (image size (h, w), [(XYWH box, class index, iscrowd)]); test size 128 keeps 128-px-high images.
# The first image has no box (skipped, also by --max-images); one box is 0 px high (left out).
SCENES = [((128, 96), []),
          ((128, 160), [([8, 10, 50, 40], 0, 0), ([70, 20, 80, 90], 2, 0), ([0, 0, 30, 30], 1, 1),
                        ([5, 60, 20, 0], 3, 0)]),
          ((128, 128), [([16, 16, 96, 64], 1, 0), ([40, 70, 30, 50], 3, 0)]),
          ((128, 144), [([60, 8, 70, 100], 2, 0)])]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("regacc")
    arch, weights = write_tiny_clip(str(folder))
    opts = TINY_OPTS + ["MODEL.CLIP.ARCH", arch, "MODEL.CLIP.CROP_REGION_TYPE", "GT",
                        "MODEL.CLIP.TEXT_EMB_PATH", "", "INPUT.MIN_SIZE_TEST", "128",
                        "INPUT.MAX_SIZE_TEST", "1000"]
    rc = RegionCLIP.from_config(ZS, weights=weights, opts=opts)
    clip = build_clip_from_state_dict(torch.load(weights), text_heads=TINY.text.heads,
                                      visual_heads=TINY.visual.heads).eval()
    return folder, rc, clip, opts, weights


def _clip_on(clip, crops):
    x = torch.stack([(torch.as_tensor(np.array(c)).permute(2, 0, 1).float() / 255.0 - MEAN) / STD
                     for c in crops])
    with torch.no_grad():
        return clip.encode_image(x)


def _image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_encode_crops_is_clip_on_the_cut_out_boxes(tiny):
    _, rc, clip, _, _ = tiny
    rgb = _image(120, 160, 0)
    boxes = [[10, 20, 70, 60], [100, 0, 160, 120]]
    pil = Image.fromarray(rgb)
    # warp: each box cut out and stretched to 224x224 (bicubic, as CLIP's preprocessing)
    warped = [np.asarray(pil.crop(tuple(b)).resize((224, 224), Image.BICUBIC)) for b in boxes]
    torch.testing.assert_close(rc.encode_crops(rgb, boxes), _clip_on(clip, warped),
                               rtol=1e-4, atol=1e-5)
    # center: the 60x40 box resized to 336x224, then its central 224x224 square
    wide = np.asarray(pil.crop((10, 20, 70, 60)).resize((336, 224), Image.BICUBIC))[:, 56:280]
    torch.testing.assert_close(rc.encode_crops(rgb, boxes[:1], resize="center"),
                               _clip_on(clip, [wide]), rtol=1e-4, atol=1e-5)
    # context 2: the box doubled about its centre (x 10..70, y 0..80), clipped at the top edge
    ctx = np.asarray(pil.crop((10, 0, 70, 80)).resize((224, 224), Image.BICUBIC))
    torch.testing.assert_close(rc.encode_crops(rgb, [[25, 20, 55, 60]], context=2.0),
                               _clip_on(clip, [ctx]), rtol=1e-4, atol=1e-5)


def test_center_crop_is_clips_preprocessing():
    """"center" = torchvision's Resize(short side, bicubic) + CenterCrop, as CLIP preprocesses."""
    from torchvision import transforms as T

    clip_preprocess = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC),
                                 T.CenterCrop(32)])
    for seed, (h, w) in enumerate([(37, 90), (91, 40), (50, 50), (33, 101)]):
        rgb = _image(h, w, seed)
        np.testing.assert_array_equal(crop_and_resize(rgb, [0, 0, w, h], 32, "center"),
                                      np.asarray(clip_preprocess(Image.fromarray(rgb))))


def test_crop_of_a_box_reaching_out_of_the_image_keeps_its_inside():
    rgb = _image(100, 100, 3)
    # centre (124.5, 5), half a box 25.5 x 5 -> x 111.75..137.25 (outside), y 2.5..7.5: the
    # crop keeps the last column inside the image
    crop = crop_and_resize(rgb, [99, 0, 150, 10], 16, "warp", context=0.5)
    expected = np.asarray(Image.fromarray(rgb[2:8, 99:100]).resize((16, 16), Image.BICUBIC))
    np.testing.assert_array_equal(crop, expected)


def test_encode_crops_bad_input(tiny):
    _, rc, _, _, _ = tiny
    rgb = _image(32, 32, 1)
    with pytest.raises(ValueError, match="non-empty"):
        rc.encode_crops(rgb, [])
    with pytest.raises(ValueError, match="zero area"):
        rc.encode_crops(rgb, [[10, 10, 10, 20]])
    with pytest.raises(ValueError, match="outside the image"):
        rc.encode_crops(rgb, [[40, 0, 50, 8]])
    with pytest.raises(ValueError, match="resize"):
        rc.encode_crops(rgb, [[0, 0, 8, 8]], resize="stretch")


def test_accuracy_table_known_answers():
    names = ["a", "b", "c", "d"]
    splits = {"novel": ["c", "d"], "base": ["a", "b"], "all": names}
    scores = torch.tensor([[.9, .1, .0, .0],    # a -> a       top1 hit
                           [.5, .4, .3, .2],    # b -> a, b 2nd: top1 miss, top2 hit
                           [.1, .2, .3, .4],    # c -> d, c 2nd: top1 miss, top2 hit
                           [.0, .0, .1, .9],    # d -> d       top1 hit
                           [.4, .3, .2, .1]])   # d -> last    miss at top1, top2, top3
    labels = torch.tensor([0, 1, 2, 3, 3])
    res = ra.accuracy_table(scores, labels, names, splits, topk=(1, 2))
    assert res["top1"] == pytest.approx(40.0)
    assert res["top2"] == pytest.approx(80.0)
    assert res["top1_base"] == pytest.approx(50.0) and res["top2_base"] == pytest.approx(100.0)
    assert res["top1_novel"] == pytest.approx(100 / 3)
    assert res["top2_novel"] == pytest.approx(200 / 3)
    # per class top-1: a 1, b 0, c 0, d 1/2
    assert res["mean_class_top1"] == pytest.approx(100 * 1.5 / 4)
    assert res["num_regions"] == 5
    with pytest.raises(ValueError, match="shape"):
        ra.accuracy_table(scores[:, :3], labels, names, splits)


@pytest.fixture(scope="module")
def dataset(tiny):
    folder = tiny[0]
    images, anns = [], []
    os.makedirs(folder / "images", exist_ok=True)
    for i, ((h, w), objects) in enumerate(SCENES):
        Image.fromarray(_image(h, w, 10 + i)).save(folder / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w})
        for box, cls, crowd in objects:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 10 + cls,
                         "bbox": box, "area": box[2] * box[3], "iscrowd": crowd})
    cats = [{"id": 10 + i, "name": n} for i, n in enumerate(CLASSES)]
    path = folder / "gt.json"  # images listed in reverse: the tool goes by image id
    path.write_text(json.dumps({"images": images[::-1], "annotations": anns, "categories": cats}))
    register_ovd_coco("_regacc_test", str(path), str(folder / "images"), NOVEL)
    torch.manual_seed(5)
    emb = torch.randn(len(CLASSES), 64)
    torch.save(emb, folder / "emb.pth")
    return str(path), str(folder / "images"), str(folder / "emb.pth"), emb


def _expected(embs, labels, emb):
    scores = F.normalize(embs, dim=1) @ F.normalize(emb, dim=1).t()
    top1 = scores.argmax(1) == labels
    novel = labels >= 2  # classes 2 and 3 are novel
    return {"top1": float(top1.float().mean() * 100),
            "top1_novel": float(top1[novel].float().mean() * 100),
            "top1_base": float(top1[~novel].float().mean() * 100)}


def _independent(rc, clip, root):
    """Per kept box (image order, non-crowd, at least 1 px): roi and crop embeddings, label."""
    roi, crop, labels = [], [], []
    for i, ((h, w), objects) in enumerate(SCENES):
        rgb = np.asarray(Image.open(os.path.join(root, f"{i}.png")))
        kept = [(b, c) for b, c, crowd in objects if not crowd and b[2] >= 1 and b[3] >= 1]
        if not kept:
            continue
        xyxy = [[x, y, x + bw, y + bh] for (x, y, bw, bh), _ in kept]
        roi.append(independent_features(rc.model, rgb.transpose(2, 0, 1), xyxy))
        crop.append(_clip_on(clip, [np.asarray(Image.fromarray(rgb).crop(tuple(b)).resize(
            (224, 224), Image.BICUBIC)) for b in xyxy]))
        labels += [c for _, c in kept]
    return torch.cat(roi), torch.cat(crop), torch.tensor(labels)


def test_region_accuracy_matches_independent_computation(tiny, dataset):
    _, rc, clip, _, _ = tiny
    _, root, emb_path, emb = dataset
    roi, crop, labels = _independent(rc, clip, root)
    res, scores, got_labels = ra.region_accuracy(rc, "_regacc_test", text_emb=emb_path,
                                                 progress=False, return_scores=True)
    assert got_labels.tolist() == labels.tolist() == [0, 2, 1, 3, 2]
    names = {"novel": NOVEL, "base": [c for c in CLASSES if c not in NOVEL], "all": CLASSES}
    for mode, embs in (("roi", roi), ("crop", crop)):
        expected = F.normalize(embs, dim=1) @ F.normalize(emb, dim=1).t()
        torch.testing.assert_close(scores[mode], expected, rtol=1e-4, atol=1e-5)
        # the tables are accuracy_table (known-answer tested above) of these scores
        assert res[mode] == ra.accuracy_table(scores[mode], labels, CLASSES, names)
        assert res[mode]["num_regions"] == 5 and res[mode]["top5"] == 100.0  # only 4 classes
    assert not torch.allclose(scores["roi"], scores["crop"], rtol=1e-3, atol=1e-4)


def test_an_empty_class_table_is_not_used(tiny, dataset):
    """NUM_CLASSES rows but no embedding file: the table is zeros, the text encoder embeds the
    class names instead."""
    folder, _, _, opts, weights = tiny
    rc4 = RegionCLIP.from_config(ZS, weights=weights, opts=opts + ["MODEL.ROI_HEADS.NUM_CLASSES",
                                                                   "4"])
    assert rc4.model.roi_heads.box_predictor.class_embeddings().abs().max() == 0
    by_name = ra.region_accuracy(rc4, "_regacc_test", ("crop",), progress=False)
    torch.save(rc4.encode_text(CLASSES), folder / "names.pth")
    given = ra.region_accuracy(rc4, "_regacc_test", ("crop",), text_emb=str(folder / "names.pth"),
                               progress=False)
    assert by_name == given


def test_cli_registers_the_dataset_and_writes_json(tiny, dataset, tmp_path):
    _, rc, _, opts, weights = tiny
    json_path, root, emb_path, _ = dataset
    out = tmp_path / "acc.json"
    # the LVIS zero-shot config takes regions from an offline RPN: the tool gives GT boxes itself
    lvis_opts = [o for o in opts if o not in ("MODEL.CLIP.CROP_REGION_TYPE", "GT")]
    results = ra.run(["--config-file", LVIS_ZS, "--register-coco", "_regacc_cli", json_path,
                       root, "--novel-classes", ",".join(NOVEL), "--modes", "crop",
                       "--max-images", "2", "--text-emb", emb_path, "--output", str(out),
                       "MODEL.WEIGHTS", weights] + lvis_opts)
    written = json.loads(out.read_text())
    assert written["dataset"] == "_regacc_cli" and list(written["results"]) == ["crop"]
    # the first 2 images with boxes: 1 (2 boxes kept of 4) and 2 (2 boxes)
    assert written["results"]["crop"]["num_regions"] == 4
    assert written["results"] == json.loads(json.dumps(results))
    direct = ra.region_accuracy(rc, "_regacc_test", ("crop",), 2, emb_path, progress=False)
    assert written["results"]["crop"]["top1"] == pytest.approx(direct["crop"]["top1"])


def test_bad_input_is_a_clear_error(tiny, dataset, tmp_path):
    _, rc, _, _, _ = tiny
    with pytest.raises(KeyError, match="_no_such_set"):
        ra.region_accuracy(rc, "_no_such_set", progress=False)
    with pytest.raises(ValueError, match="max_images"):
        ra.region_accuracy(rc, "_regacc_test", max_images=0, progress=False)
    assert ra._json_safe({"crop": {"top1_novel": float("nan"), "top1": 50.0}}) == {
        "crop": {"top1_novel": None, "top1": 50.0}}
    with pytest.raises(ValueError, match="modes"):
        ra.region_accuracy(rc, "_regacc_test", ("roi", "pixels"), progress=False)
    torch.save(torch.randn(3, 64), tmp_path / "three.pth")
    with pytest.raises(ValueError, match="3 class embeddings"):
        ra.region_accuracy(rc, "_regacc_test", text_emb=str(tmp_path / "three.pth"), progress=False)
    # the config has no embeddings of these 4 classes and the tiny weights' text tower gives them
    assert rc.text_encoder_loaded
    res = ra.region_accuracy(rc, "_regacc_test", ("crop",), max_images=1, progress=False)
    assert res["crop"]["num_regions"] == 2
