"""ONNX / TorchScript export: the exported graphs give PyTorch's detections and text embeddings;
the export folder runs without PyTorch; settings that do not export are clear errors."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO
from ovd_world import write_embeddings
from tiny_detector import CUSTOM, tiny_detector_opts, write_images

from regionclip import RegionCLIP
from regionclip.clip.tokenizer import get_tokenizer
from regionclip.tools import export_model

ort = pytest.importorskip("onnxruntime", reason="the [export] extra (pip install -e .[export])")

LVIS_TRANSFER = os.path.join(REPO,
                             "configs/LVISv1-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4.yaml")
COCO_ZS = os.path.join(REPO,
                       "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd_zsinf.yaml")
VOCAB = ["cat", "dog", "remote control"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    opts, weights = tiny_detector_opts(str(root))
    # the sample (traced) image and images of other sizes and aspect ratios
    images = write_images(str(root / "images"), [("sample.png", (96, 128)), ("tall.png", (150, 90)),
                                                 ("wide.png", (90, 200))], seed=3)
    return {"root": root, "opts": opts + ["MODEL.WEIGHTS", weights], "images": images}


def _export(world, config, name, extra=(), opts=(), sample=True):
    out = str(world["root"] / name)
    argv = ["--config-file", config, "--output", out] + list(extra)
    argv += ["--sample-image", world["images"][0]] if sample else []
    # the offline RPN and the box regressor are not in the tiny checkpoint: they are drawn when
    # the model is built, so the exported model and the reference are built from the same seed
    torch.manual_seed(0)
    info = export_model.run(argv + world["opts"] + list(opts))
    torch.manual_seed(0)
    rc = RegionCLIP.from_config(config, opts=world["opts"] + list(opts))
    return out, info, rc


def _pytorch(rc, image, emb=None, boxes=None):
    inputs, given = rc._prepare(image, boxes)
    with torch.no_grad():
        (inst,) = rc.model.inference([inputs], do_postprocess=False, class_embeddings=emb,
                                     boxes=None if given is None else [given])
    return inputs, given, inst


def assert_same_detections(out: dict, inst):
    """The graph's outputs equal PyTorch's Instances: scores within 1e-4, boxes within 0.01 px."""
    n = len(inst)
    assert out["scores"].shape == (n,), (out["scores"].shape, n)
    np.testing.assert_array_equal(out["pred_classes"], inst.pred_classes.numpy())
    np.testing.assert_allclose(out["scores"], inst.scores.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(out["pred_boxes"], inst.pred_boxes.tensor.numpy(), rtol=0,
                               atol=0.01)
    if "pred_masks" in out:
        np.testing.assert_allclose(out["pred_masks"], inst.pred_masks.numpy(), rtol=0, atol=1e-4)


def _session(out, info, name="detector"):
    sess = ort.InferenceSession(os.path.join(out, info["files"][name]),
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feed: dict(zip(names, sess.run(None, feed)))


def _runner(out):
    sys.path.insert(0, out)
    try:
        import regionclip_onnx
    finally:
        sys.path.remove(out)
    sys.modules.pop("regionclip_onnx")  # each export folder has its own copy
    return regionclip_onnx.OnnxDetector(out)


def assert_same_dets(a, b):
    assert len(a) == len(b) > 0
    assert [d["label"] for d in a] == [d["label"] for d in b]
    np.testing.assert_allclose([d["score"] for d in a], [d["score"] for d in b], atol=1e-4)
    np.testing.assert_allclose([d["box"] for d in a], [d["box"] for d in b], atol=0.01)


@pytest.fixture(scope="module")
def zero_shot(world):
    """The custom-image config: offline-RPN regions, RPN-score fusion, VIS; the vocabulary an
    input (VOCAB by default)."""
    # the RPN's NMS leaves fewer regions than the top-k: their number depends on the image
    return _export(world, CUSTOM, "zero_shot", ["--vocabulary", ",".join(VOCAB),
                                                 "--open-vocabulary"],
                   opts=["MODEL.CLIP.OFFLINE_RPN_POST_NMS_TOPK_TEST", "1000",
                         "MODEL.CLIP.OFFLINE_RPN_NMS_THRESH", "0.3"])


def test_zero_shot_rpn_onnx_equals_pytorch(world, zero_shot):
    out, info, rc = zero_shot
    assert info["inputs"] == ["image", "class_embeddings"] and info["class_names"] == VOCAB
    assert info["multiply_rpn_score"] and info["open_vocabulary"]
    run = _session(out, info)
    emb = rc.encode_text(VOCAB)
    np.testing.assert_allclose(np.load(os.path.join(out, "class_embeddings.npy")), emb.numpy())
    results, regions = {}, set()
    for image in world["images"]:  # traced on the first; the others have other sizes
        inputs, _, inst = _pytorch(rc, image, emb)
        assert len(inst) > 0
        with torch.no_grad():
            regions.add(len(rc.model.get_proposals([inputs])[0]))
        results[image] = run({"image": inputs["image"].numpy(),
                              "class_embeddings": emb.numpy()}), inst
        assert_same_detections(*results[image])
    assert len(regions) == len(world["images"])  # not the sample's number of regions
    # negative control: the comparison tells two images apart
    with pytest.raises(AssertionError):
        assert_same_detections(results[world["images"][1]][0], results[world["images"][2]][1])
    # the folder's runner (resize, graph, rescaling) gives RegionCLIP.detect's detections
    det = _runner(out)
    for image in world["images"][1:]:
        assert_same_dets(det.detect(image), rc.detect(image, VOCAB))
    other = ["red square", "cat"]  # a vocabulary made at run time by the text graph
    assert_same_dets(det.detect(image, other), rc.detect(image, other))


def test_the_deploy_doc_example_gives_detect_results(world, zero_shot):
    """docs/DEPLOY.md's onnxruntime example, run with PyTorch blocked."""
    out, _, rc = zero_shot
    image, vocab = world["images"][2], ["red square", "dog"]
    with open(os.path.join(REPO, "docs", "DEPLOY.md")) as f:
        (code,) = [b for b in re.findall(r"```python\n(.*?)```", f.read(), re.S)
                   if "FOLDER = " in b]
    for pattern, value in [(r'FOLDER = "[^"]*"', f"FOLDER = {out!r}"),
                           (r'IMAGE = "[^"]*"', f"IMAGE = {image!r}"),
                           (r"VOCABULARY = \[[^\]]*\]", f"VOCABULARY = {vocab!r}")]:
        code, count = re.subn(pattern, lambda _: value, code)
        assert count == 1, pattern
    code = ("import sys\nsys.modules['torch'] = None\n" + code
            + "\nprint('@@' + json.dumps(detections))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=""), cwd=out)
    assert proc.returncode == 0, proc.stderr
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("@@")]
    assert_same_dets(json.loads(line[2:]), rc.detect(image, vocab))


