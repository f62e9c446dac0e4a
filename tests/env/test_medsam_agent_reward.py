"""MedSAM-Agent's RL reward against the released ``compute_score``'s own scores (R1, R2).

``medsam_agent_reward_cases.json`` holds 620 cases and the scores the released function gave
them (``medsam_reward_cases.py`` says how they were made; no released code is stored): 420
calls of the function itself and 200 RL episodes on the bundled demo data, replayed here
through ``MedSeg-Text-v0`` with the weight-free ``classical`` segmenter.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from medsam_reward_cases import (
    CASES_FILE,
    REQUIRED_EPISODE_BRANCHES,
    REQUIRED_FUNCTION_BRANCHES,
    SEPARATOR,
    mask_from_spec,
)

from medseg_env.data import Dataset
from medseg_env.rewards import (
    MEDSAM_AGENT_TURN_SEPARATOR,
    medsam_agent_format,
    medsam_agent_score,
    medsam_agent_solution,
)
from medseg_env.text import get_protocol

TOLERANCE = 1e-6


@cache
def cases() -> list[dict[str, Any]]:
    return json.loads(CASES_FILE.read_text())["cases"]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [case for case in cases() if case["kind"] == kind]


def test_the_cases_cover_every_branch() -> None:
    assert len(cases()) >= 500
    for kind, required in (
        ("function", REQUIRED_FUNCTION_BRANCHES),
        ("episode", REQUIRED_EPISODE_BRANCHES),
    ):
        taken = {branch for case in of_kind(kind) for branch in case["branches"]}
        assert set(required) <= taken, sorted(set(required) - taken)
    # the R2 edge both ways: an [add, stop] reply with and without masks kept before it
    branches = {b for case in of_kind("episode") for b in case["branches"]}
    assert {"add_and_stop_first", "add_and_stop_later"} <= branches


def test_the_turn_separator_is_the_rl_loops_user_turn() -> None:
    rl = get_protocol("medsam_agent_rl")
    assert MEDSAM_AGENT_TURN_SEPARATOR == SEPARATOR
    assert SEPARATOR == "\nuser\n" + rl.later_user_text() + "\nassistant\n"


def test_the_reward_function_matches_the_released_scores() -> None:
    worst = 0.0
    for number, case in enumerate(of_kind("function")):
        solution = medsam_agent_solution(case["replies"])
        reference = case["reference"]
        assert medsam_agent_format(solution) == reference["format_reward"], (number, solution)
        gt = None if case["gt"] is None else mask_from_spec(case["gt"])
        masks = [mask_from_spec(spec) for spec in case["masks"]]
        score = medsam_agent_score(solution, masks, gt, num_turns=case["num_turns"])
        worst = max(worst, abs(score - reference["score"]))
        assert score == pytest.approx(reference["score"], abs=TOLERANCE), (number, case)
    assert worst <= TOLERANCE


@pytest.fixture(scope="module")
def rl_env(demo: Dataset) -> gym.Env:
    env = gym.make(
        "MedSeg-Text-v0",
        dataset=demo,
        protocol="medsam_agent_rl",
        segmenter="classical",
        reward="medsam_agent",
    )
    yield env
    env.close()


def test_rl_episode_returns_match_the_released_scores(rl_env: gym.Env) -> None:
    """The env's ``medsam_agent`` return of each episode equals ``compute_score`` of it: the
    format of every reply (the unexecuted 5th included), the masks the RL loop keeps (not
    the mask of a reply that also stops, R2), at the sample's own resolution."""
    worst = 0.0
    for number, case in enumerate(of_kind("episode")):
        rl_env.reset(seed=0, options={"sample_id": case["sample_id"]})
        total, over = 0.0, False
        for reply in case["replies"]:
            assert not over, (number, "the episode ended before its last reply")
            _, reward, terminated, truncated, _ = rl_env.step(reply)
            total += float(reward)
            over = terminated or truncated
        assert over, (number, "the episode is still open after its last reply")
        worst = max(worst, abs(total - case["reference"]["score"]))
        assert total == pytest.approx(case["reference"]["score"], abs=TOLERANCE), (number, case)
    assert worst <= TOLERANCE


def test_a_reply_that_also_stops_keeps_its_mask_out_of_the_reward(demo: Dataset) -> None:
    """R2: ``[add_point, stop_action]`` runs the click (the mask changes) and ends the episode,
    but the reward scores the masks before it; ``score_stop_after_mask=True`` counts it."""
    case = next(c for c in of_kind("episode") if "add_and_stop_later" in c["branches"])
    returns, masks = [], []
    for protocol in (
        get_protocol("medsam_agent_rl"),
        get_protocol("medsam_agent_rl").replace(score_stop_after_mask=True),
    ):
        env = gym.make(
            "MedSeg-Text-v0",
            dataset=demo,
            protocol=protocol,
            segmenter="classical",
            reward="medsam_agent",
        )
        env.reset(seed=0, options={"sample_id": case["sample_id"]})
        total = 0.0
        for reply in case["replies"]:
            before = env.get_wrapper_attr("current_mask")
            _, reward, terminated, truncated, info = env.step(reply)
            total += float(reward)
        assert terminated and info["parsed"]["stop_after"]
        masks.append(env.get_wrapper_attr("current_mask"))
        assert not np.array_equal(masks[-1], before), "the add of the last reply ran"
        returns.append(total)
    assert np.array_equal(masks[0], masks[1])
    assert returns[0] == pytest.approx(case["reference"]["score"], abs=TOLERANCE)
    assert returns[1] != pytest.approx(returns[0], abs=1e-9)
