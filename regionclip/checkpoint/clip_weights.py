"""Reading OpenAI CLIP files and converting them to detectron2-style RegionCLIP checkpoints."""
import dataclasses
import logging
import os
from collections import OrderedDict
from typing import Mapping, Optional, Tuple, Union

import torch
from torch import nn

from regionclip.clip import TextTransformer, infer_text_config, infer_visual_config
from regionclip.clip.model import OPENAI_METADATA_KEYS
from regionclip.modeling.backbone.clip_resnet import CLIPResNetBackbone

from .clip_keys import ClipMappingReport, group_clip_keys, has_clip_groups, map_clip_to_model
from .io import extract_state_dict, read_torch_file

__all__ = ["load_clip_state_dict", "convert_openai_clip", "build_clip_towers"]

logger = logging.getLogger(__name__)

StateDictSource = Union[str, os.PathLike, Mapping[str, torch.Tensor]]


def load_clip_state_dict(path: str) -> "OrderedDict[str, torch.Tensor]":
    """Read the weights of a CLIP checkpoint on the CPU.

    Accepted forms: OpenAI's TorchScript archive (parameters and buffers read without compiling
    or running its code, see :func:`read_torch_file`), a ``torch.save`` state dict with OpenAI
    key names (plain, or wrapped as ``{"model": sd}`` / ``{"state_dict": sd}``, ``module.``
    prefixes removed), the original's
    ``teacher_*_student_*_OAI_CLIP.pth`` files (OpenAI keys plus a teacher copy of the image tower
    under ``teacher_visual.*`` or ``teacher_backbone.*``), and files with model-style names
    (``backbone.*``, ``teacher_backbone.*``, ``lang_encoder.*``, e.g. RegionCLIP checkpoints).
    OpenAI's integer metadata (``input_resolution``, ``context_length``, ``vocab_size``) is dropped.

    Args:
        path (str): checkpoint file.

    Returns:
        OrderedDict[str, Tensor]: the tensors, keys as stored.

    Raises:
        ValueError: if the file holds neither CLIP nor model-style CLIP keys.
    """
    path = os.fspath(path)
    state_dict = extract_state_dict(read_torch_file(path), path)
    for key in OPENAI_METADATA_KEYS:
        state_dict.pop(key, None)
    if not has_clip_groups(state_dict):
        raise ValueError(
            f"{path}: neither OpenAI CLIP keys (visual.*, token_embedding.weight, transformer.*, "
            f"ln_final.*, text_projection, ...) nor model-style CLIP keys (backbone.*, "
            f"teacher_backbone.*, lang_encoder.*) found; first keys: {list(state_dict)[:8]}")
    return state_dict


def _as_state_dict(source: StateDictSource) -> Tuple["OrderedDict", str]:
    if isinstance(source, (str, os.PathLike)):
        return load_clip_state_dict(source), os.fspath(source)
    return OrderedDict(source), "<state dict>"


def _tower(state_dict, groups, group: str):
    _, names = groups[group]
    return OrderedDict((name, state_dict[key]) for name, key in names.items())


def build_clip_towers(student_visual, teacher_visual, text) -> nn.Module:
    """A container with the three CLIP towers under the pretraining model's names.

    Args:
        student_visual (VisualConfig): ``backbone`` (with attention pool).
        teacher_visual (VisualConfig): ``teacher_backbone`` (with attention pool).
        text (TextConfig): ``lang_encoder``.

    Returns:
        nn.Module: randomly initialised container; FrozenBatchNorm2d everywhere.
    """
    towers = nn.Module()
    towers.backbone = CLIPResNetBackbone(student_visual, ("res4",), with_attnpool=True)
    towers.teacher_backbone = CLIPResNetBackbone(teacher_visual, ("res4",), with_attnpool=True)
    towers.lang_encoder = TextTransformer(**dataclasses.asdict(text))
    return towers


def convert_openai_clip(student: StateDictSource, teacher: Optional[StateDictSource] = None,
                        ) -> Tuple[dict, ClipMappingReport]:
    """Convert CLIP weights to a detectron2-style checkpoint of the RegionCLIP towers.

    The result initialises ``backbone.*`` (student image tower, C4 names), ``teacher_backbone.*``
    and ``lang_encoder.*`` of the pretraining model; a detection model loads the same file (its
    missing teacher makes ``teacher_backbone.*`` unexpected keys). Architectures are inferred from
    the weights, so teacher and student may differ (e.g. RN50x4 teacher, RN50 student). Tensors
    are float32, and the state dict carries module versions so that detectron2's
    FrozenBatchNorm2d never resets statistics.

    Args:
        student: student CLIP file or state dict (its text tower becomes ``lang_encoder``).
        teacher: teacher CLIP file or state dict; default: the student source's teacher copy
            (``teacher_visual.*`` / ``teacher_backbone.*``) if it has one, else its image tower.

    Returns:
        tuple[dict, ClipMappingReport]: ``{"model": state_dict, "__author__": ...,
        "matching_heuristics": False}`` and the mapping report (e.g. unused ``logit_scale``).
    """
    student_sd, student_name = _as_state_dict(student)
    groups, others = group_clip_keys(student_sd)
    for group, what in (("student", "image-tower (visual.* / backbone.*)"),
                        ("text", "text-tower (token_embedding.weight, transformer.* ...)")):
        if group not in groups:
            raise ValueError(f"{student_name}: no {what} weights")
    if teacher is None:
        teacher_sd, teacher_name, teacher_groups = student_sd, student_name, groups
        teacher_group = "teacher" if "teacher" in groups else "student"
    else:
        teacher_sd, teacher_name = _as_state_dict(teacher)
        teacher_groups, _ = group_clip_keys(teacher_sd)
        teacher_group = "student" if "student" in teacher_groups else "teacher"
        if teacher_group not in teacher_groups:
            raise ValueError(f"{teacher_name}: no image-tower weights for the teacher")

    student_visual = _tower(student_sd, groups, "student")
    teacher_visual = _tower(teacher_sd, teacher_groups, teacher_group)
    text = _tower(student_sd, groups, "text")
    combined = OrderedDict()
    combined.update(("visual." + k, v) for k, v in student_visual.items())
    combined.update(("teacher_visual." + k, v) for k, v in teacher_visual.items())
    combined.update(text)
    combined.update((k, student_sd[k]) for k in others)

    towers = build_clip_towers(infer_visual_config(student_visual),
                               infer_visual_config(teacher_visual), infer_text_config(text))
    mapped, report = map_clip_to_model(combined, towers, raise_on_mismatch=True)
    if report.missing:
        raise ValueError(f"Conversion of {student_name} is incomplete; missing tensors: "
                         f"{report.missing[:10]} ({len(report.missing)} in total)")
    towers.load_state_dict(mapped, strict=True)
    logger.info("Converted %s (teacher image tower: %s)\n%s", student_name,
                f"{teacher_name} [{teacher_group}]", report.summary())
    author = f"regionclip convert_openai_clip (student: {os.path.basename(student_name)}, " \
             f"teacher: {os.path.basename(teacher_name)})"
    return {"model": towers.state_dict(), "__author__": author,
            "matching_heuristics": False}, report
