"""Why the student does (not) beat the teacher: region recognition measured three ways.

For a CLIP file (teacher or student) and the test scenes' ground-truth boxes, with the zero-shot
detector of that file (``CLIPFastRCNN``, GT regions) and the library's region classification
(:func:`regionclip.tools.region_accuracy.region_accuracy`):

* ``roi``: the region embedding RegionCLIP uses (RoIAlign on res4, then res5 and the attention
  pool: :meth:`regionclip.RegionCLIP.encode_regions`), classified among the 12 category names
  (top-1 accuracy, base / novel, and the share of the most predicted name); ``roi_centred``
  subtracts each name's mean similarity over all regions first (a name that is close to every
  region no longer wins everywhere: what is left is the per-class ranking that AP measures);
* ``crop``: the object cropped (with 10 % context on each side), resized to the CLIP input size
  (bicubic) and encoded as a whole image (:meth:`regionclip.RegionCLIP.encode_crops`: what a
  CLIP knows about an object seen alone);
* ``pseudo``: the teacher's pseudo label over the concept pool (argmax, as in pretraining) of the
  RPN proposals that overlap a ground-truth box (IoU >= 0.5) — is it the box's shape noun (or a
  synonym)? This is the supervision the student's region losses get. Whether its errors are
  noise that learning from many regions could average away is measured too: the share of
  objects whose proposals' majority label is right, of objects with all / none of their
  proposals right, and each category's most common pseudo concept.

It is stage ``regions`` of the pipeline (``regions/results.json``); ``python tools/toyworld.py
analyze --output DIR`` reruns it alone.
"""
import os
import tempfile
from collections import Counter, defaultdict
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from .common import write_json
from .vocabulary import SHAPE_SYNONYMS

__all__ = ["zero_shot_detector", "region_accuracy", "matched_objects", "pseudo_label_accuracy",
           "analyze"]

CROP_CONTEXT = 1.2  # crops keep 10 % context on each side
MATCH_IOU = 0.5  # a region is on an object when it overlaps the object's box this much
# concept -> the category it names (None for the non-shape nouns of the pool)
SHAPE_OF = {w: name for name, words in SHAPE_SYNONYMS.items() for w in words}


def _accuracy(pred: torch.Tensor, labels: torch.Tensor, base: List[int]) -> Dict[str, float]:
    hit = (pred == labels).float()
    is_base = torch.isin(labels, torch.tensor(base))
    return {"all": float(hit.mean()), "base": float(hit[is_base].mean()),
            "novel": float(hit[~is_base].mean())}


def zero_shot_detector(settings, out: str, arch: str, weights: str, text_emb: str):
    """:class:`regionclip.RegionCLIP` of a CLIP file of the run in ``out``: the zero-shot
    ``CLIPFastRCNN`` (``EVAL.CONFIG``) classifying given (GT) boxes against ``text_emb``."""
    from detectron2.modeling import build_model

    from regionclip import RegionCLIP
    from regionclip.engine.trainer import load_model_weights

    from .evaluate import detector_cfg
    from .pipeline import stage_paths

    cfg = detector_cfg(settings, settings.EVAL, arch, weights, stage_paths(out)["rpn"], "GT",
                       text_emb)
    model = build_model(cfg)
    load_model_weights(cfg, model)
    return RegionCLIP(cfg, model.eval())


def region_accuracy(rc, world, text_emb: str) -> Dict[str, dict]:
    """Top-1 accuracy of GT-box recognition (``roi`` and ``crop``) among the 12 names, by the
    detector ``rc`` with the class embeddings in the file ``text_emb``."""
    from regionclip.tools.region_accuracy import region_accuracy as classify_boxes

    from .world import register_world

    _, scores, labels = classify_boxes(rc, register_world(world)["test"],
                                       crop_context=CROP_CONTEXT, text_emb=text_emb,
                                       progress=False, return_scores=True)
    base = [world.class_names.index(c) for c in world.base_classes]
    out = {}
    for name in ("roi", "crop"):
        sim = scores[name]
        pred = sim.argmax(1)
        out[name] = _accuracy(pred, labels, base)
        out[name]["most_predicted_share"] = float(torch.bincount(pred).max()) / len(pred)
        # each class's mean similarity removed: what the ranking of regions per class knows
        out[f"{name}_centred"] = _accuracy((sim - sim.mean(0)).argmax(1), labels, base)
    return out


@torch.no_grad()
def matched_objects(regions: torch.Tensor, boxes: torch.Tensor, iou: float = MATCH_IOU):
    """For each region, the index of the object box it overlaps most, -1 where the overlap is
    below ``iou``: (R,) LongTensor (all -1 when there are no boxes)."""
    from detectron2.structures import Boxes, pairwise_iou

    out = torch.full((len(regions),), -1, dtype=torch.long, device=regions.device)
    if len(boxes) == 0 or len(regions) == 0:
        return out
    best, index = pairwise_iou(Boxes(regions), Boxes(boxes.to(regions))).max(dim=1)
    hit = best >= iou
    out[hit] = index[hit]
    return out


