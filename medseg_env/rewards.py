"""Reward terms, their weighted composition, and the named presets.

A reward is a weighted sum of named terms. Each term is a function of a ``StepContext`` (what
the step changed) returning a float; the env reports every weighted term in
``info["reward_terms"]``, and they add up to the reward.

Adding your own term takes a few lines::

    def boundary_bonus(ctx):               # ctx: medseg_env.rewards.StepContext
        return float(ctx.dice > 0.9 and ctx.terminated)

    env = gym.make("MedSeg-v0", reward={"dice_gain": 1.0, "step": -0.01, boundary_bonus: 0.5})
    # or register it once and use it by name:
    register_reward_term("boundary_bonus", boundary_bonus)
    env = gym.make("MedSeg-v0", reward={"dice_gain": 1.0, "boundary_bonus": 0.5})

Presets (``reward="..."``):

- ``dice_gain`` (default): ``ΔDice − 0.01 per prompt − 0.05 per invalid action``.
- ``iou_gain``: the same with IoU.
- ``final_dice``: sparse, the Dice when the episode ends (stop or truncation), else 0.
- ``medsam_agent``: the MedSAM-Agent paper's episode-level reward, as its public code computes
  it, given when the episode ends: ``0.2·format + 0.8·clip01(0.5·IoU_T + 0.5·Dice_T −
  (maxIoU − IoU_T) − 0.01·turns + 0.1·Σ max(0, ΔIoU))``. Here ``format`` is 1 when every action
  of the episode was valid (and, in a text env, every reply well-formed) and 0 otherwise, and
  ``turns`` counts prompts (not the stop).

``prompt_proximity`` grades how near a positive click (or a box's centre) came to the target
(1 on it, falling to 0 at a quarter of the canvas away): shaping for training from scratch,
where ``dice_gain`` scores every miss alike; ``medseg_agents.training.ppo`` adds it at weight 0.3.

Terms include ``format_error`` (1 on a turn whose reply gave no action), for text envs: every
preset already charges such a turn through ``invalid_action``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .actions import ActionKind
from .registry import Registry, UnknownNameError, callable_entries

RewardTerm = Callable[["StepContext"], float]

REJECTED = -1
"""``StepContext.kind`` of a turn spent on a reply that gave no action."""


@dataclass(frozen=True, eq=False)
class StepContext:
    """Everything a reward term may look at after one step.

    Masks are ``(S, S)`` bool arrays in observation pixels. ``ious`` and ``dices`` hold the
    value after every turn so far, starting with the empty initial mask, so ``ious[-1]`` is
    this step's IoU and ``len(ious) - 1`` the number of turns taken.

    A turn spent on a reply that gave no action (``MedSegEnv.reject``: a malformed MLLM reply)
    has ``kind == REJECTED`` (-1), ``valid`` False, ``format_error`` set to the reason and the
    stop action as ``action``; ``num_invalid`` counts it too, ``num_format_errors`` only these.
    """

    prev_mask: np.ndarray
    mask: np.ndarray
    ground_truth: np.ndarray
    action: Mapping[str, Any]
    kind: int
    turn: int
    valid: bool
    invalid_reason: str | None
    terminated: bool
    truncated: bool
    dice: float
    dice_prev: float
    iou: float
    iou_prev: float
    ious: tuple[float, ...]
    num_prompts: int
    num_invalid: int
    format_error: str | None = None
    num_format_errors: int = 0

    @property
    def episode_over(self) -> bool:
        return self.terminated or self.truncated


def dice_gain(ctx: StepContext) -> float:
    return ctx.dice - ctx.dice_prev


def iou_gain(ctx: StepContext) -> float:
    return ctx.iou - ctx.iou_prev


def step(ctx: StepContext) -> float:
    """1 for every prompt (valid or not); the stop action is free."""
    return float(ctx.kind != 0)


def invalid_action(ctx: StepContext) -> float:
    return float(not ctx.valid)


def format_error(ctx: StepContext) -> float:
    """1 on a turn whose reply could not be parsed into an action (text envs)."""
    return float(ctx.format_error is not None)


def final_dice(ctx: StepContext) -> float:
    return ctx.dice if ctx.episode_over else 0.0


def final_iou(ctx: StepContext) -> float:
    return ctx.iou if ctx.episode_over else 0.0


def medsam_agent(ctx: StepContext) -> float:
    """MedSAM-Agent's outcome + process reward, paid once when the episode ends."""
    if not ctx.episode_over:
        return 0.0
    ious = np.asarray(ctx.ious)
    positive_gains = float(np.clip(np.diff(ious), 0.0, None).sum())
    quality = (
        0.5 * ctx.iou
        + 0.5 * ctx.dice
        - (float(ious.max()) - ctx.iou)
        - 0.01 * ctx.num_prompts
        + 0.1 * positive_gains
    )
    fmt = float(ctx.num_invalid == 0)
    return 0.2 * fmt + 0.8 * float(np.clip(quality, 0.0, 1.0))


