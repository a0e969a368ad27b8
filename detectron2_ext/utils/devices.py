"""Devices from the config, checked early with errors that name the key.

* :func:`resolve_device`: ``MODEL.DEVICE`` as a ``torch.device``; CUDA asked for but absent (or a
  GPU index beyond the visible ones) is an error here, not deep inside ``build_model``.
* :func:`process_device`: the device of this process when several processes train together: on
  CUDA each process uses the GPU of its local rank (``cuda`` becomes ``cuda:<local rank>``).
* :func:`check_amp_device`: ``SOLVER.AMP.ENABLED`` needs a CUDA device (detectron2's
  ``AMPTrainer`` runs float16 autocast with a CUDA ``GradScaler``).
* :func:`checked_autocast`: ``torch.autocast`` that raises where torch would silently disable
  itself (a dtype the device does not support) or fail with a message without the config key.
"""
import warnings

import torch
from detectron2.utils import comm

__all__ = ["resolve_device", "process_device", "check_amp_device", "checked_autocast"]


def resolve_device(name, key: str = "MODEL.DEVICE") -> torch.device:
    """``name`` (e.g. "cpu", "cuda", "cuda:1") as a device that exists on this machine.

    Raises:
        ValueError: not a device name; CUDA without an available GPU; a GPU index that is not
            visible.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{key} {name!r} is not a device name (expected 'cpu', 'cuda' or "
                         f"'cuda:N'): {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{key} is {name!r} but CUDA is not available (torch "
                             f"{torch.__version__}, built with CUDA {torch.version.cuda}; no GPU "
                             f"or driver visible): set {key} cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{key} is {name!r} but only {count} GPU(s) are visible "
                             f"(cuda:0 .. cuda:{count - 1})")
    return device


def process_device(name, key: str = "MODEL.DEVICE") -> str:
    """The device this process computes on, as a config string.

    One process: ``name`` as given (checked). Several processes on CUDA: ``cuda:<local rank>``,
    one GPU per process as ``launch()`` pinned it; an explicit other index is an error (every
    process would share one GPU while DistributedDataParallel expects the local rank's).
    """
    device = resolve_device(name, key)
    if device.type != "cuda" or comm.get_world_size() == 1:
        return str(name)
    local = comm.get_local_rank()
    if device.index is not None and device.index != local:
        raise ValueError(f"{key} is {name!r} with {comm.get_world_size()} processes: each process "
                         f"uses the GPU of its local rank (cuda:{local} in this one); set {key} "
                         "cuda")
    return f"cuda:{local}"


def check_amp_device(amp_enabled: bool, device, key: str = "MODEL.DEVICE"):
    """Refuse ``SOLVER.AMP.ENABLED True`` on a device other than CUDA, with the reason."""
    if amp_enabled and torch.device(device).type != "cuda":
        raise ValueError(f"SOLVER.AMP.ENABLED True needs a CUDA device, but {key} is {device!r}: "
                         "detectron2's AMPTrainer trains in float16 autocast with a CUDA "
                         "GradScaler. Set SOLVER.AMP.ENABLED False to train on the CPU (for "
                         "lower-precision CPU inference see MODEL.CLIP.INFERENCE_DTYPE bfloat16)")


def checked_autocast(device_type: str, dtype: torch.dtype, key: str):
    """``torch.autocast(device_type, dtype)``, enabled, or a ``ValueError`` naming ``key``.

    torch disables autocast with only a warning when the device does not support the dtype (e.g.
    float16 on the CPU of older torch versions): the computation would silently stay in float32.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            context = torch.autocast(device_type, dtype=dtype)
        except RuntimeError as e:
            raise ValueError(f"{key}: autocast to {dtype} on {device_type} is not possible with "
                             f"torch {torch.__version__}: {e}") from None
    if not getattr(context, "_enabled", True):
        why = "; ".join(str(w.message).replace("\n", " ") for w in caught) or "disabled by torch"
        raise ValueError(f"{key}: torch {torch.__version__} does not support autocast to {dtype} "
                         f"on {device_type} ({why}); use float32 or a dtype this device supports")
    return context
