"""Every config under configs/ builds its model at real size (random weights, no forward)."""
import glob
import os

import pytest
import torch
from conftest import REPO
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from regionclip import add_regionclip_config

CONFIGS = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "**",
                                                                          "*.yaml"),
                                                             recursive=True)
                 if not os.path.basename(p).startswith("Base-"))
COCO_RPN = os.path.join(REPO, "configs/COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x_ovd_FSD.yaml")
LVIS_RPN = os.path.join(REPO, "configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")


def _offline_config(rel):
    """The offline RPN the original's scripts pair with each config."""
    return COCO_RPN if rel.startswith("configs/COCO") else LVIS_RPN


@pytest.mark.slow
@pytest.mark.parametrize("rel", CONFIGS)
def test_config_builds(rel):
    cfg = get_cfg()
    add_regionclip_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, rel))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.CLIP.OFFLINE_RPN_CONFIG",
                         _offline_config(rel)])
    torch.manual_seed(0)
    with torch.no_grad():
        model = build_model(cfg)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    keys = model.state_dict().keys()
    if cfg.MODEL.BACKBONE.NAME == "build_clip_resnet_backbone":
        width = {50: 1024, 200: 1280}[cfg.MODEL.RESNETS.DEPTH]
        assert model.backbone.output_shape()["res4"].channels == width
        assert any(k.startswith("backbone.layer4.") for k in keys)
    if cfg.MODEL.META_ARCHITECTURE in ("CLIPFastRCNN", "PretrainFastRCNN"):
        has_offline = any(k.startswith("offline_backbone.") for k in keys)
        assert has_offline == (cfg.MODEL.CLIP.CROP_REGION_TYPE == "RPN")
        assert all(not p.requires_grad for n,
                   p in model.named_parameters() if n.startswith("offline_"))
    if cfg.MODEL.META_ARCHITECTURE == "PretrainFastRCNN":
        assert all(not p.requires_grad for n, p in model.named_parameters()
                   if n.startswith(("teacher_backbone.", "lang_encoder.")))


def test_rpn_mode_without_offline_config_is_a_clear_error():
    cfg = get_cfg()
    add_regionclip_config(cfg)
    cfg.merge_from_file(os.path.join(REPO,
                                     "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    assert cfg.MODEL.CLIP.CROP_REGION_TYPE == "RPN" and not cfg.MODEL.CLIP.OFFLINE_RPN_CONFIG
    with pytest.raises(ValueError, match="OFFLINE_RPN_CONFIG is not set"):
        build_model(cfg)
