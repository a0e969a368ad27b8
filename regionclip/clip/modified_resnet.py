"""CLIP's "modified ResNet" image tower, written in plain PyTorch.

Module and parameter names follow OpenAI CLIP's visual tower, so the ``visual.*`` entries of an
OpenAI / open_clip / RegionCLIP checkpoint load 1:1 (after removing the ``visual.`` prefix):

* stem: ``conv1, bn1, conv2, bn2, conv3, bn3, avgpool`` (three 3x3 convs, then a 2x2 average pool);
* stages ``layer1 .. layer4`` of :class:`Bottleneck` blocks (``conv1..3``, ``bn1..3``, and
  ``downsample.0`` (1x1 conv) / ``downsample.1`` (norm) when the shortcut needs a projection);
* ``attnpool`` (:class:`AttentionPool2d`): ``positional_embedding``, ``q_proj``, ``k_proj``,
  ``v_proj``, ``c_proj``.

Feature names used by :meth:`ModifiedResNet.forward_features` follow detectron2: ``stem`` (stride
4), ``res2`` = ``layer1`` (stride 4), ``res3`` = ``layer2`` (8), ``res4`` = ``layer3`` (16),
``res5`` = ``layer4`` (32).
"""
from collections import OrderedDict
from typing import Callable, Dict, Iterable, Sequence

import torch
from torch import nn

from .folding import can_fold, conv_norm, fast_layout

__all__ = ["AttentionPool2d", "Bottleneck", "ModifiedResNet", "FEATURE_NAMES"]

FEATURE_NAMES = ("stem", "res2", "res3", "res4", "res5")

NormLayer = Callable[[int], nn.Module]


class Bottleneck(nn.Module):
    """Anti-aliased ResNet bottleneck (expansion 4) of CLIP.

    All convolutions have stride 1; a stride > 1 is implemented by an average pool placed after the
    3x3 conv (main branch) and before the 1x1 projection (shortcut).

    Args:
        in_channels (int): input channels.
        planes (int): bottleneck width; the block outputs ``4 * planes`` channels.
        stride (int): spatial down-sampling factor (1 or 2).
        norm_layer (callable): ``norm_layer(num_channels)`` builds each normalisation layer.
        fold_norms (bool): when no gradient is recorded and the norms are frozen, run each
            convolution with its norm folded in (:mod:`.folding`; same result up to rounding).
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1,
                 norm_layer: NormLayer = nn.BatchNorm2d, fold_norms: bool = True):
        super().__init__()
        self.fold_norms = fold_norms
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = norm_layer(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.stride = stride
        self.downsample = None
        if stride > 1 or in_channels != out_channels:
            # Child "-1" has no parameters, so the keys are downsample.0.* and downsample.1.*.
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride) if stride > 1 else nn.Identity()),
                ("0", nn.Conv2d(in_channels, out_channels, 1, bias=False)),
                ("1", norm_layer(out_channels)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (Tensor): (N, C, H, W). Returns: Tensor (N, 4*planes, H/stride, W/stride)."""
        if self.fold_norms and can_fold(self._convs(), self._norms()):
            return self._forward_folded(x)
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(self.avgpool(y)))
        return self.relu(y + shortcut)

    def _convs(self):
        convs = [self.conv1, self.conv2, self.conv3]
        return convs if self.downsample is None else convs + [self.downsample[1]]

    def _norms(self):
        norms = [self.bn1, self.bn2, self.bn3]
        return norms if self.downsample is None else norms + [self.downsample[2]]

    def _forward_folded(self, x: torch.Tensor) -> torch.Tensor:
        # the main branch first: its intermediates are freed before the shortcut is computed
        x = fast_layout(x)
        y = conv_norm(x, self.conv1, self.bn1).relu_()
        y = conv_norm(y, self.conv2, self.bn2).relu_()
        y = conv_norm(self.avgpool(y), self.conv3, self.bn3)
        if self.downsample is None:
            return y.add_(x).relu_()
        pool, conv, norm = self.downsample
        return y.add_(conv_norm(pool(x), conv, norm)).relu_()


