"""Reading pickled files without running code stored in them.

Pickle files can name any Python callable, which the reader then calls: a planted checkpoint can
run code on the machine that loads it. Every file this project reads (checkpoints, embedding
files, concept pools) therefore goes through one of three readers that only build data:

* ``torch.save`` files: ``torch.load(weights_only=True)`` plus the NumPy types listed in
  :data:`NUMPY_GLOBALS` (arrays, dtypes and scalars, as in detectron2 checkpoints and random
  states).
* detectron2 ``.pkl`` model-zoo files (Caffe2 / Detectron format): :func:`read_numpy_pickle`, an
  unpickler that builds only NumPy arrays, dtypes, scalars and plain containers.
* TorchScript archives (how OpenAI distributes CLIP): :func:`read_torchscript_state_dict` reads
  the tensors of the archive's ``data.pkl`` and the parameter / buffer names declared in its
  ``code/`` files (read as text, never compiled or run); neither Python nor TorchScript code runs.

A file that needs anything else is refused with :class:`UntrustedFileError`, unless the user
names it in the environment variable ``REGIONCLIP_TRUST_PICKLE`` (see :func:`is_trusted`).
"""
import io
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

__all__ = ["TRUST_ENV", "CheckpointFileError", "UntrustedFileError", "is_trusted",
           "untrusted_message", "NUMPY_GLOBALS", "read_numpy_pickle", "read_torchscript_state_dict"]

TRUST_ENV = "REGIONCLIP_TRUST_PICKLE"


class CheckpointFileError(ValueError):
    """A file that is not a readable checkpoint (empty, truncated, not a checkpoint at all)."""


class UntrustedFileError(CheckpointFileError):
    """A file whose reading would need full unpickling (it may run code stored in it)."""


def _trusted_paths() -> List[str]:
    value = os.environ.get(TRUST_ENV, "")
    return [os.path.realpath(p) for p in value.split(os.pathsep) if p.strip()]


def is_trusted(path: str) -> bool:
    """Whether the user trusts ``path`` with full unpickling.

    ``REGIONCLIP_TRUST_PICKLE`` holds the trusted files, separated by ``os.pathsep`` (``:`` on
    Linux and macOS); files are compared by their real path. Nothing else trusts a file.
    """
    return os.path.realpath(path) in _trusted_paths()


def untrusted_message(path: str, needs: str) -> str:
    """The refusal message: what the file needs and the one way to trust it."""
    real = os.path.realpath(path)
    return (f"{path}: refused to read this file, because it needs {needs}, which only full "
            f"unpickling can build, and full unpickling can run code stored in the file. If you "
            f"trust the file (you made it, or it comes from a source you trust), allow it with "
            f"the environment variable {TRUST_ENV}={real} (several files: separated by "
            f"'{os.pathsep}'), or re-save its tensors as a plain state dict, e.g. "
            f"torch.save({{'model': state_dict}}, path). See docs/RELIABILITY.md.")


# ----------------------------------------------------------------------------- NumPy types
def _numpy_multiarray():
    return np.core.multiarray if hasattr(np, "core") else np._core.multiarray


_SAFE_DTYPE_NAMES = ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32",
                     "UInt64", "Float16", "Float32", "Float64", "Complex64", "Complex128",
                     "Byte", "UByte", "Short", "UShort", "Int", "UInt", "Long", "ULong",
                     "LongLong", "ULongLong", "LongDouble")


def _numpy_globals() -> Dict[str, Any]:
    multiarray = _numpy_multiarray()
    table = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[f"{module}._reconstruct"] = multiarray._reconstruct
        table[f"{module}.scalar"] = multiarray.scalar
    dtypes = getattr(np, "dtypes", None)
    for name in _SAFE_DTYPE_NAMES:
        cls = getattr(dtypes, name + "DType", None) if dtypes is not None else None
        if cls is not None:
            table[f"numpy.dtypes.{name}DType"] = cls
    return table


# name in the file -> object; torch's weights-only reader gets them as (object, name) pairs
NUMPY_GLOBALS: Dict[str, Any] = _numpy_globals()


def torch_safe_globals() -> List[Tuple[Any, str]]:
    """``torch.serialization.safe_globals`` entries for :data:`NUMPY_GLOBALS`."""
    return [(obj, name) for name, obj in NUMPY_GLOBALS.items()]


def _latin1_encode(value, encoding="latin1"):
    # how Python 3 pickles bytes with protocol 2 (_codecs.encode(text, "latin1")); no other codec
    if encoding not in ("latin1", "latin-1") or not isinstance(value, str):
        raise pickle.UnpicklingError(f"global _codecs.encode with {encoding!r} is not allowed")
    return value.encode("latin1")


_PLAIN_GLOBALS = {
    "_codecs.encode": _latin1_encode,
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set, "builtins.frozenset": frozenset, "builtins.complex": complex,
    "builtins.slice": slice, "builtins.bytearray": bytearray, "builtins.range": range,
}


class _NumpyUnpickler(pickle.Unpickler):
    """Builds NumPy arrays, dtypes, scalars and plain containers; refuses every other global."""

    def find_class(self, module, name):
        key = f"{module}.{name}"
        found = NUMPY_GLOBALS.get(key, _PLAIN_GLOBALS.get(key))
        if found is None:
            raise pickle.UnpicklingError(f"global {key} is not allowed")
        return found

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed in a .pkl model file")


