"""Region features of a folder of images: the logic of ``tools/extract_region_features.py``.

Command line (the original's, plus options that must come before the ``KEY VALUE`` pairs)::

    python tools/extract_region_features.py --config-file CFG [--num-gpus N] \\
        [--fix-index-bug] [--one-per-region] [--skip-bad-images] \\
        MODEL.WEIGHTS CKPT MODEL.CLIP.CROP_REGION_TYPE RPN \\
        MODEL.CLIP.OFFLINE_RPN_CONFIG RPN_CFG [MODEL.CLIP.BB_RPN_WEIGHTS RPN_CKPT] \\
        INPUT_DIR DIR OUTPUT_DIR OUT [MODEL.CLIP.TEXT_EMB_PATH EMB] [KEY VALUE ...]

For every image file of ``INPUT_DIR`` (sorted; hidden files and folders ignored) the offline RPN
proposes regions on the test-time resized image; each region is pooled from CLIP's res4 map
(RoIAlign), run through ``layer4`` and the attention pool. ``OUTPUT_DIR/<name>.pth`` (``name``:
the file name up to its first dot, as the original) holds

* without ``MODEL.CLIP.TEXT_EMB_PATH``: ``{"boxes": (N, 4), "feats": (N, D)}`` for all N
  proposals, boxes in original-image pixels (XYXY);
* with it: the detections after score threshold, per-class NMS and top-k
  (``TEST.DETECTIONS_PER_IMAGE``), ``{"boxes": (M, 4), "classes": (M,), "probs": (M, C+1),
  "feats": (M, D)}`` with ``probs`` the softmax of the temperature-scaled logits (background
  last) of each detection's proposal. The reported scores are those before any RPN-score
  multiplication (``box_predictor.vis`` is forced on, as the original).

Differences from the original (see docs/FIDELITY.md):

* index bug kept by default: the original took ``probs``/``feats`` rows with indices that count
  proposals *after* dropping those with non-finite scores (with ``MULTIPLY_RPN_SCORE True``
  every proposal with a negative RPN logit), so they are shifted against ``boxes``/``classes``
  when such a proposal precedes them; ``--fix-index-bug`` takes the detection's own proposal;
* ``--one-per-region``: one entry per region (its best-ranked class) instead of one per
  (region, class) pair;
* two inputs mapping to the same output name are an error naming both (the original overwrote);
* with several processes each one handles a shard of the images (the original made every
  process do every image);
* an unreadable file is an error naming it; ``--skip-bad-images`` skips and counts it.
"""
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Instances
from detectron2.utils import comm

from regionclip.modeling.roi_heads import region_embeddings
from regionclip.tools import run_command

__all__ = ["list_input_files", "output_paths", "read_inputs", "build_extraction_model",
           "extract_region_features", "original_keep_indices", "first_per_region",
           "run_extraction", "build_parser", "run", "main"]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- files
def list_input_files(input_dir: str) -> List[str]:
    """Sorted paths of the regular, non-hidden files of ``input_dir`` (not recursive).

    Raises:
        FileNotFoundError: ``input_dir`` is not a folder.
        ValueError: it holds no file.
    """
    if not input_dir or not os.path.isdir(input_dir):
        raise FileNotFoundError(f"INPUT_DIR '{input_dir}' is not a folder of images")
    files = [os.path.join(input_dir, n) for n in sorted(os.listdir(input_dir))
             if not n.startswith(".") and os.path.isfile(os.path.join(input_dir, n))]
    if not files:
        raise ValueError(f"INPUT_DIR '{input_dir}' holds no file")
    return files


def output_paths(files: Sequence[str], output_dir: str) -> List[str]:
    """Output file of each input: ``output_dir/<basename up to the first dot>.pth``.

    Raises:
        ValueError: two inputs give the same output name (the message names both).
    """
    seen: Dict[str, str] = {}
    out = []
    for f in files:
        name = os.path.basename(f).split(".")[0] + ".pth"
        if name in seen:
            raise ValueError(
                f"'{seen[name]}' and '{f}' would both be saved as '{name}' (the output name is "
                "the file name up to its first dot, as the original tool): rename one of them")
        seen[name] = f
        out.append(os.path.join(output_dir, name))
    return out


def read_inputs(cfg, file_name: str) -> List[dict]:
    """The model input of one image (``INPUT.FORMAT``, test-time resize), as a batch of one.

    Raises:
        ValueError: the file cannot be decoded as an image (the message names it).
    """
    try:
        image = utils.read_image(file_name, format=cfg.INPUT.FORMAT)
    except Exception as e:  # PIL raises several types for undecodable files
        raise ValueError(f"cannot read image '{file_name}': {e}") from None
    height, width = image.shape[:2]
    aug_input = T.AugInput(image)
    T.AugmentationList(utils.build_augmentation(cfg, False))(aug_input)
    tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
    return [{"image": tensor, "height": height, "width": width, "file_name": file_name}]


