"""Issue 10: a reset that fails leaves no half-state; reset and make options are checked; the
oracle and the data are read-only. Real demo data, the real LiteMedSAM for every episode."""

from __future__ import annotations

import copy
import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch
from medseg_testing import assert_same_step, gt_box_action

import medseg_env
from medseg_env import MedSegEnv, actions
from medseg_env.data import Dataset, Sample
from medseg_env.segmenters import EmbeddingCache, LiteMedSAMClicks

# The message a refused call gives after a reset that did not complete.
RESET_FAILED = r"last reset\(\) failed .*call reset\(\)"


class InterruptibleLiteMedSAM(LiteMedSAMClicks):
    """The real click-tuned LiteMedSAM, whose encoding or prediction raises on demand.

    Encoding raises on entry, before the cache is looked up, so these tests share the
    process-wide cache with the rest of the suite (an encode takes seconds on a CPU); to the
    env it is the same failure as one inside the encoder. The cache-write test below goes
    through a real miss, a real encode and an interrupted write.
    """

    encode_error: BaseException | None = None
    predict_error: BaseException | None = None

    def encode(self, image):
        if self.encode_error is not None:
            raise self.encode_error
        return super().encode(image)

    def predict(self, embedding, prompts, previous_logits=None):
        if self.predict_error is not None:
            raise self.predict_error
        return super().predict(embedding, prompts, previous_logits)


class InterruptedCache(EmbeddingCache):
    """An on-disk cache whose ``put`` is interrupted (Ctrl-C) once it has written the entry."""

    interrupt = False

    def put(self, key, embedding):
        super().put(key, embedding)
        if self.interrupt:
            raise KeyboardInterrupt


def fresh_env(dataset: Dataset) -> gym.Env:
    """A new env with the default segmenter: no episode has run in it."""
    return gym.make("MedSeg-v0", dataset=dataset)


def assert_refused_until_reset(env: gym.Env) -> None:
    """Every call that reads or advances the episode raises, naming the failed reset."""
    base = env.unwrapped
    calls = {
        "step": lambda: env.step(actions.box(0.1, 0.1, 0.9, 0.9)),
        "preview": lambda: base.preview(actions.click(0.5, 0.5)),
        "render": env.render,
        "oracle.ground_truth": lambda: env.get_wrapper_attr("oracle").ground_truth,
        "oracle.prompts": lambda: env.get_wrapper_attr("oracle").prompts,
        "sample": lambda: base.sample,
        "current_mask": lambda: base.current_mask,
    }
    for name, call in calls.items():
        with pytest.raises(RuntimeError, match=RESET_FAILED):
            call()
            pytest.fail(f"{name} was not refused")


def assert_same_as_fresh(env: gym.Env, dataset: Dataset, index: int) -> None:
    """A reset on ``index`` and two steps give exactly what an env that saw nothing gives."""
    fresh = fresh_env(dataset)
    got, want = (
        env.reset(options={"sample_index": index}),
        fresh.reset(options={"sample_index": index}),
    )
    assert_same_step(got, want)
    info = got[1]
    assert info["sample_id"] == dataset[index].sample_id
    assert info["turn"] == 0 and info["num_prompts"] == 0 and info["dice"] == 0.0
    assert not got[0]["mask"].any() and not got[0]["prompts"].any()
    # the embedding is the new image's, not the previous episode's
    torch.testing.assert_close(
        env.unwrapped._embedding.features, fresh.unwrapped._embedding.features, rtol=0, atol=0
    )
    box = gt_box_action(fresh)
    got_step, want_step = env.step(box), fresh.step(box)
    assert_same_step(got_step, want_step)
    assert got_step[4]["dice"] > 0.5 and got_step[4]["turn"] == 1
    click = actions.click(0.5, 0.5, positive=False)
    assert_same_step(env.step(click), fresh.step(click))


# --------------------------------------------------------------------- finding 1


