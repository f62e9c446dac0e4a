"""RandomPolicy (the floor) and the policy registry."""

from __future__ import annotations

import numpy as np
import pytest
from medseg_testing import StubEnv, StubOracle

import medseg_agents
from medseg_agents import (
    POLICIES,
    HintBox,
    HintClick,
    HybridExpert,
    IMISClicker,
    LearnedBCPolicy,
    LearnedPolicy,
    OracleBox,
    Policy,
    RandomPolicy,
    RITMClicker,
    make_policy,
)
from medseg_env import actions

SPACE = actions.action_space()


def stub_env(kinds: set[str], obs_size: int = 64, min_box_size: float = 2.0):
    # No ground truth: the random policy must never read it.
    return StubEnv(StubOracle(None, obs_size=obs_size, min_box_size=min_box_size, kinds=kinds))


def draw(policy: RandomPolicy, n: int, env=None) -> list[dict]:
    return [policy.act({}, {}, env) for _ in range(n)]


def test_actions_are_valid_and_cover_every_kind_without_env():
    acts = draw(RandomPolicy(p_stop=0.1, seed=0), 1000)
    kinds = np.array([a["kind"] for a in acts])
    assert all(SPACE.contains(a) for a in acts)
    counts = np.bincount(kinds, minlength=4)
    assert 60 < counts[0] < 140  # stops: p_stop = 0.1
    assert all(counts[1:] > 250)  # the three prompt kinds, uniform over the rest


def test_boxes_respect_the_minimum_size():
    acts = draw(RandomPolicy(p_stop=0.0, min_box_size=0.3, seed=1), 600)
    boxes = np.array([a["box"] for a in acts if a["kind"] == actions.ActionKind.BOX])
    assert len(boxes) > 100
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert widths.min() >= 0.3 - 1e-6 and heights.min() >= 0.3 - 1e-6
    assert widths.max() > 0.9 and boxes.min() >= 0.0 and boxes.max() <= 1.0


@pytest.mark.parametrize(
    ("kinds", "allowed"),
    [({"box"}, {0, 3}), ({"point"}, {0, 1, 2}), ({"box", "point"}, {0, 1, 2, 3}), (set(), {0})],
)
def test_only_kinds_the_segmenter_takes(kinds, allowed):
    acts = draw(RandomPolicy(seed=2), 300, stub_env(kinds))
    assert {int(a["kind"]) for a in acts} == allowed


def test_env_minimum_box_size_is_respected():
    env = stub_env({"box"}, obs_size=64, min_box_size=20.0)
    acts = draw(RandomPolicy(p_stop=0.0, min_box_size=0.0, seed=3), 300, env)
    boxes = np.array([a["box"] for a in acts]) * 64
    assert np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).min() >= 20.0


def test_p_stop_extremes_and_seeding():
    assert all(a["kind"] == 0 for a in draw(RandomPolicy(p_stop=1.0, seed=0), 50))
    assert all(a["kind"] != 0 for a in draw(RandomPolicy(p_stop=0.0, seed=0), 200))
    policy = RandomPolicy(seed=4)
    first = [(a["kind"], a["point"].tolist(), a["box"].tolist()) for a in draw(policy, 30)]
    policy.seed(4)
    again = [(a["kind"], a["point"].tolist(), a["box"].tolist()) for a in draw(policy, 30)]
    other = [(a["kind"], a["point"].tolist(), a["box"].tolist()) for a in draw(RandomPolicy(), 30)]
    assert first == again and first != other
    with pytest.raises(ValueError):
        RandomPolicy(p_stop=1.5)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def test_registry_builds_every_policy_by_name():
    expected = {  # in registration order: the benchmark's table order, GT-free first
        "learned": LearnedPolicy,
        "learned_bc": LearnedBCPolicy,
        "hint_box": HintBox,
        "hint_click": HintClick,
        "random": RandomPolicy,
        "oracle_box": OracleBox,
        "hybrid_expert": HybridExpert,
        "ritm": RITMClicker,
        "imis": IMISClicker,
    }
    assert POLICIES.names()[:9] == list(expected)
    assert {name: POLICIES.get(name) for name in expected} == expected
    gt_free = {"learned", "learned_bc", "hint_box", "hint_click", "random"}
    for name, cls in expected.items():
        policy = make_policy(name, seed=0)
        assert type(policy) is cls and isinstance(policy, Policy) and policy.name == name
        assert policy.needs_oracle == (name not in gt_free)
    assert make_policy("oracle_box", jitter_px=3).jitter_px == 3
    assert set(medseg_agents.__all__) >= {
        "Policy",
        "make_policy",
        "POLICIES",
        *map(lambda c: c.__name__, expected.values()),
    }


def test_unknown_policy_name_lists_the_known_ones():
    with pytest.raises(
        ValueError, match="learned.*hint_box.*random.*oracle_box.*hybrid_expert.*ritm.*imis"
    ):
        make_policy("nope")
