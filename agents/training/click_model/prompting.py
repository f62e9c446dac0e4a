"""The simulated user of training: a jittered box to start, then corrective clicks.

Clicks follow the RITM rule (``medseg_agents.clickers.next_click``), or, for variety, a random
pixel deep inside the chosen error region; boxes are the target's exact box
(``medseg_env.geometry.box_edges_from_mask``) with a little jitter.
"""

from __future__ import annotations

import numpy as np

from medseg_agents.clickers import next_click
from medseg_env.geometry import box_edges_from_mask, padded_distance

Click = tuple[float, float, int]  # (x, y, label): a pixel centre and 1 / 0 (positive / negative)


def random_error_click(
    pred: np.ndarray, gt: np.ndarray, clicked: np.ndarray, rng: np.random.Generator, p_exact: float
) -> tuple[int, int, bool]:
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


def pixel_click(row: int, col: int, positive: bool) -> Click:
    """A click at the centre of pixel ``(row, col)``, in continuous ``(x, y)`` image pixels
    (``Prompts.points``), with its label."""
    return col + 0.5, row + 0.5, int(positive)


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
