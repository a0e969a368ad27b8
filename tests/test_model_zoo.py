"""The model zoo: released checkpoints by name, every file found and checked before anything is
loaded, and ``RegionCLIP.from_pretrained`` detecting with the right files.

Files with the real models' keys and shapes are meta-tensor files (``zoo_files``): the checks read
keys and shapes only. Files that are loaded are tiny, with random values."""
import hashlib
import json
import os
import shutil

import pytest
import torch
from conftest import REPO
from zoo_files import (
    _meta_model,
    pretrained_state,
    tiny_zoo,
    write_shape_files,
    write_tiny_files,
)

import regionclip
from regionclip import RegionCLIP, model_zoo
from regionclip.checkpoint import CheckpointFileError
from regionclip.checkpoint.file_checks import WrongFileError
from regionclip.yaml_config import packaged_configs

RELEASED = sorted(f"regionclip_{kind}_{arch}" for kind in
                  ("pretrained-cc", "pretrained-coco", "finetuned-coco", "finetuned-lvis")
                  for arch in ("rn50", "rn50x4"))
IMAGE_SIZE = (96, 128)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A folder holding every released file (keys and shapes only), in the original's layout."""
    folder = tmp_path_factory.mktemp("pretrained_ckpt")
    write_shape_files(str(folder))
    return folder


@pytest.fixture
def folder(shapes, tmp_path):
    """A copy of ``shapes`` that a test may change."""
    return shutil.copytree(shapes, tmp_path / "pretrained_ckpt")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_files(tmp_path_factory.mktemp("tiny_ckpt"))


@pytest.fixture
def no_build(monkeypatch):
    """Fail the test if a model is built (the checks must come first)."""
    def refuse(cfg):
        raise AssertionError("a model was built")

    monkeypatch.setattr(regionclip.api, "build_model", refuse)


def _image():
    rng = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (*IMAGE_SIZE, 3), generator=rng, dtype=torch.uint8).numpy()


# ------------------------------------------------------------------------------------ the table
def test_the_released_models_are_listed_with_packaged_configs():
    assert regionclip.list_models() == model_zoo.list_models() == RELEASED
    packaged = set(packaged_configs())
    for name in RELEASED:
        model = model_zoo.get_model(name)
        assert model.config in packaged and model.rpn_config in packaged, name
        arch = model_zoo.get_file(model.weights).arch
        assert arch == ("RN50x4" if name.endswith("x4") else "RN50"), name
        for _, filename in model.embeddings:  # embeddings of the same CLIP as the weights
            assert model_zoo.get_file(filename).arch == arch, (name, filename)
        if model.text_encoder:
            assert model_zoo.get_file(model.text_encoder).arch == arch
    with pytest.raises(KeyError, match="regionclip_pretrained-cc_rn50"):
        model_zoo.get_model("regionclip_pretrained_cc_rn50")  # the message lists the names


def test_every_released_model_resolves_with_files_of_its_shapes(shapes, no_build):
    """Each model's config builds a model whose tensors are those its files hold (the config
    and the file table agree); each model's RPN config builds the RPN its RPN file holds."""
    for name in RELEASED:
        resolved = model_zoo.resolve_model(name, shapes, embeddings=True)
        model = resolved.model
        assert resolved.weights == os.path.join(shapes, "regionclip", model.weights)
        assert resolved.rpn == os.path.join(shapes, "rpn", model.rpn)
        assert len(resolved.embeddings) == len(model.embeddings)
        opts = dict(zip(resolved.opts[::2], resolved.opts[1::2]))
        assert opts["MODEL.WEIGHTS"] == resolved.weights
        assert opts["MODEL.CLIP.OFFLINE_RPN_CONFIG"] == model.rpn_config
        assert opts["MODEL.CLIP.BB_RPN_WEIGHTS"] == resolved.rpn
        for key, filename in model.embeddings:
            assert opts[key] == os.path.join(shapes, "concept_emb", filename)
        rpn = os.path.join(shapes, "rpn_of_config.pth")
        torch.save({"model": _meta_model(model.rpn_config)}, rpn)
        model_zoo.check_zoo_file(rpn, model.rpn, shapes, name)


