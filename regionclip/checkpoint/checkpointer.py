"""``RegionCLIPCheckpointer`` (``MODEL.WEIGHTS`` of any kind) and the second (offline RPN)
checkpoint."""
import copy
import logging
import os
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from regionclip.clip.model import OPENAI_METADATA_KEYS

from .clip_keys import ShapeMismatch, has_openai_clip_keys, map_clip_to_model
from .clip_weights import load_clip_state_dict
from .guards import check_backbone_shapes, drop_classifier_named_by_config
from .io import (
    CheckpointFileError,
    extract_state_dict,
    is_torchscript_archive,
    read_torch_file,
    rename_metadata,
)
from .resume_files import LAST_CHECKPOINT, choose_resume_checkpoint, write_atomically

__all__ = ["RegionCLIPCheckpointer", "OfflineLoadReport", "load_offline_rpn_weights",
           "OFFLINE_MODULES"]

logger = logging.getLogger(__name__)

_CLIP_FORMAT = "__regionclip_openai_clip_format__"

# Submodule name in the model -> checkpoint key prefixes loaded into it (first present wins).
OFFLINE_MODULES = {
    "offline_backbone": ("offline_backbone.", "backbone."),
    "offline_proposal_generator": ("offline_proposal_generator.", "proposal_generator."),
}


# Checkpoint prefixes of parts a model may legitimately lack: a RegionCLIP *pretrained*
# checkpoint loaded into CLIPFastRCNN carries its pretraining teacher and its text encoder.
_INTENTIONALLY_UNUSED = {
    "teacher_backbone.": "the pretraining teacher",
    "teacher_roi_heads.": "the pretraining teacher",
    "lang_encoder.": "the text encoder (built only with MODEL.CLIP.GET_CONCEPT_EMB)",
}
# Box-predictor tables a pretrained checkpoint lacks: they come from embedding files (or are 0).
_FROM_EMBEDDING_FILES = {f"roi_heads.box_predictor.{n}.weight"
                         for n in ("cls_score", "cls_bg_score", "test_cls_score")}


def _drop_intentionally_unused(state_dict, model, log):
    """Remove (and report once per prefix) checkpoint parts the model does not have on purpose."""
    own = set(model.state_dict().keys())
    for prefix, what in _INTENTIONALLY_UNUSED.items():
        if any(k.startswith(prefix) for k in own):
            continue
        keys = [k for k in state_dict if k.startswith(prefix)]
        if keys:
            log.info("Intentionally unused: %d %s* tensors of the checkpoint (%s)", len(keys),
                     prefix, what)
            for k in keys:
                del state_dict[k]


def _model_zoo_pkl(data, path: str) -> dict:
    """detectron2's reading of a ``.pkl`` model file, on data read without running code."""
    if not isinstance(data, Mapping):
        raise CheckpointFileError(f"{path}: a .pkl model file holds a dict, got "
                                  f"{type(data).__name__}")
    if "model" in data and "__author__" in data:  # detectron2 model zoo
        return dict(data)
    blobs = data.get("blobs", data)  # Caffe2 / Detectron: detection models keep them in "blobs"
    return {"model": {k: v for k, v in blobs.items() if not k.endswith("_momentum")},
            "__author__": "Caffe2", "matching_heuristics": True}


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, (DataParallel, DistributedDataParallel)) else model


class RegionCLIPCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that also loads OpenAI CLIP weights into RegionCLIP models.

    * detectron2 / RegionCLIP checkpoints (model-style keys such as ``backbone.*``,
      ``lang_encoder.*``, ``offline_*``; also files written by ``tools/convert_openai_clip.py``)
      load by exact keys, exactly like ``DetectionCheckpointer``.
    * OpenAI-format content, recognised by its keys (``visual.*`` image-tower keys or top-level
      text-tower keys such as ``token_embedding.weight``; not by the file name), in a TorchScript
      archive, a plain state dict or the original's ``*_OAI_CLIP.pth`` files, goes through
      :func:`map_clip_to_model`; the report is logged, shape mismatches raise. The renamed state
      dict carries the model's module versions, so FrozenBatchNorm2d layers without entries in the
      file keep their statistics (no legacy reset to 0/1).
    * Checkpoints and ``last_checkpoint`` are written atomically; resuming reads the newest
      intact checkpoint when the one named in ``last_checkpoint`` is torn or that file is empty
      (:mod:`regionclip.checkpoint.resume_files`).

    The constructor arguments are those of ``DetectionCheckpointer``.
    """

    def _local_dir(self) -> bool:
        return bool(self.save_dir) and os.path.isdir(self.save_dir)

    def save(self, name: str, **kwargs) -> None:
        """As ``Checkpointer.save``, written atomically (a temporary file renamed when complete)."""
        if not self.save_dir or not self.save_to_disk:
            return
        if not self._local_dir():  # another storage of detectron2's PathManager
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        data.update((key, obj.state_dict()) for key, obj in self.checkpointables.items())
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        write_atomically(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._local_dir():
            return super().tag_last_checkpoint(last_filename_basename)
        write_atomically(os.path.join(self.save_dir, LAST_CHECKPOINT),
                         lambda f: f.write(last_filename_basename.encode("utf-8")))

    def get_checkpoint_file(self) -> str:
        """The checkpoint to resume from: the one named in ``last_checkpoint`` if it is intact,
        else the newest intact one (logged); "" if there is no ``last_checkpoint``."""
        if not self._local_dir():
            return super().get_checkpoint_file()
        return choose_resume_checkpoint(self.save_dir, self.logger)

    def _load_file(self, filename):
        self._loading = filename
        if os.path.isfile(filename) and filename.endswith(".pkl") \
                and not zipfile.is_zipfile(filename):
            return _model_zoo_pkl(read_torch_file(filename), filename)
        if is_torchscript_archive(filename):
            return {"model": load_clip_state_dict(filename), _CLIP_FORMAT: True,
                    "__author__": "OpenAI CLIP (TorchScript archive)"}
        loaded = super()._load_file(filename)
        state_dict = loaded["model"]
        if isinstance(state_dict.get("state_dict"), Mapping):
            loaded["model"] = state_dict = extract_state_dict(state_dict, filename)
        model_keys = _unwrap(self.model).state_dict().keys()
        if has_openai_clip_keys(state_dict) and not has_openai_clip_keys(model_keys):
            state_dict = extract_state_dict(state_dict, filename)
            for key in OPENAI_METADATA_KEYS:
                state_dict.pop(key, None)
            loaded = {"model": state_dict, _CLIP_FORMAT: True,
                      "__author__": loaded.get("__author__", "OpenAI CLIP")}
        return loaded

    def _torch_load(self, f):
        # DetectionCheckpointer's hook for plain torch files: no code stored in the file runs
        # (refused unless REGIONCLIP_TRUST_PICKLE names the file; see read_torch_file)
        loaded = read_torch_file(f)
        if not isinstance(loaded, Mapping):
            raise CheckpointFileError(f"{f} holds a {type(loaded).__name__}, not a checkpoint (a "
                                      f"dict of tensors, or a dict with a 'model' state dict)")
        return loaded

    def _load_model(self, checkpoint):
        model = _unwrap(self.model)
        if not checkpoint.get(_CLIP_FORMAT, False):
            _drop_intentionally_unused(checkpoint["model"], model, self.logger)
            drop_classifier_named_by_config(checkpoint["model"], model, self.logger)
            if not checkpoint.get("matching_heuristics", False):
                check_backbone_shapes(checkpoint["model"], model.state_dict(),
                                      getattr(self, "_loading", "the checkpoint"))
        if checkpoint.pop(_CLIP_FORMAT, False):
            model = _unwrap(self.model)
            mapped, report = map_clip_to_model(checkpoint["model"], model, raise_on_mismatch=True)
            self.logger.info(report.summary())
            mapped._metadata = copy.deepcopy(getattr(model.state_dict(), "_metadata", {}))
            checkpoint["model"] = mapped
            checkpoint["matching_heuristics"] = False
        return super()._load_model(checkpoint)

    def _log_incompatible_keys(self, incompatible):
        expected = [k for k in incompatible.missing_keys if k in _FROM_EMBEDDING_FILES]
        if expected:
            self.logger.info("Not in the checkpoint, as expected: %s (text-embedding classifier "
                             "from MODEL.CLIP.TEXT_EMB_PATH / OPENSET_TEST_TEXT_EMB_PATH; constant "
                             "zero background embedding)", ", ".join(expected))
            for k in expected:
                incompatible.missing_keys.remove(k)
        super()._log_incompatible_keys(incompatible)

    def load_offline_rpn_weights(self, path: str, strict: bool = False) -> "OfflineLoadReport":
        """:func:`load_offline_rpn_weights` on this checkpointer's model."""
        return load_offline_rpn_weights(self.model, path, strict=strict)


@dataclass
class OfflineLoadReport:
    """What :func:`load_offline_rpn_weights` loaded.

    Attributes:
        loaded (dict[str, list[str]]): keys loaded per offline submodule (submodule-relative).
        missing (dict[str, list[str]]): submodule keys absent from the file.
        unexpected (dict[str, list[str]]): file keys the submodule does not have.
        dropped (list[str]): file keys that belong to no offline submodule (ROI heads, ...).
    """

    loaded: Dict[str, List[str]] = field(default_factory=dict)
    missing: Dict[str, List[str]] = field(default_factory=dict)
    unexpected: Dict[str, List[str]] = field(default_factory=dict)
    dropped: List[str] = field(default_factory=list)


