"""Is this file the one a model needs? Checks of a checkpoint's keys and shapes made before any
weight of it is loaded (the model zoo runs them on every file it uses).

The file is read with the project's safe reader (:func:`read_torch_file`) with its tensors memory
mapped (``torch.save`` zip files), so that only keys and shapes are read; a truncated or damaged
file fails here, with a message naming it. Each check raises :class:`WrongFileError` naming the
file, what it was expected to be and what it looks like.

Kinds of files (those of the original's ``pretrained_ckpt/`` folders):

* ``clip``: OpenAI CLIP weights (``visual.*`` and text-tower keys) of a CLIP architecture;
* ``pretrained``: a RegionCLIP pretrained checkpoint: CLIP image tower under ``backbone.*`` and
  text tower under ``lang_encoder.*``;
* ``detector``: a transfer-learned RegionCLIP detector: ``backbone.*`` and a trained box
  regressor ``roi_heads.box_predictor.bbox_pred.*`` (no text tower);
* ``rpn``: a detectron2 Mask R-CNN whose ``backbone.*`` and ``proposal_generator.*`` make the
  offline RPN, architecture ``R<depth>-C4``, ``R<depth>-FPN`` or ``CLIP-<preset>-FPN``;
* ``embeddings``: one float tensor (rows, D), D the CLIP architecture's embedding size.
"""
import re
from typing import Dict, Mapping, Optional

import torch

from regionclip.clip.model import (
    PRESETS,
    CLIPConfig,
    infer_text_config,
    infer_visual_config,
    split_clip_state_dict,
)

from .guards import describe_tower, resnet_depth
from .io import extract_state_dict, read_torch_file

__all__ = ["WrongFileError", "KINDS", "read_shapes", "check_file", "check_state_dict"]

KINDS = ("clip", "pretrained", "detector", "rpn", "embeddings")
BOX_REGRESSOR = "roi_heads.box_predictor.bbox_pred.weight"


class WrongFileError(ValueError):
    """A file whose keys or shapes are not those of the model that names it."""


def read_shapes(path: str) -> Dict[str, torch.Tensor]:
    """The tensors of ``path`` (memory mapped where possible: use their keys and shapes, not their
    values); a file holding one tensor gives ``{"": tensor}``."""
    obj = read_torch_file(path, mmap=True)
    if isinstance(obj, torch.Tensor):
        return {"": obj}
    return {k: v for k, v in extract_state_dict(obj, path).items() if hasattr(v, "shape")}


def _strip(sd: Mapping, prefix: str) -> Dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _arch_name(config: CLIPConfig) -> str:
    return next((f"CLIP {n}" for n, c in PRESETS.items() if c == config),
                f"a CLIP ResNet (blocks {list(config.visual.layers)}, width "
                f"{config.visual.width}, {config.visual.image_size} px, embedding "
                f"{config.embed_dim})")


def _visual_fits(sd: Mapping, config: CLIPConfig) -> bool:
    try:
        found = infer_visual_config(sd)
    except (KeyError, ValueError):
        return False
    want = config.visual
    return (found.layers, found.width, found.image_size, found.embed_dim) == \
        (tuple(want.layers), want.width, want.image_size, want.embed_dim)


def _text_fits(sd: Mapping, config: CLIPConfig) -> bool:
    try:
        found = infer_text_config(sd)
    except (KeyError, ValueError):
        return False
    want = config.text
    return (found.width, found.layers, found.embed_dim) == (want.width, want.layers,
                                                            want.embed_dim)


def _looks_like(sd: Mapping) -> str:
    """What a state dict looks like, for messages."""
    if "" in sd:
        return f"one tensor of shape {tuple(sd[''].shape)} (an embedding file)"
    if any(k.startswith("visual.") for k in sd):
        return f"OpenAI CLIP weights ({describe_tower(sd, 'visual.')})"
    image = describe_tower(sd, "backbone.") if any(k.startswith("backbone.") for k in sd) else None
    if any(k.startswith("lang_encoder.") for k in sd):
        return f"a RegionCLIP pretrained checkpoint ({image})"
    if any(k.startswith("proposal_generator.") for k in sd):
        return f"a detectron2 RPN / Mask R-CNN checkpoint ({image})"
    if BOX_REGRESSOR in sd:
        return f"a RegionCLIP detector checkpoint ({image})"
    return f"{len(sd)} tensors (first keys {list(sd)[:5]})"


def _check_rpn(sd: Mapping, arch: str) -> Optional[str]:
    """None if ``sd`` is an RPN of ``arch``, else what is wrong."""
    if not any(k.startswith("proposal_generator.") for k in sd):
        return "it has no proposal_generator.* (RPN) tensors"
    found = re.fullmatch(r"(?:R(\d+)|CLIP-(\w+))-(C4|FPN)", arch)
    if found is None:
        raise ValueError(f"RPN architecture {arch!r}: expected R<depth>-C4, R<depth>-FPN or "
                         f"CLIP-<preset>-FPN")
    depth, preset, neck = found.groups()
    backbone = _strip(sd, "backbone.")
    has_fpn = any(k.startswith("fpn_") for k in backbone)
    if has_fpn != (neck == "FPN"):
        return f"its backbone has {'an' if has_fpn else 'no'} FPN"
    body = _strip(backbone, "bottom_up.") if has_fpn else backbone
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"RPN architecture {arch!r}: unknown CLIP preset {preset!r}")
        want = PRESETS[preset].visual
        if "conv1.weight" not in body:
            return "its backbone is not a CLIP ResNet"
        layers = tuple(len({m.group(1) for m in (re.match(rf"layer{i}\.(\d+)\.", k)
                                                  for k in body) if m}) for i in range(1, 5))
        if (layers, body["conv1.weight"].shape[0] * 2) != (tuple(want.layers), want.width):
            return f"its backbone is {describe_tower(body, '')}"
    elif resnet_depth(body) != int(depth):
        return f"its backbone is {describe_tower(backbone, '')}"
    return None


