"""Click simulators: RITM's next click and the IMIS-Bench protocol, on hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from medseg_testing import StubEnv, StubOracle
from scipy.spatial.distance import cdist

from medseg_agents import IMISClicker, RITMClicker
from medseg_agents.clickers import imis_click, next_click
from medseg_agents.simulation import clicked_mask
from medseg_env import actions
from medseg_env.data import Dataset, Sample
from medseg_env.env import MedSegEnv
from medseg_env.geometry import padded_distance
from medseg_env.segmenters import Embedding, EmbeddingCache, Prediction, Prompts, Segmenter

S = 32


def square(r0: int, c0: int, r1: int, c1: int, size: int = S) -> np.ndarray:
    """Inclusive rectangle of True pixels."""
    m = np.zeros((size, size), bool)
    m[r0 : r1 + 1, c0 : c1 + 1] = True
    return m


def empty(size: int = S) -> np.ndarray:
    return np.zeros((size, size), bool)


# ---------------------------------------------------------------------------------------------
# padded_distance / clicked_mask
# ---------------------------------------------------------------------------------------------


def test_padded_distance_counts_the_image_border_as_boundary():
    d = padded_distance(np.ones((5, 5), bool))
    assert d[2, 2] == 3.0 and d[0, 0] == 1.0 and d[0, 2] == 1.0
    assert padded_distance(empty(4)).max() == 0.0


def test_clicked_mask_floors_and_clips_continuous_points():
    m = clicked_mask(np.array([[3.5, 1.5], [0.0, 0.99], [8.0, 8.0]]), (8, 8))
    assert set(map(tuple, np.argwhere(m))) == {(1, 3), (0, 0), (7, 7)}
    assert not clicked_mask(np.zeros((0, 2)), (8, 8)).any()


# ---------------------------------------------------------------------------------------------
# next_click (RITM)
# ---------------------------------------------------------------------------------------------


def test_false_negative_only_gives_a_positive_click_at_the_centre():
    assert next_click(empty(), square(10, 10, 20, 20)) == (15, 15, True)


def test_false_positive_only_gives_a_negative_click_at_the_centre():
    gt = square(2, 2, 6, 6)
    pred = gt | square(15, 17, 25, 27)
    assert next_click(pred, gt) == (20, 22, False)


def test_region_on_the_border_is_not_clicked_on_the_border():
    # Without the padding the deepest pixel would be the corner (0, 0), 7 px from the zeros.
    assert next_click(empty(), square(0, 0, 6, 6)) == (3, 3, True)
    row, col, _ = next_click(empty(), square(0, 0, S - 1, 4))
    assert col == 2 and 0 < row < S - 1


def test_clicked_pixels_are_excluded_and_the_next_best_is_first_in_row_major_order():
    gt = square(10, 10, 20, 20)
    done = empty()
    done[15, 15] = True
    # The 8 neighbours of the centre all lie 5 px from the edge: the first is (14, 14).
    assert next_click(empty(), gt, done) == (14, 14, True)
    done[14, 14] = True
    assert next_click(empty(), gt, done) == (14, 15, True)


def test_even_sized_region_takes_the_first_of_its_central_pixels():
    assert next_click(empty(), square(4, 4, 7, 7)) == (5, 5, True)


def test_equal_regions_click_the_first_in_row_major_order():
    gt = square(20, 2, 24, 6) | square(2, 20, 6, 24)
    assert next_click(empty(), gt) == (4, 22, True)


@pytest.mark.parametrize("fn_first", [True, False])
def test_tie_between_false_negative_and_false_positive_is_a_negative_click(fn_first):
    a, b = square(2, 2, 8, 8), square(20, 20, 26, 26)
    fn, fp = (a, b) if fn_first else (b, a)
    gt, pred = fn, fp  # FN region = gt, FP region = pred, same size and depth
    row, col, positive = next_click(pred, gt)
    assert not positive and fp[row, col] and (row, col) in {(5, 5), (23, 23)}


def test_strictly_deeper_false_negative_wins_over_a_shallower_false_positive():
    gt = square(2, 2, 10, 10)  # depth 5
    pred = square(20, 20, 26, 26)  # depth 4
    assert next_click(pred, gt) == (6, 6, True)


def test_perfect_prediction_or_all_errors_clicked_gives_none():
    gt = square(3, 3, 9, 9)
    assert next_click(gt, gt) is None
    assert next_click(empty(), empty()) is None
    pred = gt.copy()
    pred[5, 5] = False
    done = empty()
    done[5, 5] = True
    assert next_click(pred, gt, done) is None
    assert next_click(pred, gt) == (5, 5, True)


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        next_click(empty(8), empty(9))
    with pytest.raises(ValueError):
        next_click(empty(8), empty(8), clicked=empty(9))


def reference_click(pred, gt, clicked):
    """RITM's rule by brute force: distances to the nearest non-region pixel of a padded grid."""
    h, w = gt.shape
    fn, fp = gt & ~pred, pred & ~gt
    best = []
    for region in (fn, fp):
        padded = np.pad(region, 1)
        inside, outside = np.argwhere(padded), np.argwhere(~padded)
        dist = np.zeros((h + 2, w + 2))
        if len(inside):
            dist[tuple(inside.T)] = cdist(inside, outside).min(axis=1)
        dist = dist[1:-1, 1:-1]
        dist[clicked] = 0
        best.append(dist)
    fn_d, fp_d = best
    if fn_d.max() == 0 and fp_d.max() == 0:
        return None
    positive = fn_d.max() > fp_d.max()
    d = fn_d if positive else fp_d
    rows, cols = np.nonzero(d == d.max())
    return int(rows[0]), int(cols[0]), bool(positive)


