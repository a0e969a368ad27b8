"""The deployment cases of the benchmark (``batched``, ``onnx``): batched against one-by-one
detection, onnxruntime against PyTorch. Each row function returns one row (a dict) and checks that
the faster path gives the same detections; :func:`deploy_detector` builds the detector the cases
measure (RN50, offline-RPN regions, random weights).

    from regionclip.benchmark.deploy import batched_throughput, onnx_latency
    rows = [batched_throughput(rc, vocabulary, num_images=16, size=800, batch_size=8),
            onnx_latency(rc, vocabulary, size=800, repeats=5)]
"""
import statistics
import tempfile
import time
from typing import List, Optional, Sequence

import numpy as np
import torch

__all__ = ["DEPLOY_CONFIG", "RPN_CONFIG", "VOCABULARY", "generated_images", "deploy_detector",
           "batched_throughput", "onnx_latency"]

DEPLOY_CONFIG = "LVISv1-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_custom_img.yaml"
RPN_CONFIG = "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
VOCABULARY = ("cat", "dog", "sofa")  # the text tower runs 3 x 80 prompts once per process


def generated_images(num: int, size: int, seed: int = 0) -> List[np.ndarray]:
    """``num`` RGB uint8 images of ``size`` x ``4/3 size`` pixels (noise and bright rectangles),
    all of one size so that they share batches."""
    rng = np.random.default_rng(seed)
    h, w = size, int(size * 4 / 3)
    images = []
    for _ in range(num):
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        for _ in range(4):
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            img[y0:y0 + h // 3, x0:x0 + w // 3] = rng.integers(120, 255, 3, dtype=np.uint8)
        images.append(img)
    return images


def deploy_detector(num_regions: int = 100, device: str = "cpu", seed: int = 0):
    """The RegionCLIP detector of the deployment cases: :data:`DEPLOY_CONFIG` (RN50 CLIP, an
    R50-FPN offline RPN of :data:`RPN_CONFIG`, at most ``num_regions`` RPN regions per image),
    random weights with realistic frozen-BN statistics (speed does not depend on the values; the
    random text tower encodes vocabularies as a trained one would, at the same cost)."""
    import os

    from regionclip.api import RegionCLIP
    from regionclip.yaml_config import packaged_configs_dir

    from .models import build

    torch.manual_seed(seed)
    cfg, model = build(DEPLOY_CONFIG, [
        "MODEL.CLIP.CROP_REGION_TYPE", "RPN", "MODEL.CLIP.GET_CONCEPT_EMB", "True",
        "MODEL.CLIP.OFFLINE_RPN_CONFIG", os.path.join(packaged_configs_dir(), RPN_CONFIG),
        "MODEL.CLIP.OFFLINE_RPN_POST_NMS_TOPK_TEST", str(num_regions)], device)
    model.eval()
    cfg.freeze()
    return RegionCLIP(cfg, model, text_encoder_loaded=True)


def _max_differences(a: Sequence[Sequence[dict]], b: Sequence[Sequence[dict]]):
    """Largest score and box differences between two lists of per-image detections (inf when
    the numbers of detections differ)."""
    score = box = 0.0
    for x, y in zip(a, b):
        if len(x) != len(y):
            return float("inf"), float("inf")
        for dx, dy in zip(x, y):
            score = max(score, abs(dx["score"] - dy["score"]))
            box = max(box, float(np.abs(np.subtract(dx["box"], dy["box"])).max()))
    return score, box


def batched_throughput(rc, vocabulary: Sequence[str], num_images: int = 16, size: int = 800,
                       batch_size: int = 8, seed: int = 0) -> dict:
    """Images per second of ``rc.detect`` on ``num_images`` generated images of ``size`` px
    (short side), one call per image against one call on the list (``batch_size``).

    Returns:
        dict: ``images``, ``image_size`` ("HxW" given to ``detect``), ``batch_size``,
        ``one_by_one_img_per_s``, ``batched_img_per_s``, ``speedup``, and the largest score /
        box differences between the two (``max_score_diff``, ``max_box_diff_px``).
    """
    images = generated_images(num_images, size, seed)
    rc.detect(images[0], vocabulary)  # warm-up (text embeddings, allocator)
    start = time.perf_counter()
    single = [rc.detect(image, vocabulary) for image in images]
    one_by_one = time.perf_counter() - start
    start = time.perf_counter()
    batched = rc.detect(images, vocabulary, batch_size=batch_size)
    together = time.perf_counter() - start
    score, box = _max_differences(single, batched)
    h, w = images[0].shape[:2]
    return {"images": num_images, "image_size": f"{h}x{w}", "batch_size": batch_size,
            "one_by_one_img_per_s": num_images / one_by_one,
            "batched_img_per_s": num_images / together, "speedup": one_by_one / together,
            "max_score_diff": score, "max_box_diff_px": box}


def onnx_latency(rc, vocabulary: Sequence[str], size: int = 800, repeats: int = 5,
                 export_dir: Optional[str] = None, seed: int = 0) -> dict:
    """Median latency of one image through the exported ONNX detector (onnxruntime, CPU, as many
    threads as PyTorch) and through PyTorch (the same graph: ``model.inference`` without the
    final rescaling), after one warm-up run each.

    Args:
        rc (RegionCLIP): the detector (exported with ``vocabulary`` fixed).
        vocabulary (sequence[str]): class names.
        size (int): short side of the generated image.
        repeats (int): timed runs of each.
        export_dir (str or None): where to export (default: a temporary folder).

    Returns:
        dict: ``image_size``, ``input_size`` (after the test-time resize), ``detections``,
        ``pytorch_ms``, ``onnxruntime_ms``, ``max_score_diff``, ``max_box_diff_px``.
    """
    import onnxruntime as ort

    from regionclip.export import export_model

    image = generated_images(1, size, seed)[0]
    emb = rc.encode_text(list(vocabulary))
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_dir or tmp
        info = export_model(rc, folder, "onnx", image, vocabulary=vocabulary, text_encoder=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(f"{folder}/{info['files']['detector']}", options,
                                       providers=["CPUExecutionProvider"])
    inputs, _ = rc._prepare(image)
    feed = {"image": inputs["image"].numpy()}

    def pytorch():
        with torch.no_grad():
            return rc.model.inference([inputs], do_postprocess=False, class_embeddings=emb)[0]

    def timed(fn):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        return out, 1000 * statistics.median(times)

    inst, torch_ms = timed(pytorch)
    names = [o.name for o in session.get_outputs()]
    out, ort_ms = timed(lambda: dict(zip(names, session.run(None, feed))))
    scores, boxes = out["scores"], out["pred_boxes"]
    same = len(scores) == len(inst)
    return {"image_size": "x".join(map(str, image.shape[:2])),
            "input_size": "x".join(map(str, inputs["image"].shape[1:])),
            "detections": len(inst), "pytorch_ms": torch_ms, "onnxruntime_ms": ort_ms,
            "max_score_diff": float(np.abs(scores - inst.scores.numpy()).max(initial=0))
            if same else float("inf"),
            "max_box_diff_px": float(np.abs(boxes - inst.pred_boxes.tensor.numpy()).max(initial=0))
            if same else float("inf")}
