"""Precision and recall of the demo's detections on scenes whose objects are known.

An object is *found* when a detection of its category name overlaps its box with IoU >= 0.5;
each detection finds at most one object (the best-overlapping one of its name that is still
unfound, detections taken by decreasing score, as in COCO matching). Recall is the share of the
objects found, precision the share of the detections that found one; both are given per split
(base, novel: an object's split is its category's, a detection's the split of its name).
"""
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.structures import Boxes, pairwise_iou

__all__ = ["score_detections", "score_table"]


def score_detections(detections: List[List[dict]], objects: List[List[dict]],
                     novel: Sequence[str], iou: float = 0.5) -> Dict[str, dict]:
    """Recall and precision of detections against known objects.

    Args:
        detections (list[list[dict]]): per image ``{"box": XYXY, "label", "score"}``.
        objects (list[list[dict]]): per image ``{"box": XYXY, "name"}`` (the category name).
        novel (sequence[str]): names of the novel categories.
        iou (float): overlap that counts as found.

    Returns:
        dict: for ``base``, ``novel`` and ``all``: ``objects``, ``found``, ``recall``,
        ``detections``, ``correct``, ``precision`` (None when there is nothing to divide).
    """
    if len(detections) != len(objects):
        raise ValueError(f"{len(detections)} images of detections but {len(objects)} of objects")
    novel = set(novel)
    counts = {s: {"objects": 0, "found": 0, "detections": 0, "correct": 0}
              for s in ("base", "novel", "all")}

    def add(name: str, key: str, value: int = 1):
        for split in ("novel" if name in novel else "base", "all"):
            counts[split][key] += value

    for dets, objs in zip(detections, objects):
        boxes = np.array([o["box"] for o in objs], dtype=np.float64).reshape(-1, 4)
        names = [o["name"] for o in objs]
        found = np.zeros(len(objs), dtype=bool)
        for d in sorted(dets, key=lambda d: -d["score"]):
            add(d["label"], "detections")
            same = np.array([n == d["label"] for n in names], dtype=bool)
            iou_d = pairwise_iou(Boxes(torch.tensor([d["box"]], dtype=torch.float64)),
                                 Boxes(torch.from_numpy(boxes)))[0].numpy()
            overlap = np.where(same & ~found, iou_d, -1.0) if len(objs) else []
            if len(objs) and overlap.max() >= iou:
                found[int(overlap.argmax())] = True
                add(d["label"], "correct")
        for name, hit in zip(names, found):
            add(name, "objects")
            add(name, "found", int(hit))
    for c in counts.values():
        c["recall"] = c["found"] / c["objects"] if c["objects"] else None
        c["precision"] = c["correct"] / c["detections"] if c["detections"] else None
    return counts


def score_table(scores: Dict[str, dict]) -> str:
    """Plain-text lines of :func:`score_detections` for the terminal."""
    def pct(v):
        return "  n/a" if v is None else f"{100 * v:5.1f}"

    lines = ["split    objects  found  recall %  detections  right  precision %"]
    for split in ("base", "novel", "all"):
        c = scores[split]
        lines.append(f"{split:<8} {c['objects']:>7}  {c['found']:>5}  {pct(c['recall']):>8}  "
                     f"{c['detections']:>10}  {c['correct']:>5}  {pct(c['precision']):>11}")
    return "\n".join(lines)
