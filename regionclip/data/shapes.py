"""Drawing primitives of generated data: named shape outlines, their masks, a colour palette.

One place for the shapes and colours that generated images are made of: the synthetic detection
datasets of :mod:`regionclip.data.synthetic` (tests, examples) and the scenes of generated worlds
built on the library. A shape is a list of polygons in unit coordinates (x right, y down, about
[-1, 1]): the first is filled, the others are holes. :func:`shape_in_box` stretches the outline
to touch the four sides of a box (vector output, e.g. for COCO polygon masks);
:func:`render_shape` rasterises a rotated outline filling a box into an anti-aliased mask.
"""
import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPES", "COLOURS", "palette", "regular_polygon", "shape_outline", "has_holes",
           "shape_in_box", "render_shape"]

Polygon = List[Tuple[float, float]]

SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond", "hexagon", "arrow",
                           "ring", "star", "heart", "crescent", "bolt", "rectangle", "ellipse",
                           "pentagon")

# Colour name -> RGB.
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (214, 39, 40), "orange": (245, 130, 32), "yellow": (240, 210, 40),
    "green": (44, 160, 44), "blue": (31, 90, 220), "purple": (140, 60, 180),
    "pink": (240, 120, 190), "black": (30, 30, 30), "cyan": (35, 185, 195),
}

_SUPERSAMPLE = 4  # render_shape draws at 4x and averages 4x4 blocks


def regular_polygon(n: int, radius: float = 1.0, offset: float = -math.pi / 2) -> Polygon:
    """``n`` vertices on a circle of ``radius``, the first at angle ``offset`` (default: top)."""
    return [(radius * math.cos(offset + 2 * math.pi * k / n),
             radius * math.sin(offset + 2 * math.pi * k / n)) for k in range(n)]


def _heart(n: int = 40) -> Polygon:
    pts = []
    for k in range(n):
        t = 2 * math.pi * k / n
        pts.append((16 * math.sin(t) ** 3 / 16.0,
                    -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t)
                      - math.cos(4 * t)) / 16.0))
    return pts


def shape_outline(shape: str) -> List[Polygon]:
    """Polygons of a shape in unit coordinates (y down): the first is filled, others are holes.

    Args:
        shape (str): one of :data:`SHAPES`.

    Returns:
        list[list[tuple[float, float]]]: filled outline followed by hole outlines.
    """
    if shape == "circle":
        return [regular_polygon(48)]
    if shape in ("square", "rectangle"):  # a rectangle is a square stretched to its box
        return [[(-1, -1), (1, -1), (1, 1), (-1, 1)]]
    if shape == "triangle":
        return [[(0, -1), (1, 0.8), (-1, 0.8)]]
    if shape == "cross":
        a = 0.32
        return [[(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a),
                 (-1, a), (-1, -a), (-a, -a)]]
    if shape == "diamond":
        return [[(0, -1), (0.62, 0), (0, 1), (-0.62, 0)]]
    if shape == "hexagon":
        return [regular_polygon(6, offset=0.0)]
    if shape == "pentagon":
        return [regular_polygon(5)]
    if shape == "ellipse":  # a coarse circle: 24 vertices
        return [regular_polygon(24)]
    if shape == "arrow":
        return [[(-1, -0.2), (0.15, -0.2), (0.15, -0.62), (1, 0), (0.15, 0.62), (0.15, 0.2),
                 (-1, 0.2)]]
    if shape == "ring":
        return [regular_polygon(48), regular_polygon(48, 0.55)]
    if shape == "star":
        outer, inner = regular_polygon(5), regular_polygon(5, 0.42, -math.pi / 2 + math.pi / 5)
        return [[p for k in range(5) for p in (outer[k], inner[k])]]
    if shape == "heart":
        return [_heart()]
    if shape == "crescent":
        outer = regular_polygon(48)
        inner = [(x * 0.82 + 0.42, y * 0.82 - 0.12) for x, y in regular_polygon(48)]
        return [outer, inner]
    if shape == "bolt":
        return [[(0.2, -1), (-0.6, 0.15), (-0.05, 0.15), (-0.3, 1), (0.65, -0.25), (0.1, -0.25),
                 (0.45, -1)]]
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def has_holes(shape: str) -> bool:
    """Whether the outline of ``shape`` has holes (it is then not one simple polygon)."""
    return len(shape_outline(shape)) > 1


def shape_in_box(shape: str, x0: float, y0: float, w: float, h: float) -> List[Polygon]:
    """The outline of ``shape`` stretched so that its filled polygon touches the four sides of the
    XYWH box (holes follow the same mapping).

    Returns:
        list[list[tuple[float, float]]]: polygons in pixel coordinates, filled one first.
    """
    polys = shape_outline(shape)
    xs, ys = [x for x, _ in polys[0]], [y for _, y in polys[0]]
    min_x, span_x, min_y, span_y = min(xs), max(xs) - min(xs), min(ys), max(ys) - min(ys)
    return [[(x0 + (x - min_x) / span_x * w, y0 + (y - min_y) / span_y * h) for x, y in poly]
            for poly in polys]


def render_shape(shape: str, width: int, height: int, angle: float) -> np.ndarray:
    """Anti-aliased mask of a rotated shape scaled to fill a ``width`` x ``height`` box.

    Args:
        shape (str): one of :data:`SHAPES`.
        width, height (int): box size in pixels.
        angle (float): rotation in degrees (counter-clockwise).

    Returns:
        ndarray: (height, width) float32 coverage in [0, 1].
    """
    polys = shape_outline(shape)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    rotated = [[(x * c + y * s, -x * s + y * c) for x, y in poly] for poly in polys]
    xs = [x for x, _ in rotated[0]]
    ys = [y for _, y in rotated[0]]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    big_w, big_h = width * _SUPERSAMPLE, height * _SUPERSAMPLE
    canvas = Image.new("L", (big_w, big_h), 0)
    draw = ImageDraw.Draw(canvas)
    for k, poly in enumerate(rotated):
        pts = [((x - x0) / (x1 - x0) * (big_w - 1), (y - y0) / (y1 - y0) * (big_h - 1))
               for x, y in poly]
        draw.polygon(pts, fill=255 if k == 0 else 0)
    small = canvas.resize((width, height), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def palette(names: Sequence[str]) -> Dict[str, Tuple[int, int, int]]:
    """``{name: RGB}`` of the given colour names, in their order (a sub-palette)."""
    unknown = [n for n in names if n not in COLOURS]
    if unknown:
        raise ValueError(f"unknown colours {unknown}; expected names among {list(COLOURS)}")
    return {n: COLOURS[n] for n in names}
