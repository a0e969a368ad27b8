"""Why the student does (not) beat the teacher: region recognition measured three ways.

For a CLIP file (teacher or student) and the test scenes' ground-truth boxes:

* ``roi``: the region embedding RegionCLIP uses (RoIAlign on res4, then res5 and the attention
  pool), classified among the 12 category names (top-1 accuracy, base / novel, and the share of
  the most predicted name); ``roi_centred`` subtracts each name's mean similarity over all
  regions first (a name that is close to every region no longer wins everywhere: what is left is
  the per-class ranking that AP measures);
* ``crop``: the object cropped (with 10 % context on each side), resized to the CLIP input size
  (:func:`regionclip.api.crop_and_resize`, bicubic, as ``tools/region_accuracy.py``) and encoded
  as a whole image (what a CLIP knows about an object seen alone);
* ``pseudo``: the teacher's pseudo label over the concept pool (argmax, as in pretraining) of the
  RPN proposals that overlap a ground-truth box (IoU >= 0.5) — is it the box's shape noun (or a
  synonym)? This is the supervision the student's region losses get.

Run it with ``python tools/toyworld.py analyze --output DIR`` after the pipeline.
"""
import os
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from regionclip.api import crop_and_resize

from .common import write_json
from .text import load_clip, text_embeddings
from .train_clip import normalize
from .vocabulary import SHAPE_SYNONYMS

__all__ = ["region_accuracy", "pseudo_label_accuracy", "analyze"]


def _accuracy(pred: torch.Tensor, labels: torch.Tensor, base: List[int]) -> Dict[str, float]:
    hit = (pred == labels).float()
    is_base = torch.isin(labels, torch.tensor(base))
    return {"all": float(hit.mean()), "base": float(hit[is_base].mean()),
            "novel": float(hit[~is_base].mean())}


@torch.no_grad()
def _roi_embeddings(model, images: np.ndarray, boxes: torch.Tensor) -> torch.Tensor:
    visual = model.visual
    grid = visual.attnpool.positional_embedding.shape[0] - 1
    res = 2 * int(round(grid ** 0.5))
    out = []
    for start in range(0, len(images), 64):
        feats = visual.forward_features(normalize(images[start:start + 64]), ["res4"])["res4"]
        sel = (boxes[:, 0] >= start) & (boxes[:, 0] < start + 64)
        rois = boxes[sel].clone()
        rois[:, 0] -= start
        pooled = roi_align(feats, rois, res, 1 / 16, 0, True)
        out.append(visual.attnpool(visual.layer4(pooled)))
    return torch.cat(out)


@torch.no_grad()
def _crop_embeddings(model, images: np.ndarray, boxes: torch.Tensor) -> torch.Tensor:
    size = images.shape[1]
    x = np.stack([crop_and_resize(images[int(b)], box, size, "warp", context=1.2)
                  for b, *box in boxes.tolist()])
    return torch.cat([model.encode_image(normalize(x[i:i + 256])) for i in range(0, len(x), 256)])


def region_accuracy(arch: str, weights: str, world, prompts: str = "toy") -> Dict[str, dict]:
    """Top-1 accuracy of GT-box recognition (``roi`` and ``crop``) among the 12 names."""
    model = load_clip(arch, weights)
    images, gt = world.images("test"), world.boxes("test_all")
    boxes = torch.tensor([[i, *b] for i, g in enumerate(gt) for b in g["boxes"]],
                         dtype=torch.float32)
    labels = torch.tensor([int(c) for g in gt for c in g["classes"]])
    text = F.normalize(text_embeddings(model.encode_text, world.class_names, prompts), dim=-1)
    base = [world.class_names.index(c) for c in world.base_classes]
    out = {}
    for name, fn in (("roi", _roi_embeddings), ("crop", _crop_embeddings)):
        sim = F.normalize(fn(model, images, boxes), dim=-1) @ text.t()
        pred = sim.argmax(1)
        out[name] = _accuracy(pred, labels, base)
        out[name]["most_predicted_share"] = float(torch.bincount(pred).max()) / len(pred)
        # each class's mean similarity removed: what the ranking of regions per class knows
        out[f"{name}_centred"] = _accuracy((sim - sim.mean(0)).argmax(1), labels, base)
    return out


