"""Helpers the simulated users share: clicks, boxes and their jitter, on ``(H, W)`` masks.

They sit below ``clickers.py`` (RITM / IMIS click simulators) and ``oracle.py`` (oracle boxes,
the hybrid-prompting expert), which both use them. A click is ``(row, col, positive)`` on the
``S×S`` observation canvas, sent to the env at the centre of that pixel; a box is
``(r0, c0, r1, c1)`` inclusive pixel indices (``medseg_env.geometry.PixelBox``), sent so that it
covers exactly those pixels.
"""

from __future__ import annotations

import math

import numpy as np

from medseg_env import actions as A
from medseg_env.actions import Action
from medseg_env.geometry import PixelBox, box_from_mask, pixel_of

Click = tuple[int, int, bool]
"""``(row, col, positive)``: a pixel of the observation and the click's sign."""


def clicked_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The ``(H, W)`` bool mask of the pixels holding a click.

    ``points`` is ``(N, 2)`` continuous ``(x, y)`` pixel coordinates (``Prompts.points``);
    pixel ``(row, col)`` covers ``[col, col+1) × [row, row+1)``, so it is
    ``(floor(y), floor(x))``, clipped into the image (a click at x = W lands in column W-1).
    """
    mask = np.zeros(shape, dtype=bool)
    rows, cols = pixel_of(points, shape)
    mask[rows, cols] = True
    return mask


def click_action(click: Click | None, size: int) -> Action:
    """The env action for a ``(row, col, positive)`` click of an ``size``×``size`` canvas;
    None (nothing left to fix) is a stop."""
    if click is None:
        return A.stop()
    row, col, positive = click
    return A.pixel_click(row, col, size, positive)


def _grow(lo: int, hi: int, need: int, limit: int) -> tuple[int, int]:
    """Widen the inclusive span ``lo..hi`` to ``need`` pixels, centred, kept in ``0..limit-1``."""
    deficit = need - (hi - lo + 1)
    if deficit <= 0:
        return lo, hi
    lo, hi = lo - deficit // 2, hi + deficit - deficit // 2
    shift = max(0, -lo) - max(0, hi - (limit - 1))  # slide back inside the image
    return max(0, lo + shift), min(limit - 1, hi + shift)


def jittered_box(
    gt: np.ndarray,
    rng: np.random.Generator | None = None,
    jitter_px: float = 0,
    jitter_frac: float = 0.0,
    min_side: float = 1,
) -> PixelBox:
    """The ground-truth bounding box with each side shifted at random.

    Args:
        gt: ``(H, W)`` non-empty ground-truth mask.
        rng: random generator; may be None only when there is no jitter. Always 4 draws
            (one per side) when given, so the stream does not depend on the mask.
        jitter_px: maximum shift of each side, in pixels.
        jitter_frac: maximum shift of each side, as a fraction of the box height (top and
            bottom sides) or width (left and right). Combined with ``jitter_px`` by addition.
        min_side: the box is widened (centred, inside the image) to at least this many pixels
            per side, e.g. the env's ``min_box_size`` so that a tiny target still gets a valid
            box.

    Returns:
        ``(r0, c0, r1, c1)`` inclusive pixel indices: the tight box (``geometry.box_from_mask``)
        when there is no jitter; otherwise each side moves by an integer drawn uniformly from
        ``[-m, m]`` with ``m = floor(jitter_px + jitter_frac * side length)``, then the box is
        clipped to the image and its corners sorted (a large jitter can cross them).
    """
    gt = np.asarray(gt, dtype=bool)
    bbox = box_from_mask(gt)
    if bbox is None:
        raise ValueError("jittered_box needs a non-empty ground truth")
    if jitter_px < 0 or jitter_frac < 0:
        raise ValueError(f"jitter must be >= 0; got jitter_px={jitter_px}, frac={jitter_frac}")
    r0, c0, r1, c1 = bbox
    height, width = gt.shape
    if rng is not None:
        m_r = math.floor(jitter_px + jitter_frac * (r1 - r0 + 1))
        m_c = math.floor(jitter_px + jitter_frac * (c1 - c0 + 1))
        m = np.array([m_r, m_c, m_r, m_c])
        shift = rng.integers(-m, m, endpoint=True)
        r0, c0, r1, c1 = (int(v) for v in np.array([r0, c0, r1, c1]) + shift)
        r0, r1 = sorted((min(max(r0, 0), height - 1), min(max(r1, 0), height - 1)))
        c0, c1 = sorted((min(max(c0, 0), width - 1), min(max(c1, 0), width - 1)))
    elif jitter_px or jitter_frac:
        raise ValueError("jittered_box needs an rng to jitter")
    need = math.ceil(min_side)
    r0, r1 = _grow(r0, r1, need, height)
    c0, c1 = _grow(c0, c1, need, width)
    return r0, c0, r1, c1


def oracle_box_action(
    gt: np.ndarray,
    rng: np.random.Generator | None = None,
    jitter_px: float = 0,
    jitter_frac: float = 0.0,
    min_side: float = 1,
) -> Action:
    """The box action of ``jittered_box`` on a square ``(S, S)`` ground truth."""
    r0, c0, r1, c1 = jittered_box(gt, rng, jitter_px, jitter_frac, min_side)
    return A.pixel_box(r0, c0, r1, c1, gt.shape[0])
