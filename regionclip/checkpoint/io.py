"""Reading checkpoint files: TorchScript archives, torch pickles, state-dict wrappers.

Nothing here looks at file names to decide what a file holds: the format is read from the file's
structure (a TorchScript zip archive or a torch pickle) and its content from its keys.
"""
import logging
import os
import pickle
import zipfile
from collections import OrderedDict
from typing import Any, Dict, Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["is_torchscript_archive", "read_torch_file", "extract_state_dict", "strip_prefix",
           "rename_metadata"]

logger = logging.getLogger(__name__)

# Keys under which training frameworks wrap a state dict.
_WRAPPER_KEYS = ("model", "state_dict")


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path}")


def is_torchscript_archive(path: str) -> bool:
    """Whether ``path`` is a TorchScript archive (how OpenAI distributes its CLIP models).

    TorchScript archives are zip files with a ``code/`` folder and ``constants.pkl``; files written
    by ``torch.save`` are zip files without them.

    Args:
        path (str): file path.

    Returns:
        bool: True for a TorchScript archive.
    """
    _check_file(path)
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(name.split("/", 1)[-1] == "constants.pkl" or "/code/" in name for name in names)


def read_torch_file(path: str) -> Any:
    """Read a ``torch.save`` file (or a detectron2 ``.pkl``) on the CPU.

    ``torch.load(weights_only=True)`` is tried first. If the file holds objects that the
    weights-only reader refuses, a warning explains why and the file is read with
    ``weights_only=False``, which can run code stored in the file (only use files you trust).
    ``.pkl`` files are read like detectron2 reads its model-zoo files (pickle, latin1).

    Args:
        path (str): file path.

    Returns:
        object: the stored object.
    """
    _check_file(path)
    if path.endswith(".pkl"):
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        logger.warning("%s cannot be read with torch.load(weights_only=True) (%s); reading it with "
                       "weights_only=False, which can execute code stored in the file: only do "
                       "this with files you trust.", path, reason)
        return torch.load(path, map_location="cpu", weights_only=False)


def rename_metadata(state_dict: Mapping, mapping) -> Dict[str, dict]:
    """Carry a state dict's ``_metadata`` (module versions) over to new module names.

    Args:
        state_dict (Mapping): a state dict, possibly with a ``_metadata`` attribute.
        mapping (callable): maps an old module path to a new one, or None to drop the entry.

    Returns:
        dict: the renamed metadata (empty if ``state_dict`` has none).
    """
    renamed = OrderedDict()
    for name, value in getattr(state_dict, "_metadata", {}).items():
        new_name = mapping(name)
        if new_name is not None:
            renamed[new_name] = value
    return renamed


def strip_prefix(state_dict: Mapping, prefix: str) -> "OrderedDict[str, Any]":
    """Remove ``prefix`` from every key if all keys have it (keeps the metadata consistent).

    Args:
        state_dict (Mapping): the state dict.
        prefix (str): e.g. ``"module."``.

    Returns:
        OrderedDict: a new state dict (the input itself when some key lacks the prefix).
    """
    if not state_dict or not all(key.startswith(prefix) for key in state_dict):
        return state_dict
    stripped = OrderedDict((key[len(prefix):], value) for key, value in state_dict.items())
    base = prefix.rstrip(".")
    stripped._metadata = rename_metadata(
        state_dict, lambda name: name[len(prefix):] if name.startswith(prefix)
        else ("" if name == base else name))
    return stripped


def extract_state_dict(obj: Any, path: str) -> "OrderedDict[str, torch.Tensor]":
    """Find the state dict in a loaded checkpoint object.

    Accepts a plain state dict, ``{"model": sd, ...}`` (detectron2), ``{"state_dict": sd, ...}``,
    an ``nn.Module``, ``module.``-prefixed keys (removed) and numpy arrays (converted to tensors).
    The ``_metadata`` attribute (module versions) is kept.

    Args:
        obj: what :func:`read_torch_file` returned.
        path (str): file name, for error messages.

    Returns:
        OrderedDict[str, Tensor]: the state dict. Non-tensor entries other than integers are an
        error; integer entries (OpenAI's ``input_resolution`` ...) are kept as given.
    """
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict or a dict wrapping one, got "
                         f"{type(obj).__name__}")
    for key in _WRAPPER_KEYS:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state_dict = OrderedDict()
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ValueError(f"{path}: state-dict key {key!r} is not a string")
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if not isinstance(value, (torch.Tensor, int)):
            raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; "
                             f"is this a state dict? (top-level keys: {list(obj)[:8]})")
        state_dict[key] = value
    if hasattr(obj, "_metadata"):
        state_dict._metadata = obj._metadata
    return strip_prefix(state_dict, "module.")
