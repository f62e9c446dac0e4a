"""Every registered env passes Gymnasium's checker; the SB3 forms pass SB3's (Minigrid-style)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import medseg_env

SB3_IDS = ("MedSeg-MultiDiscrete-v0", "MedSeg-Continuous-v0")


@pytest.mark.parametrize("env_id", medseg_env.ENV_IDS)
def test_gymnasium_check_env(env_id, small_demo):
    env = gym.make(env_id, dataset=small_demo, max_turns=4)
    check_env(env.unwrapped if env_id == "MedSeg-v0" else env, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", medseg_env.ENV_IDS)
def test_render_modes(env_id, small_demo):
    env = gym.make(env_id, dataset=small_demo, render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8


@pytest.mark.parametrize("env_id", SB3_IDS)
def test_sb3_check_env(env_id, small_demo):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(env_id, dataset=small_demo, max_turns=4)
    sb3_check_env(env, warn=True)


def test_sb3_sees_image_and_mask_as_images(small_demo):
    from stable_baselines3.common.preprocessing import is_image_space

    env = gym.make("MedSeg-MultiDiscrete-v0", dataset=small_demo)
    space = env.observation_space
    assert is_image_space(space["image"]) and is_image_space(space["mask"])
    assert is_image_space(space["prompts"])


def test_multidiscrete_actions_map_to_structured_actions(small_demo):
    env = gym.make("MedSeg-MultiDiscrete-v0", dataset=small_demo, grid=16)
    wrapper = env
    while not hasattr(wrapper, "grid"):
        wrapper = wrapper.env
    a = wrapper.action(np.array([3, 10, 2, 4, 6]))
    np.testing.assert_allclose(a["box"], [4 / 16, 2 / 16, 11 / 16, 7 / 16])
    a = wrapper.action(np.array([2, 1, 3, 0, 0]))
    assert a["kind"] == 2
    np.testing.assert_allclose(a["point"], [1.5 / 16, 3.5 / 16])
    with pytest.raises(ValueError, match="outside"):
        wrapper.action(np.array([4, 0, 0, 0, 0]))


def test_continuous_actions_map_kind_by_quarters(small_demo):
    env = gym.make("MedSeg-Continuous-v0", dataset=small_demo)
    wrapper = env
    while not isinstance(wrapper, medseg_env.wrappers.ContinuousActions):
        wrapper = wrapper.env
    kinds = [
        wrapper.action(np.array([k, 0, 0, -1, -1, 1, 1]))["kind"]
        for k in (-1.0, -0.4, 0.1, 0.6, 1.0)
    ]
    assert kinds == [0, 1, 2, 3, 3]
    box = wrapper.action(np.array([1, 0, 0, -1, -0.5, 0.5, 1]))["box"]
    np.testing.assert_allclose(box, [0, 0.25, 0.75, 1])
    with pytest.raises(ValueError, match="finite"):
        wrapper.action(np.array([np.nan, 0, 0, 0, 0, 0, 0]))


def test_ppo_trains_a_few_steps(small_demo):
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import Logger

    env = gym.make("MedSeg-MultiDiscrete-v0", dataset=small_demo, obs_size=64, max_turns=3)
    model = PPO("MultiInputPolicy", env, n_steps=8, batch_size=8, n_epochs=1, seed=0, device="cpu")
    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3 would make a temp folder
    model.learn(total_timesteps=8)
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    assert env.action_space.contains(action)


def test_sync_vector_env(small_demo):
    envs = gym.make_vec("MedSeg-v0", num_envs=2, vectorization_mode="sync", dataset=small_demo)
    obs, infos = envs.reset(seed=[0, 1])
    assert obs["image"].shape == (2, 256, 256, 3) and obs["mask"].shape == (2, 256, 256, 1)
    envs.action_space.seed(0)
    obs, rewards, terminated, truncated, infos = envs.step(envs.action_space.sample())
    assert rewards.shape == (2,) and "dice" in infos
    envs.close()
