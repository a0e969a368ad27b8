"""Pure-PyTorch CLIP (ResNet image tower, text tower), tokenizer and prompt templates.

Nothing in this package imports detectron2; the detectron2 backbone wrapper builds on
:class:`ModifiedResNet` (pass ``norm_layer=FrozenBatchNorm2d``).
"""
from .model import (
    CLIP,
    PRESETS,
    RESNET_DEPTH_TO_PRESET,
    CLIPConfig,
    TextConfig,
    VisualConfig,
    build_clip,
    build_clip_from_state_dict,
    build_text,
    build_visual,
    get_preset,
    infer_config_from_state_dict,
    infer_text_config,
    infer_visual_config,
    preset_for_depth,
    split_clip_state_dict,
    text_config_for_depth,
)
from .modified_resnet import FEATURE_NAMES, AttentionPool2d, Bottleneck, ModifiedResNet
from .prompts import PROMPT_TEMPLATES, build_prompts, ensemble_text_embeddings, prompt_engineering
from .text_transformer import TextTransformer
from .tokenizer import CONTEXT_LENGTH, SimpleTokenizer, get_tokenizer, tokenize

__all__ = [
    "CLIP", "PRESETS", "RESNET_DEPTH_TO_PRESET", "CLIPConfig", "TextConfig", "VisualConfig",
    "build_clip", "build_clip_from_state_dict", "build_text", "build_visual", "get_preset",
    "infer_config_from_state_dict", "infer_text_config", "infer_visual_config",
    "preset_for_depth", "split_clip_state_dict", "text_config_for_depth",
    "FEATURE_NAMES", "AttentionPool2d", "Bottleneck", "ModifiedResNet", "TextTransformer",
    "PROMPT_TEMPLATES", "build_prompts", "ensemble_text_embeddings", "prompt_engineering",
    "CONTEXT_LENGTH", "SimpleTokenizer", "get_tokenizer", "tokenize",
]
