"""Convert OpenAI CLIP weights to a detectron2-style RegionCLIP checkpoint.

    python tools/convert_openai_clip.py --student RN50.pt [--teacher RN50x4.pt] --output OUT.pth

Inputs are OpenAI CLIP files as distributed (TorchScript archives), plain state dicts with OpenAI
key names, or the original's ``teacher_*_student_*_OAI_CLIP.pth`` files. The output
``{"model": ..., "__author__": ..., "matching_heuristics": False}`` holds ``backbone.*`` (student
image tower), ``teacher_backbone.*`` (teacher image tower; default: the student's) and
``lang_encoder.*`` (the student file's text tower), i.e. everything the pretraining model needs
besides the offline RPN; detection models load it too (the teacher keys are then unused).
Architectures are inferred from the weights, so teacher and student may differ.
"""
import argparse
import os
from typing import Optional, Sequence

import torch

from regionclip.checkpoint import convert_openai_clip
from regionclip.tools import run_command

__all__ = ["parse_args", "run", "main"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="convert_openai_clip.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", required=True,
                        help="CLIP file of the student (image tower -> backbone.*, text tower -> "
                             "lang_encoder.*)")
    parser.add_argument("--teacher", default=None,
                        help="CLIP file of the teacher image tower (default: the student file's "
                             "teacher copy if it has one, else its image tower)")
    parser.add_argument("--output", required=True, help="output .pth file")
    return parser.parse_args(argv)


def run(argv: Optional[Sequence[str]] = None) -> dict:
    """Convert and write the checkpoint; returns it."""
    args = parse_args(argv)
    checkpoint, report = convert_openai_clip(args.student, args.teacher)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save(checkpoint, args.output)
    print(report.summary())
    print(f"Wrote {len(checkpoint['model'])} tensors to {args.output}")
    return checkpoint


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command ``tools/convert_openai_clip.py`` / ``regionclip-convert-openai-clip``."""
    return run_command(run, argv)
