"""Small CLIPs of the toy world from their files, and prompt-ensembled text embeddings."""
from typing import Callable, Sequence

import torch

from regionclip.checkpoint import read_torch_file
from regionclip.clip import CLIP, ensemble_text_embeddings, tokenize
from regionclip.clip.prompts import encoder_device
from regionclip.modeling.clip_arch import resolve_clip_arch

from .vocabulary import TOY_TEMPLATES, with_article

__all__ = ["PROMPT_MODES", "load_clip", "toy_prompts", "text_embeddings"]

PROMPT_MODES = ("toy", "imagenet", "none")


def load_clip(arch: str, weights: str) -> CLIP:
    """A CLIP of the architecture JSON ``arch`` with the OpenAI-format weights file ``weights``
    (eval mode)."""
    model = CLIP(resolve_clip_arch(arch, 50))
    state = read_torch_file(weights)
    model.load_state_dict({k: v for k, v in state.items() if not isinstance(v, int)})
    return model.eval()


def toy_prompts(name: str) -> list:
    """The toy templates filled with ``name`` and its article."""
    return [t.format(with_article(name)) for t in TOY_TEMPLATES]


@torch.no_grad()
def text_embeddings(encode_text: Callable[[torch.Tensor], torch.Tensor], names: Sequence[str],
                    prompts: str = "toy") -> torch.Tensor:
    """Un-normalised (len(names), D) embeddings of class or concept names.

    The original's recipe (mean of the un-normalised embeddings of one name's prompts) with one of
    three prompt sets: ``"toy"`` (:data:`~.vocabulary.TOY_TEMPLATES`, phrased like the world's
    captions), ``"imagenet"`` (the original's 81 templates, many of whose words the toy text
    tower never saw) or ``"none"`` (the name with its article).

    Args:
        encode_text (callable): (B, L) token ids -> (B, D), e.g. ``CLIP.encode_text``.
        names (sequence[str]): names.
        prompts (str): prompt set.

    Returns:
        Tensor: (len(names), D) float embeddings.
    """
    names = list(names)
    if not names:
        raise ValueError("text_embeddings: empty list of names")
    if prompts == "imagenet":
        return ensemble_text_embeddings(encode_text, names)
    device = encoder_device(encode_text)  # the token ids go where the text tower is
    if prompts == "none":
        return encode_text(tokenize([with_article(n) for n in names]).to(device)).float()
    if prompts != "toy":
        raise ValueError(f"prompts must be one of {PROMPT_MODES}, got {prompts!r}")
    per_name = len(TOY_TEMPLATES)
    tokens = tokenize([p for n in names for p in toy_prompts(n)]).to(device)
    out = torch.cat([encode_text(tokens[i:i + 512]).float() for i in range(0, len(tokens), 512)])
    return out.view(len(names), per_name, -1).mean(dim=1)