def test_the_docs_hold_the_table():
    with open(os.path.join(REPO, "docs", "MODEL_ZOO.md")) as f:
        docs = f.read()
    table = model_zoo.models_markdown()
    assert table in docs
    assert all(f"| `{name}` |" in table for name in RELEASED)
    for filename in model_zoo.list_files():
        assert f"`{model_zoo.get_file(filename).folder}/{filename}`" in docs, filename


# ------------------------------------------------------------------------------- missing files
def test_a_missing_file_is_named_with_where_to_put_it(tmp_path, monkeypatch, no_build):
    monkeypatch.chdir(tmp_path)  # the default folder is ./pretrained_ckpt
    with pytest.raises(FileNotFoundError) as info:
        RegionCLIP.from_pretrained("regionclip_finetuned-coco_rn50")
    message = str(info.value)
    root = tmp_path / "pretrained_ckpt"
    for place in ("regionclip/regionclip_finetuned-coco_rn50.pth",
                  "regionclip/regionclip_pretrained-cc_rn50.pth", "rpn/rpn_coco_48.pth"):
        assert f"put it at {root / place}" in message, message
    assert "3 file(s)" in message and "MODEL.WEIGHTS" in message


def test_only_the_missing_file_is_named(folder, no_build):
    os.remove(folder / "regionclip" / "regionclip_pretrained-cc_rn50.pth")
    with pytest.raises(FileNotFoundError) as info:
        RegionCLIP.from_pretrained("regionclip_finetuned-lvis_rn50", folder=folder)
    message = str(info.value)
    assert "1 file(s)" in message and "its text encoder" in message
    assert f"put it at {folder / 'regionclip' / 'regionclip_pretrained-cc_rn50.pth'}" in message
    assert "rpn_lvis_866_lsj" not in message and "finetuned-lvis_rn50.pth" not in message


def test_the_rpn_file_is_needed_only_when_the_weights_hold_no_rpn(folder, no_build):
    os.remove(folder / "rpn" / "rpn_lvis_866.pth")
    name = "regionclip_pretrained-cc_rn50"
    resolved = model_zoo.resolve_model(name, folder)  # the released checkpoints hold their RPN
    assert resolved.rpn is None
    assert resolved.opts[resolved.opts.index("MODEL.CLIP.BB_RPN_WEIGHTS") + 1] == ""
    weights = folder / "regionclip" / f"{name}.pth"
    sd = torch.load(weights, mmap=True)["model"]
    torch.save({"model": {k: v for k, v in sd.items() if not k.startswith("offline_")}}, weights)
    with pytest.raises(FileNotFoundError, match=f"{name}.pth holds no RPN") as info:
        model_zoo.resolve_model(name, folder)
    assert f"put it at {folder / 'rpn' / 'rpn_lvis_866.pth'}" in str(info.value)


def test_files_directly_in_the_folder_are_found(folder):
    flat = folder.parent / "flat"
    flat.mkdir()
    for filename in ("regionclip_pretrained-cc_rn50.pth", "rpn_lvis_866.pth"):
        path = model_zoo.find_file(filename, folder)[0]
        shutil.copy(path, flat / filename)
    resolved = model_zoo.resolve_model("regionclip_pretrained-cc_rn50", flat)
    assert resolved.weights == str(flat / "regionclip_pretrained-cc_rn50.pth")
    assert resolved.rpn == str(flat / "rpn_lvis_866.pth")


# --------------------------------------------------------------------------------- wrong files
def _swap(folder, name, source):
    """Put the zoo file ``source`` where ``name`` belongs."""
    shutil.copy(model_zoo.find_file(source, folder)[0], model_zoo.find_file(name, folder)[1])
    return model_zoo.find_file(name, folder)[1]


