"""Stage 4: zero-shot detection on the test scenes, teacher CLIP vs RegionCLIP student.

``CLIPFastRCNN`` (projects/toyworld/configs/zeroshot.yaml) with each model's weights classifies
regions against the text embeddings of all 12 category names made by that model's own text tower
(prompt-ensembled): ground-truth boxes (recognition only, the paper's Table 4 "GT" columns) and
the toy RPN's proposals ("RPN" columns). AP50 on novel, base and all categories comes from
detectron2's COCO evaluation (``COCOSplitEvaluator``); the bootstrap over test images
(:mod:`.ap`) gives its spread. The same helpers evaluate the transfer detectors of stage 5.
"""
import contextlib
import io
import logging
import os
from typing import Dict, List

import numpy as np
import torch
from detectron2.modeling import build_model

from detectron2_ext.evaluation import COCOSplitEvaluator
from regionclip.engine.trainer import load_model_weights

from .ap import MatchTable, bootstrap_ap50
from .common import detection_inputs, stage_cfg, write_json
from .text import load_clip, text_embeddings
from .world import register_world

__all__ = ["detector_cfg", "write_class_embeddings", "predict", "evaluate_predictions",
           "zero_shot"]

logger = logging.getLogger(__name__)

MODELS = ("teacher", "student")
REGIONS = ("GT", "RPN")


def detector_cfg(settings, node, arch: str, weights: str, rpn_paths: Dict[str, str],
                 region_type: str, text_emb: str, openset_emb: str = "", clss_temp=None):
    """detectron2 config of a ``CLIPFastRCNN`` of this run (zero-shot or transfer)."""
    opts = ["MODEL.CLIP.ARCH", os.path.abspath(arch), "MODEL.WEIGHTS", os.path.abspath(weights),
            "MODEL.CLIP.CROP_REGION_TYPE", region_type,
            "MODEL.CLIP.TEXT_EMB_PATH", os.path.abspath(text_emb),
            "MODEL.CLIP.OFFLINE_RPN_CONFIG", os.path.abspath(rpn_paths["config"]),
            "MODEL.CLIP.BB_RPN_WEIGHTS", os.path.abspath(rpn_paths["weights"])]
    if region_type == "GT":  # no objectness to rescale with
        opts += ["MODEL.CLIP.MULTIPLY_RPN_SCORE", False]
    if openset_emb:
        opts += ["MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH", os.path.abspath(openset_emb)]
    if clss_temp is not None:
        opts += ["MODEL.CLIP.CLSS_TEMP", float(clss_temp)]
    return stage_cfg(settings, node, opts)


def write_class_embeddings(arch: str, weights: str, names: List[str], path: str,
                           prompts: str) -> str:
    """Text embeddings of ``names`` by the text tower of a CLIP file, saved to ``path``."""
    model = load_clip(arch, weights)
    torch.save(text_embeddings(model.encode_text, names, prompts), path)
    return path


@torch.no_grad()
def predict(model, images: np.ndarray, boxes: List[dict], batch_size: int = 32,
            size: int = 0) -> List[dict]:
    """Run a detector over images resized to ``size`` (0: as they are); ``boxes`` give the
    ground-truth regions (GT mode).

    Returns:
        list[dict]: per image numpy ``boxes`` (XYXY), ``scores``, ``classes``.
    """
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = [detection_inputs(images, boxes, i, size=size)
                 for i in range(start, min(start + batch_size, len(images)))]
        for result in model(batch):
            inst = result["instances"].to("cpu")
            out.append({"boxes": inst.pred_boxes.tensor.numpy(), "scores": inst.scores.numpy(),
                        "classes": inst.pred_classes.numpy()})
    return out


def evaluate_predictions(world, predictions: List[dict], out_dir: str,
                         bootstrap: int, seed: int) -> Dict[str, dict]:
    """COCO AP50 (novel/base/all) of test-set predictions, and bootstrap intervals.

    Returns:
        dict: ``coco`` (the evaluator's bbox results) and ``bootstrap`` (per split ``ap50``,
        ``std``, ``lo``, ``hi`` from :func:`.ap.bootstrap_ap50`).
    """
    from detectron2.structures import Boxes, Instances

    name = register_world(world)["test"]
    evaluator = COCOSplitEvaluator(name, output_dir=None, tasks=("bbox",))
    evaluator.reset()
    h, w = world.images("test").shape[1:3]
    for i, pred in enumerate(predictions):
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(torch.as_tensor(pred["boxes"]))
        inst.scores = torch.as_tensor(pred["scores"])
        inst.pred_classes = torch.as_tensor(pred["classes"])
        evaluator.process([{"image_id": i + 1}], [{"instances": inst}])
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its summary
        coco = dict(evaluator.evaluate()["bbox"])
    names = world.class_names
    splits = {"novel": [names.index(c) for c in world.novel_classes],
              "base": [names.index(c) for c in world.base_classes],
              "all": list(range(len(names)))}
    table = MatchTable(predictions, world.boxes("test_all"), len(names))
    boot = bootstrap_ap50(table, splits, bootstrap, seed)
    result = {"coco": coco, "bootstrap": boot,
              "class_ap50": dict(zip(names, table.class_ap().tolist()))}
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "results.json"), result)
    return result


def zero_shot(settings, world, models: Dict[str, Dict[str, str]], rpn_paths: Dict[str, str],
              out_dir: str, clss_temp=None) -> Dict[str, Dict[str, dict]]:
    """Zero-shot AP50 of every model with GT and RPN regions.

    Args:
        settings (CfgNode): toy-world settings.
        world (World): the generated world.
        models (dict): name -> ``{"arch", "weights"}`` (OpenAI-format CLIP files).
        rpn_paths (dict): stage-2 outputs.
        out_dir (str): stage folder (``<model>/<regions>/results.json``).
        clss_temp (float or None): classifier temperature (default: the config's).

    Returns:
        dict: ``{model: {regions: result}}`` (see :func:`evaluate_predictions`).
    """
    results = {}
    os.makedirs(out_dir, exist_ok=True)
    images, boxes = world.images("test"), world.boxes("test_all")
    for model_name, paths in models.items():
        emb = write_class_embeddings(paths["arch"], paths["weights"], world.class_names,
                                     os.path.join(out_dir, f"{model_name}_class_emb.pth"),
                                     settings.EVAL.PROMPTS)
        results[model_name] = {}
        for regions in REGIONS:
            cfg = detector_cfg(settings, settings.EVAL, paths["arch"], paths["weights"],
                               rpn_paths, regions, emb, clss_temp=clss_temp)
            model = build_model(cfg)
            load_model_weights(cfg, model)
            preds = predict(model, images, boxes, size=cfg.INPUT.MAX_SIZE_TEST)
            res = evaluate_predictions(world, preds, os.path.join(out_dir, model_name, regions),
                                       settings.EVAL.BOOTSTRAP, settings.SEED)
            results[model_name][regions] = res
            logger.info("zero-shot %s, %s regions: AP50 novel %.1f base %.1f all %.1f",
                        model_name, regions, res["coco"]["AP50_novel"], res["coco"]["AP50_base"],
                        res["coco"]["AP50_all"])
    write_json(os.path.join(out_dir, "results.json"), results)
    return results
