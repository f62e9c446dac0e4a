"""``MedSegTextEnv`` over a wrapper chain: rejections, closing an open episode, its oracle."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from medseg_agents.simulation import oracle_box_action
from medseg_env import MedSegEnv, Oracle
from medseg_env import actions as A
from medseg_env.data import Dataset
from medseg_env.wrappers.text_env import MedSegTextEnv

PENALTY = 7.0


class SeesRejections(gym.Wrapper):
    """A wrapper between the text env and the base env that records and reprices rejections."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.reasons: list[tuple[str, bool]] = []

    def reject(self, reason: str, *, end: bool = False, **kwargs: Any) -> tuple[Any, ...]:
        self.reasons.append((reason, end))
        obs, reward, terminated, truncated, info = self.env.get_wrapper_attr("reject")(
            reason, end=end, **kwargs
        )
        return obs, reward - PENALTY, terminated, truncated, info


class BoxOnly(gym.Wrapper):
    """A wrapper whose oracle says the segmenter takes no clicks."""

    @property
    def oracle(self) -> Oracle:
        inner = self.env.get_wrapper_attr("oracle")

        class BoxOnlyOracle:
            ground_truth = property(lambda _: inner.ground_truth)
            prompts = property(lambda _: inner.prompts)
            obs_size = property(lambda _: inner.obs_size)
            current_mask = property(lambda _: inner.current_mask)
            min_box_size = property(lambda _: inner.min_box_size)

            def supports(self, kind):
                return kind == "box"

            def preview(self, action):
                return inner.preview(action)

        return BoxOnlyOracle()


def text_env(small_demo: Dataset, protocol: str, *wrappers: type[gym.Wrapper]) -> MedSegTextEnv:
    env: gym.Env = MedSegEnv(dataset=small_demo, max_turns=5)
    for wrapper in wrappers:
        env = wrapper(env)
    return MedSegTextEnv(env, protocol)


def test_a_wrapper_in_between_sees_and_prices_rejections(small_demo: Dataset) -> None:
    env = text_env(small_demo, "medsam_agent", SeesRejections)
    plain = text_env(small_demo, "medsam_agent")
    for e in (env, plain):
        e.reset(seed=0, options={"sample_index": 0})
    _, reward, terminated, _, info = env.step("no call here")
    _, plain_reward, *_ = plain.step("no call here")
    middle = env.env
    assert isinstance(middle, SeesRejections)
    assert middle.reasons == [("no <tool_call> found", False)]
    assert reward == pytest.approx(plain_reward - PENALTY) and not terminated
    assert info["format_error"] == "no <tool_call> found"
    _, _, terminated, _, _ = env.step("still none")  # the retry budget (1) is spent: it ends
    assert terminated and middle.reasons[-1] == ("no <tool_call> found", True)


def test_close_episode_stops_without_a_format_charge(small_demo: Dataset) -> None:
    env = text_env(small_demo, "medsam_agent_rl")
    with pytest.raises(RuntimeError, match="no open episode"):
        env.close_episode()
    env.reset(seed=0, options={"sample_index": 0})
    action = oracle_box_action(env.oracle.ground_truth)
    env.step(env.render_action(action))
    # the same turn, then the env's own stop under the wrapper: what closing must equal
    twin = MedSegEnv(dataset=small_demo, max_turns=5, prompting="medsam_agent_rl")
    twin.reset(seed=0, options={"sample_index": 0})
    twin.step(env.to_action(env.parse(env.render_action(action)).call))
    _, twin_reward, twin_term, _, twin_info = twin.step(A.stop())

    messages, reward, terminated, truncated, info = env.close_episode()
    assert terminated and not truncated and terminated == twin_term
    assert reward == twin_reward and info["reward_terms"] == twin_info["reward_terms"]
    assert info["format_error"] is None and info["invalid_action"] is None
    assert info["closed"] and not info["executed"] and info["reply"] is None
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages == env.messages() == info["messages"]
    assert env.get_wrapper_attr("episode_over")
    with pytest.raises(RuntimeError, match="no open episode"):
        env.close_episode()
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step("too late")


def test_the_text_envs_oracle_previews_what_the_reply_gives_back(small_demo: Dataset) -> None:
    env = text_env(small_demo, "medsam_agent")
    env.reset(seed=0, options={"sample_index": 1})
    oracle = env.get_wrapper_attr("oracle")
    assert isinstance(oracle, Oracle) and oracle is not env.unwrapped.oracle
    base = env.unwrapped.oracle
    np.testing.assert_array_equal(oracle.ground_truth, base.ground_truth)
    assert (oracle.obs_size, oracle.min_box_size) == (base.obs_size, base.min_box_size)
    # an action off the reply grid: the preview is of the action the reply text gives back
    action = A.box(0.1013, 0.2017, 0.7021, 0.6987)
    replayed = env.to_action(env.parse(env.render_action(action)).call)
    assert not np.allclose(replayed["box"], action["box"])
    mask, reason = oracle.preview(action)
    expected, _ = base.preview(replayed)
    assert reason is None and np.array_equal(mask, expected)
    assert oracle.prompts.box is None  # a preview takes no turn
    mask, reason = oracle.preview(A.stop())
    assert reason is None and not mask.any()


def test_the_text_envs_oracle_starts_from_the_chains(small_demo: Dataset) -> None:
    env = text_env(small_demo, "medsam_agent", BoxOnly)
    env.reset(seed=0)
    assert env.unwrapped.oracle.supports("point")
    assert env.oracle.supports("box") and not env.oracle.supports("point")
