"""Batches of images whose results equal one-by-one inference.

A batch pads its images to a common size. The CLIP ResNet is not padded for a single image
(``size_divisibility`` 0) and the offline RPN pads to a multiple of 32, so an image padded further
inside a batch would see other values at its right and bottom borders (the padding is zero only
before the first convolution) and get other regions and scores. Images are therefore batched
only with images of the same padded size in every branch (:func:`padded_key`), in batches of at
most ``batch_size``; the results are those of one-by-one calls, in the input order.
"""
import math
from typing import Hashable, List, Sequence, Tuple

__all__ = ["padded_key", "plan_batches", "check_batch_size"]


def padded_key(hw: Tuple[int, int], divisibilities: Sequence[int]) -> tuple:
    """The padded (height, width) of an image of size ``hw`` for each size divisibility (0: no
    padding): images with equal keys can share a batch without changing their results."""
    h, w = hw
    return tuple((math.ceil(h / d) * d, math.ceil(w / d) * d) if d > 1 else (h, w)
                 for d in divisibilities)


def plan_batches(keys: Sequence[Hashable], batch_size: int) -> List[List[int]]:
    """Indices of ``keys`` grouped by equal key (groups in order of first appearance, indices in
    input order), each group cut into batches of at most ``batch_size``."""
    groups = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return [members[start:start + batch_size] for members in groups.values()
            for start in range(0, len(members), batch_size)]


def check_batch_size(batch_size) -> int:
    """A batch size: an int >= 1 (not a bool or a float)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size
