"""Shared fixtures: the bundled demo data and the real LiteMedSAM model, loaded once."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import medseg_env  # noqa: F401  (registers the envs)
from medseg_env.data import Dataset, demo_dataset


@pytest.fixture(scope="session")
def demo() -> Dataset:
    return demo_dataset()


@pytest.fixture(scope="session")
def small_demo(demo: Dataset) -> Dataset:
    """A few demo samples from three images (CT, MR, microscopy), for quick env tests."""
    picked, images = [], set()
    for modality in ("CT", "MR", "microscopy"):
        sample = next(s for s in demo if s.modality == modality)
        picked.append(sample)
        images.add(sample.source_id)
    return Dataset(picked, name="small-demo")


@pytest.fixture
def env(small_demo: Dataset):
    env = gym.make("MedSeg-v0", dataset=small_demo, max_turns=5)
    yield env
    env.close()


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
