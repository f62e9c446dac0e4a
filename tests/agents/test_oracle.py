"""OracleBox, jittered ground-truth boxes, and the progress-constrained HybridExpert."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from medseg_testing import StubEnv, StubOracle

from medseg_agents import HybridExpert, OracleBox
from medseg_agents.oracle import hybrid_click
from medseg_agents.simulation import oracle_box_action
from medseg_env import actions
from medseg_env.data import Dataset, Sample
from medseg_env.env import MedSegEnv
from medseg_env.geometry import box_from_mask, jittered_box
from medseg_env.metrics import iou
from medseg_env.segmenters import Embedding, EmbeddingCache, Prediction, Prompts, Segmenter

S = 40


def square(r0: int, c0: int, r1: int, c1: int, size: int = S) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[r0 : r1 + 1, c0 : c1 + 1] = True
    return m


def box_pixels(action, size: int = S) -> np.ndarray:
    """The pixels whose centres the action's box covers."""
    kind, _, box = actions.validate(action)
    assert kind == actions.ActionKind.BOX
    x0, y0, x1, y1 = box * size
    rr, cc = np.mgrid[:size, :size] + 0.5
    return (cc >= x0) & (cc <= x1) & (rr >= y0) & (rr <= y1)


# ---------------------------------------------------------------------------------------------
# jittered_box
# ---------------------------------------------------------------------------------------------


def test_no_jitter_is_the_exact_box_and_its_action_covers_exactly_the_bbox():
    gt = square(5, 7, 20, 30)
    gt[12, 12] = False
    assert jittered_box(gt) == box_from_mask(gt) == (5, 7, 20, 30)
    assert jittered_box(gt, np.random.default_rng(0)) == (5, 7, 20, 30)
    action = oracle_box_action(gt)
    np.testing.assert_allclose(action["box"] * S, [7, 5, 31, 21], atol=1e-4)
    np.testing.assert_array_equal(box_pixels(action), square(5, 7, 20, 30))


@pytest.mark.parametrize(("px", "frac"), [(3, 0.0), (0, 0.2), (2.5, 0.1)])
def test_jitter_stays_within_its_bound_and_reaches_it(px, frac):
    gt = square(10, 10, 29, 24)  # 20 rows x 15 cols
    m_r, m_c = int(px + frac * 20), int(px + frac * 15)
    shifts = []
    for seed in range(300):
        box = jittered_box(gt, np.random.default_rng(seed), jitter_px=px, jitter_frac=frac)
        shifts.append(np.subtract(box, (10, 10, 29, 24)))
    shifts = np.array(shifts)
    bound = np.array([m_r, m_c, m_r, m_c])
    assert np.all(np.abs(shifts) <= bound)
    assert np.all(shifts.max(axis=0) == bound) and np.all(shifts.min(axis=0) == -bound)


def test_outward_jitter_only_grows_the_box():
    gt = square(10, 10, 29, 24)
    boxes = [jittered_box(gt, np.random.default_rng(s), 2, outward=True) for s in range(200)]
    # every side moved out (>= 0), so the box holds the whole target
    outward = np.subtract(boxes, (10, 10, 29, 24)) * np.array([-1, -1, 1, 1])
    assert outward.min() == 0 and outward.max() == 2 and np.all(outward.max(axis=0) == 2)


def test_jitter_is_clipped_to_the_image_and_seeded():
    gt = square(0, 0, 5, S - 1)
    boxes = {jittered_box(gt, np.random.default_rng(s), jitter_px=4) for s in range(100)}
    assert all(0 <= r0 <= r1 < S and 0 <= c0 <= c1 < S for r0, c0, r1, c1 in boxes)
    assert len(boxes) > 10
    a = jittered_box(gt, np.random.default_rng(7), jitter_px=4)
    assert a == jittered_box(gt, np.random.default_rng(7), jitter_px=4)


def test_large_jitter_keeps_corners_ordered():
    gt = square(20, 20, 21, 21)
    for seed in range(50):
        r0, c0, r1, c1 = jittered_box(gt, np.random.default_rng(seed), jitter_px=10)
        assert r0 <= r1 and c0 <= c1


