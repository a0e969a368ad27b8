"""Frozen norms folded into the convolutions at inference (regionclip/clip/folding.py)."""
import copy

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from tiny_clip import calibrate_batchnorm_
from torch import nn

import regionclip.clip.folding as folding
from regionclip.clip import ModifiedResNet


def _tower(norm_layer=FrozenBatchNorm2d, seed=0, fold_norms=True):
    """A tiny tower with non-trivial norm gains, offsets and statistics (unit-scale signal)."""
    torch.manual_seed(seed)
    tower = ModifiedResNet((1, 2, 1, 1), width=16, image_size=64, output_dim=24, heads=2,
                           norm_layer=norm_layer, fold_norms=fold_norms)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in tower.modules():
            if hasattr(m, "running_var"):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
    return calibrate_batchnorm_(tower, 64, seed=seed + 1).eval()


def _unfolded(tower):
    plain = copy.deepcopy(tower)
    for m in plain.modules():
        if hasattr(m, "fold_norms"):
            m.fold_norms = False
    return plain


def _images(n=3, seed=2):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_folded_inference_equals_the_layers_up_to_rounding():
    tower = _tower()
    plain = _unfolded(tower)
    images = _images()
    with torch.no_grad():
        folded, wanted = tower(images), plain(images)
        truth = plain.double()(images.double())
        feats = tower.forward_features(images, ("stem", "res2", "res3", "res4", "res5"))
        plain_feats = _unfolded(tower).forward_features(images, tuple(feats))
    assert _rel(wanted, folded) > 0  # the folded path ran (it rounds differently)
    assert _rel(folded, wanted) < 1e-5
    # as close to the float64 result as the unfolded float32 computation (rounding, no bias)
    assert _rel(folded.double(), truth) < 3 * _rel(wanted.double(), truth) + 1e-6
    for name, x in feats.items():
        assert x.is_contiguous(memory_format=torch.channels_last), name
        assert _rel(x, plain_feats[name]) < 1e-5, name
    # the embeddings tell images apart far above that tolerance
    assert _rel(wanted[0], wanted[1]) > 0.05


@pytest.mark.parametrize("wrong", ["no_eps", "no_mean", "wrong_axis"])
def test_the_comparison_detects_a_wrong_fold(monkeypatch, wrong):
    tower = _tower()
    plain = _unfolded(tower)
    right = folding.folded_weights

    def wrong_fold(conv, norm, *args):
        weight, bias = right(conv, norm, *args)
        scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
        if wrong == "no_eps":  # eps 1e-5 left out
            factor = torch.rsqrt(norm.running_var) / torch.rsqrt(norm.running_var + norm.eps)
            return weight * factor.view(-1, 1, 1, 1), bias
        if wrong == "no_mean":  # the running mean not subtracted
            return weight, bias + norm.running_mean * scale
        return weight * scale.flip(0).view(-1, 1, 1, 1) / scale.view(-1, 1, 1, 1), bias

    monkeypatch.setattr(folding, "folded_weights", wrong_fold)
    with torch.no_grad():
        assert _rel(tower(_images()), plain(_images())) > 1e-5


def test_no_folding_when_gradients_are_recorded_or_layers_have_hooks():
    tower = _tower()
    plain = _unfolded(tower)
    images = _images()
    assert torch.equal(tower(images), plain(images))  # grad mode: the layers as they are
    with torch.no_grad():
        assert not torch.equal(tower(images), plain(images))
        seen = []
        handle = tower.layer3[0].bn2.register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            hooked = tower(images)
        finally:
            handle.remove()
    assert len(seen) == 1  # a hooked layer runs as it is: its hook sees it
    assert _rel(hooked, plain(images).detach()) < 1e-5


def test_torch_batchnorm_folds_only_in_eval_mode():
    tower = _tower(norm_layer=nn.BatchNorm2d)
    assert not folding.can_fold([tower.conv1], [tower.bn1])  # gradients recorded
    with torch.no_grad():
        assert folding.can_fold([tower.conv1], [tower.bn1])
        tower.train()  # batch statistics, running statistics updated: never folded
        assert not folding.can_fold([tower.conv1], [tower.bn1])
        before = tower.bn1.running_mean.clone()
        tower(_images())
        assert not torch.equal(before, tower.bn1.running_mean)
    assert not folding.can_fold([tower.conv1], [nn.GroupNorm(2, 16)])


def test_state_dict_is_untouched_and_new_weights_are_used():
    tower = _tower()
    keys = list(tower.state_dict())
    state = {k: v.clone() for k, v in tower.state_dict().items()}
    images = _images()
    with torch.no_grad():
        first = tower(images)
    assert list(tower.state_dict()) == keys
    assert all(torch.equal(v, state[k]) for k, v in tower.state_dict().items())
    other = _tower(seed=5)
    tower.load_state_dict(other.state_dict())  # nothing cached: the next call uses these
    with torch.no_grad():
        second, wanted = tower(images), _unfolded(other)(images)
    assert _rel(second, wanted) < 1e-5 and _rel(first, wanted) > 0.05
    with torch.no_grad():  # an in-place change of one statistic is seen too
        tower.layer2[1].bn2.running_var.mul_(3.0)
        other.layer2[1].bn2.running_var.mul_(3.0)
        third, wanted = tower(images), _unfolded(other)(images)
    assert _rel(third, wanted) < 1e-5 and _rel(third, second) > 1e-3


def test_bfloat16_autocast_folded_stays_close():
    tower = _tower()
    plain = _unfolded(tower)
    images = _images()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        folded, wanted = tower(images), plain(images)
    assert folded.dtype == torch.float32  # the attention pool runs in full precision
    cos = nn.functional.cosine_similarity(folded, wanted.float(), dim=1)
    assert cos.min() > 0.995, cos


def test_config_switch_turns_folding_off():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_backbone

    from regionclip.config import add_regionclip_config

    def blocks(fold):
        cfg = get_cfg()
        add_regionclip_config(cfg)
        cfg.merge_from_list(["MODEL.BACKBONE.NAME", "build_clip_resnet_backbone",
                             "MODEL.CLIP.INFERENCE_FOLD_BN", str(fold)])
        backbone = build_backbone(cfg)
        return [m.fold_norms for m in backbone.modules() if hasattr(m, "fold_norms")]

    on, off = blocks(True), blocks(False)
    assert len(on) > 10 and all(on) and not any(off)