@pytest.mark.parametrize(
    "error",
    [KeyboardInterrupt(), RuntimeError("CUDA out of memory")],
    ids=["ctrl-c", "out-of-memory"],
)
def test_a_failed_encode_refuses_step_and_the_next_reset_leaks_nothing(small_demo, error):
    # The reproducer: an episode under way, then a reset whose encoding raises.
    segmenter = InterruptibleLiteMedSAM()
    env = gym.make("MedSeg-v0", dataset=small_demo, segmenter=segmenter, render_mode="rgb_array")
    env.reset(options={"sample_index": 0})
    env.step(actions.click(0.5, 0.5))
    segmenter.encode_error = error
    with pytest.raises(type(error)):
        env.reset(options={"sample_index": 1})
    segmenter.encode_error = None

    assert_refused_until_reset(env)
    with pytest.raises(RuntimeError, match=type(error).__name__):
        env.step(actions.stop())
    assert_same_as_fresh(env, small_demo, 1)


def test_an_interrupted_cache_write_mixes_no_state(small_demo, tmp_path):
    # The worst case: the cache holds the new embedding (in memory and on disk), but the reset
    # that encoded it never finished.
    cache = InterruptedCache(disk_dir=tmp_path)
    env = gym.make("MedSeg-v0", dataset=small_demo, segmenter_kwargs={"cache": cache})
    env.reset(options={"sample_index": 0})
    env.step(gt_box_action(env))
    cache.interrupt = True
    with pytest.raises(KeyboardInterrupt):
        env.reset(options={"sample_index": 2})
    cache.interrupt = False
    assert len(cache) == 2  # sample 2's embedding is in the cache; the reset did not finish

    with pytest.raises(RuntimeError, match=RESET_FAILED):
        env.step(actions.click(0.5, 0.5))
    assert_same_as_fresh(env, small_demo, 2)
    # What the interrupted write left on disk serves a later env as well as a fresh encoding.
    later_cache = EmbeddingCache(disk_dir=tmp_path)
    later = gym.make("MedSeg-v0", dataset=small_demo, segmenter_kwargs={"cache": later_cache})
    assert_same_as_fresh(later, small_demo, 2)


def test_a_failed_reset_leaves_the_random_generator_as_it_was(demo):
    segmenter = InterruptibleLiteMedSAM()
    a = gym.make("MedSeg-v0", dataset=demo, segmenter=segmenter)
    b = gym.make("MedSeg-v0", dataset=demo, segmenter=segmenter)
    first = a.reset(seed=0)[1]["sample_id"]
    assert b.reset(seed=0)[1]["sample_id"] == first
    segmenter.encode_error = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        b.reset()
    segmenter.encode_error = None
    # Retrying gives the episode the interrupted reset would have given, as if it never ran.
    second = a.reset()[1]["sample_id"]
    assert second != first
    assert b.reset()[1]["sample_id"] == second
    assert a.reset()[1]["sample_id"] == b.reset()[1]["sample_id"]


def test_a_failed_prediction_leaves_the_episode_as_it_was(small_demo):
    segmenter = InterruptibleLiteMedSAM()
    env = gym.make("MedSeg-v0", dataset=small_demo, segmenter=segmenter)
    env.reset(options={"sample_index": 0})
    box = gt_box_action(env)
    segmenter.predict_error = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        env.step(box)
    segmenter.predict_error = None
    fresh = fresh_env(small_demo)
    fresh.reset(options={"sample_index": 0})
    got, want = env.step(box), fresh.step(box)
    assert got[4]["turn"] == 1
    assert_same_step(got, want)


# --------------------------------------------------------------------- finding 5: reset options


