"""Config keys of RegionCLIP: ``add_regionclip_config(cfg)``.

One call prepares a detectron2 config for every component of this project. It first calls
``detectron2_ext.add_detectron2_ext_config`` (soft-NMS keys), then adds every ``MODEL.CLIP.*`` key
of the original RegionCLIP that something reads, with the original names and defaults, new
``MODEL.CLIP.*`` keys whose defaults keep the original's behaviour, ``INPUT_DIR``,
``INPUT.TEXT_TOKENIZER`` and the pretraining data keys (``DATASETS.{FACTORY,PATH}_TRAIN``,
``AUG.*``).

The keys are declared as data (:class:`detectron2_ext.config.ConfigKey`). ``CONFIG_KEY_DOCS`` maps
every key added by ``add_regionclip_config`` (the ``detectron2_ext`` ones included) to its
documentation: what it does, its allowed values and which component reads it.
``docs/CONFIGS.md`` holds the same table (``config_keys_markdown()`` renders it).

Keys of the original that are not added (nothing reads them, no yaml of configs/ sets them) are
data too: ``DROPPED_KEYS`` (key groups and why), ``KEYS_NOT_ADDED`` (the flat tuple);
``dropped_keys_markdown()`` renders them for docs/CONFIGS.md. Setting one is yacs'
"Non-existent config key" error.
"""

import logging
from typing import Dict, List, Tuple

from detectron2.config import CfgNode

from detectron2_ext.config import CONFIG_KEYS as _EXT_CONFIG_KEYS
from detectron2_ext.config import (
    ConfigKey,
    add_config_keys,
    add_detectron2_ext_config,
    format_config_keys_markdown,
)

__all__ = [
    "add_regionclip_config",
    "load_config",
    "config_keys_markdown",
    "CONFIG_KEYS",
    "CONFIG_KEY_DOCS",
    "KEYS_NOT_ADDED",
    "DROPPED_KEYS",
    "dropped_keys_markdown",
    "drop_removed_keys",
]

logger = logging.getLogger(__name__)

# Readers, named once so that every key says which component uses it.
_CLIP_FAST_RCNN = "CLIPFastRCNN meta-architecture"
_PRETRAIN = "PretrainFastRCNN meta-architecture"
_OFFLINE_RPN = "offline backbone+RPN builder (CLIPFastRCNN, PretrainFastRCNN)"
_PREDICTOR = "CLIPFastRCNNOutputLayers (box predictor of CLIPRes5ROIHeads)"
_ROI_HEADS = "CLIPRes5ROIHeads"
_CKPT = "checkpoint loading of tools/train_net.py, the Trainer and the extraction tools"
_PRETRAIN_DATA = "pretraining image-text data loader"
_YAML_ONLY = "nothing (no-op: kept only because the original pretraining yamls set it)"
_PATH = "path string or None"
_OPT_FLOAT = "float or None"
_OPT_INT = "int > 0 or None"
_BOOL = "True / False"


def _clip(name, default, doc, allowed, used_by):
    return ConfigKey("MODEL.CLIP." + name, default, doc, allowed, used_by)


