"""Inference without normalisation layers: each frozen norm folded into the convolution before it.

A frozen batch norm is the per-channel affine map ``y = x * s + t`` with ``s = gamma /
sqrt(var + eps)`` and ``t = beta - mean * s``; after a convolution with weight ``W`` (and bias
``b``) the two are one convolution with weight ``W * s`` and bias ``b * s + t``. The folded
weights are computed from the current parameters at every call (about 20 ms for a whole RN50 on
two cores, in the dtype and memory format of the convolution) and kept nowhere: the modules,
their state dict and training are unchanged, a weight loaded, updated or moved later is used by
the next call, and no second copy of the weights stays in memory. Outputs move by float rounding
only.

:func:`can_fold` decides when this applies: the norm is detectron2's ``FrozenBatchNorm2d`` or a
``torch.nn`` batch norm in eval mode with running statistics, and no gradient is being recorded
(training, and any forward pass that back-propagates, sees the layers as they are), and none of
the layers has forward hooks (a hook sees its layer run as it is).

The folded path also runs the convolutions in channels-last memory format (oneDNN and cuDNN
convolve it without reordering to an internal layout at every call), cast once to the autocast
dtype when autocast is on.
"""
from typing import Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["is_tracing", "is_frozen_norm", "can_fold", "folded_weights", "conv_norm", "fast_layout"]


def is_frozen_norm(norm: nn.Module) -> bool:
    """Whether ``norm`` is a fixed per-channel affine map now: detectron2's ``FrozenBatchNorm2d``
    (recognised by name; ``regionclip.clip`` does not import detectron2) or a ``torch.nn`` batch
    norm in eval mode that uses running statistics."""
    if type(norm).__name__ == "FrozenBatchNorm2d":
        return all(hasattr(norm, a) for a in ("weight", "bias", "running_mean", "running_var"))
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        return (not norm.training and norm.track_running_stats and norm.running_var is not None
                and norm.running_mean is not None)
    return False


def is_tracing() -> bool:
    """Whether the ops are being recorded (TorchScript trace, ONNX export, torch.compile)."""
    return (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling())


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def can_fold(convs: Iterable[nn.Module], norms: Iterable[nn.Module]) -> bool:
    """True when no gradient is recorded, every layer of ``norms`` :func:`is_frozen_norm`, and no
    layer of ``convs`` and ``norms`` has forward hooks (which would not run when folded)."""
    if torch.is_grad_enabled():
        return False
    norms = list(norms)
    return (all(is_frozen_norm(n) for n in norms)
            and not any(_hooked(m) for m in list(convs) + norms))


def folded_weights(conv: nn.Conv2d, norm: nn.Module, dtype: Optional[torch.dtype] = None,
                   memory_format: torch.memory_format = torch.contiguous_format
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of the convolution ``norm(conv(x))``.

    The scale and shift are computed in float32 at least (float64 parameters stay float64); the
    weight is written once, in ``dtype`` (default: that of ``conv.weight``) and
    ``memory_format``, the bias in ``dtype``.
    """
    dtype = dtype or conv.weight.dtype
    work = torch.promote_types(conv.weight.dtype, torch.float32)
    var, mean = norm.running_var.to(work), norm.running_mean.to(work)
    gamma = torch.ones_like(var) if norm.weight is None else norm.weight.to(work)
    beta = torch.zeros_like(var) if norm.bias is None else norm.bias.to(work)
    scale = gamma * torch.rsqrt(var + norm.eps)
    shift = beta - mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias.to(work) * scale
    scale = scale.view(-1, *([1] * (conv.weight.dim() - 1)))
    if is_tracing():  # exporters do not take out= arguments
        return (conv.weight * scale).to(dtype=dtype, memory_format=memory_format), shift.to(dtype)
    weight = torch.empty_like(conv.weight, dtype=dtype, memory_format=memory_format)
    torch.mul(conv.weight, scale, out=weight)
    return weight, shift.to(dtype)


def conv_norm(x: torch.Tensor, conv: nn.Conv2d, norm: nn.Module) -> torch.Tensor:
    """``norm(conv(x))`` as one convolution with the folded weights (same stride, padding,
    dilation and groups as ``conv``), in the dtype of ``x`` under autocast (else of the weights)
    and the memory format of ``x``."""
    dtype = conv.weight.dtype
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    layout = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
              and not x.is_contiguous() else torch.contiguous_format)
    weight, bias = folded_weights(conv, norm, dtype, layout)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def fast_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, H, W) in channels-last memory format, and in the autocast dtype of its device
    when autocast is on (one copy instead of two; a no-op when already so)."""
    dtype = x.dtype
    if x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    return x.to(dtype=dtype, memory_format=torch.channels_last)