OTHER = "<the sample_id of sample 1>"
BAD_RESET_OPTIONS = {
    "mistyped key": (
        {"sample_idx": 1},
        ValueError,
        r"unknown reset option.*'sample_idx'.*'sample_index'",
    ),
    "extra key": ({"sample_id": OTHER, "seed": 3}, ValueError, r"'seed'.*known.*'sample_id'"),
    "float": (
        {"sample_index": 2.7},
        TypeError,
        r"sample_index must be an int .*got 2\.7 \(float\)",
    ),
    "whole float": ({"sample_index": 1.0}, TypeError, r"sample_index .*got 1\.0"),
    "str": ({"sample_index": "1"}, TypeError, r"sample_index .*got '1' \(str\)"),
    "bool": ({"sample_index": True}, TypeError, r"sample_index .*got True \(bool\)"),
    "numpy bool": ({"sample_index": np.bool_(True)}, TypeError, r"sample_index .*got np\.True_"),
    "array": ({"sample_index": np.array([1])}, TypeError, r"sample_index .*ndarray"),
    "None": ({"sample_index": None}, TypeError, r"sample_index .*got None"),
    "negative": ({"sample_index": -1}, ValueError, r"sample_index=-1 is out of range.*\[0, 3\)"),
    "too large": ({"sample_index": 3}, ValueError, r"sample_index=3 is out of range"),
    "id not a str": ({"sample_id": 1}, TypeError, r"sample_id must be a str; got 1 \(int\)"),
    "unknown id": ({"sample_id": "nope"}, ValueError, r"sample_id='nope'.*no such sample"),
    "disagreeing": (
        {"sample_index": 0, "sample_id": OTHER},
        ValueError,
        r"sample_index=0 and sample_id='.*' name different samples",
    ),
    "not a dict": (["sample_index", 0], TypeError, r"reset options must be a dict"),
}


@pytest.mark.parametrize("case", BAD_RESET_OPTIONS)
def test_bad_reset_options_are_refused_and_change_nothing(env, small_demo, case):
    options, error, message = BAD_RESET_OPTIONS[case]
    if isinstance(options, dict):
        options = {k: small_demo[1].sample_id if v is OTHER else v for k, v in options.items()}
    assert len(small_demo) == 3
    env.reset(seed=0, options={"sample_index": 0})
    env.step(gt_box_action(env))
    base = env.unwrapped
    rng = copy.deepcopy(base.np_random.bit_generator.state)
    with pytest.raises(error, match=message):
        env.reset(seed=123, options=options)
    # the episode goes on: same sample, turn 2, and the seed was not applied
    assert base.np_random.bit_generator.state == rng and base.np_random_seed == 0
    _, _, _, _, info = env.step(actions.stop())
    assert info["turn"] == 2 and info["sample_id"] == small_demo[0].sample_id
    assert info["num_boxes"] == 1 and info["dice"] > 0.5


def test_good_reset_options_are_taken(env, small_demo):
    target = small_demo[2]
    for options in (
        {"sample_index": np.int64(2)},
        {"sample_index": np.uint8(2)},
        {"sample_id": np.str_(target.sample_id)},
        {"sample_index": 2, "sample_id": target.sample_id},
    ):
        _, info = env.reset(options=options)
        assert info["sample_index"] == 2 and type(info["sample_index"]) is int
        assert info["sample_id"] == target.sample_id
    # an unknown sample_id is a ValueError like every bad option, and still the KeyError it was
    with pytest.raises(KeyError) as info:
        env.reset(options={"sample_id": "nope"})
    assert isinstance(info.value, ValueError)
    _, info = env.reset(seed=1, options={})
    assert info["sample_id"] == env.reset(seed=1)[1]["sample_id"]


# --------------------------------------------------------------------- findings 7, 8: make options

