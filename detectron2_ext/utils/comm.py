"""Distributed helpers: all-gather that keeps gradients, and a free local port for ``launch()``."""
import socket

import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["all_gather_with_grad", "free_port"]


def all_gather_with_grad(tensor, truncate_to_min=False):
    """Concatenate ``tensor`` from every process along dim 0, differentiably.

    Gradients flow back to every process's input through ``torch.distributed.nn``: each process's
    input receives the sum of the gradients that all processes' losses send to its rows. When
    every process computes the same loss from the gathered tensor (as a contrastive loss over
    the global batch does), the input gradient is therefore ``world_size`` times the gradient of
    that loss, and DistributedDataParallel's averaging restores the exact gradient of the loss
    over the joined batch.

    Args:
        tensor (Tensor): (N_r, ...) on this process; the trailing shape must agree across processes.
        truncate_to_min (bool): if True, every process keeps only its first ``min_r N_r`` rows
            before gathering (the original RegionCLIP behaviour); if False, different ``N_r`` are
            gathered in full (padded for the collective, then unpadded).

    Returns:
        Tensor: (sum of the kept rows, ...) in rank order. With one process, ``tensor`` itself
        (or its truncation, which is a no-op).
    """
    world_size = comm.get_world_size()
    if world_size == 1:
        return tensor
    # torch.distributed.nn is imported lazily: it is only needed with a process group.
    import torch.distributed.nn.functional as dist_nn

    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    if truncate_to_min:
        n = min(sizes)
        return torch.cat(dist_nn.all_gather(tensor[:n].contiguous()), dim=0)
    largest = max(sizes)
    if largest != tensor.shape[0]:
        pad = tensor.new_zeros((largest - tensor.shape[0],) + tuple(tensor.shape[1:]))
        padded = torch.cat([tensor, pad], dim=0)
    else:
        padded = tensor.contiguous()
    parts = dist_nn.all_gather(padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)


def free_port():
    """An unused TCP port on localhost, e.g. for ``dist_url=f"tcp://127.0.0.1:{free_port()}"``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
