#!/usr/bin/env python
"""Train or evaluate RegionCLIP models (same command line as the original's tools/train_net.py).

    python tools/train_net.py --config-file CONFIG [--eval-only [--random-weights]] [--resume]
        [--num-gpus N]
        [--num-machines M --machine-rank R --dist-url URL]
        [--register-coco NAME JSON IMAGE_ROOT [all|base|novel]]... [--novel-classes FILE|a,b]
        [KEY VALUE ...]

``MODEL.WEIGHTS`` is loaded first (an OpenAI CLIP file, a RegionCLIP or detectron2 checkpoint),
then ``MODEL.CLIP.BB_RPN_WEIGHTS`` into the offline RPN. ``MODEL.DEVICE`` decides where the
processes run: with ``cuda`` (the default) ``--num-gpus N`` starts N processes joined by NCCL, one
GPU each (``cuda:<local rank>``); with ``cpu`` (also chosen when no GPU is present) N CPU
processes joined by gloo. ``SOLVER.AMP.ENABLED True`` (mixed precision) needs CUDA.
``--register-coco``
registers one's own COCO-format datasets with a base/novel split for ``DATASETS.TRAIN`` and
``DATASETS.TEST`` (docs/CUSTOM_DATASETS.md). ``--eval-only`` without ``MODEL.WEIGHTS`` is an
error unless ``--random-weights`` says that a random model is meant (docs/RELIABILITY.md).
"""
import logging

import torch
import torch.distributed as dist
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from detectron2_ext.engine import launch
from detectron2_ext.utils import process_device, resolve_device
from regionclip.config import load_config
from regionclip.data.datasets.custom_ovd import add_register_arguments, register_from_args
from regionclip.engine import Trainer, load_model_weights
from regionclip.engine.checks import require_weights


def setup(args):
    register_from_args(args)  # --register-coco datasets, in every process
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = process_device(cfg.MODEL.DEVICE)  # several CUDA processes: one GPU each
    cfg.freeze()
    default_setup(cfg, args)
    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else "none"
    logging.getLogger("detectron2").info("Process rank %d of %d computes on %s (process group: %s)",
                                         comm.get_rank(), comm.get_world_size(), cfg.MODEL.DEVICE,
                                         backend)
    return cfg


def setup_package_loggers(cfg):
    """Send the messages of this package's modules (e.g. how a resume went) to the console and
    to OUTPUT_DIR/log.txt, like detectron2's."""
    for name in ("regionclip", "detectron2_ext"):
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name=name)


def main(args):
    cfg = setup(args)
    setup_package_loggers(cfg)
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
    device = resolve_device(load_config(args.config_file, args.opts).MODEL.DEVICE)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,), backend=launch_backend(device))


def launch_backend(device) -> str:
    """The process-group backend for processes computing on ``device``: NCCL on CUDA, else gloo."""
    return "nccl" if device.type == "cuda" else "gloo"


if __name__ == "__main__":
    invoke_main()
