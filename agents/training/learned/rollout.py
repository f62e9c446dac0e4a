"""Episodes of the learned agent: its action distribution, and many episodes in lockstep.

The policy factorises an action into a kind, then either a click cell (on the kind's map) or
four box-side bins; an action's log-probability is the sum of the parts it uses.
``play`` runs one episode per env at once, with one batched network call per turn; the envs
share one segmenter, so a turn costs one decoder call per episode still running.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from medseg_agents.baselines import hint_pixel
from medseg_agents.learned.network import (
    Choice,
    PromptNet,
    greedy,
    network_input,
    policy_planes,
    to_action,
)
from medseg_env.actions import ActionKind
from medseg_env.env import MedSegEnv


def choice_tensors(choices: Sequence[Choice]) -> dict[str, torch.Tensor]:
    """A batch of choices as index tensors: ``kind`` (B,), ``cell`` (B, 2), ``edges`` (B, 4)."""
    return {
        "kind": torch.tensor([c.kind for c in choices], dtype=torch.long),
        "cell": torch.tensor([c.cell for c in choices], dtype=torch.long).reshape(-1, 2),
        "edges": torch.tensor([c.edges for c in choices], dtype=torch.long),
    }


Heads = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``PromptNet``'s outputs: kind, click-map and box-side logits."""


def log_prob(heads: Heads, chosen: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B,)`` log-probabilities of the chosen actions under the heads' logits."""
    kind, clicks, edges = heads
    k = chosen["kind"]
    grid = clicks.shape[-1]
    lp = F.log_softmax(kind, dim=1).gather(1, k[:, None])[:, 0]
    is_click = (k == ActionKind.POSITIVE_CLICK) | (k == ActionKind.NEGATIVE_CLICK)
    sign = (k - 1).clamp(0, 1)
    rows, cols = chosen["cell"][:, 0], chosen["cell"][:, 1]
    flat = F.log_softmax(clicks.flatten(2), dim=2)  # (B, 2, grid*grid)
    per_map = flat.gather(1, sign[:, None, None].expand(-1, 1, flat.shape[2]))[:, 0]
    click_lp = per_map.gather(1, (rows * grid + cols)[:, None])[:, 0]
    side_lp = F.log_softmax(edges, dim=2).gather(2, chosen["edges"][:, :, None])[:, :, 0].sum(1)
    zero = torch.zeros_like(lp)
    return (
        lp + torch.where(is_click, click_lp, zero) + torch.where(k == ActionKind.BOX, side_lp, zero)
    )


def sample(heads: Heads, generator: torch.Generator) -> list[Choice]:
    """One choice per row, drawn from the heads' distributions with ``generator``."""
    kind, clicks, edges = heads
    grid = clicks.shape[-1]
    kinds = torch.multinomial(F.softmax(kind, dim=1), 1, generator=generator)[:, 0]
    flat = F.softmax(clicks.flatten(2), dim=2)
    out = []
    for b, k in enumerate(kinds.tolist()):
        cell = (0, 0)
        if k in (ActionKind.POSITIVE_CLICK, ActionKind.NEGATIVE_CLICK):
            index = int(torch.multinomial(flat[b, k - 1], 1, generator=generator))
            cell = (index // grid, index % grid)
        sides = (0, 0, 0, 0)
        if k == ActionKind.BOX:
            drawn = torch.multinomial(F.softmax(edges[b], dim=1), 1, generator=generator)[:, 0]
            left, top, right, bottom = (int(v) for v in drawn.tolist())
            sides = (left, top, right, bottom)
        out.append(Choice(int(k), cell, sides))
    return out


@dataclass
class Episode:
    """One played episode: its inputs and choices per turn, and how it ended."""

    sample_index: int
    planes: list[np.ndarray] = field(default_factory=list)
    scalars: list[np.ndarray] = field(default_factory=list)
    choices: list[Choice] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    dice: float = 0.0
    source: str = ""

    @property
    def ret(self) -> float:
        """The episode's return under the env's reward."""
        return float(sum(self.rewards))


def play(
    net: PromptNet,
    envs: Sequence[MedSegEnv],
    indices: Sequence[int],
    generator: torch.Generator | None = None,
) -> list[Episode]:
    """Play sample ``indices[i]`` in ``envs[i]``, all at once; greedy without ``generator``.

    Returns one ``Episode`` per env, with the inputs, choices and (when sampling) the
    log-probabilities of every turn, for the policy-gradient update.
    """
    if len(envs) < len(indices):
        raise ValueError(f"play needs an env per episode: {len(envs)} envs, {len(indices)}")
    spec = net.spec
    episodes = [Episode(int(i)) for i in indices]
    state = [
        env.reset(options={"sample_index": int(i)}) for env, i in zip(envs, indices, strict=False)
    ]
    hints = [hint_pixel(obs, info, "learned") for obs, info in state]
    live = list(range(len(indices)))
    net.eval()
    while live:
        planes, scalars = zip(
            *(policy_planes(state[i][0], state[i][1], hints[i], spec) for i in live), strict=True
        )
        with torch.no_grad():
            heads = net(
                network_input(torch.from_numpy(np.stack(planes))),
                torch.from_numpy(np.stack(scalars)),
            )
            if generator is None:
                choices = greedy(*heads)
                lps = [0.0] * len(live)
            else:
                choices = sample(heads, generator)
                lps = log_prob(heads, choice_tensors(choices)).tolist()
        still = []
        for j, i in enumerate(live):
            ep = episodes[i]
            ep.planes.append(planes[j])
            ep.scalars.append(scalars[j])
            ep.choices.append(choices[j])
            ep.log_probs.append(lps[j])
            obs, reward, terminated, truncated, info = envs[i].step(
                to_action(choices[j], hints[i], spec)
            )
            ep.rewards.append(float(reward))
            state[i] = (obs, info)
            if terminated or truncated:
                ep.dice, ep.source = float(info["dice"]), str(info["source_id"])
            else:
                still.append(i)
        live = still
    return episodes
