"""RegionCLIP's pretraining data: caption decoding, the pretraining transform and the train loader.

Trigger: ``"imgtxtpairs"`` is one of the ``DATASETS.TRAIN`` entries (the original's tuple
membership test; see :func:`is_image_text_config`). Entry ``i`` of ``DATASETS.TRAIN``,
``DATASETS.FACTORY_TRAIN`` and ``DATASETS.PATH_TRAIN`` selects the dataset name, the reader and
the path; names and paths may be ``'+'``-joined (see
:func:`detectron2_ext.data.expand_dataset_entries`). Readers (``FACTORY_TRAIN``):

* ``"CLIPImgTxtPairTSVDataset"`` (the original's name): paired image/text TSV files; a path is a
  folder (all pairs in it, no 20-file cap) or one image TSV.
* ``"WebDatasetImageText"`` (new): WebDataset tar shards as img2dataset writes them (CC3M,
  CC12M); a path is a folder of ``*.tar``, a brace pattern or one tar file.

Batch format (one list per iteration, one dict per image; the original used tuples)::

    {"image": FloatTensor (3, H, W) RGB in [0, 1],   # resized and maybe flipped
     "captions": LongTensor (n_caps, 77),            # CLIP BPE ids, n_caps <= 5
     "key": str, "dataset": str,                     # sample key, dataset name
     "orig_size": (h, w)}                            # decoded image size before the transform
"""
import json
import logging
import random
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.utils import comm
from PIL import Image

from detectron2_ext.data import (
    ImageTextTSVDataset,
    SkipSample,
    WebDatasetImageText,
    build_skipping_train_loader,
    discover_tsv_pairs,
    expand_dataset_entries,
    list_shards,
)

from ..clip.prompts import PROMPT_TEMPLATES, prompt_engineering
from ..clip.tokenizer import CONTEXT_LENGTH, tokenize

__all__ = ["IMAGE_TEXT_TRIGGER", "TSV_FACTORY", "WDS_FACTORY", "is_image_text_config",
           "parse_text_field", "CaptionDecoder", "resized_size", "PretrainTransform",
           "build_pretrain_transform", "build_caption_decoder", "build_pretrain_dataset",
           "build_pretrain_train_loader"]

logger = logging.getLogger(__name__)

IMAGE_TEXT_TRIGGER = "imgtxtpairs"
TSV_FACTORY = "CLIPImgTxtPairTSVDataset"
WDS_FACTORY = "WebDatasetImageText"
MAX_CAPTIONS = 5


def is_image_text_config(cfg) -> bool:
    """bool: whether ``DATASETS.TRAIN`` selects the image-text (pretraining) loader."""
    return IMAGE_TEXT_TRIGGER in tuple(cfg.DATASETS.TRAIN)


def parse_text_field(text: str, rng=random, max_captions: int = MAX_CAPTIONS,
                     templates: Sequence[str] = PROMPT_TEMPLATES) -> List[str]:
    """Captions of one text field, as the original's ``_decode_text``.

    A JSON object may hold ``"captions"`` (list of strings) and/or ``"tags"`` (a string of words):
    if both, one of them is chosen at random. Captions give the first ``max_captions`` entries
    (blank and JSON ``null`` ones dropped; a single string counts as a one-element list, where the
    original would have taken its first characters). Tags are split on white space, shuffled,
    joined with spaces and put into **one** random template with :func:`prompt_engineering`.
    Text that is not a JSON object is one raw caption. JSON ``null`` (the whole field,
    ``"captions": null`` or ``"tags": null``) is no caption: the sample is skipped and counted
    instead of being trained on the word "null".

    Args:
        text (str): the text field.
        rng: ``random``-like object (``choice``, ``shuffle``), for reproducibility.
        max_captions (int): captions kept.
        templates (Sequence[str]): prompt templates for tags.

    Returns:
        list[str]: captions; empty if there is none (the sample is then skipped).
    """
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        value = None
    else:
        if value is None:  # JSON null: no caption (not the word "null")
            return []
    if not isinstance(value, dict):
        return [text] if text.strip() else []
    keys = [k for k in value if k in ("captions", "tags")]
    if not keys:
        return []
    key = rng.choice(keys)
    if key == "captions":
        captions = value["captions"]
        captions = [] if captions is None else [captions] if isinstance(captions, str) \
            else captions
        if not isinstance(captions, list) or \
                not all(c is None or isinstance(c, str) for c in captions):
            raise ValueError(f'"captions" must be a list of strings, got {captions!r:.80}')
        return [c for c in captions[:max_captions] if c is not None and c.strip()]
    tags = value["tags"]
    if tags is None:
        return []
    tags = " ".join(tags) if isinstance(tags, list) else tags
    if not isinstance(tags, str):
        raise ValueError(f'"tags" must be a string of words, got {tags!r:.80}')
    words = tags.split()
    if not words:
        return []
    rng.shuffle(words)
    return [prompt_engineering(" ".join(words), rng.choice(templates))]


