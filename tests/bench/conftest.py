"""Fixtures of the benchmark tests: a tiny dataset on one image and cheap test policies.

Every sample shares one demo image, so the real LiteMedSAM encodes once per test session; the
policies make at most one decoder call per episode.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from medseg_agents import Policy
from medseg_env import actions as A
from medseg_env.data import Dataset
from medseg_env.geometry import box_from_mask


@pytest.fixture(autouse=True)
def _no_writes_outside_tmp(tmp_path, monkeypatch):
    """Run from tmp_path, and point the default results folder there too."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDSEG_BENCH_DIR", str(tmp_path / "default-bench-dir"))


@pytest.fixture(scope="session")
def tiny(demo: Dataset) -> Dataset:
    """Three nuclei of one tile; the third relabelled "CT" to get a second modality."""
    tile = [s for s in demo if s.source_id == demo[12].source_id][:3]
    assert len({s.image.tobytes() for s in tile}) == 1, "the tiny samples must share one image"
    return Dataset([*tile[:2], dataclasses.replace(tile[2], modality="CT")], name="tiny")


class BoxThenClick(Policy):
    """Turn 1: the ground-truth box, each side jittered by 0..2 px (seeded); turn 2: a random
    click (invalid on the box-only LiteMedSAM); then stop. Counts its ``act`` calls."""

    name = "box_then_click"
    needs_oracle = True

    def __init__(self, fail_at_call: int | None = None) -> None:
        super().__init__()
        self.calls = 0
        self.episodes = 0
        self.fail_at_call = fail_at_call

    def act(self, obs, info, env=None):
        self.calls += 1
        if self.fail_at_call is not None and self.calls >= self.fail_at_call:
            raise RuntimeError("simulated crash")
        turn = int(info["turn"])
        if turn == 0:
            self.episodes += 1
            gt = self._oracle(env).ground_truth
            r0, c0, r1, c1 = box_from_mask(gt)
            j = self.rng.integers(0, 3, size=4)
            size = gt.shape[0]
            r0, c0 = max(0, r0 - j[0]), max(0, c0 - j[1])
            r1, c1 = min(size - 1, r1 + j[2]), min(size - 1, c1 + j[3])
            return A.pixel_box(int(r0), int(c0), int(r1), int(c1), size)
        if turn == 1:
            x, y = self.rng.random(2)
            return A.click(float(x), float(y), positive=True)
        return A.stop()


class RandomClicker(Policy):
    """Random clicks every turn, never stops: all invalid on LiteMedSAM, so no model call."""

    name = "random_clicker"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def act(self, obs, info, env=None):
        self.calls += 1
        x, y = self.rng.random(2)
        return A.click(float(x), float(y), positive=bool(self.rng.random() < 0.5))


@pytest.fixture(scope="session")
def make_policies():
    """A fresh ``{label: policy}`` dict for ``run_benchmark(policies=...)``."""

    def make(fail_at_call: int | None = None) -> dict[str, Policy]:
        return {"boxer": BoxThenClick(fail_at_call), "clicker": RandomClicker()}

    return make


@pytest.fixture
def tiny_npz(tmp_path, demo: Dataset):
    """A folder with two nuclei of one demo tile as a MedSAM-style ``.npz`` (label map)."""
    folder = tmp_path / "tiny-npz"
    tile = [s for s in demo if s.source_id == demo[12].source_id][:2]
    gts = np.zeros(tile[0].mask.shape, np.uint8)
    for value, sample in enumerate(tile, start=1):
        gts[sample.mask] = value
    folder.mkdir()
    np.savez(folder / "tile.npz", imgs=tile[0].image, gts=gts, modality="microscopy")
    return folder