# ---------------------------------------------------------------------------------- model
def build_extraction_model(cfg):
    """Build ``CLIPFastRCNN``, load ``MODEL.WEIGHTS`` then ``BB_RPN_WEIGHTS``, freeze, eval.

    Raises:
        ValueError: the config is not an RPN-region CLIP C4 model with attention pooling.
    """
    from detectron2.modeling import build_model

    from regionclip.engine import load_model_weights

    if cfg.MODEL.META_ARCHITECTURE != "CLIPFastRCNN":
        raise ValueError(f"region features need MODEL.META_ARCHITECTURE CLIPFastRCNN, got "
                         f"{cfg.MODEL.META_ARCHITECTURE}")
    model = build_model(cfg)
    load_model_weights(cfg, model)
    if model.clip_crop_region_type != "RPN":
        raise ValueError("region features need MODEL.CLIP.CROP_REGION_TYPE RPN, got "
                         f"{model.clip_crop_region_type}")
    if not model.use_clip_c4:
        raise ValueError("region features need the CLIP C4 backbone "
                         "(MODEL.BACKBONE.NAME build_clip_resnet_backbone)")
    if not model.use_clip_attpool:
        raise ValueError("region features need CLIP's attention pool (ROI_HEADS.NAME "
                         "CLIPRes5ROIHeads and MODEL.CLIP.USE_TEXT_EMB_CLASSIFIER True)")
    model.roi_heads.box_predictor.vis = True  # report scores before the RPN multiplication
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model


def original_keep_indices(predictor, predictions, proposals: Instances, rows: torch.Tensor):
    """The proposal indices the original reported for detections from proposal ``rows``.

    The original's ``fast_rcnn_inference`` dropped proposals with a non-finite box or score and
    returned positions among the remaining ones. Given the true rows, this recomputes the same
    inputs (boxes; probabilities, RPN-multiplied if enabled) and maps each row to its position.
    """
    boxes = predictor.predict_boxes(predictions, [proposals])[0]
    scores = predictor.predict_probs(predictions, [proposals])[0]
    if predictor.multiply_rpn_score:
        scores = predictor.rescore_with_objectness([scores], [proposals])[0]
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    position = torch.cumsum(valid.long(), dim=0) - 1
    return position[rows]