def pseudo_label_accuracy(rc, world, concepts: List[str], pool: torch.Tensor,
                          proposals: List[torch.Tensor], crops: bool = False) -> Dict[str, float]:
    """How often the teacher's pseudo concept of a proposal matching a GT box names its shape
    (``rc``: the teacher's detector, whose region embeddings label the proposals; with
    ``crops``, its embeddings of the proposals cut out of the scene with ``CROP_CONTEXT`` by
    ``encode_crops``: labels of the kind the ``PRETRAIN.TEACHER_CROPS`` control learns from)."""
    images, gt = world.images("test"), world.boxes("test_all")
    embeddings, labels, objects = [], [], []
    for i, (props, g) in enumerate(zip(proposals, gt)):
        idx = matched_objects(props, torch.as_tensor(g["boxes"]))
        keep = idx >= 0
        if keep.any():
            boxes = props[keep].numpy()
            embeddings.append(rc.encode_crops(images[i], boxes, context=CROP_CONTEXT) if crops
                              else rc.encode_regions(images[i], boxes))
            labels += [int(g["classes"][k]) for k in idx[keep]]
            objects += [(i, int(k)) for k in idx[keep]]
    emb = F.normalize(torch.cat(embeddings).float(), dim=-1)
    picks = (emb @ F.normalize(pool, dim=-1).t()).argmax(1)
    names = world.class_names
    right = [concepts[int(p)] in SHAPE_SYNONYMS[names[c]] for p, c in zip(picks, labels)]
    is_base = [names[c] in world.base_classes for c in labels]
    shape_words = {w for ws in SHAPE_SYNONYMS.values() for w in ws}
    counts = torch.bincount(picks, minlength=len(concepts))
    return {"regions": len(labels), "correct": float(np.mean(right)),
            "most_common": concepts[int(counts.argmax())],
            "most_common_share": float(counts.max()) / len(picks),
            "correct_base": float(np.mean([r for r, b in zip(right, is_base) if b])),
            "correct_novel": float(np.mean([r for r, b in zip(right, is_base) if not b])),
            "any_shape_noun": float(np.mean([concepts[int(p)] in shape_words for p in picks])),
            **_consistency([concepts[int(p)] for p in picks], [names[c] for c in labels], objects)}


def _consistency(picked: List[str], classes: List[str], objects: list) -> dict:
    """Are the wrong pseudo labels noise across an object's proposals, or the object's own?
    ``picked[j]``: the concept of proposal j, ``classes[j]`` the name of the object it
    overlaps, ``objects[j]`` that object's id."""
    by_object, by_class = defaultdict(list), defaultdict(Counter)
    for concept, name, obj in zip(picked, classes, objects):
        by_object[obj, name].append(concept)
        by_class[name][concept] += 1
    majority, share = [], []
    for (_, name), concepts in by_object.items():
        share.append(np.mean([SHAPE_OF.get(c) == name for c in concepts]))
        top = Counter(concepts).most_common(1)[0][0]  # ties: the first seen
        majority.append(SHAPE_OF.get(top) == name)
    plurality = {}
    for name, counts in sorted(by_class.items()):
        concept, n = counts.most_common(1)[0]
        plurality[name] = [concept, n / sum(counts.values())]
    return {"objects": len(by_object), "object_majority_correct": float(np.mean(majority)),
            "objects_all_correct": float(np.mean([s == 1 for s in share])),
            "objects_none_correct": float(np.mean([s == 0 for s in share])),
            "class_plurality": plurality,
            "classes_plurality_wrong": [name for name, (concept, _) in plurality.items()
                                        if SHAPE_OF.get(concept) != name]}


def analyze(out: str, settings) -> dict:
    """Write ``regions/results.json`` for a run in ``out`` (stages up to ``pretrain`` done) and
    return it."""
    from detectron2.modeling import build_model

    from regionclip.checkpoint import RegionCLIPCheckpointer

    from .common import detection_inputs
    from .evaluate import write_class_embeddings
    from .train_rpn import rpn_cfg
    from .world import World

    world = World(os.path.join(out, "world"))
    arch = os.path.join(out, "clip", "arch.json")
    files = {"teacher": os.path.join(out, "clip", "clip.pth"),
             "student": os.path.join(out, "pretrain", "student_clip.pth")}
    result, detectors = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in files.items():
            emb = write_class_embeddings(arch, path, world.class_names,
                                         os.path.join(tmp, f"{name}_class_emb.pth"),
                                         settings.EVAL.PROMPTS)
            detectors[name] = zero_shot_detector(settings, out, arch, path, emb)
            result[name] = region_accuracy(detectors[name], world, emb)
    cfg = rpn_cfg(settings, arch)
    rpn = build_model(cfg)
    RegionCLIPCheckpointer(rpn).load(os.path.join(out, "rpn", "model_final.pth"))
    rpn.eval()
    images, gt = world.images("test"), world.boxes("test_all")
    with torch.no_grad():
        proposals = [rpn([detection_inputs(images, gt, i, with_instances=False,
                                           size=cfg.INPUT.MAX_SIZE_TEST)])[0]["proposals"]
                     .proposal_boxes.tensor for i in range(len(images))]
    with open(os.path.join(out, "pretrain", "concepts.txt")) as f:
        concepts = [line.strip() for line in f if line.strip()]
    pool = torch.load(os.path.join(out, "pretrain", "concept_emb.pth"))
    result["teacher_pseudo_labels"] = pseudo_label_accuracy(detectors["teacher"], world,
                                                            concepts, pool, proposals)
    if settings.PRETRAIN.TEACHER_CROPS:  # the labels the control's student learned from
        result["teacher_crop_pseudo_labels"] = pseudo_label_accuracy(
            detectors["teacher"], world, concepts, pool, proposals, crops=True)
    os.makedirs(os.path.join(out, "regions"), exist_ok=True)
    write_json(os.path.join(out, "regions", "results.json"), result)
    return result
