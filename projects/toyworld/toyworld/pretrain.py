"""Stage 3: RegionCLIP pretraining of a student initialised from the teacher CLIP.

``PretrainFastRCNN`` (projects/toyworld/configs/pretrain.yaml) on the world's image-caption pairs:
the frozen toy RPN proposes regions, the frozen teacher labels them with concepts of the pool (the
caption nouns, embedded by the teacher's text tower with prompt ensembling), and the student
learns them with the distillation and region-concept contrastive losses plus the image-caption
contrastive loss. Batches are built in memory in the pretraining loader's format (``image`` RGB
in [0, 1], ``captions`` token rows); scenes are not flipped (captions may say "left").

Outputs: ``concepts.txt`` / ``concept_emb.pth`` (the pool), ``model_final.pth`` (the whole
pretraining model) and ``student_clip.pth``: the student image tower with the (frozen) text
tower in OpenAI's key format, loadable exactly like the teacher's ``clip.pth``.
"""
import logging
import os
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch
from detectron2.modeling import build_model

from regionclip.checkpoint import read_torch_file
from regionclip.engine.trainer import load_model_weights

from .common import (
    resize_scene,
    save_trained,
    scale_anchors,
    stage_cfg,
    stage_input_size,
    train_loop,
    write_json,
)
from .crop_teacher import CropTeacherPretrainFastRCNN
from .text import load_clip, text_embeddings
from .train_clip import tokenize_captions
from .true_labels import TrueLabelPretrainFastRCNN, label_targets

__all__ = ["pretrain_cfg", "pretrain_batches", "export_student_clip", "pretrain_student"]

logger = logging.getLogger(__name__)


def offline_rpn_config(settings, rpn_config: str, out_dir: str) -> str:
    """The stage-2 RPN's config for pretraining: itself when pretraining sees images at the RPN's
    input size, else a copy in ``out_dir`` whose anchors are scaled as the objects are."""
    from detectron2.config import get_cfg

    from regionclip.config import add_regionclip_config
    from regionclip.yaml_config import merge_config_file

    scale = stage_input_size(settings, settings.PRETRAIN) / stage_input_size(settings)
    if scale == 1:
        return os.path.abspath(rpn_config)
    cfg = get_cfg()
    add_regionclip_config(cfg)
    merge_config_file(cfg, rpn_config, "OFFLINE_RPN_CONFIG")
    scale_anchors(cfg, scale)
    path = os.path.abspath(os.path.join(out_dir, "offline_rpn_config.yaml"))
    with open(path, "w") as f:
        f.write(cfg.dump())
    return path


def pretrain_cfg(settings, clip_paths: Dict[str, str], rpn_paths: Dict[str, str], pool: str,
                 clss_temp: float = None):
    """detectron2 config of RegionCLIP pretraining for this run."""
    arch = os.path.abspath(clip_paths["arch"])
    rpn_config = offline_rpn_config(settings, rpn_paths["config"], os.path.dirname(pool))
    temp = [] if clss_temp is None else ["MODEL.CLIP.CLSS_TEMP", float(clss_temp)]
    if settings.PRETRAIN.TEACHER_CROPS:  # outside the original method: a control (crop_teacher)
        temp += ["MODEL.META_ARCHITECTURE", CropTeacherPretrainFastRCNN.__name__]
    if settings.PRETRAIN.TRUE_LABELS:  # outside the original method: a control (true_labels)
        temp += ["MODEL.META_ARCHITECTURE", TrueLabelPretrainFastRCNN.__name__]
    return stage_cfg(settings, settings.PRETRAIN, temp + [
        "MODEL.CLIP.ARCH", arch, "MODEL.CLIP.TEACHER_ARCH", arch,
        "MODEL.WEIGHTS", os.path.abspath(clip_paths["weights"]),
        "MODEL.CLIP.OFFLINE_RPN_CONFIG", rpn_config,
        "MODEL.CLIP.BB_RPN_WEIGHTS", os.path.abspath(rpn_paths["weights"]),
        "MODEL.CLIP.CONCEPT_POOL_EMB", os.path.abspath(pool)])


def build_pretrain_model(cfg):
    """The pretraining model of ``cfg`` with its weights: student and teacher from
    ``MODEL.WEIGHTS``, the offline RPN from ``MODEL.CLIP.BB_RPN_WEIGHTS``."""
    model = build_model(cfg)
    load_model_weights(cfg, model)
    return model


