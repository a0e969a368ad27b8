"""Image-text pair datasets stored as TSV files, and the dataset-entry rules of their configs.

An image TSV has rows ``key \\t base64(JPEG or PNG bytes)``; its text TSV has, in the same row,
``key \\t text``. What the text means is up to the ``decode_text`` callable (for RegionCLIP:
JSON captions/tags or a raw caption, see ``regionclip.data.pretrain``).

Folder discovery (the original RegionCLIP's rule, without its 20-files-per-folder cap): in a
folder, every file whose name contains ``images``, ``image`` or ``img`` and ends in ``.tsv`` is
an image TSV, taken in sorted name order. Its text TSV is in the same folder; its name is the
image TSV's name with every occurrence of the **first** of these markers found in it replaced:
``images`` -> ``text``, else ``image`` -> ``text``, else ``img`` -> ``caption`` (so
``cc3m.images.tsv`` pairs with ``cc3m.text.tsv`` and ``part_img.tsv`` with ``part_caption.tsv``).

Samples that cannot be used -- an image that does not decode, a text without any caption, an image
the ``transform`` refuses (:class:`SkipSample`) -- are skipped and counted, never silently:
``__getitem__`` returns None, increments ``num_skipped`` and logs the first few with file, row and
key. The loader (:mod:`detectron2_ext.data.image_text_loader`)
drops the Nones and reports the running total.
"""
import base64
import binascii
import io
import logging
import os
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from .tsv import TSVFileList

__all__ = ["ImageTextTSVDataset", "DatasetEntry", "discover_tsv_pairs", "text_tsv_name",
           "is_image_tsv_name", "expand_dataset_entries", "decode_image_bytes", "to_rgb8",
           "SkipSample", "IMAGE_TSV_MARKERS"]

logger = logging.getLogger(__name__)

IMAGE_TSV_MARKERS = (("images", "text"), ("image", "text"), ("img", "caption"))
LOGGED_SKIPS = 10  # skipped samples logged one by one per process; later ones only counted


def is_image_tsv_name(filename: str) -> bool:
    """bool: whether a file name is an image TSV under the folder-discovery rule."""
    return filename.endswith(".tsv") and any(m in filename for m, _ in IMAGE_TSV_MARKERS)


def text_tsv_name(image_filename: str) -> str:
    """The text TSV name paired with an image TSV name (see the module docstring).

    Args:
        image_filename (str): base name of the image TSV.

    Returns:
        str: base name of its text TSV.
    """
    for marker, replacement in IMAGE_TSV_MARKERS:
        if marker in image_filename:
            return image_filename.replace(marker, replacement)
    raise ValueError(f"{image_filename!r} is not an image TSV name: it contains none of "
                     f"{[m for m, _ in IMAGE_TSV_MARKERS]}")


def discover_tsv_pairs(path: str) -> List[Tuple[str, str]]:
    """Image/text TSV pairs of a path: a folder (all image TSVs in it) or one image TSV file.

    Args:
        path (str): folder or image TSV file.

    Returns:
        list[tuple[str, str]]: ``(image_tsv, text_tsv)`` paths, sorted by image TSV name.

    Raises:
        FileNotFoundError: the path, or the text TSV of a discovered image TSV, does not exist.
        ValueError: a file path is not an image TSV name, or a folder holds no image TSV.
    """
    if os.path.isfile(path):
        folder, names = os.path.dirname(path), [os.path.basename(path)]
        if not is_image_tsv_name(names[0]):
            raise ValueError(f"{path}: not an image TSV (the name must end in .tsv and contain "
                             "'images', 'image' or 'img')")
    elif os.path.isdir(path):
        folder, names = path, sorted(os.listdir(path))
    else:
        raise FileNotFoundError(f"image-text data path not found: {path}")
    pairs = []
    for name in names:
        if not is_image_tsv_name(name):
            continue
        image_tsv = os.path.join(folder, name)
        text_tsv = os.path.join(folder, text_tsv_name(name))
        if not os.path.isfile(text_tsv):
            raise FileNotFoundError(f"{image_tsv}: its text TSV {text_tsv} does not exist")
        pairs.append((image_tsv, text_tsv))
    if not pairs:
        raise ValueError(f"{path}: no image TSV found (files named *images*.tsv, *image*.tsv or "
                         "*img*.tsv, each with its *text*.tsv / *caption*.tsv)")
    return pairs


class DatasetEntry(NamedTuple):
    """One data source of an image-text config: dataset name, reader (factory) name, path."""

    name: str
    factory: str
    path: str


