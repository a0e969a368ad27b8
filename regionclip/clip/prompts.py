"""Prompt templates and the original RegionCLIP's prompt ensembling of concept embeddings.

``PROMPT_TEMPLATES`` is data: the 81 templates returned by ``get_prompt_templates()`` in
microsoft/RegionCLIP ``detectron2/data/datasets/clip_prompt_utils.py`` (commit ``ca728f1``,
unchanged at ``4b8513b``; MIT licence), in the same order: ``'{}.'`` followed by the 80
ImageNet-style CLIP templates. The order matters for bit-exact embeddings (float summation order).
"""
import logging
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .tokenizer import CONTEXT_LENGTH, get_tokenizer

__all__ = ["PROMPT_TEMPLATES", "prompt_engineering", "build_prompts", "check_templates",
           "ensemble_text_embeddings", "encoder_device"]

logger = logging.getLogger(__name__)

PROMPT_TEMPLATES = (
    "{}.",
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)


def prompt_engineering(name: str, template: str = "{}") -> str:
    """Insert a concept name into a template the way the original does.

    Args:
        name (str): concept name; commas are removed and ``+`` becomes a space.
        template (str): template containing ``{}``.

    Returns:
        str: the prompt.
    """
    return template.replace("{}", name.replace(",", "").replace("+", " "))


def build_prompts(name: str, templates: Sequence[str] = PROMPT_TEMPLATES) -> List[str]:
    """The prompts of one concept (the original's 81 by default), in template order.

    Args:
        name (str): concept name.
        templates (sequence[str]): templates containing ``{}``.

    Returns:
        list[str]: ``prompt_engineering(name, t)`` for every template ``t``.
    """
    return [prompt_engineering(name, template) for template in templates]


def check_templates(templates: Sequence[str]) -> Tuple[str, ...]:
    """Validate user prompt templates: a non-empty sequence of strings that each contain ``{}``.

    Raises:
        ValueError: naming the offending template.
    """
    if isinstance(templates, str):
        raise ValueError(f"prompt templates must be a sequence of strings, got one string "
                         f"{templates!r}")
    templates = tuple(templates)
    if not templates:
        raise ValueError("the list of prompt templates is empty")
    for i, template in enumerate(templates):
        if not isinstance(template, str) or "{}" not in template:
            raise ValueError(f"prompt template {i} ({template!r}) must be a string containing "
                             "'{}' where the class name goes")
    return templates


_WARNED_LONG = set()  # names already warned about (once per process)


def warn_long_names(names: Sequence[str], templates: Sequence[str], tokenizer,
                    context_length: int = CONTEXT_LENGTH) -> List[str]:
    """Warn (once per name and process) about names whose prompts exceed ``context_length``
    tokens and are therefore cut, as the original cut them.

    Args:
        names (sequence[str]): the names.
        templates (sequence[str]): the prompt templates they go into (``["{}"]``: none).
        tokenizer: with ``encode(text) -> ids`` (otherwise nothing is checked).
        context_length (int): token row length, start and end tokens included.

    Returns:
        list[str]: the names newly warned about.
    """
    encode = getattr(tokenizer, "encode", None)
    if encode is None:
        return []
    extra = max(len(encode(t.replace("{}", ""))) for t in templates) + 2  # SOT + EOT
    long = [n for n in dict.fromkeys(names)
            if n not in _WARNED_LONG and len(encode(n)) + extra > context_length]
    if long:
        _WARNED_LONG.update(long)
        logger.warning("%d name(s) have prompts longer than %d tokens and are cut to that length "
                       "(the end of the name is lost): %s", len(long), context_length,
                       [n if len(n) <= 60 else n[:57] + "..." for n in long[:5]])
    return long


def encoder_device(text_encoder) -> torch.device:
    """Where token ids for ``text_encoder`` go: the device of the module it is (or is a method
    of); the CPU for a plain function without parameters."""
    module = getattr(text_encoder, "__self__", text_encoder)
    if isinstance(module, torch.nn.Module):
        for tensor in module.parameters():
            return tensor.device
    return torch.device("cpu")


def ensemble_text_embeddings(text_encoder: Callable[[torch.Tensor], torch.Tensor],
                             names: Sequence[str], tokenizer=None, batch_size: int = 256,
                             progress: bool = False, prompt_ensemble: bool = True,
                             context_length: int = CONTEXT_LENGTH,
                             device: Optional[torch.device] = None,
                             truncate: bool = True,
                             templates: Optional[Sequence[str]] = None) -> torch.Tensor:
    """Concept embeddings with the original RegionCLIP recipe.

    With ``prompt_ensemble`` each name becomes 81 prompts; every prompt is tokenized (truncated to
    ``context_length`` like the original), encoded, and the name's embedding is the arithmetic mean
    of its 81 **un-normalised** embeddings (no normalisation before or after averaging). Without
    it, each name is encoded as given.

    Args:
        text_encoder (callable): maps (B, context_length) token ids to (B, D) embeddings, e.g.
            ``TextTransformer.encode_text``; called under ``torch.no_grad()``.
        names (Sequence[str]): concept names.
        tokenizer: object with ``tokenize(texts, context_length)`` (default: the shared
            :class:`~regionclip.clip.tokenizer.SimpleTokenizer`).
        batch_size (int): prompts encoded per call.
        progress (bool): show a tqdm progress bar over the names.
        prompt_ensemble (bool): average over the 81 templates (True) or use the raw names.
        context_length (int): token row length.
        device (torch.device): where the token ids go; default: the device of the module that
            ``text_encoder`` is a method of (or the module itself), else CPU.
        truncate (bool): cut over-long prompts to ``context_length`` like the original (True), or
            raise a ValueError naming the prompt (False).
        templates (sequence[str]): prompt templates with ``{}`` for the name, used instead of
            the original's 81 when ``prompt_ensemble`` (default: the 81).

    Returns:
        Tensor: (len(names), D) float embeddings, not normalised, on the encoder's output device.
    """
    if isinstance(names, str):
        raise TypeError("ensemble_text_embeddings expects a sequence of names, got one string")
    names = list(names)
    if not names:
        raise ValueError("ensemble_text_embeddings: the list of concept names is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    tokenizer = tokenizer or get_tokenizer()
    device = device if device is not None else encoder_device(text_encoder)
    templates = PROMPT_TEMPLATES if templates is None else check_templates(templates)
    per_name = len(templates) if prompt_ensemble else 1
    if truncate:
        warn_long_names(names, templates if prompt_ensemble else ["{}"], tokenizer, context_length)
    names_per_batch = max(1, batch_size // per_name)
    steps = range(0, len(names), names_per_batch)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, total=len(steps), unit="batch", desc="concept embeddings")
    logger.info("Encoding %d concept names (%d prompt(s) each)", len(names), per_name)
    outputs = []
    with torch.no_grad():
        for start in steps:
            chunk = names[start:start + names_per_batch]
            texts = [p for n in chunk for p in build_prompts(n, templates)] if prompt_ensemble \
                else chunk
            embeddings = text_encoder(tokenizer.tokenize(texts, context_length,
                                                         truncate=truncate).to(device))
            if embeddings.dim() != 2 or embeddings.shape[0] != len(texts):
                raise ValueError(f"text_encoder returned shape {tuple(embeddings.shape)} for "
                                 f"{len(texts)} prompts; expected ({len(texts)}, D)")
            outputs.append(embeddings.float().view(len(chunk), per_name, -1).mean(dim=1))
    return torch.cat(outputs)
