"""Detection results in the formats of other tools, without glue code.

    from regionclip import RegionCLIP
    from regionclip.formats import to_coco, to_hf_pipeline, to_supervision

    vocabulary = ["cat", "remote control"]
    dets = rc.detect("image.jpg", vocabulary)
    to_hf_pipeline(dets)                  # transformers' zero-shot-object-detection pipeline
    to_supervision(dets, vocabulary)      # supervision.Detections, names in data["class_name"]
    to_coco(dets, image_id=42, vocabulary=vocabulary)   # COCO results (visualize_json_results)

Every converter takes what :meth:`regionclip.RegionCLIP.detect` returns (a list of
``{"box": [x0, y0, x1, y1], "label", "score"}``), or a detectron2 ``Instances`` with
``pred_boxes``, ``scores`` and ``pred_classes`` (or a model output dict ``{"instances": ...}``)
together with the ``vocabulary`` that ``pred_classes`` index.
"""
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["to_hf_pipeline", "to_supervision", "to_coco", "category_ids_from_metadata"]

_KEYS = ("box", "label", "score")


def _unique(vocabulary: Sequence[str]) -> List[str]:
    """Names as ``detect`` uses them: strings, repeated ones kept once (first place)."""
    if isinstance(vocabulary, str):
        vocabulary = [vocabulary]
    return list(dict.fromkeys(str(v) for v in vocabulary))


def _from_instances(inst, vocabulary) -> Tuple[np.ndarray, List[str], np.ndarray]:
    if vocabulary is None:
        raise ValueError("detectron2 Instances hold class indices: pass vocabulary= (the class "
                         "names they index)")
    names = _unique(vocabulary)
    for field in ("pred_boxes", "scores", "pred_classes"):
        if not inst.has(field):
            raise ValueError(f"Instances need the field '{field}' (fields: "
                             f"{sorted(inst.get_fields())})")
    boxes = inst.pred_boxes.tensor.detach().cpu().double().numpy().reshape(-1, 4)
    scores = inst.scores.detach().cpu().double().numpy().reshape(-1)
    classes = inst.pred_classes.detach().cpu().numpy().reshape(-1)
    bad = [int(c) for c in classes if not 0 <= c < len(names)]
    if bad:
        raise ValueError(f"pred_classes {sorted(set(bad))} are not indices of the vocabulary of "
                         f"{len(names)} names")
    return boxes, [names[int(c)] for c in classes], scores


def _records(detections, vocabulary=None) -> Tuple[np.ndarray, List[str], np.ndarray]:
    """``(boxes (N, 4) XYXY float64, labels, scores (N,) float64)`` of any accepted input."""
    if isinstance(detections, Mapping) and "instances" in detections:
        detections = detections["instances"]
    if hasattr(detections, "get_fields"):  # detectron2 Instances
        return _from_instances(detections, vocabulary)
    if isinstance(detections, (str, bytes, Mapping)) or not isinstance(detections, Sequence):
        raise ValueError("detections must be the list of {'box', 'label', 'score'} dicts that "
                         "RegionCLIP.detect returns, or detectron2 Instances; got "
                         f"{type(detections).__name__}")
    boxes, labels, scores = [], [], []
    for i, d in enumerate(detections):
        if not isinstance(d, Mapping) or any(k not in d for k in _KEYS):
            raise ValueError(f"detection {i}: expected a dict with keys {list(_KEYS)}, got "
                             f"{d!r:.200}")
        try:
            box = [float(v) for v in d["box"]]
            score = float(d["score"])
        except (TypeError, ValueError):
            box, score = [], math.nan
        if len(box) != 4 or not all(math.isfinite(v) for v in box + [score]):
            raise ValueError(f"detection {i}: expected 'box' = 4 finite numbers [x0, y0, x1, y1] "
                             f"and a finite 'score', got box {d['box']!r} and score "
                             f"{d['score']!r}")
        boxes.append(box)
        labels.append(str(d["label"]))
        scores.append(score)
    return (np.asarray(boxes, dtype=np.float64).reshape(-1, 4), labels,
            np.asarray(scores, dtype=np.float64))


