"""The learned agent's network, its input, and its pixel-precise actions.

**Input.** A ``crop``×``crop`` window of the observation canvas centred on the user's hint
(``info["target_hint"]``), at the canvas's own resolution (no resizing), with 6 channels:

0. the image's grey level (the mean of its RGB), standardised over the window's image pixels;
1. the current mask; 2. positive clicks; 3. negative clicks; 4. the box (``obs["prompts"]``);
5. where the window lies on the canvas (1) rather than past its edge (0).

and 4 numbers: the turn, the clicks so far and whether a box was sent (each over the horizon),
and whether the last action was refused. Every bundled target fits a 96-pixel window around
its innermost pixel: no side of a bundled target lies more than 45 canvas pixels from it.
Targets whose sides lie farther than ``crop / 2`` from the hint are clipped; a larger ``crop``
covers them at a higher cost.

**Actions** (``PromptNet`` heads), all relative to the hint, at the resolution ``cell``:

- ``kind``: 4 logits, ``medseg_env.actions.ActionKind`` order (stop, positive click, negative
  click, box);
- ``clicks``: 2 maps of logits over the window's cells (positive, negative); the click goes to
  the centre of the chosen cell. With ``cell = 1`` every canvas pixel of the window is a cell;
- ``edges``: 4 × ``crop / (2 cell)`` logits: how far the box's left, top, right and bottom sides
  lie from the hint, in cells.

``cell = 1`` places clicks and box sides on canvas pixels; larger cells snap them to a coarse
grid (the ablation the training recipe runs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medseg_env import actions as A
from medseg_env.actions import Action, ActionKind

FORMAT = "medseg-learned/1"
NUM_KINDS = 4
CHANNELS = ("grey", "mask", "positive_clicks", "negative_clicks", "box", "on_canvas")
SCALARS = ("turn", "clicks", "has_box", "refused")


@dataclass(frozen=True)
class PolicySpec:
    """What a checkpoint's network is: saved beside its weights as JSON.

    Attributes:
        crop: side of the input window, canvas pixels (even).
        cell: action resolution, canvas pixels per cell (1: pixel-precise); divides ``crop / 2``.
        width: channels of the first convolution (the encoder's later stages have 2, 3, 4 and
            4 times that).
        horizon: the policy stops once this many turns have been taken.
        obs_size: the canvas side it was trained on.
    """

    crop: int = 96
    cell: int = 1
    width: int = 12
    horizon: int = 5
    obs_size: int = 256

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PolicySpec.{f.name} must be an integer >= 1; got {value!r}")
        if self.crop % 32 or self.crop > self.obs_size:
            raise ValueError(
                f"PolicySpec.crop must be a multiple of 32 no larger than obs_size="
                f"{self.obs_size}; got {self.crop}"
            )
        if (self.crop // 2) % self.cell:
            half = self.crop // 2
            raise ValueError(f"PolicySpec.cell must divide crop/2={half}; got {self.cell}")

    @property
    def grid(self) -> int:
        """Cells per side of the click maps."""
        return self.crop // self.cell

    @property
    def bins(self) -> int:
        """Distances a box side can lie from the hint, in cells."""
        return self.crop // (2 * self.cell)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    groups = 4 if cout % 4 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(groups, cout), nn.SiLU()
    )


class PromptNet(nn.Module):
    """A small U-Net: a global head (kind, box sides) and full-resolution click maps.

    ``forward(x, s)`` takes ``x`` ``(B, 6, crop, crop)`` and ``s`` ``(B, 4)`` and returns
    ``(kind (B, 4), clicks (B, 2, grid, grid), edges (B, 4, bins))`` logits.

    The trunk works at half the window's resolution (a strided stem, then four halvings from
    ``width`` to ``4 width`` channels, and a decoder back up with skip connections), which keeps
    it cheap enough to train on a CPU; a thin full-resolution branch then adds per-pixel detail
    to the upsampled click logits, so a click can still land on any canvas pixel.
    """

    def __init__(self, spec: PolicySpec) -> None:
        super().__init__()
        self.spec = spec
        w = spec.width
        enc = [w, 2 * w, 3 * w, 4 * w, 4 * w]  # at 1/2, 1/4, 1/8, 1/16, 1/32 of the window
        self.full = _conv(len(CHANNELS), 8)
        self.stem = _conv(len(CHANNELS), enc[0], 2)
        self.down = nn.ModuleList(
            nn.Sequential(_conv(enc[i], enc[i + 1], 2), _conv(enc[i + 1], enc[i + 1]))
            for i in range(4)
        )
        bottom = spec.crop // 32
        self.scalars = nn.Linear(len(SCALARS), enc[-1])
        self.fc = nn.Sequential(nn.Linear(enc[-1] * bottom * bottom, 256), nn.SiLU())
        self.kind = nn.Linear(256, NUM_KINDS)
        self.edges = nn.Linear(256, 4 * spec.bins)
        dec = [max(2 * w // 3, 4), 4 * w // 3, 2 * w, 3 * w]  # out widths at 1/2 .. 1/16
        self.up = nn.ModuleList(
            _conv((enc[4] if i == 3 else dec[i + 1]) + enc[i], dec[i]) for i in reversed(range(4))
        )
        self.clicks = nn.Conv2d(dec[0] + 8, 2, 1)
        # oneDNN's convolutions with these few channels run about 1.5x faster channels-last
        self.to(memory_format=torch.channels_last)

    def forward(
        self, x: torch.Tensor, s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(skips[-1]))
        h = skips.pop() + self.scalars(s)[:, :, None, None]  # the state numbers join at the bottom
        flat = self.fc(h.flatten(1))
        for block in self.up:
            skip = skips.pop()
            h = block(torch.cat([F.interpolate(h, size=skip.shape[-2:]), skip], dim=1))
        h = F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False)
        clicks = self.clicks(torch.cat([h, self.full(x)], dim=1))
        if self.spec.cell > 1:
            clicks = F.avg_pool2d(clicks, self.spec.cell)
        edges = self.edges(flat).view(-1, 4, self.spec.bins)
        return self.kind(flat), clicks, edges


# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------


def window(array: np.ndarray, row: int, col: int, crop: int) -> np.ndarray:
    """The ``crop``×``crop`` window of ``array`` (``(S, S, C)``) centred on ``(row, col)``.

    Pixel ``(row, col)`` lands at ``(crop/2, crop/2)``; what lies past the canvas is zero.
    """
    size = array.shape[0]
    half = crop // 2
    out = np.zeros((crop, crop, *array.shape[2:]), array.dtype)
    r0, c0 = row - half, col - half
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = min(r0 + crop, size), min(c0 + crop, array.shape[1])
    out[rs - r0 : re - r0, cs - c0 : ce - c0] = array[rs:re, cs:ce]
    return out


def policy_planes(
    obs: dict[str, np.ndarray], info: dict[str, Any], hint: tuple[int, int], spec: PolicySpec
) -> tuple[np.ndarray, np.ndarray]:
    """``(planes (6, crop, crop) uint8, s (4,) float32)``: one observation's raw input.

    The planes are kept as bytes (the grey level 0..255, the others 0/1) so that imitation data
    stays small; :func:`network_input` turns a batch of them into the network's floats.
    """
    row, col = hint
    size = obs["image"].shape[0]
    grey = np.round(obs["image"].mean(axis=-1)).astype(np.uint8)
    planes = np.concatenate(
        [
            grey[..., None],
            (obs["mask"] > 0).astype(np.uint8),
            (obs["prompts"] > 0).astype(np.uint8),
            np.ones((size, size, 1), np.uint8),
        ],
        axis=-1,
    )
    x = window(planes, row, col, spec.crop).transpose(2, 0, 1).copy()
    h = float(spec.horizon)
    s = np.array(
        [
            float(info.get("turn", 0)) / h,
            float(info.get("num_clicks", 0)) / h,
            float(info.get("num_boxes", 0) > 0),
            float(info.get("invalid_action") is not None),
        ],
        np.float32,
    )
    return x, s


def network_input(planes: torch.Tensor) -> torch.Tensor:
    """``(B, 6, crop, crop)`` float32 from ``policy_planes``' bytes: the grey level standardised
    over each window's on-canvas pixels (so CT, MR and microscopy look alike), the rest 0/1."""
    x = planes.to(torch.float32)
    on = x[:, 5:6]
    count = on.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    grey = x[:, 0:1] / 255.0
    mean = (grey * on).sum(dim=(2, 3), keepdim=True) / count
    var = (((grey - mean) * on) ** 2).sum(dim=(2, 3), keepdim=True) / count
    grey = (grey - mean) / (var.sqrt() + 0.05) * on
    return torch.cat([grey, x[:, 1:]], dim=1).contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------
