"""``MedSegEnv``: one segmentation target in one 2D image per episode.

Each turn the agent sends a prompt (a box, a positive or negative click) or stops; the
segmenter turns the prompts into a new mask, as the env's prompting rule says (by default all
prompts so far, a new box replacing the old one and clicks accumulating, with the previous
turn's low-resolution logits as SAM's ``mask_input`` on click turns; see
``medseg_env.prompting``); the reward (by default the Dice gain minus a step penalty) scores the
change.

Frames: every sample is letterboxed into an ``S×S`` canvas (``S = obs_size``): the longest
side is resized to ``S`` and the rest is zero-padded at the bottom/right. Observations and
actions live on that canvas. Masks, the ground truth and the metrics live on it too, or, with
``native_resolution=True``, on the sample at its own resolution (an ``L×L`` frame, ``L`` the
sample's longest side, holding the sample unscaled at the top-left); pixel spacing is
rescaled to match.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from . import actions as A
from . import geometry
from .data import Dataset, Sample, load_dataset
from .env_options import (
    check_bool_option,
    check_hint_noise,
    check_int_option,
    check_known_options,
    check_min_box_size,
    check_render_mode,
    check_sample_index,
    check_segmenter_kwargs,
    default_config,
)
from .geometry import innermost_pixel, pixel_center, to_pixels, user_point
from .metrics import dice_iou
from .oracle import EnvOracle, Oracle
from .prompting import PromptingRule, make_prompting_rule
from .registry import UnknownNameError
from .render import hint_map, overlay, prompt_map
from .rewards import REJECTED, Reward, StepContext
from .seeding import gym_rng_state, restore_gym_rng
from .segmenters import (
    Embedding,
    Prediction,
    PredictRequest,
    PromptKind,
    Prompts,
    Segmenter,
    make_segmenter,
)

if TYPE_CHECKING:
    import torch

Observation = dict[str, np.ndarray]
StepResult = tuple[Observation, float, bool, bool, dict[str, Any]]


RESET_OPTIONS = ("sample_index", "sample_id")
"""The keys ``MedSegEnv.reset(options=...)`` takes."""

MIN_OBS_SIZE = 16

FRAME_MEMO_BYTES = 128 * 2**20
"""Bound of each env's memo of letterboxed samples (about 500 canvases at ``obs_size`` 256)."""


@dataclass(frozen=True, eq=False)
class StepPlan:
    """A turn worked out by ``MedSegEnv.plan_step`` and not yet taken.

    Attributes:
        action: the structured action, as given.
        kind: its kind.
        prompts: the prompt set after the turn, or None (a stop, an invalid action).
        invalid: why the action is invalid, or None.
        request: the segmenter call the turn needs, or None (a stop, an invalid action).
        token: the env's state when planned; ``commit_step`` refuses a stale plan.
    """

    action: A.Action
    kind: A.ActionKind
    prompts: Prompts | None
    invalid: str | None
    request: PredictRequest | None
    token: tuple[int, int, int]


