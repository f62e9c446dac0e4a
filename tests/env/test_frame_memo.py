"""Each env's memo of letterboxed samples is bounded by bytes and stays correct past it."""

from __future__ import annotations

import numpy as np
import pytest

from medseg_env import env as env_module
from medseg_env.data import Dataset
from medseg_env.env import MedSegEnv
from medseg_env.geometry import letterbox


def test_frame_memo_is_bounded_and_evicts_least_recent(
    demo: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    canvas = 64 * 64 * 3 + 64 * 64  # one image and one target at obs_size 64
    monkeypatch.setattr(env_module, "FRAME_MEMO_BYTES", 3 * canvas)
    env = MedSegEnv(dataset=demo, segmenter="classical", obs_size=64)
    for index in range(12):
        env.reset(options={"sample_index": index})
        assert env._framed_bytes <= 3 * canvas and len(env._framed) <= 3
    assert list(env._framed) == [9, 10, 11]
    env.reset(options={"sample_index": 10})  # a hit moves it to the most recent end
    env.reset(options={"sample_index": 0})  # a miss evicts the least recent (9)
    assert list(env._framed) == [11, 10, 0]
    # an evicted sample is letterboxed again, identically
    env.reset(options={"sample_index": 9})
    image, target, _ = letterbox(demo[9], 64)
    assert np.array_equal(env.image, image) and np.array_equal(env.ground_truth, target)
