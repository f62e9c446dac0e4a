"""``MedSegVectorEnv``: N episodes, one batched segmenter call per step, each equal to a single env.

Real data (the bundled demo) and real models: the weight-free ``classical`` backend, where the
vector env must equal single envs exactly, and the default ``litemedsam_clicks``, whose batched
decoder must agree with single calls within ``BATCH_LOGIT_ATOL`` (masks at Dice >= 0.999).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import concatenate, create_empty_array
from medseg_testing import mask_box

import medseg_env  # noqa: F401  (registers the envs)
from medseg_env import actions as A
from medseg_env.data import Dataset
from medseg_env.geometry import letterbox
from medseg_env.segmenters import (
    EmbeddingCache,
    PredictRequest,
    Prompts,
    Segmenter,
    make_segmenter,
)
from medseg_env.segmenters.decoders import BATCH_LOGIT_ATOL
from medseg_env.wrappers.vector_env import MedSegVectorEnv

N = 4
STEPS = 9
SEEDS = (0, 1, 2)
OBS = 64
MAX_TURNS = 3
MIN_DICE = 0.999


def script(i: int) -> list[A.Action]:
    """Sub-env ``i``'s actions: boxes, clicks, a degenerate box (invalid) and stops.

    With ``MAX_TURNS`` = 3 every sub-env ends two episodes (by the turn limit or a stop) and
    starts two more; prompts differ between sub-envs but often share a structure (the number
    of clicks, a box, a mask input), so the batched decoder decodes real groups.
    """
    d = 0.04 * i
    box = A.box(0.15 + d, 0.2, 0.75, 0.8 - d)
    other_box = A.box(0.3, 0.25 + d, 0.9 - d, 0.7)
    pos = A.click(0.45 + d, 0.5)
    neg = A.click(0.2, 0.25 + d, positive=False)
    bad = A.box(0.5, 0.5, 0.5 + 1e-3, 0.9)  # 0.06 px wide: below min_box_size
    seq = [box, pos, bad, neg, other_box, A.stop(), pos, box, neg]
    if i % 2:
        seq[1] = A.stop()
    if i == 3:
        seq[4] = bad
    assert len(seq) == STEPS
    return seq


def batch_actions(space: gym.Space, actions: list[Any]) -> Any:
    return concatenate(space, actions, create_empty_array(space, len(actions)))


def info_at(infos: dict[str, Any], i: int) -> dict[str, Any]:
    """Sub-env ``i``'s info out of Gymnasium's vector form (``key`` + ``_key`` mask)."""
    out = {}
    for key, value in infos.items():
        if key.startswith("_") or not infos[f"_{key}"][i]:
            continue
        out[key] = info_at(value, i) if isinstance(value, dict) else value[i]
    return out


def obs_at(obs: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {key: value[i] for key, value in obs.items()}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def assert_same(got: Any, want: Any, exact: bool, where: str) -> None:
    """Values of one step equal; ``exact=False`` allows batched-decoder float noise."""
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for key in want:
            assert_same(got[key], want[key], exact, f"{where}[{key!r}]")
    elif isinstance(want, np.ndarray):
        if exact or where.endswith("['image']") or where.endswith("['turn']"):
            np.testing.assert_array_equal(got, want, err_msg=where)
        else:  # mask and prompt maps: the same pixels up to the tolerance
            assert dice(got, want) >= MIN_DICE, where
    elif isinstance(want, float | np.floating) and not exact:
        assert abs(float(got) - float(want)) <= 2e-3, (where, got, want)
    else:
        assert got == want, (where, got, want)


def reference(config: dict[str, Any], seed: int) -> list[list[tuple]]:
    """Each sub-env's run as a single ``gym.make("MedSeg-v0")`` env with seed ``seed + i``.

    Gymnasium's NEXT_STEP autoreset, by hand: the step after an episode ended is a reset
    (reward 0, not terminated or truncated), and that step's action is not taken.
    """
    runs = []
    for i in range(N):
        env = gym.make("MedSeg-v0", **config)
        obs, info = env.reset(seed=seed + i)
        run: list[tuple] = [(obs, info)]
        ended = False
        for action in script(i):
            if ended:
                obs, info = env.reset()
                run.append((obs, 0.0, False, False, info))
                ended = False
            else:
                result = env.step(action)
                run.append(result)
                ended = result[2] or result[3]
        runs.append(run)
        env.close()
    return runs


class CallCounter:
    """Counts the requests that reach the segmenter, per ``predict_batch`` / ``predict`` call."""

    def __init__(self, segmenter: Segmenter) -> None:
        self.batches: list[int] = []
        self.predicts = 0
        batch, predict = segmenter.predict_batch, segmenter.predict

        def predict_batch(requests):
            self.batches.append(len(requests))
            return batch(requests)

        def counted_predict(*args, **kwargs):
            self.predicts += 1
            return predict(*args, **kwargs)

        segmenter.predict_batch = predict_batch  # type: ignore[method-assign]
        segmenter.predict = counted_predict  # type: ignore[method-assign]


def expected_calls(runs: list[list[tuple]], step: int) -> int:
    """How many sub-envs' turns at ``step`` need the model: prompts that are valid, not resets."""
    count = 0
    for i, run in enumerate(runs):
        previous, result = run[step], run[step + 1]
        reset_step = len(previous) == 5 and (previous[2] or previous[3])
        kind = script(i)[step]["kind"]
        if not reset_step and kind != A.ActionKind.STOP and result[4]["invalid_action"] is None:
            count += 1
    return count


