"""Explicit key maps from CLIP checkpoints to RegionCLIP models.

Checkpoint keys are sorted into three *groups* by their prefix:

================== ============================================================================
group              checkpoint key prefixes (first match wins)
================== ============================================================================
student image      ``visual.`` (OpenAI), ``backbone.bottom_up.``, ``backbone.`` (model style)
teacher image      ``teacher_visual.``, ``teacher_backbone.bottom_up.``, ``teacher_backbone.``
text               top-level OpenAI text keys (``token_embedding.weight``,
                   ``positional_embedding``, ``transformer.resblocks.*``, ``ln_final.*``,
                   ``text_projection``), ``lang_encoder.``
================== ============================================================================

An image-group key must continue with a ModifiedResNet module name (``conv1`` .. ``bn3``,
``layer1`` .. ``layer4``, ``attnpool``) and a text-group key with a text-tower name; anything else
(``logit_scale``, FPN layers, ``offline_*``, ROI heads...) is *unused*. A group read from two
different prefixes in one checkpoint is an error.

Targets are decided by the model's own key names (never by a substring anywhere in the model):
the student group goes to ``backbone.bottom_up.`` if the model has such keys (FPN), else to
``backbone.``; the teacher group (or, when the checkpoint has none, the student group) goes to
``teacher_backbone.[bottom_up.]``; the text group goes to ``lang_encoder.``.
"""
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch
from torch import nn

__all__ = [
    "VISUAL_MODULE_NAMES", "ShapeMismatch", "ClipMappingReport", "group_clip_keys",
    "has_openai_clip_keys", "has_clip_groups", "map_clip_to_model",
]

logger = logging.getLogger(__name__)

VISUAL_MODULE_NAMES = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "layer1", "layer2",
                       "layer3", "layer4", "attnpool")
_TEXT_EXACT = ("positional_embedding", "text_projection", "token_embedding.weight",
               "ln_final.weight", "ln_final.bias")

_GROUP_SOURCES = {
    "student": ("visual.", "backbone.bottom_up.", "backbone."),
    "teacher": ("teacher_visual.", "teacher_backbone.bottom_up.", "teacher_backbone."),
    "text": ("lang_encoder.", ""),
}
_GROUP_TARGET = {"student": "backbone", "teacher": "teacher_backbone", "text": "lang_encoder"}


def _is_visual(name: str) -> bool:
    return name.split(".", 1)[0] in VISUAL_MODULE_NAMES and "." in name


def _is_text(name: str) -> bool:
    return name in _TEXT_EXACT or name.startswith("transformer.resblocks.")


def _classify(key: str) -> Optional[Tuple[str, str, str]]:
    """Returns (group, source prefix, name inside the tower) or None."""
    for group in ("teacher", "student", "text"):
        check = _is_text if group == "text" else _is_visual
        for prefix in _GROUP_SOURCES[group]:
            if key.startswith(prefix) and check(key[len(prefix):]):
                return group, prefix, key[len(prefix):]
    return None


def group_clip_keys(state_dict: Mapping[str, torch.Tensor]):
    """Sort checkpoint keys into the student / teacher / text groups.

    Args:
        state_dict (Mapping): checkpoint state dict.

    Returns:
        tuple[dict, list[str]]: ``{group: (source_prefix, {tower_name: checkpoint_key})}`` for the
        groups present, and the checkpoint keys that belong to no group.

    Raises:
        ValueError: if a group appears under two prefixes (e.g. ``visual.*`` and ``backbone.*``).
    """
    groups: Dict[str, Dict[str, Dict[str, str]]] = {}
    others = []
    for key in state_dict:
        found = _classify(key)
        if found is None:
            others.append(key)
            continue
        group, prefix, name = found
        groups.setdefault(group, {}).setdefault(prefix, {})[name] = key
    result = {}
    for group, by_prefix in groups.items():
        if len(by_prefix) > 1:
            shown = ", ".join(f"'{p or '<top level>'}*' ({len(v)} keys)"
                              for p, v in by_prefix.items())
            raise ValueError(f"The checkpoint holds the {group} weights under several prefixes: "
                             f"{shown}; expected one")
        (prefix, names), = by_prefix.items()
        result[group] = (prefix, names)
    return result, others


def has_openai_clip_keys(keys: Iterable[str]) -> bool:
    """Whether keys are OpenAI-style: ``visual.*`` image keys or top-level text-tower keys."""
    found = (_classify(k) for k in keys)
    return any(f is not None and f[1] in ("visual.", "teacher_visual.", "") for f in found)


def has_clip_groups(keys: Iterable[str]) -> bool:
    """Whether any key belongs to a CLIP group (OpenAI or model style)."""
    return any(_classify(k) is not None for k in keys)


class ShapeMismatch(NamedTuple):
    """A checkpoint tensor whose shape differs from the model's."""

    model_key: str
    checkpoint_key: str
    checkpoint_shape: Tuple[int, ...]
    model_shape: Tuple[int, ...]

    def __str__(self):
        return (f"{self.checkpoint_key} -> {self.model_key}: checkpoint {self.checkpoint_shape} "
                f"vs model {self.model_shape}")


