"""GT-free baselines: what a policy that sees only the image and the user's hint can do simply.

These are the rows a learned agent must beat. Neither reads the ground truth or the oracle
(``needs_oracle = False``); both play with ``env=None``.

- ``HintClick`` (``hint_click``): one positive click at the hint, then stop.
- ``HintBox`` (``hint_box``): a box around the region grown from the hint by intensity (an Otsu
  threshold in a window around it, the connected component that holds the hint), then stop.

The hint is ``info["target_hint"]``, which the env gives with ``target_hint=True`` (its default).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from medseg_env import actions as A
from medseg_env.actions import Action

from .base import Info, Observation, Policy


def hint_pixel(obs: Observation, info: Info, who: str) -> tuple[int, int]:
    """The hinted canvas pixel ``(row, col)`` of ``info["target_hint"]``.

    Raises:
        ValueError: the env gives no hint (``target_hint=False``); the message names the option
            and the policy ``who`` that needs it.
    """
    point = info.get("target_hint")
    if point is None:
        raise ValueError(
            f"{who} reads the target hint, but this env gives none (info['target_hint'] is "
            "None): make the env with target_hint=True (MedSeg-v0's default), or run "
            "medseg-bench without --no-target-hint"
        )
    size = int(np.asarray(obs["image"]).shape[0])
    x, y = point
    return min(int(y * size), size - 1), min(int(x * size), size - 1)


def grown_region(gray: np.ndarray, row: int, col: int, window: int) -> np.ndarray:
    """The ``(H, W)`` bool region grown from pixel ``(row, col)`` of a grey image.

    Within the square window of half-side ``window`` around the pixel (cut at the image edge),
    the grey levels (smoothed, sigma 1 pixel) are split by Otsu's threshold; the region is the
    connected component (4-connected, holes filled) on the pixel's side of the threshold that
    holds the pixel. A flat window (one grey level) gives the whole window.
    """
    height, width = gray.shape
    r0, r1 = max(0, row - window), min(height, row + window + 1)
    c0, c1 = max(0, col - window), min(width, col + window + 1)
    patch = ndimage.gaussian_filter(np.asarray(gray, np.float64)[r0:r1, c0:c1], 1.0)
    region = np.zeros((height, width), bool)
    if np.ptp(patch) == 0:
        region[r0:r1, c0:c1] = True
        return region
    threshold = threshold_otsu(patch)
    side = patch > threshold if patch[row - r0, col - c0] > threshold else patch <= threshold
    labels, _ = ndimage.label(side)
    region[r0:r1, c0:c1] = ndimage.binary_fill_holes(labels == labels[row - r0, col - c0])
    return region


class HintClick(Policy):
    """One positive click at the hint (``info["target_hint"]``), then stop."""

    name = "hint_click"
    needs_oracle = False

    def act(self, obs: Observation, info: Info, env: gym.Env | None = None) -> Action:
        row, col = hint_pixel(obs, info, self.name)
        if int(info.get("num_prompts", 0)) > 0 or info.get("invalid_action") is not None:
            return A.stop()
        return A.pixel_click(row, col, int(np.asarray(obs["image"]).shape[0]), True)


class HintBox(Policy):
    """A box around the region grown from the hint (``grown_region``), then stop.

    The settings were chosen on the validation split carved from ``demo`` (the one the learned
    agent uses), among windows of 24 and 40 pixels, margins of 1 and 3 pixels, with and
    without a click at the hint after the box, and fixed-size boxes centred on the hint.

    Args:
        window: half-side of the window the threshold is computed in, canvas pixels (24).
        margin: pixels added on every side of the region's bounding box (1).
        seed: unused (the policy is deterministic); kept for the common signature.
    """

    name = "hint_box"
    needs_oracle = False

    def __init__(self, window: int = 24, margin: int = 1, seed: int | None = None) -> None:
        super().__init__(seed)
        if int(window) < 2 or int(margin) < 0:
            raise ValueError(f"hint_box needs window >= 2 and margin >= 0; got {window}, {margin}")
        self.window, self.margin = int(window), int(margin)

    def act(self, obs: Observation, info: Info, env: gym.Env | None = None) -> Action:
        row, col = hint_pixel(obs, info, self.name)
        if int(info.get("num_prompts", 0)) > 0 or info.get("invalid_action") is not None:
            return A.stop()
        image = np.asarray(obs["image"])
        size = image.shape[0]
        region = grown_region(image.mean(axis=-1), row, col, self.window)
        rows, cols = np.nonzero(region)
        m = self.margin
        return A.pixel_box(
            max(0, int(rows.min()) - m),
            max(0, int(cols.min()) - m),
            min(size - 1, int(rows.max()) + m),
            min(size - 1, int(cols.max()) + m),
            size,
        )