@pytest.mark.parametrize("name, filename, source, says", [
    ("regionclip_pretrained-cc_rn50", "regionclip_pretrained-cc_rn50.pth",
     "regionclip_pretrained-cc_rn50x4.pth", "image tower (backbone.*) is CLIP RN50x4"),
    ("regionclip_pretrained-cc_rn50", "regionclip_pretrained-cc_rn50.pth",
     "regionclip_finetuned-coco_rn50.pth", "no lang_encoder.* (text encoder)"),
    ("regionclip_finetuned-coco_rn50", "regionclip_finetuned-coco_rn50.pth",
     "regionclip_pretrained-cc_rn50.pth", "no roi_heads.box_predictor.bbox_pred.weight"),
    ("regionclip_finetuned-coco_rn50x4", "regionclip_pretrained-cc_rn50x4.pth",
     "regionclip_pretrained-cc_rn50.pth", "image tower (backbone.*) is CLIP RN50 "),
    ("regionclip_finetuned-coco_rn50", "rpn_coco_48.pth", "rpn_lvis_866.pth",
     "its backbone has an FPN"),
    ("regionclip_finetuned-lvis_rn50", "rpn_lvis_866_lsj.pth", "rpn_lvis_1203_clipbackbone.pth",
     "its backbone is"),
    ("regionclip_pretrained-coco_rn50", "regionclip_pretrained-coco_rn50.pth",
     "teacher_RN50_student_RN50_OAI_CLIP.pth", "looks like OpenAI CLIP weights"),
])
def test_a_wrong_file_is_named_before_anything_is_built(folder, no_build, name, filename, source,
                                                       says):
    place = _swap(folder, filename, source)
    with pytest.raises(WrongFileError) as info:
        RegionCLIP.from_pretrained(name, folder=folder)
    message = str(info.value)
    assert message.startswith(f"{place} is not ") and f"for {name}" in message, message
    assert says in message, message


def test_the_right_files_pass_the_same_checks(folder, no_build):
    """Negative control of the test above: unchanged files pass (only the build is refused)."""
    for name in ("regionclip_pretrained-cc_rn50", "regionclip_finetuned-coco_rn50x4",
                 "regionclip_finetuned-lvis_rn50"):
        with pytest.raises(AssertionError, match="a model was built"):
            RegionCLIP.from_pretrained(name, folder=folder)


def test_an_rpn_inside_the_weights_must_be_the_named_one(folder, no_build):
    """Without an RPN file, the weights' own RPN is used: it is checked like the RPN file."""
    name = "regionclip_pretrained-cc_rn50"
    os.remove(folder / "rpn" / "rpn_lvis_866.pth")
    weights = folder / "regionclip" / f"{name}.pth"
    sd = pretrained_state(model_zoo.get_model("regionclip_finetuned-coco_rn50"))  # a C4 RPN
    torch.save({"model": sd}, weights)
    with pytest.raises(WrongFileError, match="its offline_backbone has no FPN") as info:
        model_zoo.resolve_model(name, folder)
    assert str(info.value).startswith(f"{weights} is not ")


def test_a_truncated_file_is_named(folder, no_build):
    path = folder / "regionclip" / "regionclip_pretrained-cc_rn50.pth"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFileError, match="is not a readable checkpoint") as info:
        RegionCLIP.from_pretrained("regionclip_pretrained-cc_rn50", folder=folder)
    assert str(path) in str(info.value)


def test_a_wrong_embedding_file_is_named(folder):
    name = "regionclip_finetuned-coco_rn50"
    place = _swap(folder, "coco_65_cls_emb.pth", "coco_48_base_cls_emb.pth")
    model_zoo.resolve_model(name, folder)  # the API needs no embedding file
    with pytest.raises(WrongFileError, match=r"one tensor \(65, 1024\).*shape \(48, 1024\)"):
        model_zoo.resolve_model(name, folder, embeddings=True)
    os.remove(place)
    with pytest.raises(FileNotFoundError, match=f"put it at {place}"):
        model_zoo.resolve_model(name, folder, embeddings=True)


# -------------------------------------------------------------------------------------- hashes
def test_registered_hashes_are_checked(folder, monkeypatch, no_build):
    monkeypatch.setattr(model_zoo, "_HASHES", {})
    name, filename = "regionclip_pretrained-cc_rn50", "rpn_lvis_866.pth"
    path = folder / "rpn" / filename
    right = hashlib.sha256(path.read_bytes()).hexdigest()
    wrong = hashlib.sha256(b"another file").hexdigest()
    model_zoo.register_hash(filename, right)
    model_zoo.resolve_model(name, folder)
    model_zoo.register_hash(filename, wrong.upper())  # digests are case-insensitive
    with pytest.raises(ValueError, match=f"{path}: SHA256 {right} differs from the registered "
                                         f"{wrong}"):
        model_zoo.resolve_model(name, folder)
    model_zoo.register_hash(filename, None)
    model_zoo.resolve_model(name, folder)
    with pytest.raises(ValueError, match="differs"):  # as an argument
        RegionCLIP.from_pretrained(name, folder=folder, sha256={filename: wrong})
    (folder / "hashes.json").write_text(json.dumps({filename: wrong}))  # in the folder
    with pytest.raises(ValueError, match="differs"):
        model_zoo.resolve_model(name, folder)
    model_zoo.resolve_model(name, folder, sha256={filename: right})  # the argument wins
    with pytest.raises(ValueError, match="must be 64 hex digits, got 'abc'"):
        model_zoo.register_hash(filename, "abc")


