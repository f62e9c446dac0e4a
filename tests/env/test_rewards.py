"""Reward presets, composition, custom terms, and the MedSAM-Agent formula."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from medseg_testing import gt_box_action

from medseg_env import actions
from medseg_env.rewards import PRESETS, TERMS, Reward, StepContext, register_reward_term


def ctx(**kw) -> StepContext:
    empty = np.zeros((4, 4), bool)
    base = dict(
        prev_mask=empty,
        mask=empty,
        ground_truth=empty,
        action=actions.stop(),
        kind=3,
        turn=1,
        valid=True,
        invalid_reason=None,
        terminated=False,
        truncated=False,
        dice=0.0,
        dice_prev=0.0,
        iou=0.0,
        iou_prev=0.0,
        ious=(0.0, 0.0),
        num_prompts=1,
        num_invalid=0,
    )
    base.update(kw)
    return StepContext(**base)


def test_dice_gain_preset():
    reward, terms = Reward("dice_gain")(ctx(dice=0.7, dice_prev=0.2))
    assert terms == pytest.approx({"dice_gain": 0.5, "step": -0.01, "invalid_action": 0.0})
    assert reward == pytest.approx(0.49)
    reward, _ = Reward("dice_gain")(ctx(valid=False, invalid_reason="x"))
    assert reward == pytest.approx(-0.06)
    reward, terms = Reward("dice_gain")(ctx(kind=0, terminated=True))
    assert reward == 0.0  # stopping is free


def test_iou_gain_and_final_dice():
    assert Reward("iou_gain")(ctx(iou=0.5, iou_prev=0.1))[0] == pytest.approx(0.39)
    assert Reward("final_dice")(ctx(dice=0.8))[0] == 0.0
    assert Reward("final_dice")(ctx(dice=0.8, truncated=True))[0] == pytest.approx(0.8)
    assert Reward("final_dice")(ctx(dice=0.8, terminated=True))[0] == pytest.approx(0.8)


def _call(name: str) -> str:
    arguments = {"bbox_2d": [1, 2, 30, 40]} if name == "add_bbox" else {}
    if name == "add_point":
        arguments = {"point_2d": [5, 6], "point_type": "positive"}
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(arguments)}}}\n</tool_call>'


def test_medsam_agent_formula_by_hand():
    # three scored masks, IoU 0.6 -> 0.8 -> 0.7, then a stop: format 1
    replies = (_call("add_bbox"), _call("add_point"), _call("add_point"), _call("stop_action"))
    dices = (0.75, 8 / 9, 1.4 / 1.7)
    c = ctx(
        terminated=True,
        iou=0.7,
        dice=1.4 / 1.7,
        kind=0,
        replies=replies,
        mask_ious=(0.6, 0.8, 0.7),
        mask_dices=dices,
    )
    # the step from the empty mask is no bonus; the turn cost counts the scored masks
    quality = 0.5 * 0.7 + 0.5 * (1.4 / 1.7) - ((0.8 - 0.7) + 0.03) + 0.1 * (0.8 - 0.6)
    assert Reward("medsam_agent")(c)[0] == pytest.approx(0.2 + 0.8 * quality, abs=1e-12)
    # one scored mask: no penalty and no bonus; no stop call: format 0.5
    one = ctx(
        truncated=True,
        iou=0.5,
        dice=2 / 3,
        replies=replies[:1],
        mask_ious=(0.5,),
        mask_dices=(2 / 3,),
    )
    assert Reward("medsam_agent")(one)[0] == pytest.approx(0.1 + 0.8 * (0.25 + 1 / 3))
    # no scored mask: the final mask alone; a structured episode's format from its actions
    structured = ctx(terminated=True, iou=0.4, dice=4 / 7, kind=0, kinds=(3, 0))
    assert Reward("medsam_agent")(structured)[0] == pytest.approx(0.2 + 0.8 * (0.2 + 2 / 7))
    assert Reward("medsam_agent")(ctx(iou=0.9, mask_ious=(0.9,), mask_dices=(0.9,)))[0] == 0.0


def test_composition_with_callables_and_registered_terms():
    def bonus(c: StepContext) -> float:
        return float(c.dice > 0.5)

    reward, terms = Reward({"dice_gain": 2.0, bonus: 0.5})(ctx(dice=0.6))
    assert terms == pytest.approx({"dice_gain": 1.2, "bonus": 0.5})
    assert reward == pytest.approx(1.7)
    register_reward_term("test_bonus", bonus)
    try:
        assert Reward([("test_bonus", 3.0)])(ctx(dice=0.9))[0] == 3.0
    finally:
        TERMS.unregister("test_bonus")
    assert Reward(bonus)(ctx(dice=0.1))[0] == 0.0


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nope", "unknown reward"),
        ({}, "empty"),
        ({"step": float("nan")}, "finite"),
        ([("step", 1.0), ("step", 2.0)], "twice"),
        ({3: 1.0}, "name or a callable"),
    ],
)
def test_bad_reward_specs(spec, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Reward(spec)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_in_the_env_sum_their_terms(preset, small_demo):
    # The box-only model, so that the click is an invalid action.
    env = gym.make(
        "MedSeg-v0", dataset=small_demo, reward=preset, max_turns=2, segmenter="litemedsam"
    )
    env.reset(seed=0)
    total = 0.0
    for action in (gt_box_action(env), actions.click(0.5, 0.5)):
        _, reward, terminated, truncated, info = env.step(action)
        assert reward == pytest.approx(sum(info["reward_terms"].values()))
        assert set(info["reward_terms"]) == set(PRESETS.get(preset))
        total += reward
    assert truncated and info["invalid_action"]
    if preset == "final_dice":
        assert total == pytest.approx(info["dice"])
    if preset == "medsam_agent":
        assert 0.0 <= total <= 0.8  # the invalid click loses the 0.2 format part


def test_prompt_proximity_grades_misses_by_distance_to_the_target():
    from medseg_env.rewards import prompt_proximity

    gt = np.zeros((64, 64), bool)
    gt[10:14, 10:14] = True  # pixel centres 10.5..13.5
    click = lambda x, y, positive=True: ctx(  # noqa: E731
        ground_truth=gt,
        action=actions.click(x / 64, y / 64, positive=positive),
        kind=1 if positive else 2,
    )
    assert prompt_proximity(click(12, 12)) == 1.0  # on the target
    # 8 px right of the nearest pixel centre (13.5): 1 - 8 / (64 / 4)
    assert prompt_proximity(click(21.5, 12.5)) == pytest.approx(0.5)
    assert prompt_proximity(click(60, 60)) == 0.0  # beyond a quarter of the canvas
    assert prompt_proximity(click(12, 12, positive=False)) == 0.0
    assert prompt_proximity(ctx(ground_truth=gt, action=actions.stop(), kind=0)) == 0.0
    box = ctx(ground_truth=gt, action=actions.box(0.0, 0.0, 24 / 64, 24 / 64), kind=3)
    assert prompt_proximity(box) == 1.0  # its centre (12, 12) is on the target
    missed = ctx(ground_truth=gt, action=actions.click(0.9, 0.9, positive=True), kind=1)
    assert prompt_proximity(ctx(**{**missed.__dict__, "valid": False})) == 0.0
    # usable by name in a composition, with its weight
    _, terms = Reward({"dice_gain": 1.0, "prompt_proximity": 0.1})(click(21.5, 12.5))
    assert terms["prompt_proximity"] == pytest.approx(0.05)
