"""The simulated user of training: a jittered box to start, then corrective clicks.

Clicks follow the RITM rule (``medseg_agents.clickers.next_click``), or, for variety, a random
pixel deep inside the chosen error region; boxes are the target's exact box
(``medseg_env.geometry.box_edges_from_mask``) with a little jitter. A click is the simulated
users' ``Click``, ``(row, col, positive)`` (``medseg_agents.simulation``); ``click_prompts``
turns clicks into the model's ``Prompts``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medseg_agents.clickers import next_click
from medseg_agents.simulation import Click
from medseg_env.geometry import box_edges_from_mask, padded_distance
from medseg_env.segmenters.types import Prompts


def random_error_click(
    pred: np.ndarray, gt: np.ndarray, clicked: np.ndarray, rng: np.random.Generator, p_exact: float
) -> Click:
    """The RITM click (probability ``p_exact``), else a random pixel of the chosen error
    region whose distance to its border is at least half the maximum (varied but still deep)."""
    click = next_click(pred, gt, clicked)
    if click is None:  # perfect mask: re-click the deepest object pixel (a harmless no-op)
        dt = padded_distance(gt)
        r, c = np.unravel_index(int(np.argmax(dt)), dt.shape)
        return int(r), int(c), True
    if rng.uniform() < p_exact:
        return click
    positive = click[2]
    region = (gt & ~pred) if positive else (pred & ~gt)
    dt = padded_distance(region)
    dt[clicked] = 0
    rows, cols = np.nonzero(dt >= 0.5 * dt.max())
    j = int(rng.integers(len(rows)))
    return int(rows[j]), int(cols[j]), positive


def click_prompts(clicks: Sequence[Click], box: np.ndarray | None = None) -> Prompts:
    """``(row, col, positive)`` clicks (and a box) as the model's ``Prompts``: each click at
    the centre of its pixel, ``(col + 0.5, row + 0.5)`` in continuous ``(x, y)`` image pixels,
    labelled 1 (positive) or 0."""
    points = np.array([(col + 0.5, row + 0.5) for row, col, _ in clicks], np.float32)
    labels = np.array([int(positive) for _, _, positive in clicks], np.int64)
    return Prompts(points.reshape(-1, 2), labels, box)


def jitter_box(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The target's box (x0, y0, x1, y1, continuous pixel coords) with up to 5 % jitter."""
    box = box_edges_from_mask(mask)
    w, h = box[2] - box[0], box[3] - box[1]
    noise = rng.uniform(-0.05, 0.05, 4) * np.array([w, h, w, h])
    box = box + np.clip(noise, -5, 5)
    hh, ww = mask.shape
    box[[0, 2]] = np.clip(box[[0, 2]], 0, ww)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, hh)
    return box
