"""Pieces every stage shares: seeding, detectron2 configs of a stage, training (detectron2's
``SimpleTrainer``), batches."""
import json
import logging
import math
import os
import random
import time
from typing import Callable, Dict, Iterator, List, Sequence

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.data.transforms import ResizeTransform
from detectron2.engine import HookBase, SimpleTrainer
from detectron2.engine.hooks import LRScheduler
from detectron2.solver import build_lr_scheduler
from detectron2.solver.build import get_default_optimizer_params
from detectron2.structures import Boxes, Instances

from regionclip.config import add_regionclip_config
from regionclip.yaml_config import merge_config_file

from .settings import resolve_path

__all__ = ["seed_everything", "stage_input_size", "scale_anchors", "stage_cfg",
           "teacher_temperature", "build_adamw", "train_loop", "save_trained", "resize_scene",
           "detection_inputs", "detection_batches", "write_json", "read_json", "Timer"]

logger = logging.getLogger(__name__)


def seed_everything(seed: int, num_threads: int = 0, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; fix the thread count; prefer deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if num_threads:
        torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def stage_input_size(settings, stage_node=None) -> int:
    """Input size of a stage: its own ``INPUT_SIZE`` if set, else ``INPUT_SIZE``, else
    ``WORLD.IMAGE_SIZE``."""
    own = stage_node.get("INPUT_SIZE", 0) if stage_node is not None else 0
    return int(own or settings.INPUT_SIZE or settings.WORLD.IMAGE_SIZE)


def scale_anchors(cfg, scale: float):
    """Multiply the anchor sizes of a detectron2 config by ``scale`` (objects drawn ``scale``
    times larger); returns ``cfg``."""
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[round(s * scale, 2) for s in sizes]
                                        for sizes in cfg.MODEL.ANCHOR_GENERATOR.SIZES]
    return cfg


def stage_cfg(settings, stage_node, opts: Sequence = ()):
    """detectron2 config of a stage: its yaml, the stage's solver settings, sizes that follow
    from the settings (input size ``INPUT_SIZE``, pooler resolution = 2 x CLIP's attention-pool
    grid, embedding and res2 widths), then ``opts``.

    Args:
        settings (CfgNode): toy-world settings (for the CLIP architecture sizes).
        stage_node (CfgNode): ``settings.RPN`` / ``PRETRAIN`` / ``TRANSFER`` / ``EVAL``.
        opts (sequence): ``KEY VALUE`` overrides (paths of this run); the stage's own
            ``OPTS`` come last.

    Returns:
        CfgNode: the config (not frozen), ``MODEL.DEVICE`` cpu.
    """
    cfg = get_cfg()
    add_regionclip_config(cfg)
    merge_config_file(cfg, resolve_path(stage_node.CONFIG), "CONFIG")
    solver = []
    for key, value in (("ITERS", "SOLVER.MAX_ITER"), ("BATCH_SIZE", "SOLVER.IMS_PER_BATCH"),
                       ("LR", "SOLVER.BASE_LR")):
        if key in stage_node:
            solver += [value, stage_node[key]]
    grid = settings.WORLD.IMAGE_SIZE // 32  # res5 halves pooled regions to the attention grid
    size = stage_input_size(settings, stage_node)
    world = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.RES2_OUT_CHANNELS", 4 * settings.CLIP.WIDTH,
             "MODEL.CLIP.TEXT_EMB_DIM", settings.CLIP.EMBED_DIM,
             "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 2 * grid,
             "MODEL.CLIP.TEACHER_POOLER_RESOLUTION", 2 * grid,
             "INPUT.MIN_SIZE_TRAIN", (size,), "INPUT.MAX_SIZE_TRAIN", size,
             "INPUT.MIN_SIZE_TEST", size, "INPUT.MAX_SIZE_TEST", size]
    cfg.merge_from_list(solver + world + list(opts) + [str(v) for v in stage_node.OPTS])
    return cfg


