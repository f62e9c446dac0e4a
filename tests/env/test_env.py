"""MedSeg-v0 behaviour on real demo data with the real LiteMedSAM model."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from medseg_testing import assert_same_step, gt_box_action

from medseg_agents.clickers import next_click
from medseg_env import MedSegEnv, actions
from medseg_env.metrics import dice_iou
from medseg_env.segmenters import EmbeddingCache


def test_reset_observation_and_info(env):
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["mask"].max() == 0 and obs["prompts"].max() == 0 and obs["turn"][0] == 0
    for key in ("dice", "iou", "dice_prev", "reward_terms", "sample_id", "modality", "target"):
        assert key in info
    assert info["dice"] == 0.0 and info["num_prompts"] == 0
    # the ground truth is reachable only through the oracle attribute, not the observation
    gt = env.unwrapped.ground_truth
    assert gt.shape == (256, 256) and gt.dtype == bool and gt.any()
    assert not any(np.array_equal(v.squeeze(), gt * 255) for v in obs.values())


def test_gt_box_step_improves_dice_and_reports_terms(env):
    env.reset(seed=1)
    obs, reward, terminated, truncated, info = env.step(gt_box_action(env))
    assert info["invalid_action"] is None and info["num_boxes"] == 1
    assert info["dice"] > 0.5 and info["dice_prev"] == 0.0
    mask = obs["mask"][..., 0] > 0
    assert dice_iou(mask, env.unwrapped.ground_truth) == (info["dice"], info["iou"])
    assert obs["prompts"][..., 2].any()  # the box is drawn in the prompt map
    terms = info["reward_terms"]
    assert set(terms) == {"dice_gain", "step", "invalid_action"}
    assert reward == pytest.approx(sum(terms.values()))
    assert terms["dice_gain"] == pytest.approx(info["dice"] - info["dice_prev"])
    assert terms["step"] == pytest.approx(-0.01) and terms["invalid_action"] == 0.0
    assert not terminated and not truncated


@pytest.fixture
def box_only_env(small_demo):
    """The original LiteMedSAM, which declares itself box-only."""
    env = gym.make("MedSeg-v0", dataset=small_demo, segmenter="litemedsam", max_turns=5)
    yield env
    env.close()


def test_default_model_takes_clicks(env):
    # The default backend is the click-tuned LiteMedSAM: a positive click at the target's
    # deepest pixel is carried out and gives a mask that holds the click.
    assert env.unwrapped.segmenter.name == "litemedsam_clicks"
    env.reset(seed=2)
    gt = env.unwrapped.ground_truth
    row, col, positive = next_click(np.zeros_like(gt), gt)
    obs, _, _, _, info = env.step(actions.pixel_click(row, col, gt.shape[0], positive))
    assert info["invalid_action"] is None and info["num_clicks"] == 1
    assert obs["mask"][row, col, 0] > 0 and info["dice"] > 0.5


def test_click_on_box_only_model_is_invalid_not_an_error(box_only_env):
    env = box_only_env
    env.reset(seed=2)
    env.step(gt_box_action(env))
    before = env.unwrapped.current_mask
    obs, reward, terminated, truncated, info = env.step(actions.click(0.5, 0.5))
    assert "box-only" in info["invalid_action"]
    np.testing.assert_array_equal(obs["mask"][..., 0] > 0, before)
    assert info["num_clicks"] == 0 and info["dice"] == info["dice_prev"]
    assert info["reward_terms"]["invalid_action"] == pytest.approx(-0.05)
    assert reward == pytest.approx(-0.06)
    assert not terminated


def test_degenerate_box_is_invalid(env):
    env.reset(seed=3)
    _, _, _, _, info = env.step(actions.box(0.5, 0.5, 0.5, 0.9))
    assert "degenerate box" in info["invalid_action"]
    assert info["num_boxes"] == 0 and info["turn"] == 1


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"kind": 0, "point": [np.nan, 0.5], "box": [0, 0, 1, 1]}, "finite"),
        ({"kind": 3, "point": [0.5, 0.5], "box": [0, 0, np.inf, 1]}, "finite"),
        ({"kind": 7, "point": [0.5, 0.5], "box": [0, 0, 1, 1]}, "kind"),
        ({"kind": 1.5, "point": [0.5, 0.5], "box": [0, 0, 1, 1]}, "kind"),
        ({"kind": 1, "point": [1.5, 0.5], "box": [0, 0, 1, 1]}, r"\[0, 1\]"),
        ({"kind": 1, "point": [0.5], "box": [0, 0, 1, 1]}, "shape"),
        ({"kind": 1, "box": [0, 0, 1, 1]}, "missing"),
        ([1, 0.5, 0.5], "dict"),
    ],
)
def test_actions_outside_the_space_raise_clear_errors(env, bad, message):
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(bad)
    # the failed call took no turn
    _, _, _, _, info = env.step(actions.stop())
    assert info["turn"] == 1


def test_stop_terminates_and_turn_budget_truncates(env):
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(actions.stop())
    assert terminated and not truncated and info["turn"] == 1
    with pytest.raises(RuntimeError, match="reset"):
        env.step(actions.stop())
    env.reset(seed=0)
    box = gt_box_action(env)
    flags = [env.step(box)[2:4] for _ in range(5)]
    assert flags[:-1] == [(False, False)] * 4 and flags[-1] == (False, True)


def test_same_seed_same_episodes(small_demo):
    def rollout(seed):
        env = gym.make("MedSeg-v0", dataset=small_demo, max_turns=4)
        out = [env.reset(seed=seed)]
        env.action_space.seed(seed)
        out.append(env.step(gt_box_action(env)))
        for _ in range(3):
            out.append(env.step(env.action_space.sample()))
            if out[-1][2] or out[-1][3]:
                break
        return out

    a, b = rollout(7), rollout(7)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert_same_step(x, y)
    # and seeds do pick different samples
    firsts = {
        gym.make("MedSeg-v0", dataset=small_demo).reset(seed=s)[1]["sample_id"] for s in range(12)
    }
    assert len(firsts) > 1


def test_options_select_the_sample(env, small_demo):
    for i, sample in enumerate(small_demo):
        _, info = env.reset(options={"sample_index": i})
        assert info["sample_id"] == sample.sample_id
        _, info = env.reset(options={"sample_id": sample.sample_id})
        assert info["sample_index"] == i
    with pytest.raises(ValueError, match="out of range"):
        env.reset(options={"sample_index": len(small_demo)})


def test_second_episode_on_same_image_makes_no_encoder_call(small_demo):
    cache = EmbeddingCache()
    env = gym.make("MedSeg-v0", dataset=small_demo, segmenter_kwargs={"cache": cache})
    segmenter = env.unwrapped.segmenter
    env.reset(options={"sample_index": 0})
    assert segmenter.encoder_calls == 1
    env.step(gt_box_action(env))
    env.reset(options={"sample_index": 0})
    env.step(gt_box_action(env))
    assert segmenter.encoder_calls == 1 and cache.hits >= 1


def test_render_draws_mask_and_prompts(small_demo):
    env = gym.make("MedSeg-v0", dataset=small_demo, render_mode="rgb_array")
    env.reset(seed=0)
    blank = env.render()
    np.testing.assert_array_equal(blank, env.unwrapped._image)
    env.step(gt_box_action(env))
    frame = env.render()
    assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
    mask = env.unwrapped.current_mask
    # the mask is tinted green: more green than the raw image where predicted
    assert frame[mask][:, 1].mean() > blank[mask][:, 1].mean()
    from medseg_env.render import BOX_COLOR

    assert (frame == BOX_COLOR).all(axis=-1).sum() > 20


def test_preview_does_not_change_the_episode(env):
    env.reset(seed=4)
    box = gt_box_action(env)
    mask, reason = env.unwrapped.preview(box)
    assert reason is None and mask.any()
    assert env.unwrapped.current_mask.sum() == 0 and env.unwrapped.prompts.box is None
    obs, *_ = env.step(box)
    np.testing.assert_array_equal(obs["mask"][..., 0] > 0, mask)


def test_pickled_env_replays_identically(small_demo):
    env = gym.make("MedSeg-v0", dataset=small_demo)
    clone = pickle.loads(pickle.dumps(env))
    a = env.reset(seed=3)
    b = clone.reset(seed=3)
    assert_same_step(a, b)
    assert_same_step(env.step(gt_box_action(env)), clone.step(gt_box_action(clone)))


def test_unknown_options_and_bad_config_are_refused(small_demo):
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_turn'"):
        gym.make("MedSeg-v0", dataset=small_demo, max_turn=3)
    with pytest.raises(ValueError, match="unknown segmenter 'nope'"):
        gym.make("MedSeg-v0", dataset=small_demo, segmenter="nope")
    with pytest.raises(ValueError, match="unknown reward term or preset 'nope'"):
        gym.make("MedSeg-v0", dataset=small_demo, reward="nope")
    with pytest.raises(ValueError, match="render_mode"):
        MedSegEnv(dataset=small_demo, render_mode="human")


def test_env_on_user_data_given_by_path(tmp_path, demo):
    """Bring-your-own data: a MedSAM-style npz written here, loaded by path, non-square."""
    sample = next(s for s in demo if s.modality == "CT")
    image = sample.image[:, 32:224, 0]  # (256, 192) grey
    labels = sample.mask[:, 32:224].astype(np.uint8) * 3
    np.savez(tmp_path / "case.npz", imgs=image, gts=labels, spacing=np.array([0.8, 0.8]))
    env = gym.make("MedSeg-v0", dataset=str(tmp_path / "case.npz"), obs_size=128)
    obs, info = env.reset(seed=0)
    assert obs["image"].shape == (128, 128, 3) and info["target"] == "label_3"
    # letterboxed: the 192 columns become 96 of 128, the rest is padding
    assert obs["image"][:, 96:].max() == 0
    assert info["spacing"] == pytest.approx((1.6, 1.6))
    _, _, _, _, info = env.step(gt_box_action(env))
    assert info["dice"] > 0.5


def test_a_new_box_starts_afresh_without_the_previous_mask(env):
    """Boxes get no mask input (as SAM-style models are trained), so a repeated box is stable."""
    env.reset(seed=5)
    box = gt_box_action(env)
    first, *_ = env.step(box)
    second, *_ = env.step(box)
    np.testing.assert_array_equal(first["mask"], second["mask"])
