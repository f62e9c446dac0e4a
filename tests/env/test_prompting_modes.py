"""The env's ``prompting`` modes: what the real segmenter is given each turn."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from medseg_env import MedSegEnv
from medseg_env import actions as A
from medseg_env.data import Dataset
from medseg_env.prompting import (
    PROMPTING_RULES,
    Accumulate,
    PromptingRule,
    prompting_rule_names,
    register_prompting_rule,
)
from medseg_env.registry import UnknownNameError
from medseg_env.segmenters import make_segmenter


class Spy:
    """Click-tuned LiteMedSAM whose ``predict`` records (clicks, box, mask input, multimask)."""

    def __init__(self) -> None:
        self.segmenter = make_segmenter("litemedsam_clicks")
        self.calls: list[tuple[int, bool, bool, bool]] = []
        real = self.segmenter.predict

        def predict(embedding, prompts, previous_logits=None, multimask=False):
            box = prompts.box is not None
            self.calls.append((len(prompts.points), box, previous_logits is not None, multimask))
            return real(embedding, prompts, previous_logits, multimask=multimask)

        self.segmenter.predict = predict  # type: ignore[method-assign]


def run(small_demo: Dataset, prompting: str) -> Spy:
    spy = Spy()
    env = MedSegEnv(dataset=small_demo, segmenter=spy.segmenter, prompting=prompting)
    env.reset(seed=0, options={"sample_index": 0})
    gt = env.ground_truth
    rows, cols = np.nonzero(gt)
    r, c = int(rows.mean()), int(cols.mean())
    env.step(A.pixel_box(rows.min(), cols.min(), rows.max(), cols.max(), gt.shape[0]))
    env.step(A.pixel_click(r, c, gt.shape[0], positive=True))
    env.step(A.pixel_click(rows.min(), cols.min(), gt.shape[0], positive=False))
    assert len(env.prompts.points) == 2 and env.prompts.box is not None  # the record keeps all
    return spy


def test_accumulate_gives_every_prompt(small_demo: Dataset) -> None:
    calls = run(small_demo, "accumulate").calls
    # (clicks, box, mask input, multimask): the box starts afresh; clicks add up with the box
    assert calls == [(0, True, False, False), (1, True, True, False), (2, True, True, False)]


def test_medsam_agent_eval_decodes_the_last_click_alone_best_of_three(
    small_demo: Dataset,
) -> None:
    calls = run(small_demo, "medsam_agent_eval").calls
    assert calls == [(0, True, False, True), (1, False, True, True), (1, False, True, True)]


def test_medsam_agent_rl_gives_the_new_prompt_alone(small_demo: Dataset) -> None:
    calls = run(small_demo, "medsam_agent_rl").calls
    # one logit chain per tool: the first click after the box gets no mask input
    assert calls == [(0, True, False, False), (1, False, False, False), (1, False, True, False)]
    calls = run(small_demo, "medsam_agent_rl_one_chain").calls  # the switch: one chain
    assert calls == [(0, True, False, False), (1, False, True, False), (1, False, True, False)]


def test_medsam_agent_rl_chains_logits_per_tool_name(small_demo: Dataset) -> None:
    """R3: ``add_bbox`` calls chain with ``add_bbox`` calls, clicks with clicks, as the RL loop's
    one segmentation-server session per tool name (``f"{episode_id}_{tool_name}"``) does."""
    segmenter = make_segmenter("litemedsam_clicks")
    given: list[object] = []  # previous_logits of each call
    made: list[object] = []  # logits each call returned
    real = segmenter.predict

    def predict(embedding, prompts, previous_logits=None, multimask=False):
        assert not multimask, "the RL server decodes one mask"
        given.append(previous_logits)
        prediction = real(embedding, prompts, previous_logits, multimask=multimask)
        made.append(prediction.logits)
        return prediction

    segmenter.predict = predict  # type: ignore[method-assign]
    env = MedSegEnv(dataset=small_demo, segmenter=segmenter, prompting="medsam_agent_rl")
    for episode in range(2):
        env.reset(seed=episode, options={"sample_index": 0})
        gt = env.ground_truth
        rows, cols = np.nonzero(gt)
        r, c, size = int(rows.mean()), int(cols.mean()), gt.shape[0]
        box = A.pixel_box(rows.min(), cols.min(), rows.max(), cols.max(), size)
        start = len(given)
        for action in (
            box,  # 0: add_bbox, no chain yet
            A.pixel_click(r, c, size, positive=True),  # 1: add_point, no chain yet
            A.pixel_click(rows.min(), cols.min(), size, positive=False),  # 2: after 1
            box,  # 3: after 0, not after the clicks
            A.pixel_click(r, c, size, positive=True),  # 4: after 2
        ):
            env.step(action)
        got, out = given[start:], made[start:]
        assert got[0] is None and got[1] is None  # a new episode starts both chains afresh
        assert got[2] is out[1] and got[3] is out[0] and got[4] is out[2]


def test_unknown_prompting_mode_is_refused(small_demo: Dataset) -> None:
    with pytest.raises(ValueError, match="prompting must be one of"):
        MedSegEnv(dataset=small_demo, prompting="all")


@pytest.mark.parametrize(
    ("protocol", "mode"),
    [
        ("medsam_agent", "medsam_agent_eval"),
        ("medsam_agent_rl", "medsam_agent_rl"),
        ("segagent", "accumulate"),
    ],
)
def test_text_env_uses_the_protocols_mode(small_demo: Dataset, protocol: str, mode: str) -> None:
    env = gym.make("MedSeg-Text-v0", dataset=small_demo, protocol=protocol)
    assert env.unwrapped.prompting == mode
    override = gym.make(
        "MedSeg-Text-v0", dataset=small_demo, protocol=protocol, prompting="accumulate"
    )
    assert override.unwrapped.prompting == "accumulate"


class Recording(PromptingRule):
    """``accumulate``'s calls, recording what the env tells the rule and when."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.inner = Accumulate()

    def start_episode(self) -> None:
        self.events.append(("start", -1))

    def request(self, kind, prompts, *, embedding, logits):
        self.events.append(("request", int(kind)))
        return self.inner.request(kind, prompts, embedding=embedding, logits=logits)

    def commit(self, kind, request, prediction) -> None:
        self.events.append(("commit", int(kind)))


