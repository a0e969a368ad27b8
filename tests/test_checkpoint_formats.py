"""RegionCLIP checkpoint layouts load into CLIPFastRCNN: pretrained (with teacher and text tower,
reported as intentionally unused) and finetuned (everything), with our and the stock
checkpointer."""
import logging
import os

import pytest
import torch
from conftest import REPO
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from tiny_clip import TINY, TINY_OPTS, write_tiny_clip

from regionclip import add_regionclip_config
from regionclip.checkpoint import RegionCLIPCheckpointer
from regionclip.clip import build_text


@pytest.fixture(scope="module")
def model_and_arch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    arch, _ = write_tiny_clip(str(folder))
    cfg = get_cfg()
    add_regionclip_config(cfg)
    cfg.merge_from_file(os.path.join(REPO,
                                     "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd.yaml"))
    cfg.merge_from_list(TINY_OPTS + ["MODEL.CLIP.ARCH", arch, "MODEL.DEVICE", "cpu",
                                     "MODEL.CLIP.CROP_REGION_TYPE", "GT"])
    return cfg, folder


def _fresh(cfg):
    torch.manual_seed(0)
    return build_model(cfg)


def test_pretrained_layout_loads_and_reports_teacher_and_text_as_intentional(model_and_arch,
                                                                             caplog):
    cfg, folder = model_and_arch
    source = _fresh(cfg)
    with torch.no_grad():
        for p in source.backbone.parameters():
            p.add_(1.0)  # differ from a fresh model
    sd = {k: v for k, v in source.state_dict().items() if k.startswith("backbone.")}
    sd.update({"teacher_" + k: v.clone() for k, v in sd.items()})
    sd.update({"lang_encoder." + k: v for k, v in build_text(TINY.text).state_dict().items()})
    path = str(folder / "pretrained.pth")
    torch.save({"model": sd, "__author__": "RegionCLIP pretraining"}, path)

    model = _fresh(cfg)
    with caplog.at_level(logging.INFO):
        RegionCLIPCheckpointer(model).load(path)
    text = caplog.text
    assert "Intentionally unused" in text
    assert "teacher_backbone." in text and "lang_encoder." in text
    assert "as expected: roi_heads.box_predictor.cls_score.weight" in text
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any("teacher_backbone" in w or "lang_encoder" in w or "cls_score" in w
                   for w in warnings)
    assert not any("not found in the model" in w
                   or "checkpoint" in w.lower() and "missing" in w.lower()
                   for w in warnings), warnings
    for k, v in model.state_dict().items():
        if k.startswith("backbone."):
            assert torch.equal(v, sd[k]), k


def test_finetuned_layout_round_trips_with_both_checkpointers(model_and_arch, caplog):
    cfg, folder = model_and_arch
    source = _fresh(cfg)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    path = str(folder / "finetuned.pth")
    torch.save({"model": source.state_dict()}, path)
    for checkpointer in (RegionCLIPCheckpointer, DetectionCheckpointer):
        model = _fresh(cfg)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            checkpointer(model).load(path)
        assert not caplog.records, [r.getMessage() for r in caplog.records]
        for k, v in source.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), (checkpointer.__name__, k)
