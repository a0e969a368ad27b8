"""CLIP (ResNet image tower + text tower): configurations, presets, builders, checkpoint inference.

State-dict keys of :class:`CLIP` equal OpenAI CLIP's: ``visual.*`` for the image tower, the text
tower's keys at the top level (``token_embedding.weight``, ``positional_embedding``,
``transformer.*``, ``ln_final.*``, ``text_projection``) and ``logit_scale``.

Presets carry OpenAI's hyper-parameters. The original RegionCLIP selects the CLIP model with
``MODEL.RESNETS.DEPTH``: 50 -> RN50, 101 -> RN101, 200 -> RN50x4 (see :func:`preset_for_depth`).
"""
import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .modified_resnet import ModifiedResNet
from .text_transformer import TextTransformer

__all__ = [
    "VisualConfig", "TextConfig", "CLIPConfig", "PRESETS", "RESNET_DEPTH_TO_PRESET", "CLIP",
    "get_preset", "preset_for_depth", "text_config_for_depth", "build_visual", "build_text",
    "build_clip", "infer_visual_config", "infer_text_config", "infer_config_from_state_dict",
    "build_clip_from_state_dict", "split_clip_state_dict", "OPENAI_METADATA_KEYS",
]

# Integer entries (not tensors of the model) stored in OpenAI's released JIT checkpoints.
OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
TEXT_KEY_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.",
                     "text_projection")


@dataclass(frozen=True)
class VisualConfig:
    """Hyper-parameters of :class:`ModifiedResNet`.

    Attributes:
        layers (tuple[int, int, int, int]): blocks per stage (res2 .. res5).
        width (int): stem width ``w`` (stage outputs 4w, 8w, 16w, 32w).
        image_size (int): input resolution of the attention pool (grid = image_size / 32).
        embed_dim (int): pooled output dimension.
        heads (int): attention-pool heads.
    """

    layers: Tuple[int, int, int, int]
    width: int
    image_size: int
    embed_dim: int
    heads: int


@dataclass(frozen=True)
class TextConfig:
    """Hyper-parameters of :class:`TextTransformer` (fields named like its arguments)."""

    width: int
    heads: int
    layers: int
    embed_dim: int
    context_length: int = 77
    vocab_size: int = 49408


@dataclass(frozen=True)
class CLIPConfig:
    """Image and text tower configurations of a CLIP model (same ``embed_dim`` for both)."""

    visual: VisualConfig
    text: TextConfig

    @property
    def embed_dim(self) -> int:
        """int: joint embedding dimension."""
        return self.visual.embed_dim