@dataclass
class ClipMappingReport:
    """What :func:`map_clip_to_model` did.

    Attributes:
        loaded (dict[str, list[str]]): model keys filled, per target prefix.
        sources (dict[str, str]): where each target prefix's weights came from.
        missing (list[str]): model keys not filled (``offline_*`` keys excluded: they come from
            the second checkpoint).
        unused (list[str]): checkpoint keys used by no target (e.g. ``logit_scale``).
        ignored (list[str]): BatchNorm ``num_batches_tracked`` counters (FrozenBatchNorm2d has
            none).
        mismatched (list[ShapeMismatch]): checkpoint tensors whose shape differs from the model's.
    """

    loaded: Dict[str, List[str]] = field(default_factory=dict)
    sources: Dict[str, str] = field(default_factory=dict)
    missing: List[str] = field(default_factory=list)
    unused: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)
    mismatched: List[ShapeMismatch] = field(default_factory=list)

    def mismatch_message(self, limit: int = 20) -> str:
        """Returns: a readable list of the shape mismatches (at most ``limit`` lines)."""
        lines = [str(m) for m in self.mismatched[:limit]]
        if len(self.mismatched) > limit:
            lines.append(f"... and {len(self.mismatched) - limit} more")
        return "\n  ".join(lines)

    def summary(self, limit: int = 10) -> str:
        """Returns: a multi-line summary for the log."""
        def shown(keys):
            return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in total)"
                                              if len(keys) > limit else "")
        lines = ["CLIP checkpoint mapping:"]
        for target, keys in self.loaded.items():
            lines.append(f"  {target}*: {len(keys)} tensors from {self.sources[target]}")
        if self.mismatched:
            lines.append(f"  shape mismatches ({len(self.mismatched)}):\n  "
                         + self.mismatch_message())
        if self.missing:
            lines.append(f"  missing model keys ({len(self.missing)}): {shown(self.missing)}")
        if self.unused:
            lines.append(f"  unused checkpoint keys ({len(self.unused)}): {shown(self.unused)}")
        if self.ignored:
            lines.append(f"  ignored BatchNorm counters: {len(self.ignored)}")
        return "\n".join(lines)


ModelKeys = Union[nn.Module, Mapping[str, object], Iterable[str]]


def _model_shapes(model: ModelKeys) -> Dict[str, Optional[Tuple[int, ...]]]:
    if isinstance(model, nn.Module):
        model = model.state_dict()
    if isinstance(model, Mapping):
        return {k: (tuple(v.shape) if hasattr(v, "shape") else
                    (tuple(v) if v is not None else None)) for k, v in model.items()}
    return {k: None for k in model}


def _target_prefix(model_keys, name: str) -> Optional[str]:
    for prefix in (name + ".bottom_up.", name + "."):
        if any(k.startswith(prefix) for k in model_keys):
            return prefix
    return None


def map_clip_to_model(clip_state_dict: Mapping[str, torch.Tensor], model_keys_or_model: ModelKeys,
                      raise_on_mismatch: bool = True):
    """Rename CLIP checkpoint tensors to a model's keys (see the module docstring for the rules).

    Args:
        clip_state_dict (Mapping): checkpoint (OpenAI keys, a teacher copy, and/or model-style
            ``backbone.*`` / ``teacher_backbone.*`` / ``lang_encoder.*`` keys).
        model_keys_or_model: the model, its state dict, a ``{key: shape}`` dict, or its keys
            (without shapes nothing can be checked for shape).
        raise_on_mismatch (bool): raise ValueError listing every shape mismatch (key names and
            both shapes), e.g. RN50x4 weights for an RN50 model.

    Returns:
        tuple[OrderedDict, ClipMappingReport]: the renamed tensors (only keys the model has, with
        matching shapes) and the report.
    """
    shapes = _model_shapes(model_keys_or_model)
    groups, others = group_clip_keys(clip_state_dict)
    report = ClipMappingReport()
    plan = []
    for group in ("student", "teacher", "text"):
        target = _target_prefix(shapes, _GROUP_TARGET[group])
        source = group
        if group == "teacher" and "teacher" not in groups and "student" in groups:
            source = "student"
        if target is None or source not in groups:
            continue
        prefix, names = groups[source]
        note = f"'{prefix or '<top-level text keys>'}*'" + (
            " (the checkpoint has no teacher copy: student weights)" if source != group else "")
        plan.append((target, names, note))

    mapped = OrderedDict()
    used, bad = set(), set()
    for target, names, note in plan:
        report.sources[target] = note
        loaded = report.loaded.setdefault(target, [])
        for name, ckpt_key in names.items():
            model_key = target + name
            if model_key not in shapes:
                continue
            tensor = clip_state_dict[ckpt_key]
            if shapes[model_key] is not None and tuple(tensor.shape) != shapes[model_key]:
                report.mismatched.append(ShapeMismatch(model_key, ckpt_key, tuple(tensor.shape),
                                                       shapes[model_key]))
                bad.add(ckpt_key)
                continue
            mapped[model_key] = tensor
            loaded.append(model_key)
            used.add(ckpt_key)
    for key in clip_state_dict:
        if key in used or key in bad:
            continue
        (report.ignored if key.endswith(".num_batches_tracked") else report.unused).append(key)
    report.missing = [k for k in shapes if k not in mapped and not k.startswith("offline_")]
    if report.mismatched and raise_on_mismatch:
        raise ValueError(
            f"{len(report.mismatched)} checkpoint tensors do not fit the model (different "
            f"architecture? e.g. RN50x4 weights for an RN50 model: check MODEL.RESNETS.DEPTH and "
            f"MODEL.CLIP.TEACHER_RESNETS_DEPTH):\n  {report.mismatch_message()}")
    return mapped, report