BAD_MAKE_OPTIONS = [
    ({"frameskip": 4}, TypeError, r"unexpected keyword argument 'frameskip'"),
    ({"min_box_size": float("nan")}, ValueError, r"min_box_size must be a finite .*got nan"),
    ({"min_box_size": -1.0}, ValueError, r"min_box_size must be .*got -1\.0"),
    ({"min_box_size": float("inf")}, ValueError, r"min_box_size must be .*got inf"),
    ({"min_box_size": 257}, ValueError, r"min_box_size must be .* to obs_size=256; got 257"),
    ({"min_box_size": "2"}, TypeError, r"min_box_size must be .*got '2' \(str\)"),
    ({"min_box_size": True}, TypeError, r"min_box_size must be .*got True \(bool\)"),
    ({"min_box_size": None}, TypeError, r"min_box_size must be .*got None"),
    ({"obs_size": 64.0}, TypeError, r"obs_size must be an int >= 16; got 64\.0 \(float\)"),
    ({"obs_size": 64.7}, TypeError, r"obs_size must be an int .*got 64\.7"),
    ({"obs_size": "64"}, TypeError, r"obs_size must be an int .*got '64' \(str\)"),
    ({"obs_size": True}, TypeError, r"obs_size must be an int .*got True \(bool\)"),
    ({"obs_size": 8}, ValueError, r"obs_size must be an int >= 16; got 8"),
    ({"max_turns": 3.0}, TypeError, r"max_turns must be an int >= 1; got 3\.0 \(float\)"),
    ({"max_turns": np.float64(2.5)}, TypeError, r"max_turns must be an int .*got np\.float64"),
    ({"max_turns": np.bool_(True)}, TypeError, r"max_turns must be an int .*bool"),
    ({"max_turns": 0}, ValueError, r"max_turns must be an int >= 1; got 0"),
    ({"segmenter_kwargs": ["cpu"]}, TypeError, r"segmenter_kwargs must be a mapping"),
]


@pytest.mark.parametrize(
    "config, error, message", BAD_MAKE_OPTIONS, ids=[str(c[0]) for c in BAD_MAKE_OPTIONS]
)
def test_bad_make_options_are_refused_before_anything_is_loaded(small_demo, config, error, message):
    # segmenter="nope" would fail later: the option is checked before the model is looked up
    for make in (MedSegEnv, lambda **kw: gym.make("MedSeg-v0", **kw)):
        with pytest.raises(error, match=message):
            make(dataset=small_demo, segmenter="nope", **config)


def test_unknown_keywords_are_named_with_the_known_options():
    with pytest.raises(TypeError) as info:
        MedSegEnv(frameskip=4, max_turn=3)
    message = str(info.value)
    assert message.startswith("MedSegEnv.__init__() got an unexpected keyword argument")
    for word in ("'frameskip'", "'max_turn'", "max_turns", "obs_size", "render_mode"):
        assert word in message


@pytest.mark.parametrize("env_id", medseg_env.ENV_IDS)
def test_every_registered_env_refuses_an_unknown_keyword_as_python_does(env_id, small_demo):
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'frameskip'"):
        gym.make(env_id, dataset=small_demo, frameskip=4)


def test_good_make_options_are_kept_as_python_numbers(small_demo):
    env = MedSegEnv(
        dataset=small_demo, obs_size=np.int64(64), max_turns=np.int32(3), min_box_size=np.float32(0)
    )
    assert env.obs_size == 64 and type(env.obs_size) is int
    assert env.max_turns == 3 and type(env.max_turns) is int
    assert env.min_box_size == 0.0 and type(env.min_box_size) is float
    # the recorded configuration holds the checked values (plain numbers, JSON-ready)
    assert [type(env.config[k]) for k in ("obs_size", "max_turns", "min_box_size")] == [
        int,
        int,
        float,
    ]
    assert env.observation_space["image"].shape == (64, 64, 3)
    assert MedSegEnv(dataset=small_demo, min_box_size=3).min_box_size == 3.0


def test_a_client_that_drops_unexpected_keywords_and_retries_builds_the_env(small_demo):
    # torchrl's GymEnv passes frameskip= and, on a TypeError that mentions it, drops it and
    # tries again (torchrl.envs.libs.gym.GymEnv._build_env); this is that loop.
    kwargs = {"dataset": small_demo, "frameskip": 4}
    dropped = []
    while True:
        try:
            env = gym.make("MedSeg-v0", **kwargs)
            break
        except TypeError as err:
            if "unexpected keyword argument 'frameskip'" not in str(err):
                raise
            dropped.append(kwargs.pop("frameskip"))
    assert dropped == [4]
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (256, 256, 3)


