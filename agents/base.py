"""The ``Policy`` interface every agent implements.

A policy maps an observation and its ``info`` to an action of ``MedSeg-v0``
(``medseg_env.actions``). Policies keep no per-episode state of their own: whatever they need
to know about the episode so far they read from the observation, ``info`` (``turn``,
``num_clicks``...) or, for oracle and expert policies only, from the env's typed oracle
surface (``medseg_env.Oracle``: the ground truth, the accepted prompts, ``preview(action)``,
``supports(kind)``, the minimum box size, the observation size), reached with
``env.get_wrapper_attr("oracle")`` so that wrappers stay transparent. That keeps them usable
for many episodes at once (``act_batch``).

Randomness comes from ``self.rng``, reset by ``seed(seed)``; the benchmark seeds every
episode, so results do not depend on which episodes ran before.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from medseg_env.actions import Action
from medseg_env.oracle import Oracle

Observation = dict[str, np.ndarray]
Info = dict[str, Any]


class Policy(ABC):
    """Base class of all policies.

    Attributes:
        name: short name used in benchmark tables.
        needs_oracle: True when ``act`` reads the ground truth through ``env`` (oracle
            simulators and experts); the benchmark reports such policies as oracles.
        episode_batch: how many episodes the benchmark plays in lockstep for this policy,
            with one ``act_batch`` call per turn (an LLM's batched generate); 1 plays them
            one by one with ``act``.
    """

    name: str = "policy"
    needs_oracle: bool = False
    episode_batch: int = 1

    def __init__(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def seed(self, seed: int | None) -> None:
        """Reset the policy's random generator."""
        self.rng = np.random.default_rng(seed)

    @abstractmethod
    def act(self, obs: Observation, info: Info, env: gym.Env | None = None) -> Action:
        """The next action of one episode.

        Args:
            obs: the env's observation (``image``, ``mask``, ``prompts``, ``turn``).
            info: the ``info`` dict of the last ``reset``/``step``.
            env: the env running the episode; oracle policies require it.
        """

    def act_batch(
        self,
        observations: Sequence[Observation],
        infos: Sequence[Info],
        envs: Sequence[gym.Env | None] | None = None,
    ) -> list[Action]:
        """The next action of many episodes at once (row ``i`` is one episode).

        The default loops over ``act``; policies that gain from batching (a neural network,
        an LLM server) override it.
        """
        envs = envs if envs is not None else [None] * len(observations)
        if not len(observations) == len(infos) == len(envs):
            raise ValueError(
                f"batch sizes differ: {len(observations)} observations, {len(infos)} infos, "
                f"{len(envs)} envs"
            )
        return [self.act(o, i, e) for o, i, e in zip(observations, infos, envs, strict=True)]

    def _oracle(self, env: gym.Env | None) -> Oracle:
        """The env's oracle surface, through its wrappers; a clear error when none was given."""
        if env is None:
            raise ValueError(f"{self.name} is an oracle policy: pass the env to act()")
        return env.get_wrapper_attr("oracle")
