"""Training the PPO agent on ``MedSeg-v0`` with stable-baselines3: ``medseg-train ppo``.

``medseg-train ppo --out runs/ppo`` (also ``python -m medseg_agents.training ppo``) trains on
``demo`` (a validation split of its images held aside; a held-out dataset is refused), writes
the learning curve (``curve.csv``, ``curve.png``), the policy with the best validation Dice
(``policy.safetensors`` + ``policy.json``) and ``summary.json``. The agent itself (its input,
network, checkpoints and the ``ppo`` benchmark policy) is inference and lives in
``medseg_agents.ppo``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.policies import ActorCriticCnnPolicy
from stable_baselines3.common.vec_env import DummyVecEnv

from medseg_env.data import Dataset, load_dataset, refuse_heldout
from medseg_env.data.split import group_split
from medseg_env.files import atomic_write
from medseg_env.rewards import PRESETS

from ..ppo import AgentSpec, SpatialPolicy, make_env, save_policy


@dataclass
class TrainConfig:
    """The training run (``medseg-train ppo --help``)."""

    out: str
    dataset: str = "demo"
    val_fraction: float = 0.2
    split_seed: int = 0
    seed: int = 0
    timesteps: int = 1_000_000
    minutes: float = 28.0
    n_envs: int = 8
    n_steps: int = 128
    batch_size: int = 128
    n_epochs: int = 10
    learning_rate: float = 5e-4
    ent_coef: float = 0.01
    shaping: float = 0.3
    gamma: float = 0.95
    eval_every: int = 8192
    threads: int = 2
    spec: AgentSpec = field(default_factory=AgentSpec)


def training_reward(shaping: float) -> dict[str, float]:
    """The default ``dice_gain`` preset plus ``prompt_proximity`` shaping at weight ``shaping``.

    Validation and the benchmark score Dice alone; the shaping only helps exploration: a
    random click lands on a small target about once in a few hundred tries, and without it
    every miss looks the same.
    """
    reward = dict(PRESETS.get("dice_gain"))
    if shaping:
        reward["prompt_proximity"] = float(shaping)
    return reward


def subset(dataset: Dataset, indices: Sequence[int], part: str) -> Dataset:
    return Dataset([dataset[i] for i in indices], f"{dataset.name}[{part}]")


def play(env: gym.Env, n: int, act: Callable[[np.ndarray], Any]) -> tuple[list[float], list[int]]:
    """One episode on each of samples ``0..n-1`` of ``env``: final Dice and turns of each."""
    dices, turns = [], []
    for index in range(n):
        obs, info = env.reset(options={"sample_index": index})
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(act(obs))
            done = terminated or truncated
        dices.append(info["dice"])
        turns.append(info["turn"])
    return dices, turns


def evaluate(policy: ActorCriticCnnPolicy, env: gym.Env, n: int) -> tuple[float, float, float]:
    """Greedy episodes on samples ``0..n-1`` of ``env``: (mean final Dice, its std, turns)."""

    def greedy(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return policy.predict(obs, deterministic=True)[0]

    dices, turns = play(env, n, greedy)
    return float(np.mean(dices)), float(np.std(dices)), float(np.mean(turns))


class CurveCallback(BaseCallback):
    """Every ``every`` steps: validation Dice, training returns, the best policy saved; CSV."""

    COLUMNS = (
        "timesteps",
        "minutes",
        "train_return",
        "train_dice",
        "train_episodes",
        "val_dice",
        "val_dice_std",
        "val_turns",
    )

    def __init__(
        self,
        config: TrainConfig,
        val_env: gym.Env,
        n_val: int,
        folder: Path,
        started: float,
    ) -> None:
        super().__init__()
        self.config, self.val_env, self.n_val, self.folder = config, val_env, n_val, folder
        self.started = started
        self.next_eval = 0
        self.best = -math.inf
        self.rows: list[dict[str, float]] = []
        self._returns: list[float] = []
        self._dices: list[float] = []

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            episode = info.get("episode")
            if episode is not None:
                self._returns.append(float(episode["r"]))
                self._dices.append(float(info["dice"]))
        if self.num_timesteps >= self.next_eval:
            self._evaluate()
            self.next_eval += self.config.eval_every
        return (time.perf_counter() - self.started) / 60 < self.config.minutes

    def _on_training_end(self) -> None:
        if not self.rows or self.rows[-1]["timesteps"] != self.num_timesteps:
            self._evaluate()

    def _evaluate(self) -> None:
        policy = cast(ActorCriticCnnPolicy, self.model.policy)
        dice, std, turns = evaluate(policy, self.val_env, self.n_val)
        self.model.policy.set_training_mode(False)
        row = {
            "timesteps": self.num_timesteps,
            "minutes": (time.perf_counter() - self.started) / 60,
            "train_return": float(np.mean(self._returns)) if self._returns else math.nan,
            "train_dice": float(np.mean(self._dices)) if self._dices else math.nan,
            "train_episodes": len(self._returns),
            "val_dice": dice,
            "val_dice_std": std,
            "val_turns": turns,
        }
        self._returns, self._dices = [], []
        self.rows.append(row)
        write_curve(self.rows, self.folder / "curve.csv")
        if dice > self.best:
            self.best = dice
            save_policy(
                policy,
                self.config.spec,
                self.folder,
                timesteps=self.num_timesteps,
                val_dice=dice,
                val_samples=self.n_val,
                train_config={k: v for k, v in asdict(self.config).items() if k != "spec"},
            )
        print(
            f"[ppo] {row['timesteps']:>7} steps {row['minutes']:5.1f} min  "
            f"train return {row['train_return']:.3f} dice {row['train_dice']:.3f}  "
            f"val dice {dice:.3f} ± {std:.3f} ({turns:.1f} turns)",
            flush=True,
        )


def write_curve(rows: list[dict[str, float]], path: Path) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, CurveCallback.COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue())


def plot_curve(rows: list[dict[str, float]], path: Path, baseline: float | None = None) -> None:
    """``curve.png``: validation Dice (with its spread) and training Dice against env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["timesteps"] for r in rows])
    val = np.array([r["val_dice"] for r in rows])
    std = np.array([r["val_dice_std"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot(steps, val, marker="o", label="validation Dice (greedy)")
    ax.fill_between(steps, val - std, val + std, alpha=0.2)
    ax.plot(steps, [r["train_dice"] for r in rows], label="training Dice (sampled)")
    if baseline is not None:
        ax.axhline(baseline, ls="--", c="grey", label="random policy (validation)")
    ax.set_xlabel("env steps")
    ax.set_ylabel("final Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def random_baseline(env: gym.Env, n: int, seed: int) -> float:
    """Mean final Dice of uniformly random grid actions on validation samples ``0..n-1``."""
    env.action_space.seed(seed)
    dices, _ = play(env, n, lambda _: env.action_space.sample())
    return float(np.mean(dices))


def train(config: TrainConfig) -> dict[str, Any]:
    """Train, writing ``curve.csv``, ``curve.png``, the best policy and ``summary.json``."""
    torch.set_num_threads(config.threads)
    dataset = load_dataset(config.dataset)
    refuse_heldout(dataset, "medseg-train ppo --dataset")  # before anything is written
    folder = Path(config.out).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.split_seed)
    train_idx, val_idx = group_split(dataset, config.val_fraction, rng)
    train_set, val_set = subset(dataset, train_idx, "train"), subset(dataset, val_idx, "val")
    spec = config.spec

    def factory(rank: int) -> Callable[[], gym.Env]:
        return lambda: Monitor(make_env(train_set, spec, reward=training_reward(config.shaping)))

    vec = DummyVecEnv([factory(i) for i in range(config.n_envs)])
    vec.seed(config.seed)
    val_env = make_env(val_set, spec)
    baseline = random_baseline(val_env, len(val_set), config.seed)
    model = PPO(
        SpatialPolicy,
        vec,
        n_steps=config.n_steps,
        batch_size=config.batch_size,
        n_epochs=config.n_epochs,
        learning_rate=config.learning_rate,
        ent_coef=config.ent_coef,
        gamma=config.gamma,
        policy_kwargs=spec.policy_kwargs(),
        seed=config.seed,
        device="cpu",
        verbose=0,
    )
    started = time.perf_counter()
    callback = CurveCallback(config, val_env, len(val_set), folder, started)
    model.learn(config.timesteps, callback=callback)
    minutes = (time.perf_counter() - started) / 60
    plot_curve(callback.rows, folder / "curve.png", baseline)
    summary = {
        "timesteps": int(model.num_timesteps),
        "minutes": minutes,
        "best_val_dice": callback.best,
        "final_val_dice": callback.rows[-1]["val_dice"],
        "random_val_dice": baseline,
        "train_samples": len(train_set),
        "val_samples": len(val_set),
        "threads": config.threads,
        "config": {k: v for k, v in asdict(config).items() if k != "spec"},
        "spec": asdict(spec),
    }
    atomic_write(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``medseg-train ppo``."""
    d, s = TrainConfig(out=""), AgentSpec()
    p.add_argument("--out", required=True, help="folder for the curve, the policy, the summary")
    p.add_argument("--dataset", default=d.dataset, help=f"training data (default {d.dataset})")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--split-seed", type=int, default=d.split_seed)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--timesteps", type=int, default=d.timesteps)
    p.add_argument("--minutes", type=float, default=d.minutes, help="wall-clock limit")
    p.add_argument("--n-envs", type=int, default=d.n_envs)
    p.add_argument("--n-steps", type=int, default=d.n_steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--n-epochs", type=int, default=d.n_epochs)
    p.add_argument("--lr", type=float, default=d.learning_rate)
    p.add_argument("--ent-coef", type=float, default=d.ent_coef)
    p.add_argument("--gamma", type=float, default=d.gamma)
    p.add_argument(
        "--shaping",
        type=float,
        default=d.shaping,
        help=f"weight of the prompt_proximity training reward (default {d.shaping}; 0: none)",
    )
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--segmenter", default=s.segmenter)
    p.add_argument("--size", type=int, default=s.size, help="agent input side, px")
    p.add_argument("--grid", type=int, default=s.grid)
    p.add_argument("--horizon", type=int, default=s.horizon, help="turns per episode")
    p.add_argument("--obs-size", type=int, default=s.obs_size)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="medseg-train ppo", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


def run(a: argparse.Namespace) -> int:
    """Train with the options of ``medseg-train ppo`` and print the summary."""
    spec = AgentSpec(
        size=a.size, grid=a.grid, horizon=a.horizon, obs_size=a.obs_size, segmenter=a.segmenter
    )
    config = TrainConfig(
        out=a.out,
        dataset=a.dataset,
        val_fraction=a.val_fraction,
        split_seed=a.split_seed,
        seed=a.seed,
        timesteps=a.timesteps,
        minutes=a.minutes,
        n_envs=a.n_envs,
        n_steps=a.n_steps,
        batch_size=a.batch_size,
        n_epochs=a.n_epochs,
        learning_rate=a.lr,
        ent_coef=a.ent_coef,
        gamma=a.gamma,
        shaping=a.shaping,
        eval_every=a.eval_every,
        threads=a.threads,
        spec=spec,
    )
    summary = train(config)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("config", "spec")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