def test_matches_a_brute_force_reference_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(25):
        gt = rng.random((12, 14)) < 0.5
        pred = rng.random((12, 14)) < 0.5
        gt[2:9, 3:11] = True  # a large block so that depths differ
        clicked = rng.random((12, 14)) < 0.1
        assert next_click(pred, gt, clicked) == reference_click(pred, gt, clicked)


# ---------------------------------------------------------------------------------------------
# imis_click
# ---------------------------------------------------------------------------------------------


def allowed_first_clicks(gt: np.ndarray, ratio: float = 0.5) -> set[tuple[int, int]]:
    """Foreground pixels no farther from the centroid than the k-th nearest (k = n * ratio)."""
    fg = np.argwhere(gt)
    dist = np.hypot(*(fg - fg.mean(axis=0)).T)
    kth = np.sort(dist)[max(1, int(len(fg) * ratio)) - 1]
    return {tuple(p) for p in fg[dist <= kth + 1e-9]}


def test_imis_first_click_is_near_the_centroid_and_varies_with_the_seed():
    gt = square(4, 2, 10, 29) | square(4, 2, 28, 8)  # an L: the centroid is off the bulk
    allowed = allowed_first_clicks(gt)
    assert len(allowed) < gt.sum() * 0.55
    seen = set()
    for seed in range(300):
        row, col, positive = imis_click(empty(), gt, True, np.random.default_rng(seed))
        assert positive and (row, col) in allowed
        seen.add((row, col))
    assert len(seen) > len(allowed) // 2  # spread over the candidates, not one pixel


def test_imis_first_click_ignores_the_prediction_and_handles_one_pixel():
    gt = empty()
    gt[7, 9] = True
    rng = np.random.default_rng(0)
    assert imis_click(square(0, 0, 20, 20), gt, True, rng) == (7, 9, True)
    assert imis_click(empty(), empty(), True, rng) is None


def test_imis_later_clicks_are_uniform_on_the_error_with_the_right_sign():
    gt = square(5, 5, 6, 6)  # 4 pixels
    pred = gt.copy()
    pred[5, 5] = False  # 1 FN pixel
    pred[20, 20] = pred[20, 21] = True  # 2 FP pixels
    counts: dict[tuple[int, int, bool], int] = {}
    rng = np.random.default_rng(1)
    for _ in range(600):
        click = imis_click(pred, gt, False, rng)
        counts[click] = counts.get(click, 0) + 1
    assert set(counts) == {(5, 5, True), (20, 20, False), (20, 21, False)}
    assert all(150 < n < 250 for n in counts.values())
    assert imis_click(gt, gt, False, rng) is None


# ---------------------------------------------------------------------------------------------
# Policies on a stub env (oracle attributes only)
# ---------------------------------------------------------------------------------------------


def stub_env(gt: np.ndarray, points=(), labels=()):
    pts = np.asarray(points, np.float32).reshape(-1, 2)
    prompts = Prompts(pts, np.asarray(labels, np.int64).reshape(-1))
    return StubEnv(StubOracle(gt, prompts, obs_size=gt.shape[0]))


def obs_of(mask: np.ndarray) -> dict[str, np.ndarray]:
    return {"mask": (mask[..., None] * 255).astype(np.uint8)}


def click_pixel(action) -> tuple[int, int, bool]:
    kind, point, _ = actions.validate(action)
    assert kind in (actions.ActionKind.POSITIVE_CLICK, actions.ActionKind.NEGATIVE_CLICK)
    x, y = point * S
    return int(y), int(x), kind == actions.ActionKind.POSITIVE_CLICK


def test_ritm_policy_clicks_the_pixel_centre_and_skips_clicked_pixels():
    gt = square(10, 10, 20, 20)
    policy = RITMClicker()
    info = {"turn": 0, "num_prompts": 0}
    action = policy.act(obs_of(empty()), info, stub_env(gt))
    assert click_pixel(action) == (15, 15, True)
    np.testing.assert_allclose(action["point"], [15.5 / S, 15.5 / S])
    env = stub_env(gt, points=[[15.5, 15.5]], labels=[1])
    assert click_pixel(policy.act(obs_of(empty()), info, env)) == (14, 14, True)
    assert policy.act(obs_of(gt), info, env)["kind"] == actions.ActionKind.STOP


def test_clickers_need_the_env():
    with pytest.raises(ValueError, match="oracle"):
        RITMClicker().act(obs_of(empty()), {"turn": 0})