def _split_offline(state_dict, path):
    """Assign file keys to the offline submodules; returns ({module: sd}, dropped keys)."""
    has_offline = any(k.startswith(("offline_backbone.", "offline_proposal_generator."))
                      for k in state_dict)
    parts, dropped = {}, []
    for key, value in state_dict.items():
        for module, prefixes in OFFLINE_MODULES.items():
            prefix = prefixes[0] if has_offline else prefixes[1]
            if key.startswith(prefix):
                parts.setdefault(module, OrderedDict())[key[len(prefix):]] = value
                break
        else:
            dropped.append(key)
    for module, part in parts.items():
        prefix = OFFLINE_MODULES[module][0 if has_offline else 1]
        part._metadata = rename_metadata(
            state_dict, lambda name, p=prefix: name[len(p):] if name.startswith(p) else
            ("" if name == p[:-1] else None))
    if not parts:
        raise ValueError(f"{path}: no backbone.* / proposal_generator.* (or offline_backbone.* / "
                         f"offline_proposal_generator.*) keys; first keys: {list(state_dict)[:8]}")
    return parts, dropped


def load_offline_rpn_weights(model: nn.Module, path: str,
                             strict: bool = False) -> OfflineLoadReport:
    """Load the second checkpoint (``MODEL.CLIP.BB_RPN_WEIGHTS``) into the offline branch only.

    Keys ``backbone.*`` go to ``model.offline_backbone`` and ``proposal_generator.*`` to
    ``model.offline_proposal_generator`` (a detectron2 RPN / Mask R-CNN checkpoint); if the file
    already has ``offline_backbone.*`` / ``offline_proposal_generator.*`` keys (a RegionCLIP
    checkpoint) those are used instead. Everything else is dropped (reported). Each submodule
    loads its part with its own ``load_state_dict``, so the recognition backbone is never touched:
    its FrozenBatchNorm2d statistics cannot be reset (the original needed an ``ignore_others`` hack
    in detectron2 for this). Module versions stored in the file are kept.

    Args:
        model (nn.Module): model with ``offline_backbone`` and/or ``offline_proposal_generator``.
        path (str): detectron2 checkpoint file (``.pth`` or ``.pkl``).
        strict (bool): raise if a submodule misses keys or the file has unexpected ones.

    Returns:
        OfflineLoadReport: the report (also logged).
    """
    model = _unwrap(model)
    modules = {name: getattr(model, name, None) for name in OFFLINE_MODULES}
    if all(m is None for m in modules.values()):
        raise ValueError(f"Cannot load {path} as offline RPN weights: {type(model).__name__} has "
                         f"no offline_backbone / offline_proposal_generator (they exist only when "
                         f"MODEL.CLIP.CROP_REGION_TYPE is 'RPN', built from "
                         f"MODEL.CLIP.OFFLINE_RPN_CONFIG)")
    state_dict = extract_state_dict(read_torch_file(path), path)
    parts, dropped = _split_offline(state_dict, path)
    report = OfflineLoadReport(dropped=dropped)
    mismatched = []
    for name, module in modules.items():
        own = module.state_dict() if module is not None else {}
        mismatched += [ShapeMismatch(f"{name}.{k}", k, tuple(v.shape), tuple(own[k].shape))
                       for k, v in parts.get(name, {}).items()
                       if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        raise ValueError(f"{path}: {len(mismatched)} tensors do not fit the offline branch (does "
                         f"MODEL.CLIP.OFFLINE_RPN_CONFIG describe this checkpoint?):\n  "
                         + "\n  ".join(str(m) for m in mismatched[:20]))
    for name, module in modules.items():
        part = parts.get(name, OrderedDict())
        if module is None:
            report.unexpected[name] = list(part)
            continue
        result = module.load_state_dict(part, strict=False)
        report.loaded[name] = [k for k in part if k not in result.unexpected_keys]
        report.missing[name] = list(result.missing_keys)
        report.unexpected[name] = list(result.unexpected_keys)
    problems = {k: v for k, v in {**{f"missing in {n}": m for n, m in report.missing.items()},
                                  **{f"unexpected for {n}": u for n, u in report.unexpected.items()}
                                  }.items() if v}
    logger.info("Offline RPN weights from %s: %s; dropped %d keys of other modules", path,
                {n: len(k) for n, k in report.loaded.items()}, len(dropped))
    for what, keys in problems.items():
        logger.warning("Offline RPN weights from %s: %d keys %s: %s", path, len(keys), what,
                       keys[:10])
    if strict and problems:
        raise ValueError(f"{path}: offline RPN weights do not match the model: {problems}")
    return report
