"""Exact resume: the random generators and the train loader's position go into checkpoints.

:class:`ExactResume` is a trainer hook placed just before detectron2's ``PeriodicCheckpointer``
(which only the main process has). At every iteration after which that hook writes a checkpoint
(every ``period`` iterations and at the last one) it collects, from every process, the
states of the ``random``, NumPy, torch CPU (and CUDA) generators and the train loader's
``state_dict()`` (a :class:`~detectron2_ext.data.ResumableBatchLoader`); the trainer's
checkpoint stores them (``trainer.hooks.ExactResume``). Loading the checkpoint on resume gives
each process its own states back: the loader continues its stream and the generators are set
right before the first resumed iteration. The uninterrupted run also sets its generators back to
the saved states before the next iteration, so whatever the hooks after the checkpointer draw
(e.g. an evaluation) changes neither run.

Everything stored is plain data (tensors, ints, floats, strings, lists, tuples, dicts): such
checkpoints load with ``torch.load(weights_only=True)``.
"""
import logging
import random
from typing import List, Optional

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["ExactResume", "capture_rng_states", "restore_rng_states"]

logger = logging.getLogger(__name__)

VERSION = 1


def capture_rng_states() -> dict:
    """The states of this process's ``random``, NumPy, torch CPU and CUDA generators."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_states(state: dict) -> None:
    """Set the generators to states returned by :func:`capture_rng_states`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32),
                         np_state["pos"], np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            logger.warning("The checkpoint has CUDA generator states of %d devices, this process "
                           "sees %d: the CUDA generators are not restored",
                           len(state["cuda"]), torch.cuda.device_count())
        else:
            torch.cuda.set_rng_state_all(state["cuda"])


class ExactResume(HookBase):
    """Save and restore generator states and the train loader's position (module docstring).

    Args:
        data_loader: the trainer's train loader; its position is saved if it has
            ``state_dict`` / ``load_state_dicts`` (otherwise only the generators are, and a
            resumed run starts the data stream again, with a warning).
        period (int): the checkpoint period (``SOLVER.CHECKPOINT_PERIOD``); the states are also
            collected at the trainer's last iteration. Every process must use the same value:
            collecting is a collective operation.
    """

    def __init__(self, data_loader, period: int):
        if period < 1:
            raise ValueError(f"the checkpoint period must be positive, got {period}")
        self._loader = data_loader
        self._period = int(period)
        self._gathered: Optional[List[dict]] = None  # every process's states, at _gathered_iter
        self._gathered_iter = -1
        self._restore: Optional[dict] = None  # generator states to set before the next step
        self.loaded = False  # whether a checkpoint's states were loaded

    @property
    def _resumable_loader(self) -> bool:
        return hasattr(self._loader, "state_dict") and hasattr(self._loader, "load_state_dicts")

    def _checkpoint_due(self) -> bool:
        """Whether the periodic checkpointer saves after this iteration (as fvcore decides)."""
        it = self.trainer.iter
        return (it + 1) % self._period == 0 or it >= self.trainer.max_iter - 1

    def _local_state(self) -> dict:
        state = {"rng": capture_rng_states()}
        if self._resumable_loader:
            state["data"] = self._loader.state_dict()
        return state

    def after_step(self):
        if not self._checkpoint_due():
            return
        local = self._local_state()
        self._gathered = comm.all_gather(local) if comm.get_world_size() > 1 else [local]
        self._gathered_iter = self.trainer.iter
        self._restore = local["rng"]

    def before_step(self):
        if self._restore is not None:
            restore_rng_states(self._restore)
            self._restore = None

    def state_dict(self) -> dict:
        if self._gathered_iter != self.trainer.iter:
            if comm.get_world_size() > 1:
                logger.warning("Checkpoint at iteration %d saved outside the checkpoint period: "
                               "it holds no generator or data-loader states of the other "
                               "processes; resuming from it is not exact", self.trainer.iter)
                return {}
            self._gathered, self._gathered_iter = [self._local_state()], self.trainer.iter
        return {"version": VERSION, "iteration": self._gathered_iter,
                "world_size": len(self._gathered), "processes": self._gathered}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != VERSION:
            logger.warning("Unknown resume-state version %r in the checkpoint: generators and "
                           "data stream not restored", state.get("version"))
            return
        processes, world, rank = state["processes"], comm.get_world_size(), comm.get_rank()
        if len(processes) == world:
            self._restore = processes[rank]["rng"]
        else:
            logger.warning("The checkpoint was written by %d processes, this run has %d: the "
                           "random generators are not restored (not an exact resume)",
                           len(processes), world)
        datas = [p.get("data") for p in processes]
        if not self._resumable_loader:
            logger.warning("The train loader (%s) cannot continue a saved position: the data "
                           "stream starts again from its beginning", type(self._loader).__name__)
        elif any(d is None for d in datas):
            logger.warning("The checkpoint holds no data-loader position: the data stream "
                           "starts again from its beginning (not an exact resume)")
        else:
            self._loader.load_state_dicts(datas)
        self.loaded = True
