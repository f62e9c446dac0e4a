"""The RL stage: group-relative policy optimisation (GRPO) over multi-turn episodes.

Why GRPO and not SB3's PPO: an episode starts from the same state every time it is played on
the same target, and the segmenter is deterministic, so the other episodes of a group on that
target are an exact baseline for each one's return; no value network has to learn to read the
image for a baseline, which on about 60 training targets would overfit. It is also the update
MedSAM-Agent trains with (multi-turn GRPO).

One iteration:

1. draw ``targets`` training samples; play ``group`` episodes on each, sampling from the
   policy (``rollout.play`` with a generator), at most ``horizon`` turns;
2. each episode's advantage is its return (the env's ``dice_gain`` reward: the final Dice
   minus 0.01 per prompt and 0.05 per refused action) minus its group's mean, over the group's
   standard deviation (0 for a group whose episodes all scored alike);
3. ``epochs`` passes of PPO's clipped objective over every turn of the iteration, with a KL
   penalty (the k3 estimator, as in GRPO) towards the SFT policy, which keeps the RL policy
   near the demonstrations it started from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medseg_agents.learned.network import PromptNet, network_input
from medseg_env.env import MedSegEnv

from .rollout import Episode, choice_tensors, log_prob, play


@dataclass(frozen=True)
class GRPOSettings:
    """The RL stage's settings (chosen on the validation split)."""

    targets: int = 8
    group: int = 8
    epochs: int = 2
    minibatch: int = 64
    lr: float = 1e-4
    clip: float = 0.2
    kl: float = 0.02


def advantages(episodes: Sequence[Episode], group: int) -> np.ndarray:
    """Each episode's return, normalised within its group of ``group`` consecutive episodes."""
    returns = np.array([e.ret for e in episodes], np.float64).reshape(-1, group)
    centred = returns - returns.mean(axis=1, keepdims=True)
    std = returns.std(axis=1, keepdims=True)
    return np.where(std > 1e-8, centred / np.maximum(std, 1e-8), 0.0).reshape(-1)


def collect(
    net: PromptNet,
    envs: Sequence[MedSegEnv],
    samples: Sequence[int],
    group: int,
    generator: torch.Generator,
) -> list[Episode]:
    """``group`` sampled episodes on each of ``samples`` (``envs`` holds ``group`` envs)."""
    episodes: list[Episode] = []
    for index in samples:
        episodes += play(net, envs[:group], [index] * group, generator)
    return episodes


def update(
    net: PromptNet,
    reference: PromptNet,
    optimizer: torch.optim.Optimizer,
    episodes: Sequence[Episode],
    settings: GRPOSettings,
    rng: np.random.Generator,
) -> dict[str, float]:
    """The clipped policy-gradient update of one iteration; returns its statistics."""
    adv = advantages(episodes, settings.group)
    planes, scalars, choices, old, weights = [], [], [], [], []
    for episode, a in zip(episodes, adv, strict=True):
        if a == 0.0:
            continue  # no signal: every episode of its group scored alike
        planes += episode.planes
        scalars += episode.scalars
        choices += episode.choices
        old += episode.log_probs
        weights += [a] * len(episode.choices)
    stats = {"turns": float(len(choices)), "loss": 0.0, "kl": 0.0, "clipped": 0.0}
    if not choices:
        return stats
    x_all = torch.from_numpy(np.stack(planes))
    s_all = torch.from_numpy(np.stack(scalars))
    chosen_all = choice_tensors(choices)
    old_lp = torch.tensor(old, dtype=torch.float32)
    adv_t = torch.tensor(weights, dtype=torch.float32)
    with torch.no_grad():
        ref_lp = torch.cat(
            [
                log_prob(
                    reference(network_input(x_all[i : i + 64]), s_all[i : i + 64]),
                    {k: v[i : i + 64] for k, v in chosen_all.items()},
                )
                for i in range(0, len(choices), 64)
            ]
        )
    net.train()
    n_updates = 0
    for _ in range(settings.epochs):
        order = rng.permutation(len(choices))
        for start in range(0, len(order), settings.minibatch):
            rows = torch.from_numpy(order[start : start + settings.minibatch])
            heads = net(network_input(x_all[rows]), s_all[rows])
            lp = log_prob(heads, {k: v[rows] for k, v in chosen_all.items()})
            ratio = torch.exp(lp - old_lp[rows])
            a = adv_t[rows]
            clipped = ratio.clamp(1 - settings.clip, 1 + settings.clip)
            pg = -torch.minimum(ratio * a, clipped * a).mean()
            log_ratio = ref_lp[rows] - lp
            kl = (torch.exp(log_ratio) - log_ratio - 1).mean()
            loss = pg + settings.kl * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            stats["loss"] += loss.item()
            stats["kl"] += kl.item()
            stats["clipped"] += float(((ratio - 1).abs() > settings.clip).float().mean())
            n_updates += 1
    net.eval()
    for key in ("loss", "kl", "clipped"):
        stats[key] /= max(n_updates, 1)
    return stats
