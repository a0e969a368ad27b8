"""Reading yaml config files with a safe YAML loader only.

detectron2's ``CfgNode.merge_from_file`` retries a file that ``yaml.safe_load`` refuses with
``yaml.unsafe_load``, so a Python tag (``!!python/object/apply:os.system [...]``) in a config, or
in one of its ``_BASE_`` files, runs code. :func:`merge_config_file` reads the file and its bases
with ``yaml.safe_load`` only and turns every problem into a message naming the file: Python tags,
invalid yaml, a file that is not a mapping of keys, a Python (LazyConfig) ``.py`` config.
"""
import os
import tempfile
from typing import Any, Dict, List

import yaml

__all__ = ["ConfigFileError", "read_yaml_file", "merge_config_file", "packaged_configs_dir",
           "packaged_configs", "find_config_file"]

BASE_KEY = "_BASE_"
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def packaged_configs_dir() -> str:
    """The folder of the configs that ship with the package (``regionclip/configs``: the checkout's
    ``configs/`` folder, copied into the wheel; the checkout's own folder if the package has none,
    e.g. a checkout where the link ``regionclip/configs -> ../configs`` is a plain file)."""
    inside = os.path.join(_PACKAGE, "configs")
    if os.path.isdir(inside):
        return inside
    return os.path.join(os.path.dirname(_PACKAGE), "configs")


def packaged_configs() -> List[str]:
    """Names of the packaged configs, relative to :func:`packaged_configs_dir`, e.g.
    ``COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd_zsinf.yaml``."""
    root = packaged_configs_dir()
    found = []
    for folder, _, files in os.walk(root):
        found += [os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/")
                  for f in files if f.endswith(".yaml")]
    return sorted(found)


def find_config_file(name: str) -> str:
    """``name`` itself if it is a file; else the packaged config of that name (a leading
    ``./`` and ``configs/`` are ignored, so the original's ``./configs/...`` paths work from any
    folder); else ``name`` unchanged (readers then report it missing; an unset name, None or
    "", too)."""
    if not name:
        return name
    name = os.fspath(name)
    if os.path.isfile(name):
        return name
    relative = name.replace("\\", "/")
    for prefix in ("./", "configs/"):
        if relative.startswith(prefix):
            relative = relative[len(prefix):]
    packaged = os.path.join(packaged_configs_dir(), relative)
    return packaged if not os.path.isabs(relative) and os.path.isfile(packaged) else name


class ConfigFileError(ValueError):
    """A config file that cannot be used (Python tags, invalid yaml, not a key mapping)."""


def _base_path(base: str, including: str) -> str:
    # as fvcore resolves _BASE_: "~" expanded; a relative path is relative to the including file
    base = os.path.expanduser(base)
    if base.startswith(("/", "https://", "http://")):
        return base
    return os.path.join(os.path.dirname(including), base)


def read_yaml_file(path: str, what: str = "config file") -> Dict[str, Any]:
    """Parse one yaml config file with ``yaml.safe_load``.

    Args:
        path (str): the file.
        what (str): how the user named it (e.g. ``--config-file``), for messages.

    Returns:
        dict: its content (``_BASE_`` not resolved).

    Raises:
        FileNotFoundError, ConfigFileError.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} '{path}' does not exist (neither a file nor the name of "
                                f"a config packaged with regionclip, e.g. "
                                f"'COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd_zsinf.yaml'"
                                f"; see regionclip.yaml_config.packaged_configs())")
    if path.endswith(".py"):
        raise ConfigFileError(
            f"{what} '{path}' is a Python config (detectron2 LazyConfig); RegionCLIP reads yaml "
            f"configs (detectron2 CfgNode), e.g. the files under configs/")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.constructor.ConstructorError as error:
        mark = error.problem_mark
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigFileError(
            f"{path}{line} ({what}): {error.problem}. Config files are read with "
            f"yaml.safe_load only: Python tags such as !!python/object/apply are refused, "
            f"because reading them runs code. Write the value as plain yaml (numbers, strings, "
            f"lists, mappings).") from None
    except yaml.YAMLError as error:
        raise ConfigFileError(f"{what} '{path}' is not valid yaml: {error}") from None
    except UnicodeDecodeError as error:
        raise ConfigFileError(f"{what} '{path}' is not a text file ({error})") from None
    if data is None:
        raise ConfigFileError(f"{what} '{path}' is empty")
    if not isinstance(data, dict):
        raise ConfigFileError(f"{what} '{path}' must be a yaml mapping of config keys (e.g. "
                              f"'MODEL:' ...), got a {type(data).__name__}")
    return data


def _check_tree(path: str, what: str, chain: List[str]) -> None:
    if os.path.realpath(path) in chain:
        raise ConfigFileError(f"{what} '{path}' includes itself through {BASE_KEY}: "
                              + " -> ".join(chain + [path]))
    data = read_yaml_file(path, what)
    bases = data.get(BASE_KEY, [])
    for base in [bases] if isinstance(bases, str) else list(bases):
        if not isinstance(base, str):
            raise ConfigFileError(f"{path}: {BASE_KEY} must be a file name or a list of them, "
                                  f"got {base!r}")
        _check_tree(_base_path(base, path), f"{BASE_KEY} of {path}",
                    chain + [os.path.realpath(path)])


def merge_config_file(cfg, path: str, what: str = "config file") -> None:
    """Merge a yaml config (and its ``_BASE_`` files) into ``cfg``, reading yaml safely only.

    Args:
        cfg (CfgNode): a detectron2 config (not frozen).
        path (str): the yaml file, or the name of a packaged config (:func:`find_config_file`).
        what (str): how the user named it (e.g. ``--config-file``,
            ``MODEL.CLIP.OFFLINE_RPN_CONFIG``), for messages.

    Raises:
        FileNotFoundError: the file or one of its bases does not exist.
        ConfigFileError: a Python tag, invalid yaml, a ``.py`` config or a file that is not a
            mapping, naming the file (and the line of a tag).
    """
    from .config import drop_removed_keys

    path = find_config_file(path)
    _check_tree(path, what, [])
    # every file parses with safe_load; allow_unsafe=False keeps detectron2 from ever retrying
    # with yaml.unsafe_load
    loaded = cfg.load_yaml_with_base(path, allow_unsafe=False)
    if not drop_removed_keys(loaded, f"{what} '{path}'"):
        cfg.merge_from_file(path, allow_unsafe=False)
        return
    # a dump of an older version: merge it without its removed keys (bases already resolved),
    # through detectron2's merge_from_file so that its VERSION handling applies
    with tempfile.TemporaryDirectory() as folder:
        pruned = os.path.join(folder, os.path.basename(path))
        with open(pruned, "w", encoding="utf-8") as f:
            yaml.safe_dump(loaded, f)
        cfg.merge_from_file(pruned, allow_unsafe=False)