def read_numpy_pickle(path: str) -> Any:
    """Read a detectron2 / Caffe2 ``.pkl`` model file (dicts of NumPy arrays, Python 2 or 3).

    Raises:
        UntrustedFileError: the file names another Python object (and is not trusted).
        CheckpointFileError: the file is not a pickle (empty, truncated, another format).
    """
    with open(path, "rb") as f:
        try:
            return _NumpyUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as error:
            if "is not allowed" not in str(error):
                raise CheckpointFileError(f"{path}: not a readable .pkl model file ({error})") \
                    from None
            if not is_trusted(path):
                raise UntrustedFileError(untrusted_message(path, str(error).replace(
                    " is not allowed", ""))) from None
        except Exception as error:  # truncated or not a pickle: EOFError, KeyError, ValueError...
            raise CheckpointFileError(f"{path}: not a readable .pkl model file "
                                      f"({type(error).__name__}: {error})") from None
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")  # trusted by the user (TRUST_ENV)


# ----------------------------------------------------------------------------- TorchScript
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_CLASS_RE = re.compile(r"^class (\w+)\(Module\):\n  __parameters__ = \[([^\]]*)\]\n"
                       r"  __buffers__ = \[([^\]]*)\]", re.MULTILINE)


class _ScriptObject:
    """Inert stand-in for an object of a TorchScript class: keeps the pickled state only."""

    qualname = ""

    def __setstate__(self, state):
        self.state = state


class _StorageType:
    def __init__(self, dtype):
        self.dtype = dtype


def _identity(value, *args):
    return value


def _rebuild_tensor(storage, offset, size, stride, *args):
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


class _TorchScriptUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix
        self.classes: Dict[str, type] = {}

    def find_class(self, module, name):
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            if qualname not in self.classes:
                self.classes[qualname] = type(name, (_ScriptObject,), {"qualname": qualname})
            return self.classes[qualname]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch.jit._pickle" and name in (
                "build_intlist", "build_tensorlist", "build_doublelist", "build_boollist",
                "restore_type_tag"):
            return _identity
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        _, kind, key, _location, numel = pid
        raw = self.archive.read(f"{self.prefix}data/{key}")
        itemsize = torch.empty((), dtype=kind.dtype).element_size()
        if len(raw) != numel * itemsize:
            raise pickle.UnpicklingError(f"storage {key}: {len(raw)} bytes for {numel} elements")
        if not raw:
            return torch.empty(0, dtype=kind.dtype)
        return torch.frombuffer(bytearray(raw), dtype=kind.dtype)


def _declared_tensors(archive: zipfile.ZipFile, prefix: str) -> Dict[str, Tuple[List[str], ...]]:
    """{class qualified name: (parameter names, buffer names)} from the archive's code files."""
    declared = {}
    for name in archive.namelist():
        if not (name.startswith(prefix + "code/") and name.endswith(".py")):
            continue
        module = name[len(prefix + "code/"):-len(".py")].replace("/", ".")
        text = archive.read(name).decode("utf-8", errors="replace")
        for cls, params, buffers in _CLASS_RE.findall(text):
            declared[f"{module}.{cls}"] = tuple(re.findall(r'"([^"]+)"', s)
                                                for s in (params, buffers))
    return declared


def _collect(obj, prefix, declared, out, path):
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        return
    if obj.qualname not in declared:
        raise CheckpointFileError(f"{path}: TorchScript module {obj.qualname} has no "
                                  "__parameters__/__buffers__ declaration in the archive's code")
    params, buffers = declared[obj.qualname]
    for name in list(params) + list(buffers):
        value = state.get(name)
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
    for name, value in state.items():
        if isinstance(value, _ScriptObject):
            _collect(value, f"{prefix}{name}.", declared, out, path)


def read_torchscript_state_dict(path: str) -> "OrderedDict[str, torch.Tensor]":
    """The parameters and buffers of a TorchScript archive, as ``torch.jit.load(path)
    .state_dict()`` would give them, without compiling or running any code of the archive.

    Raises:
        UntrustedFileError: the archive's ``data.pkl`` names a global outside TorchScript's
            module and tensor types (and the file is not trusted).
        CheckpointFileError: the archive is damaged or not a TorchScript module.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            entries = [n for n in archive.namelist() if n.endswith("data.pkl")
                       and n.count("/") == 1]
            if len(entries) != 1:
                raise CheckpointFileError(f"{path}: a TorchScript archive needs one "
                                          f"<name>/data.pkl, found {entries}")
            prefix = entries[0][:-len("data.pkl")]
            declared = _declared_tensors(archive, prefix)
            root = _TorchScriptUnpickler(archive.read(entries[0]), archive, prefix).load()
    except pickle.UnpicklingError as error:
        if "is not allowed" not in str(error):
            raise CheckpointFileError(f"{path}: damaged TorchScript archive ({error})") from None
        if not is_trusted(path):
            raise UntrustedFileError(untrusted_message(
                path, str(error).replace(" is not allowed", ""))) from None
        module = torch.jit.load(path, map_location="cpu")  # trusted by the user (TRUST_ENV)
        return OrderedDict((k, v.detach()) for k, v in module.state_dict().items())
    except CheckpointFileError:
        raise
    except Exception as error:  # a damaged archive fails in many ways (zip, pickle, storages)
        raise CheckpointFileError(f"{path}: damaged TorchScript archive "
                                  f"({type(error).__name__}: {error})") from None
    if not isinstance(root, _ScriptObject):
        raise CheckpointFileError(f"{path}: the TorchScript archive holds no module")
    state_dict = OrderedDict()
    _collect(root, "", declared, state_dict, path)
    return state_dict
