"""The benchmark cases. Each takes a :class:`CaseArgs` and returns one result dict (``case``, and
the measurements: ``seconds``, ``gflop``, ...); :data:`CASES` names them. (The ``original`` case,
which must not import this package, is :mod:`.original`.)"""
import os
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

from .models import (
    PRETRAIN_CONFIG,
    TRAIN_CONFIG,
    ZS_CONFIG,
    build,
    random_boxes,
    zeroshot_inputs,
)
from .timing import count_flops, peak_rss_mb, timeit

__all__ = ["CaseArgs", "CASES", "case_roof", "case_zeroshot", "case_train", "case_pretrain",
           "case_batched", "case_onnx"]

DTYPE_SUFFIX = {"bfloat16": "_bf16", "float16": "_fp16"}


@dataclass
class CaseArgs:
    """What one case measures.

    Attributes:
        num_regions (int): regions per image (zero-shot: given boxes; training: sampled regions).
        chunk (int): ``MODEL.CLIP.INFERENCE_REGION_CHUNK`` (zero-shot).
        dtype (str): ``MODEL.CLIP.INFERENCE_DTYPE`` (zero-shot): float32, bfloat16 or float16.
        size (tuple[int, int]): image height and width.
        repeats (int): timed runs (the best is kept) after one warm-up.
        device (str): ``MODEL.DEVICE``.
        tmp (str): a scratch folder (embedding files).
        images (int): generated images of the ``batched`` case.
        batch_size (int): images per ``detect`` call of the ``batched`` case.
    """

    num_regions: int = 100
    chunk: int = 0
    dtype: str = "float32"
    size: Tuple[int, int] = (800, 1216)
    repeats: int = 2
    device: str = "cpu"
    tmp: str = "."
    images: int = 16
    batch_size: int = 8


def case_roof(args: CaseArgs) -> Dict:
    """Matmul throughput of the device in fp32 and bf16 (and fp16 on a GPU)."""
    import torch

    device = args.device
    n = 2048 if device == "cpu" else 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    seconds = timeit(lambda: a @ b, 5, device)
    a16, b16 = a.bfloat16(), b.bfloat16()
    seconds_bf16 = timeit(lambda: a16 @ b16, 5, device)
    out = {"case": "roof", "gflops_fp32": 2 * n ** 3 / seconds / 1e9,
           "gflops_bf16": 2 * n ** 3 / seconds_bf16 / 1e9, "threads": torch.get_num_threads()}
    if device != "cpu":
        ah, bh = a.half(), b.half()
        out["gflops_fp16"] = 2 * n ** 3 / timeit(lambda: ah @ bh, 5, device) / 1e9
    return out


def _embeddings(args: CaseArgs, rows: int) -> str:
    import torch

    path = os.path.join(args.tmp, f"emb{rows}.pth")
    torch.save(torch.randn(rows, 1024), path)
    return path


def case_zeroshot(args: CaseArgs) -> Dict:
    """Zero-shot inference with N given regions (GT mode), one image; also the backbone and the
    per-region head (res5 + attention pooling) alone."""
    import torch

    torch.manual_seed(0)
    h, w = args.size
    device = args.device
    _, model = build(ZS_CONFIG, ["MODEL.CLIP.CROP_REGION_TYPE", "GT",
                                 "MODEL.CLIP.TEXT_EMB_PATH", _embeddings(args, 65),
                                 "MODEL.CLIP.INFERENCE_REGION_CHUNK", str(args.chunk),
                                 "MODEL.CLIP.INFERENCE_DTYPE", args.dtype,
                                 "INPUT.MIN_SIZE_TEST", str(h), "INPUT.MAX_SIZE_TEST", str(w)],
                     device)
    model.eval()
    inputs = zeroshot_inputs(args.num_regions, args.size)
    heads, backbone = model.roi_heads, model.backbone
    with torch.no_grad():
        def run_all():
            return model(inputs)

        seconds = timeit(run_all, args.repeats, device)
        flops = count_flops(run_all)
        # the peak of the whole model's inference, as the original's case measures it: taken
        # before the tensors of the part measurements below are made
        peak = peak_rss_mb()
        images = model.preprocess_image(inputs)
        feats = backbone(images.tensor)
        pooled = heads.pooler([feats["res4"]], [inputs[0]["instances"].gt_boxes.to(model.device)])
        k = min(64, pooled.shape[0])  # regions in the per-region head measurement

        def head():
            return backbone.attnpool(backbone.layer4(pooled[:k]))

        autocast = torch.autocast(model.device.type, dtype=getattr(torch, args.dtype),
                                  enabled=args.dtype != "float32")
        with autocast:
            backbone_s = timeit(lambda: backbone(images.tensor), args.repeats, device)
            head_s = timeit(head, args.repeats, device)
        flops_backbone = count_flops(lambda: backbone(images.tensor))
        flops_head = count_flops(head)
        flops_attn = flops_head - count_flops(lambda: backbone.layer4(pooled[:k]))
    name = f"zeroshot_{args.num_regions}{DTYPE_SUFFIX.get(args.dtype, '')}"
    return {"case": name, "regions": args.num_regions, "chunk": args.chunk, "dtype": args.dtype,
            "seconds": seconds, "gflop": flops / 1e9, "backbone_seconds": backbone_s,
            "backbone_gflop": flops_backbone / 1e9, "head_seconds_per_region": head_s / k,
            "head_gflop_per_region": flops_head / k / 1e9,
            "attnpool_gflop_per_region": flops_attn / k / 1e9, "peak_rss_mb": peak}


