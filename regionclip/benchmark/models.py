"""The benchmarked models and their inputs: packaged configs, random weights with realistic frozen
BatchNorm statistics (speed does not depend on the values), random boxes and images.

Nothing of ``regionclip`` or ``detectron2`` is imported at module level: :mod:`.original` loads
this file by path in a process where the original's detectron2 must be imported first."""
from typing import Sequence

__all__ = ["ZS_CONFIG", "TRAIN_CONFIG", "PRETRAIN_CONFIG", "realistic_random_weights",
           "build", "random_boxes", "zeroshot_inputs"]

ZS_CONFIG = "COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd_zsinf.yaml"
TRAIN_CONFIG = "COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd.yaml"
PRETRAIN_CONFIG = "pretrain/RegionCLIP_RN50.yaml"


def realistic_random_weights(model) -> None:
    """Frozen-BN variances in [0.5, 2] and gains in [0.2, 0.6], as in trained networks."""
    import torch

    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("weight") and buf.dim() == 1:  # FrozenBN gamma
                buf.uniform_(0.2, 0.6)


def build(config: str, opts: Sequence[str], device: str):
    """``(cfg, model)`` of ``config`` (a file or a packaged config name) with ``opts``, on
    ``device``, with :func:`realistic_random_weights`."""
    from detectron2.modeling import build_model

    from regionclip.config import load_config

    cfg = load_config(config, ["MODEL.DEVICE", device] + list(opts), cpu_fallback=False)
    model = build_model(cfg)
    realistic_random_weights(model)
    return cfg, model


def random_boxes(n: int, h: int, w: int, seed: int = 0):
    """``n`` XYXY boxes (at least 16 px a side) inside an ``h`` x ``w`` image."""
    import torch

    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 16
    return torch.cat([xy, xy + wh], dim=1)


def zeroshot_inputs(num_regions: int, size):
    """The model input of one random ``size`` = (h, w) image with ``num_regions`` given boxes (GT
    regions)."""
    import torch
    from detectron2.structures import Boxes, Instances

    h, w = size
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(random_boxes(num_regions, h, w))
    return [{"image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8), "instances": inst,
             "height": h, "width": w}]
