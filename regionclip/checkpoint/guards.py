"""Checks made when a checkpoint is loaded into a model, so that a wrong file is never used
silently.

* :func:`drop_classifier_named_by_config`: the text-embedding files the config names
  (``MODEL.CLIP.TEXT_EMB_PATH`` / ``OPENSET_TEST_TEXT_EMB_PATH``) win over a classifier stored
  in the checkpoint (the original let the checkpoint overwrite them when the shapes matched).
* :func:`check_backbone_shapes`: a detectron2 / RegionCLIP checkpoint whose backbone or text
  tower tensors do not fit the model is an error naming the architecture the file looks like
  (detectron2 would skip them with a warning and leave random weights); heads of other shapes
  are still skipped with detectron2's warning, as when fine-tuning to other classes.
"""
import logging
import math
import re
from typing import Dict, List, Mapping, Optional, Tuple

from regionclip.clip.model import PRESETS

__all__ = ["BACKBONE_PREFIXES", "CLASSIFIER_TABLES", "drop_classifier_named_by_config",
           "describe_tower", "resnet_depth", "check_backbone_shapes"]

logger = logging.getLogger(__name__)

# Model parts whose tensors must fit: a mismatch means another architecture, not other classes.
BACKBONE_PREFIXES = ("backbone.", "teacher_backbone.", "offline_backbone.", "lang_encoder.")
# Classifier tables of CLIPFastRCNNOutputLayers that embedding files fill.
CLASSIFIER_TABLES = ("cls_score", "test_cls_score")


def drop_classifier_named_by_config(state_dict: Dict, model, log=logger) -> List[str]:
    """Remove the checkpoint's classifier tables that the config fills from embedding files.

    Args:
        state_dict (dict): checkpoint state dict (changed in place).
        model: the model; its ``roi_heads.box_predictor.text_emb_files`` maps a table name to
            ``(config key, file)``.
        log: logger for the message.

    Returns:
        list[str]: the removed checkpoint keys.
    """
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    files = getattr(predictor, "text_emb_files", None) or {}
    removed = []
    for table, (key, path) in files.items():
        name = f"roi_heads.box_predictor.{table}.weight"
        if name in state_dict:
            shape = tuple(state_dict.pop(name).shape)
            removed.append(name)
            log.info("%s = %s is used for %s; the checkpoint's own %s %s is ignored (the "
                     "embedding files the config names take precedence)", key, path, table, name,
                     shape)
    return removed


def _strip(state_dict: Mapping, prefix: str) -> Dict:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _blocks(state_dict: Mapping, pattern: str) -> int:
    return len({m.group(1) for m in (re.match(pattern, k) for k in state_dict) if m})


def _describe_clip_resnet(sd: Mapping) -> Optional[str]:
    if "conv1.weight" not in sd or "layer1.0.conv1.weight" not in sd:
        return None
    width = sd["conv1.weight"].shape[0] * 2
    layers = tuple(_blocks(sd, rf"layer{i}\.(\d+)\.") for i in range(1, 5))
    name = next((n for n, c in PRESETS.items()
                 if c.visual.layers == layers and c.visual.width == width), None)
    text = f"CLIP {name}" if name else f"a CLIP ResNet (blocks {list(layers)}, width {width})"
    if "attnpool.positional_embedding" in sd:
        cells = sd["attnpool.positional_embedding"].shape[0] - 1
        grid = math.isqrt(max(cells, 0))
        text += (f" with a {grid * 32}-px attention pool ({grid}x{grid})" if grid * grid == cells
                 else f" with an attention pool of {cells} positions")
        if "attnpool.c_proj.weight" in sd:
            text += f", embedding {sd['attnpool.c_proj.weight'].shape[0]}"
    return text


