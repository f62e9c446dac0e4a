"""The PPO agent's inference (``medseg_agents.ppo``): its input, its checkpoint and its use as a
benchmark policy. Its trainer is tested in ``tests/training/test_ppo_trainer.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

from medseg_agents import make_policy, ppo  # noqa: E402
from medseg_bench.cli import main as bench_main  # noqa: E402
from medseg_env import actions as A  # noqa: E402
from medseg_env.data import Dataset  # noqa: E402
from medseg_env.env import MedSegEnv  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A saved policy of horizon 2 with seeded random weights (training has its own tests, in
    ``tests/training/test_ppo_trainer.py``): what ``medseg-train ppo`` writes, without the wait."""
    out = tmp_path_factory.mktemp("ppo")
    torch.manual_seed(0)
    spec = ppo.AgentSpec(horizon=2)
    ppo.save_policy(ppo.build_policy(spec), spec, out, val_dice=0.0)
    return out


def test_policy_input_reduces_each_channel_as_documented(demo: Dataset) -> None:
    env = MedSegEnv(dataset=demo, segmenter="classical", target_hint=True)
    obs, info = env.reset(seed=1)
    obs, *_ = env.step(A.click(0.2, 0.7, positive=False))
    x = ppo.policy_input(obs, 64)
    assert x.shape == (6, 64, 64) and x.dtype == np.uint8
    # grey: the mean of each 4×4 block of the channel mean (256 / 64 = 4)
    grey = obs["image"].mean(-1).reshape(64, 4, 64, 4).mean(axis=(1, 3))
    assert np.abs(x[0].astype(float) - grey).max() <= 1.0
    # marks: a block is set when any of its pixels is
    for channel, plane in enumerate(
        [obs["mask"][..., 0], obs["hint"][..., 0], *np.moveaxis(obs["prompts"], -1, 0)], 1
    ):
        expected = plane.reshape(64, 4, 64, 4).max(axis=(1, 3))
        assert np.array_equal(x[channel], expected), ppo.CHANNELS[channel]
    hx, hy = info["target_hint"]
    assert x[2, int(hy * 64), int(hx * 64)] == 255
    assert x[4].any() and not x[3].any()  # the negative click, no positive one


def test_policy_input_needs_the_hint(demo: Dataset) -> None:
    obs, _ = MedSegEnv(dataset=demo, segmenter="classical", target_hint=False).reset(seed=0)
    with pytest.raises(ValueError, match="target_hint=True"):
        ppo.policy_input(obs, 64)


def test_saved_policy_round_trips_exactly(trained: Path, tmp_path: Path) -> None:
    policy, spec, _ = ppo.load_policy(trained)
    x = torch.randint(0, 256, (3, 6, spec.size, spec.size), dtype=torch.uint8)
    ppo.save_policy(policy, spec, tmp_path)
    again, _, _ = ppo.load_policy(tmp_path / "policy.json")
    with torch.no_grad():
        a = [d.probs for d in policy.get_distribution(x).distribution]
        b = [d.probs for d in again.get_distribution(x).distribution]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    # and it is not just any policy: a fresh one gives other probabilities
    fresh = ppo.build_policy(spec)
    with torch.no_grad():
        c = [d.probs for d in fresh.get_distribution(x).distribution]
    assert not all(torch.allclose(p, q) for p, q in zip(a, c, strict=True))


def test_bad_checkpoints_are_named(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="policy.json"):
        ppo.load_policy(tmp_path)
    (tmp_path / "policy.json").write_text("{not json")
    (tmp_path / "policy.safetensors").write_bytes((trained / "policy.safetensors").read_bytes())
    with pytest.raises(ValueError, match="policy.json is not valid JSON"):
        ppo.load_policy(tmp_path)
    meta = json.loads((trained / "policy.json").read_text())
    meta["spec"]["grid"] = 8  # weights of a 16-cell grid do not fit
    (tmp_path / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not fit"):
        ppo.load_policy(tmp_path)


def test_policy_plays_the_benchmark_and_stops_at_its_horizon(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    spec = f"ppo:path={trained}"
    common = ["run", "-p", spec, "-d", "demo", "-s", "classical", "--limit", "3", "--no-plots"]
    assert bench_main([*common, "--target-hint", "--no-progress", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["target_hint"] is True
    records = [json.loads(line) for line in (out / "episodes.jsonl").open()]
    assert len(records) == 3
    for r in records:  # horizon 2: at most 2 prompts, then it stops on its own
        actions = [step["action"] for step in r["steps"]]
        assert r["stopped"] and actions[-1] == "stop" and len(actions) <= 3, actions
    # the same policy object acts on env observations directly, in a batch
    policy = make_policy("ppo", path=str(trained))
    env = MedSegEnv(dataset="demo", segmenter="classical", target_hint=True)
    obs, info = env.reset(seed=0)
    a, b = policy.act_batch([obs, obs], [info, info])
    single = policy.act(obs, info)
    for key in a:
        assert np.array_equal(a[key], b[key]) and np.array_equal(a[key], single[key]), key


def test_policy_without_the_hint_fails_clearly(trained: Path, tmp_path: Path) -> None:
    common = ["run", "-p", f"ppo:path={trained}", "-d", "demo", "-s", "classical", "--limit", "1"]
    common += ["--no-target-hint"]  # the benchmark's default shows the hint
    with pytest.raises(ValueError, match="--target-hint"):
        bench_main([*common, "--no-plots", "--no-progress", "--out", str(tmp_path / "b")])
