"""Flat action forms for libraries that cannot take ``Dict`` actions (stable-baselines3).

Both wrappers translate to the env's structured action, so rewards, invalid-action handling
and ``info`` are exactly those of the wrapped env.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .. import actions as A
from ..env import MedSegEnv


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
        """The structured action of a point of the space; a ``ValueError`` for anything else.

        Integers only: whole-number floats are read as the integers they are, while fractions,
        bools, strings, wrong shapes and values outside the grid raise, naming the form, the
        value and what was expected. Nothing is floored or clipped.
        """
        expected = (
            f"5 integers [kind, c0, r0, c1, r1] inside {self.action_space} "
            f"(kind 0..3, cells 0..{self.grid - 1}), e.g. an integer array of shape (5,)"
        )
        a = A.real_array(action, "MultiDiscrete action", (5,), expected)
        if (a != np.floor(a)).any():
            raise ValueError(
                f"MultiDiscrete action must be {expected}; got {A.describe(action)}: "
                "not whole numbers"
            )
        if (a < 0).any() or (a >= [len(A.ActionKind)] + [self.grid] * 4).any():
            raise ValueError(
                f"MultiDiscrete action must be {expected}; got {A.describe(action)}: "
                f"outside {self.action_space}"
            )
        kind, c0, r0, c1, r1 = (int(v) for v in a)
        return grid_action(kind, c0, r0, c1, r1, self.grid)


def grid_action(kind: int, c0: int, r0: int, c1: int, r1: int, grid: int) -> A.Action:
    """The structured action of a checked ``MultiDiscreteActions`` point (see its docstring).

    For policies trained on that space that act on the env itself (``medseg_agents.ppo.PPOPolicy``).
    """
    # The grid is a G-pixel square frame: the geometry of pixel actions applies as is.
    if kind == A.ActionKind.BOX:
        lo_c, hi_c = sorted((c0, c1))
        lo_r, hi_r = sorted((r0, r1))
        return A.pixel_box(lo_r, lo_c, hi_r, hi_c, grid)
    if kind == A.ActionKind.STOP:
        return A.stop()
    return A.pixel_click(r0, c0, grid, positive=kind == A.ActionKind.POSITIVE_CLICK)


_CONTINUOUS = (
    "7 finite real numbers [kind, x, y, x0, y0, x1, y1] in [-1, 1] (beyond it clipped), "
    "e.g. a float array of shape (7,)"
)


class ContinuousActions(gym.ActionWrapper):
    """``Box(-1, 1, (7,))``: ``[kind, x, y, x0, y0, x1, y1]``, symmetric as SB3 advises.

    ``kind`` is read by quarters of [-1, 1] (stop, positive click, negative click, box); the
    coordinates map linearly from [-1, 1] to [0, 1] of the observation.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(7,), dtype=np.float32)

    def action(self, action: np.ndarray) -> A.Action:
        """The structured action of ``action``; a ``ValueError`` for anything but 7 real numbers.

        Values outside [-1, 1] are clipped, as SB3 clips a policy's output; strings, bools,
        complex numbers, dicts, wrong shapes, NaN and infinity raise, naming the form, the value
        and what was expected.
        """
        a = A.real_array(action, "continuous action", (7,), _CONTINUOUS)
        a = np.clip(a, -1.0, 1.0)  # policies emit slightly out-of-range values; SB3 clips too
        kind = min(int((a[0] + 1.0) / 2.0 * len(A.ActionKind)), len(A.ActionKind) - 1)
        coords = (a[1:] + 1.0) / 2.0
        if kind == A.ActionKind.STOP:
            return A.stop()
        if kind == A.ActionKind.BOX:
            return A.box(*coords[2:])
        return A.click(coords[0], coords[1], positive=kind == A.ActionKind.POSITIVE_CLICK)


def make_multidiscrete(grid: int = 32, render_mode: str | None = None, **config) -> gym.Env:
    """Entry point of ``MedSeg-MultiDiscrete-v0``: ``MedSegEnv`` + ``MultiDiscreteActions``."""
    return MultiDiscreteActions(MedSegEnv(render_mode=render_mode, **config), grid=grid)


def make_continuous(render_mode: str | None = None, **config) -> gym.Env:
    """Entry point of ``MedSeg-Continuous-v0``: ``MedSegEnv`` + ``ContinuousActions``."""
    return ContinuousActions(MedSegEnv(render_mode=render_mode, **config))
