"""Timing, FLOP counting and peak memory of a benchmark case."""
import resource
import time
from typing import Callable

__all__ = ["synchronize", "timeit", "count_flops", "peak_rss_mb"]


def synchronize(device: str) -> None:
    """Wait for the work queued on ``device`` (CUDA kernels run asynchronously)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timeit(fn: Callable, repeats: int, device: str = "cpu") -> float:
    """The best of ``repeats`` wall-clock times of ``fn()`` in seconds, after one warm-up call
    (allocator, oneDNN primitive cache / cuDNN autotuning)."""
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def count_flops(fn: Callable) -> int:
    """FLOPs of one ``fn()`` (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
