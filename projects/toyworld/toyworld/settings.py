"""Settings of a toy-world run: world size, the small CLIP, iterations of every stage.

Settings are a yacs ``CfgNode`` read from ``projects/toyworld/presets/<size>.yaml`` (``_BASE_``
works as in detectron2; they are not detectron2 configs, so they live outside ``configs/``, where
every yaml is a detectron2 config). The models of stages 2-5 are described by detectron2 yamls named
in the settings (``RPN.CONFIG`` ...; a relative path is relative to the project folder
``projects/toyworld``, whose ``configs/`` hold them); the pipeline writes the run's paths and the
stage's ``ITERS``, ``BATCH_SIZE`` and ``LR`` into them (``SOLVER.MAX_ITER``,
``SOLVER.IMS_PER_BATCH``, ``SOLVER.BASE_LR``) and saves the resolved config next to the stage's
outputs.
"""
import os

from detectron2.config import CfgNode as CN

from regionclip.clip import CLIPConfig, TextConfig, VisualConfig

__all__ = ["PROJECT_ROOT", "CONFIG_DIR", "PRESET_DIR", "SIZES", "get_toyworld_cfg", "load_settings",
           "clip_config",
           "resolve_path"]

# The project folder (projects/toyworld): the package is installed editable from it
# (``pip install -e projects/toyworld``), its configs' _BASE_ point to the library's configs/.
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(PROJECT_ROOT, "configs")  # the stages' detectron2 yamls
PRESET_DIR = os.path.join(PROJECT_ROOT, "presets")  # world settings
SIZES = ("micro", "tiny", "default")


def get_toyworld_cfg() -> CN:
    """Default settings (the ``default`` size); every key is documented in presets/default.yaml."""
    c = CN()
    c.SEED = 0
    c.NUM_THREADS = 0  # torch intra-op threads; 0 keeps torch's default
    c.DETERMINISTIC = True
    c.WORKERS = 1  # processes for stage 5's two fine-tunings, NUM_THREADS / WORKERS threads each
    c.WORLD = CN()
    c.WORLD.IMAGE_SIZE = 96
    c.WORLD.OBJECTS = [2, 5]
    c.WORLD.OBJECT_SIZE = [18, 42]
    c.WORLD.MAX_OVERLAP = 0.25
    c.WORLD.CLUTTER = 0.7
    c.WORLD.NUM_CAPTION_IMAGES = 4000
    c.WORLD.CLOSEUP_FRACTION = 0.4  # caption images that are single-object close-ups
    c.WORLD.CLOSEUP_SIZE = [44, 84]  # object size in close-ups
    c.WORLD.CROP_CLOSEUPS = 0.0  # close-ups cut out of full scenes (crop_closeup)
    c.WORLD.CROP_CONTEXT = [1.0, 2.0]  # their crop side / object box side
    c.WORLD.NUM_DET_IMAGES = 1500
    c.WORLD.NUM_TEST_IMAGES = 300
    c.WORLD.CAPTIONS_PER_IMAGE = 2
    c.WORLD.MIN_CONCEPT_COUNT = 5
    # probabilities that a caption names an object's colour, its texture, the background
    c.WORLD.CAPTION_MENTION = [0.4, 0.25, 0.6]
    c.CLIP = CN()
    c.CLIP.LAYERS = [1, 1, 1, 1]
    c.CLIP.WIDTH = 16
    c.CLIP.EMBED_DIM = 64
    c.CLIP.HEADS = 8
    c.CLIP.TEXT_WIDTH = 64
    c.CLIP.TEXT_HEADS = 4
    c.CLIP.TEXT_LAYERS = 3
    c.CLIP.EPOCHS = 6
    c.CLIP.BATCH_SIZE = 128
    c.CLIP.LR = 2e-3
    c.CLIP.WEIGHT_DECAY = 0.05
    c.CLIP.WARMUP_STEPS = 30
    c.CLIP.SHIFT = 4  # random translation (pixels) as augmentation
    c.CLIP.BF16 = True  # bfloat16 autocast (mixed precision) in training
    c.CLIP.CHANNELS_LAST = True  # faster convolutions on CPUs
    c.CLIP.BN3_GAMMA_ONE = True  # CLIP zero-inits each block's last BN gamma; 1 learns faster
    # Temperature of the text-embedding classifiers of zero-shot and transfer detection (the
    # original's 0.01 is OpenAI CLIP's learned temperature); 0 means the toy teacher's own learned
    # temperature 1 / logit_scale. Pretraining keeps the original's 0.01 (pretrain.yaml), which
    # equals the teacher's hard-coded pseudo-label temperature (docs/TOYWORLD.md).
    c.CLSS_TEMP = 0.0
    # Input size of the detection stages 2-6 (scenes are resized to it; 0: WORLD.IMAGE_SIZE).
    # CLIP sees IMAGE_SIZE pictures in stage 1, so objects in scenes are smaller than its inputs;
    # a larger detection input brings region features nearer what CLIP learned (docs/TOYWORLD.md).
    c.INPUT_SIZE = 0
    for stage, config, iters, batch, lr in (("RPN", "rpn.yaml", 300, 16, 1e-3),
                                            ("PRETRAIN", "pretrain.yaml", 300, 16, 2e-4),
                                            ("TRANSFER", "transfer.yaml", 300, 16, 2e-4)):
        node = CN()
        node.CONFIG = os.path.join("configs", config)
        node.ITERS = iters
        node.BATCH_SIZE = batch
        node.LR = lr
        node.OPTS = []  # more KEY VALUE overrides of the stage's detectron2 config
        setattr(c, stage, node)
    # Input size of pretraining (stage 3; 0: INPUT_SIZE): image-caption pictures are upsampled to
    # it, as the original's pretraining upsamples CC3M pictures to 800 pixels (docs/TOYWORLD.md)
    c.PRETRAIN.INPUT_SIZE = 0
    # A control outside the original method: the teacher labels regions from their crops
    # (toyworld.crop_teacher), not from its feature map of the picture (docs/TOYWORLD.md)
    c.PRETRAIN.TEACHER_CROPS = False
    # A positive control outside the method: regions on objects get their object's concept
    # (toyworld.true_labels): "" off, "all" every object, "base" base objects only
    c.PRETRAIN.TRUE_LABELS = ""
    c.TRANSFER.ORACLE = "student"  # init. of the oracle (boxes of all 12 categories); "": none
    c.EVAL = CN()
    c.EVAL.CONFIG = os.path.join("configs", "zeroshot.yaml")
    c.EVAL.OPTS = []
    c.EVAL.BOOTSTRAP = 200  # resamples of the test images for the confidence intervals
    c.EVAL.PROMPTS = "toy"  # "toy" (caption-style), "imagenet" (the original's 81), "none"
    c.EVAL.GRID_IMAGES = 12
    c.EVAL.GRID_SCORE_THRESH = 0.15
    c.EVAL.GRID_VOCAB = []  # names detected in the grid of stage 6 (empty: the 12 categories)
    c.EVAL.GRID_IMAGES_PATH = ""  # an image or a folder for the grid (empty: test scenes)
    return c


