"""The SFT stage: behaviour cloning of the expert's turns.

The loss of a turn is the cross-entropy of the expert's kind, plus that of its click cell (on
the map of the click's sign) for a click, plus the mean cross-entropy of its four box-side bins
for a box. Minibatches are drawn from all turns with a seeded generator.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from medseg_agents.learned.network import PromptNet, network_input
from medseg_env.actions import ActionKind

from .expert import Demonstrations


def bc_loss(
    net: PromptNet, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """The imitation loss of a minibatch and its parts (for the curve)."""
    kind, clicks, edges = net(network_input(batch["planes"]), batch["scalars"])
    k = batch["kind"]
    kind_loss = F.cross_entropy(kind, k)
    loss = kind_loss
    parts = {"kind": kind_loss.item()}
    is_click = (k == ActionKind.POSITIVE_CLICK) | (k == ActionKind.NEGATIVE_CLICK)
    if is_click.any():
        grid = clicks.shape[-1]
        maps = clicks[is_click].flatten(2)  # (n, 2, grid*grid)
        sign = (k[is_click] - 1)[:, None, None].expand(-1, 1, maps.shape[2])
        logits = maps.gather(1, sign)[:, 0]
        target = batch["cell"][is_click, 0] * grid + batch["cell"][is_click, 1]
        click_loss = F.cross_entropy(logits, target)
        loss = loss + click_loss
        parts["click"] = click_loss.item()
    is_box = k == ActionKind.BOX
    if is_box.any():
        side_loss = F.cross_entropy(
            edges[is_box].reshape(-1, edges.shape[2]), batch["edges"][is_box].reshape(-1)
        )
        loss = loss + side_loss
        parts["box"] = side_loss.item()
    return loss, parts


def minibatch(data: Demonstrations, rows: np.ndarray) -> dict[str, torch.Tensor]:
    return {
        "planes": torch.from_numpy(data.planes[rows]),
        "scalars": torch.from_numpy(data.scalars[rows]),
        "kind": torch.from_numpy(data.kind[rows]),
        "cell": torch.from_numpy(data.cell[rows]),
        "edges": torch.from_numpy(data.edges[rows]),
    }


def bc_steps(
    net: PromptNet,
    optimizer: torch.optim.Optimizer,
    data: Demonstrations,
    rng: np.random.Generator,
    steps: int,
    batch_size: int,
) -> dict[str, float]:
    """``steps`` optimiser steps of imitation; returns the mean loss and parts over them."""
    net.train()
    totals: dict[str, float] = {}
    for _ in range(steps):
        rows = rng.integers(0, len(data), size=batch_size)
        loss, parts = bc_loss(net, minibatch(data, rows))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        for key, value in {"loss": loss.item(), **parts}.items():
            totals[key] = totals.get(key, 0.0) + value / steps
    net.eval()
    return totals
