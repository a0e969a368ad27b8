"""RoIAlign of many regions at inference, on all CPU threads, into the layout res5 convolves.

torchvision's CPU RoIAlign runs on one thread. At inference (no gradient recorded) on the CPU,
:func:`pool_regions` runs it on chunks of regions in a thread pool of ``torch.get_num_threads()``
workers (the kernel releases the GIL), and each chunk is written into one preallocated
channels-last output in the compute dtype (the autocast dtype under autocast, as torchvision's
autocast wrapper returns), so that neither a concatenation nor res5's first block copies it
again. Every region is pooled by the same kernel on the same inputs: the values are those of
``pooler(features, boxes)`` exactly.
"""
import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
from typing import List

import torch
from detectron2.modeling.poolers import ROIPooler, convert_boxes_to_pooler_format
from detectron2.structures import Boxes

__all__ = ["pool_regions"]

MIN_REGIONS_PER_TASK = 16


def _tracing() -> bool:
    """A trace or compilation records the ops: the chunks would be fixed to the sample's count."""
    return (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling())


def pool_regions(pooler: ROIPooler, features: List[torch.Tensor], boxes: List[Boxes],
                 threads: int = 0) -> torch.Tensor:
    """``pooler(features, boxes)``: (R, C, S, S) region features, in parallel at inference.

    Args:
        pooler (ROIPooler): a one-level pooler (C4 heads); others are called as they are.
        features (list[Tensor]): the feature maps, one per pooler level.
        boxes (list[Boxes]): regions per image.
        threads (int): workers; 0 means ``torch.get_num_threads()``.

    Returns:
        Tensor: the pooled regions; at inference on the CPU channels-last and in the autocast
        dtype when autocast is on. While tracing or compiling (ONNX export), ``pooler``'s own
        result: the graph must not fix the number of regions.
    """
    feature = features[0]
    threads = threads or torch.get_num_threads()
    if (torch.is_grad_enabled() or feature.device.type != "cpu" or len(pooler.level_poolers) != 1
            or len(boxes) != feature.shape[0] or _tracing()):
        return pooler(features, boxes)
    rois = convert_boxes_to_pooler_format(boxes)
    total = rois.shape[0]
    autocast = torch.is_autocast_enabled("cpu")
    dtype = torch.get_autocast_dtype("cpu") if autocast else feature.dtype
    size = pooler.output_size
    out = torch.empty((total, feature.shape[1], *size), dtype=dtype, device=feature.device,
                      memory_format=torch.channels_last)
    if total == 0:
        return out
    tasks = max(1, min(threads * 4, total // MIN_REGIONS_PER_TASK))
    step = math.ceil(total / tasks)
    level = pooler.level_poolers[0]
    feature = feature.contiguous()  # what the kernel takes: converted once, not per chunk

    def pool(start: int) -> None:
        # autocast is thread-local: each worker enters the caller's
        context = torch.autocast("cpu", dtype=dtype) if autocast else contextlib.nullcontext()
        with torch.no_grad(), context:
            out[start:start + step].copy_(level(feature, rois[start:start + step]))

    if tasks == 1 or threads <= 1:
        for start in range(0, total, step):
            pool(start)
        return out
    with ThreadPoolExecutor(max_workers=threads) as executor:
        list(executor.map(pool, range(0, total, step)))
    return out
