"""Which CLIP architecture a config builds: the original's depth flag, a preset, or a JSON file.

The original chose the CLIP model with ``MODEL.RESNETS.DEPTH`` (50 RN50, 101 RN101, 200 RN50x4)
and the teacher with ``MODEL.CLIP.TEACHER_RESNETS_DEPTH``. ``MODEL.CLIP.ARCH`` /
``MODEL.CLIP.TEACHER_ARCH`` (default empty: keep the depth flag) name a preset (``RN50``,
``RN101``, ``RN50x4``, ``RN50x16``, ``RN50x64``) or the path of a JSON file describing any CLIP
ResNet (e.g. the small models of the toy world)::

    {"visual": {"layers": [1, 1, 1, 1], "width": 16, "image_size": 64, "embed_dim": 64, "heads": 4},
     "text": {"width": 64, "heads": 2, "layers": 2, "embed_dim": 64, "context_length": 77,
              "vocab_size": 49408}}
"""
import dataclasses
import json
import os

from regionclip.clip import CLIPConfig, TextConfig, VisualConfig, get_preset, preset_for_depth
from regionclip.clip.model import PRESETS

__all__ = ["resolve_clip_arch", "clip_config_from_cfg", "save_clip_arch"]


def _from_json(path: str) -> CLIPConfig:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP architecture file '{path}' does not exist (expected a "
                                "preset "
                                f"name {sorted(PRESETS)} or a JSON file)")
    with open(path) as f:
        data = json.load(f)
    try:
        visual = dict(data["visual"])
        visual["layers"] = tuple(visual["layers"])
        return CLIPConfig(VisualConfig(**visual), TextConfig(**data["text"]))
    except (KeyError, TypeError) as e:
        fields = {"visual": [f.name for f in dataclasses.fields(VisualConfig)],
                  "text": [f.name for f in dataclasses.fields(TextConfig)]}
        raise ValueError(f"CLIP architecture file '{path}' is malformed ({e}); expected "
                         f"{{'visual': {fields['visual']}, 'text': {fields['text']}}}") from None


def resolve_clip_arch(arch: str, depth: int) -> CLIPConfig:
    """CLIP configuration from an ``ARCH`` value, or from the depth flag when ``arch`` is empty."""
    if not arch:
        return get_preset(preset_for_depth(depth))
    if arch in PRESETS:
        return get_preset(arch)
    return _from_json(arch)


def clip_config_from_cfg(cfg, teacher: bool = False) -> CLIPConfig:
    """The student's (or the teacher's) CLIP configuration of a detectron2 config."""
    if teacher:
        return resolve_clip_arch(cfg.MODEL.CLIP.TEACHER_ARCH, cfg.MODEL.CLIP.TEACHER_RESNETS_DEPTH)
    return resolve_clip_arch(cfg.MODEL.CLIP.ARCH, cfg.MODEL.RESNETS.DEPTH)


def save_clip_arch(config: CLIPConfig, path: str) -> str:
    """Write ``config`` as a JSON file readable by ``MODEL.CLIP.ARCH``."""
    data = {"visual": dataclasses.asdict(config.visual), "text": dataclasses.asdict(config.text)}
    data["visual"]["layers"] = list(data["visual"]["layers"])
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    return path
