"""RoIAlign of many regions at inference, on all CPU threads, into the layout res5 convolves.

torchvision's CPU RoIAlign runs on one thread. At inference (no gradient recorded) on the CPU,
:func:`pool_regions` runs it on chunks of regions in a thread pool of ``torch.get_num_threads()``
workers (the kernel releases the GIL), and each chunk is written into one preallocated
channels-last output in the compute dtype (the autocast dtype under autocast, as torchvision's
autocast wrapper returns), so that neither a concatenation nor res5's first block copies it
again. Every region is pooled by the same kernel on the same inputs: the values are those of
``pooler(features, boxes)`` exactly. Under autocast the features go to the kernel in float32 as
torchvision's autocast wrapper does, and so do the boxes (detectron2's ``ROIAlign`` would cast
them to the features' dtype: in bfloat16 a coordinate near 1000 px is rounded to a multiple of
8 px).
"""
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import List

import torch
from detectron2.modeling.poolers import ROIPooler, convert_boxes_to_pooler_format
from detectron2.structures import Boxes

from regionclip.clip.folding import is_tracing

__all__ = ["pool_regions"]

# Regions per task: at least this many, and at least MIN_TASK_BYTES of float32 output. glibc
# hands blocks above 32 MB back to the system when they are freed; smaller ones stay in the
# worker threads' own arenas and would add to the process's peak memory.
MIN_REGIONS_PER_TASK = 16
MIN_TASK_BYTES = 40 * 2 ** 20


def pool_regions(pooler: ROIPooler, features: List[torch.Tensor], boxes: List[Boxes],
                 threads: int = 0, task_bytes: int = MIN_TASK_BYTES) -> torch.Tensor:
    """``pooler(features, boxes)``: (R, C, S, S) region features, in parallel at inference.

    Args:
        pooler (ROIPooler): a one-level pooler (C4 heads); others are called as they are.
        features (list[Tensor]): the feature maps, one per pooler level.
        boxes (list[Boxes]): regions per image.
        threads (int): workers; 0 means ``torch.get_num_threads()``.
        task_bytes (int): least float32 output of one task (module note on ``MIN_TASK_BYTES``).

    Returns:
        Tensor: the pooled regions; at inference on the CPU channels-last and in the autocast
        dtype when autocast is on. While tracing or compiling (ONNX export), ``pooler``'s own
        result: the graph must not fix the number of regions.
    """
    feature = features[0]
    threads = threads or torch.get_num_threads()
    if (torch.is_grad_enabled() or feature.device.type != "cpu" or len(pooler.level_poolers) != 1
            or len(boxes) != feature.shape[0] or is_tracing()):
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
    per_region = feature.shape[1] * size[0] * size[1] * 4  # float32 kernel output
    step = max(MIN_REGIONS_PER_TASK, math.ceil(task_bytes / per_region))
    if threads > 1:  # a few tasks per thread, no smaller than that
        step = max(step, math.ceil(total / (threads * 4)))
    level = pooler.level_poolers[0]
    # what the kernel takes (torchvision's autocast wrapper casts to float32), converted once
    # here, not in every task; the workers run without autocast (it is thread-local anyway)
    feature = (feature.float() if autocast else feature).contiguous()

    def pool(start: int) -> torch.Tensor:
        with torch.no_grad():
            return level(feature, rois[start:start + step])

    starts = list(range(0, total, step))
    if threads <= 1 or len(starts) == 1:
        for start in starts:
            out[start:start + step].copy_(pool(start))
        return out
    # The workers only run the (single-threaded) kernel; this thread copies each finished chunk
    # into the output (with all intra-op threads) while they pool the next ones. At most
    # ``threads`` chunks are in flight, so the float32 chunks alive stay bounded.
    with ThreadPoolExecutor(max_workers=threads) as executor:
        pending = deque(executor.submit(pool, start) for start in starts[:threads])
        for i, start in enumerate(starts):
            chunk = pending.popleft().result()
            if i + threads < len(starts):
                pending.append(executor.submit(pool, starts[i + threads]))
            out[start:start + step].copy_(chunk)
            del chunk
    return out
