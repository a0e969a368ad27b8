"""Reading checkpoint files: TorchScript archives, torch pickles, state-dict wrappers.

Nothing here looks at file names to decide what a file holds (except ``.pkl``, which means a
detectron2 / Caffe2 model file as in detectron2): the format is read from the file's structure (a
TorchScript zip archive or a torch pickle) and its content from its keys. No reader runs code
stored in a file (see :mod:`regionclip.checkpoint.safe_pickle`).
"""
import logging
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch
from torch import nn

from .safe_pickle import (
    TRUST_ENV,
    CheckpointFileError,
    UntrustedFileError,
    is_trusted,
    read_numpy_pickle,
    read_torchscript_state_dict,
    torch_safe_globals,
    untrusted_message,
)

__all__ = ["is_torchscript_archive", "read_torch_file", "extract_state_dict", "strip_prefix",
           "rename_metadata", "CheckpointFileError", "UntrustedFileError"]

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


def _refusal(error: Exception) -> Optional[str]:
    """What a weights-only refusal says the file needs, or None if the file is simply damaged."""
    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"the Python object {found.group(1)}"
    if "Unsupported operand" in text or "WeightsUnpickler error" not in text:
        return None
    detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
    return f"objects that torch.load(weights_only=True) refuses ({detail})"


def _damaged(path: str, error: Exception) -> CheckpointFileError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return CheckpointFileError(
        f"{path} ({os.path.getsize(path)} bytes) is not a readable checkpoint "
        f"({type(error).__name__}{': ' + reason[:200] if reason else ''}). Is it complete? An "
        f"interrupted download or copy, or a web page saved in its place (e.g. a download "
        f"warning page), look like this.")


def read_torch_file(path: str, mmap: bool = False) -> Any:
    """Read a checkpoint, embedding file or concept pool on the CPU; no code stored in the file
    runs.

    * ``torch.save`` files: ``torch.load(weights_only=True)`` with NumPy arrays, dtypes and
      scalars also allowed (see :mod:`regionclip.checkpoint.safe_pickle`).
    * TorchScript archives (OpenAI CLIP): their parameters and buffers, as an OrderedDict.
    * ``.pkl`` files (detectron2 / Caffe2 model zoo): NumPy arrays in plain containers.

    A file that needs more (any other Python object) is refused, unless the environment variable
    ``REGIONCLIP_TRUST_PICKLE`` names it: then it is read with full unpickling, with a warning.

    Args:
        path (str): file path.
        mmap (bool): map the tensors of a ``torch.save`` zip file instead of reading them (cheap
            inspection of keys and shapes: a truncated file still fails, as its zip directory is
            at its end); other formats are read in full.

    Returns:
        object: the stored object.

    Raises:
        FileNotFoundError: no such file.
        UntrustedFileError: the file needs full unpickling and is not trusted.
        CheckpointFileError: the file is empty, truncated or not a checkpoint.
    """
    _check_file(path)
    if os.path.getsize(path) == 0:
        raise CheckpointFileError(f"{path} is empty (0 bytes): an interrupted download, copy "
                                  f"or save? Replace it with a complete file.")
    if is_torchscript_archive(path):
        return read_torchscript_state_dict(path)
    if path.endswith(".pkl") and not zipfile.is_zipfile(path):
        return read_numpy_pickle(path)
    extra = {"mmap": True} if mmap and zipfile.is_zipfile(path) else {}
    try:
        with torch.serialization.safe_globals(torch_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, **extra)
    except pickle.UnpicklingError as error:
        needs = _refusal(error)
        if needs is None:
            raise _damaged(path, error) from None
        if not is_trusted(path):
            raise UntrustedFileError(untrusted_message(path, needs)) from None
        logger.warning("%s needs %s: reading it with full unpickling, because %s names it as "
                       "trusted.", path, needs, TRUST_ENV)
    except Exception as error:  # EOFError, KeyError, RuntimeError (bad zip), ... from torch.load
        raise _damaged(path, error) from None
    return torch.load(path, map_location="cpu", weights_only=False, **extra)


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