# ------------------------------------------------------------------------------ the right files
def test_from_pretrained_detects_as_the_explicit_config(tiny, monkeypatch):
    tiny_zoo(monkeypatch, tiny)
    folder = os.path.dirname(os.path.dirname(tiny["tiny_rpn.pth"]))
    rc = RegionCLIP.from_pretrained("tiny_pretrained", device="cpu", folder=folder)
    vocabulary = ["red rectangle", "blue ellipse", "cat"]
    detections = rc.detect(_image(), vocabulary, score_threshold=0.0)
    assert detections and {d["label"] for d in detections} <= set(vocabulary)
    assert rc.text_encoder_loaded and rc.cfg.MODEL.WEIGHTS == tiny["tiny_pretrained.pth"]
    assert rc.cfg.MODEL.CLIP.BB_RPN_WEIGHTS == tiny["tiny_rpn.pth"]
    explicit = RegionCLIP.from_config(
        "LVISv1-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_custom_img.yaml",
        weights=tiny["tiny_pretrained.pth"], device="cpu", opts=tiny["opts"] + [
            "MODEL.CLIP.OFFLINE_RPN_CONFIG", tiny["rpn_config"],
            "MODEL.CLIP.BB_RPN_WEIGHTS", tiny["tiny_rpn.pth"]])
    assert explicit.detect(_image(), vocabulary, score_threshold=0.0) == detections
    # a model with other weights detects otherwise (the comparison can fail)
    other = RegionCLIP.from_pretrained("tiny_finetuned", device="cpu", folder=folder)
    assert other.detect(_image(), vocabulary, score_threshold=0.0) != detections


def test_a_detector_takes_its_text_encoder_from_the_pretrained_file(tiny, monkeypatch):
    tiny_zoo(monkeypatch, tiny)
    folder = os.path.dirname(os.path.dirname(tiny["tiny_rpn.pth"]))
    rc = RegionCLIP.from_pretrained("tiny_finetuned", device="cpu", folder=folder)
    detector = torch.load(tiny["tiny_finetuned.pth"])["model"]
    pretrained = torch.load(tiny["tiny_pretrained.pth"])["model"]
    rpn = torch.load(tiny["tiny_rpn.pth"])["model"]
    state = rc.model.state_dict()
    for key, value in state.items():
        if key.startswith("lang_encoder."):
            assert torch.equal(value, pretrained[key]), key
        elif key.startswith("offline_"):
            assert torch.equal(value, rpn[key[len("offline_"):]]), key
        elif key in detector:
            assert torch.equal(value, detector[key]), key
    assert any(not torch.equal(state[k], pretrained[k]) for k in state if k.startswith(
        "backbone."))  # the detector's own image tower, not the pretrained one
    detections = rc.detect(_image(), ["red rectangle", "cat"], score_threshold=0.0)
    assert detections and {d["label"] for d in detections} <= {"red rectangle", "cat"}


def test_a_user_registered_model_with_a_wrong_file_is_caught(tiny, monkeypatch, tmp_path,
                                                            no_build):
    tiny_zoo(monkeypatch, tiny)
    folder = tmp_path / "ckpt"
    shutil.copytree(os.path.dirname(os.path.dirname(tiny["tiny_rpn.pth"])), folder)
    shutil.copy(tiny["tiny_finetuned.pth"], folder / "regionclip" / "tiny_pretrained.pth")
    with pytest.raises(WrongFileError, match="no lang_encoder"):
        RegionCLIP.from_pretrained("tiny_pretrained", folder=folder)
    with pytest.raises(ValueError, match="names files the zoo does not know: \\['x.pth'\\]"):
        model_zoo.register_model(model_zoo.ZooModel("x", "a.yaml", "x.pth", "b.yaml",
                                                     "tiny_rpn.pth"))