_CLIP_KEYS: List[ConfigKey] = [
    _clip("CROP_REGION_TYPE", "",
          "Where the regions come from: 'GT' uses ground-truth boxes (and forces NO_BOX_DELTA), "
          "'RPN' uses the frozen offline RPN built from OFFLINE_RPN_CONFIG.",
          "'GT', 'RPN' ('' only for meta-architectures that need no regions)",
          f"{_CLIP_FAST_RCNN}, {_PRETRAIN}, {_PREDICTOR}, {_CKPT}"),
    _clip("BB_RPN_WEIGHTS", None,
          "Second checkpoint holding the offline backbone+RPN (a detectron2 Mask R-CNN checkpoint "
          "whose backbone.* / proposal_generator.* weights are loaded into offline_backbone / "
          "offline_proposal_generator) after MODEL.WEIGHTS; only used when CROP_REGION_TYPE is "
          "'RPN'.",
          _PATH, _CKPT),
    _clip("USE_TEXT_EMB_CLASSIFIER", False,
          "Classify regions by cosine similarity with frozen class text embeddings (TEXT_EMB_PATH)"
          " plus a frozen zero background embedding, on the CLIP attention-pooled region feature; "
          "False gives a linear classifier on mean-pooled res5.",
          _BOOL, f"{_PREDICTOR}, {_ROI_HEADS}, {_CLIP_FAST_RCNN}"),
    _clip("TEXT_EMB_PATH", None,
          "Tensor file (NUM_CLASSES, TEXT_EMB_DIM) of class text embeddings used as classifier "
          "weights in training (and at test time when OPENSET_TEST_TEXT_EMB_PATH is None); None "
          "leaves the weights to the checkpoint.",
          _PATH, f"{_PREDICTOR}, tools/extract_region_features.py"),
    _clip("OFFLINE_RPN_CONFIG", None,
          "Yaml of the standard detectron2 Mask R-CNN whose backbone and RPN are built frozen as "
          "the proposal generator when CROP_REGION_TYPE is 'RPN'.",
          _PATH, _OFFLINE_RPN),
    _clip("NO_BOX_DELTA", False,
          "At inference output the proposal boxes unchanged instead of applying the predicted box "
          "deltas (needed for zero-shot, where bbox_pred is untrained).",
          _BOOL, _PREDICTOR),
    _clip("BG_CLS_LOSS_WEIGHT", None,
          "Loss weight of background samples: class weight of the cross-entropy, or a per-sample "
          "factor in focal-scaled mode; None weighs all classes 1.",
          "float >= 0 or None", _PREDICTOR),
    _clip("ONLY_SAMPLE_FG_PROPOSALS", False,
          "In training, sample only foreground proposals for the ROI heads (one background "
          "proposal for images without ground truth).",
          _BOOL, _ROI_HEADS),
    _clip("MULTIPLY_RPN_SCORE", False,
          "At inference replace each class score p by sqrt(p * o), where o is the proposal's RPN "
          "objectness (the raw logit unless MULTIPLY_RPN_SCORE_SIGMOID).",
          _BOOL, _PREDICTOR),
    _clip("VIS", False,
          "Report the class scores before the RPN-score multiplication (visualisation and "
          "region-feature extraction); the kept detections are the same.",
          _BOOL, f"{_PREDICTOR}, tools/extract_region_features.py"),
    _clip("OPENSET_TEST_TEXT_EMB_PATH", None,
          "Tensor file (C_test, TEXT_EMB_DIM) of class text embeddings that replaces the training "
          "classifier whenever the model is not training (open-vocabulary evaluation).",
          _PATH, _PREDICTOR),
    _clip("CLSS_TEMP", 0.01,
          "Temperature dividing the cosine similarities of the text-embedding classifier and of "
          "all pretraining matching losses.",
          "float > 0", f"{_PREDICTOR}, {_PRETRAIN}"),
    _clip("FOCAL_SCALED_LOSS", None,
          "Gamma of the focal-scaled softmax cross-entropy CE * (1 - p_true)^gamma averaged over "
          "all sampled proposals; None uses plain (optionally class-weighted) cross-entropy.",
          "float >= 0 or None", _PREDICTOR),
    _clip("OFFLINE_RPN_NMS_THRESH", None,
          "Overrides MODEL.RPN.NMS_THRESH of the offline RPN config; None or 0 keeps the config's "
          "value.",
          "float in (0, 1] or None", _OFFLINE_RPN),
    _clip("OFFLINE_RPN_POST_NMS_TOPK_TEST", None,
          "Overrides MODEL.RPN.POST_NMS_TOPK_TEST (proposals per image) of the offline RPN in "
          "CLIPFastRCNN; None or 0 keeps the config's value.",
          _OPT_INT, _OFFLINE_RPN),
    _clip("PRETRAIN_IMG_TXT_LEVEL", True,
          "Enable the image-caption contrastive loss (and keep the frozen language encoder) in "
          "pretraining.",
          _BOOL, _PRETRAIN),
    _clip("PRETRAIN_ONLY_EOT", False,
          "Use the end-of-text (sentence) embedding of the caption in the image-caption loss; "
          "False (per-token embeddings) is shape-inconsistent in the original and every config "
          "sets True.",
          "True (False is unsupported)", _PRETRAIN),
    _clip("PRETRAIN_RPN_REGIONS", None,
          "Overrides MODEL.RPN.POST_NMS_TOPK_TEST of the offline RPN during pretraining (proposals"
          " per image before sampling).",
          _OPT_INT, _OFFLINE_RPN),
    _clip("PRETRAIN_SAMPLE_REGIONS", None,
          "Number of offline-RPN proposals kept per image (random subset) in pretraining; None "
          "keeps all.",
          _OPT_INT, _PRETRAIN),
    _clip("GATHER_GPUS", False,
          "All-gather (with gradient) image and caption embeddings across processes for the "
          "image-caption contrastive loss; no effect with one process.",
          _BOOL, _PRETRAIN),
    _clip("CONCEPT_POOL_EMB", None,
          "Tensor file (K, D) of concept text embeddings; when set, pretraining adds the "
          "region-concept distillation and contrastive losses.",
          _PATH, _PRETRAIN),
    _clip("CONCEPT_THRES", None,
          "Keep a region for the region-concept losses only if the teacher's largest concept "
          "probability (softmax at temperature TEACHER_CONCEPT_TEMP, 0.01) exceeds this value (all"
          " regions when none passes); must be set together with CONCEPT_POOL_EMB (the original "
          "fails on None).",
          "float in [0, 1) or None", _PRETRAIN),
    _clip("TEACHER_CONCEPT_TEMP", 0.01,
          "New key. Temperature of the teacher's softmax over the concept pool that makes the "
          "pseudo labels (CONCEPT_THRES applies to its probabilities); the original hard-codes "
          "0.01 (independent of CLSS_TEMP). Set it to 1 / logit_scale of a teacher CLIP trained "
          "with another scale.",
          "float > 0", _PRETRAIN),
    _clip("OFFLINE_RPN_LSJ_PRETRAINED", False,
          "The offline RPN checkpoint follows detectron2's LSJ recipe: the offline config gets "
          "BACKBONE.FREEZE_AT 0, SyncBN in ResNet and FPN and RPN.CONV_DIMS [-1, -1].",
          _BOOL, _OFFLINE_RPN),
    _clip("TEACHER_RESNETS_DEPTH", 50,
          "CLIP visual encoder of the pretraining teacher, with the original's depth flags.",
          "50 (RN50), 101 (RN101), 200 (RN50x4)", _PRETRAIN),
    _clip("TEACHER_CONCEPT_POOL_EMB", None,
          "Separate concept-pool embeddings (K, D_teacher) for the teacher; None uses "
          "CONCEPT_POOL_EMB.",
          _PATH, _PRETRAIN),
    _clip("TEACHER_POOLER_RESOLUTION", 14,
          "ROIAlign output size of the teacher's region features.",
          "int > 0 (14 for RN50, 18 for RN50x4)", _PRETRAIN),
    _clip("TEXT_EMB_DIM", 1024,
          "Dimension of the region embedding and of the class text embeddings: input size of the "
          "text classifier and of the box regressor.",
          "1024 (RN50), 640 (RN50x4)", f"{_PREDICTOR}, {_ROI_HEADS}"),
    _clip("GET_CONCEPT_EMB", False,
          "Build the CLIP language encoder inside CLIPFastRCNN (its weights come from the "
          "lang_encoder.* keys of MODEL.WEIGHTS) to embed concepts.",
          _BOOL, f"{_CLIP_FAST_RCNN}, tools/extract_concept_features.py"),
]

