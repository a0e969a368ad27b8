"""CLIP language encoder of the meta-architectures (attribute / checkpoint prefix ``lang_encoder``).

The encoder is a :class:`regionclip.clip.TextTransformer`: its parameter names are the top-level
text keys of an OpenAI CLIP checkpoint, so a RegionCLIP checkpoint's ``lang_encoder.*`` entries
load directly. ``encode_text(tokens, only_eot=True)`` returns un-normalised (B, embed_dim)
embeddings pooled at the end-of-text token.
"""
import logging

from torch import nn

from regionclip.clip import TextTransformer, build_text

from .clip_arch import resolve_clip_arch

__all__ = ["build_clip_language_encoder", "freeze"]

logger = logging.getLogger(__name__)


def build_clip_language_encoder(cfg, depth: int = None) -> TextTransformer:
    """Build the CLIP text tower of ``MODEL.CLIP.ARCH``, else sized from ``MODEL.RESNETS.DEPTH``.

    RN50 (50): width 512, 8 heads, embed 1024; RN101 (101): 512/8/512; RN50x4 (200): width 640,
    10 heads, embed 640. Always 12 layers, context 77, vocabulary 49408. Nothing is frozen here
    (see :func:`freeze`).

    Args:
        cfg: detectron2 config.
        depth (int): overrides ``MODEL.RESNETS.DEPTH``.

    Returns:
        TextTransformer: randomly initialised encoder (weights come from the checkpoint).
    """
    arch = getattr(getattr(cfg.MODEL, "CLIP", None), "ARCH", "") if depth is None else ""
    depth = cfg.MODEL.RESNETS.DEPTH if depth is None else depth
    text_cfg = resolve_clip_arch(arch, depth).text
    clip_cfg = getattr(cfg.MODEL, "CLIP", None)
    emb_dim = getattr(clip_cfg, "TEXT_EMB_DIM", None) if clip_cfg is not None else None
    if emb_dim is not None and emb_dim != text_cfg.embed_dim:
        logger.warning("MODEL.CLIP.TEXT_EMB_DIM=%s but the language encoder of "
                       "MODEL.RESNETS.DEPTH=%s outputs %d-d embeddings", emb_dim, depth,
                       text_cfg.embed_dim)
    return build_text(text_cfg)


def freeze(module: nn.Module) -> nn.Module:
    """Set ``requires_grad = False`` on every parameter of ``module`` and put it in eval mode.

    A later ``model.train()`` switches the module back to training mode; callers that need it
    in eval mode during training must call ``.eval()`` again (the module has no dropout or batch
    statistics in the CLIP towers, so this only matters for other modules).

    Args:
        module (nn.Module): module to freeze in place.

    Returns:
        nn.Module: the same module.
    """
    for param in module.parameters():
        param.requires_grad = False
    return module.eval()
