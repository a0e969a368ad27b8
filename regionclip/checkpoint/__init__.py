"""Checkpoint loading: OpenAI CLIP files, RegionCLIP/detectron2 checkpoints, the offline RPN.

* :func:`load_clip_state_dict` reads OpenAI CLIP files (TorchScript archive or state dict) and
  the original's ``*_OAI_CLIP.pth`` files.
* :func:`map_clip_to_model` renames CLIP keys to a model's keys by explicit rules and reports
  loaded / missing / unused / shape-mismatched keys.
* :func:`convert_openai_clip` writes a detectron2-style checkpoint of the three CLIP towers.
* :class:`RegionCLIPCheckpointer` loads ``MODEL.WEIGHTS`` of any of these kinds.
* :func:`load_offline_rpn_weights` loads ``MODEL.CLIP.BB_RPN_WEIGHTS`` into the offline branch.
* :func:`load_model_weights` loads both for a model built from a config.

Every file is read without running code stored in it (:func:`read_torch_file`); a file that
needs full unpickling is refused (:class:`UntrustedFileError`) unless the environment variable
``REGIONCLIP_TRUST_PICKLE`` names it (docs/RELIABILITY.md).
"""
from .checkpointer import (
    OFFLINE_MODULES,
    OfflineLoadReport,
    RegionCLIPCheckpointer,
    load_offline_rpn_weights,
)
from .clip_keys import (
    ClipMappingReport,
    ShapeMismatch,
    group_clip_keys,
    has_openai_clip_keys,
    map_clip_to_model,
)
from .clip_weights import build_clip_towers, convert_openai_clip, load_clip_state_dict
from .io import extract_state_dict, is_torchscript_archive, read_torch_file
from .model_weights import load_model_weights, load_text_encoder_weights
from .safe_pickle import TRUST_ENV, CheckpointFileError, UntrustedFileError

__all__ = [
    "OFFLINE_MODULES", "OfflineLoadReport", "RegionCLIPCheckpointer", "load_offline_rpn_weights",
    "ClipMappingReport", "ShapeMismatch", "group_clip_keys", "has_openai_clip_keys",
    "map_clip_to_model", "build_clip_towers", "convert_openai_clip", "load_clip_state_dict",
    "extract_state_dict", "is_torchscript_archive", "read_torch_file", "load_model_weights",
    "load_text_encoder_weights",
    "TRUST_ENV", "CheckpointFileError", "UntrustedFileError",
]