def teacher_temperature(settings, clip_metrics: str) -> float:
    """``settings.CLSS_TEMP``, or when it is 0 the teacher CLIP's learned temperature (its
    ``1 / logit_scale`` in stage 1's ``metrics.json``)."""
    if settings.CLSS_TEMP:
        return float(settings.CLSS_TEMP)
    return 1.0 / float(read_json(clip_metrics)["logit_scale"])


def build_adamw(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (no weight decay on norms and biases)."""
    params = get_default_optimizer_params(model, base_lr=cfg.SOLVER.BASE_LR,
                                          weight_decay_norm=0.0, bias_lr_factor=1.0,
                                          weight_decay_bias=0.0)
    for group in params:
        group.setdefault("weight_decay", cfg.SOLVER.WEIGHT_DECAY)
    return torch.optim.AdamW(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)


class _LossRecorder(torch.nn.Module):
    """The model, recording the losses of every iteration (detectron2's ``SimpleTrainer``: "if
    you want to do something with the losses, you can wrap the model")."""

    def __init__(self, model: torch.nn.Module, desc: str, loss_fn: Callable = None):
        super().__init__()
        self.model = model
        self.desc = desc
        self.loss_fn = loss_fn
        self.history: List[Dict[str, float]] = []

    def forward(self, batch):
        losses = self.loss_fn(self.model, batch) if self.loss_fn else self.model(batch)
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"{self.desc}: non-finite loss {losses} at iteration "
                                     f"{len(self.history)}")
        record = {k: float(v.detach()) for k, v in losses.items()}
        record["total"] = float(total.detach())
        self.history.append(record)
        return losses


class _ClipGradients(HookBase):
    """``SOLVER.CLIP_GRADIENTS`` applied after the backward pass, over all trainable parameters
    at once (``norm``: their global norm). detectron2's own clipping
    (``maybe_add_gradient_clipping``) clips each parameter separately; the toy pipeline has always
    clipped the global norm, so it keeps doing so."""

    def __init__(self, params: List[torch.Tensor], clip):
        self.params, self.clip = params, clip
        if clip.CLIP_TYPE not in ("norm", "value"):
            raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be 'norm' or 'value', got "
                             f"{clip.CLIP_TYPE!r}")

    def after_backward(self):
        if self.clip.CLIP_TYPE == "norm":
            torch.nn.utils.clip_grad_norm_(self.params, self.clip.CLIP_VALUE)
        else:
            torch.nn.utils.clip_grad_value_(self.params, self.clip.CLIP_VALUE)


class _ProgressBar(HookBase):
    def __init__(self, recorder: _LossRecorder, total: int, desc: str, enabled: bool):
        from tqdm import tqdm

        self.recorder = recorder
        self.bar = tqdm(total=total, desc=desc, disable=not enabled, leave=False)

    def after_step(self):
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{self.recorder.history[-1]['total']:.3f}")

    def after_train(self):
        self.bar.close()


def train_loop(model: torch.nn.Module, cfg, batches: Iterator[List[dict]], desc: str,
               progress: bool = True, loss_fn: Callable = None) -> List[Dict[str, float]]:
    """Train ``model`` for ``cfg.SOLVER.MAX_ITER`` iterations with detectron2's ``SimpleTrainer``:
    AdamW (:func:`build_adamw`), the config's LR schedule (detectron2's ``LRScheduler`` hook) and
    gradient clipping (:class:`_ClipGradients`).

    Args:
        model: a detectron2 model (returns a dict of losses in training mode).
        cfg: its config (``SOLVER.*``: ``BASE_LR``, ``WEIGHT_DECAY``, schedule, gradient clipping).
        batches: iterator of input lists.
        desc (str): progress-bar label.
        progress (bool): show the bar.
        loss_fn (callable): ``loss_fn(model, batch) -> dict`` instead of ``model(batch)``.

    Returns:
        list[dict]: losses of every iteration (floats), ``"total"`` included.
    """
    optimizer = build_adamw(cfg, model)
    recorder = _LossRecorder(model, desc, loss_fn)
    trainer = SimpleTrainer(recorder, batches, optimizer)  # sets the model to training mode
    hooks = [LRScheduler(optimizer, build_lr_scheduler(cfg, optimizer))]
    if cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
        hooks.insert(0, _ClipGradients([p for p in model.parameters() if p.requires_grad],
                                       cfg.SOLVER.CLIP_GRADIENTS))
    hooks.append(_ProgressBar(recorder, cfg.SOLVER.MAX_ITER, desc, progress))
    trainer.register_hooks(hooks)
    trainer.train(0, cfg.SOLVER.MAX_ITER)
    return recorder.history