def _split(value: str, what: str, index: int) -> List[str]:
    parts = str(value).split("+")
    if any(not p.strip() for p in parts):
        raise ValueError(f"{what}[{index}] = {value!r}: empty part in a '+'-joined list")
    return [p.strip() for p in parts]


def expand_dataset_entries(names: Sequence[str], factories: Sequence[str],
                           paths: Sequence[str], what: str = "DATASETS.TRAIN"
                           ) -> List[DatasetEntry]:
    """Expand parallel ``DATASETS.TRAIN`` / ``FACTORY_TRAIN`` / ``PATH_TRAIN`` tuples.

    Entry ``i`` uses ``names[i]``, ``factories[i]`` and ``paths[i]``; names and paths may be
    ``'+'``-joined lists that must have equal lengths (the original's rule). Extensions: a single
    name (e.g. ``imgtxtpairs``) or a single factory is applied to every path of its entry.

    Args:
        names, factories, paths (Sequence[str]): the three config tuples.
        what (str): config key named in errors.

    Returns:
        list[DatasetEntry]: one per path, in order.
    """
    prefix = what.rsplit(".", 1)[0]
    if not (len(names) == len(factories) == len(paths)):
        raise ValueError(f"{what} has {len(names)} entries, {prefix}.FACTORY_* {len(factories)} "
                         f"and {prefix}.PATH_* {len(paths)}; each entry needs a factory and a path")
    entries = []
    for i, (name, factory, path) in enumerate(zip(names, factories, paths)):
        split_names = _split(name, what, i)
        split_factories = _split(factory, "factory", i)
        split_paths = _split(path, "path", i)
        count = len(split_paths)
        if len(split_names) == 1:
            split_names = split_names * count
        if len(split_factories) == 1:
            split_factories = split_factories * count
        if len(split_names) != count or len(split_factories) != count:
            raise ValueError(f"entry {i}: {len(split_names)} '+'-joined names ({name!r}), "
                             f"{len(split_factories)} factories ({factory!r}) and {count} "
                             f"paths ({path!r}); the numbers must match")
        entries += [DatasetEntry(*t) for t in zip(split_names, split_factories, split_paths)]
    return entries


class SkipSample(Exception):
    """Raised by a dataset's ``transform`` for a sample it cannot use: the dataset skips and
    counts the sample (the message is the reason) instead of failing the run."""


