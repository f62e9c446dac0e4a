"""``ToolSession``: one text episode driven call by call, as every trainer adapter drives it."""

from __future__ import annotations

import numpy as np
import pytest

from medseg_agents.simulation import oracle_box_action
from medseg_env.data import Dataset
from medseg_env.text.hermes import render_call
from medseg_env.text.tool_session import (
    EPISODE_OVER_TEXT,
    ToolSession,
    reset_arguments,
)
from medseg_env.wrappers.text_env import MedSegTextEnv, make_text_env


def make(small_demo: Dataset, protocol: str = "medsam_agent_rl") -> MedSegTextEnv:
    return make_text_env(protocol, images="pil", reward="medsam_agent", dataset=small_demo)


def good_box(session: ToolSession) -> list[int]:
    env = session.text_env
    call = env.to_call(oracle_box_action(env.oracle.ground_truth))
    return list(call.arguments["bbox_2d"])


def test_calls_run_as_replies_and_the_return_is_the_envs(small_demo: Dataset) -> None:
    session = ToolSession(make(small_demo))
    with pytest.raises(RuntimeError, match="reset"):
        session.call("stop_action", {})
    messages = session.reset(**reset_arguments({"sample_index": 1, "seed": 3, "prompt": "x"}))
    assert session.user_content() == [dict(p) for p in messages[-1]["content"]]
    box = good_box(session)
    # the same replies, typed into a plain text env
    plain = make(small_demo)
    plain.reset(seed=3, options={"sample_index": 1})
    rewards = []
    for name, arguments in (("add_bbox", {"bbox_2d": box}), ("stop_action", {})):
        rewards.append(plain.step(render_call(name, arguments))[1])

    result = session.call("add_bbox", {"bbox_2d": box})
    assert result.ran and not result.over and result.reward == rewards[0]
    assert result.text == session.text_env.protocol.later_user_text()
    assert result.user_content is not None and result.image is result.user_content[0]["image"]
    assert [p["type"] for p in result.content()] == ["image", "text"]
    assert session.info["parsed"]["call"]["arguments"] == {"bbox_2d": box}

    end = session.call("stop_action", {})
    assert end.over and end.terminated and end.user_content is None
    assert end.text == EPISODE_OVER_TEXT and end.image is not None  # the final overlay
    assert np.array_equal(np.asarray(end.image), np.asarray(session.overlay()))
    assert session.episode_return == pytest.approx(sum(rewards))
    assert session.rewards == pytest.approx(rewards)
    assert session.format_ok and session.num_replies == 2 and session.num_malformed == 0

    after = session.call("add_point", {"point_2d": [1, 1], "point_type": "positive"})
    assert not after.ran and after.reward == 0.0 and after.over
    assert after.content() == [{"type": "text", "text": EPISODE_OVER_TEXT}]
    assert session.num_calls == 3 and session.num_replies == 2
    assert session.close() == 0.0 and not session.closed
    summary = session.summary()
    assert summary["reward"] == pytest.approx(sum(rewards)) and summary["format_ok"] == 1.0


def test_a_malformed_call_ends_an_rl_episode_with_the_error(small_demo: Dataset) -> None:
    session = ToolSession(make(small_demo))
    session.reset(seed=0, options={"sample_index": 0})
    result = session.call("add_bbox", {"bbox_2d": [40, 20, 10, 30]})
    assert result.over and result.image is None
    assert (
        result.text.startswith("Error: bbox_2d needs x1 < x2") and EPISODE_OVER_TEXT in result.text
    )
    assert session.invalid_turns == 1 and session.num_malformed == 1 and not session.format_ok
    reply = session.reply("a whole reply after the end")
    assert not reply.ran and session.num_replies == 1


def test_close_ends_an_open_episode_once(small_demo: Dataset) -> None:
    session = ToolSession(make(small_demo, "medsam_agent"))
    session.reset(seed=0, options={"sample_index": 2})
    session.call("add_bbox", {"bbox_2d": good_box(session)})
    first = session.episode_return
    added = session.close()
    assert session.over and session.closed and session.info["closed"]
    assert session.episode_return == pytest.approx(first + added)
    assert session.info["format_error"] is None and session.format_ok
    assert session.close() == 0.0 and len(session.rewards) == 2
    assert session.user_content() is None
    session.reset(seed=0, options={"sample_index": 2})  # a new episode clears everything
    assert not session.over and session.episode_return == 0.0 and session.rewards == []


def test_a_session_needs_pil_images(small_demo: Dataset) -> None:
    env = make_text_env("medsam_agent_rl", images="data_url", dataset=small_demo)
    with pytest.raises(ValueError, match="images='pil'"):
        ToolSession(env)


def test_reset_arguments_read_the_sample_and_the_seed() -> None:
    assert reset_arguments({"prompt": [], "sample_id": "a", "seed": 2.0}) == {
        "seed": 2,
        "options": {"sample_id": "a"},
    }
    assert reset_arguments({"sample_index": None}) == {"seed": None, "options": None}