@torch.no_grad()
def pseudo_label_accuracy(arch: str, teacher: str, world, concepts: List[str],
                          pool: torch.Tensor, proposals: List[torch.Tensor]) -> Dict[str, float]:
    """How often the teacher's pseudo concept of a proposal matching a GT box names its shape."""
    from detectron2.structures import Boxes, pairwise_iou

    model = load_clip(arch, teacher)
    images, gt = world.images("test"), world.boxes("test_all")
    rows, labels = [], []
    for i, (props, g) in enumerate(zip(proposals, gt)):
        if len(props) == 0 or len(g["boxes"]) == 0:
            continue
        iou = pairwise_iou(Boxes(props), Boxes(torch.as_tensor(g["boxes"])))
        best, idx = iou.max(dim=1)
        for p, ok, k in zip(props, best >= 0.5, idx):
            if ok:
                rows.append([i, *p.tolist()])
                labels.append(int(g["classes"][k]))
    emb = F.normalize(_roi_embeddings(model, images, torch.tensor(rows)), dim=-1)
    picks = (emb @ F.normalize(pool, dim=-1).t()).argmax(1)
    names = world.class_names
    right = [concepts[int(p)] in SHAPE_SYNONYMS[names[c]] for p, c in zip(picks, labels)]
    is_base = [names[c] in world.base_classes for c in labels]
    shape_words = {w for ws in SHAPE_SYNONYMS.values() for w in ws}
    counts = torch.bincount(picks, minlength=len(concepts))
    return {"regions": len(rows), "correct": float(np.mean(right)),
            "most_common": concepts[int(counts.argmax())],
            "most_common_share": float(counts.max()) / len(picks),
            "correct_base": float(np.mean([r for r, b in zip(right, is_base) if b])),
            "correct_novel": float(np.mean([r for r, b in zip(right, is_base) if not b])),
            "any_shape_noun": float(np.mean([concepts[int(p)] in shape_words for p in picks]))}


def analyze(out: str, settings) -> dict:
    """Write ``analysis.json`` for a finished run in ``out`` and return it."""
    from detectron2.modeling import build_model

    from regionclip.checkpoint import RegionCLIPCheckpointer

    from .common import detection_inputs
    from .train_rpn import rpn_cfg
    from .world import World

    world = World(os.path.join(out, "world"))
    arch = os.path.join(out, "clip", "arch.json")
    files = {"teacher": os.path.join(out, "clip", "clip.pth"),
             "student": os.path.join(out, "pretrain", "student_clip.pth")}
    result = {name: region_accuracy(arch, path, world, settings.EVAL.PROMPTS)
              for name, path in files.items()}
    rpn = build_model(rpn_cfg(settings, arch))
    RegionCLIPCheckpointer(rpn).load(os.path.join(out, "rpn", "model_final.pth"))
    rpn.eval()
    images, gt = world.images("test"), world.boxes("test_all")
    with torch.no_grad():
        proposals = [rpn([detection_inputs(images, gt, i, with_instances=False)])[0]["proposals"]
                     .proposal_boxes.tensor for i in range(len(images))]
    with open(os.path.join(out, "pretrain", "concepts.txt")) as f:
        concepts = [line.strip() for line in f if line.strip()]
    pool = torch.load(os.path.join(out, "pretrain", "concept_emb.pth"))
    result["teacher_pseudo_labels"] = pseudo_label_accuracy(arch, files["teacher"], world,
                                                            concepts, pool, proposals)
    write_json(os.path.join(out, "analysis.json"), result)
    return result