_NEW_CLIP_KEYS: List[ConfigKey] = [
    _clip("MULTIPLY_RPN_SCORE_SIGMOID", False,
          "New key. With MULTIPLY_RPN_SCORE, multiply by sigmoid(objectness logit) instead of the "
          "raw logit. False reproduces the original (raw logit: scores can exceed 1, proposals "
          "with negative logits get NaN scores and are dropped).",
          _BOOL, _PREDICTOR),
    _clip("LOSS_WEIGHT_REGION_DISTILL", 1.0,
          "New key. Weight of the region-concept KL distillation loss (loss_region_distill) in "
          "pretraining; 1.0 as in the original.",
          "float >= 0", _PRETRAIN),
    _clip("LOSS_WEIGHT_CONCEPT_CONTRASTIVE", 1.0,
          "New key. Weight of the region-concept contrastive loss (loss_concept_contrastive) in "
          "pretraining; 1.0 as in the original.",
          "float >= 0", _PRETRAIN),
    _clip("LOSS_WEIGHT_IMG_TXT", 1.0,
          "New key. Weight of the image-caption contrastive loss (loss_img_txt_level) in "
          "pretraining; 1.0 as in the original.",
          "float >= 0", _PRETRAIN),
    _clip("INFERENCE_REGION_CHUNK", 256,
          "New key. At inference run res5 and the attention pool on at most this many regions at a"
          " time (bounds peak memory as the number of regions grows; same result); 0 processes all"
          " regions of the batch at once, like the original.",
          "int >= 0", _ROI_HEADS),
    _clip("INFERENCE_DTYPE", "float32",
          "New key. Precision of the recognition backbone and per-region head at inference: "
          "'float32' as the original, or an opt-in autocast on MODEL.DEVICE to 'bfloat16' (fast on"
          " CPUs with bf16 units and recent GPUs) / 'float16' (GPU). Region classification always "
          "runs in float32; a dtype the device cannot autocast to is an error.",
          "'float32' / 'bfloat16' / 'float16'", _CLIP_FAST_RCNN),
    _clip("INFERENCE_FOLD_BN", True,
          "New key. When no gradient is recorded (inference, the pretraining teacher), fold each "
          "frozen BatchNorm of the CLIP ResNet into the convolution before it, computed from the "
          "current weights at every call (the parameters and checkpoints are unchanged; training "
          "sees the layers as they are), and convolve in channels-last memory format: faster, same "
          "outputs up to float rounding. False computes every layer as the original does.",
          _BOOL, "CLIP ResNet backbone builders (recognition backbone, pretraining teacher)"),
    _clip("TOKENIZE_TRUNCATE", True,
          "New key. True cuts token sequences to the 77-token context like the original (which can"
          " drop the end-of-text token); False raises an error on over-long text.",
          _BOOL, f"{_PRETRAIN_DATA}, tools/extract_concept_features.py"),
    _clip("ARCH", "",
          "New key. CLIP architecture of the recognition backbone / student and its text encoder: "
          "'' keeps the original's choice by MODEL.RESNETS.DEPTH (50 RN50, 101 RN101, 200 RN50x4);"
          " otherwise a preset name or the path of a JSON file describing any CLIP ResNet (see "
          "regionclip/modeling/clip_arch.py).",
          "'' / 'RN50' / 'RN101' / 'RN50x4' / 'RN50x16' / 'RN50x64' / path of a .json file",
          "CLIP backbone builders, language encoder builder"),
    _clip("TEACHER_ARCH", "",
          "New key. CLIP architecture of the pretraining teacher: '' keeps the original's choice "
          "by TEACHER_RESNETS_DEPTH; otherwise as ARCH.",
          "as ARCH", _PRETRAIN),
]

