#!/usr/bin/env python
"""Speed and memory of RegionCLIP on this machine, next to the FLOP roof.

    python tools/benchmark.py [--cases roof,zeroshot,train,pretrain] [--regions 100 300 1000]
                              [--chunk 0 128] [--dtype float32 bfloat16] [--size 800 1216]
                              [--device cpu|cuda] [--json output/benchmark.json]

Every case runs in its own process (peak memory = that process's max RSS). The models use
random weights with realistic frozen-BN statistics (speed does not depend on the values). FLOPs
are counted with ``torch.utils.flop_counter`` on the same inputs; "roof" is this machine's measured
matmul throughput in the case's precision (fp32, or bf16 for ``--dtype bfloat16``), so
``efficiency = FLOPs / time / roof``. Results go to stdout (a markdown
table) and to ``--json``; docs/PERFORMANCE.md records a run. ``--device cuda`` runs the cases on
the GPU (timings synchronise the device; roofs of fp32, bf16 and fp16 matmuls on the GPU; peak
GPU memory = ``torch.cuda.max_memory_allocated``); ``--dtype float16`` is meant for it.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZS_CONFIG = os.path.join(REPO,
                         "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd_zsinf.yaml")
TRAIN_CONFIG = os.path.join(REPO,
                            "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd.yaml")
PRETRAIN_CONFIG = os.path.join(REPO, "configs/pretrain/RegionCLIP_RN50.yaml")
_DEVICE = "cpu"  # --device of this run (set in the child process)


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _sync():
    if _DEVICE.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _timeit(fn, repeats):
    fn()  # warm-up (allocator, oneDNN primitive cache / cuDNN autotuning)
    _sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return min(times)


def _flops(fn):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def case_roof(args):
    import torch

    n = 2048 if _DEVICE == "cpu" else 8192
    a, b = torch.randn(n, n, device=_DEVICE), torch.randn(n, n, device=_DEVICE)
    seconds = _timeit(lambda: a @ b, 5)
    a16, b16 = a.bfloat16(), b.bfloat16()
    seconds_bf16 = _timeit(lambda: a16 @ b16, 5)
    out = {"case": "roof", "gflops_fp32": 2 * n ** 3 / seconds / 1e9,
           "gflops_bf16": 2 * n ** 3 / seconds_bf16 / 1e9, "threads": torch.get_num_threads()}
    if _DEVICE != "cpu":
        ah, bh = a.half(), b.half()
        out["gflops_fp16"] = 2 * n ** 3 / _timeit(lambda: ah @ bh, 5) / 1e9
    return out


def _realistic_random_weights(model):
    import torch

    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("weight") and buf.dim() == 1:  # FrozenBN gamma
                buf.uniform_(0.2, 0.6)


def _build(config, opts):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import regionclip  # noqa: F401  (registration)
    from regionclip.yaml_config import merge_config_file

    cfg = get_cfg()
    regionclip.add_regionclip_config(cfg)
    merge_config_file(cfg, config)
    cfg.merge_from_list(["MODEL.DEVICE", _DEVICE] + list(opts))
    model = build_model(cfg)
    _realistic_random_weights(model)
    return cfg, model


def _boxes(n, h, w, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 16
    return torch.cat([xy, xy + wh], dim=1)


def case_zeroshot(args):
    """Zero-shot inference with N given regions (GT mode), one image."""
    import torch
    from detectron2.structures import Boxes, Instances

    torch.manual_seed(0)
    emb = os.path.join(args.tmp, "emb65.pth")
    torch.save(torch.randn(65, 1024), emb)
    h, w = args.size
    cfg, model = _build(ZS_CONFIG, ["MODEL.CLIP.CROP_REGION_TYPE", "GT",
                                    "MODEL.CLIP.TEXT_EMB_PATH", emb,
                                    "MODEL.CLIP.INFERENCE_REGION_CHUNK", str(args.chunk),
                                    "MODEL.CLIP.INFERENCE_DTYPE", args.dtype,
                                    "INPUT.MIN_SIZE_TEST", str(h), "INPUT.MAX_SIZE_TEST", str(w)])
    model.eval()
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(_boxes(args.num_regions, h, w))
    inputs = [{"image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8), "instances": inst,
               "height": h, "width": w}]
    heads = model.roi_heads
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        feats = model.backbone(images.tensor)
        pooled = heads.pooler([feats["res4"]], [inst.gt_boxes.to(model.device)])
        k = min(64, pooled.shape[0])  # regions in the per-region head measurement
        run_all = lambda: model(inputs)  # noqa: E731
        seconds = _timeit(run_all, args.repeats)
        autocast = torch.autocast(model.device.type, dtype=getattr(torch, args.dtype),
                                  enabled=args.dtype != "float32")
        with autocast:
            backbone_s = _timeit(lambda: model.backbone(images.tensor), args.repeats)
            head_s = _timeit(lambda: model.backbone.attnpool(model.backbone.layer4(pooled[:k])),
                             args.repeats)
        flops = _flops(run_all)
        flops_backbone = _flops(lambda: model.backbone(images.tensor))
        flops_head = _flops(lambda: model.backbone.attnpool(model.backbone.layer4(pooled[:k])))
        flops_attn = flops_head - _flops(lambda: model.backbone.layer4(pooled[:k]))
    suffix = {"bfloat16": "_bf16", "float16": "_fp16"}.get(args.dtype, "")
    name = f"zeroshot_{args.num_regions}{suffix}"
    return {"case": name, "regions": args.num_regions, "chunk": args.chunk, "dtype": args.dtype,
            "seconds": seconds, "gflop": flops / 1e9, "backbone_seconds": backbone_s,
            "backbone_gflop": flops_backbone / 1e9, "head_seconds_per_region": head_s / k,
            "head_gflop_per_region": flops_head / k / 1e9,
            "attnpool_gflop_per_region": flops_attn / k / 1e9}


def case_zeroshot_original(args):
    """The same zero-shot workload with the original RegionCLIP code (``--original CHECKOUT``).

    Runs in its own process with the original's fork of detectron2 first on ``sys.path`` and the
    import shims of tests/parity/generate_fixtures.py (none changes a computation).
    """
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "parity_generator", os.path.join(REPO, "tests", "parity", "generate_fixtures.py"))
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    generator.install_shims(args.original)
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances

    torch.manual_seed(0)
    emb = os.path.join(args.tmp, "emb65.pth")
    torch.save(torch.randn(65, 1024), emb)
    h, w = args.size
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(args.original, os.path.relpath(ZS_CONFIG, REPO)))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.CLIP.CROP_REGION_TYPE", "GT",
                         "MODEL.CLIP.TEXT_EMB_PATH", emb, "INPUT.MIN_SIZE_TEST", str(h),
                         "INPUT.MAX_SIZE_TEST", str(w)])
    model = build_model(cfg)
    _realistic_random_weights(model)
    model.eval()
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(_boxes(args.num_regions, h, w))
    inputs = [{"image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8), "instances": inst,
               "height": h, "width": w}]
    with torch.no_grad():
        seconds = _timeit(lambda: model(inputs), args.repeats)
        flops = _flops(lambda: model(inputs))
    return {"case": f"original_zeroshot_{args.num_regions}", "regions": args.num_regions,
            "chunk": "", "seconds": seconds, "gflop": flops / 1e9}


def _time_training_step(model, inputs, repeats):
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

    return _timeit(step, repeats), _flops(step) / 1e9


def case_train(args):
    """One CLIPFastRCNN training step (COCO config, focal loss) on N sampled regions."""
    import torch
    from detectron2.structures import Boxes, Instances

    torch.manual_seed(0)
    emb = os.path.join(args.tmp, "emb48.pth")
    torch.save(torch.randn(48, 1024), emb)
    h, w = args.size
    n = args.num_regions
    cfg, model = _build(TRAIN_CONFIG, ["MODEL.CLIP.CROP_REGION_TYPE", "GT",
                                       "MODEL.CLIP.TEXT_EMB_PATH", emb,
                                       "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", str(n),
                                       "MODEL.ROI_HEADS.POSITIVE_FRACTION", "1.0"])
    model.train()
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(_boxes(n - 1, h, w))  # + the GT box appended to proposals = n regions
    inst.gt_classes = torch.randint(0, 48, (n - 1,))
    inputs = [{"image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8), "instances": inst}]
    seconds, gflop = _time_training_step(model, inputs, args.repeats)
    return {"case": f"train_step_{n}", "regions": n, "seconds": seconds, "gflop": gflop}


def case_pretrain(args):
    """One PretrainFastRCNN step: teacher + student, N regions per image (RANDOM regions), RN50."""
    import torch

    torch.manual_seed(0)
    pool = os.path.join(args.tmp, "pool.pth")
    torch.save(torch.randn(4764, 1024), pool)
    h, w = args.size
    cfg, model = _build(PRETRAIN_CONFIG, ["MODEL.CLIP.CROP_REGION_TYPE", "RANDOM",
                                          "MODEL.CLIP.PRETRAIN_SAMPLE_REGIONS",
                                          str(args.num_regions),
                                          "MODEL.CLIP.CONCEPT_POOL_EMB", pool,
                                          "MODEL.CLIP.GATHER_GPUS", "False"])
    model.train()
    from regionclip.clip.tokenizer import tokenize

    inputs = [{"image": torch.rand(3, h, w), "captions": tokenize(["a photo of a cat on a sofa"]),
               "key": "0", "dataset": "bench", "orig_size": (h, w)}]
    seconds, gflop = _time_training_step(model, inputs, args.repeats)
    return {"case": f"pretrain_step_{args.num_regions}", "regions": args.num_regions,
            "seconds": seconds, "gflop": gflop}


CASES = {"roof": case_roof, "zeroshot": case_zeroshot, "original": case_zeroshot_original,
         "train": case_train, "pretrain": case_pretrain}


def run_child(args):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        result = CASES[args.child](args)
    result["peak_rss_mb"] = _peak_rss_mb()
    if _DEVICE != "cpu":
        import torch

        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        result["gpu"] = torch.cuda.get_device_name()
    print("RESULT " + json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="roof,zeroshot,train,pretrain")
    parser.add_argument("--regions", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--train-regions", type=int, default=128)
    parser.add_argument("--size", type=int, nargs=2, default=[800, 1216], metavar=("H", "W"))
    parser.add_argument("--chunk", type=int, nargs="+", default=[0, 128],
                        help="MODEL.CLIP.INFERENCE_REGION_CHUNK values for the zero-shot cases")
    parser.add_argument("--dtype", nargs="+", default=["float32"],
                        choices=("float32", "bfloat16", "float16"),
                        help="MODEL.CLIP.INFERENCE_DTYPE values for the zero-shot cases")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu",
                        help="cpu or cuda[:i] (MODEL.DEVICE of the cases)")
    parser.add_argument("--json", default=os.path.join(REPO, "output", "benchmark.json"))
    parser.add_argument("--original", default=None, metavar="CHECKOUT",
                        help="a checkout of microsoft/RegionCLIP: also time its zero-shot "
                             "inference")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--num-regions", type=int, default=100, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        global _DEVICE
        args.chunk, args.dtype, _DEVICE = args.chunk[0], args.dtype[0], args.device
        return run_child(args)
    jobs = []
    for case in args.cases.split(","):
        if case not in CASES:
            parser.error(f"unknown case {case!r}; choose from {sorted(CASES)}")
        if case == "zeroshot":
            jobs += [(case, n, c, d) for n in args.regions for c in args.chunk for d in args.dtype]
            if args.original:
                jobs += [("original", n, 0, "float32") for n in args.regions]
        elif case == "train":
            jobs.append((case, args.train_regions, 0, "float32"))
        elif case == "pretrain":
            jobs.append((case, 100, 0, "float32"))
        else:
            jobs.append((case, 0, 0, "float32"))
    results = []
    try:
        from tqdm import tqdm
        jobs_iter = tqdm(jobs, desc="benchmark", unit="case")
    except ImportError:
        jobs_iter = jobs
    for case, n, chunk, dtype in jobs_iter:
        cmd = [sys.executable, __file__, "--child", case, "--num-regions", str(n), "--chunk",
               str(chunk),
               "--dtype", dtype,
               "--size", *map(str, args.size), "--repeats", str(args.repeats),
               "--device", args.device]
        if args.original:
            cmd += ["--original", args.original]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise RuntimeError(f"benchmark case {case} ({n} regions) failed:\n"
                               f"{proc.stderr[-3000:]}")
        results.append(json.loads(lines[-1][7:]))
    roofs = next(({"float32": r["gflops_fp32"], "bfloat16": r["gflops_bf16"],
                   "float16": r.get("gflops_fp16")} for r in results if r["case"] == "roof"), {})
    gpu = args.device != "cpu"
    print(f"\ndevice: {results[0].get('gpu', args.device) if results else args.device}")
    print("\n| case | regions | chunk | seconds | GFLOP | efficiency vs roof | peak RSS MB |"
          + (" peak GPU MB |" if gpu else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if gpu else ""))
    for r in results:
        if r["case"] == "roof":
            print(f"| fp32 matmul roof ({r['threads']} threads) | | | | "
                  f"{r['gflops_fp32']:.1f} GFLOP/s | | {r['peak_rss_mb']:.0f} |")
            print(f"| bf16 matmul roof ({r['threads']} threads) | | | | "
                  f"{r['gflops_bf16']:.1f} GFLOP/s | | |")
            if r.get("gflops_fp16"):
                print(f"| fp16 matmul roof | | | | {r['gflops_fp16']:.1f} GFLOP/s | | |")
            continue
        roof = roofs.get(r.get("dtype", "float32"))
        eff = f"{r['gflop'] / r['seconds'] / roof:.0%}" if roof else "n/a"
        print(f"| {r['case']} | {r.get('regions', '')} | {r.get('chunk', '')} | "
              f"{r['seconds']:.2f} | "
              f"{r['gflop']:.0f} | {eff} | {r['peak_rss_mb']:.0f} |"
              + (f" {r['peak_gpu_mb']:.0f} |" if gpu else ""))
        if "head_seconds_per_region" in r and roof:
            head_eff = r["head_gflop_per_region"] / r["head_seconds_per_region"] / roof
            print(f"|   per-region head (res5 + attnpool), batch <= 64 | | | "
                  f"{r['head_seconds_per_region']*1000:.1f} ms/region | "
                  f"{r['head_gflop_per_region']:.2f} "
                  f"(attnpool {r['attnpool_gflop_per_region']:.2f}) | {head_eff:.0%} | |")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