def test_torchrl_gymenv_builds_and_runs_the_env(small_demo):
    pytest.importorskip("torchrl")
    from torchrl.envs import GymEnv

    # torchrl passes frameskip=2 to gym.make; on our TypeError it drops it and skips frames
    # in its own wrapper instead (it would stay 1 had the env taken or swallowed the keyword)
    env = GymEnv("MedSeg-v0", dataset=small_demo, max_turns=3, frame_skip=2)
    assert env.wrapper_frame_skip == 2
    td = env.reset()
    assert tuple(td["image"].shape) == (256, 256, 3)
    rollout = env.rollout(3)
    assert rollout["next", "done"][-1].item()


# --------------------------------------------------------------------- finding 5: read-only data


def test_the_oracle_and_the_data_are_read_only(env, small_demo):
    obs, info = env.reset(options={"sample_index": 0})
    base = env.unwrapped
    want_gt, want_obs = base.ground_truth.copy(), copy.deepcopy(obs)

    for gt in (base.ground_truth, env.get_wrapper_attr("oracle").ground_truth):
        with pytest.raises(ValueError, match="read-only"):
            gt[:] = True
        with pytest.raises(ValueError):
            gt.flags.writeable = True  # nor can it be made writable again
    sample = base.sample
    assert sample is small_demo[0]
    for array in (sample.mask, sample.image):
        with pytest.raises(ValueError, match="read-only"):
            array[:] = True
    for s in small_demo:
        assert not s.image.flags.writeable and not s.mask.flags.writeable

    # what the env hands out is fresh: writing into it changes nothing the env keeps
    for value in obs.values():
        value[...] = 7
    obs, _, _, _, info = env.step(actions.click(0.5, 0.5))
    assert not any(isinstance(v, np.ndarray) and v.flags.writeable for v in info.values())
    points = base.prompts.points.copy()
    base.prompts.points[:] = 0
    base.current_mask[:] = True
    np.testing.assert_array_equal(base.prompts.points, points)
    np.testing.assert_array_equal(base.current_mask, obs["mask"][..., 0] > 0)

    # a later episode on the same sample sees the same data
    obs, _ = env.reset(options={"sample_index": 0})
    np.testing.assert_array_equal(base.ground_truth, want_gt)
    for key, value in want_obs.items():
        np.testing.assert_array_equal(obs[key], value)

    # copies and pickles of the env and its samples stay read-only
    clone = pickle.loads(pickle.dumps(env))
    clone.reset(options={"sample_index": 0})
    with pytest.raises(ValueError, match="read-only"):
        clone.unwrapped.sample.mask[:] = True
    with pytest.raises(ValueError, match="read-only"):
        clone.unwrapped.ground_truth[:] = True


def test_a_sample_freezes_what_it_owns_and_copies_views():
    volume = np.zeros((2, 8, 8, 3), np.uint8)
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    sample = Sample(volume[0], mask, "t", "CT", "src", "src/t")
    # a view is copied: the caller's volume stays writable and cannot reach the sample
    assert volume.flags.writeable and sample.image.flags.owndata
    volume[0] = 9
    assert not sample.image.any() and not sample.image.flags.writeable
    # an array the sample owns is frozen in place, not copied
    assert sample.mask is mask and not mask.flags.writeable
    for twin in (copy.copy(sample), copy.deepcopy(sample), pickle.loads(pickle.dumps(sample))):
        assert not twin.image.flags.writeable and not twin.mask.flags.writeable
        np.testing.assert_array_equal(twin.mask, mask)
        assert twin.sample_id == sample.sample_id and twin.spacing == (1.0, 1.0)
    # a sample that fails validation freezes nothing of the caller's
    empty = np.zeros((8, 8), bool)
    with pytest.raises(ValueError, match="empty"):
        Sample(np.zeros((8, 8, 3), np.uint8), empty, "t", "CT", "src", "src/t")
    assert empty.flags.writeable


def test_loaded_samples_of_one_image_share_one_read_only_array(demo):
    by_image: dict[int, list[Sample]] = {}
    for sample in demo:
        by_image.setdefault(id(sample.image), []).append(sample)
    assert max(len(group) for group in by_image.values()) > 1  # shared, not copied per target
    assert all(not s.image.flags.writeable and s.image.flags.owndata for s in demo)
