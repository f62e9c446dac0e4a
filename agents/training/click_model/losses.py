"""The training losses, on the model's 256×256 low-res logits, and the targets' frame.

Frames follow ``medseg_env.geometry.LongestSide``, the rule the segmenter itself uses: the
image's longest side scaled to ``INPUT``, padded at the bottom and right.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medseg_env.geometry import LongestSide, pixel_of

from .data import INPUT
from .prompting import Click, click_prompts


def soft_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample soft Dice of ``sigmoid(logits)`` against ``target``, ``(B,)``, in [0, 1]."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    return (2 * inter + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)


def dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample BCE + soft-Dice loss, ``(B,)``."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((1, 2, 3))
    return bce + (1 - soft_dice(logits, target))


def regression_loss(dice: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """Mean hinge ``max(0, previous - dice)``: a corrective click must not make the mask worse
    (``previous`` is the last round's soft Dice, detached; zero on the first round)."""
    if previous is None:
        return dice.sum() * 0
    return F.relu(previous - dice).mean()


def click_loss(logits: torch.Tensor, pts: list[list[Click]], gts: list[np.ndarray]) -> torch.Tensor:
    """BCE of the low-res logits at every click so far against the click's label, averaged over
    the clicks: the mask must agree with each click, not only with the fed-back mask."""
    terms = []
    for b, (clicks, g) in enumerate(zip(pts, gts, strict=True)):
        if not clicks:
            continue
        prompts = click_prompts(clicks)
        # the low-res pixel holding each click: the image frame scaled as the model input
        frame = LongestSide.of(g.shape, INPUT)
        rows, cols = pixel_of(frame.to_target(prompts.points), (INPUT, INPUT))
        values = logits[b, 0, torch.from_numpy(rows), torch.from_numpy(cols)]
        labels = torch.from_numpy(prompts.labels).to(values)
        terms.append(F.binary_cross_entropy_with_logits(values, labels))
    return torch.stack(terms).mean() if terms else logits.sum() * 0


def target_frame(mask: np.ndarray) -> torch.Tensor:
    """GT in the model's padded 256×256 low-res frame."""
    frame = LongestSide.of(mask.shape, INPUT)
    nh, nw = frame.resized_shape
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    if not frame.is_identity:
        m = F.interpolate(m, (nh, nw), mode="nearest")
    return F.pad(m, (0, INPUT - nw, 0, INPUT - nh))[0]