def _check_embeddings(sd: Mapping, config: CLIPConfig, rows: Optional[int]) -> Optional[str]:
    tensor = sd.get("")
    if tensor is None:
        return "it is a checkpoint, not one tensor"
    shape = tuple(tensor.shape)
    if len(shape) != 2 or shape[1] != config.embed_dim or (rows and shape[0] != rows):
        return f"its tensor has shape {shape}"
    if not tensor.is_floating_point():
        return f"its tensor is {tensor.dtype}, not floating point"
    return None


def _check_towers(sd: Mapping, kind: str, config: CLIPConfig) -> Optional[str]:
    """None if ``sd`` is a ``clip``, ``pretrained`` or ``detector`` file of ``config``."""
    if "" in sd:
        return "it holds one tensor, not a checkpoint"
    image, text = ("visual.", "") if kind == "clip" else ("backbone.", "lang_encoder.")
    if kind == "clip":
        visual, text_sd = split_clip_state_dict(sd)
    else:
        visual, text_sd = _strip(sd, image), _strip(sd, text)
    if kind == "pretrained" and not text_sd:
        return "it has no lang_encoder.* (text encoder) tensors"
    if kind == "detector" and BOX_REGRESSOR not in sd:
        return f"it has no {BOX_REGRESSOR} (trained box regressor)"
    if not _visual_fits(visual, config):
        return f"its image tower ({image}*) is {describe_tower(sd, image)}"
    if kind != "detector" and not _text_fits(text_sd, config):
        return f"its text tower is {describe_tower(text_sd, '')}"
    return None


EXPECTED = {"clip": "OpenAI CLIP weights",
            "pretrained": "a RegionCLIP pretrained checkpoint (backbone.* and lang_encoder.*)",
            "detector": "a RegionCLIP detector checkpoint (backbone.* and "
                        "roi_heads.box_predictor.*)"}


def check_file(path: str, kind: str, arch, rows: Optional[int] = None,
               name: Optional[str] = None, rpn_arch: Optional[str] = None) -> Dict:
    """Raise :class:`WrongFileError` unless ``path`` is a ``kind`` file of architecture ``arch``
    (:func:`read_shapes`, then :func:`check_state_dict`).

    Args:
        path (str): the file.
        kind (str): one of :data:`KINDS`.
        arch: a :class:`CLIPConfig` (``clip``, ``pretrained``, ``detector``, ``embeddings``) or an
            RPN architecture string (``rpn``, e.g. ``"R50-FPN"``).
        rows (int or None): ``embeddings``: the number of rows (classes) expected.
        name (str or None): what the file is for (e.g. the model's name), for messages.
        rpn_arch (str or None): ``pretrained`` / ``detector``: the file must also hold an offline
            RPN (``offline_backbone.*``, ``offline_proposal_generator.*``) of this architecture.

    Returns:
        dict: the file's tensors by key (memory mapped; see :func:`read_shapes`).

    Raises:
        WrongFileError: naming the file, the expectation and what the file looks like.
        CheckpointFileError: the file is empty, truncated or not a checkpoint.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown file kind {kind!r}; expected one of {KINDS}")
    sd = read_shapes(path)
    check_state_dict(sd, path, kind, arch, rows, name, rpn_arch)
    return sd


def check_state_dict(sd: Mapping, path: str, kind: str, arch, rows: Optional[int] = None,
                     name: Optional[str] = None, rpn_arch: Optional[str] = None) -> None:
    """:func:`check_file` of the tensors ``sd`` already read from ``path``."""
    if kind not in KINDS:
        raise ValueError(f"unknown file kind {kind!r}; expected one of {KINDS}")
    if kind == "rpn":
        expected = f"an offline RPN checkpoint ({arch})"
        problem = _check_rpn(sd, arch)
    elif kind == "embeddings":
        expected = f"an embedding file: one tensor ({rows if rows else 'N'}, {arch.embed_dim})"
        problem = _check_embeddings(sd, arch, rows)
    else:
        expected = f"{EXPECTED[kind]} of {_arch_name(arch)}"
        problem = _check_towers(sd, kind, arch)
        if problem is None and rpn_arch is not None:
            expected += f" holding an offline RPN ({rpn_arch})"
            offline = {k[len("offline_"):]: v for k, v in sd.items() if k.startswith("offline_")}
            problem = _check_rpn(offline, rpn_arch)
            if problem:
                problem = problem.replace("proposal_generator.*", "offline_proposal_generator.*")
                problem = problem.replace("its backbone", "its offline_backbone")
    if problem:
        for_ = f" for {name}" if name else ""
        raise WrongFileError(f"{path} is not {expected}{for_}: {problem}; it looks like "
                             f"{_looks_like(sd)}. Check that the file under this name is the "
                             f"right one (see pretrained_ckpt/README.md).")
