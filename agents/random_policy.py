"""``RandomPolicy``: random prompts, the floor every other policy should beat.

(The module is not called ``random.py``: inside the package that name would shadow the
standard library's ``random``.)
"""

from __future__ import annotations

import gymnasium as gym

from medseg_env import actions as A
from medseg_env.actions import Action, ActionKind
from medseg_env.segmenters import PromptKind

from .base import Info, Observation, Policy

_PROMPT_KINDS = (ActionKind.POSITIVE_CLICK, ActionKind.NEGATIVE_CLICK, ActionKind.BOX)


class RandomPolicy(Policy):
    """Stops with probability ``p_stop``; otherwise a uniformly random prompt.

    The kind is uniform among the prompt kinds the segmenter takes (positive click, negative
    click, box; all three when no env is given). A click lands uniformly in the image. A box has
    a width drawn uniformly in ``[min_box_size, 1]`` and a left edge uniformly where it fits
    (the same for the height), all in normalised observation coordinates. Reads nothing of the
    ground truth: from the env it takes only the segmenter's prompt kinds and the minimum box
    side (``min_box_size`` pixels / ``obs_size``), so that its boxes are never refused.

    Args:
        p_stop: probability of stopping at each turn (0.05).
        min_box_size: minimum box side as a fraction of the image side (0.02).
        seed: seeds ``self.rng``.
    """

    name = "random"
    needs_oracle = False

    def __init__(
        self, p_stop: float = 0.05, min_box_size: float = 0.02, seed: int | None = None
    ) -> None:
        super().__init__(seed)
        if not 0.0 <= p_stop <= 1.0:
            raise ValueError(f"p_stop must be in [0, 1]; got {p_stop}")
        if not 0.0 <= min_box_size <= 1.0:
            raise ValueError(f"min_box_size must be in [0, 1]; got {min_box_size}")
        self.p_stop, self.min_box_size = p_stop, min_box_size

    def act(self, obs: Observation, info: Info, env: gym.Env | None = None) -> Action:
        kinds, min_side = list(_PROMPT_KINDS), self.min_box_size
        if env is not None:
            # Only the oracle surface's public facts: never the ground truth or the prompts.
            facts = env.get_wrapper_attr("oracle")
            kinds = [k for k in kinds if facts.supports(_needs(k))]
            # 1% over the env's limit so float32 rounding of the corners cannot undercut it.
            env_min = 1.01 * float(facts.min_box_size) / facts.obs_size
            min_side = min(1.0, max(min_side, env_min))
        if not kinds or self.rng.random() < self.p_stop:
            return A.stop()
        kind = kinds[int(self.rng.integers(len(kinds)))]
        if kind == ActionKind.BOX:
            x0, x1 = self._span(min_side)
            y0, y1 = self._span(min_side)
            return A.box(x0, y0, x1, y1)
        x, y = self.rng.random(2)
        return A.click(float(x), float(y), kind == ActionKind.POSITIVE_CLICK)

    def _span(self, min_side: float) -> tuple[float, float]:
        """A random ``[lo, hi]`` inside [0, 1] with ``hi - lo >= min_side``."""
        side = self.rng.uniform(min_side, 1.0)
        lo = self.rng.uniform(0.0, 1.0 - side)
        return float(lo), float(min(1.0, lo + side))


def _needs(kind: ActionKind) -> PromptKind:
    """The segmenter prompt kind (``Segmenter.supports``) an action kind needs."""
    return "box" if kind == ActionKind.BOX else "point"