def prompt_proximity(ctx: StepContext) -> float:
    """Shaping for training: how near a positive click (or a box's centre) came to the target.

    ``1 − d / (S/4)``, clipped to [0, 1], where ``d`` is the distance in canvas pixels from the
    point to the nearest target pixel centre (0 on the target) and ``S`` the canvas side; 0 for
    stops, negative clicks and invalid actions. It grades the prompts that miss, which
    ``dice_gain`` scores alike (0): a policy that starts with random prompts learns where the
    target is long before its first click lands on it.
    """
    if not ctx.valid or ctx.kind not in (ActionKind.POSITIVE_CLICK, ActionKind.BOX):
        return 0.0
    size = ctx.ground_truth.shape[0]
    if ctx.kind == ActionKind.BOX:
        x0, y0, x1, y1 = np.asarray(ctx.action["box"], dtype=float) * size
        point = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    else:
        point = np.asarray(ctx.action["point"], dtype=float) * size
    rows, cols = np.nonzero(ctx.ground_truth)
    if rows.size == 0:
        return 0.0
    distance = float(np.min(np.hypot(cols + 0.5 - point[0], rows + 0.5 - point[1])))
    inside = ctx.ground_truth[min(int(point[1]), size - 1), min(int(point[0]), size - 1)]
    return 1.0 if inside else float(np.clip(1.0 - distance / (size / 4), 0.0, 1.0))


def _check_preset(name: str, preset: Mapping[str, float]) -> None:
    if not isinstance(preset, Mapping) or not preset:
        raise TypeError(f"reward preset {name!r} must be a non-empty {{term: weight}} mapping")
    for term, weight in preset.items():
        if not isinstance(term, str) or not isinstance(weight, int | float):
            raise TypeError(
                f"reward preset {name!r}: entries must be term name -> number; got "
                f"{term!r}: {weight!r}"
            )


TERMS: Registry[RewardTerm] = Registry(
    "reward term", "medseg_env.reward_terms", callable_entries("reward term")
)
PRESETS: Registry[Mapping[str, float]] = Registry(
    "reward preset", "medseg_env.reward_presets", _check_preset
)


def register_reward_term(name: str, term: RewardTerm, *, overwrite: bool = False) -> None:
    """Make ``name`` usable in reward compositions (``reward={name: weight}``)."""
    TERMS.register(name, term, overwrite=overwrite)


def register_reward_preset(
    name: str, weights: Mapping[str, float], *, overwrite: bool = False
) -> None:
    """Make ``reward=name`` mean the weighted composition ``weights`` (term name -> weight).

    The terms are looked up when a ``Reward`` is built, so a preset may name terms that a
    plug-in registers later.
    """
    # A copy, so the caller's dict cannot change the preset later; the check sees non-mappings.
    preset = dict(weights) if isinstance(weights, Mapping) else weights
    PRESETS.register(name, preset, overwrite=overwrite)


for _name, _term in (
    ("dice_gain", dice_gain),
    ("iou_gain", iou_gain),
    ("step", step),
    ("invalid_action", invalid_action),
    ("format_error", format_error),
    ("final_dice", final_dice),
    ("final_iou", final_iou),
    ("medsam_agent", medsam_agent),
    ("prompt_proximity", prompt_proximity),
):
    register_reward_term(_name, _term)

register_reward_preset("dice_gain", {"dice_gain": 1.0, "step": -0.01, "invalid_action": -0.05})
register_reward_preset("iou_gain", {"iou_gain": 1.0, "step": -0.01, "invalid_action": -0.05})
register_reward_preset("final_dice", {"final_dice": 1.0})
register_reward_preset("medsam_agent", {"medsam_agent": 1.0})


def reward_terms() -> list[str]:
    """Registered reward term names, in registration order."""
    return TERMS.names()


def reward_presets() -> list[str]:
    """Registered reward preset names, in registration order."""
    return PRESETS.names()


RewardSpec = (
    str | RewardTerm | Mapping[str | RewardTerm, float] | Sequence[tuple[str | RewardTerm, float]]
)


class Reward:
    """A weighted sum of named terms; call it with a ``StepContext``.

    Args:
        spec: a preset name, a single term (name or callable), a mapping ``{term: weight}``, or
            a sequence of ``(term, weight)`` pairs, where a term is a registered name or a
            callable taking a ``StepContext``.
    """

    def __init__(self, spec: RewardSpec = "dice_gain") -> None:
        self.weights: dict[str, float] = {}
        self.terms: dict[str, RewardTerm] = {}
        pairs: list[tuple[str | RewardTerm, float]]
        if isinstance(spec, str):
            pairs = list(PRESETS.get(spec).items()) if spec in PRESETS else [(spec, 1.0)]
        elif callable(spec):
            pairs = [(spec, 1.0)]
        elif isinstance(spec, Mapping):
            pairs = list(spec.items())
        else:
            pairs = list(spec)
        if not pairs:
            raise ValueError("reward composition is empty")
        for term, weight in pairs:
            name, fn = self._resolve(term)
            if not np.isfinite(weight):
                raise ValueError(f"reward weight of {name!r} must be finite; got {weight}")
            if name in self.terms:
                raise ValueError(f"reward term {name!r} appears twice")
            self.terms[name] = fn
            self.weights[name] = float(weight)

    @staticmethod
    def _resolve(term: str | RewardTerm) -> tuple[str, RewardTerm]:
        if isinstance(term, str):
            if term not in TERMS:
                raise UnknownNameError(
                    f"unknown reward term or preset {term!r}; known: presets "
                    f"{PRESETS.names()}, terms {TERMS.names()}"
                )
            return term, TERMS.get(term)
        if callable(term):
            return getattr(term, "__name__", type(term).__name__), term
        raise TypeError(f"a reward term is a name or a callable; got {term!r}")

    def __call__(self, ctx: StepContext) -> tuple[float, dict[str, float]]:
        """Return ``(reward, {term: weighted value})``."""
        parts = {name: self.weights[name] * float(fn(ctx)) for name, fn in self.terms.items()}
        return float(sum(parts.values())), parts
