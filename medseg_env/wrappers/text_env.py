"""``MedSeg-Text-v0``: the env as a conversation, for multimodal LLM policies.

``step(reply)`` takes the model's raw reply text. The protocol (``medseg_env.text``) parses it
into a tool call; the call's grid coordinates become an action on the env's canvas, and the
env takes the turn. Every reply is recorded with the env first (``MedSegEnv.note_reply``), so
the reward's terms see the episode's replies. A reply that gives no call (malformed, an
unknown tool, a coordinate out of range, no call at all) never raises: it goes through the
env's invalid-action path (``MedSegEnv.reject``, reached down the wrapper chain with
``get_wrapper_attr``, so a wrapper in between that defines ``reject`` sees it; it is called
with ``spend_turn=False`` under a protocol whose retries spend no turn), so
``info["format_error"]`` gives the reason, the reward's terms see it, and the protocol's rule
decides whether the episode goes on (``retries`` malformed replies in a row are tolerated, and
``retries_spend_turns`` says whether they spend the turn budget) or ends. A retried reply
before the first action restarts the conversation under ``first_retry_restarts``, and an
empty reply leaves no trace in it without ``keep_empty_replies``.

The observation is the conversation so far as OpenAI-style chat messages, in the protocol's
history mode (``info["messages"]`` is the same list), so a stateless policy sends it as it
is. Images are PIL images or PNG data URLs (``images="pil" | "data_url"``).

The model sees the sample at its own resolution (not the canvas), with the current mask tinted
on it, through the protocol's image rule; grid coordinates refer to that image, as in
MedSAM-Agent's code. ``make_text_env`` (``MedSeg-Text-v0``) builds the env with the protocol's
``env_options()`` (turn budget, prompting rule, ``native_resolution``, box corners, minimum
box size) unless they are given.

A trainer whose loop stops with the episode still open (a token budget, a dropped tool result)
ends it with :meth:`MedSegTextEnv.close_episode`; ``medseg_env.text.tool_session`` drives
episodes call by call for trainer adapters. ``oracle`` is the inner env's ``Oracle`` as a
policy that writes replies sees it (previews go through the reply text).
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image

from .. import actions as A
from ..env import MedSegEnv
from ..geometry import GridFrame, LongestSide, unletterbox_mask
from ..oracle import Oracle
from ..segmenters.types import PromptKind, Prompts
from ..text import get_protocol
from ..text.messages import (
    IMAGE_FORMATS,
    ImageFormat,
    Message,
    image_part,
    model_image,
    user_message,
)
from ..text.protocol import ImageRule, ParsedReply, Protocol, ToolCall

DEFAULT_TARGET_TEMPLATE = "{target} in {modality}"
"""How a sample's target becomes the text of turn 1: ``{target}`` and ``{modality}`` are the
sample's fields (for the bundled data: "tumour in CT", "nucleus in microscopy")."""

MAX_REPLY_CHARS = 16_384
REPLY_CHARSET = frozenset(string.printable)