def resize_scene(img: np.ndarray, size: int = 0, box: np.ndarray = None):
    """A square scene (H, W, 3 uint8) and its XYXY boxes resized to ``size`` pixels with
    detectron2's ``ResizeTransform`` (PIL bilinear, as ``ResizeShortestEdge`` does); ``size`` 0
    or equal to the scene's keeps both."""
    h, w = img.shape[:2]
    if not size or (h, w) == (size, size):
        return img, box
    t = ResizeTransform(h, w, size, size)
    return t.apply_image(np.ascontiguousarray(img)), (None if box is None else
                                                      t.apply_box(box).astype(np.float32))


def detection_inputs(images: np.ndarray, boxes: List[dict], index: int, flip: bool = False,
                     with_instances: bool = True, size: int = 0) -> dict:
    """detectron2 input dict of one image (float CHW RGB in 0..255, optional gt instances),
    resized to ``size`` (:func:`resize_scene`); ``height``/``width`` stay the scene's, so that
    outputs come back in its pixels."""
    img = images[index]
    box = boxes[index]["boxes"].copy() if with_instances else None
    if flip:
        img = img[:, ::-1]
        if box is not None:
            w = img.shape[1]
            box[:, [0, 2]] = w - box[:, [2, 0]]
    h, w = img.shape[:2]
    img, box = resize_scene(img, size, box)
    out = {"image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float(),
           "height": h, "width": w, "image_id": index + 1}
    if with_instances:
        inst = Instances(img.shape[:2])
        inst.gt_boxes = Boxes(torch.from_numpy(box))
        inst.gt_classes = torch.from_numpy(boxes[index]["classes"].copy())
        out["instances"] = inst
    return out


def detection_batches(images: np.ndarray, boxes: List[dict], batch_size: int, seed: int,
                      flip: bool = True, class_agnostic: bool = False,
                      size: int = 0) -> Iterator[List[dict]]:
    """Endless shuffled batches of detection inputs (random horizontal flips, resized to
    ``size``); images without boxes are skipped like detectron2's ``FILTER_EMPTY_ANNOTATIONS``."""
    rng = np.random.default_rng(seed)
    keep = [i for i, b in enumerate(boxes) if len(b["boxes"])]
    if not keep:
        raise ValueError("no training image has a box")
    while True:
        order = rng.permutation(keep)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            batch = []
            for i in order[start:start + batch_size]:
                x = detection_inputs(images, boxes, int(i), bool(flip and rng.random() < 0.5),
                                     size=size)
                if class_agnostic:
                    x["instances"].gt_classes = torch.zeros_like(x["instances"].gt_classes)
                batch.append(x)
            yield batch


def save_trained(model: torch.nn.Module, cfg, folder: str):
    """Write ``model_final.pth`` (detectron2 checkpoint format) and ``config.yaml`` of a trained
    stage; returns their paths."""
    weights = os.path.join(folder, "model_final.pth")
    torch.save({"model": model.state_dict(), "iteration": cfg.SOLVER.MAX_ITER}, weights)
    config = os.path.join(folder, "config.yaml")
    with open(config, "w") as f:
        f.write(cfg.dump())
    return weights, config


def write_json(path: str, payload) -> str:
    """Write ``payload`` as indented json (NaN written as null)."""
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(clean(payload), f, indent=1)
    return path


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


class Timer:
    """Context manager measuring wall-clock seconds into ``self.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False
