"""Stage 5: open-vocabulary transfer, detectors fine-tuned on base boxes from teacher or student.

For each initialisation (the teacher CLIP, the RegionCLIP student) a ``CLIPFastRCNN``
(projects/toyworld/configs/transfer.yaml) with the frozen toy RPN is fine-tuned on ``det_train``
boxes of the 8 base categories, its classifier being the frozen text embeddings of the base names;
at test time the classifier holds all 12 names (open-set embeddings) and AP50 is reported on novel,
base and all categories (the paper's Table 1 at toy scale). The oracle row is the same detector
fine-tuned on the boxes of all 12 categories (its training sees the novel boxes: it is the ceiling
of the table, not a method).
"""
import logging
import os
from typing import Dict

from detectron2.modeling import build_model

from regionclip.engine.trainer import load_model_weights

from .common import detection_batches, save_trained, train_loop, write_json
from .evaluate import detector_cfg, evaluate_predictions, predict, write_class_embeddings
from .workers import run_jobs
from .world import World

__all__ = ["transfer"]

logger = logging.getLogger(__name__)


def transfer(settings, world, models: Dict[str, Dict[str, str]], rpn_paths: Dict[str, str],
             out_dir: str, progress: bool = True, clss_temp: float = None) -> Dict[str, dict]:
    """Fine-tune one detector per initialisation on base boxes, and the oracle (initialised
    from ``models[TRANSFER.ORACLE]``, unless that is empty) on the boxes of all categories;
    evaluate them.

    Args:
        settings (CfgNode): toy-world settings (``TRANSFER``).
        world (World): the generated world.
        models (dict): name -> ``{"arch", "weights"}`` (OpenAI-format CLIP files).
        rpn_paths (dict): stage-2 outputs.
        out_dir (str): stage folder; ``<name>/model_final.pth``, ``config.yaml``,
            ``metrics.json``, ``results.json`` per initialisation.
        progress (bool): show progress bars.
        clss_temp (float): classifier temperature (default: the config's).

    Returns:
        dict: name -> ``{"result": evaluation, "weights": path, "config": path}``.
    """
    jobs = [(settings, world.root, name, paths, "base", rpn_paths, out_dir, progress, clss_temp)
            for name, paths in models.items()]
    if settings.TRANSFER.ORACLE:
        jobs.append((settings, world.root, "oracle", models[settings.TRANSFER.ORACLE], "all",
                     rpn_paths, out_dir, progress, clss_temp))
    out = dict(zip([job[2] for job in jobs], run_jobs(settings, _transfer_one, jobs)))
    write_json(os.path.join(out_dir, "results.json"), {k: v["result"] for k, v in out.items()})
    return out


def _transfer_one(settings, world_root: str, name: str, paths: Dict[str, str], split: str,
                  rpn_paths: Dict[str, str], out_dir: str, progress: bool,
                  clss_temp: float) -> dict:
    """Fine-tune on the boxes of ``split`` (``base``, or ``all`` for the oracle) and evaluate the
    detector initialised from ``paths`` (one job of :func:`transfer`, maybe in a worker
    process)."""
    world = World(world_root)
    folder = os.path.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    base_emb = write_class_embeddings(paths["arch"], paths["weights"], world.base_classes,
                                      os.path.join(folder, "base_class_emb.pth"),
                                      settings.EVAL.PROMPTS)
    all_emb = write_class_embeddings(paths["arch"], paths["weights"], world.class_names,
                                     os.path.join(folder, "all_class_emb.pth"),
                                     settings.EVAL.PROMPTS)
    train_emb, classes = (base_emb, world.base_classes) if split == "base" else (all_emb,
                                                                                 world.class_names)
    cfg = detector_cfg(settings, settings.TRANSFER, paths["arch"], paths["weights"],
                       rpn_paths, "RPN", train_emb, all_emb, clss_temp=clss_temp)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(classes)
    model = build_model(cfg)
    load_model_weights(cfg, model)
    batches = detection_batches(world.images("det_train"), world.boxes(f"det_train_{split}"),
                                cfg.SOLVER.IMS_PER_BATCH, settings.SEED,
                                size=cfg.INPUT.MAX_SIZE_TRAIN)
    history = train_loop(model, cfg, batches, f"stage 5: transfer from {name}", progress)
    weights, config = save_trained(model, cfg, folder)
    write_json(os.path.join(folder, "metrics.json"), {"loss": history})
    preds = predict(model, world.images("test"), world.boxes("test_all"),
                    size=cfg.INPUT.MAX_SIZE_TEST)
    result = evaluate_predictions(world, preds, folder, settings.EVAL.BOOTSTRAP, settings.SEED)
    logger.info("transfer from %s: AP50 novel %.1f base %.1f all %.1f", name,
                result["coco"]["AP50_novel"], result["coco"]["AP50_base"],
                result["coco"]["AP50_all"])
    return {"result": result, "weights": weights, "config": config}
