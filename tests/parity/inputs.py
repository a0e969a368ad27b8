"""Inputs and settings shared by the fixture generator (original RegionCLIP) and the parity test.

Both sides build their models from the *same-named* yaml files of their own repository (the
original's checkout, or this project) with the command-line overrides of :func:`scenario`, and
run them on the images of :func:`make_image` with the boxes below. Embedding files named in the
overrides are written by :func:`write_embedding_files` from :func:`seeded_tensor` values.

Imports only NumPy, PyTorch and :mod:`seeded_weights` at module level; :func:`detection_inputs`
imports ``detectron2.structures`` when called, i.e. the caller's detectron2 (the original's fork in
the generator, the installed one in the test; ``Boxes``/``Instances`` are the same in both).
"""
import os
from typing import Dict, List, Tuple

import numpy as np
import torch

try:  # imported as a package module by the test, as a plain module by the generator script
    from .seeded_weights import seeded_tensor
except ImportError:
    from seeded_weights import seeded_tensor

__all__ = ["IMAGE_SIZES", "GT_BOXES", "GT_CLASSES_65", "GT_CLASSES_48", "CAPTIONS", "CONCEPTS",
           "make_image", "detection_inputs", "write_embedding_files", "scenario", "SCENARIOS",
           "CHECKPOINT_OFFSETS"]

# (height, width) of the test images; the second one is not a multiple of 32 (FPN padding) and
# smaller than the first (padding of the recognition batch in pretraining).
IMAGE_SIZES = ((224, 320), (200, 288))

# Ground-truth boxes (XYXY, pixels of the 224x320 image): fractional corners, overlaps, the whole
# image.
GT_BOXES = (
    (10.0, 20.0, 120.0, 150.0),
    (150.0, 30.0, 300.0, 200.0),
    (60.0, 100.0, 200.0, 220.0),
    (0.0, 0.0, 320.0, 224.0),
    (200.5, 10.25, 260.75, 90.5),
)
GT_CLASSES_65 = (3, 17, 40, 0, 64)  # zero-shot (65 COCO OVD classes)
# Transfer training (48 base classes). Chosen so that the seeded model's probability of the GT
# class ranges from 0.56 down to a small one (top class of boxes 0 and 1, second of 2 and 3, a
# low one for 4): with only tiny probabilities the focal factor (1 - p)^0.5 would be ~1 and its
# exponent untested.
GT_CLASSES_48 = (38, 37, 2, 14, 40)

CAPTIONS = ("a dog sitting on a red couch next to a lamp.",
            "two people riding bicycles along the beach at sunset")

# Concepts for the 81-prompt ensemble: commas are removed and '+' becomes a space in prompts; the
# long one overflows 77 tokens in the longer templates (the original truncates, cutting the EOT).
CONCEPTS = ("hot dog, frank+bun",
            "hot dog, frank+bun " + " ".join(["extraordinarily"] * 32))  # 8 of 81 prompts cut

EMBEDDING_FILES = {  # name -> (rows, dim); the value is seeded_tensor(name, (rows, dim))
    "emb48": (48, 1024), "emb65": (65, 1024), "emb866": (866, 1024), "emb1203": (1203, 1024),
    "emb48_rn50x4": (48, 640), "emb65_rn50x4": (65, 640), "concept_pool": (16, 1024),
}


