"""OpenAI CLIP files -> RegionCLIP models: reading, key maps, conversion, checkpointers."""
import importlib.util
import logging
import os
import warnings
from argparse import Namespace
from collections import OrderedDict

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from torch import nn

from regionclip.checkpoint import (
    RegionCLIPCheckpointer,
    load_clip_state_dict,
    map_clip_to_model,
)
from regionclip.checkpoint.safe_pickle import TRUST_ENV, UntrustedFileError
from regionclip.clip import CLIP, CLIPConfig, TextConfig, TextTransformer, VisualConfig, build_clip
from regionclip.modeling.backbone import CLIPResNetBackbone

warnings.filterwarnings("ignore", category=FutureWarning)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = TextConfig(width=64, heads=1, layers=2, embed_dim=16)
VIS_A = VisualConfig((1, 1, 1, 1), 8, 32, 16, 4)      # "student" architecture
VIS_B = VisualConfig((1, 2, 1, 1), 16, 64, 16, 8)     # a different "teacher" architecture
OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")


def random_clip(visual: VisualConfig, seed: int) -> CLIP:
    """A CLIP (plain BatchNorm2d, as OpenAI's) with every tensor random, incl. BN statistics."""
    torch.manual_seed(seed)
    model = CLIP(CLIPConfig(visual, TEXT))
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5 if "running_var" in name
                             else torch.randn_like(tensor))
    return model


def clip_state_dict(visual=VIS_A, seed=0):
    return OrderedDict((k, v.clone()) for k, v in random_clip(visual, seed).state_dict().items())


class Holder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_torchscript(state_dict, path):
    """A TorchScript archive holding exactly ``state_dict`` (plus OpenAI's metadata entries)."""
    root = Holder()
    entries = dict(state_dict, input_resolution=torch.tensor(32), context_length=torch.tensor(77),
                   vocab_size=torch.tensor(49408))
    for key, value in entries.items():
        *path_parts, leaf = key.split(".")
        module = root
        for part in path_parts:
            if not hasattr(module, part):
                module.add_module(part, Holder())
            module = getattr(module, part)
        module.register_buffer(leaf, value.clone())
    torch.jit.script(root).save(str(path))


def offline_modules(model: nn.Module, fpn_names: bool = False):
    """Offline branch with FrozenBN (and FPN-like key names to reproduce the original's trap)."""
    name = "fpn_lateral2" if fpn_names else "conv"
    model.offline_backbone = nn.Sequential(OrderedDict(
        [(name, nn.Conv2d(3, 4, 1, bias=False)), ("norm", FrozenBatchNorm2d(4))]))
    model.offline_proposal_generator = nn.Conv2d(4, 1, 1)
    return model


def detection_model(visual=VIS_A, fpn_offline=False):
    model = nn.Module()
    model.backbone = CLIPResNetBackbone(visual, ("res4",), with_attnpool=True)
    model.lang_encoder = TextTransformer(**TEXT.__dict__)
    return offline_modules(model, fpn_offline)


def pretraining_model(student=VIS_A, teacher=VIS_A):
    model = detection_model(student)
    model.teacher_backbone = CLIPResNetBackbone(teacher, ("res4",), with_attnpool=True)
    return model


def fpn_model(visual=VIS_A):
    model = nn.Module()
    bottom_up = CLIPResNetBackbone(visual, ("res2", "res3", "res4", "res5"), with_attnpool=False)
    model.backbone = FPN(bottom_up, ["res2", "res3", "res4", "res5"], 8,
                         top_block=LastLevelMaxPool())
    return offline_modules(model)


