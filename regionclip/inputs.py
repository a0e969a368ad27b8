"""Checked inputs of the Python API and the demo: images, boxes, score thresholds, vocabularies.

Every check raises a ``ValueError`` (``TypeError`` for a wrong type) that names the offending
value, so a bad input never turns into an empty result or a silently different one.
"""
import logging
import math
import numbers
import os
from typing import List, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps

from detectron2_ext.data import to_rgb8

__all__ = ["read_rgb_image", "image_size", "check_boxes", "check_score_threshold",
           "unique_names", "resize_to_min_side", "MIN_SIDE"]

logger = logging.getLogger(__name__)

ImageLike = Union[str, os.PathLike, np.ndarray]


def _open_oriented(path) -> Image.Image:
    with Image.open(path) as img:
        return ImageOps.exif_transpose(img)  # as detectron2's read_image (EXIF orientation)


def read_rgb_image(image: ImageLike) -> np.ndarray:
    """An HxWx3 uint8 RGB array from a path or an array (validated), with a clear error.

    Files: EXIF orientation applied, 16-bit grayscale scaled to 8 bits (not clipped to white,
    see :func:`detectron2_ext.data.to_rgb8`). Arrays must already be HxWx3 uint8.
    """
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise FileNotFoundError(f"image '{image}' does not exist")
        try:
            return np.asarray(to_rgb8(_open_oriented(image)))
        except Exception as e:  # PIL raises several types for undecodable files
            raise ValueError(f"could not decode image '{image}': {e}") from None
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"image must be an HxWx3 uint8 RGB array or a path, got an array of shape "
                         f"{array.shape} and dtype {array.dtype}")
    return array


def image_size(path: str) -> Tuple[int, int]:
    """(height, width) of an image file after its EXIF orientation, without decoding pixels."""
    with Image.open(path) as img:
        w, h = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def check_boxes(boxes, hw: Tuple[int, int], what: str = "boxes") -> np.ndarray:
    """Validate XYXY boxes in pixels of an image of size ``hw`` = (height, width).

    Non-finite, inverted (x1 < x0 or y1 < y0), zero-area and out-of-image (no overlap with the
    image) boxes are errors naming the box, its index and the image size. Boxes partly outside
    are clipped to the image (a warning if by more than one pixel).

    Args:
        boxes: (N, 4) array-like, N >= 1.
        hw (tuple): image height and width.
        what (str): where the boxes come from, for messages.

    Returns:
        np.ndarray: (N, 4) float32, clipped to the image.
    """
    h, w = hw
    try:
        array = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be an (N, 4) array of numbers [x0, y0, x1, y1] ({e})") \
            from None
    if array.size == 0:
        raise ValueError(f"{what} must be a non-empty (N, 4) array of XYXY boxes")
    if array.ndim == 1 and array.shape[0] == 4:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{what} must be an (N, 4) array of XYXY boxes, got shape {array.shape}")
    for i, box in enumerate(array):
        x0, y0, x1, y1 = box
        problem = None
        if not np.isfinite(box).all():
            problem = "has a non-finite coordinate (NaN or inf)"
        elif x1 < x0 or y1 < y0:
            problem = "is inverted (x1 < x0 or y1 < y0; boxes are [x0, y0, x1, y1], not XYWH)"
        elif x1 == x0 or y1 == y0:
            problem = "has zero area"
        elif x0 >= w or y0 >= h or x1 <= 0 or y1 <= 0:
            problem = "lies outside the image"
        elif min(x0, y0) < 0 or x1 > w or y1 > h:
            clipped = [max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)]
            if min(clipped[2] - clipped[0], clipped[3] - clipped[1]) <= 0:
                problem = "has zero area inside the image"
        if problem:
            raise ValueError(f"{what}: box {i} {box.tolist()} {problem}; the image is {w}x{h} "
                             f"(width x height), so boxes need 0 <= x0 < x1 <= {w} and "
                             f"0 <= y0 < y1 <= {h} in pixels")
    outside = (array[:, :2].min(axis=1) < -1) | (array[:, 2] > w + 1) | (array[:, 3] > h + 1)
    if outside.any():
        logger.warning("%s: %d box(es) extend beyond the %dx%d image and are clipped to it, e.g. "
                       "box %d %s", what, int(outside.sum()), w, h, int(outside.argmax()),
                       array[outside.argmax()].tolist())
    array[:, [0, 2]] = array[:, [0, 2]].clip(0, w)
    array[:, [1, 3]] = array[:, [1, 3]].clip(0, h)
    return array.astype(np.float32)


def check_score_threshold(value, what: str = "score_threshold"):
    """A score threshold: None, or a real number in [0, 1] (not a string, bool or NaN)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number in [0, 1], got {value!r} "
                        f"({type(value).__name__})")
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {value!r}")
    return float(value)


def unique_names(names: Sequence[str], what: str = "vocabulary") -> List[str]:
    """The names with repeats removed (first occurrence kept, order kept), as the demo's command
    line does: a repeated name would split a class's probability between two columns."""
    unique = list(dict.fromkeys(names))
    if len(unique) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        logger.warning("%s: %d repeated names kept once: %s", what, len(names) - len(unique),
                       repeated[:10])
    return unique


# Smallest side given to the backbones: their coarsest stride, so that every stage has at least
# one pixel (the CLIP ResNet's average pools fail on a 1-pixel input).
MIN_SIDE = 32


def resize_to_min_side(transform, min_side: int = MIN_SIDE):
    """A ``ResizeTransform`` whose output has at least ``min_side`` pixels per side.

    detectron2's ``ResizeShortestEdge`` makes the short side of a very elongated image tiny (0
    pixels beyond ``2 * MAX_SIZE_TEST`` : 1, e.g. 2666:1 at 800/1333), which crashes the model.
    Such an image is stretched across its short side to ``min_side`` pixels instead; boxes and
    detections still map to the image's own pixels (the transform is exact both ways). Images
    whose resized sides are already that long are unchanged.
    """
    from detectron2.data.transforms import ResizeTransform

    if min(transform.new_h, transform.new_w) >= min_side:
        return transform
    return ResizeTransform(transform.h, transform.w, max(transform.new_h, min_side),
                           max(transform.new_w, min_side), transform.interp)