_OTHER_KEYS: List[ConfigKey] = [
    ConfigKey("INPUT_DIR", "./datasets/custom_images",
              "Input folder of the extraction tools: images for region features, a concepts.txt "
              "(one concept per line) for concept features.",
              "folder path", "tools/extract_region_features.py, tools/extract_concept_features.py"),
    ConfigKey("INPUT.TEXT_TOKENIZER", "openai_bpe",
              "Tokenizer of the pretraining captions; any name containing 'bpe' selects the CLIP "
              "byte-pair-encoding tokenizer.",
              "a string containing 'bpe' (e.g. 'openai_bpe')", _PRETRAIN_DATA),
    ConfigKey("DATASETS.FACTORY_TRAIN", (),
              "Dataset reader per DATASETS.TRAIN entry when TRAIN contains 'imgtxtpairs' "
              "(pretraining image-caption data): the original's TSV pairs, or WebDataset tar "
              "shards (new).",
              "tuple of 'CLIPImgTxtPairTSVDataset' / 'WebDatasetImageText' (one per TRAIN entry; "
              "'+'-joinable)",
              _PRETRAIN_DATA),
    ConfigKey("DATASETS.PATH_TRAIN", (),
              "Folder or file per DATASETS.TRAIN entry of the pretraining image-caption data "
              "(paired *image*.tsv / *text*.tsv files, or WebDataset shards: a folder, a brace "
              "pattern or a tar).",
              "tuple of paths (one per TRAIN entry; '+'-joinable)", _PRETRAIN_DATA),
    ConfigKey("AUG.INTERPOLATION", 3,
              "PIL resampling filter of the pretraining resize.",
              "PIL filter id: 0 nearest, 2 bilinear, 3 bicubic", _PRETRAIN_DATA),
    ConfigKey("AUG.TRAIN.IMAGE_SIZE", [224, 224],
              "Pretraining resize: a one-element list [S] resizes the shorter side to S (long side"
              " capped by AUG.TRAIN.MAX_SIZE), as every pretraining config does; the default "
              "two-element [W, H] was the original's classification-style random-resized-crop "
              "path, used by no config.",
              "[S] (or [W, H] where the pretraining transform supports it)", _PRETRAIN_DATA),
    ConfigKey("AUG.TRAIN.MAX_SIZE", None,
              "Cap on the longer side after the pretraining resize; None means no cap.",
              _OPT_INT, _PRETRAIN_DATA),
    ConfigKey("AUG.TEST.IMAGE_SIZE", [224, 224],
              "Test-time counterpart of AUG.TRAIN.IMAGE_SIZE; the original never builds test "
              "transforms for image-caption data.",
              "[S] or [W, H]", _YAML_ONLY),
    ConfigKey("AUG.TEST.MAX_SIZE", None,
              "Test-time counterpart of AUG.TRAIN.MAX_SIZE; never read.",
              _OPT_INT, _YAML_ONLY),
]

