"""The ``target_hint`` option: the target's innermost pixel in the observation and ``info``."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from scipy import ndimage

from medseg_env import actions as A
from medseg_env.data import Dataset
from medseg_env.env import MedSegEnv
from medseg_env.geometry import innermost_pixel


def test_hint_marks_the_innermost_pixel_of_every_target(demo: Dataset) -> None:
    env = MedSegEnv(dataset=demo, segmenter="classical", target_hint=True, obs_size=128)
    assert "hint" in env.observation_space.spaces
    for index in range(0, len(demo), 7):
        obs, info = env.reset(options={"sample_index": index})
        gt = env.ground_truth
        x, y = info["target_hint"]
        row, col = int(y * env.obs_size), int(x * env.obs_size)
        assert gt[row, col], f"sample {index}: hint outside the target"
        # the deepest pixel: no target pixel lies farther from the background (image border
        # counted as background), computed here by scipy on the padded mask
        depth = ndimage.distance_transform_edt(np.pad(gt, 1))[1:-1, 1:-1]
        assert depth[row, col] == depth.max()
        marked = np.argwhere(obs["hint"][..., 0] == 255)
        assert obs["hint"].shape == (128, 128, 1) and set(np.unique(obs["hint"])) <= {0, 255}
        assert np.allclose(marked.mean(axis=0), (row, col), atol=0.5), "disk not centred"
        assert 1 < len(marked) < 30


def test_hint_stays_through_the_episode_and_is_a_copy(demo: Dataset) -> None:
    env = MedSegEnv(dataset=demo, segmenter="classical", target_hint=True)
    obs, info = env.reset(seed=3)
    first = obs["hint"].copy()
    obs["hint"][:] = 0  # the caller's copy; the env's next observation is unaffected
    obs, _, _, _, info2 = env.step(A.click(0.5, 0.5, positive=True))
    assert np.array_equal(obs["hint"], first)
    assert info2["target_hint"] == info["target_hint"]


def test_without_the_option_nothing_changes(demo: Dataset) -> None:
    env = MedSegEnv(dataset=demo, segmenter="classical")
    obs, info = env.reset(seed=0)
    assert "hint" not in obs and "hint" not in env.observation_space.spaces
    assert info["target_hint"] is None


def test_hinted_env_passes_the_checker_and_vectorises(demo: Dataset) -> None:
    check_env(MedSegEnv(dataset=demo, segmenter="classical", target_hint=True))
    vec = gym.make_vec(
        "MedSeg-v0", num_envs=2, dataset=demo, segmenter="classical", target_hint=True
    )
    obs, info = vec.reset(seed=0)
    assert obs["hint"].shape == (2, 256, 256, 1)
    vec.close()


@pytest.mark.parametrize("value", [1, "yes", None])
def test_target_hint_must_be_a_bool(value) -> None:
    with pytest.raises(TypeError, match="target_hint must be a bool"):
        MedSegEnv(segmenter="classical", target_hint=value)


def test_innermost_pixel_is_a_pure_function_of_the_mask() -> None:
    mask = np.zeros((9, 9), bool)
    mask[1:8, 2:5] = True  # 7×3 bar: rows 2..6 of the middle column are equally deep
    assert innermost_pixel(mask) == (2, 3)  # ties: the first in row-major order
    mask[5, 1] = mask[5, 5] = True  # widen row 5: now the one deepest pixel
    assert innermost_pixel(mask) == (5, 3)
    with pytest.raises(ValueError, match="non-empty"):
        innermost_pixel(np.zeros((4, 4), bool))
