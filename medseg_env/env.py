"""``MedSegEnv``: one segmentation target in one 2D image per episode.

Each turn the agent sends a prompt (a box, a positive or negative click) or stops; the
segmenter turns all prompts so far (a new box replaces the old one; clicks accumulate) into a new
mask, with the previous turn's low-resolution logits as SAM's ``mask_input`` on click turns; the
reward (by default the Dice gain minus a step penalty) scores the change.

Frames: every sample is letterboxed into an ``S×S`` canvas (``S = obs_size``): the longest
side is resized to ``S`` and the rest is zero-padded at the bottom/right. Observations, actions,
masks and metrics all live on that canvas; pixel spacing is rescaled to match.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from skimage.transform import resize

from . import actions as A
from .data import Dataset, Sample, load_dataset
from .geometry import LongestSide, to_pixels
from .metrics import dice_iou
from .oracle import Oracle
from .render import overlay, prompt_map
from .rewards import Reward, StepContext
from .segmenters import PromptKind, Prompts, Segmenter, make_segmenter

if TYPE_CHECKING:
    import torch

Observation = dict[str, np.ndarray]
StepResult = tuple[Observation, float, bool, bool, dict[str, Any]]


def default_config() -> dict[str, Any]:
    """The configuration ``gym.make("MedSeg-v0")`` uses; any key can be overridden by keyword.

    - ``dataset``: a ``Dataset``, a registered name (``"demo"``, the bundled real data), or a
      path (manifest, ``.npz`` file or folder); see ``medseg_env.data.load_dataset``.
    - ``segmenter``: a ``Segmenter`` or a registered name; ``segmenter_kwargs`` go to its factory.
    - ``obs_size``: side ``S`` of the square observation, in pixels.
    - ``max_turns``: the episode is truncated after this many actions.
    - ``reward``: a preset name, a term, or a weighted composition (``medseg_env.rewards``).
    - ``min_box_size``: a box narrower or lower than this many observation pixels is invalid.
    """
    return {
        "dataset": "demo",
        "segmenter": "litemedsam_clicks",
        "segmenter_kwargs": {},
        "obs_size": 256,
        "max_turns": 10,
        "reward": "dice_gain",
        "min_box_size": 2.0,
    }


class MedSegEnv(gym.Env[Observation, A.Action]):
    """Interactive segmentation of one target per episode.

    Observation (``Dict``):
        - ``image``: ``(S, S, 3)`` uint8, the image.
        - ``mask``: ``(S, S, 1)`` uint8 in {0, 255}, the current mask (empty at reset).
        - ``prompts``: ``(S, S, 3)`` uint8 in {0, 255}: positive clicks, negative clicks, box.
        - ``turn``: ``(1,)`` int64, actions taken so far.

    Action (``Dict``, see ``medseg_env.actions``): ``kind`` (0 stop, 1 positive click,
    2 negative click, 3 box), ``point`` ``(x, y)`` and ``box`` ``(x0, y0, x1, y1)`` in [0, 1]
    observation coordinates.

    Invalid actions: an action inside the action space that cannot be carried out — a click
    on a box-only segmenter, a box on a click-only one, a box narrower or lower than
    ``min_box_size`` pixels — leaves mask and prompts unchanged, counts as a turn, sets
    ``info["invalid_action"]`` to the reason, and scores the ``invalid_action`` reward term.
    An action outside the space (wrong ``kind``, NaN, out of [0, 1]) raises ``ValueError``.

    Oracle access: ``env.get_wrapper_attr("oracle")`` is the episode's ``medseg_env.Oracle``
    (the ground truth, the accepted prompts, ``preview(action)``, ``supports(kind)``, the
    minimum box size and the observation size), for oracle and expert policies only; the
    ground truth is never part of the observation.

    ``info`` after reset and every step: ``dice``, ``iou``, ``dice_prev``, ``iou_prev``,
    ``reward_terms`` (weighted terms, summing to the reward), ``invalid_action`` (None or the
    reason), ``turn``, ``num_prompts``, ``num_clicks``, ``num_boxes``, ``score`` (the
    segmenter's own quality estimate), ``sample_id``, ``sample_index``, ``source_id``,
    ``modality``, ``target`` and ``spacing`` (mm per observation pixel, (row, col)).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}

    def __init__(self, render_mode: str | None = None, **config: Any) -> None:
        unknown = set(config) - set(default_config())
        if unknown:
            raise ValueError(
                f"unknown MedSegEnv option(s) {sorted(unknown)}; known: {sorted(default_config())}"
            )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']}; got {render_mode!r}"
            )
        self.config = {**default_config(), **config}
        self.render_mode = render_mode
        size = int(self.config["obs_size"])
        max_turns = int(self.config["max_turns"])
        if size < 16:
            raise ValueError(f"obs_size must be at least 16 pixels; got {size}")
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1; got {max_turns}")
        self.obs_size, self.max_turns = size, max_turns
        self.dataset: Dataset = load_dataset(self.config["dataset"])
        self.segmenter: Segmenter = make_segmenter(
            self.config["segmenter"], **self.config["segmenter_kwargs"]
        )
        self.reward_fn = Reward(self.config["reward"])
        self.min_box_size = float(self.config["min_box_size"])

        image_space = spaces.Box(0, 255, (size, size, 3), np.uint8)
        # gymnasium types a Dict space as Space[dict[str, Space]]; its elements are dicts of arrays.
        self.observation_space = cast(
            spaces.Space[Observation],
            spaces.Dict(
                {
                    "image": image_space,
                    "mask": spaces.Box(0, 255, (size, size, 1), np.uint8),
                    "prompts": spaces.Box(0, 255, (size, size, 3), np.uint8),
                    "turn": spaces.Box(0, max_turns, (1,), np.int64),
                }
            ),
        )
        self.action_space = A.action_space()
        self._framed: dict[int, tuple[np.ndarray, np.ndarray, tuple[float, float]]] = {}
        self._sample_index = -1
        self._done = True

    # ----------------------------------------------------------------- oracle & state
    @property
    def oracle(self) -> Oracle:
        """What oracle and expert policies may read (``medseg_env.oracle``); never for agents."""
        return _EnvOracle(self)

    @property
    def ground_truth(self) -> np.ndarray:
        """The target's ``(S, S)`` bool mask, read-only. For oracle/expert policies only."""
        self._require_episode()
        view = self._gt.view()
        view.flags.writeable = False
        return view

    def supports(self, kind: PromptKind) -> bool:
        """Whether the segmenter takes this prompt kind (``"box"`` or ``"point"``)."""
        return self.segmenter.supports(kind)

    @property
    def sample(self) -> Sample:
        """The dataset sample of the current episode (at its original size)."""
        self._require_episode()
        return self.dataset[self._sample_index]

    @property
    def current_mask(self) -> np.ndarray:
        self._require_episode()
        return self._mask.copy()

    @property
    def prompts(self) -> Prompts:
        """The accepted prompts so far, in observation pixel coordinates."""
        self._require_episode()
        return self._prompts

    def _require_episode(self) -> None:
        if self._sample_index < 0:
            raise RuntimeError("call reset() first")

    # ----------------------------------------------------------------- gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        """Start an episode on a random sample, or the one named in ``options``.

        Options: ``sample_index`` (int) or ``sample_id`` (str) pick the sample.
        """
        super().reset(seed=seed)
        options = options or {}
        if "sample_index" in options:
            index = int(options["sample_index"])
            if not 0 <= index < len(self.dataset):
                raise ValueError(
                    f"sample_index {index} is out of range for a dataset of {len(self.dataset)}"
                )
        elif "sample_id" in options:
            index = self.dataset.index_of(options["sample_id"])
        else:
            index = int(self.np_random.integers(len(self.dataset)))
        self._sample_index = index
        self._image, self._gt, self._spacing = self._frame(index)
        self._embedding = self.segmenter.encode(self._image)
        self._mask = np.zeros_like(self._gt)
        self._logits: torch.Tensor | None = None
        self._prompts = Prompts()
        self._turn = 0
        self._dices, self._ious = [0.0], [0.0]
        self._num_invalid = 0
        self._score = 0.0
        self._done = False
        dice, iou = dice_iou(self._mask, self._gt)
        self._dices[0], self._ious[0] = dice, iou
        return self._obs(), self._info(None, {})

    def step(self, action: A.Action) -> StepResult:
        if self._done:
            raise RuntimeError("the episode is over; call reset() before step()")
        kind, point, box = A.validate(action)
        self._turn += 1
        prev_mask = self._mask
        terminated = kind == A.ActionKind.STOP
        new_prompts, invalid = self._prompts_after(kind, point, box)
        if new_prompts is not None:
            prediction = self.segmenter.predict(
                self._embedding, new_prompts, self._mask_input(kind)
            )
            self._prompts, self._logits = new_prompts, prediction.logits
            self._mask, self._score = prediction.mask, prediction.score
        if invalid is not None:
            self._num_invalid += 1

        dice, iou = dice_iou(self._mask, self._gt)
        self._dices.append(dice)
        self._ious.append(iou)
        truncated = not terminated and self._turn >= self.max_turns
        self._done = terminated or truncated
        ctx = StepContext(
            prev_mask=prev_mask,
            mask=self._mask,
            ground_truth=self._gt,
            action=action,
            kind=int(kind),
            turn=self._turn,
            valid=invalid is None,
            invalid_reason=invalid,
            terminated=terminated,
            truncated=truncated,
            dice=dice,
            dice_prev=self._dices[-2],
            iou=iou,
            iou_prev=self._ious[-2],
            ious=tuple(self._ious),
            num_prompts=self._num_prompts(),
            num_invalid=self._num_invalid,
        )
        reward, terms = self.reward_fn(ctx)
        return self._obs(), reward, terminated, truncated, self._info(invalid, terms)

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array'")
            return None
        self._require_episode()
        p = self._prompts
        return overlay(self._image, self._mask, p.points, p.labels, p.box)

    def preview(self, action: A.Action) -> tuple[np.ndarray, str | None]:
        """The mask ``action`` would give now, without taking the turn.

        For expert policies that search over candidate prompts (``HybridExpert``): the state,
        the turn count and the RNG are untouched. Returns ``(mask (S, S) bool, invalid reason
        or None)``; a stop or an invalid action returns the current mask.
        """
        self._require_episode()
        kind, point, box = A.validate(action)
        new_prompts, invalid = self._prompts_after(kind, point, box)
        if new_prompts is None:
            return self._mask.copy(), invalid
        prediction = self.segmenter.predict(self._embedding, new_prompts, self._mask_input(kind))
        return prediction.mask, None

    # ----------------------------------------------------------------- helpers
    def _mask_input(self, kind: A.ActionKind) -> torch.Tensor | None:
        """The previous logits on refinement (click) turns; none for a new box.

        SAM-style models are trained with the mask input only on correction rounds, never with
        a box (measured: feeding it with a repeated box lowers LiteMedSAM's Dice by ~0.03–0.06),
        so a new box starts a fresh prediction from the box and the clicks so far.
        """
        return None if kind == A.ActionKind.BOX else self._logits

    def _prompts_after(
        self, kind: A.ActionKind, point: np.ndarray, box: np.ndarray
    ) -> tuple[Prompts | None, str | None]:
        """The prompt set after a prompt action, or ``(None, reason)`` when it is invalid.

        ``(None, None)`` for stop.
        """
        size = self.obs_size
        if kind in (A.ActionKind.POSITIVE_CLICK, A.ActionKind.NEGATIVE_CLICK):
            if not self.segmenter.supports("point"):
                return None, f"segmenter {self.segmenter.name!r} does not take clicks (box-only)"
            x, y = to_pixels(point, size)
            return self._prompts.with_point(x, y, kind == A.ActionKind.POSITIVE_CLICK), None
        if kind == A.ActionKind.BOX:
            x0, x1 = sorted(to_pixels(box[[0, 2]], size))
            y0, y1 = sorted(to_pixels(box[[1, 3]], size))
            if not self.segmenter.supports("box"):
                return None, f"segmenter {self.segmenter.name!r} does not take boxes"
            if min(x1 - x0, y1 - y0) < self.min_box_size:
                return None, (
                    f"degenerate box {x1 - x0:.1f}x{y1 - y0:.1f} px; "
                    f"sides must be at least min_box_size={self.min_box_size} px"
                )
            return self._prompts.with_box(np.array([x0, y0, x1, y1])), None
        return None, None

    def _num_prompts(self) -> int:
        return len(self._prompts.points) + int(self._prompts.box is not None)

    def _obs(self) -> Observation:
        p = self._prompts
        return {
            "image": self._image.copy(),
            "mask": (self._mask[..., None] * np.uint8(255)).astype(np.uint8),
            "prompts": prompt_map(self._mask.shape, p.points, p.labels, p.box),
            "turn": np.array([self._turn], np.int64),
        }

    def _info(self, invalid: str | None, terms: dict[str, float]) -> dict[str, Any]:
        sample = self.dataset[self._sample_index]
        return {
            "dice": self._dices[-1],
            "iou": self._ious[-1],
            "dice_prev": self._dices[-2] if len(self._dices) > 1 else self._dices[-1],
            "iou_prev": self._ious[-2] if len(self._ious) > 1 else self._ious[-1],
            "reward_terms": terms,
            "invalid_action": invalid,
            "turn": self._turn,
            "num_prompts": self._num_prompts(),
            "num_clicks": len(self._prompts.points),
            "num_boxes": int(self._prompts.box is not None),
            "score": self._score,
            "sample_id": sample.sample_id,
            "sample_index": self._sample_index,
            "source_id": sample.source_id,
            "modality": sample.modality,
            "target": sample.target,
            "spacing": self._spacing,
        }

    def _frame(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        """Letterbox sample ``index`` into the ``S×S`` canvas (memoised per sample)."""
        if index not in self._framed:
            self._framed[index] = letterbox(self.dataset[index], self.obs_size)
        return self._framed[index]


class _EnvOracle:
    """The ``Oracle`` of a ``MedSegEnv``: a read-only view of its current episode."""

    def __init__(self, env: MedSegEnv) -> None:
        self._env = env

    @property
    def ground_truth(self) -> np.ndarray:
        return self._env.ground_truth

    @property
    def prompts(self) -> Prompts:
        return self._env.prompts

    @property
    def obs_size(self) -> int:
        return self._env.obs_size

    @property
    def min_box_size(self) -> float:
        return self._env.min_box_size

    def supports(self, kind: PromptKind) -> bool:
        return self._env.supports(kind)

    def preview(self, action: A.Action) -> tuple[np.ndarray, str | None]:
        return self._env.preview(action)


def letterbox(sample: Sample, size: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Resize the longest side of a sample to ``size`` and zero-pad to ``size×size``.

    Returns ``(image (S,S,3) uint8, target (S,S) bool, spacing (row_mm, col_mm))``. The target
    is resized by area coverage, and never vanishes: a target smaller than a canvas pixel keeps
    the pixel it covers most.
    """
    height, width = sample.mask.shape
    frame = LongestSide(height, width, size)
    new_h, new_w = frame.resized_shape
    scale = frame.scale
    image = np.zeros((size, size, 3), np.uint8)
    target = np.zeros((size, size), bool)
    if (new_h, new_w) == (height, width):
        image[:height, :width] = sample.image
        target[:height, :width] = sample.mask
    else:
        resized = resize(
            sample.image, (new_h, new_w), order=1, preserve_range=True, anti_aliasing=scale < 1
        )
        image[:new_h, :new_w] = np.clip(resized.round(), 0, 255).astype(np.uint8)
        coverage = resize(
            sample.mask.astype(np.float32), (new_h, new_w), order=1, anti_aliasing=scale < 1
        )
        target[:new_h, :new_w] = coverage >= 0.5
        if not target.any():
            r, c = np.unravel_index(np.argmax(coverage), coverage.shape)
            target[r, c] = True
    return image, target, frame.resized_spacing(sample.spacing)
