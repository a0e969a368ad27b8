"""CLIP ResNet detectron2 backbone: builder logic, features, freezing, FrozenBN, FPN variant."""
import warnings
from collections import OrderedDict

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_backbone
from torch import nn

import regionclip  # noqa: F401  (registers the builders)
from regionclip import add_regionclip_config
from regionclip.checkpoint import RegionCLIPCheckpointer, load_offline_rpn_weights
from regionclip.clip import ModifiedResNet, get_preset
from regionclip.modeling.backbone import CLIPResNetBackbone, build_clip_resnet_backbone

warnings.filterwarnings("ignore", category=FutureWarning)


def make_cfg(**overrides):
    cfg = get_cfg()
    add_regionclip_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_clip_resnet_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    cfg.MODEL.ROI_HEADS.NAME = "CLIPRes5ROIHeads"
    cfg.MODEL.CLIP.USE_TEXT_EMB_CLASSIFIER = True
    for key, value in overrides.items():
        node = cfg
        *path, leaf = key.split(".")
        for part in path:
            node = getattr(node, part)
        setattr(node, leaf, value)
    return cfg


def randomize_norms(module: nn.Module, seed: int = 0):
    """Give every FrozenBatchNorm2d non-trivial statistics (they start as the identity)."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.num_features
            m.weight.copy_(1 + 0.1 * torch.randn(n, generator=gen))
            m.bias.copy_(0.1 * torch.randn(n, generator=gen))
            m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            m.running_var.copy_(1 + torch.rand(n, generator=gen))
    return module


@pytest.fixture(scope="module")
def rn50_all():
    cfg = make_cfg(**{"MODEL.RESNETS.OUT_FEATURES": ["res2", "res3", "res4", "res5"]})
    backbone = randomize_norms(build_backbone(cfg)).eval()
    return cfg, backbone


def test_features_equal_pure_model(rn50_all):
    _, backbone = rn50_all
    assert isinstance(backbone, CLIPResNetBackbone) and isinstance(backbone, ModifiedResNet)
    pure = ModifiedResNet(**{"layers": (3, 4, 6, 3), "width": 64, "image_size": 224,
                             "output_dim": 1024, "heads": 32}, norm_layer=FrozenBatchNorm2d)
    pure.load_state_dict(backbone.state_dict())  # same OpenAI key names, nothing renamed
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ours = backbone(x)
        ref = pure.forward_features(x, ("res2", "res3", "res4", "res5"))
    assert list(ours) == ["res2", "res3", "res4", "res5"]
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=0, atol=0)
    shapes = backbone.output_shape()
    for name, feat in ours.items():
        assert shapes[name].channels == feat.shape[1]
        assert shapes[name].stride == x.shape[-1] // feat.shape[-1] == x.shape[-2] // feat.shape[-2]
    assert backbone.size_divisibility == 0


def test_c4_returns_only_res4_and_never_runs_layer4():
    backbone = build_backbone(make_cfg()).eval()
    calls = []
    backbone.layer4.register_forward_hook(lambda *args: calls.append(1))
    out = backbone(torch.randn(1, 3, 64, 64))
    assert list(out) == ["res4"] and out["res4"].shape == (1, 1024, 4, 4)
    assert list(backbone.output_shape()) == ["res4"]
    assert backbone.output_shape()["res4"].stride == 16
    assert calls == []
    # layer4 and attnpool are owned by the backbone, under OpenAI's names
    keys = backbone.state_dict().keys()
    assert "layer4.0.downsample.0.weight" in keys and "attnpool.c_proj.weight" in keys
    assert all(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules()
               if "Norm" in type(m).__name__)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())


@pytest.mark.parametrize("head,flag,expected", [
    ("CLIPRes5ROIHeads", True, True),
    ("StandardROIHeads", True, False),
    ("CLIPRes5ROIHeads", False, False),
    ("PretrainRes5ROIHeads", False, True),
    ("Res5ROIHeads", True, False),
    ("StandardROIHeads", False, False),
])
def test_attnpool_rule(head, flag, expected):
    cfg = make_cfg(**{"MODEL.ROI_HEADS.NAME": head, "MODEL.CLIP.USE_TEXT_EMB_CLASSIFIER": flag})
    backbone = build_backbone(cfg)
    assert (backbone.attnpool is not None) == expected
    assert any(k.startswith("attnpool.") for k in backbone.state_dict()) == expected
    assert any(k.startswith("layer4.") for k in backbone.state_dict())


def test_freeze_at_2_freezes_stem_and_layer1_only():
    backbone = build_backbone(make_cfg(**{"MODEL.RESNETS.OUT_FEATURES": ["res5"]}))
    frozen = {name for name, p in backbone.named_parameters() if not p.requires_grad}
    for name, p in backbone.named_parameters():
        top = name.split(".")[0]
        assert p.requires_grad == (top in ("layer2", "layer3", "layer4", "attnpool")), name
    assert any(n.startswith("conv1") for n in frozen)
    assert any(n.startswith("layer1") for n in frozen)
    x = torch.randn(1, 3, 64, 64)
    out = backbone(x)["res5"]
    pooled = backbone.attnpool(nn.functional.adaptive_avg_pool2d(out, 7))
    (out.sum() + pooled.sum()).backward()
    for name, p in backbone.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("freeze_at,trainable_stages", [(0, 4), (1, 4), (3, 2), (5, 0)])
def test_freeze_at_levels(freeze_at, trainable_stages):
    backbone = build_backbone(make_cfg(**{"MODEL.BACKBONE.FREEZE_AT": freeze_at}))
    assert backbone.conv1.weight.requires_grad == (freeze_at == 0)
    flags = [stage[0].conv1.weight.requires_grad for stage in backbone.stages]
    assert flags == [False] * (4 - trainable_stages) + [True] * trainable_stages


def test_invalid_depth_lists_valid_ones():
    with pytest.raises(ValueError, match=r"\[50, 101, 200\]"):
        build_backbone(make_cfg(**{"MODEL.RESNETS.DEPTH": 34}))


def test_invalid_out_features():
    with pytest.raises(ValueError, match="res6"):
        build_backbone(make_cfg(**{"MODEL.RESNETS.OUT_FEATURES": ["res6"]}))


def test_rn50x4_shapes_without_running():
    cfg = make_cfg(**{"MODEL.RESNETS.DEPTH": 200, "MODEL.RESNETS.OUT_FEATURES": ["res4", "res5"]})
    with torch.device("meta"):
        backbone = build_backbone(cfg)
    shapes = backbone.output_shape()
    assert (shapes["res4"].channels, shapes["res5"].channels) == (1280, 2560)
    assert (shapes["res4"].stride, shapes["res5"].stride) == (16, 32)
    assert backbone.attnpool.spacial_dim == 9
    assert backbone.attnpool.positional_embedding.shape == (9 * 9 + 1, 2560)
    assert backbone.attnpool.c_proj.out_features == 640
    assert [len(s) for s in backbone.stages] == [4, 6, 10, 6]


def test_rn50_attnpool_grid_and_teacher_depth():
    cfg = make_cfg()
    with torch.device("meta"):
        student = build_backbone(cfg)
        teacher = build_clip_resnet_backbone(cfg, ShapeSpec(channels=3), depth=200)
    assert student.attnpool.positional_embedding.shape == (7 * 7 + 1, 2048)
    assert teacher.output_shape()["res4"].channels == 1280
    assert teacher.attnpool.spacial_dim == 9


def test_fpn_variant():
    cfg = make_cfg(**{"MODEL.BACKBONE.NAME": "build_clip_resnet_fpn_backbone",
                      "MODEL.RESNETS.OUT_FEATURES": ["res2", "res3", "res4", "res5"],
                      "MODEL.FPN.IN_FEATURES": ["res2", "res3", "res4", "res5"],
                      "MODEL.ROI_HEADS.NAME": "StandardROIHeads"})
    backbone = build_backbone(cfg)
    assert isinstance(backbone.bottom_up, CLIPResNetBackbone)
    assert any(k.startswith("bottom_up.layer1.0.conv1") for k in backbone.state_dict())
    out = backbone(torch.randn(1, 3, 64, 64))
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    for name, spec in backbone.output_shape().items():
        assert out[name].shape[1] == spec.channels == 256
        assert 64 // out[name].shape[-1] == spec.stride
    assert [backbone.output_shape()[f"p{i}"].stride for i in range(2, 7)] == [4, 8, 16, 32, 64]
    assert backbone.size_divisibility == 32


class TinyRPNModel(nn.Module):
    """A meta-architecture stand-in: CLIP recognition backbone plus an offline backbone/RPN."""

    def __init__(self):
        super().__init__()
        visual = get_preset("RN50").visual
        tiny = type(visual)((1, 1, 1, 1), 8, 32, 16, 4)
        self.backbone = CLIPResNetBackbone(tiny, ("res4",))
        self.offline_backbone = nn.Sequential(OrderedDict(
            [("conv", nn.Conv2d(3, 4, 3, bias=False)), ("norm", FrozenBatchNorm2d(4))]))
        self.offline_proposal_generator = nn.Sequential(OrderedDict(
            [("objectness", nn.Conv2d(4, 1, 1))]))


def _bn_stats(module):
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k}


def test_frozen_bn_statistics_survive_second_checkpoint(tmp_path):
    main = randomize_norms(TinyRPNModel(), seed=1)
    main_file = tmp_path / "main.pth"
    torch.save({"model": main.state_dict()}, main_file)

    model = TinyRPNModel()
    RegionCLIPCheckpointer(model).load(str(main_file))
    loaded_stats = _bn_stats(model.backbone)
    torch.testing.assert_close(loaded_stats, _bn_stats(main.backbone))

    # A detectron2 RPN checkpoint: backbone/proposal_generator/roi_heads keys, no module versions
    # (the situation in which FrozenBatchNorm2d fills missing statistics with 0 / 1).
    rpn = {"backbone.conv.weight": torch.randn(4, 3, 3, 3),
           "backbone.norm.weight": torch.rand(4) + 0.5, "backbone.norm.bias": torch.randn(4),
           "backbone.norm.running_mean": torch.randn(4),
           "backbone.norm.running_var": torch.rand(4) + 0.5,
           "proposal_generator.objectness.weight": torch.randn(1, 4, 1, 1),
           "proposal_generator.objectness.bias": torch.randn(1),
           "roi_heads.box_head.fc1.weight": torch.randn(2, 2)}
    rpn_file = tmp_path / "rpn.pth"
    torch.save({"model": rpn}, rpn_file)
    report = load_offline_rpn_weights(model, str(rpn_file))

    torch.testing.assert_close(_bn_stats(model.backbone), loaded_stats)
    torch.testing.assert_close(model.offline_backbone.norm.running_mean,
                               rpn["backbone.norm.running_mean"])
    torch.testing.assert_close(model.offline_proposal_generator.objectness.weight,
                               rpn["proposal_generator.objectness.weight"])
    assert report.dropped == ["roi_heads.box_head.fc1.weight"]
    assert report.missing == {"offline_backbone": [], "offline_proposal_generator": []}

    # The trap this avoids: the same keys loaded into the whole model reset the statistics.
    naive = TinyRPNModel()
    naive.load_state_dict(main.state_dict())
    renamed = OrderedDict(("offline_" + k, v) for k, v in rpn.items() if "roi_heads" not in k)
    naive.load_state_dict(renamed, strict=False)
    assert torch.equal(naive.backbone.bn1.running_mean, torch.zeros(4))


def test_second_checkpoint_needs_offline_branch(tmp_path):
    path = tmp_path / "rpn.pth"
    torch.save({"model": {"backbone.conv.weight": torch.zeros(1)}}, path)
    model = nn.Module()
    model.backbone = nn.Conv2d(1, 1, 1)
    with pytest.raises(ValueError, match="offline_backbone"):
        load_offline_rpn_weights(model, str(path))


def test_model_weights_load_the_offline_rpn_of_any_model_built_with_one(tmp_path):
    """The second checkpoint goes to every model with an offline branch, whatever its registered
    name (a subclass of a RegionCLIP meta-architecture), and to no model without one."""
    from regionclip.checkpoint import load_model_weights

    rpn = {"backbone.conv.weight": torch.randn(4, 3, 3, 3),
           "proposal_generator.objectness.weight": torch.randn(1, 4, 1, 1),
           "proposal_generator.objectness.bias": torch.randn(1)}
    torch.save({"model": rpn}, tmp_path / "rpn.pth")
    cfg = get_cfg()
    add_regionclip_config(cfg)
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "MyRegionCLIPVariant", "MODEL.WEIGHTS", "",
                         "MODEL.CLIP.CROP_REGION_TYPE", "RPN", "OUTPUT_DIR", str(tmp_path),
                         "MODEL.CLIP.BB_RPN_WEIGHTS", str(tmp_path / "rpn.pth")])
    model = TinyRPNModel()
    load_model_weights(cfg, model)
    torch.testing.assert_close(model.offline_backbone.conv.weight, rpn["backbone.conv.weight"])
    torch.testing.assert_close(model.offline_proposal_generator.objectness.bias,
                               rpn["proposal_generator.objectness.bias"])
    # without an offline branch (e.g. ground-truth regions) the file is not read at all
    bare = TinyRPNModel()
    bare.offline_proposal_generator = None
    before = bare.offline_backbone.conv.weight.clone()
    cfg.merge_from_list(["MODEL.CLIP.BB_RPN_WEIGHTS", str(tmp_path / "missing.pth")])
    load_model_weights(cfg, bare)
    assert torch.equal(bare.offline_backbone.conv.weight, before)
