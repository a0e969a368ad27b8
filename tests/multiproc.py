"""Two CPU processes through ``detectron2_ext.engine.launch`` for the multi-process tests.

The processes are CPU ones (gloo) also on a machine with GPUs, where launch()'s default would be
NCCL (which cannot move CPU tensors).

The rendezvous is a fresh file (``file://``), not a TCP port picked in advance, which another
program could take between the pick and the bind. A worker killed by a signal (gloo aborted a
worker twice in ~100 runs before launch() left the process group, never seen since) is retried
once and reported; a Python exception in a worker is a test failure at once.
"""
import os
import warnings

from torch.multiprocessing import ProcessExitedException

from detectron2_ext.engine import launch

__all__ = ["launch_two", "rendezvous_url"]


def rendezvous_url(folder, tag="rdzv") -> str:
    """A ``file://`` URL of a path in ``folder`` that does not exist yet."""
    index = 0
    while os.path.exists(os.path.join(folder, f"{tag}{index}")):
        index += 1
    return "file://" + os.path.join(os.path.abspath(folder), f"{tag}{index}")


def launch_two(worker, folder, args=()):
    """``launch(worker, 2 processes, args)`` with a file rendezvous in ``folder``."""
    for attempt in range(2):
        try:
            return launch(worker, 2, num_machines=1, machine_rank=0,
                          dist_url=rendezvous_url(folder), args=args, backend="gloo")
        except ProcessExitedException as e:
            if attempt or e.signal_name is None:
                raise
            warnings.warn(f"2-process launch: a worker died of {e.signal_name}; retried once: {e}")
