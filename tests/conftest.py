"""Shared fixtures: the bundled demo data and the real LiteMedSAM model, loaded once."""

from __future__ import annotations

import gymnasium as gym
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
