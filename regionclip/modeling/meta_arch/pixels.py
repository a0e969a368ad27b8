"""The one pixel normaliser of every RegionCLIP meta-architecture.

The original's rule (spec §1.16): a ``MODEL.PIXEL_MEAN`` summing to less than 3 is in [0, 1]
units (CLIP's statistics), so pixels are first brought to [0, 1]; such statistics are RGB, so
the input must be RGB. Otherwise the statistics are in [0, 255] units (detectron2's).
"""
from typing import List, Optional

import torch
from detectron2.structures import ImageList

__all__ = ["pixel_range", "normalize_images"]


def pixel_range(pixel_mean, input_format: str, where: str = "MODEL.PIXEL_MEAN") -> float:
    """The value range the statistics are given in: 1.0 ([0, 1], CLIP) or 255.0 (detectron2).

    Args:
        pixel_mean (sequence or Tensor): the per-channel mean.
        input_format (str): the channel order of the input images.
        where (str): what the statistics come from, for the error message.

    Raises:
        ValueError: [0, 1] statistics with an input that is not RGB.
    """
    total = float(pixel_mean.sum()) if isinstance(pixel_mean, torch.Tensor) else float(
        sum(float(v) for v in pixel_mean))
    if total >= 3.0:
        return 255.0
    if input_format != "RGB":
        raise ValueError(f"{where} in [0, 1] units (CLIP statistics, summing to {total:.3g} < 3) "
                         f"needs INPUT.FORMAT RGB, got {input_format!r}")
    return 1.0


def normalize_images(images: List[torch.Tensor], mean: torch.Tensor, std: torch.Tensor,
                     stats_range: float, size_divisibility: int, *, input_range: float = 255.0,
                     flip_channels: bool = False,
                     padding_constraints: Optional[dict] = None) -> ImageList:
    """``(x - mean) / std`` of each (C, H, W) image brought to the statistics' range, padded.

    Args:
        images (list[Tensor]): images with values in [0, ``input_range``].
        mean, std (Tensor): (C, 1, 1) statistics, in [0, ``stats_range``] units.
        stats_range (float): from :func:`pixel_range`.
        size_divisibility (int), padding_constraints (dict or None): as ``ImageList.from_tensors``.
        input_range (float): 255.0 for 0-255 images, 1.0 for images already in [0, 1].
        flip_channels (bool): reverse the channel order first (RGB <-> BGR).
    """
    out = []
    for x in images:
        if flip_channels:
            x = x[[2, 1, 0]]
        x = x.float()
        if input_range > stats_range:
            x = x / (input_range / stats_range)
        elif input_range < stats_range:
            x = x * (stats_range / input_range)
        out.append((x - mean) / std)
    return ImageList.from_tensors(out, size_divisibility, padding_constraints=padding_constraints)
