"""The drawing primitives of generated data (regionclip.data.shapes) and the synthetic datasets
that draw with them."""
import numpy as np
import pytest

from regionclip.data import shapes, synthetic


def test_ring_and_crescent_have_holes_and_shapes_differ():
    masks = {s: shapes.render_shape(s, 48, 48, 0.0) >= 0.5 for s in shapes.SHAPES}
    assert not masks["ring"][24, 24] and masks["circle"][24, 24]
    assert masks["crescent"].sum() < 0.6 * masks["circle"].sum()
    assert shapes.has_holes("ring") and not shapes.has_holes("star")
    # the same outline (stretched to any box), and a coarser polygon of the same circle
    aliases = {frozenset(("square", "rectangle")), frozenset(("circle", "ellipse"))}
    for a in shapes.SHAPES:
        for b in shapes.SHAPES:
            if a < b and frozenset((a, b)) not in aliases:
                assert (masks[a] != masks[b]).mean() > 0.03, (a, b)
    np.testing.assert_array_equal(masks["square"], masks["rectangle"])
    assert 0 < (masks["circle"] != masks["ellipse"]).mean() < 0.03


def test_rendered_mask_fills_its_box_and_rotation_changes_it():
    mask = shapes.render_shape("triangle", 40, 30, 0.0)
    assert mask.shape == (30,
                          40) and mask.dtype == np.float32 and 0 <= mask.min() <= mask.max() <= 1
    ys, xs = np.nonzero(mask >= 0.5)
    assert xs.min() <= 1 and xs.max() >= 38 and ys.min() <= 1 and ys.max() >= 28
    assert not np.array_equal(mask, shapes.render_shape("triangle", 40, 30, 25.0))


@pytest.mark.parametrize("shape", synthetic.SHAPES + ("star", "cross", "heart"))
def test_synthetic_polygons_are_the_shared_outlines_in_their_box(shape):
    box = (3.5, 7.0, 40.0, 22.0)
    poly = synthetic.shape_polygon(shape, *box)
    (outline,) = shapes.shape_in_box(shape, *box)
    np.testing.assert_allclose(poly, [v for p in outline for v in p], atol=0.005)
    xs, ys = poly[0::2], poly[1::2]
    assert min(xs) == pytest.approx(3.5) and max(xs) == pytest.approx(43.5)
    assert min(ys) == pytest.approx(7.0) and max(ys) == pytest.approx(29.0)


def test_synthetic_rejects_shapes_with_holes_and_unknown_colours():
    with pytest.raises(ValueError, match="ring.*without holes"):
        synthetic.shape_polygon("ring", 0, 0, 10, 10)
    with pytest.raises(ValueError, match="unknown shape 'ring'"):
        synthetic._complete_categories([{"name": "a ring", "shape": "ring"}])
    with pytest.raises(ValueError, match="unknown colour 'teal'"):
        synthetic._complete_categories([{"name": "teal box", "color": "teal"}])
    with pytest.raises(ValueError, match=r"unknown colours \['teal'\]"):
        shapes.palette(["red", "teal"])
    assert synthetic.COLORS["red"] == shapes.COLOURS["red"]  # one palette
    # any colour of the palette can be asked for, not only the default categories' ones
    (cat,) = synthetic._complete_categories([{"name": "pink star", "shape": "star",
                                              "color": "pink"}])
    assert cat["color"] == list(shapes.COLOURS["pink"])
