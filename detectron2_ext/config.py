"""Config keys of ``detectron2_ext`` and a small helper for documented config keys.

``add_detectron2_ext_config(cfg)`` adds the soft-NMS switches of the box predictor under
``MODEL.ROI_HEADS``. The helper :class:`ConfigKey` / :func:`add_config_keys` lets a project declare
its keys as data (name, default, meaning, allowed values, reader), so that every key carries its
documentation and a test or a doc generator can read it from ``CONFIG_KEY_DOCS``.
"""

import copy
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List

from detectron2.config import CfgNode

__all__ = [
    "ConfigKey",
    "add_config_keys",
    "add_detectron2_ext_config",
    "format_config_keys_markdown",
    "CONFIG_KEYS",
    "CONFIG_KEY_DOCS",
]


@dataclass(frozen=True)
class ConfigKey:
    """One documented config key.

    Args:
        name: full dotted key, e.g. ``"MODEL.ROI_HEADS.SOFT_NMS_SIGMA"``.
        default: default value (deep-copied into every config).
        doc: what the key does.
        allowed: the values it accepts.
        used_by: the component that reads it; for a no-op key, a sentence saying so and why it
            exists.
    """

    name: str
    default: Any
    doc: str
    allowed: str
    used_by: str

    def full_doc(self) -> str:
        """Returns: one sentence block with meaning, allowed values and reader."""
        return f"{self.doc} Allowed: {self.allowed}. Read by: {self.used_by}."


def add_config_keys(cfg: CfgNode, keys: Iterable[ConfigKey]) -> None:
    """Add ``keys`` with their defaults to ``cfg`` in place; existing keys are left untouched.

    Missing intermediate nodes are created as ``CfgNode`` (new keys not allowed), so calling this
    twice, or after a yaml has set some of the keys, is harmless.

    Args:
        cfg: a detectron2 config (not frozen).
        keys: the keys to add.

    Raises:
        ValueError: if ``cfg`` is frozen, or a key's parent path exists but is not a config node.
    """
    if cfg.is_frozen():
        raise ValueError("Config is frozen: add config keys before cfg.freeze().")
    for key in keys:
        *parents, leaf = key.name.split(".")
        node = cfg
        for depth, part in enumerate(parents):
            if part not in node:
                node[part] = CfgNode()
            node = node[part]
            if not isinstance(node, CfgNode):
                path = ".".join(parents[: depth + 1])
                raise ValueError(
                    f"Cannot add config key {key.name}: {path} exists and is not a config node "
                    f"(found {type(node).__name__})."
                )
        if leaf not in node:
            node[leaf] = copy.deepcopy(key.default)


def format_config_keys_markdown(keys: Iterable[ConfigKey]) -> str:
    """Render keys as a markdown table (key, default, allowed values, meaning, used by).

    Args:
        keys: the keys to render, in table order.

    Returns:
        The table as a string ending with a newline.
    """

    def text(cell: str) -> str:
        return cell.replace("|", "\\|").replace("*", "\\*")

    rows: List[str] = [
        "| key | default | allowed values | meaning | used by |",
        "|---|---|---|---|---|",
    ]
    for key in keys:
        cells = [f"`{key.name}`", f"`{key.default!r}`"]
        cells += [text(key.allowed), text(key.doc), text(key.used_by)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


_SOFT_NMS = (
    "box-predictor inference through detectron2_ext.layers.soft_nms (e.g. RegionCLIP's "
    "CLIPFastRCNNOutputLayers)"
)

CONFIG_KEYS: List[ConfigKey] = [
    ConfigKey(
        "MODEL.ROI_HEADS.SOFT_NMS_ENABLED",
        False,
        "Use per-class soft-NMS instead of hard NMS when the box predictor post-processes "
        "detections at test time (the original's transfer-learning test scripts turn it on).",
        "True / False",
        _SOFT_NMS,
    ),
    ConfigKey(
        "MODEL.ROI_HEADS.SOFT_NMS_METHOD",
        "gaussian",
        "Score decay of soft-NMS: 'gaussian' multiplies by exp(-IoU^2 / SIGMA); 'linear' by "
        "(1 - IoU) when IoU > ROI_HEADS.NMS_THRESH_TEST; 'hard' drops boxes with IoU >= "
        "ROI_HEADS.NMS_THRESH_TEST (plain NMS).",
        "'gaussian', 'linear', 'hard'",
        _SOFT_NMS,
    ),
    ConfigKey(
        "MODEL.ROI_HEADS.SOFT_NMS_SIGMA",
        0.5,
        "Sigma of the gaussian decay exp(-IoU^2 / SIGMA) (the original divides by sigma, not "
        "2*sigma^2); ignored by 'linear' and 'hard'.",
        "float > 0",
        _SOFT_NMS,
    ),
    ConfigKey(
        "MODEL.ROI_HEADS.SOFT_NMS_PRUNE",
        0.001,
        "Boxes whose decayed score is <= this value are dropped during soft-NMS.",
        "float >= 0",
        _SOFT_NMS,
    ),
]

CONFIG_KEY_DOCS: Dict[str, str] = {key.name: key.full_doc() for key in CONFIG_KEYS}


def add_detectron2_ext_config(cfg: CfgNode) -> None:
    """Add the keys of ``detectron2_ext`` (soft-NMS switches) to ``cfg`` in place.

    Idempotent: keys already present keep their values.

    Args:
        cfg: a detectron2 config, e.g. from ``detectron2.config.get_cfg()``.
    """
    add_config_keys(cfg, CONFIG_KEYS)