def time_training_step(model, inputs, repeats: int, device: str):
    """(seconds, GFLOP) of one SGD step (forward, backward, update) of ``model`` on ``inputs``."""
    import torch
    from detectron2.utils.events import EventStorage

    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def step():
        with EventStorage():
            loss = sum(model(inputs).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    return timeit(step, repeats, device), count_flops(step) / 1e9


def case_train(args: CaseArgs) -> Dict:
    """One CLIPFastRCNN training step (COCO config, focal loss) on N sampled regions."""
    import torch
    from detectron2.structures import Boxes, Instances

    torch.manual_seed(0)
    h, w = args.size
    n = args.num_regions
    _, model = build(TRAIN_CONFIG, ["MODEL.CLIP.CROP_REGION_TYPE", "GT",
                                    "MODEL.CLIP.TEXT_EMB_PATH", _embeddings(args, 48),
                                    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", str(n),
                                    "MODEL.ROI_HEADS.POSITIVE_FRACTION", "1.0"], args.device)
    model.train()
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(random_boxes(n - 1, h, w))  # + the GT box appended to proposals = n
    inst.gt_classes = torch.randint(0, 48, (n - 1,))
    inputs = [{"image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8), "instances": inst}]
    seconds, gflop = time_training_step(model, inputs, args.repeats, args.device)
    return {"case": f"train_step_{n}", "regions": n, "seconds": seconds, "gflop": gflop}


def case_pretrain(args: CaseArgs) -> Dict:
    """One PretrainFastRCNN step: teacher + student, N regions per image (RANDOM regions), RN50."""
    import torch

    from regionclip.clip.tokenizer import tokenize

    torch.manual_seed(0)
    pool = os.path.join(args.tmp, "pool.pth")
    torch.save(torch.randn(4764, 1024), pool)
    h, w = args.size
    _, model = build(PRETRAIN_CONFIG, ["MODEL.CLIP.CROP_REGION_TYPE", "RANDOM",
                                       "MODEL.CLIP.PRETRAIN_SAMPLE_REGIONS", str(args.num_regions),
                                       "MODEL.CLIP.CONCEPT_POOL_EMB", pool,
                                       "MODEL.CLIP.GATHER_GPUS", "False"], args.device)
    model.train()
    inputs = [{"image": torch.rand(3, h, w), "captions": tokenize(["a photo of a cat on a sofa"]),
               "key": "0", "dataset": "bench", "orig_size": (h, w)}]
    seconds, gflop = time_training_step(model, inputs, args.repeats, args.device)
    return {"case": f"pretrain_step_{args.num_regions}", "regions": args.num_regions,
            "seconds": seconds, "gflop": gflop}


def case_batched(args: CaseArgs) -> Dict:
    """Images/s of ``RegionCLIP.detect`` on ``args.images`` generated images (short side
    ``args.size[0]``), one by one and ``args.batch_size`` at a time
    (:func:`.deploy.batched_throughput`), RN50 detector with ``args.num_regions`` RPN regions."""
    from .deploy import VOCABULARY, batched_throughput, deploy_detector

    rc = deploy_detector(args.num_regions, args.device)
    row = batched_throughput(rc, VOCABULARY, num_images=args.images, size=args.size[0],
                             batch_size=args.batch_size)
    return dict(row, case="batched", regions=args.num_regions)


def case_onnx(args: CaseArgs) -> Dict:
    """Median ms of one image through the exported ONNX detector (onnxruntime) and through
    PyTorch (:func:`.deploy.onnx_latency`), the detector of :func:`case_batched`."""
    from .deploy import VOCABULARY, deploy_detector, onnx_latency

    rc = deploy_detector(args.num_regions, args.device)
    row = onnx_latency(rc, VOCABULARY, size=args.size[0], repeats=args.repeats)
    return dict(row, case="onnx", regions=args.num_regions, repeats=args.repeats)


CASES: Dict[str, Callable[[CaseArgs], Dict]] = {
    "roof": case_roof, "zeroshot": case_zeroshot, "train": case_train, "pretrain": case_pretrain,
    "batched": case_batched, "onnx": case_onnx}