def run_vector_equality(small_demo: Dataset, segmenter: str, batch: bool, exact: bool) -> None:
    config = {"dataset": small_demo, "segmenter": segmenter, "obs_size": OBS}
    config["max_turns"] = MAX_TURNS
    venv = gym.make_vec("MedSeg-v0", num_envs=N, batch=batch, **config)
    assert isinstance(venv, MedSegVectorEnv) and venv.batching is batch
    counter = CallCounter(venv.segmenter)
    for seed in SEEDS:
        runs = reference(config, seed)
        obs, infos = venv.reset(seed=seed)
        for i in range(N):
            want_obs, want_info = runs[i][0]
            assert_same(obs_at(obs, i), want_obs, exact, f"seed {seed} env {i} reset obs")
            assert_same(info_at(infos, i), want_info, exact, f"seed {seed} env {i} reset info")
        ended = 0
        for t in range(STEPS):
            counter.batches.clear()
            counter.predicts = 0
            actions = batch_actions(venv.single_action_space, [script(i)[t] for i in range(N)])
            obs, rewards, terminated, truncated, infos = venv.step(actions)
            for i in range(N):
                want = runs[i][t + 1]
                where = f"seed {seed} env {i} step {t}"
                assert_same(obs_at(obs, i), want[0], exact, f"{where} obs")
                assert_same(float(rewards[i]), float(want[1]), exact, f"{where} reward")
                assert bool(terminated[i]) == want[2] and bool(truncated[i]) == want[3], where
                assert_same(info_at(infos, i), want[4], exact, f"{where} info")
            ended += int(np.sum(terminated | truncated))
            # one segmenter call for the step, holding exactly the turns that need the model
            calls = expected_calls(runs, t)
            if batch:
                assert counter.batches == ([calls] if calls else []), (seed, t)
            else:
                assert counter.batches == [] and counter.predicts == calls, (seed, t)
        assert ended >= 2 * N  # every sub-env ended two episodes and started two more
    venv.close()


@pytest.mark.parametrize("batch", [True, False])
def test_vector_env_equals_single_envs_classical(small_demo, batch):
    """Exact: observations, rewards, flags and infos of every sub-env, 3 seeds, autoreset."""
    run_vector_equality(small_demo, "classical", batch, exact=True)


def test_vector_env_equals_single_envs_litemedsam_clicks_batched(small_demo):
    """The real default model with the batched decoder: equal within the documented tolerance."""
    run_vector_equality(small_demo, "litemedsam_clicks", batch=True, exact=False)


