"""The results table of a toy-world run (``report.md``/``report.json``, and docs/TOYWORLD.md).

The markdown lists the command that made the run, the stage timings, the zero-shot table (the
paper's Table 4 at toy scale), the transfer table (Table 1 at toy scale, with the oracle row),
region recognition and pseudo labels (Fig. 1 at toy scale) and side metrics (CLIP retrieval, RPN
recall). Every AP50 is detectron2's COCO evaluation; ``± s`` is the standard
deviation of the same AP50 over bootstrap resamples of the test images.
"""
import os
import platform
import re
from typing import Dict, Optional

import torch

from .common import read_json, write_json

__all__ = ["MARK_BEGIN", "MARK_END", "results_markdown", "write_report", "replace_section"]

MARK_BEGIN = "<!-- toyworld-results:begin (written by tools/toyworld.py; do not edit) -->"
MARK_END = "<!-- toyworld-results:end -->"
_SPLITS = ("novel", "base", "all")


def _cell(result: dict, split: str) -> str:
    value = result["coco"][f"AP50_{split}"]
    std = result["bootstrap"][split]["std"]
    if value is None:
        return "n/a"
    return f"{value:.1f} ± {std:.1f}" if std is not None else f"{value:.1f}"


def _metrics(out: str, stage: str) -> dict:
    path = os.path.join(out, stage, "metrics.json")
    return read_json(path) if os.path.isfile(path) else {}


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _percent(acc: dict) -> str:
    return " | ".join(f"{100 * acc[s]:.1f}" for s in ("all", "base", "novel"))


def _regions_markdown(out: str, names: Dict[str, str]) -> list:
    """The region recognition table (the paper's Fig. 1 at toy scale) and the pseudo labels."""
    path = os.path.join(out, "regions", "results.json")
    if not os.path.isfile(path):
        return []
    reg = read_json(path)
    lines = ["", "Region recognition of the test objects among the 12 names (Fig. 1 at toy "
             "scale), top-1 %: `crop` encodes the object cut out and resized as a whole image, "
             "`RoI` pools its box from the whole scene's features (what a detector does):", "",
             "| model | crop all | crop base | crop novel | RoI all | RoI base | RoI novel |",
             "|---|---|---|---|---|---|---|"]
    for model in ("teacher", "student"):
        lines.append(f"| {names[model]} | {_percent(reg[model]['crop'])} | "
                     f"{_percent(reg[model]['roi'])} |")
    pl = reg["teacher_pseudo_labels"]
    lines += ["", f"Pseudo labels: of the {pl['regions']} RPN proposals that overlap a test object "
              f"(IoU >= 0.5), {100 * pl['correct']:.1f}% get that object's shape concept from "
              f"the teacher (base {100 * pl['correct_base']:.1f}%, novel "
              f"{100 * pl['correct_novel']:.1f}%; most common concept '{pl['most_common']}', "
              f"{100 * pl['most_common_share']:.1f}%)."]
    if "object_majority_correct" in pl:
        wrong = ", ".join(f"{name} -> '{pl['class_plurality'][name][0]}'"
                          for name in pl["classes_plurality_wrong"]) or "none"
        lines += ["", "Their errors are the objects' own, not noise across proposals: the "
                  f"majority label of an object's proposals is right for "
                  f"{100 * pl['object_majority_correct']:.1f}% of the {pl['objects']} objects; "
                  f"{100 * pl['objects_all_correct']:.1f}% get the right shape from all their "
                  f"proposals, {100 * pl['objects_none_correct']:.1f}% from none; categories "
                  f"whose most common pseudo concept names another shape: {wrong}."]
    return lines


def _check(name: str, value: float, target: float, unit: str = "", fmt: str = ".1f") -> str:
    """A row of the checks table: measured value, target (value >= target), met or short by."""
    met = value >= target
    gap = "met" if met else f"short by {target - value:{fmt}}{unit}"
    return f"| {name} | {value:{fmt}}{unit} | >= {target:{fmt}}{unit} | {gap} |"