class AttentionPool2d(nn.Module):
    """CLIP's attention pooling: one attention query from the spatial mean token.

    The mean of the ``spacial_dim x spacial_dim`` feature map is prepended as an extra token, a
    learned positional embedding is added to all tokens, and multi-head attention with separate
    q/k/v projections is evaluated; the output of the mean token, projected by ``c_proj``, is the
    pooled embedding. Only the mean token's query is computed (the other tokens' outputs are
    discarded by CLIP anyway), and its attention is evaluated without the keys and values of all
    tokens (:meth:`_pool`): the same result up to float rounding, with 2-3% of full attention's
    operations per region. It always runs in the dtype of its weights (float32 under autocast).

    Args:
        spacial_dim (int): side of the square input feature map (input resolution / 32).
        embed_dim (int): input channels.
        num_heads (int): attention heads (``embed_dim`` must be divisible by it).
        output_dim (int): output embedding size (``embed_dim`` when None).
    """

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int = None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"AttentionPool2d: embed_dim {embed_dim} is not divisible by "
                             f"num_heads {num_heads}")
        self.spacial_dim = spacial_dim
        self.num_heads = num_heads
        self.positional_embedding = nn.Parameter(
            torch.randn(spacial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool a feature map.

        Args:
            x (Tensor): (N, C, spacial_dim, spacial_dim) features.

        Returns:
            Tensor: (N, output_dim) pooled embeddings, in the dtype of the projection weights
            (float32 under autocast: this small part always runs in full precision).
        """
        n, c, h, w = x.shape
        if (h, w) != (self.spacial_dim, self.spacial_dim):
            raise ValueError(
                f"AttentionPool2d expects a {self.spacial_dim}x{self.spacial_dim} feature map (its "
                f"positional embedding has {self.spacial_dim}x{self.spacial_dim}+1 entries), got "
                f"{h}x{w}")
        with torch.autocast(x.device.type, enabled=False):
            return self._pool(x.to(self.q_proj.weight.dtype).flatten(2))

    def _pool(self, feats: torch.Tensor) -> torch.Tensor:
        """The attention of the mean token, without the keys and values of all tokens.

        ``feats`` (N, C, L) are the L spatial tokens f_j; the tokens are t_0 = mean_j f_j + p_0
        and t_j = f_j + p_j (p: positional embedding), so each key (value) is the projection of
        f_j without bias plus the key (value) k_j = Wk p_j + bk of position j. Per head h, with
        the scaled query q_h and the attention a_hj = softmax_j(q_h . (Wk_h f_j) + q_h . k_hj):

        * q_h . (Wk_h f_j) = (Wk_h^T q_h) . f_j: one C-vector per region and head instead of
          keys of all tokens (the score of t_0 is the mean of the spatial ones);
        * the output sum_j a_hj (Wv_h f_j + v_hj) = Wv_h (sum_j w_hj f_j) + sum_j a_hj v_hj with
          w_hj = a_hj + a_h0 / L: one mixed C-vector per region and head instead of values.

        The keys and values of the positions are computed once per call, not per region.
        """
        n, c, length = feats.shape
        heads, head_dim = self.num_heads, c // self.num_heads
        pos = self.positional_embedding  # (1 + L, C)
        mean = feats.mean(dim=2)  # (N, C)
        query = (self.q_proj(mean + pos[0]) * head_dim ** -0.5).view(n, heads, head_dim)
        query = query.transpose(0, 1)  # (heads, N, d)
        pos_key = self.k_proj(pos).view(1 + length, heads, head_dim).transpose(0, 1)
        pos_value = self.v_proj(pos).view(1 + length, heads, head_dim).transpose(0, 1)
        key_query = torch.bmm(query, self.k_proj.weight.view(heads, head_dim, c))  # (heads, N, C)
        spatial = torch.bmm(key_query.transpose(0, 1), feats)  # (N, heads, L)
        scores = (torch.cat([spatial.mean(dim=2, keepdim=True), spatial], dim=2)
                  + torch.bmm(query, pos_key.transpose(1, 2)).transpose(0, 1))
        attn = scores.softmax(dim=-1)  # (N, heads, 1 + L)
        weights = attn[..., 1:] + attn[..., :1] / length
        mixed = torch.bmm(weights, feats.transpose(1, 2))  # (N, heads, C)
        out = torch.baddbmm(torch.bmm(attn.transpose(0, 1), pos_value), mixed.transpose(0, 1),
                            self.v_proj.weight.view(heads, head_dim, c).transpose(1, 2))
        return self.c_proj(out.transpose(0, 1).reshape(n, c))

    def init_weights(self):
        """CLIP's initialisation: normal(std = in_features^-0.5) for all projection weights."""
        std = self.c_proj.in_features ** -0.5
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.c_proj):
            nn.init.normal_(proj.weight, std=std)


class ModifiedResNet(nn.Module):
    """CLIP's ResNet image tower: 3-conv stem, anti-aliased bottlenecks, attention pooling.

    Args:
        layers (Sequence[int]): number of blocks in ``layer1 .. layer4``.
        width (int): stem output channels ``w``; stages output ``4w, 8w, 16w, 32w`` channels.
        image_size (int): input resolution the attention pool is built for (multiple of 32).
        output_dim (int): size of the pooled embedding.
        heads (int): attention-pool heads (CLIP uses ``32 * width // 64``).
        norm_layer (callable): ``norm_layer(num_channels)`` builds every normalisation layer, e.g.
            ``nn.BatchNorm2d`` (default) or detectron2's ``FrozenBatchNorm2d``.
        fold_norms (bool): fold frozen norms into the convolutions when no gradient is recorded
            (:mod:`.folding`: same outputs up to float rounding, faster); False computes every
            layer as it is, like OpenAI's code.
    """

    def __init__(self, layers: Sequence[int], width: int = 64, image_size: int = 224,
                 output_dim: int = 1024, heads: int = None, norm_layer: NormLayer = nn.BatchNorm2d,
                 fold_norms: bool = True):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ModifiedResNet needs 4 stage depths, got layers={list(layers)}")
        if image_size % 32:
            raise ValueError(f"ModifiedResNet image_size must be a multiple of 32, "
                             f"got {image_size}")
        self.layers = tuple(int(n) for n in layers)
        self.width = width
        self.image_size = image_size
        self.output_dim = output_dim
        self.heads = heads or width * 32 // 64
        self.fold_norms = fold_norms

        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = norm_layer(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = norm_layer(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = norm_layer(width)
        self.avgpool = nn.AvgPool2d(2)
        self.relu = nn.ReLU(inplace=True)

        in_channels = width
        for index, (blocks, stride) in enumerate(zip(self.layers, (1, 2, 2, 2))):
            planes = width * 2 ** index
            stage = [Bottleneck(in_channels, planes, stride, norm_layer, fold_norms)]
            in_channels = planes * Bottleneck.expansion
            stage += [Bottleneck(in_channels, planes, 1, norm_layer, fold_norms)
                      for _ in range(blocks - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))

        self.attnpool = AttentionPool2d(image_size // 32, width * 32, self.heads, output_dim)
        self.feature_channels: Dict[str, int] = {
            "stem": width, "res2": width * 4, "res3": width * 8, "res4": width * 16,
            "res5": width * 32}
        self.feature_strides: Dict[str, int] = {
            "stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}
        self.init_weights()

    @property
    def stages(self):
        """list[nn.Sequential]: ``[layer1, layer2, layer3, layer4]`` (res2 .. res5)."""
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def init_weights(self):
        """CLIP's initialisation: attention-pool projections, and zero gamma in each block's bn3."""
        self.attnpool.init_weights()
        for stage in self.stages:
            for block in stage:
                weight = getattr(block.bn3, "weight", None)
                if isinstance(weight, nn.Parameter):
                    nn.init.zeros_(weight)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Run the stem.

        Args:
            x (Tensor): (N, 3, H, W) normalised images; cast to the dtype of ``conv1.weight``.

        Returns:
            Tensor: (N, width, H/4, W/4).
        """
        x = x.to(self.conv1.weight.dtype)
        if self.fold_norms and can_fold([self.conv1, self.conv2, self.conv3],
                                         [self.bn1, self.bn2, self.bn3]):
            x = fast_layout(x)
            for conv, norm in ((self.conv1, self.bn1), (self.conv2, self.bn2),
                               (self.conv3, self.bn3)):
                x = conv_norm(x, conv, norm).relu_()
            return self.avgpool(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def forward_features(self, x: torch.Tensor,
                         out: Iterable[str] = ("res2", "res3", "res4", "res5")
                         ) -> Dict[str, torch.Tensor]:
        """Intermediate feature maps; stages after the deepest requested one are not run.

        Args:
            x (Tensor): (N, 3, H, W) normalised images.
            out (Iterable[str]): names among ``stem, res2, res3, res4, res5``.

        Returns:
            dict[str, Tensor]: the requested feature maps (``res_k`` has stride ``2**k``).
        """
        out = tuple(out)
        unknown = [name for name in out if name not in FEATURE_NAMES]
        if unknown or not out:
            raise ValueError(f"forward_features: unknown feature names {unknown} (out={out}); "
                             f"expected a non-empty subset of {FEATURE_NAMES}")
        last = max(FEATURE_NAMES.index(name) for name in out)
        features = {}
        x = self.forward_stem(x)
        if "stem" in out:
            features["stem"] = x
        for name, stage in zip(FEATURE_NAMES[1:last + 1], self.stages):
            x = stage(x)
            if name in out:
                features[name] = x
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Full tower.

        Args:
            x (Tensor): (N, 3, image_size, image_size) normalised images.

        Returns:
            Tensor: (N, output_dim) image embeddings (not normalised).
        """
        return self.attnpool(self.forward_features(x, out=("res5",))["res5"])
