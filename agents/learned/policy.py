"""``LearnedPolicy``: the small prompting agent trained by imitation then RL, as a ``Policy``.

Registered as ``learned`` (after RL) and ``learned_bc`` (after imitation only); both build with
no options from the weights shipped in this package (``weights/rl``, ``weights/bc``), and
``path=DIR`` points either at a folder written by ``medseg-train learned``.

It reads only the observation and ``info`` (the hint, the turn, the prompt counts): never the
ground truth or the oracle (``needs_oracle = False``), so it plays with ``env=None``. It acts
greedily (the most likely action), so it is deterministic, and stops by itself once its
horizon (5 turns) is spent.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from medseg_env import actions as A
from medseg_env.actions import Action

from ..base import Info, Observation, Policy
from ..baselines import hint_pixel
from .checkpoint import load_checkpoint
from .network import greedy, network_input, policy_planes, to_action

STAGES = ("rl", "bc")


def shipped_weights(stage: str) -> Path:
    """The folder of the weights shipped for ``stage`` (``"rl"`` or ``"bc"``)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {list(STAGES)}; got {stage!r}")
    return Path(str(resources.files("medseg_agents.learned") / "weights" / stage))


class LearnedPolicy(Policy):
    """The learned prompting agent (``medseg_agents.learned.network.PromptNet``).

    Args:
        path: a checkpoint folder (``policy.safetensors`` + ``policy.json``); default: the
            shipped weights of ``stage``.
        stage: ``"rl"`` (after RL, the default) or ``"bc"`` (after imitation), for the shipped
            weights.
        seed: unused (the policy is greedy and deterministic); kept for the common signature.
    """

    name = "learned"
    needs_oracle = False
    episode_batch = 8

    def __init__(
        self, path: str | Path | None = None, stage: str = "rl", seed: int | None = None
    ) -> None:
        super().__init__(seed)
        folder = Path(path).expanduser() if path is not None else shipped_weights(stage)
        self.path = folder
        self.net, self.meta = load_checkpoint(folder)
        self.spec = self.net.spec

    def act(self, obs: Observation, info: Info, env: gym.Env | None = None) -> Action:
        return self.act_batch([obs], [info])[0]

    def act_batch(
        self,
        observations: Sequence[Observation],
        infos: Sequence[Info],
        envs: Sequence[gym.Env | None] | None = None,
    ) -> list[Action]:
        if len(observations) != len(infos):
            raise ValueError(
                f"batch sizes differ: {len(observations)} observations, {len(infos)} infos"
            )
        hints, xs, ss = [], [], []
        for obs, info in zip(observations, infos, strict=True):
            size = int(np.asarray(obs["image"]).shape[0])
            if size != self.spec.obs_size:
                raise ValueError(
                    f"{self.name} ({self.path}) was trained on a {self.spec.obs_size}-pixel "
                    f"canvas; this env's obs_size is {size}"
                )
            hint = hint_pixel(obs, info, self.name)
            x, s = policy_planes(obs, info, hint, self.spec)
            hints.append(hint)
            xs.append(x)
            ss.append(s)
        stop = torch.tensor([int(i.get("turn", 0)) >= self.spec.horizon for i in infos])
        with torch.inference_mode():
            inputs = network_input(torch.from_numpy(np.stack(xs)))
            kind, clicks, edges = self.net(inputs, torch.from_numpy(np.stack(ss)))
        choices = greedy(kind, clicks, edges, stop)
        return [
            A.stop() if done else to_action(c, h, self.spec)
            for c, h, done in zip(choices, hints, stop.tolist(), strict=True)
        ]


class LearnedBCPolicy(LearnedPolicy):
    """``learned_bc``: the same agent after its imitation stage only (the SFT weights)."""

    name = "learned_bc"

    def __init__(
        self, path: str | Path | None = None, stage: str = "bc", seed: int | None = None
    ) -> None:
        super().__init__(path, stage, seed)
