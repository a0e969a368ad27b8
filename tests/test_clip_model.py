"""Tests of regionclip.clip's towers: parity with open_clip, config inference, feature access."""
import pytest
import torch
import torch.nn.functional as F
from tiny_clip import calibrate_batchnorm_
from torch import nn

from regionclip.clip import (
    CLIP,
    PRESETS,
    AttentionPool2d,
    CLIPConfig,
    ModifiedResNet,
    TextConfig,
    TextTransformer,
    VisualConfig,
    build_clip,
    build_clip_from_state_dict,
    build_text,
    build_visual,
    infer_config_from_state_dict,
    infer_text_config,
    infer_visual_config,
    preset_for_depth,
    split_clip_state_dict,
    text_config_for_depth,
)

TINY = CLIPConfig(VisualConfig((1, 2, 1, 1), width=16, image_size=64, embed_dim=24, heads=8),
                  TextConfig(width=64, heads=4, layers=2, embed_dim=24, context_length=77,
                             vocab_size=49408))
SOT, EOT = 49406, 49407


def randomize_(module, seed=0):
    """Give norm layers and biases non-trivial values (CLIP's init zeroes bn3 and the biases)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point() or tensor.dim() != 1:
                continue
            if name.endswith("running_var") or name.endswith("weight"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif name.endswith("bias") or name.endswith("running_mean"):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
    return module


def random_tokens(batch, seed=0, context_length=77):
    """Token rows [SOT, ids..., EOT, 0...] of varying length, the last one cut (no EOT)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(batch, context_length, dtype=torch.long)
    for row in range(batch):
        length = context_length if row == batch - 1 else 3 + 7 * row
        tokens[row, :length] = torch.randint(1, SOT, (length,), generator=gen)
        tokens[row, 0] = SOT
        if row != batch - 1:
            tokens[row, length - 1] = EOT
    return tokens


