"""Helpers the simulated users share: clicks and box actions, on ``(H, W)`` masks (the box
jitter itself is ``medseg_env.geometry.jittered_box``).

They sit below ``clickers.py`` (RITM / IMIS click simulators) and ``oracle.py`` (oracle boxes,
the hybrid-prompting expert), which both use them. A click is ``(row, col, positive)`` on the
``S×S`` observation canvas, sent to the env at the centre of that pixel; a box is
``(r0, c0, r1, c1)`` inclusive pixel indices (``medseg_env.geometry.PixelBox``), sent so that it
covers exactly those pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medseg_env import actions as A
from medseg_env.actions import Action
from medseg_env.geometry import jittered_box, pixel_of
from medseg_env.oracle import Oracle

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


def frame_mask(obs: Mapping[str, Any], oracle: Oracle) -> np.ndarray:
    """The current mask in the oracle's frame, the one its ground truth is in.

    The observation's mask when it is that frame (the canvas); the oracle's own
    (``Oracle.current_mask``) when the env works at the sample's resolution
    (``native_resolution``), where the observation shows it resampled onto the canvas.
    """
    mask = np.asarray(obs["mask"])[..., 0] > 0
    if mask.shape == np.shape(oracle.ground_truth):
        return mask
    return np.asarray(oracle.current_mask, bool)


def click_action(click: Click | None, size: int) -> Action:
    """The env action for a ``(row, col, positive)`` click of an ``size``×``size`` canvas;
    None (nothing left to fix) is a stop."""
    if click is None:
        return A.stop()
    row, col, positive = click
    return A.pixel_click(row, col, size, positive)


def oracle_box_action(
    gt: np.ndarray,
    rng: np.random.Generator | None = None,
    jitter_px: float = 0,
    jitter_frac: float = 0.0,
    min_side: float = 1,
) -> Action:
    """The box action of ``medseg_env.geometry.jittered_box`` on a square ``(S, S)`` ground
    truth."""
    r0, c0, r1, c1 = jittered_box(gt, rng, jitter_px, jitter_frac, min_side)
    return A.pixel_box(r0, c0, r1, c1, gt.shape[0])