def test_transfer_config_with_masks_onnx_equals_pytorch(world):
    """LVIS transfer: box regression, RPN-score fusion, a mask head, an embedding file."""
    root = world["root"]
    opts = ["MODEL.ROI_HEADS.NUM_CLASSES", "5", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
            "MODEL.CLIP.MULTIPLY_RPN_SCORE_SIGMOID", "True",
            "MODEL.CLIP.TEXT_EMB_PATH", write_embeddings(str(root / "base5.pth"), 5, dim=64),
            "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH",
            write_embeddings(str(root / "all7.pth"), 7, dim=64, seed=1)]
    out, info, rc = _export(world, LVIS_TRANSFER, "transfer", opts=opts)
    assert info["mask_on"] and info["outputs"][-1] == "pred_masks"
    assert info["class_names"] is None  # an embedding file without names: class indices
    assert not rc.model.roi_heads.box_predictor.no_box_delta  # boxes are regressed
    run = _session(out, info)
    for image in world["images"]:
        inputs, _, inst = _pytorch(rc, image)  # the model's open-set table (7 classes)
        assert len(inst) > 0 and int(inst.pred_classes.max()) >= 5  # beyond the 5 base classes
        assert_same_detections(run({"image": inputs["image"].numpy()}), inst)


def test_ground_truth_boxes_are_an_input_and_the_vocabulary_too(world):
    opts = ["MODEL.CLIP.CROP_REGION_TYPE", "GT", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
            "MODEL.CLIP.TEXT_EMB_PATH", ""]
    out, info, rc = _export(world, COCO_ZS, "gt", ["--open-vocabulary", "--vocabulary",
                                                   ",".join(VOCAB)], opts=opts)
    assert info["inputs"] == ["image", "boxes", "class_embeddings"] and info["boxes_input"]
    run = _session(out, info)
    image = world["images"][2]
    boxes = [[2, 2, 60, 40], [70, 10, 190, 80], [5, 45, 100, 88], [120, 30, 199, 89],
             [40, 20, 150, 70]]  # 5 boxes (3 in the sample)
    names = ["red square", "green circle"]
    emb = rc.encode_text(names)  # not the exported vocabulary
    inputs, given, inst = _pytorch(rc, image, emb, boxes)
    assert len(inst) > 0
    feed = {"image": inputs["image"].numpy(), "boxes": given.tensor.numpy(),
            "class_embeddings": emb.numpy()}
    assert_same_detections(run(feed), inst)
    det = _runner(out)
    assert_same_dets(det.detect(image, names, boxes=boxes), rc.detect(image, names, boxes=boxes))
    assert_same_dets(det.detect(image, boxes=boxes), rc.detect(image, VOCAB, boxes=boxes))
    with pytest.raises(ValueError, match="pass boxes"):
        det.detect(image, names)


