"""The PPO agent's inference: its input, its network, its checkpoints and ``PPOPolicy``.

The trainer is ``medseg_agents.training.ppo`` (``medseg-train ppo --out runs/ppo``): it trains
on ``demo`` (a validation split of its images held aside), writes the learning curve
(``curve.csv``, ``curve.png``) and the policy with the best validation Dice
(``policy.safetensors`` + ``policy.json``), which ``medseg-bench run -p 'ppo:path=runs/ppo'
--target-hint`` plays like any other policy.

The task. Most bundled targets are one nucleus among dozens on the same image, so an agent
that sees only the image cannot know which one an episode is about: the env's
``target_hint`` option shows the target's innermost pixel, the way a user points at it, and
the agent learns to turn that cue and the image into prompts (where to click, when to stop).

The agent's input (``policy_input``): the ``S×S`` observation reduced to ``size×size``,
channels first, uint8: the grey image (area mean), then the mask, the hint and the prompt map
(positive clicks, negative clicks, box; "any pixel set", so a click never vanishes). Actions
are ``MedSeg-MultiDiscrete-v0``'s ``[kind, c0, r0, c1, r1]`` on a ``grid×grid`` grid over the
observation, so the policy does not depend on ``S``.

The network (``SpatialCNN``) is fully convolutional down to a ``grid×grid`` map, and the
action heads read that map linearly: a column logit can sum its column, so "click where the
hint is" is a local rule rather than a position the network must encode in a bottleneck
(the FullyConv agents of SC2LE read spatial actions the same way). SB3's NatureCNN, with its
512-wide bottleneck, learned the task far more slowly here.

Checkpoints are safetensors of the SB3 policy's weights plus a JSON of how to rebuild it (no
pickle is ever loaded); ``PPOPolicy`` stops by itself at the turn horizon it was trained for.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import cv2
import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from safetensors.torch import load_model, save_model
from stable_baselines3.common.distributions import MultiCategoricalDistribution
from stable_baselines3.common.policies import ActorCriticCnnPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from medseg_env import actions as A
from medseg_env.data import Dataset
from medseg_env.env import MedSegEnv
from medseg_env.files import atomic_write
from medseg_env.wrappers.sb3_actions import MultiDiscreteActions, grid_action

from .base import Info, Observation, Policy

CHANNELS = ("image", "mask", "hint", "positive_clicks", "negative_clicks", "box")
"""The agent's input channels, in order."""

FORMAT = "medseg-ppo-1"


# ---------------------------------------------------------------------------------------------
# The agent's input
# ---------------------------------------------------------------------------------------------


def policy_input(obs: Observation, size: int) -> np.ndarray:
    """``(6, size, size)`` uint8: the observation as the agent sees it (see the module doc).

    Raises:
        ValueError: the observation has no ``hint`` (the env was made without
            ``target_hint=True``).
    """
    if "hint" not in obs:
        raise ValueError(
            "the PPO agent needs the target hint: make the env with target_hint=True "
            "(medseg-bench run --target-hint)"
        )
    # INTER_AREA over whole k×k blocks is their exact mean; a mark channel (0/255) is "any
    # pixel set", so a click never vanishes. cv2 does both in well under a millisecond.
    grey = cv2.resize(obs["image"], (size, size), interpolation=cv2.INTER_AREA).mean(axis=-1)
    marks = np.concatenate([obs["mask"], obs["hint"], obs["prompts"]], axis=-1)
    marks = cv2.resize(marks, (size, size), interpolation=cv2.INTER_AREA) > 0
    out = np.empty((len(CHANNELS), size, size), np.uint8)
    out[0] = np.round(grey)
    out[1:] = marks.transpose(2, 0, 1) * np.uint8(255)
    return out


class PolicyInput(gym.ObservationWrapper):
    """The env's ``Dict`` observation as ``policy_input``: ``Box(0, 255, (6, size, size))``."""

    def __init__(self, env: gym.Env, size: int) -> None:
        super().__init__(env)
        self.size = int(size)
        self.observation_space = spaces.Box(0, 255, (len(CHANNELS), size, size), np.uint8)

    def observation(self, observation: Observation) -> np.ndarray:
        return policy_input(observation, self.size)