def to_rgb8(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB; 16-bit grayscale is scaled, not clipped.

    PIL's ``convert("RGB")`` clips integer grayscale to 255, so a 16-bit PNG becomes almost white.
    Here modes ``I;16*`` are scaled from [0, 65535] to [0, 255]; mode ``I`` (32-bit integers)
    likewise when a value exceeds 255 (16-bit data), else taken as 8-bit values. Other modes go
    through ``convert("RGB")``.

    Args:
        image (PIL.Image.Image): a decoded image.

    Returns:
        PIL.Image.Image: mode ``RGB``.
    """
    if image.mode.startswith("I"):
        values = np.asarray(image).astype(np.float64)
        if image.mode != "I" or values.max(initial=0) > 255:
            values = np.clip(values, 0, 65535) / 257.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L") \
            .convert("RGB")
    return image.convert("RGB")


def decode_image_bytes(data: bytes) -> Tuple[Optional[Image.Image], Optional[str]]:
    """Decode encoded image bytes to an 8-bit RGB PIL image (:func:`to_rgb8`).

    Args:
        data (bytes): JPEG, PNG or any format PIL reads.

    Returns:
        tuple: ``(image, None)`` or ``(None, reason)`` if the bytes do not decode.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            return to_rgb8(image), None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return None, f"image does not decode ({type(e).__name__}: {e})"


def _decode_base64_image(field: str) -> Tuple[Optional[Image.Image], Optional[str]]:
    try:
        data = base64.b64decode(field, validate=True)
    except (binascii.Error, ValueError) as e:
        return None, f"image field is not base64 ({e})"
    return decode_image_bytes(data)


class SkipLogger:
    """Counts skipped samples of one process; logs the first ``LOGGED_SKIPS`` individually."""

    def __init__(self):
        self.num_skipped = 0

    def skip(self, where: str, reason: str) -> None:
        """Count a skipped sample; ``where`` names its file/row/key."""
        self.num_skipped += 1
        if self.num_skipped <= LOGGED_SKIPS:
            logger.warning("Skipping sample %s: %s%s", where, reason,
                           " (further skips are only counted)" if self.num_skipped == LOGGED_SKIPS
                           else "")


class ImageTextTSVDataset(torch.utils.data.Dataset):
    """Map-style dataset of image-text pairs from paired image/text TSV files.

    Args:
        image_tsv (str or Sequence[str]): image TSV file(s).
        text_tsv (str or Sequence[str]): the text TSV file(s), one per image TSV, same rows.
        transform (callable): RGB PIL image -> model input (e.g. a tensor); None keeps the image.
        decode_text (callable): text field -> captions (anything with ``len``); None or empty
            means "no caption" (the sample is skipped). None keeps the raw text in a list.
        dataset_name (str or Sequence[str]): name per TSV pair (or one for all), put in samples.
        max_open_files (int): TSV files kept open per process and kind.
        verify_lineidx (str): see :class:`~detectron2_ext.data.tsv.TSVFile`.

    Each item is ``{"image", "captions", "key", "dataset", "orig_size": (h, w)}`` or None for a
    skipped sample (see the module docstring).
    """

    def __init__(self, image_tsv: Union[str, Sequence[str]], text_tsv: Union[str, Sequence[str]],
                 transform: Optional[Callable] = None, decode_text: Optional[Callable] = None,
                 dataset_name: Union[str, Sequence[str]] = "", max_open_files: int = 4,
                 verify_lineidx: str = "sample"):
        image_tsv = [image_tsv] if isinstance(image_tsv, str) else list(image_tsv)
        text_tsv = [text_tsv] if isinstance(text_tsv, str) else list(text_tsv)
        if len(image_tsv) != len(text_tsv):
            raise ValueError(f"{len(image_tsv)} image TSV files but {len(text_tsv)} text TSV files")
        names = ([dataset_name] * len(image_tsv) if isinstance(dataset_name, str)
                 else list(dataset_name))
        if len(names) != len(image_tsv):
            raise ValueError(f"{len(names)} dataset names for {len(image_tsv)} TSV pairs")
        kwargs = dict(max_open=max_open_files, verify=verify_lineidx, min_fields=2)
        self.images = TSVFileList(image_tsv, **kwargs)
        self.texts = TSVFileList(text_tsv, **kwargs)
        for img, txt in zip(self.images.files, self.texts.files):
            if len(img) != len(txt):
                raise ValueError(f"{img.path} has {len(img)} rows but its text TSV {txt.path} has "
                                 f"{len(txt)}; paired TSV files must have the same rows")
        self.dataset_names = names
        self.transform = transform
        self.decode_text = decode_text
        self._skips = SkipLogger()

    @property
    def num_skipped(self) -> int:
        """int: samples skipped so far by this process's copy of the dataset."""
        return self._skips.num_skipped

    def __len__(self) -> int:
        return len(self.images)

    def _fields(self, index: int) -> Tuple[int, List[str], List[str]]:
        which, local = self.images.locate(index)
        image_fields, text_fields = self.images[index], self.texts[index]
        if image_fields[0] != text_fields[0]:
            img, txt = self.images.files[which], self.texts.files[which]
            raise ValueError(f"key mismatch at row {img.row_number(local)}: image TSV {img.path} "
                             f"has key {image_fields[0]!r}, text TSV {txt.path} has "
                             f"{text_fields[0]!r} (row {txt.row_number(local)})")
        return which, image_fields, text_fields

    def _where(self, index: int, key: str) -> str:
        which, local = self.images.locate(index)
        img = self.images.files[which]
        return f"{img.path} row {img.row_number(local)} (key {key!r})"

    def __getitem__(self, index: int) -> Optional[dict]:
        which, image_fields, text_fields = self._fields(index)
        key = image_fields[0]
        if self.decode_text is None:
            captions = [text_fields[1]] if text_fields[1] else None
        else:
            try:
                captions = self.decode_text(text_fields[1])
            except Exception as e:
                raise ValueError(f"text of {self._where(index, key)} in "
                                 f"{self.texts.files[which].path}: {e}") from e
        if captions is None or len(captions) == 0:
            self._skips.skip(self._where(index, key), "no caption")
            return None
        image, reason = _decode_base64_image(image_fields[1])
        if image is None:
            self._skips.skip(self._where(index, key), reason)
            return None
        orig_size = (image.height, image.width)
        if self.transform is not None:
            try:
                image = self.transform(image)
            except SkipSample as e:
                self._skips.skip(self._where(index, key), str(e))
                return None
        return {"image": image, "captions": captions, "key": key,
                "dataset": self.dataset_names[which], "orig_size": orig_size}
