#!/usr/bin/env python
"""Train or evaluate RegionCLIP models (same command line as the original's tools/train_net.py).

    python tools/train_net.py --config-file CONFIG [--eval-only [--random-weights]] [--resume]
        [--num-gpus N]
        [--num-machines M --machine-rank R --dist-url URL]
        [--register-coco NAME JSON IMAGE_ROOT [all|base|novel]]... [--novel-classes FILE|a,b]
        [KEY VALUE ...]

``MODEL.WEIGHTS`` is loaded first (an OpenAI CLIP file, a RegionCLIP or detectron2 checkpoint),
then ``MODEL.CLIP.BB_RPN_WEIGHTS`` into the offline RPN. On a machine without GPUs add
``MODEL.DEVICE cpu``; ``--num-gpus N`` then starts N CPU processes (gloo). ``--register-coco``
registers one's own COCO-format datasets with a base/novel split for ``DATASETS.TRAIN`` and
``DATASETS.TEST`` (docs/CUSTOM_DATASETS.md). ``--eval-only`` without ``MODEL.WEIGHTS`` is an
error unless ``--random-weights`` says that a random model is meant (docs/RELIABILITY.md).
"""
import torch
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from detectron2_ext.engine import launch
from regionclip.config import load_config
from regionclip.data.datasets.custom_ovd import add_register_arguments, register_from_args
from regionclip.engine import Trainer, load_model_weights
from regionclip.engine.checks import require_weights


def setup(args):
    register_from_args(args)  # --register-coco datasets, in every process
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        require_weights(cfg, getattr(args, "random_weights", False), "--random-weights",
                        resume=args.resume)
        model = Trainer.build_model(cfg)
        load_model_weights(cfg, model, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def build_parser():
    """detectron2's command line, ``--register-coco`` / ``--novel-classes`` and
    ``--random-weights``."""
    parser = add_register_arguments(default_argument_parser())
    parser.add_argument("--random-weights", action="store_true",
                        help="with --eval-only and no MODEL.WEIGHTS: evaluate a randomly "
                        "initialised model on purpose (otherwise an error)")
    return parser


def invoke_main():
    # Many dataloader workers with shared tensors exhaust file descriptors (as the original).
    torch.multiprocessing.set_sharing_strategy("file_system")
    args = build_parser().parse_args()
    print("Command Line Args:", args)
    register_from_args(args)  # bad --register-coco input: one clear error before any process starts
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    invoke_main()