def make_image(index: int = 0) -> np.ndarray:
    """A deterministic RGB uint8 image (H, W, 3): smooth colour field, rectangles and noise."""
    height, width = IMAGE_SIZES[index]
    rng = np.random.default_rng(1234 + index)
    coarse = rng.uniform(0, 255, (height // 16 + 1, width // 16 + 1, 3))
    image = np.kron(coarse, np.ones((16, 16, 1)))[:height, :width]
    for _ in range(6):
        y0, x0 = rng.integers(0, height - 20), rng.integers(0, width - 20)
        y1, x1 = y0 + rng.integers(10, height - y0), x0 + rng.integers(10, width - x0)
        image[y0:y1, x0:x1] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 12, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def detection_inputs(with_gt: bool, classes=None) -> List[dict]:
    """The detection batch of both sides: image 0, with the ground-truth boxes if ``with_gt``
    (``classes``: their class ids, default :data:`GT_CLASSES_65`)."""
    from detectron2.structures import Boxes, Instances

    image = make_image(0)
    h, w = image.shape[:2]
    x = {"image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
         "height": h, "width": w}
    if with_gt:
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor(GT_BOXES, dtype=torch.float32))
        inst.gt_classes = torch.tensor(GT_CLASSES_65 if classes is None else classes,
                                       dtype=torch.int64)
        x["instances"] = inst
    return [x]


def write_embedding_files(folder: str, seed: int = 0) -> Dict[str, str]:
    """Write every :data:`EMBEDDING_FILES` entry to ``<folder>/<name>.pth``; name -> path."""
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for name, shape in EMBEDDING_FILES.items():
        paths[name] = os.path.join(folder, f"{name}.pth")
        torch.save(seeded_tensor(name, shape, seed=seed), paths[name])
    return paths


COCO = "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd.yaml"
COCO_X4 = "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50x4_C4_ovd.yaml"  # ours only
COCO_ZSINF = "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd_zsinf.yaml"
COCO_RPN = "configs/COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x_ovd_FSD.yaml"
LVIS = "configs/LVISv1-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4.yaml"
LVIS_ZSINF = "configs/LVISv1-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_zsinf.yaml"
LVIS_RPN = "configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
PRETRAIN = "configs/pretrain/RegionCLIP_RN50.yaml"

# name -> (config, offline RPN config or None, overrides with {embedding-file} placeholders)
SCENARIOS = {
    # (a) checkpoint formats
    "keys_coco": (COCO, COCO_RPN, ["MODEL.CLIP.TEXT_EMB_PATH", "{emb48}",
                                   "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH", "{emb65}"]),
    "keys_coco_rn50x4": (COCO, COCO_RPN, ["MODEL.CLIP.TEXT_EMB_PATH", "{emb48_rn50x4}",
                                          "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH",
                                          "{emb65_rn50x4}"]),
    "keys_lvis": (LVIS, LVIS_RPN, ["MODEL.CLIP.TEXT_EMB_PATH", "{emb866}",
                                   "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH", "{emb1203}",
                                   "MODEL.CLIP.OFFLINE_RPN_LSJ_PRETRAINED", "True"]),
    "keys_pretrain": (PRETRAIN, LVIS_RPN, ["MODEL.CLIP.CONCEPT_POOL_EMB", "{concept_pool}"]),
    # (a) + (e): zero-shot LVIS config with the language encoder (extract_concept_features.sh)
    "concepts": (LVIS_ZSINF, LVIS_RPN, ["MODEL.CLIP.GET_CONCEPT_EMB", "True"]),
    # (b) zero-shot inference on ground-truth boxes (test_zeroshot_inference.sh)
    "zs_gt": (COCO_ZSINF, None, ["MODEL.CLIP.TEXT_EMB_PATH", "{emb65}",
                                 "MODEL.CLIP.CROP_REGION_TYPE", "GT",
                                 "MODEL.CLIP.MULTIPLY_RPN_SCORE", "False"]),
    # (c) LVIS transfer evaluation: LSJ FPN RPN (SyncBN), raw-logit RPN rescoring, soft-NMS,
    # masks; few proposals and detections to stay fast
    "lvis_rpn": (LVIS, LVIS_RPN, ["MODEL.CLIP.TEXT_EMB_PATH", "{emb866}",
                                  "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH", "{emb1203}",
                                  "MODEL.CLIP.OFFLINE_RPN_LSJ_PRETRAINED", "True",
                                  "MODEL.ROI_HEADS.SOFT_NMS_ENABLED", "True",
                                  "MODEL.CLIP.OFFLINE_RPN_POST_NMS_TOPK_TEST", "16",
                                  "TEST.DETECTIONS_PER_IMAGE", "10"]),
    # (c) COCO transfer evaluation: C4 RPN, box regression applied, soft-NMS
    "coco_rpn": (COCO, COCO_RPN, ["MODEL.CLIP.TEXT_EMB_PATH", "{emb48}",
                                  "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH", "{emb65}",
                                  "MODEL.ROI_HEADS.SOFT_NMS_ENABLED", "True",
                                  "MODEL.CLIP.OFFLINE_RPN_POST_NMS_TOPK_TEST", "16"]),
    # (d) one training step of the COCO config (focal-scaled CE, background weight 0.2)
    "train_gt": (COCO, None, ["MODEL.CLIP.TEXT_EMB_PATH", "{emb48}",
                              "MODEL.CLIP.CROP_REGION_TYPE", "GT"]),
    "train_rpn": (COCO, COCO_RPN, ["MODEL.CLIP.TEXT_EMB_PATH", "{emb48}",
                                   "MODEL.CLIP.OFFLINE_RPN_POST_NMS_TOPK_TEST", "12"]),
    # (f) pretraining losses: all offline proposals are sampled (10 <= 100)
    # (f) pretraining losses: all offline proposals are sampled (10 <= 100); a teacher threshold
    # of 0.5 instead of 0.1 so that some regions are dropped from the region-concept losses
    "pretrain": (PRETRAIN, LVIS_RPN, ["MODEL.CLIP.CONCEPT_POOL_EMB", "{concept_pool}",
                                      "MODEL.CLIP.PRETRAIN_RPN_REGIONS", "10",
                                      "MODEL.CLIP.CONCEPT_THRES", "0.5"]),
}

# Constants added to seeded checkpoint entries, per scenario (same on both sides). The seeded LSJ
# RPN gives objectness logits of about +190..+310 to its top 16 proposals; shifting them by -205
# makes 7 of them negative, so that MULTIPLY_RPN_SCORE's sqrt(prob * raw logit) is NaN for those
# and the original drops them (its non-finite filter). The proposals' order is unchanged.
CHECKPOINT_OFFSETS = {
    "lvis_rpn": {"offline_proposal_generator.rpn_head.objectness_logits.bias": -205.0},
}

# The original has no RN50x4 yaml: its scripts add these overrides to the RN50 one.
ORIGINAL_RN50X4 = ["MODEL.RESNETS.DEPTH", "200", "MODEL.CLIP.TEXT_EMB_DIM", "640",
                   "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "18"]


def scenario(name: str, root: str, files: Dict[str, str], original: bool) -> Tuple[str, List[str]]:
    """Config file and overrides of a scenario for one implementation.

    Args:
        name (str): key of :data:`SCENARIOS`.
        root (str): repository root of that implementation (configs are looked up there).
        files (dict): embedding-file paths from :func:`write_embedding_files`.
        original (bool): building the original (RN50x4 by overrides) or this project.

    Returns:
        (str, list[str]): the yaml path and the ``KEY VALUE`` override list.
    """
    config, offline, opts = SCENARIOS[name]
    opts = [o.format(**files) for o in opts] + ["MODEL.DEVICE", "cpu"]
    if offline is not None:
        opts += ["MODEL.CLIP.OFFLINE_RPN_CONFIG", os.path.join(root, offline)]
    if name.endswith("rn50x4"):
        if original:
            opts += ORIGINAL_RN50X4
        else:
            config = COCO_X4
    return os.path.join(root, config), opts