def test_min_side_widens_tiny_targets_inside_the_image():
    gt = square(10, 10, 10, 10)
    assert jittered_box(gt, min_side=2) == (10, 10, 11, 11)  # an odd excess goes down/right
    assert jittered_box(gt, min_side=3) == (9, 9, 11, 11)
    assert jittered_box(square(0, S - 1, 0, S - 1), min_side=3) == (0, S - 3, 2, S - 1)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="non-empty"):
        jittered_box(np.zeros((S, S), bool))
    with pytest.raises(ValueError, match="rng"):
        jittered_box(square(1, 1, 5, 5), jitter_px=2)
    with pytest.raises(ValueError):
        OracleBox(jitter_px=-1)


# ---------------------------------------------------------------------------------------------
# hybrid_click
# ---------------------------------------------------------------------------------------------


def test_hybrid_click_uses_the_largest_error_region_with_the_right_sign():
    gt = square(2, 2, 8, 8) | square(20, 20, 35, 35)
    pred = gt & ~square(2, 2, 8, 8)  # FN: 49 px
    pred |= square(10, 25, 17, 37)  # FP: 8 x 13 = 104 px, the largest
    for seed in range(30):
        row, col, positive = hybrid_click(pred, gt, np.random.default_rng(seed))
        assert not positive and 10 <= row <= 17 and 25 <= col <= 37


def test_hybrid_click_candidates_are_the_deep_pixels():
    gt = square(10, 10, 30, 30)  # depth 11 at the centre
    seen = set()
    for seed in range(200):
        row, col, positive = hybrid_click(np.zeros_like(gt), gt, np.random.default_rng(seed))
        depth = min(row - 9, 31 - row, col - 9, 31 - col)
        assert positive and depth >= 5.5
        seen.add((row, col))
    assert len(seen) > 20
    deepest = hybrid_click(np.zeros_like(gt), gt, np.random.default_rng(0), depth_ratio=1.0)
    assert deepest == (20, 20, True)


def test_hybrid_click_ties_prefer_false_negatives_and_skips_clicked_regions():
    gt = square(2, 2, 6, 6)
    pred = square(20, 20, 24, 24)  # FP with the same area as the FN
    assert hybrid_click(pred, gt, np.random.default_rng(0), depth_ratio=1.0) == (4, 4, True)
    clicked = gt.copy()  # every FN pixel clicked: the FP region is next
    assert hybrid_click(pred, gt, np.random.default_rng(0), clicked, 1.0) == (22, 22, False)
    assert hybrid_click(gt, gt, np.random.default_rng(0)) is None


# ---------------------------------------------------------------------------------------------
# OracleBox on a stub env
# ---------------------------------------------------------------------------------------------


def stub_env(gt: np.ndarray, min_box_size: float = 2.0):
    return StubEnv(StubOracle(gt, obs_size=gt.shape[0], min_box_size=min_box_size))


def test_oracle_box_sends_the_box_once_then_stops():
    gt = square(3, 4, 30, 25)
    policy = OracleBox()
    action = policy.act({}, {"turn": 0, "num_boxes": 0, "invalid_action": None}, stub_env(gt))
    np.testing.assert_array_equal(box_pixels(action), gt)
    after = policy.act({}, {"turn": 1, "num_boxes": 1, "invalid_action": None}, stub_env(gt))
    assert after["kind"] == actions.ActionKind.STOP
    refused = {"turn": 1, "num_boxes": 0, "invalid_action": "no boxes"}
    assert policy.act({}, refused, stub_env(gt))["kind"] == actions.ActionKind.STOP


