"""Checks that torch and detectron2 are importable and recent enough, with an actionable message."""
import importlib

MIN_TORCH = (2, 0)
MIN_DETECTRON2 = (0, 6)
HOWTO = "Run `make install` in the RegionCLIP checkout (see docs/INSTALL.md)."


def _version_tuple(text):
    parts = []
    for piece in str(text).split("+")[0].split("."):
        digits = ""
        for ch in piece:  # leading digits only: "0rc1" -> 0
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _require(module_name, minimum, what):
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(f"RegionCLIP needs {what} >= {'.'.join(map(str, minimum))}, but "
                          f"`import {module_name}` failed ({e}). {HOWTO}") from None
    version = getattr(module, "__version__", "0")
    if _version_tuple(version) < minimum:
        raise ImportError(f"RegionCLIP needs {what} >= {'.'.join(map(str, minimum))}; found "
                          f"{version} at {getattr(module, '__file__', '?')}. {HOWTO}")
    return module


def check_dependencies():
    """Raise a clear ImportError when torch or detectron2 is missing or too old."""
    _require("torch", MIN_TORCH, "PyTorch")
    _require("torchvision", (0, 15), "torchvision")
    _require("detectron2", MIN_DETECTRON2, "detectron2")
