"""tools/extract_region_features.py: outputs per mode, the original's index bug and its fix,
one entry per region, name collisions, unreadable files, sharding."""
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, Instances
from tiny_detector import ZSINF, independent_features, tiny_detector_opts, write_images

from regionclip.tools import extract_region_features as rf

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("regionfeats")
    opts, weights = tiny_detector_opts(str(root))
    emb = str(root / "emb.pth")
    torch.manual_seed(3)
    torch.save(torch.randn(NUM_CLASSES, 64), emb)
    # 96x128 stays as is at the 96-px test size; 120x160 is resized to 96x128 (scale 0.8)
    images = write_images(str(root / "images"), [("a.jpg", (96, 128)), ("b.png", (120, 160))])
    opts = opts + ["MODEL.WEIGHTS", weights, "MODEL.CLIP.MULTIPLY_RPN_SCORE", "True",
                   "MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_CLASSES),
                   "TEST.DETECTIONS_PER_IMAGE", "100",
                   "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "INPUT_DIR", str(root / "images")]
    args = rf.build_parser().parse_args(
        ["--config-file", ZSINF] + opts + ["MODEL.CLIP.TEXT_EMB_PATH", emb,
                                           "OUTPUT_DIR", str(root / "setup")])
    cfg = rf.setup(args)
    model = rf.build_extraction_model(cfg)
    return {"root": root, "opts": opts, "emb": emb, "images": images, "cfg": cfg, "model": model}


def independent_probs(feats, emb_path):
    emb = torch.load(emb_path)
    logits = F.normalize(feats, dim=1) @ F.normalize(emb, dim=1).t() / 0.01
    return torch.cat([logits, torch.zeros(len(feats), 1)], dim=1).softmax(dim=1)


def fixed_proposals(model, boxes, logits):
    """Replace the offline RPN's output of ``model`` by the given boxes and objectness logits."""
    def propose(images, input_format):
        inst = Instances(tuple(images[0].shape[1:]))
        inst.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.objectness_logits = torch.tensor(logits, dtype=torch.float32)
        return [inst]
    return propose


def test_inputs_keep_original_size_and_resize_to_test_size(world):
    (x,) = rf.read_inputs(world["cfg"], world["images"][1])
    assert (x["height"], x["width"]) == (120, 160)
    assert tuple(x["image"].shape) == (3, 96, 128)


@torch.no_grad()
def test_rpn_mode_saves_all_proposals_rescaled_with_their_features(world):
    model, cfg = world["model"], world["cfg"]
    inputs = rf.read_inputs(cfg, world["images"][1])
    out = rf.extract_region_features(model, inputs, classify=False)
    assert set(out) == {"boxes", "feats"}
    (proposals,) = model.get_proposals(inputs)
    resized = proposals.proposal_boxes.tensor
    assert 0 < len(resized) <= 20
    assert out["boxes"].shape == (len(resized), 4) and out["feats"].shape == (len(resized), 64)
    assert out["boxes"].dtype == out["feats"].dtype == torch.float32
    rescaled = (resized / 0.8).clamp(max=torch.tensor([160, 120] * 2))
    torch.testing.assert_close(out["boxes"], rescaled, atol=1e-3, rtol=0)
    expected = independent_features(model, inputs[0]["image"], resized)
    torch.testing.assert_close(out["feats"], expected, atol=1e-4, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("fix", [False, True])
def test_detection_mode_outputs_when_no_logit_is_negative(world, monkeypatch, fix):
    """All logits positive: the original's rows are right, so both modes agree with an
    independent computation and with the model's own inference (VIS scores)."""
    model, cfg = world["model"], world["cfg"]
    inputs = rf.read_inputs(cfg, world["images"][0])
    (proposals,) = model.get_proposals(inputs)
    n = len(proposals)
    monkeypatch.setattr(model, "offline_proposals", fixed_proposals(
        model, proposals.proposal_boxes.tensor.tolist(), torch.linspace(0.5, 3.0, n).tolist()))
    out = rf.extract_region_features(model, inputs, classify=True, fix_index_bug=fix)
    assert set(out) == {"boxes", "classes", "probs", "feats"}
    m = len(out["boxes"])
    assert m > 0 and out["classes"].shape == (m,) and out["classes"].dtype == torch.int64
    assert out["probs"].shape == (m, NUM_CLASSES + 1) and out["feats"].shape == (m, 64)
    torch.testing.assert_close(out["probs"].sum(dim=1), torch.ones(m))
    # features and probabilities belong to the saved box (no resize for this image)
    expected = independent_features(model, inputs[0]["image"], out["boxes"])
    torch.testing.assert_close(out["feats"], expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["probs"], independent_probs(expected, world["emb"]),
                               atol=1e-4, rtol=1e-3)
    # the original's (commented-out) invariant: reported score == probs[class]
    (ref,) = model.inference(inputs)
    inst = ref["instances"]
    torch.testing.assert_close(out["boxes"], inst.pred_boxes.tensor)
    assert torch.equal(out["classes"], inst.pred_classes)
    torch.testing.assert_close(out["probs"][torch.arange(m), out["classes"]], inst.scores)


@torch.no_grad()
def test_negative_rpn_logit_shifts_rows_by_default_and_fix_aligns_them(world, monkeypatch):
    model, cfg = world["model"], world["cfg"]
    inputs = rf.read_inputs(cfg, world["images"][0])
    boxes = [[0, 0, 60, 50], [10, 20, 90, 90], [50, 5, 127, 60], [30, 30, 70, 95],
             [5, 40, 120, 80], [70, 10, 110, 94]]
    logits = [-1.0, 2.0, 3.0, -0.5, 1.5, 2.5]
    monkeypatch.setattr(model, "offline_proposals", fixed_proposals(model, boxes, logits))
    model.roi_heads.box_predictor.test_nms_thresh = 1.0  # keep every (box, class) pair
    try:
        fixed = rf.extract_region_features(model, inputs, classify=True, fix_index_bug=True)
        buggy = rf.extract_region_features(model, inputs, classify=True)
    finally:
        model.roi_heads.box_predictor.test_nms_thresh = cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST
    assert torch.equal(fixed["boxes"], buggy["boxes"]) and torch.equal(fixed["classes"],
                                                                       buggy["classes"])
    rows = [boxes.index(b) for b in fixed["boxes"].tolist()]
    assert set(rows) == {1, 2, 4, 5}  # proposals with negative logits give no detection
    all_feats = independent_features(model, inputs[0]["image"], boxes)
    all_probs = independent_probs(all_feats, world["emb"])
    valid = [r for r, o in enumerate(logits) if o >= 0]
    shifted = [valid.index(r) for r in rows]  # the original's position among finite rows
    assert shifted != rows
    torch.testing.assert_close(fixed["feats"], all_feats[rows], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fixed["probs"], all_probs[rows], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(buggy["feats"], all_feats[shifted], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(buggy["probs"], all_probs[shifted], atol=1e-4, rtol=1e-3)
    assert not torch.allclose(buggy["feats"], fixed["feats"])


@torch.no_grad()
def test_one_per_region_keeps_each_region_once_with_its_best_class(world, monkeypatch):
    model, cfg = world["model"], world["cfg"]
    inputs = rf.read_inputs(cfg, world["images"][0])
    (proposals,) = model.get_proposals(inputs)
    boxes = []
    for b in proposals.proposal_boxes.tensor.tolist():  # distinct boxes (FPN levels may repeat one)
        if b not in boxes and len(boxes) < 8:
            boxes.append(b)
    monkeypatch.setattr(model, "offline_proposals",
                        fixed_proposals(model, boxes, [1.0] * len(boxes)))
    model.roi_heads.box_predictor.test_nms_thresh = 1.0  # no suppression: the best class stays
    try:
        full = rf.extract_region_features(model, inputs, classify=True, fix_index_bug=True)
        one = rf.extract_region_features(model, inputs, classify=True, fix_index_bug=True,
                                         one_per_region=True)
    finally:
        model.roi_heads.box_predictor.test_nms_thresh = cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST
    assert len(full["boxes"]) > len(one["boxes"])  # several classes per region before
    keys = [tuple(b) for b in one["boxes"].tolist()]
    assert len(set(keys)) == len(keys) == len({tuple(b) for b in full["boxes"].tolist()})
    assert torch.equal(one["classes"], one["probs"][:, :-1].argmax(dim=1))


def test_output_names_and_collisions(tmp_path):
    assert rf.output_paths(["d/x.y.jpg", "e/z.png"], "out") == ["out/x.pth", "out/z.pth"]
    with pytest.raises(ValueError,
                       match=r"'d/a\.1\.jpg' and 'e/a\.png' would both be saved as 'a\.pth'"):
        rf.output_paths(["d/a.1.jpg", "e/a.png"], "out")
    with pytest.raises(FileNotFoundError, match="INPUT_DIR"):
        rf.list_input_files(str(tmp_path / "missing"))
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="holds no file"):
        rf.list_input_files(str(tmp_path))


def test_unreadable_file_is_an_error_or_skipped_and_counted(world, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    files = [world["images"][0], str(bad)]
    outputs = rf.output_paths(files, str(tmp_path / "out"))
    os.makedirs(tmp_path / "out")
    with pytest.raises(ValueError, match="broken.jpg.*--skip-bad-images"):
        rf.run_extraction(world["cfg"], world["model"], files, outputs, progress=False)
    res = rf.run_extraction(world["cfg"], world["model"], files, outputs, skip_bad_images=True,
                            progress=False)
    assert res == {"done": 1, "skipped": [str(bad)]}
    saved = torch.load(tmp_path / "out" / "a.pth")
    assert set(saved) == {"boxes", "classes", "probs", "feats"}
    assert not (tmp_path / "out" / "broken.pth").exists()


def test_cli_without_text_embeddings_writes_box_features(world, tmp_path):
    total = rf.run(["--config-file", ZSINF] + world["opts"] + ["OUTPUT_DIR", str(tmp_path)])
    assert total == {"done": 2, "skipped": []}
    for name in ("a", "b"):
        saved = torch.load(tmp_path / f"{name}.pth")
        assert set(saved) == {"boxes", "feats"} and saved["feats"].shape[1] == 64


def test_cli_refuses_colliding_names_before_writing(world, tmp_path):
    inp = tmp_path / "in"
    write_images(str(inp), [("x.jpg", (96, 128)), ("x.png", (96, 128))])
    opts = world["opts"] + ["INPUT_DIR", str(inp), "OUTPUT_DIR", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="x.jpg' and '.*x.png' would both be saved as 'x.pth'"):
        rf.run(["--config-file", ZSINF] + opts)
    assert not list(tmp_path.glob("out/*.pth"))


def test_each_process_handles_its_own_shard(world, tmp_path, monkeypatch, capsys):
    """Two processes simulated in turn: each writes only its share of the sorted files."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(str(inp), [(f"im{i}.jpg", (96, 128)) for i in range(3)])
    args = rf.build_parser().parse_args(["--config-file", ZSINF] + world["opts"] + [
        "INPUT_DIR", str(inp), "OUTPUT_DIR", str(out), "MODEL.CLIP.TEXT_EMB_PATH", world["emb"]])
    other = {"done": 1, "skipped": []}  # what the other process reports
    monkeypatch.setattr(rf, "build_extraction_model", lambda cfg: world["model"])  # same model
    monkeypatch.setattr(rf.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(rf.comm, "all_gather", lambda mine: [mine, other])
    for rank, expected in ((1, {"im1.pth"}), (0, {"im0.pth", "im1.pth", "im2.pth"})):
        monkeypatch.setattr(rf.comm, "get_rank", lambda: rank)
        monkeypatch.setattr(rf.comm, "is_main_process", lambda: rank == 0)
        total = rf.worker(args)
        assert {p.name for p in out.glob("*.pth")} == expected
    assert total["done"] == 3  # 2 here + 1 there (the original did all 3 on every process)
    assert "Saved region features of 3 images" in capsys.readouterr().out