def _checks_markdown(out: str, timings: Dict[str, float]) -> list:
    """What the toy world should show (docs/TOYWORLD.md), measured by this run."""
    path = os.path.join(out, "regions", "results.json")
    if not os.path.isfile(path):
        return []
    reg = read_json(path)
    zs = read_json(os.path.join(out, "zeroshot", "results.json"))
    tr = read_json(os.path.join(out, "transfer", "results.json"))
    t, st = reg["teacher"], reg["student"]
    rows = [_check("teacher crop accuracy, all %", 100 * t["crop"]["all"], 70),
            _check("teacher crop accuracy, novel %", 100 * t["crop"]["novel"], 50),
            _check("teacher crop minus RoI accuracy (Fig. 1: RoI below crop), points",
                   100 * (t["crop"]["all"] - t["roi"]["all"]), 0.1)]
    for split in ("all", "novel"):
        rows += [_check(f"student RoI accuracy, {split} %", 100 * st["roi"][split], 60),
                 _check(f"student minus teacher RoI accuracy, {split}, points",
                        100 * (st["roi"][split] - t["roi"][split]), 15)]
    rows.append(_check("pseudo labels naming the right shape %",
                       100 * reg["teacher_pseudo_labels"]["correct"], 60))
    for regions in ("GT", "RPN"):
        teacher = zs["teacher"][regions]["coco"]["AP50_novel"]
        student = zs["student"][regions]["coco"]["AP50_novel"]
        rows.append(_check(f"zero-shot novel AP50, {regions} boxes, student / teacher",
                           student / max(teacher, 1e-9), 1.5, "x", ".2f"))
    s_tr, t_tr = tr["student"]["coco"], tr["teacher"]["coco"]
    rows += [_check("transfer from the student, base AP50", s_tr["AP50_base"], 70),
             _check("transfer from the student, novel AP50", s_tr["AP50_novel"], 25),
             _check("transfer novel AP50, student minus teacher", s_tr["AP50_novel"]
                    - t_tr["AP50_novel"], 0.1)]
    demo = os.path.join(out, "demo", "detections.json")
    scores = read_json(demo)["scores"] if os.path.isfile(demo) else None
    if isinstance(scores, dict):
        for split in ("base", "novel"):
            if scores[split]["recall"] is not None:
                rows.append(_check(f"picture grid: objects found with the right name, {split} %",
                                   100 * scores[split]["recall"], 70))
    total = sum(timings.values()) / 60
    met = "met" if total <= 20 else f"over by {total - 20:.1f} min"
    rows.append(f"| time of the run (this machine, see the timing note) | {total:.1f} min | "
                f"<= 20 min | {met} |")
    return ["", "What the toy world should show, measured by this run:", "",
            "| check | measured | target | |", "|---|---|---|---|"] + rows