def first_per_region(rows: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each value of ``rows``, in order."""
    seen = set()
    keep = []
    for i, r in enumerate(rows.tolist()):
        if r not in seen:
            seen.add(r)
            keep.append(i)
    return torch.as_tensor(keep, dtype=torch.long, device=rows.device)


@torch.no_grad()
def extract_region_features(model, batched_inputs: List[dict], classify: bool,
                            fix_index_bug: bool = False, one_per_region: bool = False) -> dict:
    """Region boxes and features (and class predictions) of one image.

    Args:
        model (CLIPFastRCNN): from :func:`build_extraction_model`.
        batched_inputs (list[dict]): one image, from :func:`read_inputs`.
        classify (bool): classify the regions and keep the detections (``TEXT_EMB_PATH`` set);
            otherwise all proposals are kept.
        fix_index_bug (bool): take ``probs``/``feats`` of each detection's own proposal instead
            of the original's shifted rows.
        one_per_region (bool): keep only the first (best-ranked) detection of each proposal.

    Returns:
        dict: CPU tensors ``boxes`` and ``feats`` (plus ``classes`` and ``probs`` if
        ``classify``), see the module doc.
    """
    if len(batched_inputs) != 1:
        raise ValueError(f"one image at a time, got {len(batched_inputs)}")
    (proposals,) = model.get_proposals(batched_inputs)
    images = model.preprocess_image(batched_inputs)
    features = model.backbone(images.tensor)
    heads = model.roi_heads
    feats, _ = region_embeddings(heads.pooler, [features[f] for f in heads.in_features],
                                 [proposals.proposal_boxes], model.backbone.layer4,
                                 model.backbone.attnpool, heads.inference_chunk_size)
    x = batched_inputs[0]
    if not classify:
        inst = Instances(proposals.image_size, proposal_boxes=proposals.proposal_boxes.clone(),
                         feats=feats)
        inst = _rescale(inst, x)
        return {"boxes": inst.proposal_boxes.tensor.cpu(), "feats": inst.feats.cpu()}
    predictor = heads.box_predictor
    predictions = predictor(feats)
    (detections,), (rows,) = predictor.inference(predictions, [proposals])
    index = rows if fix_index_bug else original_keep_indices(predictor, predictions, proposals,
                                                             rows)
    detections.proposal_row = rows
    detections.feature_row = index
    detections = _rescale(detections, x)
    if one_per_region:
        detections = detections[first_per_region(detections.proposal_row)]
    probs = F.softmax(predictions[0], dim=-1)
    return {"boxes": detections.pred_boxes.tensor.cpu(),
            "classes": detections.pred_classes.cpu(),
            "probs": probs[detections.feature_row].cpu(),
            "feats": feats[detections.feature_row].cpu()}


def _rescale(inst: Instances, x: dict) -> Instances:
    """Boxes to original-image pixels (clipped); rows whose box becomes empty are dropped with
    all their fields, so every field stays aligned with the boxes."""
    return detector_postprocess(inst, x.get("height", inst.image_size[0]),
                                x.get("width", inst.image_size[1]))


# ---------------------------------------------------------------------------------- driver
def run_extraction(cfg, model, files: Sequence[str], outputs: Sequence[str],
                   fix_index_bug: bool = False, one_per_region: bool = False,
                   skip_bad_images: bool = False, progress: Optional[bool] = None) -> dict:
    """Extract and save the features of ``files`` into ``outputs`` (this process's share).

    Returns:
        dict: ``{"done": int, "skipped": list[str]}`` for the files handled here.
    """
    from tqdm import tqdm

    classify = bool(cfg.MODEL.CLIP.TEXT_EMB_PATH)
    progress = comm.is_main_process() if progress is None else progress
    done, skipped = 0, []
    for file_name, out in tqdm(list(zip(files, outputs)), disable=not progress, unit="img",
                               desc="region features"):
        try:
            inputs = read_inputs(cfg, file_name)
        except ValueError as e:
            if not skip_bad_images:
                raise ValueError(f"{e} (use --skip-bad-images to skip unreadable files)") from None
            logger.warning("Skipping %s", e)
            skipped.append(file_name)
            continue
        saved = extract_region_features(model, inputs, classify, fix_index_bug, one_per_region)
        torch.save(saved, out)
        done += 1
    return {"done": done, "skipped": skipped}


def build_parser():
    """detectron2's default parser plus this tool's options."""
    from detectron2.engine import default_argument_parser

    parser = default_argument_parser()
    parser.add_argument("--fix-index-bug", action="store_true",
                        help="take probs/feats of each detection's own proposal (the original "
                        "shifted them when proposals had negative RPN logits)")
    parser.add_argument("--one-per-region", action="store_true",
                        help="keep one entry (the best-ranked class) per region")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="skip and count unreadable files instead of stopping")
    return parser


def setup(args):
    """Config from ``args`` (RegionCLIP keys, CPU fallback) and detectron2's default setup."""
    from detectron2.engine import default_setup

    from regionclip.config import load_config

    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def worker(args) -> dict:
    """One process: plan all outputs (same on every process), then handle its shard.

    Returns:
        dict: ``{"done", "skipped"}`` summed over all processes (on every process).
    """
    cfg = setup(args)
    files = list_input_files(cfg.INPUT_DIR)
    outputs = output_paths(files, cfg.OUTPUT_DIR)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    model = build_extraction_model(cfg)
    rank, world = comm.get_rank(), comm.get_world_size()
    result = run_extraction(cfg, model, files[rank::world], outputs[rank::world],
                            args.fix_index_bug, args.one_per_region, args.skip_bad_images)
    parts = comm.all_gather(result) if world > 1 else [result]
    total = {"done": sum(p["done"] for p in parts),
             "skipped": sorted(f for p in parts for f in p["skipped"])}
    if comm.is_main_process():
        msg = f"Saved region features of {total['done']} images to {cfg.OUTPUT_DIR}"
        if total["skipped"]:
            msg += f"; skipped {len(total['skipped'])} unreadable files: {total['skipped']}"
        print(msg)
    return total


def run(argv: Optional[Sequence[str]] = None):
    """Run the tool (``argv`` without the program name; default ``sys.argv``)."""
    from detectron2_ext.engine import launch

    args = build_parser().parse_args(argv)
    if not args.config_file:
        raise SystemExit("--config-file is required")
    if args.num_gpus * args.num_machines == 1:
        return worker(args)
    launch(worker, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: :func:`run`, then the exit status (see ``run_command``)."""
    return run_command(run, argv)