# Keys added by add_regionclip_config itself (the detectron2_ext keys come first in CONFIG_KEYS).
_OWN_KEYS: List[ConfigKey] = _CLIP_KEYS + _NEW_CLIP_KEYS + _OTHER_KEYS

CONFIG_KEYS: List[ConfigKey] = list(_EXT_CONFIG_KEYS) + _OWN_KEYS
CONFIG_KEY_DOCS: Dict[str, str] = {key.name: key.full_doc() for key in CONFIG_KEYS}

# Keys of the original fork's defaults.py not added here: (keys, why). Setting one is an error.
DROPPED_KEYS: Tuple[Tuple[Tuple[str, ...], str], ...] = (
    (("MODEL.CLIP.IMS_PER_BATCH_TEST", "MODEL.CLIP.OPENSET_TEST_NUM_CLASSES",
      "MODEL.CLIP.RUN_CVPR_OVR", "MODEL.CLIP.GRID_REGIONS"),
     "dead in the original too: IMS_PER_BATCH_TEST only served the CLIPRCNN meta-architecture "
     "absent from its release, OPENSET_TEST_NUM_CLASSES was packed into arguments never read, "
     "RUN_CVPR_OVR and GRID_REGIONS were never implemented"),
    (("DATASETS.FACTORY_TEST", "DATASETS.PATH_TEST"),
     "image-caption test data (DATASETS.TEST containing 'imgtxtpairs'): no config evaluates on "
     "image-caption pairs and no code here builds such a test set"),
    (("AUG.SCALE", "AUG.RATIO", "AUG.COLOR_JITTER", "AUG.GRAY_SCALE", "AUG.GAUSSIAN_BLUR",
      "AUG.DROPBLOCK_LAYERS", "AUG.DROPBLOCK_KEEP_PROB", "AUG.DROPBLOCK_BLOCK_SIZE",
      "AUG.MIXUP_PROB", "AUG.MIXUP", "AUG.MIXCUT", "AUG.MIXCUT_MINMAX", "AUG.MIXUP_SWITCH_PROB",
      "AUG.MIXUP_MODE", "AUG.MIXCUT_AND_MIXUP", "AUG.USE_TIMM", "AUG.TIMM_AUG.USE_LOADER",
      "AUG.TIMM_AUG.USE_TRANSFORM", "AUG.TEST.CENTER_CROP", "AUG.TEST.INTERPOLATION"),
     "classification-style augmentations of the original's data code (AUG.SCALE / AUG.RATIO: the "
     "RandomResizedCrop of a two-element AUG.TRAIN.IMAGE_SIZE), used by no config"),
    (("DATASETS.AUX", "DATASETS.FACTORY_AUX", "DATASETS.PATH_AUX", "DATASETS.LABELMAP_FILE",
      "DATASETS.ATTR_LABELMAP_FILE", "DATASETS.FILTERED_CLASSIFICATION_DATASETS",
      "DATASETS.HIERARCHY_FILE", "DATASETS.BOX_EXTRA_FIELDS", "DATASETS.NUM_CLASSES",
      "DATASETS.ROOT", "DATASETS.TRAIN_SET", "DATASETS.VAL_SET", "DATASETS.TEST_SET",
      "DATASETS.MAX_SEQ_LENGTH"),
     "dataset options of the original's code base that nothing in its release reads"),
)
KEYS_NOT_ADDED: Tuple[str, ...] = tuple(k for keys, _ in DROPPED_KEYS for k in keys)
# Keys this project defined before 0.2 and no longer does, with the defaults they had: a config
# dumped by an older version (cfg.dump(), e.g. OUTPUT_DIR/config.yaml) holds them.
REMOVED_KEY_DEFAULTS: Dict[str, object] = {
    "MODEL.CLIP.IMS_PER_BATCH_TEST": 8, "MODEL.CLIP.OPENSET_TEST_NUM_CLASSES": None,
    "MODEL.CLIP.RUN_CVPR_OVR": False, "MODEL.CLIP.GRID_REGIONS": False,
    "DATASETS.FACTORY_TEST": [], "DATASETS.PATH_TEST": [],
}