class CaptionDecoder:
    """Text field -> token ids of its captions (``decode_text`` of the datasets).

    Args:
        context_length (int): token row length (77).
        truncate (bool): cut over-long captions like the original (True) or raise.
        max_captions (int): captions kept per sample.
        rng: random source (default: the ``random`` module, seeded per sample by the train
            loader). The module is looked up when called, not stored, so that the decoder can
            be pickled into DataLoader workers of spawned processes.
    """

    def __init__(self, context_length: int = CONTEXT_LENGTH, truncate: bool = True,
                 max_captions: int = MAX_CAPTIONS, rng=None):
        self.context_length = context_length
        self.truncate = truncate
        self.max_captions = max_captions
        self.rng = rng

    def __call__(self, text: str) -> Optional[torch.Tensor]:
        """LongTensor (n_caps, context_length), or None when the field has no caption."""
        captions = parse_text_field(text, self.rng if self.rng is not None else random,
                                    self.max_captions)
        if not captions:
            return None
        return tokenize(captions, self.context_length, truncate=self.truncate)


def resized_size(width: int, height: int, size: int, max_size: Optional[int]) -> Tuple[int, int]:
    """Output size of the original's pretraining resize (vendored torchvision ``Resize``).

    The shorter side becomes ``size`` and the longer one ``int(size * long / short)``; if that
    exceeds ``max_size``, the longer side becomes ``max_size`` and the shorter one
    ``int(max_size * size / new_long)``. Quirk kept from the original: an image whose shorter
    side already equals ``size`` keeps its size even if its longer side exceeds ``max_size``.

    Args:
        width, height (int): input size.
        size (int): target shorter side.
        max_size (int or None): cap on the longer side.

    Returns:
        tuple[int, int]: ``(new_width, new_height)``.
    """
    short, long = (width, height) if width <= height else (height, width)
    if short == size:
        return width, height
    new_short, new_long = size, int(size * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if width <= height else (new_long, new_short)


class PretrainTransform:
    """Resize (shorter side, capped longer side), random horizontal flip, to float tensor.

    Args:
        size (int): shorter side after resizing.
        max_size (int or None): cap on the longer side; must exceed ``size``.
        interpolation (int): PIL resampling filter (3 = bicubic).
        flip_prob (float): probability of a horizontal flip (drawn from ``torch``'s RNG).
    """

    def __init__(self, size: int, max_size: Optional[int] = None, interpolation: int = 3,
                 flip_prob: float = 0.5):
        if max_size is not None and max_size <= size:
            raise ValueError(f"AUG.TRAIN.MAX_SIZE ({max_size}) must be greater than the shorter "
                             f"side AUG.TRAIN.IMAGE_SIZE[0] ({size})")
        try:
            self.interpolation = Image.Resampling(int(interpolation))
        except ValueError as e:
            raise ValueError(f"AUG.INTERPOLATION {interpolation!r} is not a PIL resampling "
                             "filter (0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, "
                             "5 hamming)") from e
        self.size = int(size)
        self.max_size = None if max_size is None else int(max_size)
        self.flip_prob = flip_prob

    def __repr__(self) -> str:
        return (f"PretrainTransform(size={self.size}, max_size={self.max_size}, "
                f"interpolation={self.interpolation.name}, flip_prob={self.flip_prob})")

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> FloatTensor (3, H, W) in [0, 1].

        Raises:
            SkipSample: an image so elongated that a side would become 0 pixels (the dataset
                skips and counts it).
        """
        new_size = resized_size(image.width, image.height, self.size, self.max_size)
        if min(new_size) < 1:
            raise SkipSample(f"a {image.width}x{image.height} image (aspect ratio "
                             f"{max(image.size) / max(min(image.size), 1):.0f}:1) would be "
                             f"resized to {new_size[0]}x{new_size[1]} pixels")
        if new_size != image.size:
            image = image.resize(new_size, self.interpolation)
        if torch.rand(1).item() < self.flip_prob:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def build_pretrain_transform(cfg) -> Callable:
    """:class:`PretrainTransform` from ``AUG.TRAIN.IMAGE_SIZE`` ([S]), ``AUG.TRAIN.MAX_SIZE`` and
    ``AUG.INTERPOLATION``. A two-element ``IMAGE_SIZE`` (the original's random-resized-crop
    path, used by no config) is rejected."""
    sizes = list(cfg.AUG.TRAIN.IMAGE_SIZE)
    if len(sizes) != 1:
        raise ValueError(f"AUG.TRAIN.IMAGE_SIZE = {sizes}: the image-text loader supports only a "
                         "one-element list [S] (shorter side S, e.g. [800] with "
                         "AUG.TRAIN.MAX_SIZE 1333); the original's two-element random-resized-"
                         "crop path is not supported")
    if int(sizes[0]) < 1:
        raise ValueError(f"AUG.TRAIN.IMAGE_SIZE = {sizes}: the size must be positive")
    return PretrainTransform(int(sizes[0]), cfg.AUG.TRAIN.MAX_SIZE, cfg.AUG.INTERPOLATION)


def build_caption_decoder(cfg) -> CaptionDecoder:
    """:class:`CaptionDecoder` with ``MODEL.CLIP.TOKENIZE_TRUNCATE``; ``INPUT.TEXT_TOKENIZER``
    must name a BPE tokenizer (contain ``"bpe"``), as in the original."""
    if "bpe" not in cfg.INPUT.TEXT_TOKENIZER:
        raise ValueError(f"INPUT.TEXT_TOKENIZER = {cfg.INPUT.TEXT_TOKENIZER!r}: only CLIP's BPE "
                         "tokenizer is supported (a name containing 'bpe', e.g. 'openai_bpe')")
    return CaptionDecoder(truncate=bool(cfg.MODEL.CLIP.TOKENIZE_TRUNCATE))


def build_pretrain_dataset(cfg, transform: Optional[Callable] = None,
                           decode_text: Optional[Callable] = None, repeat: bool = True):
    """The image-text training dataset of a config (all ``DATASETS.TRAIN`` entries together).

    Args:
        cfg: config with the ``DATASETS.*_TRAIN`` keys.
        transform, decode_text: default to :func:`build_pretrain_transform` and
            :func:`build_caption_decoder` of ``cfg``.
        repeat (bool): WebDataset data loops forever (True) or makes one pass.

    Returns:
        ImageTextTSVDataset or WebDatasetImageText.
    """
    transform = transform if transform is not None else build_pretrain_transform(cfg)
    decode_text = decode_text if decode_text is not None else build_caption_decoder(cfg)
    entries = expand_dataset_entries(cfg.DATASETS.TRAIN, cfg.DATASETS.FACTORY_TRAIN,
                                     cfg.DATASETS.PATH_TRAIN)
    unknown = sorted({e.factory for e in entries} - {TSV_FACTORY, WDS_FACTORY})
    if unknown:
        raise ValueError(f"DATASETS.FACTORY_TRAIN: unknown reader(s) {unknown}; use "
                         f"{TSV_FACTORY!r} (TSV) or {WDS_FACTORY!r} (WebDataset shards)")
    if len({e.factory for e in entries}) > 1:
        raise ValueError("DATASETS.FACTORY_TRAIN mixes TSV and WebDataset readers; convert the "
                         "data to one format (tools/make_image_text_dataset.py)")
    if entries[0].factory == TSV_FACTORY:
        images, texts, names = [], [], []
        for entry in entries:
            for image_tsv, text_tsv in discover_tsv_pairs(entry.path):
                images.append(image_tsv)
                texts.append(text_tsv)
                names.append(entry.name)
        logger.info("Image-text TSV data: %d file pairs from %s", len(images),
                    [e.path for e in entries])
        return ImageTextTSVDataset(images, texts, transform, decode_text, names)
    shards, names = [], []
    for entry in entries:
        found = list_shards(entry.path)
        shards += found
        names += [entry.name] * len(found)
    logger.info("Image-text WebDataset data: %d shards from %s", len(shards),
                [e.path for e in entries])
    seed = cfg.SEED if cfg.SEED >= 0 else None
    return WebDatasetImageText(shards, transform, decode_text, names, repeat=repeat, seed=seed)


def build_pretrain_train_loader(cfg):
    """The pretraining train loader: infinite batches of ``SOLVER.IMS_PER_BATCH // world_size``
    samples per process in the format of the module docstring, skipped samples dropped and
    counted (``data/skipped_samples`` in the trainer's metrics).

    Args:
        cfg: a config for which :func:`is_image_text_config` holds.

    Returns:
        detectron2_ext.data.SkipCountingBatchLoader
    """
    if not is_image_text_config(cfg):
        raise ValueError(f"DATASETS.TRAIN = {tuple(cfg.DATASETS.TRAIN)} does not contain "
                         f"{IMAGE_TEXT_TRIGGER!r}")
    world = comm.get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total % world != 0 or total < world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH ({total}) must be a positive multiple of the "
                         f"number of processes ({world})")
    dataset = build_pretrain_dataset(cfg)
    seed = cfg.SEED if cfg.SEED >= 0 else None
    logger.info("Pretraining loader: %d images per process, %d workers, transform %s",
                total // world, cfg.DATALOADER.NUM_WORKERS, dataset.transform)
    return build_skipping_train_loader(dataset, total // world, cfg.DATALOADER.NUM_WORKERS,
                                       seed=seed)