class ChatMessages(spaces.Space[list]):
    """The space of OpenAI-style chat message lists (what ``MedSeg-Text-v0`` observes).

    A member is a non-empty list of dicts with a ``role`` (system, user, assistant) and a
    ``content`` that is a str or a list of parts: ``{"type": "text", "text": str}``,
    ``{"type": "image", "image": PIL.Image}`` or ``{"type": "image_url", "image_url": {"url":
    str}}``. ``sample`` gives a one-message conversation (spaces need one; it is not a state).
    """

    ROLES = frozenset({"system", "user", "assistant"})

    def __init__(self, seed: int | np.random.Generator | None = None) -> None:
        super().__init__(None, None, seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> list:
        word = "".join(self.np_random.choice(list(string.ascii_lowercase), 8))
        return [{"role": "user", "content": [{"type": "text", "text": word}]}]

    def contains(self, x: Any) -> bool:
        if not isinstance(x, list) or not x:
            return False
        return all(_is_message(m, self.ROLES) for m in x)

    def __repr__(self) -> str:
        return "ChatMessages()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChatMessages)


def _is_message(message: Any, roles: frozenset[str]) -> bool:
    if not isinstance(message, Mapping) or message.get("role") not in roles:
        return False
    content = message.get("content")
    if isinstance(content, str):
        return True
    return isinstance(content, list) and all(_is_part(p) for p in content)


def _is_part(part: Any) -> bool:
    if not isinstance(part, Mapping):
        return False
    kind = part.get("type")
    if kind == "text":
        return isinstance(part.get("text"), str)
    if kind == "image":
        return isinstance(part.get("image"), Image.Image)
    if kind == "image_url":
        url = part.get("image_url")
        return isinstance(url, Mapping) and isinstance(url.get("url"), str)
    return False


class MedSegTextEnv(gym.Wrapper[list, str, Any, A.Action]):
    """A ``MedSeg-v0`` env driven by reply text, under a text protocol.

    Args:
        env: a ``MedSegEnv``, possibly wrapped (this wrapper goes outermost).
        protocol: a registered protocol name or a ``Protocol``.
        images: ``"pil"`` or ``"data_url"``, how images appear in the messages.
        target_template: turn 1's target text, from the sample's ``target`` and ``modality``.
        image_rule: replaces the protocol's image rule (e.g. ``ImageRule(512,
            "letterbox_white", upscale=False, resample="lanczos")``: the released EVAL
            thumbnail that never enlarges).

    ``info`` adds, to the env's: ``messages`` (the observation), ``reply`` (the raw text),
    ``parsed`` (the call or the error, ``ParsedReply.to_dict``), ``executed`` (False when the
    protocol does not execute the last allowed reply, or no call was parsed), ``protocol``.

    The wrapped env may itself be wrapped: actions go down the chain with ``step``, rejected
    replies with the first ``reject`` found by ``get_wrapper_attr``, and ``oracle`` starts from
    the chain's.
    """

    def __init__(
        self,
        env: gym.Env,
        protocol: str | Protocol = "medsam_agent",
        *,
        images: ImageFormat = "pil",
        target_template: str = DEFAULT_TARGET_TEMPLATE,
        image_rule: ImageRule | None = None,
    ) -> None:
        super().__init__(env)
        if not isinstance(env.unwrapped, MedSegEnv):
            raise TypeError(f"MedSegTextEnv wraps a MedSegEnv; got {type(env.unwrapped).__name__}")
        if images not in IMAGE_FORMATS:
            raise ValueError(f"images must be one of {list(IMAGE_FORMATS)}; got {images!r}")
        if not isinstance(target_template, str):
            raise TypeError(f"target_template must be a str; got {target_template!r}")
        self.protocol = get_protocol(protocol)
        if image_rule is not None and not isinstance(image_rule, ImageRule):
            raise TypeError(f"image_rule must be an ImageRule; got {image_rule!r}")
        self.image_rule = image_rule or self.protocol.image_rule
        self.images: ImageFormat = images
        self.target_template = target_template
        self.action_space = spaces.Text(MAX_REPLY_CHARS, min_length=0, charset=REPLY_CHARSET)
        self.observation_space = ChatMessages()
        self._base: MedSegEnv = env.unwrapped
        self._turns: list[tuple[Message, Message | None]] = []
        self._target = ""
        self._errors_in_row = 0
        # shifted_history_images: the image parts shown at each reply after the first
        # action (the released EVAL code's intermediate images), and the original image's
        self._shown: list[dict[str, Any]] = []
        self._original: dict[str, Any] | None = None

    # ------------------------------------------------------------------ gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list, dict[str, Any]]:
        _, info = self.env.reset(seed=seed, options=options)
        sample = self._base.sample
        target = self.target_text(sample.target, sample.modality)
        self._target = target
        text = self.protocol.first_user_text(target)
        self._turns = [(user_message(self._view(None), text, self.images), None)]
        self._errors_in_row = 0
        self._shown, self._original = [], None
        messages = self.messages()
        info.update(messages=messages, reply=None, parsed=None, executed=False)
        info["protocol"] = self.protocol.name
        return messages, info

    def step(self, action: str) -> tuple[list, float, bool, bool, dict[str, Any]]:
        if not isinstance(action, str):
            raise TypeError(f"MedSeg-Text-v0 takes the reply as a str; got {type(action).__name__}")
        if not self._turns or self._base.episode_over:
            raise RuntimeError("the episode is over; call reset() before step()")
        proto = self.protocol
        if proto.shifted_history_images and self._accepted_prompts() > 0:
            # the released EVAL code keeps the image of every reply asked after the first
            # action (retried ones too), the last history_turns of them
            self._shown.append(dict(self._turns[-1][0]["content"][0]))
            self._shown = self._shown[-(proto.history_turns or len(self._shown)) :]
        parsed = proto.parse(action)
        last_allowed = self._base.turn + 1 >= self._base.max_turns
        executed = parsed.ok and (proto.execute_last_turn or not last_allowed)
        reason = parsed.error or "no tool call"
        before_first_action = self._accepted_prompts() == 0
        retry_stop = (
            proto.retry_first_stop
            and parsed.call is not None
            and parsed.call.name == "stop_action"
            and before_first_action
            and self._errors_in_row < proto.retries
        )
        retried = parsed.call is None or retry_stop
        note_reply = self.env.get_wrapper_attr("note_reply")
        if retried:
            if retry_stop:
                reason, executed = "stop before any action: retried", False
            self._errors_in_row += 1
            end = self._errors_in_row > proto.retries
            note_reply(action)
            reject = self.env.get_wrapper_attr("reject")  # a wrapper in between may see it
            # only a protocol whose retries are free passes spend_turn, so a wrapper's reject
            # written against the older signature keeps working under the others
            free = {} if proto.retries_spend_turns else {"spend_turn": False}
            _, reward, terminated, truncated, info = reject(reason, end=end, **free)
        else:
            self._errors_in_row = 0
            # a reply that also stops: its executed call's mask may stay out of the reward's
            scored = proto.score_stop_after_mask or not parsed.stop_after
            note_reply(action, scored=scored)
            inner = cast(gym.Env[Any, A.Action], self.env)  # the wrapped env takes actions
            call = parsed.call
            assert call is not None  # not retried: the reply gave a call
            step_action = self.to_action(call) if executed else A.stop()
            _, step_reward, terminated, truncated, info = inner.step(step_action)
            reward = float(step_reward)
            if not executed:  # the protocol's budget ran out: the reply is recorded, not run
                terminated, truncated = False, True
            elif parsed.stop_after and not (terminated or truncated):
                # a later call of the reply stopped: MedSAM-Agent's RL loop ends the episode
                _, stop_reward, terminated, truncated, info = inner.step(A.stop())
                reward += float(stop_reward)
        over = terminated or truncated
        if retried and not over and proto.first_retry_restarts and before_first_action:
            # MedSAM-Agent's EVAL: the history is cleared before the first action, so the
            # retry is the turn-1 text again with a fresh history
            self._turns = [(self._turns[0][0], None)]
        elif retried and not over and action == "" and not proto.keep_empty_replies:
            pass  # an empty reply is not saved: the same turn is asked again
        else:
            user, _ = self._turns[-1]
            self._turns[-1] = (user, {"role": "assistant", "content": action})
            if not over:
                text = proto.later_user_text(self._target)
                view = self._view(self._base.current_mask)
                self._turns.append((user_message(view, text, self.images), None))
        messages = self.messages()
        info.update(messages=messages, reply=action, parsed=parsed.to_dict(), executed=executed)
        info["protocol"] = self.protocol.name
        return messages, float(reward), bool(terminated), bool(truncated), info

    def close_episode(self) -> tuple[list, float, bool, bool, dict[str, Any]]:
        """End the open episode with the env's stop action; what ``step`` returns.

        For trainers whose loop stops while the episode is still open (a token budget ran out,
        a tool result was dropped): the stop is an ordinary action down the wrapper chain, not
        a reply, so it is never charged as a format error; the reward's terms score it as a
        stop. The unanswered user turn leaves the conversation. ``info`` has ``reply`` and
        ``parsed`` None, ``executed`` False and ``closed`` True.

        Raises:
            RuntimeError: no episode is open (before a reset, or once it has ended).
        """
        if not self._turns or self._base.episode_over:
            raise RuntimeError("no open episode to close; call reset() first")
        # no reply came: the reward reads an empty one (a model that wrote nothing)
        self.env.get_wrapper_attr("note_reply")("")
        inner = cast(gym.Env[Any, A.Action], self.env)  # the wrapped env takes actions
        _, reward, terminated, truncated, info = inner.step(A.stop())
        if self._turns[-1][1] is None:
            self._turns.pop()  # the model never answered it
        messages = self.messages()
        info.update(messages=messages, reply=None, parsed=None, executed=False, closed=True)
        info["protocol"] = self.protocol.name
        return messages, float(reward), bool(terminated), bool(truncated), info

    @property
    def oracle(self) -> Oracle:
        """The episode's ``medseg_env.Oracle`` as a policy that answers in reply text sees it.

        Ground truth, prompts, sizes and ``supports`` are the inner env's oracle's (reached
        with ``get_wrapper_attr``); ``preview(action)`` previews the action that the reply
        text for ``action`` gives back (rendered under the protocol, parsed, mapped to the
        canvas), so an expert measures the progress of what a model can write. An action whose
        reply does not parse previews the current mask, with the reason.
        """
        return _ReplyOracle(self, self.env.get_wrapper_attr("oracle"))

    def current_image(self) -> Image.Image:
        """The image of the current state as the model sees it: the current mask tinted on the
        protocol's view of the sample (what the next user turn shows)."""
        return self._view(self._base.current_mask)

    def _accepted_prompts(self) -> int:
        p = self._base.prompts
        return len(p.points) + int(p.box is not None)

    # ------------------------------------------------------------------ conversation
    def messages(self) -> list[Message]:
        """The messages the model is sent now: the system prompt, the kept history, this turn.

        Once the episode is over there is no current turn; the last exchange is kept then,
        whatever the history mode, so the final observation shows the last reply.

        Fresh lists and dicts each call (images are shared; they are never modified).
        """
        done = [t for t in self._turns if t[1] is not None]
        current = [t for t in self._turns if t[1] is None]
        keep = self.protocol.history_turns
        if keep is not None and not current:
            keep = max(keep, 1)  # the episode is over: its last exchange stays visible
        if keep is not None:
            done = done[max(0, len(done) - keep) :] if keep > 0 else []
        out: list[Message] = [{"role": "system", "content": self.protocol.system_prompt}]
        for index, (user, assistant) in enumerate(done):
            shown = _copy(user)
            if self.protocol.shifted_history_images:
                shown["content"][0] = self._history_image(index)
            out += [shown, _copy(assistant)]
        out += [_copy(user) for user, _ in current]
        return out

    def _history_image(self, index: int) -> dict[str, Any]:
        """The image part the released EVAL code shows in the ``index``-th kept history user
        message: its ``index``-th kept intermediate image (the overlay shown at a later
        reply), else the original image at its full size (``infer/models/model_loader.py``
        lines 940-975 and 1056-1075)."""
        if index < len(self._shown):
            return dict(self._shown[index])
        if self._original is None:
            image = Image.fromarray(np.ascontiguousarray(self._base.sample.image), "RGB")
            self._original = image_part(image, self.images)
        return dict(self._original)

    def target_text(self, target: str, modality: str) -> str:
        return self.target_template.format(target=target, modality=modality)

    def _view(self, frame_mask: np.ndarray | None) -> Image.Image:
        """The image of this turn, at the sample's resolution, through the image rule.

        ``frame_mask`` is the env's mask (its frame: the canvas, or the sample's own pixels).
        """
        sample = self._base.sample
        mask = None
        if frame_mask is not None:
            height, width = sample.mask.shape
            if self._base.native_resolution:
                mask = np.asarray(frame_mask, bool)[:height, :width]
            else:
                mask = unletterbox_mask(frame_mask, (height, width))
        p = self.protocol
        return model_image(sample.image, mask, self.image_rule, p.overlay_color, p.overlay_alpha)

    # ------------------------------------------------------------------ coordinates
    def _frame(self) -> LongestSide:
        return LongestSide.of(self._base.sample.mask.shape, self._base.obs_size)

    def to_action(self, call: ToolCall) -> A.Action:
        """A canonical call in the protocol's grid → the env's action on the canvas.

        The grid names pixels of the sample (the protocol's rounding): a click at pixel ``p``
        lands on its centre ``p + 0.5``; a box from ``p0`` to ``p1`` covers both pixels, so its
        edges are ``p0`` and ``p1 + 1``, sorted. Under ``raw_box_corners`` a box is the two
        corners as written, each at its pixel coordinate ``p`` (the value the released code
        hands its segmenter): no sorting, no ``+1``, no clamping. Then the letterbox maps the
        sample to the canvas.
        """
        if call.name == "stop_action":
            return A.stop()
        height, width = self._base.sample.mask.shape
        grid, frame, size = self.protocol.frame_for(call), self._frame(), self._base.obs_size
        if call.name == "add_point":
            x, y = call.arguments["point_2d"]
            px = float(np.asarray(grid.to_pixels(np.array([x]), width))[0])
            py = float(np.asarray(grid.to_pixels(np.array([y]), height))[0])
            centre = np.array([min(px, width - 1) + 0.5, min(py, height - 1) + 0.5])
            cx, cy = _canvas_normalized(frame.to_target(centre), size)
            return A.click(cx, cy, positive=call.arguments["point_type"] == "positive")
        x1, y1, x2, y2 = call.arguments["bbox_2d"]
        if self.protocol.raw_box_corners:
            corner_x = np.asarray(grid.to_pixels(np.array([x1, x2], float), width), float)
            corner_y = np.asarray(grid.to_pixels(np.array([y1, y2], float), height), float)
            corners = np.array([corner_x[0], corner_y[0], corner_x[1], corner_y[1]])
            return A.box(*_canvas_normalized(frame.to_target(corners), size))
        xs = np.sort(np.asarray(grid.to_pixels(np.array([x1, x2], float), width), float))
        ys = np.sort(np.asarray(grid.to_pixels(np.array([y1, y2], float), height), float))
        xs, ys = np.minimum(xs, width - 1), np.minimum(ys, height - 1)
        edges = np.array([xs[0], ys[0], xs[1] + 1, ys[1] + 1])
        return A.box(*_canvas_normalized(frame.to_target(edges), size))

    def to_call(self, action: A.Action) -> ToolCall:
        """The env's action → the protocol's call (the inverse of ``to_action`` up to the grid).

        A click names the pixel it falls in; a box names its first and last covered pixels,
        or under ``raw_box_corners`` its two corners' pixel coordinates, in the action's order.
        """
        kind, point, box = A.validate(action)
        if kind == A.ActionKind.STOP:
            return ToolCall("stop_action", {})
        height, width = self._base.sample.mask.shape
        frame, size = self._frame(), self._base.obs_size
        name = "add_bbox" if kind == A.ActionKind.BOX else "add_point"
        grid = self.protocol.frame_for(ToolCall(name, {}))

        def to_grid(pixels: np.ndarray, extent: int, last: int | None = None) -> list[int]:
            pixels = np.clip(pixels, 0, extent - 1 if last is None else last)
            return [int(v) for v in np.asarray(grid.from_pixels(pixels, extent)).reshape(-1)]

        if kind == A.ActionKind.BOX and self.protocol.raw_box_corners:
            x0, y0, x1, y1 = np.rint(frame.to_source(np.asarray(box, float) * size))
            gx = to_grid(np.array([x0, x1]), width, last=width)
            gy = to_grid(np.array([y0, y1]), height, last=height)
            if gx[0] == gx[1]:
                gx = _apart(gx, grid)
            if gy[0] == gy[1]:
                gy = _apart(gy, grid)
            return ToolCall("add_bbox", {"bbox_2d": (gx[0], gy[0], gx[1], gy[1])})
        if kind == A.ActionKind.BOX:
            x0, y0, x1, y1 = frame.to_source(np.asarray(box, float) * size)
            first = np.floor([min(x0, x1), min(y0, y1)])
            last = np.ceil([max(x0, x1), max(y0, y1)]) - 1
            gx = _apart(to_grid(np.array([first[0], max(last[0], first[0])]), width), grid)
            gy = _apart(to_grid(np.array([first[1], max(last[1], first[1])]), height), grid)
            return ToolCall("add_bbox", {"bbox_2d": (gx[0], gy[0], gx[1], gy[1])})
        x, y = np.floor(frame.to_source(np.asarray(point, float) * size))
        (px,), (py,) = to_grid(np.array([x]), width), to_grid(np.array([y]), height)
        kind_name = "positive" if kind == A.ActionKind.POSITIVE_CLICK else "negative"
        return ToolCall("add_point", {"point_2d": (px, py), "point_type": kind_name})

    def render_action(self, action: A.Action) -> str:
        """The reply text that replays ``action`` under this protocol (trajectory export)."""
        return self.protocol.render(self.to_call(action))

    def parse(self, reply: str) -> ParsedReply:
        return self.protocol.parse(reply)


class _ReplyOracle:
    """An ``Oracle`` whose ``preview`` runs the action that the reply text gives back."""

    def __init__(self, text_env: MedSegTextEnv, inner: Oracle) -> None:
        self._text_env, self._inner = text_env, inner

    @property
    def ground_truth(self) -> np.ndarray:
        return self._inner.ground_truth

    @property
    def prompts(self) -> Prompts:
        return self._inner.prompts

    @property
    def obs_size(self) -> int:
        return self._inner.obs_size

    @property
    def current_mask(self) -> np.ndarray:
        return self._inner.current_mask

    @property
    def min_box_size(self) -> float:
        return self._inner.min_box_size

    def supports(self, kind: PromptKind) -> bool:
        return self._inner.supports(kind)

    def preview(self, action: A.Action) -> tuple[np.ndarray, str | None]:
        env = self._text_env
        parsed = env.parse(env.render_action(action))
        if parsed.call is None:
            return self._inner.preview(A.stop())[0], f"reply not parsed: {parsed.error}"
        return self._inner.preview(env.to_action(parsed.call))


def _apart(values: list[int], grid: GridFrame) -> list[int]:
    """Box corners one grid step apart at least (a one-pixel box), as strict protocols ask."""
    low, high = values
    if high > low:
        return values
    return [low, low + 1] if low < grid.max_value else [low - 1, low]


def _canvas_normalized(pixels: np.ndarray, size: int) -> tuple[float, ...]:
    return tuple(float(v) for v in np.clip(np.asarray(pixels, float) / size, 0.0, 1.0))


def _copy(message: Message | None) -> Message:
    assert message is not None
    content = message["content"]
    if isinstance(content, list):
        return {**message, "content": [dict(p) for p in content]}
    return dict(message)


def make_text_env(
    protocol: str | Protocol = "medsam_agent",
    images: ImageFormat = "pil",
    target_template: str = DEFAULT_TARGET_TEMPLATE,
    image_rule: ImageRule | None = None,
    render_mode: str | None = None,
    **config: Any,
) -> MedSegTextEnv:
    """Entry point of ``MedSeg-Text-v0``: ``MedSegEnv`` + ``MedSegTextEnv``.

    The options of the protocol's ``env_options()`` default to the protocol's: its turn budget
    (``max_turns``), the way its code calls the segmenter (``prompting``), and for the
    MedSAM-Agent protocols ``native_resolution=True``, ``sort_box_corners=False`` and
    ``min_box_size=0``; every other option is ``MedSeg-v0``'s.
    """
    proto = get_protocol(protocol)
    for name, value in proto.env_options().items():
        config.setdefault(name, value)
    env = MedSegEnv(render_mode=render_mode, **config)
    return MedSegTextEnv(
        env, proto, images=images, target_template=target_template, image_rule=image_rule
    )
