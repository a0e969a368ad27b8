"""Scene generator: textured, coloured shapes on varied backgrounds with clutter.

A scene is an RGB image with several objects (a shape of :data:`~.vocabulary.SHAPES` painted with
a colour and a texture, rotated, of varied size, possibly overlapping an earlier one), a
background kind (grass, sand, sky, wood, paper) and clutter (thin scribbles and specks that are
no objects). Every object gets a tight box from its own rendered mask. Everything is a function
of the ``numpy.random.Generator`` passed in. The shapes' outlines and masks are the library's
drawing primitives (:mod:`regionclip.data.shapes`, also used by its synthetic datasets).
"""
import math
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from regionclip.data.shapes import render_shape, shape_outline

from .vocabulary import BACKGROUNDS, COLOURS, SHAPES, TEXTURES

__all__ = ["SceneSpec", "Scene", "shape_outline", "render_shape", "draw_background", "draw_scene"]

# Rotation range (degrees) of a shape; squares and diamonds turn little so they stay distinct.
_MAX_ROTATION = {"square": 12.0, "diamond": 12.0}


@dataclass(frozen=True)
class SceneSpec:
    """What scenes look like.

    Attributes:
        image_size (tuple[int, int]): (height, width) in pixels.
        objects (tuple[int, int]): inclusive range of the number of objects per scene.
        object_size (tuple[int, int]): range of an object's longer side in pixels.
        max_overlap (float): largest intersection of two object boxes, as a fraction of the
            smaller box (later objects are painted over earlier ones).
        clutter (float): probability that a scene has clutter (1-4 scribbles and specks).
        shapes (tuple[str]): shapes objects are drawn from (default: all).
    """

    image_size: Tuple[int, int] = (96, 96)
    objects: Tuple[int, int] = (2, 5)
    object_size: Tuple[int, int] = (18, 42)
    max_overlap: float = 0.25
    clutter: float = 0.7
    shapes: Tuple[str, ...] = SHAPES


@dataclass
class Scene:
    """One generated scene.

    Attributes:
        image (ndarray): (H, W, 3) uint8 RGB.
        background (str): background kind (a key of :data:`~.vocabulary.BACKGROUNDS`).
        objects (list[dict]): ``shape``, ``colour``, ``texture``, ``bbox`` [x, y, w, h] (tight
            box of the rendered mask), ``area`` (mask pixels), painting order.
    """

    image: np.ndarray
    background: str
    objects: List[dict] = field(default_factory=list)


def _texture(rng, texture: str, colour: np.ndarray, height: int, width: int) -> np.ndarray:
    """(height, width, 3) paint of an object: its colour with a texture pattern."""
    paint = np.broadcast_to(colour, (height, width, 3)).astype(np.float32).copy()
    if texture == "plain":
        return paint
    dark = colour.mean() < 110
    second = colour * 0.3 + 255 * 0.7 if dark else colour * 0.35
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if texture == "striped":
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(4.0, 6.0)
        u = xx * math.cos(theta) + yy * math.sin(theta) + rng.uniform(0, period)
        pattern = (u % period) < period / 2
    elif texture == "dotted":
        period = rng.uniform(4.5, 6.0)
        ox, oy = rng.uniform(0, period, size=2)
        dx = (xx + ox) % period - period / 2
        dy = (yy + oy) % period - period / 2
        pattern = dx * dx + dy * dy < (period * 0.28) ** 2
    elif texture == "checkered":
        cell = rng.uniform(3.0, 4.5)
        ox, oy = rng.uniform(0, cell, size=2)
        pattern = ((np.floor((xx + ox) / cell) + np.floor((yy + oy) / cell)) % 2) == 0
    else:
        raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")
    paint[pattern] = second
    return paint


def draw_background(rng, kind: str, height: int, width: int) -> np.ndarray:
    """(height, width, 3) float32 RGB background of the given kind (0..255)."""
    jitter = rng.uniform(-15, 15, size=3)
    if kind == "grass":
        img = np.array([70, 140, 50]) + jitter + rng.normal(0, 12, (height, width, 3))
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(pil)
        for _ in range(height * width // 60):
            x, y = rng.uniform(0, width), rng.uniform(0, height)
            shade = tuple(int(v) for v in np.array([50, 120, 35]) * rng.uniform(0.6, 1.4))
            draw.line([(x, y), (x + rng.uniform(-1.5, 1.5), y - rng.uniform(3, 6))], fill=shade)
        return np.asarray(pil, dtype=np.float32)
    if kind == "sand":
        img = np.array([220, 195, 145]) + jitter + rng.normal(0, 9, (height, width, 3))
        specks = rng.random((height, width)) < 0.03
        img[specks] *= 0.7
        return img.astype(np.float32)
    if kind == "sky":
        t = np.linspace(0, 1, height)[:, None, None]
        img = (np.array([110, 170, 235]) * (1 - t) + np.array([175, 215, 250]) * t + jitter
               + np.zeros((height, width, 3)))
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        clouds = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(clouds)
        for _ in range(int(rng.integers(0, 4))):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            rx, ry = rng.uniform(8, 22), rng.uniform(4, 9)
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=170)
        clouds = clouds.filter(ImageFilter.GaussianBlur(3))
        alpha = np.asarray(clouds, dtype=np.float32)[..., None] / 255.0
        return np.asarray(pil, dtype=np.float32) * (1 - alpha) + 250 * alpha
    if kind == "wood":
        base = np.array([150, 100, 60]) + jitter
        yy = np.arange(height)[:, None]
        xx = np.arange(width)[None, :]
        grain = np.sin(xx / rng.uniform(2, 5) + 3 * np.sin(yy / rng.uniform(4, 9))) * 10
        img = base + grain[..., None] + rng.normal(0, 5, (height, width, 3))
        plank = int(rng.integers(12, 22))
        seams = (yy + int(rng.integers(plank))) % plank == 0
        img[np.broadcast_to(seams, (height, width))] *= 0.55
        return img.astype(np.float32)
    if kind == "paper":
        img = np.array([240, 238, 230]) + jitter / 3 + rng.normal(0, 3, (height, width, 3))
        if rng.random() < 0.5:  # ruled paper
            spacing = int(rng.integers(9, 14))
            img[int(rng.integers(spacing))::spacing] = [170, 190, 230]
        return img.astype(np.float32)
    raise ValueError(f"unknown background {kind!r}; expected one of {list(BACKGROUNDS)}")


