"""detectron2's ``launch()`` whose workers leave the process group before they exit.

``detectron2.engine.launch`` spawns one process per device and returns when they end, but its
workers exit with the process group still alive. With the gloo backend (CPU) a worker can then
abort while the interpreter tears the group down ("terminate called without an active
exception", the process killed by SIGABRT after its work is done). Here each worker, once its
function has returned, waits for the others (a barrier) and destroys the process group.
"""
from datetime import timedelta

import torch.distributed as dist
from detectron2.engine import launch as _d2_launch
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

__all__ = ["launch"]


class _LeaveProcessGroup:
    """Picklable wrapper: run ``main_func``, then synchronise and destroy the process group."""

    def __init__(self, main_func):
        self.main_func = main_func

    def __call__(self, *args):
        result = self.main_func(*args)
        if dist.is_available() and dist.is_initialized():
            comm.synchronize()
            dist.destroy_process_group()
        return result


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None,
           args=(), timeout: timedelta = DEFAULT_TIMEOUT):
    """Same arguments as :func:`detectron2.engine.launch`; see the module doc for the difference.

    With one process in total, ``main_func(*args)`` runs in this process as in detectron2 (no
    process group is created).
    """
    world_size = num_machines * num_gpus_per_machine
    func = _LeaveProcessGroup(main_func) if world_size > 1 else main_func
    return _d2_launch(func, num_gpus_per_machine, num_machines=num_machines,
                      machine_rank=machine_rank, dist_url=dist_url, args=args, timeout=timeout)