def test_oracle_box_jitter_is_seeded():
    gt = square(10, 10, 30, 30)
    info = {"turn": 0, "num_boxes": 0, "invalid_action": None}
    policy = OracleBox(jitter_px=5, seed=1)
    first = [policy.act({}, info, stub_env(gt))["box"].tolist() for _ in range(5)]
    policy.seed(1)
    assert first == [policy.act({}, info, stub_env(gt))["box"].tolist() for _ in range(5)]
    assert len({tuple(b) for b in first}) > 1
    other = OracleBox(jitter_px=5, seed=2).act({}, info, stub_env(gt))["box"].tolist()
    assert other != first[0]


# ---------------------------------------------------------------------------------------------
# HybridExpert on a real MedSegEnv with a toy segmenter
# ---------------------------------------------------------------------------------------------


class BrightSegmenter(Segmenter):
    """Toy model: a box selects the bright pixels inside it; a positive click adds the bright
    pixels of a disk around it, a negative click erases a disk."""

    name = "toy-bright"

    def __init__(self, kinds=("box", "point"), radius: float = 4.0) -> None:
        super().__init__(cache=EmbeddingCache())
        self.prompt_kinds = frozenset(kinds)
        self.radius = radius
        self.predict_calls = 0

    def _encode(self, image: np.ndarray) -> Embedding:
        return Embedding(torch.from_numpy(image[..., 0] > 127), image.shape[:2], self.model_id)

    def predict(self, embedding: Embedding, prompts: Prompts, previous_logits=None) -> Prediction:
        self.check_prompts(prompts)
        self.predict_calls += 1
        bright = embedding.features.numpy()
        rr, cc = np.mgrid[: bright.shape[0], : bright.shape[1]] + 0.5
        mask = np.zeros(bright.shape, bool)
        if prompts.box is not None:
            x0, y0, x1, y1 = prompts.box
            mask = bright & (cc >= x0) & (cc <= x1) & (rr >= y0) & (rr <= y1)
        for (x, y), label in zip(prompts.points, prompts.labels, strict=True):
            disk = (cc - x) ** 2 + (rr - y) ** 2 <= self.radius**2
            mask = mask | (disk & bright) if label else mask & ~disk
        return Prediction(torch.zeros(1, 1, 4, 4), mask, 1.0)


def toy_dataset(size: int = 64) -> Dataset:
    """A bright disc (the target) with a bright square just right of its bounding box."""
    rr, cc = np.mgrid[:size, :size]
    samples = []
    for i, (r, c) in enumerate([(30, 26), (34, 30)]):
        gt = (rr - r) ** 2 + (cc - c) ** 2 <= 12**2
        image = np.zeros((size, size, 3), np.uint8)
        image[gt] = 200
        image[r - 8 : r + 8, c + 14 : c + 22] = 200  # distractor
        samples.append(Sample(image, gt, "disc", "toy", "toy", f"toy/{i}"))
    return Dataset(samples, name="toy")


def toy_env(kinds=("box", "point"), max_turns: int = 8) -> MedSegEnv:
    return MedSegEnv(
        dataset=toy_dataset(), segmenter=BrightSegmenter(kinds), obs_size=64, max_turns=max_turns
    )


def run_episode(env: gym.Env, policy, seed: int, index: int = 0):
    """Play one episode; returns the actions and the infos after each step."""
    obs, info = env.reset(seed=seed, options={"sample_index": index})
    acts, infos = [], []
    done = False
    while not done:
        action = policy.act(obs, info, env)
        obs, _, terminated, truncated, info = env.step(action)
        acts.append(action)
        infos.append(info)
        done = terminated or truncated
    return acts, infos


@pytest.mark.parametrize("kinds", [("box", "point"), ("box",), ("point",)])
def test_hybrid_expert_makes_progress_at_every_prompt(kinds):
    env = toy_env(kinds)
    for seed in range(4):
        policy = HybridExpert(box_jitter_frac=0.25, tau=0.01, target_iou=0.97, seed=seed)
        acts, infos = run_episode(env, policy, seed, index=seed % 2)
        first = acts[0]["kind"]
        assert first == (actions.ActionKind.BOX if "box" in kinds else 1)
        for action, info in zip(acts[1:], infos[1:], strict=True):
            assert info["invalid_action"] is None
            if action["kind"] == actions.ActionKind.STOP:
                continue
            assert info["iou"] >= info["iou_prev"] + 0.01  # the progress constraint
            if "point" in kinds:
                assert action["kind"] in (1, 2)
            else:
                assert action["kind"] == actions.ActionKind.BOX
        ious = [i["iou"] for i in infos]
        assert ious == sorted(ious)  # never a step back
        if len(acts) > 2:  # corrections were kept: they helped
            assert ious[-1] > ious[0]
        if acts[-1]["kind"] == actions.ActionKind.STOP and ious[-1] < 0.97:
            assert len(acts) > 1  # the first action is never a stop