def results_markdown(out: str, settings, timings: Dict[str, float], command: str = "") -> str:
    """Markdown of the run in ``out`` (zero-shot and transfer results must exist)."""
    zs = read_json(os.path.join(out, "zeroshot", "results.json"))
    tr = read_json(os.path.join(out, "transfer", "results.json"))
    world = read_json(os.path.join(out, "world", "world.json"))
    lines = []
    if command:
        lines += ["Made by:", "", "```", command, "```", ""]
    total = sum(timings.values())
    threads = torch.get_num_threads()
    lines += [f"Seed {settings.SEED}; torch {torch.__version__}, {threads} "
              f"thread{'s' if threads != 1 else ''}, {platform.machine()}. World: "
              + ", ".join(f"{k} {v['images']} images / {v['objects']} objects"
                          for k, v in world["splits"].items())
              + f"; concept pool {world['concepts']} caption nouns.", "",
              "| stage | " + " | ".join(timings) + " | total |",
              "|---" * (len(timings) + 2) + "|",
              "| seconds | " + " | ".join(f"{v:.0f}" for v in timings.values())
              + f" | {total:.0f} ({total / 60:.1f} min) |", ""]
    lines += ["Zero-shot detection on the test scenes (Table 4 at toy scale), box AP50:", "",
              "| model | regions | novel | base | all |", "|---|---|---|---|---|"]
    names = {"teacher": "teacher CLIP (stage 1)", "student": "RegionCLIP student (stage 3)"}
    for regions in ("GT", "RPN"):
        for model in ("teacher", "student"):
            r = zs[model][regions]
            lines.append(f"| {names[model]} | {regions} | "
                         + " | ".join(_cell(r, s) for s in _SPLITS) + " |")
    lines += ["", "Transfer: detectors fine-tuned on base boxes, tested on all 12 categories "
              "(Table 1 at toy scale), box AP50 with RPN proposals:", "",
              "| initialisation | novel | base | all |", "|---|---|---|---|"]
    for model in ("teacher", "student"):
        lines.append(f"| {names[model]} | " + " | ".join(_cell(tr[model], s) for s in _SPLITS)
                     + " |")
    if "oracle" in tr:
        lines.append(f"| oracle: {settings.TRANSFER.ORACLE}, boxes of all 12 categories | "
                     + " | ".join(_cell(tr["oracle"], s) for s in _SPLITS) + " |")
    lines += _regions_markdown(out, names)
    clip, rpn = _metrics(out, "clip"), _metrics(out, "rpn")
    extra = []
    if clip:
        ret = clip["test_retrieval"]
        extra.append(f"teacher CLIP test retrieval top-1 among {ret['pairs']} pairs: image->text "
                     f"{100 * ret['image_to_text_top1']:.1f}%, text->image "
                     f"{100 * ret['text_to_image_top1']:.1f}%")
    if rpn:
        extra.append(f"RPN recall (IoU 0.5, {rpn['proposals_per_image']:.0f} proposals per image): "
                     f"base {100 * rpn['recall50_base']:.1f}%, novel "
                     f"{100 * rpn['recall50_novel']:.1f}%")
    demo = os.path.join(out, "demo", "detections.json")
    scores = read_json(demo)["scores"] if os.path.isfile(demo) else None
    if isinstance(scores, dict):
        extra.append("stage 6's picture grid (the student's transfer detector, score >= "
                      f"{settings.EVAL.GRID_SCORE_THRESH}): "
                      + "; ".join(f"{s} {scores[s]['found']}/{scores[s]['objects']} objects found "
                                  f"with the right name, precision {_pct(scores[s]['precision'])}"
                                  for s in ("base", "novel")))
    if extra:
        lines += [""] + [f"- {e}" for e in extra]
    lines += _checks_markdown(out, timings)
    lines += ["", f"`± s`: standard deviation over {settings.EVAL.BOOTSTRAP} bootstrap resamples "
              "of the test images (test-set sampling noise only; see the seed spread in the text)."]
    return "\n".join(lines) + "\n"


def replace_section(doc: str, body: str) -> None:
    """Replace the text between :data:`MARK_BEGIN` and :data:`MARK_END` of ``doc`` by ``body``."""
    with open(doc) as f:
        text = f.read()
    if MARK_BEGIN not in text or MARK_END not in text:
        raise ValueError(f"{doc} has no results section (expected the lines '{MARK_BEGIN}' and "
                         f"'{MARK_END}')")
    pattern = re.escape(MARK_BEGIN) + ".*?" + re.escape(MARK_END)
    text = re.sub(pattern, lambda _: f"{MARK_BEGIN}\n{body}{MARK_END}", text, flags=re.S)
    with open(doc, "w") as f:
        f.write(text)


def write_report(out: str, settings, timings: Dict[str, float], doc: Optional[str] = None,
                 command: str = "") -> str:
    """Write ``report.md`` and ``report.json`` in ``out`` (and the section of ``doc``)."""
    body = results_markdown(out, settings, timings, command)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(body)
    write_json(os.path.join(out, "report.json"), {
        "command": command, "timings": timings,
        "zeroshot": read_json(os.path.join(out, "zeroshot", "results.json")),
        "transfer": read_json(os.path.join(out, "transfer", "results.json")),
        "regions": read_json(os.path.join(out, "regions", "results.json"))})
    if doc:
        replace_section(doc, body)
    return os.path.join(out, "report.md")
