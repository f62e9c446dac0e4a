"""``medseg_env.geometry``: the one home of frame conversions and the box of a mask."""

from __future__ import annotations

import numpy as np
import pytest

from medseg_env import actions
from medseg_env.geometry import (
    LongestSide,
    box_edges_from_mask,
    box_from_mask,
    pixel_box_edges,
    pixel_box_normalized,
    pixel_center,
    pixel_of,
    to_normalized,
    to_pixels,
)


def test_box_from_mask():
    m = np.zeros((6, 8), dtype=np.uint8)
    assert box_from_mask(m) is None
    m[2, 3] = 1
    assert box_from_mask(m) == (2, 3, 2, 3)
    m[4, 1] = 1
    m[3, 7] = 1
    box = box_from_mask(m)
    assert box == (2, 1, 4, 7)
    assert all(type(v) is int for v in box)
    assert box_from_mask(np.ones((3, 5), dtype=bool)) == (0, 0, 2, 4)
    with pytest.raises(ValueError, match="2D"):
        box_from_mask(np.zeros(5, bool))


def test_box_edges_enclose_exactly_the_mask_box():
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    edges = box_edges_from_mask(m)
    assert edges.dtype == np.float32 and edges.tolist() == [3, 2, 9, 5]
    x0, y0, x1, y1 = edges.astype(int)
    assert m[y0:y1, x0:x1].all() and m.sum() == (x1 - x0) * (y1 - y0)
    assert pixel_box_edges((2, 3, 4, 8)) == (3, 2, 9, 5)
    with pytest.raises(ValueError, match="non-empty"):
        box_edges_from_mask(np.zeros((4, 4), bool))


@pytest.mark.parametrize(
    "shape, side, resized",
    [
        ((512, 512), 256, (256, 256)),
        ((120, 45), 256, (256, 96)),
        ((45, 120), 256, (96, 256)),
        ((100, 3), 16, (16, 1)),  # never below one pixel (0.48 rounds to 0)
        ((256, 256), 256, (256, 256)),
        ((200, 100), 256, (256, 128)),
    ],
)
def test_longest_side_shapes(shape, side, resized):
    frame = LongestSide.of(shape, side)
    assert frame.resized_shape == resized
    assert frame.scale == side / max(shape)
    assert frame.is_identity == (resized == shape)


def test_longest_side_rounds_half_to_even_like_python():
    # 3 x 5 -> side 7: 3 * 1.4 = 4.2 -> 4; the rounding is Python's round() (banker's)
    assert LongestSide(3, 5, 7).resized_shape == (4, 7)
    assert LongestSide(5, 2, 4).resized_shape == (4, 2)  # 2 * 0.8 = 1.6 -> 2
    assert LongestSide(8, 5, 4).resized_shape == (4, 2)  # 5 * 0.5 = 2.5 -> 2 (to even)


def test_longest_side_round_trips_coordinates_and_keeps_physical_size():
    frame = LongestSide(120, 45, 256)
    pts = np.array([[0.0, 0.0], [45.0, 120.0], [10.5, 33.25]])
    np.testing.assert_allclose(frame.to_source(frame.to_target(pts)), pts)
    np.testing.assert_allclose(frame.to_target(pts)[1], [96.0, 256.0])
    row_mm, col_mm = frame.resized_spacing((0.7, 1.3))
    new_h, new_w = frame.resized_shape
    assert row_mm * new_h == pytest.approx(0.7 * 120) and col_mm * new_w == pytest.approx(1.3 * 45)
    with pytest.raises(ValueError, match="positive"):
        LongestSide(0, 5, 10)


def test_normalised_and_pixel_coordinates():
    size = 64
    np.testing.assert_allclose(to_pixels(np.array([0.25, 1.0]), size), [16.0, 64.0])
    np.testing.assert_allclose(to_normalized(np.array([16.0, 64.0]), size), [0.25, 1.0])
    assert pixel_center(3, 5, size) == (5.5 / 64, 3.5 / 64)
    assert pixel_box_normalized((1, 2, 3, 4), size) == (2 / 64, 1 / 64, 5 / 64, 4 / 64)
    rows, cols = pixel_of(np.array([[5.5, 3.5], [64.0, 0.0], [0.0, 63.999]]), (64, 64))
    assert rows.tolist() == [3, 0, 63] and cols.tolist() == [5, 63, 0]


def test_action_builders_use_the_geometry():
    size = 32
    click = actions.pixel_click(7, 9, size)
    rows, cols = pixel_of(to_pixels(click["point"], size)[None], (size, size))
    assert (rows[0], cols[0]) == (7, 9)  # the click lands in the pixel it names
    box = actions.pixel_box(2, 3, 10, 12, size)
    x0, y0, x1, y1 = to_pixels(box["box"].astype(np.float64), size)
    assert (x0, y0, x1, y1) == pytest.approx((3, 2, 13, 11))
