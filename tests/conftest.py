"""Shared fixtures: the bundled demo data and the real LiteMedSAM model, loaded once."""

from __future__ import annotations

import os

import gymnasium as gym
import pytest

import medseg_env  # noqa: F401  (registers the envs)
from medseg_env.data import Dataset, demo_dataset


def _share_cores_between_workers() -> None:
    """Under pytest-xdist (``-n N``), each worker's torch gets its share of the cores, so N
    workers do not each start one thread per core."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        import torch

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        torch.set_num_threads(max(1, cores // workers))


_share_cores_between_workers()


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


if _in_ci():
    # In CI every optional package a test imports is installed (the `dev` extra, and the verl and
    # LLaMA-Factory overlays that `.ci/run` builds), so a test that would skip for a missing
    # package fails instead: a missing install step shows as a failure, not as a skip.
    _importorskip = pytest.importorskip

    def _importorskip_or_fail(modname: str, *args, **kwargs):
        try:
            return _importorskip(modname, *args, **kwargs)
        except pytest.skip.Exception as err:
            reason = str(err)
        pytest.fail(
            f"CI is set and {modname!r} is not importable, so this test would skip: {reason}",
            pytrace=False,
        )

    pytest.importorskip = _importorskip_or_fail  # type: ignore[assignment]


@pytest.fixture(scope="session")
def demo() -> Dataset:
    return demo_dataset()


@pytest.fixture(scope="session")
def small_demo(demo: Dataset) -> Dataset:
    """A few demo samples from three images (CT, MR, microscopy), for quick env tests."""
    picked, images = [], set()
    for modality in ("CT", "MR", "microscopy"):
        sample = next(s for s in demo if s.modality == modality)
        picked.append(sample)
        images.add(sample.source_id)
    return Dataset(picked, name="small-demo")


@pytest.fixture
def env(small_demo: Dataset):
    env = gym.make("MedSeg-v0", dataset=small_demo, max_turns=5)
    yield env
    env.close()