class MedSegEnv(gym.Env[Observation, A.Action]):
    """Interactive segmentation of one target per episode.

    Observation (``Dict``):
        - ``image``: ``(S, S, 3)`` uint8, the image.
        - ``mask``: ``(S, S, 1)`` uint8 in {0, 255}, the current mask (empty at reset).
        - ``prompts``: ``(S, S, 3)`` uint8 in {0, 255}: positive clicks, negative clicks, box.
        - ``turn``: ``(1,)`` int64, actions taken so far.
        - ``hint`` (with ``target_hint=True``, the default): ``(S, S, 1)`` uint8 in {0, 255},
          a disk on the hinted pixel (the target's innermost pixel, or the noisy user point of
          ``hint_noise``), drawn as a click of ``prompts`` is.

    Action (``Dict``, see ``medseg_env.actions``): ``kind`` (0 stop, 1 positive click,
    2 negative click, 3 box), ``point`` ``(x, y)`` and ``box`` ``(x0, y0, x1, y1)`` in [0, 1]
    observation coordinates.

    Frame: the episode's masks, ground truth and prompts are in ``frame_size``-pixel square
    coordinates: the canvas (``S``), or with ``native_resolution`` the sample's own pixels
    (``L = max(H, W)``); normalised action coordinates times ``frame_size`` are those pixels.

    Invalid actions: an action inside the action space that cannot be carried out — a click
    on a box-only segmenter, a box on a click-only one, a box narrower or lower than
    ``min_box_size`` pixels — leaves mask and prompts unchanged, counts as a turn, sets
    ``info["invalid_action"]`` to the reason, and scores the ``invalid_action`` reward term. A
    text env's malformed reply takes the same path through :meth:`reject`, which also sets
    ``info["format_error"]``. An action outside the space (wrong ``kind``, NaN, out of [0, 1])
    raises ``ValueError``.

    Oracle access: ``env.get_wrapper_attr("oracle")`` is the episode's ``medseg_env.Oracle``
    (the ground truth, the accepted prompts, ``preview(action)``, ``supports(kind)``, the
    minimum box size and the observation size), for oracle and expert policies only; the
    ground truth is never part of the observation.

    Nothing the env hands out can change it: observations, ``current_mask``, ``prompts`` and
    previews are fresh copies; ``ground_truth``, ``sample`` and the dataset's arrays are
    read-only.

    ## Two-phase step

    ``step(action)`` is :meth:`plan_step` (check the action, work out the segmenter call;
    changes nothing), the segmenter's ``predict`` of the plan's request (none for a stop or an
    invalid action), then :meth:`commit_step` (take the turn, score it). The batched vector
    env (``medseg_env.wrappers.vector_env``) plans many envs' turns, decodes them in one
    ``Segmenter.predict_batch`` call, and commits each.

    ## Arguments

    ``render_mode`` (``None`` or ``"rgb_array"``) and the options of :func:`default_config`,
    by keyword. An unknown keyword raises ``TypeError`` ("got an unexpected keyword argument"),
    as a Python constructor would, so clients that drop unsupported keywords and retry
    (torchrl's ``GymEnv`` with ``frameskip``) work. A value of the wrong type raises
    ``TypeError``, one out of range ``ValueError``; both name the option and the value, and
    all are checked before the dataset or the model is loaded.

    ## Reset

    ``reset(seed=None, options=None)`` starts an episode on a random sample, or on the one that
    ``options`` names (see :meth:`reset`). It is all or nothing: the new episode is built aside
    and replaces the current one only when everything, the image encoding included, has
    succeeded. A reset that raises on its arguments changes nothing. One that fails or is
    interrupted later (an encoder error, out of memory, Ctrl-C) leaves the random generator as
    it was, and the env refuses ``step``, ``preview``, ``render`` and the oracle surface with a
    ``RuntimeError`` until a reset succeeds.

    ``info`` after reset and every step: ``dice``, ``iou``, ``dice_prev``, ``iou_prev``,
    ``reward_terms`` (weighted terms, summing to the reward), ``invalid_action`` (None or the
    reason), ``format_error`` (None, or why a text reply gave no action), ``turn``,
    ``num_prompts``, ``num_clicks``, ``num_boxes``, ``score`` (the segmenter's own quality
    estimate), ``sample_id``, ``sample_index``, ``source_id``,
    ``modality``, ``target``, ``spacing`` (mm per frame pixel, (row, col)) and
    ``target_hint`` (``(x, y)`` in [0, 1] observation coordinates, the centre of the hinted
    pixel, with ``target_hint=True``; None without).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}

    def __init__(self, render_mode: str | None = None, **config: Any) -> None:
        check_known_options(config)
        check_render_mode(render_mode, self.metadata["render_modes"])
        config = {**default_config(), **config}
        size = check_int_option("obs_size", config["obs_size"], minimum=MIN_OBS_SIZE)
        max_turns = check_int_option("max_turns", config["max_turns"], minimum=1)
        min_box_size = check_min_box_size(config["min_box_size"], size)
        check_segmenter_kwargs(config["segmenter_kwargs"])
        self._rule: PromptingRule = make_prompting_rule(config["prompting"])
        self.prompting: str = config["prompting"]
        for name in ("target_hint", "native_resolution", "sort_box_corners"):
            config[name] = check_bool_option(name, config[name])
        self.target_hint: bool = config["target_hint"]
        self.native_resolution: bool = config["native_resolution"]
        self.sort_box_corners: bool = config["sort_box_corners"]
        self.hint_noise = check_hint_noise(config["hint_noise"], self.target_hint)
        config["hint_noise"] = self.hint_noise
        config.update(obs_size=size, max_turns=max_turns, min_box_size=min_box_size)
        self.config = config
        self.render_mode = render_mode
        self.obs_size, self.max_turns, self.min_box_size = size, max_turns, min_box_size
        self.dataset: Dataset = load_dataset(config["dataset"])
        self.segmenter: Segmenter = make_segmenter(
            config["segmenter"], **config["segmenter_kwargs"]
        )
        self.reward_fn = Reward(config["reward"])

        image_space = spaces.Box(0, 255, (size, size, 3), np.uint8)
        keys: dict[str, spaces.Space] = {
            "image": image_space,
            "mask": spaces.Box(0, 255, (size, size, 1), np.uint8),
            "prompts": spaces.Box(0, 255, (size, size, 3), np.uint8),
            "turn": spaces.Box(0, max_turns, (1,), np.int64),
        }
        if self.target_hint:
            keys["hint"] = spaces.Box(0, 255, (size, size, 1), np.uint8)
        # gymnasium types a Dict space as Space[dict[str, Space]]; its elements are dicts of arrays.
        self.observation_space = cast(spaces.Space[Observation], spaces.Dict(keys))
        self.action_space = A.action_space()
        # Letterboxed samples, most recently used last, bounded by FRAME_MEMO_BYTES.
        self._framed: OrderedDict[int, tuple[np.ndarray, np.ndarray, tuple[float, float]]] = (
            OrderedDict()
        )
        self._framed_bytes = 0
        self._innermost: dict[int, tuple[int, int]] = {}  # sample index -> (row, col)
        self._sample_index = -1
        self._done = True
        self._episode_count = 0  # episodes started; with the turn, tells a stale StepPlan
        # Why the last reset() did not complete, or None; while set, the env takes no step.
        self._reset_error: str | None = None

    # ----------------------------------------------------------------- oracle & state
    @property
    def oracle(self) -> Oracle:
        """What oracle and expert policies may read (``medseg_env.oracle``); never for agents."""
        return EnvOracle(self)

    @property
    def frame_size(self) -> int:
        """The side of the episode's square pixel frame (masks, ground truth, prompts):
        ``obs_size``, or with ``native_resolution`` the sample's longest side."""
        self._require_episode()
        return int(self._gt.shape[0])

    @property
    def ground_truth(self) -> np.ndarray:
        """The target's ``(F, F)`` bool mask (``F = frame_size``), read-only. For oracle/expert
        policies only."""
        self._require_episode()
        view = self._gt.view()  # a view of a read-only array cannot be made writable again
        view.flags.writeable = False
        return view

    def supports(self, kind: PromptKind) -> bool:
        """Whether the segmenter takes this prompt kind (``"box"`` or ``"point"``)."""
        return self.segmenter.supports(kind)

    @property
    def sample(self) -> Sample:
        """The dataset sample of the current episode (at its original size; read-only arrays)."""
        self._require_episode()
        return self.dataset[self._sample_index]

    @property
    def current_mask(self) -> np.ndarray:
        """A copy of the current ``(F, F)`` bool mask (``F = frame_size``)."""
        self._require_episode()
        return self._mask.copy()

    @property
    def prompts(self) -> Prompts:
        """A copy of the accepted prompts so far, in the frame's pixel coordinates."""
        self._require_episode()
        p = self._prompts
        return Prompts(p.points.copy(), p.labels.copy(), None if p.box is None else p.box.copy())

    @property
    def image(self) -> np.ndarray:
        """The episode's ``(S, S, 3)`` canvas image, as the observation shows it (a copy)."""
        self._require_episode()
        return self._image.copy()

    @property
    def turn(self) -> int:
        """Turns of the budget taken in this episode: actions, and rejected replies that spend
        a turn (``reject(..., spend_turn=True)``, the default)."""
        self._require_episode()
        return self._turn

    @property
    def episode_over(self) -> bool:
        """True before the first reset and once the episode has terminated or truncated."""
        return self._done or self._reset_error is not None

    def _require_episode(self) -> None:
        if self._reset_error is not None:
            raise RuntimeError(
                f"the last reset() failed ({self._reset_error}) and left no episode to "
                f"continue; call reset() again"
            )
        if self._sample_index < 0:
            raise RuntimeError("call reset() first")

    # ----------------------------------------------------------------- gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        """Start an episode on a random sample, or the one named in ``options``.

        ## Arguments

        - ``seed``: reseeds the env's random generator (Gymnasium's convention).
        - ``options``: ``None`` or a dict with at most these keys:
          - ``sample_index``: an ``int`` (NumPy integers too) in ``[0, len(dataset))``;
          - ``sample_id``: a ``str``, the ``sample_id`` of a dataset sample.
          Given both, they must name the same sample. Without either, the sample is drawn
          from the env's random generator.

        ## Raises

        - ``TypeError`` / ``ValueError``: a bad ``options`` entry (an unknown key, a value of
          the wrong type, out of range, or disagreeing); an unknown ``sample_id`` raises
          ``medseg_env.registry.UnknownNameError`` (a ``KeyError`` and a ``ValueError``). These
          change nothing: the current episode goes on.
        - whatever building the episode raises (the segmenter's encoder, the cache,
          ``KeyboardInterrupt``): the current episode is given up, the random generator is left
          as it was, and the env refuses ``step`` until a reset succeeds.
        """
        index = self._check_reset_options(options)
        rng = gym_rng_state(self)
        super().reset(seed=seed)  # an invalid seed raises here, before anything has changed
        self._reset_error = "it was interrupted"  # cleared only once the episode is committed
        try:
            if index is None:
                index = int(self.np_random.integers(len(self.dataset)))
            image, gt, spacing = self._frame(index)
            hint = self._draw_hint(index, gt)
            # native: the sample's own image (read-only dataset array); else the canvas
            encoded = self.dataset[index].image if self.native_resolution else image
            embedding = self.segmenter.encode(encoded)
            self._start_episode(index, image, gt, spacing, embedding, hint)
            result = self._obs(), self._info(None, {})
        except BaseException as exc:
            restore_gym_rng(self, rng)
            detail = f": {str(exc)[:200]}" if str(exc) else ""
            self._reset_error = f"it raised {type(exc).__name__}{detail}"
            raise
        self._reset_error = None
        return result

    def _start_episode(
        self,
        index: int,
        image: np.ndarray,
        gt: np.ndarray,
        spacing: tuple[float, float],
        embedding: Embedding,
        hint: tuple[int, int] | None = None,
    ) -> None:
        """Commit a new episode whose parts have all been built (the last step of ``reset``)."""
        self._hint = hint
        mask = _frozen_copy(np.zeros_like(gt))
        dice, iou = dice_iou(mask, gt)
        self._sample_index = index
        self._image, self._gt, self._spacing = image, gt, spacing
        self._embedding = embedding
        self._mask = mask
        self._logits: torch.Tensor | None = None
        self._prompts = Prompts()
        self._turn = 0
        self._dices, self._ious = [dice], [iou]
        self._num_invalid = 0
        self._num_format_errors = 0
        self._free_rejects = 0  # rejected replies that spent no turn (reject(spend_turn=False))
        self._kinds: list[int] = []
        self._replies: list[str] = []
        self._pending_reply: tuple[str, bool] | None = None  # (text, scored) for the next turn
        self._mask_scores: list[tuple[float, float]] = []  # (IoU, Dice) of the kept masks
        self._score = 0.0
        self._done = False
        self._episode_count += 1
        self._rule.start_episode()

    def step(self, action: A.Action) -> StepResult:
        """Take one turn: :meth:`plan_step`, the segmenter's ``predict``, :meth:`commit_step`."""
        plan = self.plan_step(action)
        prediction = None
        if plan.request is not None:
            prediction = self.segmenter.predict_request(plan.request)
        return self.commit_step(plan, prediction)

    def plan_step(self, action: A.Action) -> StepPlan:
        """The first half of :meth:`step`: check ``action`` and work out the segmenter call.

        Changes nothing (the episode, the turn count and the RNG stay as they are), so a
        prediction that raises leaves the episode untouched. The plan's ``request`` is the
        ``predict`` call the turn needs, or None for a stop or an invalid action; hand its
        result to :meth:`commit_step`. A vector env plans the turns of many envs, decodes all
        their requests in one ``Segmenter.predict_batch``, then commits each.

        Raises what ``step`` raises for the action: ``ValueError`` for an action outside the
        action space, ``RuntimeError`` before a reset or after the episode ended.
        """
        self._require_episode()
        if self._done:
            raise RuntimeError("the episode is over; call reset() before step()")
        kind, point, box = A.validate(action)
        new_prompts, invalid = self._prompts_after(kind, point, box)
        request = None if new_prompts is None else self._request(kind, new_prompts)
        return StepPlan(action, kind, new_prompts, invalid, request, self._state_token())

    def commit_step(self, plan: StepPlan, prediction: Prediction | None) -> StepResult:
        """The second half of :meth:`step`: take the planned turn with ``prediction``, score it.

        ``prediction`` is the segmenter's answer to ``plan.request`` (None when the plan has
        no request). Returns what ``step`` returns.

        Raises:
            ValueError: the plan was made before the env last changed (another step, a
                reset), or ``prediction`` is missing or not asked for.
        """
        self._require_episode()
        if self._done:
            raise RuntimeError("the episode is over; call reset() before step()")
        if plan.token != self._state_token():
            raise ValueError(
                "this StepPlan is stale: the env has stepped or reset since plan_step() made it"
            )
        if (plan.request is None) != (prediction is None):
            raise ValueError(
                "commit_step needs the prediction for plan.request, and none when the plan has "
                f"no request; got request={'none' if plan.request is None else 'one'}, "
                f"prediction={'none' if prediction is None else 'one'}"
            )
        prev_mask = self._mask
        self._turn += 1
        predicted = False
        if plan.prompts is not None and plan.request is not None and prediction is not None:
            self._prompts, self._logits = plan.prompts, prediction.logits
            self._mask, self._score = (
                _frozen_copy(self._in_frame(prediction.mask)),
                prediction.score,
            )
            self._rule.commit(plan.kind, plan.request, prediction)
            predicted = True
        if plan.invalid is not None:
            self._num_invalid += 1
        terminated = plan.kind == A.ActionKind.STOP
        return self._finish_turn(
            prev_mask, plan.action, int(plan.kind), plan.invalid, terminated, None, predicted
        )

    def _state_token(self) -> tuple[int, int, int]:
        """Changes with every reset, every turn and every reply: tells a stale ``StepPlan``."""
        return self._episode_count, self._turn, self._free_rejects

    def note_reply(self, text: str, *, scored: bool = True) -> None:
        """Record the reply text that the next turn (``step`` or :meth:`reject`) comes from.

        For text envs (``MedSegTextEnv`` calls it before every turn it takes for a reply): the
        reward's terms see the episode's replies (``StepContext.replies``; MedSAM-Agent's
        format score reads them). ``scored=False`` keeps the mask that the next turn's
        segmenter call produces out of the masks the reward scores
        (``StepContext.mask_ious``), as MedSAM-Agent's RL loop does for a reply that also
        asks to stop. A second call before the turn replaces the first.

        Raises:
            TypeError: ``text`` is not a str.
            RuntimeError: no episode is open.
        """
        self._require_episode()
        if self._done:
            raise RuntimeError("the episode is over; call reset() before note_reply()")
        if not isinstance(text, str):
            raise TypeError(f"note_reply() takes the reply as a str; got {type(text).__name__}")
        self._pending_reply = (text, bool(scored))

    def reject(self, reason: str, *, end: bool = False, spend_turn: bool = True) -> StepResult:
        """Take a reply that gave no action (a malformed MLLM reply) as a turn, without raising.

        The text env's invalid-action path, kept here so that no wrapper re-implements the
        reward: the mask and prompts stay as they are, ``info["invalid_action"]`` and
        ``info["format_error"]`` give ``reason``, and the reward's terms see
        ``StepContext(kind=REJECTED, valid=False, format_error=reason)``. ``end=True`` ends the
        episode (``terminated``), as a protocol whose malformed-reply rule stops the episode
        asks; otherwise it is truncated only when the turn budget is spent.

        ``spend_turn=False`` takes the reply without spending a turn of the budget: ``turn``
        stays and no truncation follows, as MedSAM-Agent's EVAL loop retries a failed reply
        (``infer/unibiomed_inference_toolusing.py`` lines 356 and 503-516: only executed
        actions count against ``max_clicks``). The reward still sees the rejected reply.
        """
        self._require_episode()
        if self._done:
            raise RuntimeError("the episode is over; call reset() before reject()")
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"reject() needs the reason as a non-empty str; got {reason!r}")
        if spend_turn:
            self._turn += 1
        else:
            self._free_rejects += 1
        self._num_invalid += 1
        self._num_format_errors += 1
        return self._finish_turn(self._mask, A.stop(), REJECTED, reason, bool(end), reason)

    def _finish_turn(
        self,
        prev_mask: np.ndarray,
        action: A.Action,
        kind: int,
        invalid: str | None,
        terminated: bool,
        format_error: str | None,
        predicted: bool = False,
    ) -> StepResult:
        """Score the turn just taken and build the step's result (``step`` and ``reject``).

        ``predicted``: the turn's segmenter call produced the current mask.
        """
        dice, iou = dice_iou(self._mask, self._gt)
        self._dices.append(dice)
        self._ious.append(iou)
        self._kinds.append(kind)
        scored = True
        if self._pending_reply is not None:
            text, scored = self._pending_reply
            self._replies.append(text)
            self._pending_reply = None
        if predicted and scored:
            self._mask_scores.append((iou, dice))
        truncated = not terminated and self._turn >= self.max_turns
        self._done = terminated or truncated
        ctx = StepContext(
            prev_mask=prev_mask,
            mask=self._mask,
            ground_truth=self._gt,
            action=action,
            kind=kind,
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
            format_error=format_error,
            num_format_errors=self._num_format_errors,
            kinds=tuple(self._kinds),
            replies=tuple(self._replies),
            mask_ious=tuple(iou for iou, _ in self._mask_scores),
            mask_dices=tuple(dice for _, dice in self._mask_scores),
        )
        reward, terms = self.reward_fn(ctx)
        return self._obs(), reward, terminated, truncated, self._info(invalid, terms, format_error)

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array'")
            return None
        self._require_episode()
        p = self._prompts
        points, box = self._on_canvas(p.points, p.box)
        return overlay(self._image, self._canvas_mask(self._mask), points, p.labels, box)

    def preview(self, action: A.Action) -> tuple[np.ndarray, str | None]:
        """The mask ``action`` would give now, without taking the turn (a fresh array).

        For expert policies that search over candidate prompts (``HybridExpert``): the state,
        the turn count and the RNG are untouched. Returns ``(mask (F, F) bool`` (``F =
        frame_size``), ``invalid reason or None)``; a stop or an invalid action returns the
        current mask.
        """
        self._require_episode()
        kind, point, box = A.validate(action)
        new_prompts, invalid = self._prompts_after(kind, point, box)
        if new_prompts is None:
            return self._mask.copy(), invalid
        return self._in_frame(self._predict(kind, new_prompts).mask), None

    # ----------------------------------------------------------------- helpers
    def _check_reset_options(self, options: Mapping[str, Any] | None) -> int | None:
        """The sample index ``options`` names, or None for a random one; raises on bad options."""
        if options is None:
            return None
        if not isinstance(options, Mapping):
            raise TypeError(
                f"reset options must be a dict or None; got {options!r} ({type(options).__name__})"
            )
        unknown = [key for key in options if key not in RESET_OPTIONS]
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; known: {list(RESET_OPTIONS)}")
        index = None
        if "sample_index" in options:
            index = check_sample_index(options["sample_index"], len(self.dataset))
        if "sample_id" in options:
            by_id = self._check_sample_id(options["sample_id"])
            if index is not None and by_id != index:
                raise ValueError(
                    f"reset options sample_index={index} and sample_id="
                    f"{options['sample_id']!r} name different samples (sample_id "
                    f"{options['sample_id']!r} is sample_index {by_id}); give one of them"
                )
            index = by_id
        return index

    def _check_sample_id(self, sample_id: Any) -> int:
        """The index of the sample named by the ``sample_id`` reset option."""
        if not isinstance(sample_id, str):
            raise TypeError(
                f"reset option sample_id must be a str; got {sample_id!r} "
                f"({type(sample_id).__name__})"
            )
        try:
            return self.dataset.index_of(sample_id)
        except KeyError:
            raise UnknownNameError(
                f"reset option sample_id={sample_id!r}: dataset {self.dataset.name!r} has no "
                f"such sample"
            ) from None

    def _predict(self, kind: A.ActionKind, prompts: Prompts) -> Prediction:
        """The segmenter's mask for the prompt set after this action (see :meth:`_request`)."""
        return self.segmenter.predict_request(self._request(kind, prompts))

    def _request(self, kind: A.ActionKind, prompts: Prompts) -> PredictRequest:
        """The segmenter call for the prompt set after this action, as the prompting rule says.

        The rule (``medseg_env.prompting``) sees the turn's kind, the prompt set after it, the
        episode's embedding and the previous logits; it changes nothing here, since a plan or a
        preview may be dropped. ``commit_step`` tells it the turn was taken.
        """
        return self._rule.request(kind, prompts, embedding=self._embedding, logits=self._logits)

    def _prompts_after(
        self, kind: A.ActionKind, point: np.ndarray, box: np.ndarray
    ) -> tuple[Prompts | None, str | None]:
        """The prompt set after a prompt action, or ``(None, reason)`` when it is invalid.

        ``(None, None)`` for stop.
        """
        size = int(self._gt.shape[0])  # the frame: the canvas, or the sample's own pixels
        if kind in (A.ActionKind.POSITIVE_CLICK, A.ActionKind.NEGATIVE_CLICK):
            if not self.segmenter.supports("point"):
                return None, f"segmenter {self.segmenter.name!r} does not take clicks (box-only)"
            x, y = to_pixels(point, size)
            return self._prompts.with_point(x, y, kind == A.ActionKind.POSITIVE_CLICK), None
        if kind == A.ActionKind.BOX:
            corners = np.asarray(to_pixels(box, size), np.float64)
            if self.sort_box_corners:
                corners = _sorted_box(corners)
            width, height = abs(corners[2] - corners[0]), abs(corners[3] - corners[1])
            if not self.segmenter.supports("box"):
                return None, f"segmenter {self.segmenter.name!r} does not take boxes"
            if min(width, height) < self.min_box_size:
                return None, (
                    f"degenerate box {width:.1f}x{height:.1f} px; "
                    f"sides must be at least min_box_size={self.min_box_size} px"
                )
            return self._prompts.with_box(corners), None
        return None, None

    def _num_prompts(self) -> int:
        return len(self._prompts.points) + int(self._prompts.box is not None)

    def _obs(self) -> Observation:
        p = self._prompts
        size = self.obs_size
        points, box = self._on_canvas(p.points, p.box)
        mask = self._canvas_mask(self._mask)
        obs = {
            "image": self._image.copy(),
            "mask": (mask[..., None] * np.uint8(255)).astype(np.uint8),
            "prompts": prompt_map((size, size), points, p.labels, box),
            "turn": np.array([self._turn], np.int64),
        }
        if self._hint is not None:
            obs["hint"] = hint_map((size, size), *self._canvas_pixel(*self._hint))
        return obs

    def _in_frame(self, mask: np.ndarray) -> np.ndarray:
        """A segmenter's mask (the encoded image's size) in the episode's frame: at native
        resolution a non-square sample's ``(H, W)`` mask is padded to ``(L, L)``."""
        if mask.shape == self._gt.shape:
            return mask
        return geometry.pad_square(mask)

    def _canvas_mask(self, mask: np.ndarray) -> np.ndarray:
        """A frame mask on the ``(S, S)`` canvas (the same array when the frame is the canvas)."""
        if mask.shape[0] == self.obs_size:
            return mask
        return geometry.resample_square_mask(mask, self.obs_size)

    def _on_canvas(
        self, points: np.ndarray, box: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Frame pixel coordinates of clicks and a box on the canvas (the box sorted, to draw)."""
        scale = self.obs_size / self._gt.shape[0]
        canvas_box = None if box is None else _sorted_box(np.asarray(box, np.float64) * scale)
        return np.asarray(points, np.float64) * scale, canvas_box

    def _canvas_pixel(self, row: int, col: int) -> tuple[int, int]:
        """The canvas pixel that holds the centre of frame pixel ``(row, col)``."""
        scale = self.obs_size / self._gt.shape[0]
        last = self.obs_size - 1
        return min(int((row + 0.5) * scale), last), min(int((col + 0.5) * scale), last)

    def _draw_hint(self, index: int, gt: np.ndarray) -> tuple[int, int] | None:
        """The episode's hint pixel ``(row, col)``, or None without ``target_hint``.

        The innermost pixel is memoised per sample; a noisy point (``hint_noise > 0``) is drawn
        from ``np_random`` every episode, so the same seed gives the same points.
        """
        if not self.target_hint:
            return None
        if index not in self._innermost:
            self._innermost[index] = innermost_pixel(gt)
        if self.hint_noise == 0:
            return self._innermost[index]
        return user_point(gt, self.hint_noise, self.np_random)

    def _info(
        self, invalid: str | None, terms: dict[str, float], format_error: str | None = None
    ) -> dict[str, Any]:
        sample = self.dataset[self._sample_index]
        return {
            "dice": self._dices[-1],
            "iou": self._ious[-1],
            "dice_prev": self._dices[-2] if len(self._dices) > 1 else self._dices[-1],
            "iou_prev": self._ious[-2] if len(self._ious) > 1 else self._ious[-1],
            "reward_terms": terms,
            "invalid_action": invalid,
            "format_error": format_error,
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
            "target_hint": self._hint_point(),
        }

    def _hint_point(self) -> tuple[float, float] | None:
        if self._hint is None:
            return None
        row, col = self._hint
        x, y = pixel_center(row, col, int(self._gt.shape[0]))
        return float(x), float(y)

    def _frame(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        """Sample ``index``'s canvas image, its target in the episode's frame, and the frame's
        pixel spacing (memoised per sample).

        The image is the sample letterboxed into the ``S×S`` canvas (the observation). The
        target is letterboxed with it, or with ``native_resolution`` the sample's own mask
        padded to ``L×L`` (``geometry.pad_square``), with the sample's own spacing.

        The memo keeps the most recently used entries up to ``FRAME_MEMO_BYTES``, so a long
        run over a large dataset does not hold a second copy of all of it. The memoised
        target is read-only: every episode on the sample shares it.
        """
        framed = self._framed.get(index)
        if framed is not None:
            self._framed.move_to_end(index)
            return framed
        sample = self.dataset[index]
        image, target, spacing = geometry.letterbox(sample, self.obs_size)
        if self.native_resolution:
            target = geometry.pad_square(sample.mask)
            spacing = (float(sample.spacing[0]), float(sample.spacing[1]))
        target.flags.writeable = False
        framed = self._framed[index] = image, target, spacing
        self._framed_bytes += image.nbytes + target.nbytes
        while self._framed_bytes > FRAME_MEMO_BYTES and len(self._framed) > 1:
            _, (old_image, old_target, _) = self._framed.popitem(last=False)
            self._framed_bytes -= old_image.nbytes + old_target.nbytes
        return framed


def _sorted_box(box: np.ndarray) -> np.ndarray:
    """``(x0, y0, x1, y1)`` with each pair of coordinates in increasing order."""
    x0, x1 = sorted((float(box[0]), float(box[2])))
    y0, y1 = sorted((float(box[1]), float(box[3])))
    return np.array([x0, y0, x1, y1])


def _frozen_copy(array: np.ndarray) -> np.ndarray:
    """A read-only copy: the env's own masks, which reward terms see, cannot be written."""
    copy = array.copy()
    copy.flags.writeable = False
    return copy
