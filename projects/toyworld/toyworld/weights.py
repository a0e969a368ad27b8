"""The shipped toy detector: one small file with everything ``make demo`` needs.

:func:`pack_detector` stores a transfer detector (CLIP backbone, box regressor, frozen RPN) with
the text tower of its CLIP, the architecture JSON, the detector and RPN configs and the world's
class names, in float16. To stay a few MB it leaves out what inference never reads: the offline
RPN backbone's ``layer4`` (the RPN uses res4 features only) and the rows of the 49408 x D token
embedding table whose tokens never occur in the world's captions and prompts (they were never
trained). :func:`unpack_detector` writes ordinary files again (float32, left-out tensors as
zeros) that :class:`regionclip.RegionCLIP` loads.
"""
import json
import os
from typing import Dict, Sequence

import torch

from regionclip.checkpoint import extract_state_dict, read_torch_file

__all__ = ["FORMAT", "pack_detector", "unpack_detector"]

FORMAT = "regionclip-toyworld-detector-v1"
_TOKEN_KEY = "lang_encoder.token_embedding.weight"
_UNUSED_PREFIXES = ("offline_backbone.layer4.", "offline_backbone.attnpool.")
_DROPPED = ("roi_heads.box_predictor.test_cls_score.weight",)  # the demo sets its own vocabulary


def pack_detector(detector: str, clip: str, arch: str, config: str, rpn_config: str,
                  classes: Sequence[str], token_ids: torch.Tensor, path: str,
                  extra: Dict = None) -> str:
    """Write the package.

    Args:
        detector (str): ``model_final.pth`` of a transfer detector.
        clip (str): the OpenAI-format CLIP file whose text tower goes into ``lang_encoder``.
        arch (str): architecture JSON.
        config (str): the detector's resolved config yaml.
        rpn_config (str): the RPN's resolved config yaml.
        classes (sequence[str]): the world's category names (the demo's default vocabulary).
        token_ids (Tensor): token ids to keep in the token-embedding table.
        path (str): output file.
        extra (dict): more json-able information (e.g. settings, results).

    Returns:
        str: ``path``.
    """
    state = extract_state_dict(read_torch_file(detector), detector)
    for key in _DROPPED:
        state.pop(key, None)
    text = {k: v for k, v in read_torch_file(clip).items()
            if isinstance(v, torch.Tensor) and not k.startswith("visual.") and k != "logit_scale"}
    state.update({f"lang_encoder.{k}": v for k, v in text.items()})
    left_out = {k: list(v.shape) for k, v in state.items() if k.startswith(_UNUSED_PREFIXES)}
    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous()
               for k, v in state.items() if k not in left_out}
    rows = torch.unique(torch.as_tensor(token_ids, dtype=torch.long))
    table = tensors.pop(_TOKEN_KEY)
    with open(arch) as f:
        arch_json = json.load(f)
    with open(config) as f:
        config_yaml = f.read()
    with open(rpn_config) as f:
        rpn_yaml = f.read()
    payload = {"format": FORMAT, "tensors": tensors, "left_out": left_out,
               "token_rows": rows, "token_table": table[rows].clone(),
               "token_table_shape": list(table.shape), "arch": arch_json, "config": config_yaml,
               "rpn_config": rpn_yaml, "classes": list(classes), "extra": extra or {}}
    torch.save(payload, path)
    return path


def unpack_detector(path: str, out_dir: str) -> Dict[str, object]:
    """Write ``arch.json``, ``rpn.yaml``, ``detector.yaml`` and ``detector.pth`` from a package.

    Args:
        path (str): the package file.
        out_dir (str): where to write (created).

    Returns:
        dict: ``config``, ``weights`` (paths), ``classes`` (list), ``extra`` (dict).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"toy detector package '{path}' does not exist (run "
                                "`make toyworld` to produce it)")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"'{path}' is not a toy detector package (expected format {FORMAT})")
    from detectron2.config import get_cfg

    from regionclip.config import add_regionclip_config, drop_removed_keys

    os.makedirs(out_dir, exist_ok=True)
    arch = os.path.abspath(os.path.join(out_dir, "arch.json"))
    with open(arch, "w") as f:
        json.dump(payload["arch"], f, indent=1)
    files = {}
    for key, name in (("rpn_config", "rpn.yaml"), ("config", "detector.yaml")):
        cfg = get_cfg()
        add_regionclip_config(cfg)
        loaded = cfg.load_cfg(payload[key])
        drop_removed_keys(loaded, f"'{path}' {key}")  # written before regionclip dropped them
        cfg.merge_from_other_cfg(loaded)
        cfg.MODEL.CLIP.ARCH = arch
        cfg.MODEL.WEIGHTS = ""
        if key == "config":
            cfg.MODEL.CLIP.OFFLINE_RPN_CONFIG = files["rpn_config"]
            cfg.MODEL.CLIP.BB_RPN_WEIGHTS = ""  # the offline RPN is inside detector.pth
            cfg.MODEL.CLIP.TEXT_EMB_PATH = ""  # the base-class classifier is inside too
            cfg.MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH = ""
        files[key] = os.path.abspath(os.path.join(out_dir, name))
        with open(files[key], "w") as f:
            f.write(cfg.dump())
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["tensors"].items()}
    for key, shape in payload["left_out"].items():
        state[key] = torch.zeros(shape)
    table = torch.zeros(payload["token_table_shape"])
    table[payload["token_rows"]] = payload["token_table"].float()
    state[_TOKEN_KEY] = table
    weights = os.path.abspath(os.path.join(out_dir, "detector.pth"))
    torch.save({"model": state}, weights)
    return {"config": files["config"], "weights": weights, "classes": payload["classes"],
            "extra": payload["extra"]}
