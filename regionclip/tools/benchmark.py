"""Speed and memory of RegionCLIP on this machine, next to the FLOP roof.

    python tools/benchmark.py [--cases roof,zeroshot,train,pretrain,batched,onnx]
                              [--regions 100 300 1000] [--chunk 0 128]
                              [--dtype float32 bfloat16] [--size 800 1216]
                              [--device cpu|cuda] [--json output/benchmark.json]

Every case runs in its own process (peak memory = that process's max RSS). The models use
random weights with realistic frozen-BN statistics (speed does not depend on the values). FLOPs
are counted with ``torch.utils.flop_counter`` on the same inputs; "roof" is this machine's measured
matmul throughput in the case's precision (fp32, or bf16 for ``--dtype bfloat16``), so
``efficiency = FLOPs / time / roof``. Results go to stdout (a markdown table) and to ``--json``
(default ``output/benchmark.json`` in the working folder); docs/PERFORMANCE.md records a run.
``--device cuda`` runs the cases on the GPU (timings synchronise the device; roofs of fp32, bf16
and fp16 matmuls on the GPU; peak GPU memory = ``torch.cuda.max_memory_allocated``);
``--dtype float16`` is meant for it. ``batched`` and ``onnx`` (not run by default) time
``RegionCLIP.detect`` batched against one by one (``--images``, ``--batch-size``) and the
exported ONNX detector in onnxruntime against PyTorch, on an RN50 detector with
``--deploy-regions`` RPN regions; they get a table of their own. The logic is
:mod:`regionclip.benchmark`.
"""
import argparse
import json
import os
from typing import Dict, List, Optional, Sequence

from regionclip.benchmark import markdown_table, plan_jobs, run_jobs
from regionclip.benchmark.runner import CASE_NAMES
from regionclip.tools import run_command

__all__ = ["parse_args", "run", "main"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="benchmark.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="roof,zeroshot,train,pretrain",
                        help=f"comma-separated, of {CASE_NAMES}")
    parser.add_argument("--regions", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--train-regions", type=int, default=128)
    parser.add_argument("--size", type=int, nargs=2, default=[800, 1216], metavar=("H", "W"))
    parser.add_argument("--chunk", type=int, nargs="+", default=[0, 128],
                        help="MODEL.CLIP.INFERENCE_REGION_CHUNK values for the zero-shot cases")
    parser.add_argument("--dtype", nargs="+", default=["float32"],
                        choices=("float32", "bfloat16", "float16"),
                        help="MODEL.CLIP.INFERENCE_DTYPE values for the zero-shot cases")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--deploy-regions", type=int, default=100,
                        help="RPN regions per image of the batched and onnx cases")
    parser.add_argument("--images", type=int, default=16,
                        help="generated images of the batched case (short side = --size H)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="images per detect() call of the batched case")
    parser.add_argument("--device", default="cpu",
                        help="cpu or cuda[:i] (MODEL.DEVICE of the cases)")
    parser.add_argument("--json", default=os.path.join("output", "benchmark.json"))
    parser.add_argument("--original", default=None, metavar="CHECKOUT",
                        help="a checkout of microsoft/RegionCLIP: also time its zero-shot "
                             "inference")
    return parser.parse_args(argv)


def run(argv: Optional[Sequence[str]] = None) -> List[Dict]:
    """Run the cases; print the table, write ``--json``; return the results."""
    args = parse_args(argv)
    jobs = plan_jobs(args.cases.split(","), args.regions, args.train_regions, args.chunk,
                     args.dtype, original=bool(args.original),
                     deploy_regions=args.deploy_regions, images=args.images,
                     batch_size=args.batch_size)
    results = run_jobs(jobs, args.size, args.repeats, args.device, args.original)
    print("\n" + markdown_table(results, args.device))
    if os.path.dirname(args.json):
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nwrote {args.json}")
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: :func:`run`, then the exit status (see ``run_command``)."""
    return run_command(run, argv)