def _preset(layers, width, image_size, embed_dim, text_width):
    return CLIPConfig(
        visual=VisualConfig(tuple(layers), width, image_size, embed_dim, width * 32 // 64),
        text=TextConfig(text_width, text_width // 64, 12, embed_dim))


# OpenAI CLIP ResNet models (hyper-parameters of the released checkpoints).
PRESETS: Dict[str, CLIPConfig] = {
    "RN50": _preset((3, 4, 6, 3), 64, 224, 1024, 512),
    "RN101": _preset((3, 4, 23, 3), 64, 224, 512, 512),
    "RN50x4": _preset((4, 6, 10, 6), 80, 288, 640, 640),
    "RN50x16": _preset((6, 8, 18, 8), 96, 384, 768, 768),
    "RN50x64": _preset((3, 15, 36, 10), 128, 448, 1024, 1024),
}

# The original's MODEL.RESNETS.DEPTH flag (200 only means "CLIP RN50x4").
RESNET_DEPTH_TO_PRESET: Dict[int, str] = {50: "RN50", 101: "RN101", 200: "RN50x4"}


def get_preset(name: str) -> CLIPConfig:
    """Look up a preset by name.

    Args:
        name (str): one of ``RN50, RN101, RN50x4, RN50x16, RN50x64``.

    Returns:
        CLIPConfig: the preset.
    """
    if name not in PRESETS:
        raise KeyError(f"Unknown CLIP preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


def preset_for_depth(depth: int) -> str:
    """Map the original's ``MODEL.RESNETS.DEPTH`` to a preset name (50, 101, 200 -> RN50x4).

    Args:
        depth (int): value of ``MODEL.RESNETS.DEPTH``.

    Returns:
        str: preset name.
    """
    if int(depth) not in RESNET_DEPTH_TO_PRESET:
        raise ValueError(f"MODEL.RESNETS.DEPTH={depth} has no CLIP ResNet; expected one of "
                         f"{sorted(RESNET_DEPTH_TO_PRESET)} (200 means RN50x4)")
    return RESNET_DEPTH_TO_PRESET[int(depth)]


def text_config_for_depth(depth: int) -> TextConfig:
    """Text tower sizes the original derives from the student ``MODEL.RESNETS.DEPTH``.

    Args:
        depth (int): 50 (width 512, 8 heads, embed 1024), 101 (512/8/512) or 200 (640/10/640).

    Returns:
        TextConfig: 12 layers, context 77, vocabulary 49408.
    """
    return get_preset(preset_for_depth(depth)).text


def _as_config(spec: Union[str, CLIPConfig, VisualConfig, TextConfig], part: str):
    if isinstance(spec, str):
        spec = get_preset(spec)
    if isinstance(spec, CLIPConfig):
        return getattr(spec, part) if part != "clip" else spec
    expected = {"visual": VisualConfig, "text": TextConfig, "clip": CLIPConfig}[part]
    if not isinstance(spec, expected):
        raise TypeError(f"Expected a preset name, CLIPConfig or {expected.__name__}, "
                        f"got {type(spec).__name__}")
    return spec


def build_visual(spec: Union[str, CLIPConfig, VisualConfig],
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 fold_norms: bool = True) -> ModifiedResNet:
    """Build the image tower.

    Args:
        spec: preset name, :class:`CLIPConfig` or :class:`VisualConfig`.
        norm_layer (callable): ``norm_layer(num_channels)`` for every normalisation layer.
        fold_norms (bool): see :class:`ModifiedResNet` (inference folds frozen norms into the
            convolutions; False computes every layer as OpenAI's code does).

    Returns:
        ModifiedResNet: randomly initialised tower.
    """
    cfg = _as_config(spec, "visual")
    return ModifiedResNet(cfg.layers, cfg.width, cfg.image_size, cfg.embed_dim, cfg.heads,
                          norm_layer=norm_layer, fold_norms=fold_norms)


def build_text(spec: Union[str, CLIPConfig, TextConfig]) -> TextTransformer:
    """Build the text tower.

    Args:
        spec: preset name, :class:`CLIPConfig` or :class:`TextConfig`.

    Returns:
        TextTransformer: randomly initialised tower.
    """
    return TextTransformer(**dataclasses.asdict(_as_config(spec, "text")))


class CLIP(TextTransformer):
    """CLIP with a ResNet image tower.

    The text tower's modules sit at the top level (this class extends :class:`TextTransformer`)
    so that the state-dict keys equal OpenAI's.

    Args:
        config (CLIPConfig): tower hyper-parameters.
        norm_layer (callable): normalisation layer of the image tower.
        fold_norms (bool): see :func:`build_visual`.
    """

    def __init__(self, config: CLIPConfig, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 fold_norms: bool = True):
        if config.visual.embed_dim != config.text.embed_dim:
            raise ValueError(f"CLIP towers disagree on embed_dim: visual "
                             f"{config.visual.embed_dim}, text {config.text.embed_dim}")
        super().__init__(**dataclasses.asdict(config.text))
        self.config = config
        self.visual = build_visual(config.visual, norm_layer, fold_norms)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Encode images.

        Args:
            images (Tensor): (N, 3, S, S) normalised images.

        Returns:
            Tensor: (N, embed_dim) embeddings, not normalised.
        """
        return self.visual(images)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        """Image-text logits.

        Args:
            images (Tensor): (N, 3, S, S) normalised images.
            tokens (LongTensor): (M, 77) token ids.

        Returns:
            tuple[Tensor, Tensor]: logits per image (N, M) and per text (M, N).
        """
        image_features = F.normalize(self.encode_image(images), dim=-1)
        text_features = F.normalize(self.encode_text(tokens), dim=-1)
        logits = self.logit_scale.exp() * image_features @ text_features.t()
        return logits, logits.t()


def build_clip(spec: Union[str, CLIPConfig],
               norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
               fold_norms: bool = True) -> CLIP:
    """Build a randomly initialised :class:`CLIP` from a preset name or :class:`CLIPConfig`
    (``fold_norms``: see :func:`build_visual`)."""
    return CLIP(_as_config(spec, "clip"), norm_layer, fold_norms)


def _require(state_dict: Mapping, key: str, what: str):
    if key not in state_dict:
        raise KeyError(f"Cannot infer the {what} configuration: state dict has no key {key!r} "
                       f"(found e.g. {list(state_dict)[:5]})")
    return state_dict[key]


def _count_indices(state_dict: Mapping, pattern: str) -> int:
    indices = {int(m.group(1)) for m in (re.match(pattern, k) for k in state_dict) if m}
    if indices and indices != set(range(len(indices))):
        raise ValueError(f"Non-contiguous block indices {sorted(indices)} for pattern {pattern!r}")
    return len(indices)


def split_clip_state_dict(state_dict: Mapping[str, torch.Tensor]):
    """Split a full CLIP state dict into its towers.

    Args:
        state_dict (Mapping): OpenAI/open_clip-style keys.

    Returns:
        tuple[dict, dict]: image-tower entries without the ``visual.`` prefix, and text-tower
        entries (top-level text keys). ``logit_scale`` and OpenAI's integer metadata are left out.
    """
    visual = {k[len("visual."):]: v for k, v in state_dict.items() if k.startswith("visual.")}
    text = {k: v for k, v in state_dict.items() if k.startswith(TEXT_KEY_PREFIXES)}
    return visual, text


def infer_visual_config(state_dict: Mapping[str, torch.Tensor],
                        heads: Optional[int] = None) -> VisualConfig:
    """Infer :class:`VisualConfig` from tensor shapes.

    Args:
        state_dict (Mapping): image-tower weights, keys with or without the ``visual.`` prefix.
        heads (int): attention-pool heads; default ``32 * width // 64`` (OpenAI's convention; the
            head count is not recoverable from shapes).

    Returns:
        VisualConfig: layers from ``layer{k}.{i}.`` prefixes, width from ``conv1`` (w/2 filters),
        image size from the attention-pool positional embedding, embed dim from ``c_proj``.
    """
    if any(k.startswith("visual.") for k in state_dict):
        state_dict = split_clip_state_dict(state_dict)[0]
    width = _require(state_dict, "conv1.weight", "visual").shape[0] * 2
    layers = tuple(_count_indices(state_dict, rf"layer{k}\.(\d+)\.") for k in range(1, 5))
    if 0 in layers:
        raise ValueError(f"Not a ModifiedResNet state dict: stage block counts {layers}")
    positions = _require(state_dict, "attnpool.positional_embedding", "visual").shape[0] - 1
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise ValueError(f"attnpool.positional_embedding has {positions}+1 rows, not a square grid")
    embed_dim = _require(state_dict, "attnpool.c_proj.weight", "visual").shape[0]
    return VisualConfig(layers, width, grid * 32, embed_dim, heads or width * 32 // 64)


def infer_text_config(state_dict: Mapping[str, torch.Tensor],
                      heads: Optional[int] = None) -> TextConfig:
    """Infer :class:`TextConfig` from tensor shapes (top-level OpenAI text keys).

    Args:
        state_dict (Mapping): text-tower weights (other keys are ignored).
        heads (int): attention heads; default ``width // 64`` (OpenAI's convention; head count is
            not recoverable from shapes).

    Returns:
        TextConfig: the configuration.
    """
    vocab_size, width = _require(state_dict, "token_embedding.weight", "text").shape
    context_length = _require(state_dict, "positional_embedding", "text").shape[0]
    embed_dim = _require(state_dict, "text_projection", "text").shape[1]
    layers = _count_indices(state_dict, r"transformer\.resblocks\.(\d+)\.")
    return TextConfig(width, heads or width // 64, layers, embed_dim, context_length, vocab_size)


def infer_config_from_state_dict(state_dict: Mapping[str, torch.Tensor],
                                 text_heads: Optional[int] = None,
                                 visual_heads: Optional[int] = None) -> CLIPConfig:
    """Infer a full :class:`CLIPConfig` from an OpenAI/open_clip-style CLIP state dict.

    Args:
        state_dict (Mapping): keys ``visual.*`` and top-level text keys.
        text_heads (int): see :func:`infer_text_config`.
        visual_heads (int): see :func:`infer_visual_config`.

    Returns:
        CLIPConfig: the configuration.
    """
    if not any(k.startswith("visual.") for k in state_dict):
        raise KeyError("infer_config_from_state_dict needs a full CLIP state dict with 'visual.*' "
                       "keys; use infer_visual_config / infer_text_config for a single tower")
    return CLIPConfig(infer_visual_config(state_dict, visual_heads),
                      infer_text_config(state_dict, text_heads))


def build_clip_from_state_dict(state_dict: Mapping[str, torch.Tensor],
                               norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                               text_heads: Optional[int] = None,
                               visual_heads: Optional[int] = None) -> CLIP:
    """Build :class:`CLIP` with the architecture inferred from ``state_dict`` and load it strictly.

    Args:
        state_dict (Mapping): full CLIP state dict; OpenAI's integer metadata entries
            (``input_resolution``, ``context_length``, ``vocab_size``) are dropped.
        norm_layer (callable): normalisation layer of the image tower.
        text_heads (int): see :func:`infer_text_config`.
        visual_heads (int): see :func:`infer_visual_config`.

    Returns:
        CLIP: the model with the weights loaded (float32).
    """
    model = CLIP(infer_config_from_state_dict(state_dict, text_heads, visual_heads), norm_layer)
    weights = {k: v for k, v in state_dict.items() if k not in OPENAI_METADATA_KEYS}
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in weights.items()})
    return model