class SpatialCNN(BaseFeaturesExtractor):
    """Convolutions from ``(6, size, size)`` to a ``(channels, grid, grid)`` map, flattened.

    Three 3×3 convolutions with ReLU, the first two with a stride that halves the side, then
    adaptive average pooling to ``grid×grid`` (a no-op for ``size = 4·grid``); padding keeps
    every cell's neighbourhood. Striding at once keeps a PPO update cheap on a CPU.
    """

    def __init__(self, observation_space: spaces.Box, grid: int = 16, channels: int = 16) -> None:
        super().__init__(observation_space, features_dim=channels * grid * grid)
        self.channels, self.grid = channels, grid
        c = observation_space.shape[0]
        self.net = nn.Sequential(
            nn.Conv2d(c, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, channels, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(grid),
            nn.Flatten(),
        )

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.net(observations)


class SpatialHeads(nn.Module):
    """The action logits ``[kind, c0, r0, c1, r1]`` read from ``SpatialCNN``'s map.

    ``kind`` is a linear layer over the whole map. The cells come from two heat maps made by
    one 3×3 convolution shared by every cell (the first point: a click or a box corner; the
    second corner): a column's logit is the log-sum-exp of its heat map's column, a row's of
    its row, i.e. the marginals of a softmax over the map. Sharing the convolution across cells
    means one rewarded click at the hint teaches "click at the hint" everywhere at once.
    """

    def __init__(self, channels: int, grid: int, kinds: int = len(A.ActionKind)) -> None:
        super().__init__()
        self.channels, self.grid = channels, grid
        self.kind = nn.Linear(channels * grid * grid, kinds)
        self.maps = nn.Conv2d(channels, 2, 3, padding=1)
        # near-uniform at first, as SB3 starts its heads
        nn.init.orthogonal_(self.kind.weight, gain=0.01)
        nn.init.zeros_(self.kind.bias)
        nn.init.orthogonal_(self.maps.weight, gain=0.01)
        nn.init.zeros_(cast(torch.Tensor, self.maps.bias))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        maps = self.maps(latent.view(-1, self.channels, self.grid, self.grid))
        first, second = maps[:, 0], maps[:, 1]  # (batch, rows, columns)
        return torch.cat(
            [
                self.kind(latent),
                torch.logsumexp(first, dim=1),  # c0: one logit per column
                torch.logsumexp(first, dim=2),  # r0: one per row
                torch.logsumexp(second, dim=1),
                torch.logsumexp(second, dim=2),
            ],
            dim=1,
        )


class SpatialPolicy(ActorCriticCnnPolicy):
    """SB3's actor-critic with ``SpatialCNN`` features and ``SpatialHeads`` as the actor."""

    def _build(self, lr_schedule: Callable[[float], float]) -> None:
        super()._build(lr_schedule)
        extractor = cast(SpatialCNN, self.features_extractor)
        self.action_net = SpatialHeads(extractor.channels, extractor.grid)
        # the optimiser was made over the replaced head: make it over the policy as it is now
        self.optimizer = self.optimizer_class(  # type: ignore[call-arg]  # as SB3's _build
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )


@dataclass(frozen=True)
class AgentSpec:
    """How the agent sees and acts; stored beside its weights (``policy.json``).

    Attributes:
        size: side of the agent's input, pixels.
        grid: cells per side of the action grid.
        horizon: turns per training episode (the env's ``max_turns``); the policy stops there.
        obs_size: the env's canvas side it was trained on (any multiple of ``size`` works).
        segmenter: the backend it was trained with.
        channels: channels of ``SpatialCNN``'s ``grid×grid`` output map.
        value_arch: hidden layers of the critic head (the actor reads the map linearly).
    """

    size: int = 64
    grid: int = 16
    horizon: int = 3
    obs_size: int = 256
    segmenter: str = "classical"
    channels: int = 16
    value_arch: tuple[int, ...] = (64,)

    def policy_kwargs(self) -> dict[str, Any]:
        return {
            "net_arch": {"pi": [], "vf": list(self.value_arch)},
            "features_extractor_class": SpatialCNN,
            "features_extractor_kwargs": {"grid": self.grid, "channels": self.channels},
            "share_features_extractor": True,
        }

    def observation_space(self) -> spaces.Box:
        return spaces.Box(0, 255, (len(CHANNELS), self.size, self.size), np.uint8)

    def action_space(self) -> spaces.MultiDiscrete:
        return spaces.MultiDiscrete([len(A.ActionKind)] + [self.grid] * 4)


def make_env(dataset: Dataset, spec: AgentSpec, **env_options: Any) -> gym.Env:
    """``MedSegEnv`` with the target hint, the grid actions and the agent's input."""
    env = MedSegEnv(
        dataset=dataset,
        segmenter=spec.segmenter,
        obs_size=spec.obs_size,
        max_turns=spec.horizon,
        target_hint=True,
        **env_options,
    )
    return PolicyInput(MultiDiscreteActions(env, grid=spec.grid), spec.size)


# ---------------------------------------------------------------------------------------------
# Saving and loading (safetensors + JSON; nothing is unpickled)
# ---------------------------------------------------------------------------------------------


def build_policy(spec: AgentSpec) -> ActorCriticCnnPolicy:
    """An untrained SB3 policy of ``spec``'s shape, on the CPU."""
    return SpatialPolicy(
        spec.observation_space(), spec.action_space(), lambda _: 0.0, **spec.policy_kwargs()
    )


def save_policy(policy: ActorCriticCnnPolicy, spec: AgentSpec, folder: Path, **meta: Any) -> None:
    """Write ``policy.safetensors`` and ``policy.json`` into ``folder`` (atomically each)."""
    folder.mkdir(parents=True, exist_ok=True)
    # shared feature-extractor weights are stored once
    atomic_write(folder / "policy.safetensors", lambda tmp: save_model(policy, str(tmp)))
    info = {"format": FORMAT, "spec": asdict(spec), **meta}
    atomic_write(folder / "policy.json", json.dumps(info, indent=2) + "\n")


def load_policy(path: str | Path) -> tuple[ActorCriticCnnPolicy, AgentSpec, dict[str, Any]]:
    """The policy saved in folder ``path`` (or its ``policy.json``), its spec and metadata.

    Raises:
        FileNotFoundError: no ``policy.json`` / ``policy.safetensors`` there.
        ValueError: a JSON of another format or with unknown spec keys, or weights that do not
            fit the spec (the message names the file).
    """
    folder = Path(path).expanduser()
    if folder.name == "policy.json":
        folder = folder.parent
    meta_path, weights_path = folder / "policy.json", folder / "policy.safetensors"
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"PPO policy: {p} not found (a folder written by medseg-train ppo)"
            )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"PPO policy: {meta_path} is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"PPO policy: {meta_path} is not a {FORMAT!r} file")
    try:
        raw = dict(meta["spec"])
        raw["value_arch"] = tuple(raw.get("value_arch", AgentSpec.value_arch))
        spec = AgentSpec(**raw)
    except (KeyError, TypeError) as err:
        raise ValueError(f"PPO policy: {meta_path} has a bad 'spec' ({err})") from None
    policy = build_policy(spec)
    try:
        missing, unexpected = load_model(policy, str(weights_path), strict=False)
        if missing or unexpected:
            raise RuntimeError(f"missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    except (RuntimeError, OSError) as err:
        raise ValueError(f"PPO policy: {weights_path} does not fit {meta_path} ({err})") from None
    policy.set_training_mode(False)
    return policy, spec, meta


# ---------------------------------------------------------------------------------------------
# The benchmark policy
# ---------------------------------------------------------------------------------------------


def action_probs(policy: ActorCriticCnnPolicy, batch: torch.Tensor) -> list[np.ndarray]:
    """Each action head's probabilities, ``(batch, n_i)`` per head ``[kind, c0, r0, c1, r1]``."""
    dist = policy.get_distribution(batch)
    if not isinstance(dist, MultiCategoricalDistribution):
        raise TypeError(f"expected a MultiDiscrete policy; got {type(dist).__name__}")
    return [d.probs.numpy() for d in dist.distribution]


class PPOPolicy(Policy):
    """A trained PPO agent as a ``medseg-bench`` policy: ``-p 'ppo:path=FOLDER'``.

    The env must be made with ``target_hint=True`` (``medseg-bench run --target-hint``). The
    agent stops at the turn horizon it was trained for. ``deterministic=False`` samples its
    action distribution with ``self.rng`` (seeded by the benchmark) instead of taking modes.
    """

    name = "ppo"
    episode_batch = 16

    def __init__(
        self, path: str, seed: int | None = None, deterministic: bool = True, threads: int = 0
    ) -> None:
        super().__init__(seed)
        self.policy, self.spec, self.meta = load_policy(path)
        self.deterministic = bool(deterministic)
        if threads:
            torch.set_num_threads(int(threads))

    def act(self, obs: Observation, info: Info, env: gym.Env | None = None) -> A.Action:
        return self.act_batch([obs], [info])[0]

    def act_batch(
        self,
        observations: Sequence[Observation],
        infos: Sequence[Info],
        envs: Sequence[gym.Env | None] | None = None,
    ) -> list[A.Action]:
        if len(observations) != len(infos):
            raise ValueError(f"{len(observations)} observations but {len(infos)} infos")
        if not observations:
            return []
        batch = np.stack([policy_input(o, self.spec.size) for o in observations])
        with torch.no_grad():
            probs = action_probs(self.policy, torch.as_tensor(batch))
        out = []
        for i, obs in enumerate(observations):
            if int(obs["turn"][0]) >= self.spec.horizon:
                out.append(A.stop())
                continue
            if self.deterministic:
                values = [int(np.argmax(p[i])) for p in probs]
            else:
                values = [int(self.rng.choice(len(p[i]), p=p[i] / p[i].sum())) for p in probs]
            kind, c0, r0, c1, r1 = values
            out.append(grid_action(kind, c0, r0, c1, r1, self.spec.grid))
        return out
