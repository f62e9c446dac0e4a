"""The typed oracle surface: one source for what oracle policies read, through any wrapper."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from medseg_agents import default_policies, make_policy
from medseg_env import Oracle, actions


class NoClicks(gym.Wrapper):
    """A wrapper that changes the prompt kinds an agent may use: boxes only.

    It refuses clicks itself and says so through its own ``oracle``, which every shipped policy
    must follow (they reach the oracle with ``get_wrapper_attr``, not ``env.unwrapped``).
    """

    @property
    def oracle(self) -> Oracle:
        inner = self.env.get_wrapper_attr("oracle")

        class BoxOnlyOracle:
            ground_truth = property(lambda _: inner.ground_truth)
            prompts = property(lambda _: inner.prompts)
            obs_size = property(lambda _: inner.obs_size)
            min_box_size = property(lambda _: inner.min_box_size)

            def supports(self, kind):
                return kind == "box" and inner.supports(kind)

            def preview(self, action):
                return inner.preview(action)

        return BoxOnlyOracle()

    def step(self, action):
        if int(action["kind"]) in (
            actions.ActionKind.POSITIVE_CLICK,
            actions.ActionKind.NEGATIVE_CLICK,
        ):
            raise AssertionError("a policy sent a click through a box-only wrapper")
        return self.env.step(action)


def test_the_env_oracle_is_the_typed_surface(env):
    env.reset(seed=0)
    oracle = env.get_wrapper_attr("oracle")
    assert isinstance(oracle, Oracle)
    base = env.unwrapped
    assert oracle.obs_size == base.obs_size and oracle.min_box_size == base.min_box_size
    assert oracle.supports("box") and oracle.supports("point")  # the click-tuned default
    np.testing.assert_array_equal(oracle.ground_truth, base.ground_truth)
    with pytest.raises(ValueError, match="read-only"):
        oracle.ground_truth[:] = True  # no caller can change a later episode's ground truth
    mask, reason = oracle.preview(actions.box(0.1, 0.1, 0.9, 0.9))
    assert reason is None and mask.shape == (base.obs_size,) * 2
    assert oracle.prompts.box is None  # preview takes no turn


@pytest.mark.parametrize("name", default_policies())  # the MLLM ones: tests/mllm
def test_every_shipped_policy_runs_through_wrappers(name, small_demo):
    # the learned agent refuses a canvas other than the one it was trained on (256)
    size = 256 if name.startswith("learned") else 64
    env = gym.wrappers.RecordEpisodeStatistics(
        gym.make("MedSeg-v0", dataset=small_demo[:1], obs_size=size, max_turns=3)
    )
    policy = make_policy(name, seed=0)
    obs, info = env.reset(seed=0)
    done, turns = False, 0
    while not done:
        obs, _, terminated, truncated, info = env.step(policy.act(obs, info, env))
        done, turns = terminated or truncated, turns + 1
    assert 1 <= turns <= 3 and "episode" in info
    env.close()


@pytest.mark.parametrize("name", ["hybrid_expert", "random"])
def test_policies_follow_a_wrapper_that_changes_the_prompt_kinds(name, small_demo):
    """The policies that choose between prompt kinds ask the wrapper's oracle, not the model."""
    env = NoClicks(gym.make("MedSeg-v0", dataset=small_demo[:1], obs_size=64, max_turns=4))
    policy = make_policy(name, seed=1, **({"p_stop": 0.0} if name == "random" else {}))
    obs, info = env.reset(seed=0)
    kinds = []
    for _ in range(4):
        action = policy.act(obs, info, env)  # NoClicks.step fails on any click
        kinds.append(int(action["kind"]))
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    assert kinds[0] == actions.ActionKind.BOX
    env.close()