def _clutter(rng, img: np.ndarray):
    """Thin scribbles and specks (no objects) painted in place."""
    height, width = img.shape[:2]
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(1, 5))):
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        if rng.random() < 0.6:
            pts = [(rng.uniform(0, width), rng.uniform(0, height))]
            for _ in range(int(rng.integers(2, 5))):
                x, y = pts[-1]
                pts.append((x + rng.uniform(-10, 10), y + rng.uniform(-10, 10)))
            draw.line(pts, fill=colour, width=1)
        else:
            x, y = rng.uniform(0, width - 2), rng.uniform(0, height - 2)
            draw.rectangle([x, y, x + 1, y + 1], fill=colour)
    img[...] = np.asarray(pil, dtype=np.float32)


def _overlap_ok(box, boxes, max_overlap):
    x, y, w, h = box
    for bx, by, bw, bh in boxes:
        iw = min(x + w, bx + bw) - max(x, bx)
        ih = min(y + h, by + bh) - max(y, by)
        if iw > 0 and ih > 0 and iw * ih > max_overlap * min(w * h, bw * bh):
            return False
    return True


def _place(rng, spec: SceneSpec, count: int) -> List[Tuple[int, int, int, int]]:
    height, width = spec.image_size
    lo, hi = spec.object_size
    boxes = []
    for _ in range(count):
        for _ in range(40):
            side = rng.uniform(lo, hi)
            aspect = math.exp(rng.uniform(-0.25, 0.25))
            w = int(round(min(side, side * aspect)))
            h = int(round(min(side, side / aspect)))
            if w >= width - 1 or h >= height - 1:
                continue
            box = (int(rng.integers(0, width - w)), int(rng.integers(0, height - h)), w, h)
            if _overlap_ok(box, boxes, spec.max_overlap):
                boxes.append(box)
                break
    return boxes


def draw_scene(rng: np.random.Generator, spec: SceneSpec = SceneSpec(),
               shapes: Sequence[str] = None) -> Scene:
    """Draw one scene.

    Args:
        rng (numpy.random.Generator): source of all randomness.
        spec (SceneSpec): image size, object counts and sizes, overlap, clutter.
        shapes (sequence[str]): shapes of the objects in painting order (their number overrides
            ``spec.objects``); default: drawn uniformly from ``spec.shapes``.

    Returns:
        Scene: the image, its background kind and its objects.
    """
    height, width = spec.image_size
    if height < 32 or width < 32:
        raise ValueError(f"SceneSpec.image_size must be at least 32x32, got {spec.image_size}")
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    img = draw_background(rng, background, height, width)
    if rng.random() < spec.clutter:
        _clutter(rng, img)
    if shapes is None:
        count = int(rng.integers(spec.objects[0], spec.objects[1] + 1))
        shapes = [spec.shapes[int(rng.integers(len(spec.shapes)))] for _ in range(count)]
    colour_names = list(COLOURS)
    objects = []
    for shape, (x, y, w, h) in zip(shapes, _place(rng, spec, len(shapes))):
        colour = colour_names[int(rng.integers(len(colour_names)))]
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
        limit = _MAX_ROTATION.get(shape, 30.0)
        angle = rng.uniform(-limit, limit) + (90 * int(rng.integers(4)) if shape == "arrow" else 0)
        alpha = render_shape(shape, w, h, angle)[..., None]
        rgb = np.clip(np.array(COLOURS[colour]) + rng.uniform(-18, 18, size=3), 0, 255)
        paint = _texture(rng, texture, rgb.astype(np.float32), h, w)
        region = img[y:y + h, x:x + w]
        region[...] = region * (1 - alpha) + paint * alpha
        ys, xs = np.nonzero(alpha[..., 0] >= 0.5)
        if len(xs) == 0:
            continue
        bbox = [float(x + xs.min()), float(y + ys.min()), float(xs.max() - xs.min() + 1),
                float(ys.max() - ys.min() + 1)]
        objects.append({"shape": shape, "colour": colour, "texture": texture, "bbox": bbox,
                        "area": float(len(xs))})
    return Scene(np.clip(img, 0, 255).round().astype(np.uint8), background, objects)