def test_text_encoder_onnx_equals_encode_text(world, zero_shot):
    out, info, rc = zero_shot
    run = _session(out, info, "text_encoder")
    texts = ["a photo of a cat.", "remote control", "a very " + "long " * 90 + "sentence"]
    ids = get_tokenizer().token_array(texts)
    with torch.no_grad():
        ref = rc.model.lang_encoder.encode_text(torch.from_numpy(ids))
    got = run({"input_ids": ids})["text_embeddings"]
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(got[0], got[1], atol=1e-3)  # the texts are told apart
    # the folder's tokenizer copy and prompt ensembling: RegionCLIP.encode_text
    det = _runner(out)
    np.testing.assert_allclose(det.encode_text(["zebra", "traffic light"]),
                               rc.encode_text(["zebra", "traffic light"]).numpy(), rtol=1e-4,
                               atol=1e-5)
    templates = ["a drawing of a {}.", "{} in the wild"]
    np.testing.assert_allclose(det.encode_text(["zebra"], templates),
                               rc.encode_text(["zebra"], templates=templates).numpy(), rtol=1e-4,
                               atol=1e-5)


def test_torchscript_equals_pytorch(world):
    out, info, rc = _export(world, CUSTOM, "ts", ["--format", "torchscript", "--vocabulary",
                                                  ",".join(VOCAB)])
    assert sorted(os.listdir(out)) == ["class_embeddings.npy", "export_info.json", "model.ts",
                                       "text_encoder.ts"]
    model = torch.jit.load(os.path.join(out, "model.ts"))
    emb = rc.encode_text(VOCAB)
    for image in world["images"][1:]:
        inputs, _, inst = _pytorch(rc, image, emb)
        assert len(inst) > 0
        with torch.no_grad():
            got = [t.numpy() for t in model(inputs["image"])]
        assert_same_detections(dict(zip(info["outputs"], got)), inst)
    text = torch.jit.load(os.path.join(out, "text_encoder.ts"))
    ids = get_tokenizer().tokenize(["a photo of a dog.", "cat"])
    with torch.no_grad():
        torch.testing.assert_close(text(ids), rc.model.lang_encoder.encode_text(ids), rtol=1e-4,
                                   atol=1e-5)


def test_the_onnx_folder_runs_without_pytorch(world, zero_shot):
    out, _, rc = zero_shot
    image = world["images"][1]
    code = ("import json, sys\n"
            "sys.modules['torch'] = None  # any import of PyTorch fails\n"
            f"sys.path.insert(0, {out!r})\n"
            "from regionclip_onnx import OnnxDetector\n"
            f"print(json.dumps(OnnxDetector({out!r}).detect({image!r})))\n")
    env = dict(os.environ, PYTHONPATH="")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=out)
    assert proc.returncode == 0, proc.stderr
    assert_same_dets(json.loads(proc.stdout), rc.detect(image, VOCAB))
    control = subprocess.run([sys.executable, "-c", code.replace(
        "from regionclip_onnx import", "import regionclip\nfrom regionclip_onnx import")],
        capture_output=True, text=True, env=env, cwd=REPO)
    assert control.returncode != 0 and "torch" in control.stderr  # PyTorch really is blocked


@pytest.mark.parametrize("extra, opts, message", [
    ([], ["MODEL.ROI_HEADS.SOFT_NMS_ENABLED", "True"], "SOFT_NMS_ENABLED True: soft-NMS"),
    ([], ["MODEL.CLIP.INFERENCE_DTYPE", "bfloat16"], "INFERENCE_DTYPE 'bfloat16'"),
    (["--export-method", "scripting"], [], "only 'tracing' is supported"),
    (["--vocabulary", "cat,,dog"], [], "empty class name"),
])
def test_settings_that_do_not_export_are_clear_errors(world, capsys, extra, opts, message):
    argv = ["--config-file", CUSTOM, "--output", str(world["root"] / "bad")] + extra
    assert export_model.main(argv + world["opts"] + opts) == 1
    assert message in capsys.readouterr().err
    assert not os.path.exists(world["root"] / "bad")  # nothing written


def test_benchmark_row_onnxruntime_against_pytorch(world, zero_shot):
    from regionclip.benchmark.deploy import onnx_latency

    row = onnx_latency(zero_shot[2], VOCAB, size=96, repeats=1)
    assert row["input_size"] == "96x128" and row["detections"] > 0
    assert row["pytorch_ms"] > 0 and row["onnxruntime_ms"] > 0
    assert row["max_score_diff"] <= 1e-4 and row["max_box_diff_px"] <= 0.01
