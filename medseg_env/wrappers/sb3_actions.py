"""Flat action forms for libraries that cannot take ``Dict`` actions (stable-baselines3).

Both wrappers translate to the env's structured action, so rewards, invalid-action handling
and ``info`` are exactly those of the wrapped env.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .. import actions as A


class MultiDiscreteActions(gym.ActionWrapper):
    """``MultiDiscrete([4, G, G, G, G])``: ``kind``, then two grid cells ``(c0, r0)``, ``(c1, r1)``.

    A click lands at the centre of cell ``(c0, r0)``; a box spans cells ``(c0, r0)`` to
    ``(c1, r1)`` inclusive (either corner order). Cells of a ``G×G`` grid over the observation.

    Args:
        env: a ``MedSegEnv`` (or a wrapper of one) with the structured action space.
        grid: ``G``, cells per side.
    """

    def __init__(self, env: gym.Env, grid: int = 32) -> None:
        super().__init__(env)
        if grid < 2:
            raise ValueError(f"grid must be at least 2; got {grid}")
        self.grid = int(grid)
        self.action_space = spaces.MultiDiscrete([len(A.ActionKind)] + [self.grid] * 4)

    def action(self, action: np.ndarray) -> A.Action:
        a = np.asarray(action).reshape(-1)
        if a.shape != (5,):
            raise ValueError(f"MultiDiscrete action must have 5 entries; got shape {a.shape}")
        if not self.action_space.contains(a.astype(np.int64)):
            raise ValueError(f"action {a.tolist()} is outside {self.action_space}")
        kind, c0, r0, c1, r1 = (int(v) for v in a)
        # The grid is a G-pixel square frame: the geometry of pixel actions applies as is.
        if kind == A.ActionKind.BOX:
            lo_c, hi_c = sorted((c0, c1))
            lo_r, hi_r = sorted((r0, r1))
            return A.pixel_box(lo_r, lo_c, hi_r, hi_c, self.grid)
        if kind == A.ActionKind.STOP:
            return A.stop()
        return A.pixel_click(r0, c0, self.grid, positive=kind == A.ActionKind.POSITIVE_CLICK)


class ContinuousActions(gym.ActionWrapper):
    """``Box(-1, 1, (7,))``: ``[kind, x, y, x0, y0, x1, y1]``, symmetric as SB3 advises.

    ``kind`` is read by quarters of [-1, 1] (stop, positive click, negative click, box); the
    coordinates map linearly from [-1, 1] to [0, 1] of the observation.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(7,), dtype=np.float32)

    def action(self, action: np.ndarray) -> A.Action:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (7,):
            raise ValueError(f"continuous action must have 7 entries; got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"continuous action must be finite; got {a.tolist()}")
        a = np.clip(a, -1.0, 1.0)  # policies emit slightly out-of-range values; SB3 clips too
        kind = min(int((a[0] + 1.0) / 2.0 * len(A.ActionKind)), len(A.ActionKind) - 1)
        coords = (a[1:] + 1.0) / 2.0
        if kind == A.ActionKind.STOP:
            return A.stop()
        if kind == A.ActionKind.BOX:
            return A.box(*coords[2:])
        return A.click(coords[0], coords[1], positive=kind == A.ActionKind.POSITIVE_CLICK)
