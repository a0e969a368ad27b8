"""The CLIP text tower as its own graph: token ids in, un-normalised text embeddings out.

Input ``input_ids`` (N, 77) int64, the tokenizer's output (:meth:`regionclip.clip.tokenizer.
SimpleTokenizer.token_array`); output ``text_embeddings`` (N, D) float32, pooled at each row's
largest id (the end-of-text token), exactly :meth:`TextTransformer.encode_text`. A vocabulary's
class embedding is the mean over its prompt templates (``RegionCLIP.encode_text``), which a
deployment computes from this graph's outputs.
"""
import torch
from torch import nn

from ..clip.tokenizer import CONTEXT_LENGTH, get_tokenizer
from .detector import save_traced

__all__ = ["TextTower", "export_text_encoder"]


class TextTower(nn.Module):
    """``encode_text`` of a CLIP text tower as ``forward`` (what tracing records)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode_text(input_ids)


def export_text_encoder(rc, path: str, fmt: str) -> str:
    """Write the text tower of ``rc`` (a :class:`RegionCLIP` with text weights) to ``path``."""
    if not rc.text_encoder_loaded:
        raise ValueError(f"MODEL.WEIGHTS '{rc.cfg.MODEL.WEIGHTS}' has no text-encoder weights: "
                         "there is no text tower to export")
    tower = TextTower(rc.model.lang_encoder).eval()
    ids = torch.from_numpy(get_tokenizer().token_array(
        ["a photo of a cat.", "a red traffic light"], CONTEXT_LENGTH)).to(rc.device)
    return save_traced(tower, (ids,), path, fmt, ["input_ids"], ["text_embeddings"],
                       {"input_ids": {0: "num_texts"}, "text_embeddings": {0: "num_texts"}})