@pytest.mark.parametrize("cls", [RITMClicker, IMISClicker])
def test_first_box_option_sends_the_gt_box_first_then_clicks(cls):
    gt = square(10, 12, 20, 18)
    policy = cls(first_box=True, seed=0)
    action = policy.act(obs_of(empty()), {"turn": 0, "num_prompts": 0}, stub_env(gt))
    kind, _, box = actions.validate(action)
    assert kind == actions.ActionKind.BOX
    np.testing.assert_allclose(box * S, [12, 10, 19, 21], atol=1e-4)
    pred = square(11, 12, 20, 18)
    later = policy.act(obs_of(pred), {"turn": 1, "num_prompts": 1}, stub_env(gt))
    row, col, positive = click_pixel(later)
    assert positive and row == 10 and 12 <= col <= 18


def test_imis_policy_first_click_then_error_clicks_and_seeding():
    gt = square(8, 8, 23, 23)
    allowed = allowed_first_clicks(gt)
    first = [
        click_pixel(IMISClicker(seed=s).act(obs_of(empty()), {"num_prompts": 0}, stub_env(gt)))
        for s in range(20)
    ]
    assert all(p and (r, c) in allowed for r, c, p in first)
    assert len(set(first)) > 1
    pred = square(8, 8, 23, 27)  # FP columns 24..27
    policy = IMISClicker(seed=3)
    clicks = [policy.act(obs_of(pred), {"num_prompts": 1}, stub_env(gt)) for _ in range(10)]
    for row, col, positive in map(click_pixel, clicks):
        assert not positive and 24 <= col <= 27 and 8 <= row <= 23
    policy.seed(3)
    again = [policy.act(obs_of(pred), {"num_prompts": 1}, stub_env(gt)) for _ in range(10)]
    assert [c["point"].tolist() for c in clicks] == [c["point"].tolist() for c in again]


# ---------------------------------------------------------------------------------------------
# A real MedSegEnv with a toy click segmenter
# ---------------------------------------------------------------------------------------------


class DiskSegmenter(Segmenter):
    """Positive clicks paint a disk of bright pixels, negative clicks erase a disk."""

    name = "toy-disk"
    prompt_kinds = frozenset({"point"})

    def __init__(self, radius: float = 5.0) -> None:
        super().__init__(cache=EmbeddingCache())
        self.radius = radius

    def _encode(self, image: np.ndarray) -> Embedding:
        return Embedding(torch.from_numpy(image[..., 0] > 127), image.shape[:2], self.model_id)

    def predict(self, embedding: Embedding, prompts: Prompts, previous_logits=None) -> Prediction:
        bright = embedding.features.numpy()
        rr, cc = np.mgrid[: bright.shape[0], : bright.shape[1]] + 0.5
        mask = np.zeros(bright.shape, bool)
        for (x, y), label in zip(prompts.points, prompts.labels, strict=True):
            disk = (cc - x) ** 2 + (rr - y) ** 2 <= self.radius**2
            mask = mask | (disk & bright) if label else mask & ~disk
        return Prediction(torch.zeros(1, 1, 4, 4), mask, 1.0)


def test_ritm_episode_on_the_env_converges_and_stops():
    size = 48
    rr, cc = np.mgrid[:size, :size]
    gt = (rr - 20) ** 2 + (cc - 0) ** 2 <= 9**2  # a half disc on the left border
    image = np.zeros((size, size, 3), np.uint8)
    image[gt] = 200
    sample = Sample(image, gt, "blob", "toy", "toy", "toy/0")
    env = MedSegEnv(
        dataset=Dataset([sample], name="toy"),
        segmenter=DiskSegmenter(),
        obs_size=size,
        max_turns=20,
    )
    policy = RITMClicker()
    obs, info = env.reset(seed=0)
    clicks = []
    while True:
        action = policy.act(obs, info, env)
        if action["kind"] == actions.ActionKind.STOP:
            break
        expected = next_click(
            obs["mask"][..., 0] > 0, gt, clicked_mask(env.prompts.points, gt.shape)
        )
        clicks.append(expected)
        obs, _, terminated, truncated, info = env.step(action)
        assert info["invalid_action"] is None and not terminated
        assert not truncated, f"no convergence after {clicks}"
    assert info["iou"] == 1.0 and len(clicks) >= 2
    assert clicks[0][2] and clicks[0][1] > 0  # positive, and not on the border column


@pytest.mark.parametrize("cls", [RITMClicker, IMISClicker])
def test_stop_iou_ends_the_episode_at_the_threshold(cls):
    gt = square(10, 10, 20, 20)
    policy = cls(stop_iou=0.9, seed=0)
    near = {"turn": 2, "num_prompts": 2, "iou": 0.89}
    assert policy.act(obs_of(empty()), near, stub_env(gt))["kind"] != actions.ActionKind.STOP
    done = {"turn": 2, "num_prompts": 2, "iou": 0.9}
    assert policy.act(obs_of(empty()), done, stub_env(gt))["kind"] == actions.ActionKind.STOP
    with pytest.raises(ValueError, match="stop_iou"):
        cls(stop_iou=1.5)