def resolve_path(path: str) -> str:
    """A settings path: absolute as given, else relative to the project folder."""
    return path if os.path.isabs(path) else os.path.join(PROJECT_ROOT, path)


def load_settings(size_or_file: str = "default", opts=()) -> CN:
    """Settings of a size preset or a yaml file, with ``KEY VALUE`` overrides.

    Args:
        size_or_file (str): one of :data:`SIZES` or the path of a settings yaml.
        opts (sequence): overrides, e.g. ``["SEED", "1"]``.

    Returns:
        CfgNode: frozen settings.
    """
    cfg = get_toyworld_cfg()
    path = (os.path.join(PRESET_DIR, f"{size_or_file}.yaml") if size_or_file in SIZES
            else size_or_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"toy-world settings '{path}' do not exist (expected a size among "
                                f"{SIZES} or a yaml file)")
    cfg.merge_from_other_cfg(CN(CN.load_yaml_with_base(path)))  # _BASE_ as in detectron2
    cfg.merge_from_list(list(opts))
    mention = cfg.WORLD.CAPTION_MENTION
    if len(mention) != 3 or not all(0 <= float(p) <= 1 for p in mention):
        raise ValueError(f"{path}: WORLD.CAPTION_MENTION must be three probabilities in [0, 1] "
                         f"(colour, texture, background), got {list(mention)}")
    lo, hi = cfg.WORLD.OBJECT_SIZE
    if not 4 <= lo <= hi < cfg.WORLD.IMAGE_SIZE:
        raise ValueError(f"{path}: WORLD.OBJECT_SIZE {cfg.WORLD.OBJECT_SIZE} must satisfy "
                         f"4 <= min <= max < WORLD.IMAGE_SIZE ({cfg.WORLD.IMAGE_SIZE})")
    if cfg.WORLD.IMAGE_SIZE % 32:
        raise ValueError(f"{path}: WORLD.IMAGE_SIZE must be a multiple of 32 (CLIP's attention "
                         f"pool grid), got {cfg.WORLD.IMAGE_SIZE}")
    for key, size in (("INPUT_SIZE", cfg.INPUT_SIZE), ("PRETRAIN.INPUT_SIZE",
                                                        cfg.PRETRAIN.INPUT_SIZE)):
        if size and not cfg.WORLD.IMAGE_SIZE <= size <= 4 * cfg.WORLD.IMAGE_SIZE:
            raise ValueError(f"{path}: {key} must be 0 or between WORLD.IMAGE_SIZE "
                             f"({cfg.WORLD.IMAGE_SIZE}) and 4 times it, got {size}")
    if int(cfg.WORKERS) < 1:
        raise ValueError(f"{path}: WORKERS must be 1 or more processes, got {cfg.WORKERS}")
    if cfg.PRETRAIN.TRUE_LABELS not in ("", "all", "base"):
        raise ValueError(f"{path}: PRETRAIN.TRUE_LABELS must be '', 'all' or 'base', got "
                         f"{cfg.PRETRAIN.TRUE_LABELS!r}")
    if cfg.PRETRAIN.TRUE_LABELS and cfg.PRETRAIN.TEACHER_CROPS:
        raise ValueError(f"{path}: PRETRAIN.TRUE_LABELS and PRETRAIN.TEACHER_CROPS are two "
                         "controls of the pseudo labels; choose one")
    if cfg.TRANSFER.ORACLE not in ("", "teacher", "student"):
        raise ValueError(f"{path}: TRANSFER.ORACLE must be '', 'teacher' or 'student', got "
                         f"{cfg.TRANSFER.ORACLE!r}")
    if cfg.EVAL.PROMPTS not in ("toy", "imagenet", "none"):
        raise ValueError(f"{path}: EVAL.PROMPTS must be 'toy', 'imagenet' or 'none', got "
                         f"{cfg.EVAL.PROMPTS!r}")
    cfg.freeze()
    return cfg


def clip_config(settings) -> CLIPConfig:
    """The small CLIP of the settings (image size = the scenes' size)."""
    c = settings.CLIP
    return CLIPConfig(
        VisualConfig(tuple(c.LAYERS), c.WIDTH, settings.WORLD.IMAGE_SIZE, c.EMBED_DIM, c.HEADS),
        TextConfig(c.TEXT_WIDTH, c.TEXT_HEADS, c.TEXT_LAYERS, c.EMBED_DIM))