@pytest.fixture
def recording_rule():
    register_prompting_rule("test_recording", Recording)
    try:
        yield "test_recording"
    finally:
        PROMPTING_RULES.unregister("test_recording")


def test_a_registered_rule_is_told_of_episodes_plans_and_taken_turns(
    small_demo: Dataset, recording_rule: str
) -> None:
    env = MedSegEnv(dataset=small_demo, prompting=recording_rule)
    other = MedSegEnv(dataset=small_demo, prompting=recording_rule)
    rule = env._rule
    assert isinstance(rule, Recording) and rule is not other._rule  # one rule per env
    assert env.prompting == recording_rule
    env.reset(seed=0, options={"sample_index": 0})
    gt = env.ground_truth
    rows, cols = np.nonzero(gt)
    size = gt.shape[0]
    box = A.pixel_box(rows.min(), cols.min(), rows.max(), cols.max(), size)
    env.preview(box)  # planned, never taken
    env.step(box)
    env.step(A.box(0.5, 0.5, 0.5, 0.5))  # degenerate: invalid, no segmenter call
    env.step(A.pixel_click(int(rows.mean()), int(cols.mean()), size, positive=True))
    env.step(A.stop())
    env.reset(seed=1, options={"sample_index": 1})
    box_kind, click_kind = int(A.ActionKind.BOX), int(A.ActionKind.POSITIVE_CLICK)
    assert rule.events == [
        ("start", -1),
        ("request", box_kind),
        ("request", box_kind),
        ("commit", box_kind),
        ("request", click_kind),
        ("commit", click_kind),
        ("start", -1),
    ]
    assert other._rule.events == []


def test_an_unknown_rule_is_refused_with_the_known_names(small_demo: Dataset) -> None:
    assert prompting_rule_names()[:3] == ["accumulate", "medsam_agent_eval", "medsam_agent_rl"]
    assert PROMPTING_RULES.group == "medseg_env.prompting_rules"
    with pytest.raises(UnknownNameError, match=r"one of \['accumulate', 'medsam_agent_eval'"):
        MedSegEnv(dataset=small_demo, prompting="all")
    with pytest.raises(TypeError, match="prompting must be the name of a prompting rule"):
        MedSegEnv(dataset=small_demo, prompting=Accumulate())


def test_a_factory_that_returns_no_rule_is_named(small_demo: Dataset) -> None:
    register_prompting_rule("test_broken", lambda: "accumulate")  # type: ignore[arg-type,return-value]
    try:
        with pytest.raises(TypeError, match="'test_broken' returned 'accumulate'"):
            MedSegEnv(dataset=small_demo, prompting="test_broken")
    finally:
        PROMPTING_RULES.unregister("test_broken")