def assert_towers_equal(model, prefix, source, source_prefix):
    """Every tensor of model.<prefix> equals source[<source_prefix> + name]."""
    own = {k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    assert own, prefix
    for name, tensor in own.items():
        assert torch.equal(tensor, source[source_prefix + name].to(tensor.dtype)), prefix + name


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def openai_sd():
    return clip_state_dict(VIS_A, seed=0)


@pytest.mark.parametrize("form", ["plain", "model", "state_dict_module", "torchscript"])
def test_load_clip_state_dict_forms(tmp_path, openai_sd, form):
    path = tmp_path / "clip_weights.pt"
    if form == "plain":
        torch.save(openai_sd, path)
    elif form == "model":
        torch.save({"model": openai_sd}, path)
    elif form == "state_dict_module":
        torch.save({"state_dict": {"module." + k: v for k, v in openai_sd.items()}}, path)
    else:
        save_torchscript(openai_sd, path)
    loaded = load_clip_state_dict(str(path))
    assert list(loaded) == list(openai_sd)  # OpenAI names, metadata entries dropped
    assert not set(OPENAI_METADATA) & set(loaded)
    for key, value in openai_sd.items():
        assert torch.equal(loaded[key], value), key


def test_file_needing_full_unpickling_is_refused_unless_trusted(tmp_path, openai_sd, caplog,
                                                                monkeypatch):
    path = tmp_path / "with_args.pth"
    torch.save({"model": openai_sd, "args": Namespace(lr=0.1)}, path)
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(UntrustedFileError) as info:
        load_clip_state_dict(str(path))
    message = str(info.value)
    assert str(path) in message and "argparse.Namespace" in message
    assert f"{TRUST_ENV}={os.path.realpath(path)}" in message
    # trusting another file does not trust this one
    monkeypatch.setenv(TRUST_ENV, str(tmp_path / "other.pth"))
    with pytest.raises(UntrustedFileError):
        load_clip_state_dict(str(path))
    monkeypatch.setenv(TRUST_ENV, os.pathsep.join([str(tmp_path / "other.pth"), str(path)]))
    with caplog.at_level(logging.WARNING):
        loaded = load_clip_state_dict(str(path))
    assert TRUST_ENV in caplog.text and str(path) in caplog.text
    assert torch.equal(loaded["text_projection"], openai_sd["text_projection"])


def test_file_without_clip_keys_is_an_error(tmp_path):
    path = tmp_path / "not_clip.pth"
    torch.save({"model": {"head.fc.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(ValueError, match="not_clip.pth.*neither OpenAI CLIP keys"):
        load_clip_state_dict(str(path))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_clip_state_dict(str(tmp_path / "missing.pth"))


def test_map_detection_model_is_lossless(openai_sd):
    model = detection_model()
    mapped, report = map_clip_to_model(openai_sd, model)
    result = model.load_state_dict(mapped, strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith("offline_") for k in result.missing_keys)
    assert_towers_equal(model, "backbone.", openai_sd, "visual.")
    assert_towers_equal(model, "lang_encoder.", openai_sd, "")
    assert report.unused == ["logit_scale"]
    assert report.missing == []
    assert report.ignored and all(k.endswith("num_batches_tracked") for k in report.ignored)
    assert set(report.loaded) == {"backbone.", "lang_encoder."}
    assert "logit_scale" in report.summary()


def test_map_pretraining_model_same_architecture(openai_sd):
    model = pretraining_model()
    mapped, report = map_clip_to_model(openai_sd, model)
    model.load_state_dict(mapped, strict=False)
    assert_towers_equal(model, "backbone.", openai_sd, "visual.")
    assert_towers_equal(model, "teacher_backbone.", openai_sd, "visual.")
    assert_towers_equal(model, "lang_encoder.", openai_sd, "")
    assert report.missing == [] and report.unused == ["logit_scale"]
    assert "no teacher copy" in report.sources["teacher_backbone."]


@pytest.mark.parametrize("teacher_prefix", ["teacher_visual.", "teacher_backbone."])
def test_map_teacher_copy_of_other_architecture(openai_sd, teacher_prefix):
    teacher_sd = clip_state_dict(VIS_B, seed=1)
    ckpt = OrderedDict(openai_sd)
    ckpt.update((teacher_prefix + k[len("visual."):], v) for k, v in teacher_sd.items()
                if k.startswith("visual."))
    model = pretraining_model(student=VIS_A, teacher=VIS_B)
    mapped, report = map_clip_to_model(ckpt, model)
    model.load_state_dict(mapped, strict=False)
    assert_towers_equal(model, "backbone.", openai_sd, "visual.")
    assert_towers_equal(model, "teacher_backbone.", ckpt, teacher_prefix)
    assert_towers_equal(model, "lang_encoder.", openai_sd, "")
    assert report.missing == [] and report.unused == ["logit_scale"]


def test_targets_follow_model_keys_not_fpn_substrings(openai_sd):
    # C4 student next to an offline backbone with FPN key names: still backbone.* (original trap)
    c4 = detection_model(fpn_offline=True)
    assert any("fpn" in k for k in c4.state_dict())
    mapped, report = map_clip_to_model(openai_sd, c4)
    assert "backbone." in report.loaded and report.missing == []
    # FPN recognition backbone: visual weights go to backbone.bottom_up.*
    fpn = fpn_model()
    mapped, report = map_clip_to_model(openai_sd, fpn)
    fpn.load_state_dict(mapped, strict=False)
    assert_towers_equal(fpn, "backbone.bottom_up.", openai_sd, "visual.")
    assert set(report.loaded) == {"backbone.bottom_up."}
    assert all(k.startswith("backbone.fpn_") for k in report.missing)
    assert "visual.attnpool.c_proj.weight" in report.unused  # FPN bottom-up has no attnpool


def test_model_style_clip_keys_map_into_fpn_bottom_up(openai_sd):
    model_style = OrderedDict(("backbone." + k[7:], v) for k, v in openai_sd.items()
                              if k.startswith("visual."))
    fpn = fpn_model()
    mapped, report = map_clip_to_model(model_style, fpn)
    fpn.load_state_dict(mapped, strict=False)
    assert_towers_equal(fpn, "backbone.bottom_up.", model_style, "backbone.")


def test_two_student_sources_are_an_error(openai_sd):
    ckpt = OrderedDict(openai_sd)
    ckpt["backbone.conv1.weight"] = openai_sd["visual.conv1.weight"]
    with pytest.raises(ValueError, match="'visual.\\*'.*'backbone.\\*'"):
        map_clip_to_model(ckpt, detection_model())


def test_rn50x4_weights_into_rn50_model_name_keys_and_shapes():
    with torch.device("meta"):
        rn50x4 = build_clip("RN50x4").state_dict()
        model = nn.Module()
        model.backbone = CLIPResNetBackbone(VisualConfig((3, 4, 6, 3), 64, 224, 1024, 32))
        model.lang_encoder = TextTransformer(512, 8, 12, 1024)
    with pytest.raises(ValueError) as info:
        map_clip_to_model(rn50x4, model)
    message = str(info.value)
    assert "visual.conv1.weight -> backbone.conv1.weight: checkpoint (40, 3, 3, 3) vs model " \
           "(32, 3, 3, 3)" in message
    assert "RN50x4" in message and "more" in message
    _, report = map_clip_to_model(rn50x4, model, raise_on_mismatch=False)
    assert ("token_embedding.weight", (49408, 640), (49408, 512)) in [
        (m.checkpoint_key, m.checkpoint_shape, m.model_shape) for m in report.mismatched]


class RecordingCheckpointer(DetectionCheckpointer):
    """The stock checkpointer, keeping the incompatible keys it computed."""

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def test_convert_tool_output_loads_with_stock_checkpointer(tmp_path):
    student_sd, teacher_sd = clip_state_dict(VIS_A, 0), clip_state_dict(VIS_B, 1)
    torch.save(student_sd, tmp_path / "student.pt")
    save_torchscript(teacher_sd, tmp_path / "teacher.pt")
    out = tmp_path / "converted" / "towers.pth"
    tool = load_tool("convert_openai_clip")
    assert tool.main(["--student", str(tmp_path / "student.pt"), "--teacher",
                      str(tmp_path / "teacher.pt"), "--output", str(out)]) == 0
    saved = torch.load(out, weights_only=True)
    assert saved["matching_heuristics"] is False and "student.pt" in saved["__author__"]

    model = pretraining_model(student=VIS_A, teacher=VIS_B)
    checkpointer = RecordingCheckpointer(model)
    checkpointer.load(str(out))
    assert all(k.startswith("offline_") for k in checkpointer.incompatible.missing_keys)
    assert checkpointer.incompatible.missing_keys
    assert not checkpointer.incompatible.unexpected_keys
    assert_towers_equal(model, "backbone.", student_sd, "visual.")
    assert_towers_equal(model, "teacher_backbone.", teacher_sd, "visual.")
    assert_towers_equal(model, "lang_encoder.", student_sd, "")

    detector = detection_model(VIS_A)
    checkpointer = RecordingCheckpointer(detector)
    checkpointer.load(str(out))
    assert all(k.startswith("offline_") for k in checkpointer.incompatible.missing_keys)
    assert checkpointer.incompatible.unexpected_keys
    assert all(k.startswith("teacher_backbone.") for k in checkpointer.incompatible.unexpected_keys)
    assert_towers_equal(detector, "backbone.", student_sd, "visual.")


def test_convert_default_teacher_is_student(tmp_path, openai_sd):
    torch.save(openai_sd, tmp_path / "rn.pt")
    tool = load_tool("convert_openai_clip")
    tool.main(["--student", str(tmp_path / "rn.pt"), "--output", str(tmp_path / "out.pth")])
    model = torch.load(tmp_path / "out.pth", weights_only=True)["model"]
    for key, value in openai_sd.items():
        if key.startswith("visual.") and not key.endswith("num_batches_tracked"):
            name = key[len("visual."):]
            assert torch.equal(model["backbone." + name], value)
            assert torch.equal(model["teacher_backbone." + name], value)


def test_regionclip_checkpointer_oai_clip_file(tmp_path, openai_sd):
    teacher_sd = clip_state_dict(VIS_B, seed=3)
    ckpt = OrderedDict(openai_sd)
    ckpt.update(("teacher_visual." + k[7:], v) for k, v in teacher_sd.items()
                if k.startswith("visual."))
    path = tmp_path / "teacher_RN50_student_RN50_OAI_CLIP.pth"
    torch.save(ckpt, path)
    model = pretraining_model(student=VIS_A, teacher=VIS_B)
    stats = torch.rand(4) + 3.0
    model.offline_backbone.norm.running_var.copy_(stats)
    RegionCLIPCheckpointer(model).load(str(path))
    assert_towers_equal(model, "backbone.", openai_sd, "visual.")
    assert_towers_equal(model, "teacher_backbone.", teacher_sd, "visual.")
    assert_towers_equal(model, "lang_encoder.", openai_sd, "")
    # FrozenBN layers without entries in the file keep their statistics (no reset to 0 / 1)
    assert torch.equal(model.offline_backbone.norm.running_var, stats)


@pytest.mark.parametrize("form", ["plain", "torchscript"])
def test_regionclip_checkpointer_openai_file_named_anything(tmp_path, openai_sd, form):
    path = tmp_path / "weights.bin"
    if form == "plain":
        torch.save(openai_sd, path)
    else:
        save_torchscript(openai_sd, path)
    model = detection_model()
    RegionCLIPCheckpointer(model).load(str(path))
    assert_towers_equal(model, "backbone.", openai_sd, "visual.")
    assert_towers_equal(model, "lang_encoder.", openai_sd, "")


def test_regionclip_checkpointer_native_and_mismatch(tmp_path, openai_sd, monkeypatch):
    source = detection_model()
    with torch.no_grad():
        for tensor in source.state_dict().values():
            tensor.copy_(torch.randn_like(tensor))
    # an old-style checkpoint with an object that torch.load(weights_only=True) refuses: read
    # only when the user trusts it
    path = tmp_path / "native.pth"
    torch.save({"model": source.state_dict(), "iteration": 7, "args": Namespace(lr=0.1)}, path)
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(UntrustedFileError, match="native.pth"):
        RegionCLIPCheckpointer(detection_model()).load(str(path))
    monkeypatch.setenv(TRUST_ENV, str(path))
    model = detection_model()
    extra = RegionCLIPCheckpointer(model).load(str(path))
    assert extra["iteration"] == 7
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    torch.save(clip_state_dict(VIS_B, 5), tmp_path / "other_arch.pt")
    with pytest.raises(ValueError, match=r"visual.conv1.weight -> backbone.conv1.weight: "
                                         r"checkpoint \(8, 3, 3, 3\) vs model \(4, 3, 3, 3\)"):
        RegionCLIPCheckpointer(detection_model()).load(str(tmp_path / "other_arch.pt"))