def test_hybrid_expert_is_deterministic_given_the_seed():
    env = toy_env()
    runs = [run_episode(env, HybridExpert(box_jitter_frac=0.3, seed=s), s) for s in (5, 5, 6)]
    as_lists = [[(a["kind"], a["point"].tolist(), a["box"].tolist()) for a in r[0]] for r in runs]
    assert as_lists[0] == as_lists[1]
    assert as_lists[0] != as_lists[2]


def test_hybrid_expert_stops_at_target_and_after_max_tries_without_progress():
    env = toy_env(("box",))
    obs, info = env.reset(seed=0, options={"sample_index": 0})
    gt = env.unwrapped.ground_truth
    obs, *_, info = env.step(oracle_box_action(gt, min_side=2))
    assert info["iou"] == 1.0
    seg = env.unwrapped.segmenter
    calls = seg.predict_calls
    assert HybridExpert().act(obs, info, env)["kind"] == actions.ActionKind.STOP
    assert seg.predict_calls == calls  # no preview once the target is reached
    # Nothing beats a perfect box: every candidate is previewed, none kept.
    policy = HybridExpert(target_iou=1.01, max_tries=3, seed=0)
    assert policy.act(obs, info, env)["kind"] == actions.ActionKind.STOP
    assert seg.predict_calls == calls + 3


def test_hybrid_expert_first_box_is_jittered_and_taken_without_preview():
    env = toy_env()
    obs, info = env.reset(seed=0, options={"sample_index": 0})
    seg = env.unwrapped.segmenter
    calls = seg.predict_calls
    boxes = {tuple(HybridExpert(seed=s).act(obs, info, env)["box"].tolist()) for s in range(10)}
    assert len(boxes) > 1 and seg.predict_calls == calls
    exact = tuple(oracle_box_action(env.unwrapped.ground_truth)["box"].tolist())
    for box in boxes:  # within 10% of the 25-px side, i.e. 2 px per side
        assert np.all(np.abs(np.subtract(box, exact)) * 64 <= 2 + 1e-4)


# ---------------------------------------------------------------------------------------------
# The real LiteMedSAM on demo data (box-only): a short smoke test
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # mostly the one-time model load and image encoding, shared with tests/env
def test_oracle_box_and_hybrid_expert_on_litemedsam(small_demo):
    env = gym.make("MedSeg-v0", dataset=small_demo[:1], segmenter="litemedsam", max_turns=3)
    try:
        acts, infos = run_episode(env, OracleBox(), seed=0)
        assert [a["kind"] for a in acts] == [actions.ActionKind.BOX, actions.ActionKind.STOP]
        assert infos[0]["invalid_action"] is None and infos[0]["dice"] > 0.5
        expert = HybridExpert(max_tries=2, seed=0)
        acts, infos = run_episode(env, expert, seed=0)
        assert acts[0]["kind"] == actions.ActionKind.BOX
        assert all(i["invalid_action"] is None for i in infos)
        for action, info in zip(acts[1:], infos[1:], strict=True):
            if action["kind"] != actions.ActionKind.STOP:
                assert action["kind"] == actions.ActionKind.BOX
                assert info["iou"] >= info["iou_prev"] + expert.tau
        mask = env.unwrapped.current_mask
        assert iou(mask, env.unwrapped.ground_truth) == pytest.approx(infos[-1]["iou"])
    finally:
        env.close()