def pretrain_batches(images: np.ndarray, tokens: torch.Tensor, batch_size: int,
                     seed: int, size: int = 0,
                     targets: Optional[List[dict]] = None) -> Iterator[List[dict]]:
    """Endless shuffled batches ``[{"image": (3, H, W) in [0, 1], "captions": (n, 77)}, ...]``,
    images resized to ``size`` (:func:`~.common.resize_scene`); ``targets`` (per image, a dict
    of more entries, e.g. :func:`~.true_labels.label_targets`) are added to each input."""
    rng = np.random.default_rng(seed)
    n = len(images)
    if n < batch_size:
        raise ValueError(f"{n} image-caption pairs are fewer than one batch of {batch_size}")
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield [{"image": torch.from_numpy(resize_scene(images[i], size)[0].transpose(2, 0, 1)
                                              .copy()).float() / 255.0,
                    "captions": tokens[i], **(targets[i] if targets else {})}
                   for i in order[start:start + batch_size]]


def export_student_clip(model, teacher_weights: str, path: str) -> str:
    """Write the student's image tower + the text tower as an OpenAI-format CLIP state dict.

    Keys and every non-image entry come from the teacher file (the text tower is frozen in
    pretraining, so it is the teacher's); ``visual.*`` come from ``model.backbone``.
    """
    state = dict(read_torch_file(teacher_weights))
    student = model.backbone.state_dict()
    for key in [k for k in state if k.startswith("visual.")]:
        name = key[len("visual."):]
        if name in student:
            state[key] = student[name].detach().clone().contiguous()
        elif not name.endswith("num_batches_tracked"):
            raise KeyError(f"the student backbone has no '{name}' (teacher key {key})")
    text = model.lang_encoder.state_dict() if model.lang_encoder is not None else {}
    for name, value in text.items():
        if name in state:
            state[name] = value.detach().clone()
    torch.save(state, path)
    return path


def pretrain_student(settings, world, clip_paths: Dict[str, str], rpn_paths: Dict[str, str],
                     out_dir: str, progress: bool = True,
                     clss_temp: float = None) -> Dict[str, str]:
    """Run RegionCLIP pretraining; write the files of the module doc and ``metrics.json``.

    Args:
        settings (CfgNode): toy-world settings.
        world (World): the generated world.
        clip_paths (dict): stage-1 outputs (``arch``, ``weights``).
        rpn_paths (dict): stage-2 outputs (``config``, ``weights``).
        out_dir (str): stage folder.
        progress (bool): show a progress bar.
        clss_temp (float): temperature of the three losses (default: the config's).

    Returns:
        dict: paths of ``concepts``, ``pool``, ``model``, ``weights`` (student CLIP), ``config``,
        ``metrics``.
    """
    os.makedirs(out_dir, exist_ok=True)
    concepts = world.concepts()
    teacher = load_clip(clip_paths["arch"], clip_paths["weights"])
    pool = os.path.join(out_dir, "concept_emb.pth")
    torch.save(text_embeddings(teacher.encode_text, concepts, settings.EVAL.PROMPTS), pool)
    with open(os.path.join(out_dir, "concepts.txt"), "w") as f:
        f.write("".join(f"{c}\n" for c in concepts))
    cfg = pretrain_cfg(settings, clip_paths, rpn_paths, pool, clss_temp)
    torch.manual_seed(settings.SEED)
    model = build_pretrain_model(cfg)
    images = world.images("captions")
    tokens = tokenize_captions(world.captions("captions"))
    targets = None
    if settings.PRETRAIN.TRUE_LABELS:  # the control's right labels (toyworld.true_labels)
        classes = (world.class_names if settings.PRETRAIN.TRUE_LABELS == "all"
                   else world.base_classes)
        scale = (cfg.INPUT.MAX_SIZE_TRAIN or images.shape[1]) / images.shape[1]
        targets = label_targets(world.boxes("captions_all"), world.class_names, concepts,
                                classes, scale)
    batches = pretrain_batches(images, tokens, cfg.SOLVER.IMS_PER_BATCH, settings.SEED,
                               size=cfg.INPUT.MAX_SIZE_TRAIN, targets=targets)
    history = train_loop(model, cfg, batches, "stage 3: RegionCLIP pretraining", progress)
    model_path, config = save_trained(model, cfg, out_dir)
    weights = export_student_clip(model, clip_paths["weights"],
                                  os.path.join(out_dir, "student_clip.pth"))
    write_json(os.path.join(out_dir, "metrics.json"), {"loss": history, "concepts": len(concepts)})
    logger.info("RegionCLIP pretraining: %d iterations, last losses %s", len(history), history[-1])
    return {"concepts": os.path.join(out_dir, "concepts.txt"), "pool": pool, "model": model_path,
            "weights": weights, "config": config, "metrics": os.path.join(out_dir, "metrics.json")}