def drop_removed_keys(data: dict, where: str) -> List[str]:
    """Delete, in place, the keys of ``REMOVED_KEY_DEFAULTS`` that hold their former default
    (as a dump of an older version does) from a nested config mapping; a removed key set to
    another value is kept, so that merging it fails as an unknown key.

    Returns:
        list[str]: the deleted keys (logged with ``where``).
    """
    dropped = []
    for name, default in REMOVED_KEY_DEFAULTS.items():
        *parents, leaf = name.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node[leaf]
        if (list(value) if isinstance(value, (list, tuple)) else value) == default:
            del node[leaf]
            dropped.append(name)
    if dropped:
        logger.info("%s: ignoring %s (removed keys at their former defaults, as written by an "
                    "older version)", where, ", ".join(dropped))
    return dropped


def add_regionclip_config(cfg: CfgNode) -> None:
    """Add every key of this project (RegionCLIP and detectron2_ext) to ``cfg`` in place.

    Calls ``detectron2_ext.add_detectron2_ext_config`` first. Idempotent: keys already present
    keep their values, so calling it twice (or after merging a yaml) is harmless.

    Args:
        cfg: a detectron2 config, e.g. from ``detectron2.config.get_cfg()``; must not be frozen.

    Raises:
        ValueError: if ``cfg`` is frozen.
    """
    add_detectron2_ext_config(cfg)
    add_config_keys(cfg, _OWN_KEYS)


def load_config(config_file: str, opts=(), cpu_fallback: bool = True) -> CfgNode:
    """``get_cfg()`` + :func:`add_regionclip_config` + the yaml + ``KEY VALUE`` overrides
    (unfrozen).

    Args:
        config_file (str): a yaml (with its ``_BASE_`` files, read by ``yaml.safe_load`` only).
        opts (sequence): command-line style ``KEY VALUE`` overrides.
        cpu_fallback (bool): set ``MODEL.DEVICE cpu`` (with a message) when the config asks for
            CUDA and no GPU is available, instead of failing later.
    """
    from detectron2.config import get_cfg

    from .yaml_config import merge_config_file

    cfg = get_cfg()
    add_regionclip_config(cfg)
    merge_config_file(cfg, config_file, "config file")
    cfg.merge_from_list(list(opts))
    if cpu_fallback and cfg.MODEL.DEVICE.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            cfg.MODEL.DEVICE = "cpu"
            print("No CUDA device: running on the CPU (MODEL.DEVICE cpu)")
    return cfg


def config_keys_markdown() -> str:
    """Returns: the markdown table of every key added by ``add_regionclip_config``."""
    return format_config_keys_markdown(CONFIG_KEYS)


def dropped_keys_markdown() -> str:
    """Returns: the markdown list of the original's keys that are not added, with the reasons."""
    return "\n".join("* " + ", ".join(f"`{k}`" for k in keys) + f": {why}."
                      for keys, why in DROPPED_KEYS)
