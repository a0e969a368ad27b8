"""MODEL.CLIP.ARCH / TEACHER_ARCH: presets, JSON files, and the original's depth flag."""
import json

import pytest
from detectron2.config import get_cfg
from tiny_clip import TINY, write_tiny_clip

from regionclip import add_regionclip_config
from regionclip.clip import get_preset
from regionclip.modeling.backbone.clip_resnet import build_clip_resnet_backbone
from regionclip.modeling.clip_arch import clip_config_from_cfg, resolve_clip_arch
from regionclip.modeling.text_encoder import build_clip_language_encoder


def _cfg(*opts):
    cfg = get_cfg()
    add_regionclip_config(cfg)
    cfg.merge_from_list(list(opts))
    return cfg


def test_empty_arch_keeps_the_depth_flag():
    assert clip_config_from_cfg(_cfg("MODEL.RESNETS.DEPTH", 200)) == get_preset("RN50x4")
    assert clip_config_from_cfg(_cfg("MODEL.CLIP.TEACHER_RESNETS_DEPTH", 200), teacher=True) == \
        get_preset("RN50x4")
    assert clip_config_from_cfg(_cfg()) == get_preset("RN50")


def test_preset_name_and_json_file(tmp_path):
    assert resolve_clip_arch("RN50x16", 50) == get_preset("RN50x16")
    arch, _ = write_tiny_clip(str(tmp_path))
    assert resolve_clip_arch(arch, 50) == TINY
    cfg = _cfg("MODEL.CLIP.ARCH", arch, "MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4",
                                                                       "res5"],
               "MODEL.ROI_HEADS.NAME", "PretrainRes5ROIHeads")
    backbone = build_clip_resnet_backbone(cfg)
    assert {k: v.channels for k, v in backbone.output_shape().items()} == \
        {"res2": 64, "res3": 128, "res4": 256, "res5": 512}
    assert backbone.attnpool.c_proj.out_features == 64
    text = build_clip_language_encoder(cfg)
    assert text.text_projection.shape == (64, 64) and len(text.transformer.resblocks) == 2
    # the teacher has its own key; an explicit depth ignores the student's ARCH
    teacher = build_clip_resnet_backbone(cfg, depth=50)
    assert teacher.output_shape()["res4"].channels == 1024


def test_bad_arch_values_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="RN50x4"):
        resolve_clip_arch("RN51", 50)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"visual": {"layers": [1, 1, 1, 1]}}))
    with pytest.raises(ValueError, match="malformed"):
        resolve_clip_arch(str(bad), 50)