def resnet_depth(sd: Mapping) -> Optional[int]:
    """Depth of the detectron2 ResNet of ``sd`` (keys ``res2.*`` ...), from its res2-res4 blocks
    (res5 may be in the ROI heads, as in C4 models) and its block type; None if unknown."""
    blocks = tuple(_blocks(sd, rf"res{i}\.(\d+)\.") for i in (2, 3, 4))
    bottleneck = any(".conv3." in k for k in sd)
    return {((3, 4, 6), True): 50, ((3, 4, 23), True): 101, ((3, 8, 36), True): 152,
            ((3, 4, 6), False): 34, ((2, 2, 2), False): 18}.get((blocks, bottleneck))


def _describe_detectron2_resnet(sd: Mapping) -> Optional[str]:
    if "stem.conv1.weight" not in sd:
        return None
    blocks = [_blocks(sd, rf"res{i}\.(\d+)\.") for i in range(2, 6)]
    depth = resnet_depth(sd)
    kind = f"ResNet-{depth}" if depth else f"ResNet with blocks {blocks}"
    stages = [f"res{i}" for i, n in zip(range(2, 6), blocks) if n]
    return f"a detectron2 {kind} (stages {', '.join(stages) or 'none'})"


def _describe_text(sd: Mapping) -> Optional[str]:
    if "token_embedding.weight" not in sd:
        return None
    width = sd["token_embedding.weight"].shape[1]
    layers = _blocks(sd, r"transformer\.resblocks\.(\d+)\.")
    name = next((n for n, c in PRESETS.items() if c.text.width == width), None)
    return (f"the CLIP {name} text tower" if name else "a CLIP text tower") + \
        f" (width {width}, {layers} layers)"


def describe_tower(state_dict: Mapping, prefix: str) -> str:
    """A short description of the architecture of ``state_dict``'s tensors under ``prefix``,
    e.g. "CLIP RN50x4 with a 288-px attention pool (9x9), embedding 640"."""
    sd = _strip(state_dict, prefix)
    for inner in (sd, _strip(sd, "bottom_up.")):
        for describe in (_describe_clip_resnet, _describe_detectron2_resnet, _describe_text):
            text = describe(inner)
            if text:
                return text + (" with an FPN" if any(k.startswith("fpn_") for k in sd) else "")
    return f"{len(sd)} tensors of an unrecognised architecture"


def check_backbone_shapes(state_dict: Mapping, model_state: Mapping, path: str) -> None:
    """Raise if tensors of the backbones or the text tower do not fit the model.

    Args:
        state_dict (Mapping): checkpoint state dict (model key names).
        model_state (Mapping): the model's state dict.
        path (str): checkpoint file, for the message.

    Raises:
        ValueError: naming the architecture of the file and of the model, and the tensors.
    """
    wrong: List[Tuple[str, tuple, tuple]] = []
    for key, value in state_dict.items():
        own = model_state.get(key)
        if own is None or not key.startswith(BACKBONE_PREFIXES) or not hasattr(value, "shape"):
            continue
        if tuple(value.shape) != tuple(own.shape):
            wrong.append((key, tuple(value.shape), tuple(own.shape)))
    if not wrong:
        return
    lines = []
    for prefix in BACKBONE_PREFIXES:
        if any(k.startswith(prefix) for k, _, _ in wrong):
            lines.append(f"{prefix}* of the checkpoint: {describe_tower(state_dict, prefix)}; "
                         f"of the model: {describe_tower(model_state, prefix)}")
    shown = "\n  ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in wrong[:10])
    more = f"\n  ... and {len(wrong) - 10} more" if len(wrong) > 10 else ""
    raise ValueError(
        f"{path} is a checkpoint of another architecture: {len(wrong)} backbone / text-tower "
        f"tensors do not fit the model, and loading it would leave them random.\n"
        + "\n".join(lines) + f"\n  {shown}{more}\nBuild the model the file was made for (check "
        f"MODEL.RESNETS.DEPTH, MODEL.CLIP.ARCH / TEACHER_ARCH, MODEL.CLIP.TEXT_EMB_DIM and the "
        f"offline RPN config) or use the checkpoint that matches the config.")
