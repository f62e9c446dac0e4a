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
- ``medsam_agent``: MedSAM-Agent's RL reward, equal to ``compute_score`` of its released code
  (``RL-verl/recipe/medsam_agent/medsam_reward.py`` at ``bfb43be``, lines 160-562), paid when
  the episode ends: ``0.2·format + 0.8·clip01(base − penalty + bonus)`` (see
  :func:`medsam_agent_score`). ``format`` is 1 / 0.5 / 0 from the ``<tool_call>`` blocks of
  all the episode's replies (an interaction call anywhere, the last call a ``stop_action``);
  ``base``, ``penalty`` and ``bonus`` come from the masks the episode scored, as the RL loop
  keeps them (``StepContext.mask_ious``).

``prompt_proximity`` grades how near a positive click (or a box's centre) came to the target
(1 on it, falling to 0 at a quarter of the canvas away): shaping for training from scratch,
where ``dice_gain`` scores every miss alike; ``medseg_agents.training.ppo`` adds it at weight 0.3.

Terms include ``format_error`` (1 on a turn whose reply gave no action), for text envs: every
preset already charges such a turn through ``invalid_action``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .actions import ActionKind
from .registry import Registry, UnknownNameError, callable_entries

RewardTerm = Callable[["StepContext"], float]

REJECTED = -1
"""``StepContext.kind`` of a turn spent on a reply that gave no action."""


@dataclass(frozen=True, eq=False)
class StepContext:
    """Everything a reward term may look at after one step.

    Masks are square bool arrays in the env's pixel frame: the ``(S, S)`` observation canvas,
    or with ``native_resolution`` the sample at its own resolution (``(L, L)``, ``L`` its
    longest side; see ``MedSegEnv``). ``ious`` holds the IoU after every turn so far (rejected
    replies included), starting with the empty initial mask, so ``ious[-1]`` is this step's
    IoU; ``kinds`` holds every turn's kind, so ``len(kinds)`` is the number of turns.

    A turn spent on a reply that gave no action (``MedSegEnv.reject``: a malformed MLLM reply)
    has ``kind == REJECTED`` (-1), ``valid`` False, ``format_error`` set to the reason and the
    stop action as ``action``; ``num_invalid`` counts it too, ``num_format_errors`` only these.

    ``replies`` are the reply texts of a text env's episode so far (``MedSegEnv.note_reply``;
    empty for a structured episode). ``mask_ious`` and ``mask_dices`` score the masks the
    episode's segmenter calls produced and kept, in order (the empty initial mask is not one
    of them): a text protocol may keep a call's mask out of that record
    (``note_reply(..., scored=False)``), as MedSAM-Agent's RL loop does for a reply that also
    asks to stop.
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
    kinds: tuple[int, ...] = ()
    replies: tuple[str, ...] = ()
    mask_ious: tuple[float, ...] = ()
    mask_dices: tuple[float, ...] = ()

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


# ---------------------------------------------------------------------------------------------
# MedSAM-Agent's RL reward: compute_score of RL-verl/recipe/medsam_agent/medsam_reward.py
# (CUHK-AIM-Group/MedSAM-Agent at bfb43be); line numbers below are that file's.
# ---------------------------------------------------------------------------------------------

MEDSAM_AGENT_LATER_TURN = (
    "Here is the updated mask after your previous action.\n"
    "Based on this, what is your next action? "
    "If the mask is now accurate, you can call 'stop_action' to finish."
)
"""The user text between two replies of MedSAM-Agent's RL loop
(``medsam_iterative_agent_loop.py`` lines 503-507; ``MedSAMAgentRLProtocol.later_turn``)."""

MEDSAM_AGENT_TURN_SEPARATOR = "\nuser\n" + MEDSAM_AGENT_LATER_TURN + "\nassistant\n"
"""What joins two replies in the text ``compute_score`` reads: the RL loop's response tokens
decoded with ``skip_special_tokens=True`` (``reward_loop/naive.py`` line 92), where the user
turn between two replies is ``<|im_end|>\\n<|im_start|>user\\n<image>TEXT<|im_end|>\\n
<|im_start|>assistant\\n`` without its special tokens."""

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_INTERACTION_TOOLS = frozenset({"add_bbox", "add_point"})
_MAX_SCORED_MASKS = 32  # compute_score's default cap on the mask history (lines 357-368)


def medsam_agent_solution(replies: Sequence[str]) -> str:
    """The episode text ``compute_score`` reads: the replies joined by the RL loop's user turn
    (``MEDSAM_AGENT_TURN_SEPARATOR``)."""
    return MEDSAM_AGENT_TURN_SEPARATOR.join(replies)


def medsam_agent_format(solution: str) -> float:
    """``compute_score``'s format score of an episode's text (lines 275-335): 1, 0.5 or 0.

    Every ``<tool_call>(.*?)</tool_call>`` block of the whole text counts (a block may span
    replies). "Interaction": some block, read as JSON, names ``add_bbox`` or ``add_point``;
    a block that does not read (not JSON, not an object, an unhashable name) counts when its
    text contains either name. "Stop": the last block, read as JSON, is an object named
    ``stop_action``; one that is not JSON counts when its text contains ``stop_action``. Both
    give 1, one gives 0.5, neither (or no block) 0.
    """
    blocks = _TOOL_CALL_BLOCK.findall(solution)
    if not blocks:
        return 0.0
    interaction = False
    for block in blocks:
        try:
            data = json.loads(block.strip())
            if data.get("name", "") in _INTERACTION_TOOLS:
                interaction = True
                break
        except Exception:  # noqa: BLE001 (the released code reads any failure as "not JSON")
            if "add_bbox" in block or "add_point" in block:
                interaction = True
                break
    last = blocks[-1].strip()
    try:
        data = json.loads(last)
        stop = isinstance(data, dict) and data.get("name") == "stop_action"
    except Exception:  # noqa: BLE001
        stop = "stop_action" in last
    if interaction and stop:
        return 1.0
    return 0.5 if interaction or stop else 0.0


def medsam_agent_quality(ious: Sequence[float], dices: Sequence[float]) -> float:
    """``compute_score``'s quality, in [0, 1], from the IoU and Dice of the scored masks.

    Lines 435-534: the last mask's ``base = 0.5·IoU + 0.5·Dice`` (its IoU alone when its Dice
    is 0); with two masks or more, ``penalty = (max IoU − last IoU) + 0.01·(number of
    masks)``, the first part only when the gap is at least 1e-6, and ``bonus = 0.1·Σ`` of the
    positive IoU steps from one mask to the next; ``clip01(base − penalty + bonus)``. No mask:
    0. At most the first 32 masks count (the released default cap).
    """
    ious, dices = list(ious)[:_MAX_SCORED_MASKS], list(dices)[:_MAX_SCORED_MASKS]
    if len(ious) != len(dices):
        raise ValueError(f"need one Dice per IoU; got {len(ious)} IoUs and {len(dices)} Dices")
    return _quality(ious, dices)


def _quality(ious: list[float], dices: list[float]) -> float:
    if not ious:
        return 0.0
    final_iou, final_dice = float(ious[-1]), float(dices[-1])
    penalty = bonus = 0.0
    if len(ious) > 1:
        best = max(ious)
        overshoot = 0.0 if abs(best - final_iou) < 1e-6 else (best - final_iou) * 1.0
        penalty = overshoot + len(ious) * 0.01
        for before, after in zip(ious, ious[1:], strict=False):
            if after - before > 0:
                bonus += (after - before) * 0.1
    base = 0.5 * final_iou + 0.5 * final_dice if final_dice > 0 else final_iou
    return max(0.0, min(1.0, base - penalty + bonus))


def _reference_mask(mask: Any) -> np.ndarray:
    """A mask or ground truth read as ``compute_score`` reads it (lines 379-407): an array,
    its first channel when it has three axes, then ``uint8`` (so ``True`` becomes 1)."""
    array = np.array(mask)
    if array.ndim == 3:
        array = array[:, :, 0]
    if array.dtype != np.uint8:
        array = array.astype(np.uint8)
    return array


def _reference_metrics(mask: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """IoU and Dice of two 0..255 masks thresholded at ``> 127`` (lines 20-71)."""
    pred, target = mask > 127, gt > 127
    inter = int(np.count_nonzero(pred & target))
    union = int(np.count_nonzero(pred | target))
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(target))
    iou = inter / union if union else (1.0 if inter == 0 else 0.0)
    dice = 2.0 * inter / total if total else (1.0 if inter == 0 else 0.0)
    return float(iou), float(dice)


def medsam_agent_score(
    solution: str,
    masks: Sequence[Any],
    ground_truth: Any,
    *,
    num_turns: int | None = None,
) -> float:
    """MedSAM-Agent's RL reward of one episode, as ``compute_score`` computes it.

    ``0.2·medsam_agent_format(solution) + 0.8·quality``, ``quality`` being
    :func:`medsam_agent_quality` of the masks' IoU and Dice against the ground truth.

    Args:
        solution: the episode's text (``medsam_agent_solution(replies)``: every reply, the
            unexecuted last one included).
        masks: the masks the RL loop kept (``pred_mask``), in order: arrays or PIL images,
            0..255 (``uint8``, ``> 127`` is the mask), ``(H, W)`` or with channels (the first
            is read). Read exactly as the released code reads them: other dtypes are cast to
            ``uint8``, so a bool mask reads as 0/1 and is empty; pass ``mask * 255``. A mask
            of another size than the ground truth is resized to it with PIL's NEAREST.
        ground_truth: the target mask, read the same way; None scores quality 0.
        num_turns: ``extra_info["num_turns"]`` of the released reward loop: when a positive
            int, only the first ``num_turns`` masks count (else the first 32).

    Exceptions are those of the released code's guarded steps: a mask that cannot be read
    scores IoU and Dice 0, as there.
    """
    fmt = medsam_agent_format(solution)
    masks = list(masks)
    cap = num_turns if isinstance(num_turns, int) and num_turns > 0 else _MAX_SCORED_MASKS
    masks = masks[:cap]
    if ground_truth is None or not masks:
        return 0.2 * fmt
    try:
        gt = _reference_mask(ground_truth)
    except Exception:  # noqa: BLE001 (the released code scores such a case 0)
        return 0.2 * fmt
    ious: list[float] = []
    dices: list[float] = []
    for mask in masks:
        try:
            array = _reference_mask(mask)
            if array.shape != gt.shape:
                resized = Image.fromarray(np.ascontiguousarray(array)).resize(
                    (gt.shape[1], gt.shape[0]), Image.Resampling.NEAREST
                )
                array = np.array(resized)
            iou, dice = _reference_metrics(array, gt)
        except Exception:  # noqa: BLE001 (lines 429-433: a failed turn scores 0)
            iou, dice = 0.0, 0.0
        ious.append(iou)
        dices.append(dice)
    return 0.2 * fmt + 0.8 * _quality(ious, dices)


def _format_of(ctx: StepContext) -> float:
    """The format score of the episode: from its replies, or from its actions when it has
    none (a structured episode: an interaction when any turn was a prompt, a stop when the
    last turn was the stop action)."""
    if ctx.replies:
        return medsam_agent_format(medsam_agent_solution(ctx.replies))
    kinds = ctx.kinds or (ctx.kind,)
    interaction = any(
        k in (ActionKind.POSITIVE_CLICK, ActionKind.NEGATIVE_CLICK, ActionKind.BOX) for k in kinds
    )
    stop = kinds[-1] == ActionKind.STOP
    if interaction and stop:
        return 1.0
    return 0.5 if interaction or stop else 0.0


def medsam_agent(ctx: StepContext) -> float:
    """MedSAM-Agent's RL reward (``compute_score``), paid once when the episode ends.

    ``0.2·format + 0.8·quality``: the format of the episode's replies
    (:func:`medsam_agent_format`) and the quality of the masks it kept
    (:func:`medsam_agent_quality` of ``ctx.mask_ious`` / ``ctx.mask_dices``). An episode that
    kept no mask scores its final mask alone, as the RL loop hands the reward its latest mask
    (or an empty one) then (``medsam_iterative_agent_loop.py`` lines 242-270).
    """
    if not ctx.episode_over:
        return 0.0
    ious, dices = list(ctx.mask_ious), list(ctx.mask_dices)
    if not ious:
        ious, dices = [ctx.iou], [ctx.dice]
    return 0.2 * _format_of(ctx) + 0.8 * medsam_agent_quality(ious, dices)


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