def to_hf_pipeline(detections, vocabulary: Optional[Sequence[str]] = None,
                   top_k: Optional[int] = None) -> List[dict]:
    """The output of transformers' ``zero-shot-object-detection`` pipeline for one image.

    Args:
        detections: :meth:`RegionCLIP.detect` output, or Instances (then ``vocabulary``).
        vocabulary (sequence[str] or None): the names ``pred_classes`` index (Instances only).
        top_k (int or None): keep the best ``top_k`` (None: all), as the pipeline's ``top_k``.

    Returns:
        list[dict]: ``{"score": float, "label": str, "box": {"xmin", "ymin", "xmax", "ymax"}}``
        with integer pixel coordinates (truncated toward zero, as the pipeline's ``box.int()``),
        sorted by decreasing score (stable).
    """
    boxes, labels, scores = _records(detections, vocabulary)
    out = [{"score": float(s), "label": label,
            "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), (int(v) for v in box)))}
           for box, label, s in zip(boxes, labels, scores)]
    out.sort(key=lambda d: d["score"], reverse=True)
    if top_k is not None:
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 or None, got {top_k}")
        out = out[:top_k]
    return out


def _class_ids(labels: Sequence[str], vocabulary) -> Tuple[np.ndarray, List[str]]:
    names = _unique(vocabulary) if vocabulary is not None else list(dict.fromkeys(labels))
    index = {n: i for i, n in enumerate(names)}
    missing = sorted(set(labels) - set(index))
    if missing:
        raise ValueError(f"labels {missing} are not in the vocabulary {names}")
    return np.asarray([index[label] for label in labels], dtype=np.int64), names


def to_supervision(detections, vocabulary: Optional[Sequence[str]] = None):
    """A ``supervision.Detections`` (roboflow supervision, optional: ``pip install supervision``).

    Args:
        detections: :meth:`RegionCLIP.detect` output, or Instances.
        vocabulary (sequence[str] or None): the class names; ``class_id`` is the index of a
            label in it (repeated names count once, as in ``detect``). Pass the vocabulary given
            to ``detect`` for the same ids on every image; without it (detect output only), ids
            follow the order in which labels first appear.

    Returns:
        supervision.Detections: ``xyxy`` (N, 4) float32 pixels, ``confidence`` (N,) float32,
        ``class_id`` (N,) int64, ``data["class_name"]`` (N,) str array; in the input's order.

    Raises:
        ImportError: supervision is not installed.
        ValueError: a label is not in ``vocabulary``.
    """
    try:
        import supervision as sv
    except ImportError:
        raise ImportError("to_supervision needs the optional package supervision: "
                          "pip install supervision") from None
    boxes, labels, scores = _records(detections, vocabulary)
    class_id, _ = _class_ids(labels, vocabulary)
    return sv.Detections(xyxy=boxes.astype(np.float32), confidence=scores.astype(np.float32),
                         class_id=class_id,
                         data={"class_name": np.asarray(labels, dtype=str).reshape(-1)})


def to_coco(detections, image_id, vocabulary: Optional[Sequence[str]] = None,
            category_ids: Optional[Mapping[str, int]] = None) -> List[dict]:
    """COCO results (the input of COCO/LVIS evaluation and of
    ``tools/visualize_json_results.py``): concatenate the lists of all images into one json.

    Args:
        detections: :meth:`RegionCLIP.detect` output, or Instances (then ``vocabulary``).
        image_id: the image's id in the dataset (kept as given).
        vocabulary (sequence[str] or None): without ``category_ids``, a label's category id is
            its index in ``vocabulary`` + 1 (the ids of LVIS and of datasets numbered from 1).
        category_ids (mapping or None): label -> dataset category id (e.g. COCO's non-contiguous
            ids: :func:`category_ids_from_metadata`).

    Returns:
        list[dict]: ``{"image_id", "category_id": int, "bbox": [x, y, w, h] (float pixels),
        "score": float}`` in the input's order.

    Raises:
        ValueError: neither ``vocabulary`` nor ``category_ids``, or a label without an id.
    """
    boxes, labels, scores = _records(detections, vocabulary)
    if category_ids is None:
        if vocabulary is None:
            raise ValueError("to_coco needs vocabulary= (category id = index + 1) or "
                             "category_ids= (label -> id) to number the labels")
        category_ids = {name: i + 1 for i, name in enumerate(_unique(vocabulary))}
    missing = sorted(set(labels) - set(category_ids))
    if missing:
        raise ValueError(f"labels {missing} have no category id (known: "
                         f"{sorted(category_ids)[:20]})")
    return [{"image_id": image_id, "category_id": int(category_ids[label]),
             "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "score": float(s)}
            for (x0, y0, x1, y1), label, s in zip(boxes, labels, scores)]


def category_ids_from_metadata(metadata) -> Dict[str, int]:
    """``{class name: dataset category id}`` of a detectron2 dataset's metadata: the inverse of
    ``thing_dataset_id_to_contiguous_id`` over ``thing_classes``, else index + 1 (LVIS), the
    mapping that ``tools/visualize_json_results.py`` reads back."""
    classes = list(metadata.get("thing_classes", None) or [])
    if not classes:
        raise ValueError(f"metadata '{metadata.get('name', '?')}' has no thing_classes")
    mapping = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if not mapping:
        return {name: i + 1 for i, name in enumerate(classes)}
    return {classes[contiguous]: int(ds_id) for ds_id, contiguous in mapping.items()}