def max_rel_diff(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def open_clip():
    return pytest.importorskip("open_clip")


def _parity(open_clip, name, preset, batch):
    torch.manual_seed(0)
    reference = randomize_(open_clip.create_model(f"{name}-quickgelu", pretrained=None)).eval()
    size = PRESETS[preset].visual.image_size
    calibrate_batchnorm_(reference.visual, size, batch=2)  # or every image embeds alike
    # the same computation as open_clip's, layer by layer (folded norms: tests/test_folding.py)
    ours = build_clip(preset, fold_norms=False).eval()
    reference_sd = reference.state_dict()
    # open_clip's only entry outside the two towers is logit_scale, which CLIP also has.
    assert set(reference_sd) == set(ours.state_dict())
    ours.load_state_dict(reference_sd, strict=True)

    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    tokens = random_tokens(4)
    with torch.no_grad():
        wanted = reference.encode_image(images)
        assert max_rel_diff(wanted[:1], wanted[1:] if batch > 1 else reference.encode_image(
            images.flip(-1))) > 0.05  # the embeddings depend on the image
        assert max_rel_diff(ours.encode_image(images), wanted) <= 1e-5
        assert max_rel_diff(ours.encode_text(tokens), reference.encode_text(tokens)) <= 1e-5
        # The separate towers load the split state dict 1:1 as well.
        visual_sd, text_sd = split_clip_state_dict(reference_sd)
        with torch.device("meta"):  # skip the random init; assign=True materialises the weights
            visual, text = build_visual(preset, fold_norms=False).eval(), build_text(preset).eval()
        visual.load_state_dict(visual_sd, strict=True, assign=True)
        text.load_state_dict(text_sd, strict=True, assign=True)
        text.attn_mask = ours.attn_mask  # non-persistent buffer, not in the state dict
        assert max_rel_diff(visual(images), reference.encode_image(images)) <= 1e-5
        assert max_rel_diff(text.encode_text(tokens), reference.encode_text(tokens)) <= 1e-5
    return reference_sd


def test_parity_with_open_clip_rn50(open_clip):
    reference_sd = _parity(open_clip, "RN50", "RN50", batch=2)
    assert infer_config_from_state_dict(reference_sd) == PRESETS["RN50"]


@pytest.mark.slow  # about 10 s on 2 CPU cores (two 178M-parameter models)
def test_parity_with_open_clip_rn50x4(open_clip):
    reference_sd = _parity(open_clip, "RN50x4", "RN50x4", batch=1)
    assert infer_config_from_state_dict(reference_sd) == PRESETS["RN50x4"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_infer_config_recovers_presets(name):
    with torch.device("meta"):
        state_dict = build_clip(name).state_dict()
    assert infer_config_from_state_dict(state_dict) == PRESETS[name]
    visual_sd, text_sd = split_clip_state_dict(state_dict)
    assert infer_visual_config(visual_sd) == PRESETS[name].visual  # without "visual." prefix
    assert infer_visual_config(state_dict) == PRESETS[name].visual  # with the prefix
    assert infer_text_config(text_sd) == PRESETS[name].text


def test_presets_match_openai_hyper_parameters():
    expected = {  # layers, width, resolution, embed dim, text width (OpenAI's model card table)
        "RN50": ((3, 4, 6, 3), 64, 224, 1024, 512),
        "RN101": ((3, 4, 23, 3), 64, 224, 512, 512),
        "RN50x4": ((4, 6, 10, 6), 80, 288, 640, 640),
        "RN50x16": ((6, 8, 18, 8), 96, 384, 768, 768),
        "RN50x64": ((3, 15, 36, 10), 128, 448, 1024, 1024),
    }
    for name, (layers, width, size, embed, text_width) in expected.items():
        cfg = PRESETS[name]
        assert (cfg.visual.layers, cfg.visual.width, cfg.visual.image_size) == (layers, width, size)
        assert cfg.visual.embed_dim == cfg.text.embed_dim == embed
        assert (cfg.text.width, cfg.text.heads) == (text_width, text_width // 64)
        assert cfg.text.layers == 12
        assert (cfg.text.context_length, cfg.text.vocab_size) == (77, 49408)


def test_depth_flag_mapping():
    assert [preset_for_depth(d) for d in (50, 101, 200)] == ["RN50", "RN101", "RN50x4"]
    assert text_config_for_depth(50) == TextConfig(512, 8, 12, 1024)
    assert text_config_for_depth(101) == TextConfig(512, 8, 12, 512)
    assert text_config_for_depth(200) == TextConfig(640, 10, 12, 640)
    with pytest.raises(ValueError, match="152"):
        preset_for_depth(152)


def test_forward_features_chain_into_forward():
    torch.manual_seed(0)
    model = calibrate_batchnorm_(randomize_(build_visual(TINY)), 64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x, out=("stem", "res2", "res3", "res4", "res5"))
        widths = {"stem": 16, "res2": 64, "res3": 128, "res4": 256, "res5": 512}
        for name, feat in feats.items():
            stride = model.feature_strides[name]
            assert feat.shape == (2, widths[name], 64 // stride, 64 // stride)
            assert model.feature_channels[name] == widths[name]
        assert torch.equal(model.layer1(feats["stem"]), feats["res2"])
        assert torch.equal(model.layer2(feats["res2"]), feats["res3"])
        assert torch.equal(model.layer3(feats["res3"]), feats["res4"])
        assert torch.equal(model.layer4(feats["res4"]), feats["res5"])
        assert torch.allclose(model.attnpool(feats["res5"]), model(x), atol=1e-6)
        only = model.forward_features(x, out=("res3",))
        assert list(only) == ["res3"] and torch.equal(only["res3"], feats["res3"])
    with pytest.raises(ValueError, match="res6"):
        model.forward_features(x, out=("res6",))


def test_module_names_follow_openai():
    model = build_visual(TINY)
    keys = set(model.state_dict())
    for key in ("conv1.weight", "bn3.running_var", "layer1.0.downsample.0.weight",
                "layer2.0.downsample.1.bias", "layer2.1.conv3.weight",
                "attnpool.positional_embedding", "attnpool.q_proj.weight", "attnpool.c_proj.bias"):
        assert key in keys
    assert not any(k.startswith("layer2.1.downsample") for k in keys)  # identity shortcut
    assert model.attnpool.positional_embedding.shape == (2 * 2 + 1, 512)


def test_injected_norm_layer_frozen_bn():
    from detectron2.layers import FrozenBatchNorm2d

    torch.manual_seed(0)
    reference = calibrate_batchnorm_(randomize_(build_visual(TINY)), 64).eval()
    frozen = build_visual(TINY, norm_layer=FrozenBatchNorm2d)
    assert all(not isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert isinstance(getattr(frozen.layer3[0].downsample, "1"), FrozenBatchNorm2d)
    state = {k: v for k, v in reference.state_dict().items() if "num_batches_tracked" not in k}
    frozen.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(frozen(x), reference(x), rtol=1e-5, atol=1e-6)


def _naive_attention_pool(pool, x):
    """CLIP's formulation: full multi-head attention over all HW+1 tokens, keep token 0."""
    tokens = x.flatten(2).permute(2, 0, 1)  # (HW, N, C)
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)
    tokens = tokens + pool.positional_embedding[:, None, :]
    out, _ = F.multi_head_attention_forward(
        query=tokens, key=tokens, value=tokens, embed_dim_to_check=tokens.shape[-1],
        num_heads=pool.num_heads, q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight, in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True, training=False, need_weights=False)
    return out[0]


def test_attention_pool_equals_full_attention():
    torch.manual_seed(0)
    pool = randomize_(AttentionPool2d(spacial_dim=3, embed_dim=32, num_heads=4, output_dim=20))
    x = torch.randn(5, 32, 3, 3)
    with torch.no_grad():
        ours, naive = pool(x), _naive_attention_pool(pool, x)
    assert ours.shape == (5, 20)
    assert torch.allclose(ours, naive, rtol=1e-5, atol=1e-6)
    assert pool(torch.randn(0, 32, 3, 3)).shape == (0, 20)  # an image without any region
    with pytest.raises(ValueError, match=r"3x3.*got 4x3"):
        pool(torch.randn(1, 32, 4, 3))


def test_attention_pool_gradients_equal_full_attention():
    # the pool trains (pretraining): its gradients are those of full attention too, including
    # the key bias's (zero: the softmax ignores it) and the positional embedding's
    torch.manual_seed(0)
    pool = randomize_(AttentionPool2d(spacial_dim=3, embed_dim=32, num_heads=4, output_dim=20))
    x = torch.randn(5, 32, 3, 3, requires_grad=True)
    weights = torch.randn(5, 20)
    grads = []
    for fn in (pool, lambda t: _naive_attention_pool(pool, t)):
        pool.zero_grad()
        x.grad = None
        (fn(x) * weights).sum().backward()
        grads.append([x.grad.clone()] + [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                                         for p in pool.parameters()])
    for ours, naive in zip(*grads):
        torch.testing.assert_close(ours, naive, rtol=1e-4, atol=1e-5)
    assert pool.positional_embedding.grad.abs().sum() > 0


def test_attention_pool_runs_in_full_precision_under_autocast():
    torch.manual_seed(0)
    pool = randomize_(AttentionPool2d(spacial_dim=3, embed_dim=32, num_heads=4, output_dim=20))
    x = torch.randn(5, 32, 3, 3).bfloat16()
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = pool(x)
        full = pool(x.float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, full, rtol=1e-6, atol=1e-6)


def test_text_tower_is_causal_and_pools_at_largest_id():
    torch.manual_seed(0)
    text = randomize_(build_text(TINY)).eval()
    tokens = random_tokens(3)
    with torch.no_grad():
        per_token = text.encode_text(tokens, only_eot=False)
        pooled = text.encode_text(tokens)
        prefix = text.encode_text(tokens[:, :12], only_eot=False)
    assert per_token.shape == (3, 77, 24) and pooled.shape == (3, 24)
    rows = torch.arange(3)
    assert torch.allclose(pooled, per_token[rows, tokens.argmax(dim=-1)], rtol=1e-5, atol=1e-6)
    assert tokens[2].argmax() != 76  # the cut row pools at its largest id, not at the end
    # causal mask; 12 and 77 tokens take different matmul kernels, hence not 1e-5
    assert torch.allclose(prefix, per_token[:, :12], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="78 tokens"):
        text.encode_text(torch.zeros(1, 78, dtype=torch.long))


def test_build_clip_from_openai_style_state_dict():
    torch.manual_seed(0)
    source = randomize_(build_clip(TINY)).eval()
    state = dict(source.state_dict())
    state.update(input_resolution=64, context_length=77, vocab_size=49408)  # OpenAI JIT extras
    loaded = build_clip_from_state_dict(state, text_heads=4).eval()
    assert isinstance(loaded, CLIP) and loaded.config == TINY
    images, tokens = torch.randn(2, 3, 64, 64), random_tokens(3)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), source.encode_image(images))
        assert torch.equal(loaded.encode_text(tokens), source.encode_text(tokens))
        logits_per_image, logits_per_text = loaded(images, tokens)
        image = F.normalize(source.encode_image(images), dim=-1)
        text = F.normalize(source.encode_text(tokens), dim=-1)
        expected = source.logit_scale.exp() * image @ text.t()
    assert torch.allclose(logits_per_image, expected, atol=1e-5)
    assert torch.equal(logits_per_text, logits_per_image.t())


def test_inference_errors_name_the_key():
    with torch.device("meta"):
        visual_sd = build_visual(TINY).state_dict()
    with pytest.raises(KeyError, match="visual"):
        infer_config_from_state_dict(visual_sd)
    broken = {k: v for k, v in visual_sd.items() if k != "attnpool.positional_embedding"}
    with pytest.raises(KeyError, match="attnpool.positional_embedding"):
        infer_visual_config(broken)
    assert infer_visual_config(visual_sd) == TINY.visual
    assert infer_visual_config(visual_sd, heads=2).heads == 2


def test_builders_accept_configs_and_reject_bad_specs():
    assert isinstance(build_visual(TINY.visual), ModifiedResNet)
    text = build_text(TINY.text)
    assert isinstance(text, TextTransformer) and text.text_embed_dim == 24
    with pytest.raises(KeyError, match="RN18"):
        build_visual("RN18")
    with pytest.raises(TypeError):
        build_visual(TINY.text)


def test_the_tests_tiny_clip_sees_its_input(tmp_path):
    """tests/tiny_clip.py's model (used by most end-to-end tests) must map different images to
    clearly different embeddings, or comparisons of embeddings could not detect a wrong input."""
    from tiny_clip import TINY, write_tiny_clip

    from regionclip.clip import build_clip_from_state_dict

    _, weights = write_tiny_clip(str(tmp_path))
    clip = build_clip_from_state_dict(torch.load(weights), text_heads=TINY.text.heads,
                                      visual_heads=TINY.visual.heads).eval()
    images = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        emb = F.normalize(clip.encode_image(images), dim=1)
    cosines = (emb @ emb.t())[~torch.eye(4, dtype=torch.bool)]
    assert cosines.max() < 0.99  # was 1 - 1e-11 with arbitrary BatchNorm statistics
