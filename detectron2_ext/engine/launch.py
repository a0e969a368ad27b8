"""``launch()`` with the same arguments as detectron2's, plus the choice of the backend.

Like :func:`detectron2.engine.launch`, it starts one process per device on each machine, joins
them in a process group and runs ``main_func(*args)`` in each. Differences:

* ``backend``: detectron2 picks NCCL whenever a GPU is visible, so CPU processes (``MODEL.DEVICE
  cpu``) on a GPU machine got NCCL, which cannot move CPU tensors, and more CPU processes than GPUs
  failed an assertion. Here ``backend="gloo"`` runs CPU processes anywhere; ``"nccl"`` pins each
  process to the GPU of its local rank and checks first that there are enough GPUs. ``None``
  keeps detectron2's choice (NCCL iff CUDA is available).
* each worker, once its function has returned, waits for the others (a barrier) and destroys
  the process group: with gloo a worker exiting with the group still alive could abort
  ("terminate called without an active exception", SIGABRT) after its work was done.
"""
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

from ..utils.comm import free_port

__all__ = ["launch", "choose_backend"]

BACKENDS = ("gloo", "nccl")


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


def choose_backend(backend, processes_per_machine: int) -> str:
    """The process-group backend: ``backend`` checked, or NCCL iff CUDA is available.

    Raises:
        ValueError: unknown backend; NCCL without CUDA or with fewer GPUs than processes.
    """
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    backend = str(backend).lower()
    if backend not in BACKENDS:
        raise ValueError(f"process-group backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "nccl":
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if processes_per_machine > gpus:
            raise ValueError(f"{processes_per_machine} processes per machine on CUDA (NCCL) need "
                             f"as many GPUs, {gpus} visible: lower --num-gpus, or run CPU "
                             "processes (MODEL.DEVICE cpu, gloo)")
    return backend


def _worker(local_rank, main_func, world_size, per_machine, machine_rank, dist_url, args,
            timeout, backend):
    if backend == "nccl":
        torch.cuda.set_device(local_rank)  # before the group: NCCL binds to the current device
    dist.init_process_group(backend=backend, init_method=dist_url, world_size=world_size,
                            rank=machine_rank * per_machine + local_rank, timeout=timeout)
    comm.create_local_process_group(per_machine)
    comm.synchronize()  # every process has joined before any starts working
    _LeaveProcessGroup(main_func)(*args)


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None,
           args=(), timeout: timedelta = DEFAULT_TIMEOUT, backend=None):
    """Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes on each of ``num_machines``.

    Same arguments as :func:`detectron2.engine.launch` (``dist_url="auto"`` picks a free local
    port, one machine only), and ``backend`` ("gloo", "nccl" or None, see the module doc). With
    one process in total, ``main_func(*args)`` runs in this process and its result is returned
    (no process group is created).
    """
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        return main_func(*args)
    backend = choose_backend(backend, num_gpus_per_machine)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url 'auto' works on one machine only; give tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{free_port()}"
    if not dist_url:
        raise ValueError("several processes need a rendezvous: give dist_url (tcp://HOST:PORT, "
                         "file://PATH or 'auto')")
    mp.start_processes(_worker, nprocs=num_gpus_per_machine, daemon=False,
                       args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url,
                             args, timeout, backend))
