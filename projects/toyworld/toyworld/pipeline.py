"""The toy-world pipeline: every stage with resumable outputs under one output folder.

Stages (in order) and the file that marks each one as done::

    world     world/world.json                 scene generator, captions, splits, concept pool
    clip      clip/clip.pth                    1. small CLIP, both towers (the teacher)
    rpn       rpn/model_final.pth              2. class-agnostic RPN on base boxes
    pretrain  pretrain/student_clip.pth        3. RegionCLIP pretraining of the student
    zeroshot  zeroshot/results.json            4. zero-shot AP50, GT and RPN boxes, both models
    regions   regions/results.json             4b. region recognition: crops, RoIs, pseudo labels
    transfer  transfer/results.json            5. base-class fine-tuning from both, AP50
    demo      demo/grid.png                    6. detector package + picture grid of test scenes
    report    report.json                      the results table (and docs/TOYWORLD.md)

A stage whose marker exists is skipped unless forced; a forced stage makes every later stage
run again; the report is always rewritten, and so is the grid when a vocabulary or images are
given for it (``EVAL.GRID_VOCAB`` / ``EVAL.GRID_IMAGES_PATH``). ``timings.json`` keeps the
wall-clock seconds of every stage that ran.
"""
import logging
import os
from typing import Dict, Iterable, Optional

from .common import Timer, read_json, seed_everything, teacher_temperature, write_json

__all__ = ["STAGES", "MARKERS", "run_pipeline", "stage_paths"]

logger = logging.getLogger(__name__)

STAGES = ("world", "clip", "rpn", "pretrain", "zeroshot", "regions", "transfer", "demo",
          "report")
MARKERS = {"world": "world/world.json", "clip": "clip/clip.pth", "rpn": "rpn/model_final.pth",
           "pretrain": "pretrain/student_clip.pth", "zeroshot": "zeroshot/results.json",
           "regions": "regions/results.json",
           "transfer": "transfer/results.json", "demo": "demo/grid.png",
           "report": "report.json"}


def stage_paths(out: str) -> Dict[str, Dict[str, str]]:
    """Files of every stage's outputs that later stages read."""
    j = os.path.join
    return {
        "clip": {"arch": j(out, "clip", "arch.json"), "weights": j(out, "clip", "clip.pth"),
                 "metrics": j(out, "clip", "metrics.json")},
        "rpn": {"config": j(out, "rpn", "config.yaml"),
                "weights": j(out, "rpn", "model_final.pth")},
        "student": {"arch": j(out, "clip", "arch.json"),
                    "weights": j(out, "pretrain", "student_clip.pth")},
        "transfer": {"teacher": j(out, "transfer", "teacher"),
                     "student": j(out, "transfer", "student")},
    }


def _done(out: str, stage: str) -> bool:
    return os.path.isfile(os.path.join(out, MARKERS[stage]))


def run_pipeline(settings, out: str, stages: Optional[Iterable[str]] = None, force: bool = False,
                 progress: bool = True, ship_to: Optional[str] = None,
                 doc: Optional[str] = None, command: str = "") -> Dict[str, float]:
    """Run the stages that are not done yet.

    Args:
        settings (CfgNode): toy-world settings (:func:`~.settings.load_settings`).
        out (str): output folder.
        stages (iterable[str]): stages to consider (default all); earlier stages must be done.
        force (bool): run the selected stages even when their outputs exist.
        progress (bool): show progress bars.
        ship_to (str): also copy the detector package of stage ``demo`` to this folder (what
            ``make toyworld`` does with ``projects/toyworld/weights``).
        doc (str): markdown file whose results section stage ``report`` rewrites (or None).
        command (str): the command line that made the run (written into the report).

    Returns:
        dict: stage -> seconds, for the stages that ran now.
    """
    from .analysis import analyze
    from .evaluate import zero_shot
    from .pretrain import pretrain_student
    from .report import write_report
    from .train_clip import train_clip
    from .train_rpn import train_rpn
    from .transfer import transfer
    from .visualize import demo_stage
    from .world import World, generate_world

    selected = list(STAGES if stages is None else stages)
    unknown = [s for s in selected if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; expected some of {list(STAGES)}")
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "settings.json"), {"settings": settings.dump()})
    seed_everything(settings.SEED, settings.NUM_THREADS, settings.DETERMINISTIC)
    paths = stage_paths(out)
    timings_file = os.path.join(out, "timings.json")
    timings = read_json(timings_file) if os.path.isfile(timings_file) else {}
    ran: Dict[str, float] = {}
    rerun = False
    for stage in STAGES:
        if stage not in selected:
            if not _done(out, stage) and any(STAGES.index(s) > STAGES.index(stage)
                                             for s in selected):
                raise RuntimeError(f"stage '{stage}' has not run yet in {out} but a later stage "
                                   "was requested; include it in --stages")
            continue
        custom_grid = stage == "demo" and bool(settings.EVAL.GRID_VOCAB
                                               or settings.EVAL.GRID_IMAGES_PATH)
        if (stage != "report" and not custom_grid and _done(out, stage)
                and not (force or rerun)):
            logger.info("stage %s: outputs exist in %s, skipped", stage, out)
            continue
        rerun = True
        seed_everything(settings.SEED, settings.NUM_THREADS, settings.DETERMINISTIC)
        world = World(os.path.join(out, "world")) if stage != "world" else None
        with Timer() as t:
            if stage == "world":
                generate_world(settings, os.path.join(out, "world"), progress)
            elif stage == "clip":
                train_clip(settings, world, os.path.join(out, "clip"), progress)
            elif stage == "rpn":
                train_rpn(settings, world, paths["clip"], os.path.join(out, "rpn"), progress)
            elif stage == "pretrain":
                pretrain_student(settings, world, paths["clip"], paths["rpn"],
                                 os.path.join(out, "pretrain"), progress)
            elif stage == "zeroshot":
                zero_shot(settings, world, {"teacher": paths["clip"], "student": paths["student"]},
                          paths["rpn"], os.path.join(out, "zeroshot"),
                          teacher_temperature(settings, paths["clip"]["metrics"]))
            elif stage == "regions":
                analyze(out, settings)
            elif stage == "transfer":
                transfer(settings, world, {"teacher": paths["clip"], "student": paths["student"]},
                         paths["rpn"], os.path.join(out, "transfer"), progress,
                         teacher_temperature(settings, paths["clip"]["metrics"]))
            elif stage == "demo":
                demo_stage(settings, world, out, ship_to)
        if stage != "report":
            ran[stage] = t.seconds
            timings[stage] = t.seconds
            write_json(timings_file, timings)
            logger.info("stage %s done in %.1f s", stage, t.seconds)
        else:
            write_report(out, settings, timings, doc=doc, command=command)
    return ran
