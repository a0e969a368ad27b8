"""Command line of the toy world (``tools/toyworld.py``): run the pipeline, or the demo.

    python tools/toyworld.py [run] --output output/toyworld [--size micro|tiny|default|FILE]
        [--seed 0] [--stages world,clip,...] [--force] [--ship-weights DIR] [--doc FILE]
        [--no-progress] [--vocab "a,b"] [--images FILE_OR_DIR] [KEY VALUE ...]
    python tools/toyworld.py demo [--output output/demo] [--package FILE] [--vocab "a,b,c"]
        [--images FILE_OR_DIR] [--num-scenes 8] [--seed 2024] [--threshold 0.15] [--top-k 6]
    python tools/toyworld.py analyze --output output/toyworld [--size ...] [KEY VALUE ...]
"""
import argparse
import logging
import shlex
import sys
import time

__all__ = ["main", "run_main", "demo_main", "analyze_main"]


def _run_parser():
    from .pipeline import STAGES

    p = argparse.ArgumentParser(prog="tools/toyworld.py [run]",
                                description="RegionCLIP end to end in a generated world.")
    p.add_argument("--output", default="output/toyworld", help="output folder")
    p.add_argument("--size", default="default",
                   help="settings: micro, tiny, default (projects/toyworld/presets/) or a "
                   "yaml file")
    p.add_argument("--seed", type=int, default=None, help="overrides SEED")
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma-separated stages among {','.join(STAGES)}")
    p.add_argument("--force", action="store_true", help="rerun stages whose outputs exist")
    p.add_argument("--ship-weights", default=None,
                   help="copy the detector package here (make toyworld: "
                   "projects/toyworld/weights)")
    p.add_argument("--doc", default=None, help="markdown file whose results section is rewritten")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--vocab", default="",
                   help="comma-separated names for the picture grid (EVAL.GRID_VOCAB)")
    p.add_argument("--images", default="",
                   help="image or folder for the picture grid (EVAL.GRID_IMAGES_PATH)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="settings overrides KEY VALUE ...")
    return p


def run_main(argv) -> int:
    """``tools/toyworld.py run``: the pipeline."""
    from .pipeline import run_pipeline
    from .settings import load_settings

    args = _run_parser().parse_args(argv)
    opts = list(args.opts) + (["SEED", str(args.seed)] if args.seed is not None else [])
    vocab = [v.strip() for v in args.vocab.split(",") if v.strip()]
    if vocab:
        opts += ["EVAL.GRID_VOCAB", repr(vocab)]
    if args.images:
        opts += ["EVAL.GRID_IMAGES_PATH", repr(args.images)]
    settings = load_settings(args.size, opts)
    command = "python tools/toyworld.py " + " ".join(shlex.quote(a) for a in argv)
    start = time.perf_counter()
    ran = run_pipeline(settings, args.output, [s for s in args.stages.split(",") if s],
                       force=args.force, progress=not args.no_progress,
                       ship_to=args.ship_weights, doc=args.doc, command=command)
    print(f"toy world: ran {', '.join(f'{k} {v:.0f}s' for k, v in ran.items()) or 'nothing new'}"
          f"; {time.perf_counter() - start:.0f} s in total; results in {args.output}/report.md")
    return 0


def demo_main(argv) -> int:
    """``tools/toyworld.py demo``: detect a vocabulary with the shipped toy detector."""
    from .demo import DEFAULT_PACKAGE, load_images, run_demo
    from .demo_score import score_table

    p = argparse.ArgumentParser(prog="tools/toyworld.py demo",
                                description="Detect a vocabulary with the toy detector.")
    p.add_argument("--output", default="output/demo")
    p.add_argument("--package", default=DEFAULT_PACKAGE, help="toy detector package")
    p.add_argument("--vocab", default="", help="comma-separated names (default: the 12 classes)")
    p.add_argument("--images", default="", help="an image file or a folder (default: generated)")
    p.add_argument("--num-scenes", type=int, default=8)
    p.add_argument("--seed", type=int, default=2024, help="seed of the generated scenes")
    p.add_argument("--threshold", type=float, default=0.15, help="minimum score")
    p.add_argument("--top-k", type=int, default=6, help="detections kept per image")
    p.add_argument("--agnostic-nms", type=float, default=0.3,
                   help="IoU of a class-agnostic NMS over the per-class detections (1: off)")
    args = p.parse_args(argv)
    vocab = [v.strip() for v in args.vocab.split(",") if v.strip()] or None
    images = load_images(args.images) if args.images else None
    start = time.perf_counter()
    result = run_demo(args.output, args.package, vocab, images, args.num_scenes, args.seed,
                      args.threshold, top_k=args.top_k, agnostic_nms=args.agnostic_nms)
    found = sum(len(e["detections"]) for e in result["images"])
    print(f"demo: {found} detections of {len(result['vocabulary'])} names in "
          f"{len(result['images'])} images in {time.perf_counter() - start:.1f} s; pictures and "
          f"detections.json in {args.output}")
    scores = result["scores"]
    if isinstance(scores, dict):
        print(f"objects found with the right name (IoU >= 0.5) at score >= {args.threshold}:")
        print(score_table(scores))
    else:
        print(f"precision and recall: {scores}")
    return 0


def analyze_main(argv) -> int:
    """``tools/toyworld.py analyze``: region recognition of teacher and student, pseudo labels."""
    import json

    from .analysis import analyze
    from .settings import load_settings

    p = argparse.ArgumentParser(prog="tools/toyworld.py analyze",
                                description="Why the student does (not) beat the teacher.")
    p.add_argument("--output", default="output/toyworld", help="folder of a finished run")
    p.add_argument("--size", default="default", help="the run's settings")
    p.add_argument("opts", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    result = analyze(args.output, load_settings(args.size, args.opts))
    print(json.dumps(result, indent=1))
    return 0


def main(argv=None) -> int:
    """Dispatch to ``run`` (default) or ``demo``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("detectron2", "fvcore", "d2.checkpoint", "regionclip.checkpoint",
                  "regionclip.modeling", "regionclip.engine"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if argv and argv[0] == "demo":
        return demo_main(argv[1:])
    if argv and argv[0] == "analyze":
        return analyze_main(argv[1:])
    if argv and argv[0] == "run":
        argv = argv[1:]
    return run_main(argv)
