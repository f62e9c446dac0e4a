"""Helpers shared by the test modules (imported by name: tests/ is on sys.path)."""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from medseg_env.geometry import box_edges_from_mask, box_from_mask
from medseg_env.segmenters import Prompts


def gt_box_action(env: gym.Env):
    """The ground-truth box of the current episode, through the env's oracle surface."""
    from medseg_env import actions

    oracle = env.get_wrapper_attr("oracle")
    r0, c0, r1, c1 = box_from_mask(oracle.ground_truth)
    return actions.pixel_box(r0, c0, r1, c1, oracle.obs_size)


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


mask_box = box_edges_from_mask  # the tight box of a mask as a segmenter prompt


@dataclass
class StubOracle:
    """An ``medseg_env.Oracle`` over fixed arrays, for policy tests that need no model."""

    ground_truth: np.ndarray | None = None
    prompts: Prompts = field(default_factory=Prompts)
    current_mask: np.ndarray | None = None
    obs_size: int = 64
    min_box_size: float = 2.0
    kinds: frozenset[str] = frozenset({"box", "point"})

    def supports(self, kind: str) -> bool:
        return kind in self.kinds

    def preview(self, action):
        raise AssertionError("this stub has no segmenter to preview with")


class StubEnv:
    """An env stand-in that exposes only its oracle surface, the way policies reach it."""

    def __init__(self, oracle: StubOracle) -> None:
        self.oracle = oracle

    def get_wrapper_attr(self, name: str):
        return getattr(self, name)
