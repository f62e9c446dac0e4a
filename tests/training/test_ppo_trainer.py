"""The PPO trainer (``medseg_agents.training.ppo``): a short training run, what it writes, and
the held-out guard. Learning itself is shown by the README's run, not here."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("stable_baselines3")

from medseg_agents import ppo  # noqa: E402
from medseg_agents.training import ppo as trainer  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A hundred-odd steps of real training (two PPO updates) on a small split of demo."""
    out = tmp_path_factory.mktemp("ppo")
    config = trainer.TrainConfig(
        out=str(out),
        timesteps=128,
        n_envs=2,
        n_steps=32,
        batch_size=64,
        n_epochs=1,
        eval_every=64,
        val_fraction=0.05,
        threads=1,
        spec=ppo.AgentSpec(horizon=2),
    )
    trainer.train(config)
    return out


def test_training_writes_curve_policy_and_summary(trained: Path) -> None:
    rows = list(csv.DictReader((trained / "curve.csv").open()))
    assert [int(r["timesteps"]) for r in rows][0] < 64 <= int(rows[-1]["timesteps"])
    assert all(0.0 <= float(r["val_dice"]) <= 1.0 for r in rows)
    assert (trained / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["timesteps"] >= 128 and summary["val_samples"] >= 1
    assert summary["best_val_dice"] == max(float(r["val_dice"]) for r in rows)
    meta = json.loads((trained / "policy.json").read_text())
    assert meta["val_dice"] == summary["best_val_dice"]


def test_the_trained_policy_loads_as_a_policy(trained: Path) -> None:
    summary = json.loads((trained / "summary.json").read_text())
    policy = ppo.PPOPolicy(str(trained))
    assert policy.spec.horizon == 2 and policy.meta["val_dice"] == summary["best_val_dice"]


def test_training_refuses_the_held_out_set(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="held out"):
        trainer.train(trainer.TrainConfig(out=str(tmp_path), dataset="demo-heldout"))
