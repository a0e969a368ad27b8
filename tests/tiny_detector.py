"""A tiny RPN-region CLIPFastRCNN for fast tool tests: tiny CLIP (tiny_clip) + R18-FPN offline RPN.

``tiny_detector_opts(folder)`` returns ``KEY VALUE`` overrides that turn any RegionCLIP
CLIPFastRCNN yaml into a model that runs in well under a second per small image on a CPU.
"""
import os

import numpy as np
import torch
from conftest import REPO
from PIL import Image
from tiny_clip import TINY_OPTS, write_tiny_clip
from torchvision.ops import roi_align

LVIS_RPN = os.path.join(REPO, "configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
ZSINF = os.path.join(REPO, "configs/LVISv1-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_zsinf.yaml")
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
CUSTOM = os.path.join(REPO,
                      "configs/LVISv1-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_custom_img.yaml")


def write_tiny_rpn_config(folder):
    """An offline RPN yaml: the LVIS R50-FPN config with a ResNet-18 and 32 FPN channels."""
    path = os.path.join(folder, "tiny_rpn.yaml")
    with open(path, "w") as f:
        f.write(f'_BASE_: "{LVIS_RPN}"\nMODEL:\n  WEIGHTS: ""\n  RESNETS:\n    DEPTH: 18\n'
                "    RES2_OUT_CHANNELS: 64\n  FPN:\n    OUT_CHANNELS: 32\n")
    return path


def tiny_detector_opts(folder, topk=20):
    """Write the tiny CLIP and RPN files into ``folder`` and return the overrides.

    Returns:
        (list[str], str): the overrides (CPU, 96-px test size, RPN regions, ``topk`` proposals)
        and the CLIP weights file.
    """
    arch, weights = write_tiny_clip(folder)
    opts = TINY_OPTS + [
        "MODEL.CLIP.ARCH", arch, "MODEL.DEVICE", "cpu",
        "MODEL.CLIP.CROP_REGION_TYPE", "RPN",
        "MODEL.CLIP.OFFLINE_RPN_CONFIG", write_tiny_rpn_config(folder),
        "MODEL.CLIP.OFFLINE_RPN_POST_NMS_TOPK_TEST", str(topk),
        "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160",
        "SEED", "0",  # the offline RPN has random weights: the same ones on every run
    ]
    return opts, weights


def write_images(folder, names_sizes, seed=0):
    """Write random-texture images with a few bright rectangles.

    Args:
        folder (str): created if needed.
        names_sizes (list[tuple[str, tuple[int, int]]]): file name and (height, width).

    Returns:
        list[str]: the written paths.
    """
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for name, (h, w) in names_sizes:
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        for _ in range(3):
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            img[y0:y0 + h // 3, x0:x0 + w // 3] = rng.integers(120, 255, 3, dtype=np.uint8)
        path = os.path.join(folder, name)
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


@torch.no_grad()
def independent_features(model, image, boxes):
    """attnpool(layer4(RoIAlignV2 14x14 on res4)) of XYXY ``boxes`` of a (3, H, W) 0-255 RGB image,
    written out with torchvision's roi_align (CLIP normalisation, res4 stride 16)."""
    x = ((torch.as_tensor(image).float() / 255.0 - MEAN) / STD)[None]
    res4 = model.backbone(x)["res4"]
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
    pooled = roi_align(res4, rois, output_size=14, spatial_scale=1 / 16, sampling_ratio=0,
                       aligned=True)
    return model.backbone.attnpool(model.backbone.layer4(pooled))