# --------------------------------------------------------------------- predict_batch
def _canvases(small_demo: Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    """The demo samples as the env sees them (so the env tests' cached embeddings serve)."""
    return [letterbox(sample, OBS)[:2] for sample in small_demo]


def _requests(seg: Segmenter, images: list[tuple[np.ndarray, np.ndarray]]) -> list[PredictRequest]:
    """Boxes, clicks, both, with and without mask input, with candidates, on every image."""
    requests = []
    for image, target in images:
        emb = seg.encode(image)
        points = np.argwhere(target)
        r, c = points[len(points) // 2]
        r2, c2 = points[len(points) // 3]
        boxed = Prompts(box=mask_box(target))
        clicks = Prompts().with_point(c + 0.5, r + 0.5, True)
        two = clicks.with_point(c2 + 0.5, r2 + 0.5, False)
        logits = seg.predict(emb, boxed).logits
        if seg.supports("point"):
            requests += [
                PredictRequest(emb, boxed.with_point(c + 0.5, r + 0.5, True), logits),
                PredictRequest(emb, clicks),
                PredictRequest(emb, clicks, logits),
                PredictRequest(emb, two, logits),
                PredictRequest(emb, clicks, logits, True),
            ]
        requests += [PredictRequest(emb, boxed), PredictRequest(emb, boxed, None, True)]
    return requests


def assert_batch_matches_single(seg: Segmenter, requests: list[PredictRequest]) -> float:
    single = [seg.predict_request(request) for request in requests]
    batched = seg.predict_batch(requests)
    assert len(batched) == len(requests)
    worst = 0.0
    for one, many in zip(single, batched, strict=True):
        assert many.logits.shape == one.logits.shape and many.mask.shape == one.mask.shape
        worst = max(worst, float((many.logits - one.logits).abs().max()))
        assert dice(many.mask, one.mask) >= MIN_DICE
        assert abs(many.score - one.score) <= 1e-4
        # kept logits do not hold the batch's whole tensor
        assert many.logits.untyped_storage().nbytes() == many.logits.nbytes
    assert worst <= BATCH_LOGIT_ATOL
    return worst


def test_predict_batch_equals_single_predicts_litemedsam_clicks(small_demo):
    """Real weights, three real images: 21 requests in 7 prompt structures, 3 of each, through
    the eager decoder's batched forward (the ONNX decoder, the CPU default, decodes one request
    at a time)."""
    seg = make_segmenter("litemedsam_clicks", decoder="eager")
    requests = _requests(seg, _canvases(small_demo))
    groups: list[int] = []
    real = seg.mask_decoder.forward

    def counted(*args, **kwargs):
        groups.append(1)
        return real(*args, **kwargs)

    seg.mask_decoder.forward = counted  # type: ignore[method-assign]
    worst = assert_batch_matches_single(seg, requests)
    # the single calls used the decoder's own forward 21 times; the batch none: every group of
    # like-shaped prompts went through decode_batch at once
    assert len(groups) == len(requests)
    print(f"max |batched - single| logit: {worst:.2e}")  # ~4e-5 here; BATCH_LOGIT_ATOL bounds it


def test_predict_batch_for_sam_decoder_with_one_image_per_prompt():
    """segment-anything's MaskDecoder (not LiteMedSAM's vendored one), random weights."""
    seg = make_segmenter(
        "sam",
        model_type={"embed_dim": 64, "depth": 2, "num_heads": 2, "global_attn": (1,)},
        image_size=256,
        allow_random_init=True,
        cache=EmbeddingCache(),
    )
    rng = np.random.default_rng(0)
    embs = [
        seg.encode(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((60, 80), (70, 50))
    ]
    requests = [
        PredictRequest(
            emb, Prompts(box=np.array([5, 6, 40, 45], np.float32)).with_point(20, 20, True)
        )
        for emb in embs
    ]
    assert_batch_matches_single(seg, requests)


def test_default_predict_batch_is_a_loop_of_predict(small_demo):
    seg = make_segmenter("classical", cache=EmbeddingCache())
    requests = _requests(seg, _canvases(small_demo))
    single = [seg.predict_request(request) for request in requests]
    for one, many in zip(single, seg.predict_batch(requests), strict=True):
        torch.testing.assert_close(many.logits, one.logits, rtol=0, atol=0)
        np.testing.assert_array_equal(many.mask, one.mask)


# --------------------------------------------------------------------- calls, errors
def test_invalid_actions_and_stops_never_reach_the_segmenter(small_demo):
    venv = MedSegVectorEnv(
        3, batch=True, dataset=small_demo, segmenter="classical", obs_size=OBS, max_turns=4
    )
    counter = CallCounter(venv.segmenter)
    venv.reset(seed=0)
    bad = A.box(0.1, 0.1, 0.1, 0.9)
    space = venv.single_action_space
    venv.step(batch_actions(space, [bad, bad, bad]))
    venv.step(batch_actions(space, [bad, A.stop(), bad]))
    assert counter.batches == [] and counter.predicts == 0
    _, _, _, _, infos = venv.step(
        batch_actions(space, [A.click(0.5, 0.5), bad, A.box(0.1, 0.1, 0.9, 0.9)])
    )
    # env 1 stopped last step: this step resets it; env 0 and 2 ask the model, in one call
    assert counter.batches == [2] and counter.predicts == 2
    assert list(infos["turn"]) == [3, 0, 3]


def test_a_failed_step_changes_no_sub_env(small_demo):
    """An action outside the space, or a segmenter error, raises before anything changes."""
    config = {"dataset": small_demo, "segmenter": "classical", "obs_size": OBS}
    venv = MedSegVectorEnv(2, batch=True, **config)
    twin = MedSegVectorEnv(2, batch=True, **config)
    venv.reset(seed=5)
    twin.reset(seed=5)
    space = venv.single_action_space
    good = batch_actions(space, [A.box(0.1, 0.1, 0.8, 0.8), A.click(0.4, 0.5)])
    outside = {key: value.copy() for key, value in good.items()}
    outside["point"][1] = [1.5, 0.5]
    with pytest.raises(ValueError, match="outside"):
        venv.step(outside)
    real = venv.segmenter.predict_batch

    def fail(requests):
        raise RuntimeError("decoder down")

    venv.segmenter.predict_batch = fail  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="decoder down"):
        venv.step(good)
    venv.segmenter.predict_batch = real  # type: ignore[method-assign]
    got, want = venv.step(good), twin.step(good)
    for i in range(2):
        assert_same(obs_at(got[0], i), obs_at(want[0], i), True, "obs")
        assert_same(info_at(got[4], i), info_at(want[4], i), True, "info")
    np.testing.assert_array_equal(got[1], want[1])


def test_same_step_autoreset_reports_the_final_observation(small_demo):
    config = {"dataset": small_demo, "segmenter": "classical", "obs_size": OBS}
    next_step = MedSegVectorEnv(2, **config)
    same_step = MedSegVectorEnv(2, autoreset_mode="SameStep", **config)
    assert same_step.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    space = next_step.single_action_space
    for venv in (next_step, same_step):
        venv.reset(seed=3)
        venv.step(batch_actions(space, [A.box(0.1, 0.1, 0.8, 0.8), A.click(0.4, 0.5)]))
    stop = batch_actions(space, [A.stop(), A.click(0.6, 0.5)])
    final, _, terminated, _, _ = next_step.step(stop)
    obs, _, terminated_too, _, infos = same_step.step(stop)
    assert list(terminated) == list(terminated_too) == [True, False]
    assert infos["_final_obs"].tolist() == [True, False]
    np.testing.assert_array_equal(infos["final_obs"][0]["mask"], final["mask"][0])
    reset_obs, *_ = next_step.step(stop)  # NEXT_STEP: the reset comes one step later
    np.testing.assert_array_equal(obs["image"][0], reset_obs["image"][0])
    assert obs["turn"][0, 0] == 0


# --------------------------------------------------------------------- make_vec, SB3
def test_make_vec_builds_the_batched_env_for_every_flat_form(small_demo):
    config = {"dataset": small_demo, "segmenter": "classical", "obs_size": OBS}
    venv = gym.make_vec("MedSeg-v0", num_envs=2, **config)
    assert isinstance(venv, MedSegVectorEnv)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert venv.envs[0].unwrapped.segmenter is venv.envs[1].unwrapped.segmenter
    assert venv.batching is False  # "auto" on a CPU: one predict per request
    for env_id, shape in (("MedSeg-MultiDiscrete-v0", (2, 5)), ("MedSeg-Continuous-v0", (2, 7))):
        venv = gym.make_vec(env_id, num_envs=2, batch=True, **config)
        assert isinstance(venv, MedSegVectorEnv) and venv.action_space.shape == shape
        venv.reset(seed=0)
        venv.action_space.seed(0)
        obs, rewards, *_ = venv.step(venv.action_space.sample())
        assert obs["mask"].shape == (2, OBS, OBS, 1) and rewards.shape == (2,)
    # each sub-env's action wrapper translates: a MultiDiscrete box on the grid
    venv = gym.make_vec("MedSeg-MultiDiscrete-v0", num_envs=2, grid=8, **config)
    venv.reset(seed=0)
    _, _, _, _, infos = venv.step(np.array([[3, 1, 1, 6, 6], [3, 2, 2, 2, 2]]))
    assert infos["num_boxes"].tolist() == [1, 1]
    sync = gym.make_vec("MedSeg-v0", num_envs=2, vectorization_mode="sync", **config)
    assert isinstance(sync, SyncVectorEnv)


def test_vector_env_refuses_wrappers_it_cannot_split(small_demo):
    def build(render_mode=None, **config):
        return gym.wrappers.TransformReward(medseg_env.MedSegEnv(**config), lambda r: 2 * r)

    with pytest.raises(TypeError, match="action wrappers"):
        MedSegVectorEnv(2, env_fn=build, dataset=small_demo, segmenter="classical")


def test_sb3_adapter_auto_resets_like_the_gymnasium_vector_env(small_demo):
    """SB3's same-step reset: ``terminal_observation`` is the vector env's last observation,
    the returned one its next reset; rewards and infos are the same."""
    from medseg_env.wrappers.vector_env import SB3VecEnv

    config = {"dataset": small_demo, "segmenter": "classical", "obs_size": OBS, "max_turns": 3}
    gvenv = gym.make_vec("MedSeg-MultiDiscrete-v0", num_envs=2, **config)
    sb3 = SB3VecEnv(gym.make_vec("MedSeg-MultiDiscrete-v0", num_envs=2, **config))
    box, click, neg, stop = [3, 5, 5, 25, 25], [1, 15, 15, 0, 0], [2, 8, 20, 0, 0], [0] * 5
    # both sub-envs end together: truncated at turn 3, then a stop, then truncated again
    rows = [box, click, neg, box, stop, click, box, neg]
    other = [click, box, click, neg, stop, box, click, click]
    sb3.seed(7)
    obs = sb3.reset()
    want, _ = gvenv.reset(seed=7)
    for key in want:
        np.testing.assert_array_equal(obs[key], want[key])
    ends = []
    for t, actions in enumerate(zip(rows, other, strict=True)):
        actions = np.array(actions)
        obs, rewards, dones, infos = sb3.step(actions)
        g_obs, g_rewards, g_term, g_trunc, g_infos = gvenv.step(actions)
        np.testing.assert_array_equal(rewards, g_rewards.astype(np.float32))
        np.testing.assert_array_equal(dones, g_term | g_trunc)
        for i in range(2):
            for key, value in info_at(g_infos, i).items():
                assert_same(infos[i][key], value, True, f"step {t} env {i} {key}")
            assert infos[i]["TimeLimit.truncated"] == bool(g_trunc[i] and not g_term[i])
        if dones.any():
            assert dones.all()
            ends.append((t, bool(g_trunc[0])))
            for i in range(2):
                for key in g_obs:
                    np.testing.assert_array_equal(
                        infos[i]["terminal_observation"][key], g_obs[key][i]
                    )
            g_obs, g_rewards, *_, g_infos = gvenv.step(actions)  # NEXT_STEP: the reset step
            assert not g_rewards.any()
            for i in range(2):
                assert_same(sb3.reset_infos[i], info_at(g_infos, i), True, "reset info")
        for key in g_obs:
            np.testing.assert_array_equal(obs[key], g_obs[key])
    assert ends == [(2, True), (4, False), (7, True)]


def test_sb3_ppo_learns_through_the_adapter(small_demo):
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import Logger

    from medseg_env.wrappers.vector_env import SB3VecEnv

    venv = SB3VecEnv(
        gym.make_vec(
            "MedSeg-MultiDiscrete-v0",
            num_envs=2,
            dataset=small_demo,
            segmenter="classical",
            obs_size=OBS,
            max_turns=3,
        )
    )
    model = PPO("MultiInputPolicy", venv, n_steps=8, batch_size=8, n_epochs=1, seed=0, device="cpu")
    model.set_logger(Logger(folder=None, output_formats=[]))
    model.learn(total_timesteps=16)
    assert model.num_timesteps >= 16
    obs = venv.reset()
    actions, _ = model.predict(obs, deterministic=True)
    assert actions.shape == (2, 5)
    venv.close()
