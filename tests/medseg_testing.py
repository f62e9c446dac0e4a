"""Helpers shared by the test modules (imported by name: tests/ is on sys.path)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


def gt_box_action(env: gym.Env):
    """The ground-truth box of the current episode, through the documented oracle attribute."""
    from medseg_env import actions
    from medseg_env.metrics import bounding_box

    r0, c0, r1, c1 = bounding_box(env.unwrapped.ground_truth)
    return actions.pixel_box(r0, c0, r1, c1, env.unwrapped.obs_size)


def assert_same_step(a, b) -> None:
    """Two step/reset results are identical (observations, rewards, flags, infos)."""
    assert type(a) is type(b) and len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            for k in x:
                assert_same_value(x[k], y[k])
        else:
            assert_same_value(x, y)


def assert_same_value(x, y) -> None:
    if isinstance(x, np.ndarray):
        np.testing.assert_array_equal(x, y)
    elif isinstance(x, dict):
        assert x.keys() == y.keys()
        for k in x:
            assert_same_value(x[k], y[k])
    else:
        assert x == y


def mask_box(mask: np.ndarray) -> np.ndarray:
    """The tight box of a mask as a segmenter prompt: ``(x0, y0, x1, y1)`` pixel edges."""
    from medseg_env.metrics import bounding_box

    r0, c0, r1, c1 = bounding_box(mask)
    return np.array([c0, r0, c1 + 1, r1 + 1], np.float32)
