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
from medseg_env.geometry import innermost_pixel, user_point


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


def test_the_hint_is_on_by_default(demo: Dataset) -> None:
    env = MedSegEnv(dataset=demo, segmenter="classical")
    obs, info = env.reset(seed=0)
    assert env.target_hint and "hint" in obs and "hint" in env.observation_space.spaces
    assert info["target_hint"] is not None


def test_without_the_option_the_observation_has_no_hint(demo: Dataset) -> None:
    env = MedSegEnv(dataset=demo, segmenter="classical", target_hint=False)
    obs, info = env.reset(seed=0)
    assert "hint" not in obs and "hint" not in env.observation_space.spaces
    assert info["target_hint"] is None
    assert set(obs) == {"image", "mask", "prompts", "turn"}


def test_a_noisy_user_point_is_inside_the_target_seeded_and_off_centre(demo: Dataset) -> None:
    env = MedSegEnv(dataset=demo, segmenter="classical", hint_noise=0.5, obs_size=128)
    exact = MedSegEnv(dataset=demo, segmenter="classical", obs_size=128)
    points, moved = [], 0
    for seed in range(12):
        obs, info = env.reset(seed=seed, options={"sample_index": 5})
        _, exact_info = exact.reset(options={"sample_index": 5})
        x, y = info["target_hint"]
        row, col = int(y * 128), int(x * 128)
        assert env.ground_truth[row, col], f"seed {seed}: the user pointed outside the target"
        marked = np.argwhere(obs["hint"][..., 0] == 255)
        assert np.allclose(marked.mean(axis=0), (row, col), atol=0.5)
        points.append(info["target_hint"])
        moved += info["target_hint"] != exact_info["target_hint"]
        _, again = env.reset(seed=seed, options={"sample_index": 5})
        assert again["target_hint"] == info["target_hint"]  # the same seed, the same point
        obs2, _, _, _, step_info = env.step(A.click(0.5, 0.5, positive=True))
        assert step_info["target_hint"] == info["target_hint"]  # fixed through the episode
    assert moved >= 6 and len(set(points)) >= 4  # off the innermost pixel, and not one point


def test_user_point_model(demo: Dataset) -> None:
    mask = np.zeros((64, 64), bool)
    mask[10:50, 20:40] = True
    rng = np.random.default_rng(0)
    assert user_point(mask, 0.0, rng) == innermost_pixel(mask)
    assert rng.bit_generator.state == np.random.default_rng(0).bit_generator.state  # no draw
    draws = np.array([user_point(mask, 0.4, rng) for _ in range(400)])
    assert mask[draws[:, 0], draws[:, 1]].all()
    radius = np.sqrt(mask.sum() / np.pi)  # the spread is 0.4 of the equivalent radius
    spread = draws.std(axis=0)
    assert 0.25 * radius < spread[1] < 0.45 * radius  # columns: the mask is 20 wide, little cut
    one = np.zeros((8, 8), bool)
    one[3, 4] = True  # every draw but a zero offset misses: the innermost pixel after the tries
    assert user_point(one, 5.0, np.random.default_rng(1)) == (3, 4)
    with pytest.raises(ValueError, match="noise >= 0"):
        user_point(mask, -0.1, rng)


@pytest.mark.parametrize("value", [-0.5, float("nan"), float("inf")])
def test_hint_noise_must_be_a_finite_number_at_least_zero(value) -> None:
    with pytest.raises(ValueError, match="hint_noise"):
        MedSegEnv(segmenter="classical", hint_noise=value)


def test_hint_noise_needs_the_hint() -> None:
    with pytest.raises(ValueError, match="needs target_hint=True"):
        MedSegEnv(segmenter="classical", target_hint=False, hint_noise=0.3)
    with pytest.raises(TypeError, match="hint_noise"):
        MedSegEnv(segmenter="classical", hint_noise="0.3")


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