# Actions: the heads' choices <-> env actions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """One action as the heads choose it: a kind, a click cell and four box-side bins."""

    kind: int
    cell: tuple[int, int] = (0, 0)  # (row, col) of the click map
    edges: tuple[int, int, int, int] = (0, 0, 0, 0)  # left, top, right, bottom, in bins


def to_action(choice: Choice, hint: tuple[int, int], spec: PolicySpec) -> Action:
    """The env action of a choice, on the ``obs_size`` canvas (kept inside it)."""
    row, col = hint
    size, cell, half = spec.obs_size, spec.cell, spec.crop // 2
    kind = ActionKind(choice.kind)
    if kind == ActionKind.STOP:
        return A.stop()
    if kind in (ActionKind.POSITIVE_CLICK, ActionKind.NEGATIVE_CLICK):
        r = row - half + choice.cell[0] * cell + cell // 2
        c = col - half + choice.cell[1] * cell + cell // 2
        r, c = min(max(r, 0), size - 1), min(max(c, 0), size - 1)
        return A.pixel_click(r, c, size, kind == ActionKind.POSITIVE_CLICK)
    left, top, right, bottom = (b * cell + cell // 2 for b in choice.edges)
    r0, c0 = max(row - top, 0), max(col - left, 0)
    r1, c1 = min(row + bottom, size - 1), min(col + right, size - 1)
    return A.pixel_box(r0, c0, r1, c1, size)


def to_choice(action: Action, hint: tuple[int, int], spec: PolicySpec) -> Choice:
    """The heads' choice nearest an env action (the expert's, for imitation).

    A click maps to the cell holding its pixel, a box to the bins of its sides' distances from
    the hint; both are clipped into what the heads can express.
    """
    kind, point, box = A.validate(action)
    row, col = hint
    size, cell, half = spec.obs_size, spec.cell, spec.crop // 2
    if kind in (ActionKind.POSITIVE_CLICK, ActionKind.NEGATIVE_CLICK):
        c, r = (np.clip(np.floor(point * size), 0, size - 1)).astype(int)
        i = min(max((r - row + half) // cell, 0), spec.grid - 1)
        j = min(max((c - col + half) // cell, 0), spec.grid - 1)
        return Choice(int(kind), cell=(int(i), int(j)))
    if kind == ActionKind.BOX:
        x0, y0, x1, y1 = box * size
        # inclusive pixel sides: the box covers columns floor(x0) .. ceil(x1) - 1
        c0, r0 = int(np.floor(min(x0, x1))), int(np.floor(min(y0, y1)))
        c1, r1 = int(np.ceil(max(x0, x1))) - 1, int(np.ceil(max(y0, y1))) - 1
        dists = (col - c0, row - r0, c1 - col, r1 - row)
        edges = tuple(min(max(d // cell, 0), spec.bins - 1) for d in dists)
        return Choice(int(kind), edges=edges)  # type: ignore[arg-type]
    return Choice(int(kind))


def greedy(
    kind: torch.Tensor, clicks: torch.Tensor, edges: torch.Tensor, stop: torch.Tensor | None = None
) -> list[Choice]:
    """The most likely choice of every row of a batch of head outputs.

    ``stop`` (``(B,)`` bool) forces a stop where set (the horizon is reached).
    """
    kinds = kind.argmax(dim=1)
    if stop is not None:
        kinds = torch.where(stop, torch.zeros_like(kinds), kinds)
    grid = clicks.shape[-1]
    out = []
    for b, k in enumerate(kinds.tolist()):
        cell = (0, 0)
        if k in (ActionKind.POSITIVE_CLICK, ActionKind.NEGATIVE_CLICK):
            flat = int(clicks[b, k - 1].argmax())
            cell = (flat // grid, flat % grid)
        sides = tuple(int(v) for v in edges[b].argmax(dim=1).tolist())
        out.append(Choice(int(k), cell, sides))  # type: ignore[arg-type]
    return out
