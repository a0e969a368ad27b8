"""CLIP's text tower (causal transformer with end-of-text pooling), written in plain PyTorch.

Parameter names equal the top-level text keys of an OpenAI CLIP checkpoint and of the original
RegionCLIP ``lang_encoder``: ``token_embedding.weight``, ``positional_embedding``,
``transformer.resblocks.{i}.{attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.*, ln_1.*,
mlp.c_fc.*, mlp.c_proj.*, ln_2.*}``, ``ln_final.*``, ``text_projection``.
"""
from collections import OrderedDict

import torch
from torch import nn

__all__ = ["QuickGELU", "LayerNormFp32", "ResidualAttentionBlock", "Transformer", "TextTransformer"]


class QuickGELU(nn.Module):
    """The GELU approximation used by OpenAI CLIP: ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerNormFp32(nn.LayerNorm):
    """LayerNorm evaluated in float32 and cast back to the input dtype (as in CLIP)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``.

    Args:
        width (int): token width.
        heads (int): attention heads.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = LayerNormFp32(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = LayerNormFp32(width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor = None) -> torch.Tensor:
        """Args: x (Tensor): (N, L, width); attn_mask (Tensor): (L, L) additive mask or None."""
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, attn_mask=attn_mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of :class:`ResidualAttentionBlock` stored as ``resblocks``.

    Args:
        width (int): token width.
        layers (int): number of blocks.
        heads (int): attention heads.
    """

    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor = None) -> torch.Tensor:
        """Args: x (Tensor): (N, L, width); attn_mask (Tensor): (L, L) or None."""
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class TextTransformer(nn.Module):
    """CLIP text encoder.

    Args:
        width (int): transformer width.
        heads (int): attention heads.
        layers (int): transformer blocks.
        embed_dim (int): output (joint-space) dimension of ``text_projection``.
        context_length (int): maximum number of tokens (77 for CLIP).
        vocab_size (int): vocabulary size (49408 for CLIP's BPE).
    """

    def __init__(self, width: int = 512, heads: int = 8, layers: int = 12, embed_dim: int = 1024,
                 context_length: int = 77, vocab_size: int = 49408):
        super().__init__()
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width, layers, heads)
        self.ln_final = LayerNormFp32(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        causal = torch.full((context_length, context_length), float("-inf")).triu(1)
        self.register_buffer("attn_mask", causal, persistent=False)
        self.init_text_weights()

    @property
    def text_embed_dim(self) -> int:
        """int: output dimension of :meth:`encode_text`."""
        return self.text_projection.shape[1]

    def init_text_weights(self):
        """CLIP's initialisation of the text tower (irrelevant when weights are loaded)."""
        width, layers = self.transformer.width, self.transformer.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = width ** -0.5 * (2 * layers) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width ** -0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    def encode_text(self, tokens: torch.Tensor, only_eot: bool = True) -> torch.Tensor:
        """Encode token ids.

        Args:
            tokens (LongTensor): (B, L) token ids, ``L <= context_length`` (zero padded, see
                :func:`regionclip.clip.tokenize`).
            only_eot (bool): if True, pool each sequence at its largest token id (the end-of-text
                token 49407, or the last kept token when the EOT was cut) and return (B, embed_dim);
                otherwise project every position and return (B, L, embed_dim).

        Returns:
            Tensor: text embeddings, not normalised.
        """
        if tokens.dim() != 2:
            raise ValueError(f"encode_text expects (batch, length) token ids, "
                             f"got shape {tuple(tokens.shape)}")
        length = tokens.shape[1]
        if length > self.context_length:
            raise ValueError(f"encode_text: {length} tokens exceed the context length "
                             f"{self.context_length}")
        x = self.token_embedding(tokens)
        x = x + self.positional_embedding[:length].to(x.dtype)
        x = self.transformer(x, self.attn_mask[:length, :length].to(x.dtype))
        x = self.ln_final(x)
        if only_eot:
            x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return x @ self.text_projection.to(x.dtype)

    def forward(self, tokens: torch.Tensor, only_eot: bool = True) -> torch.Tensor:
        """Same as :meth:`encode_text`."""
        return self.encode_text(tokens, only_eot)
