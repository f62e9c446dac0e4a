"""What a text protocol is: the contract between an MLLM's replies and the env's actions.

A protocol is pure data plus parsing, with no model library: the system and turn templates,
the tool schemas, ``parse(text) -> ParsedReply`` (never raises), ``render(call) -> text`` (its
inverse, for trajectory export), the integer coordinate grid (``medseg_env.geometry``), the
rule that turns a sample into the image the model sees, and what happens after a malformed
reply. The text env (``medseg_env.wrappers.text_env``) does the rest: it builds the messages,
maps grid coordinates to the observation and steps the env.

A ``ToolCall`` is canonical: one of ``TOOL_NAMES``, with arguments in the protocol's grid
(``bbox_2d`` four numbers, ``point_2d`` two, ``point_type`` "positive" or "negative"), all
finite and inside the grid. ``parse`` only returns calls of that form, so every parsed call
maps to an action inside the env's action space.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .. import geometry

TOOL_NAMES = ("add_bbox", "add_point", "stop_action")


@dataclass(frozen=True)
class ToolCall:
    """One canonical tool call, coordinates in the protocol's grid.

    ``arguments``: ``{"bbox_2d": (x1, y1, x2, y2)}`` for ``add_bbox``,
    ``{"point_2d": (x, y), "point_type": "positive" | "negative"}`` for ``add_point``, ``{}``
    for ``stop_action``.
    """

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedReply:
    """The result of parsing one reply: a call, or the reason there is none.

    Attributes:
        text: the reply as received.
        call: the call that will be executed, or None.
        error: why the reply gave no call (None exactly when ``call`` is set).
        num_calls: tool calls found in the reply (only the first is executed).
        stop_after: the reply also asked to stop: ``call`` is executed, then the episode ends
            (MedSAM-Agent's RL loop ends the episode when any call of a reply is
            ``stop_action``, while it executes only the first).
    """

    text: str
    call: ToolCall | None
    error: str | None = None
    num_calls: int = 0
    stop_after: bool = False

    @property
    def ok(self) -> bool:
        return self.call is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record of the parse (for episode records)."""
        call = None
        if self.call is not None:
            call = {
                "name": self.call.name,
                "arguments": {
                    k: list(v) if isinstance(v, tuple) else v
                    for k, v in self.call.arguments.items()
                },
            }
        return {
            "call": call,
            "error": self.error,
            "num_calls": self.num_calls,
            "stop_after": self.stop_after,
        }


@dataclass(frozen=True)
class ImageRule:
    """How a protocol turns the image (with or without the overlay) into the model's input.

    ``mode``: ``"thumbnail_white"`` (PIL's ``thumbnail`` into ``side``×``side``: aspect kept,
    never enlarged, Pillow's size rounding and two-step reduction; centred on white:
    MedSAM-Agent's EVAL path), ``"letterbox_white"`` (scaled to fit ``side``×``side`` with a
    plain resize, aspect kept, centred on white; ``upscale`` False: an image smaller than
    ``side`` is padded but never enlarged) or ``"stretch"`` (resized to ``side``×``side``).
    ``resample``: the PIL filter of the image resize. ``tint_first``: the mask is tinted on the
    image at its own resolution before the resize (SegAgent); otherwise the image is resized
    first and the mask is tinted on the result (MedSAM-Agent's paths), placed as
    ``overlay_mask`` says: ``"aligned"`` (moved by the image's geometry, bilinear, ``> 127``:
    the RL loop) or ``"stretched"`` (NEAREST over the whole square, padding included,
    ``> 128``: the EVAL code; see ``messages.mask_in_view``).
    """

    side: int = 512
    mode: Literal["thumbnail_white", "letterbox_white", "stretch"] = "stretch"
    upscale: bool = True
    resample: Literal["lanczos", "bilinear", "bicubic"] = "bicubic"
    tint_first: bool = False
    overlay_mask: Literal["aligned", "stretched"] = "aligned"


def grid_integers(values: object, count: int, key: str, frame: geometry.GridFrame) -> list[int]:
    """``count`` grid coordinates as the integers a reply writes (for ``render``).

    Raises ``ValueError`` naming ``key`` for a call that is not canonical: not ``count``
    numbers, a bool, a non-finite value, or one off the grid once rounded.
    """
    if not isinstance(values, list | tuple) or len(values) != count:
        raise ValueError(f"{key} needs {count} numbers; got {values!r}")
    out = []
    for value in values:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"{key} value {value!r} is not a finite number")
        rounded = round(value)
        if not 0 <= rounded <= frame.max_value:
            raise ValueError(f"{key} value {value!r} outside 0..{frame.max_value}")
        out.append(rounded)
    return out


def _fits(name: str, value: Any, current: Any) -> bool:
    """Whether ``value`` may replace the protocol setting ``name`` (now ``current``)."""
    if name == "image_rule":
        return isinstance(value, ImageRule)
    if name in ("history_turns", "min_box_size"):
        return value is None or (isinstance(value, int | float) and not isinstance(value, bool))
    if isinstance(current, bool):
        return isinstance(value, bool)
    if isinstance(current, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(current))


class Protocol(ABC):
    """A text protocol. Subclasses set the attributes and implement ``parse`` and ``render``.

    Attributes:
        name: registry name.
        system_prompt: the system message (exact text the model was trained on).
        first_turn: the first user text, a ``str.format`` template with ``{target}``.
        later_turn: the user text that comes with every new overlay.
        image_token: text put before each user text (``"<image>"`` in MedSAM-Agent's EVAL
            path), or ``""``.
        tools: the tool schemas, as the system prompt lists them.
        frame: the integer grid the coordinates are in.
        box_frame: the grid of ``bbox_2d`` where it differs from ``frame`` (SegAgent), else
            None; ``frame_for(call)`` picks the right one.
        image_rule: how the image reaches the model.
        overlay_color, overlay_alpha: the mask tint of the overlay images.
        history_turns: past turns (assistant reply + the user message after it) kept in the
            messages, or None for the full history.
        max_turns: the most assistant turns of an episode; a reply retried under ``retries``
            (or ``retry_first_stop``) does not count.
        execute_last_turn: False when the last allowed reply is generated but never executed
            (MedSAM-Agent's RL loop).
        retries: malformed replies in a row that are tolerated; one more ends the episode.
        retry_first_stop: a ``stop_action`` before any action is retried instead of obeyed
            while the retry budget (shared with malformed replies) is not spent, and obeyed
            once it is (MedSAM-Agent's EVAL path).
        segmenter_call: the env's ``prompting`` rule the protocol was scored or trained with,
            a name in ``medseg_env.prompting.PROMPTING_RULES`` (``"accumulate"``,
            ``"medsam_agent_eval"``, ``"medsam_agent_rl"``, or one a plug-in registers);
            ``get_protocol`` refuses a protocol that names an unknown one. ``MedSeg-Text-v0``
            uses it unless ``prompting`` is given.
        native_resolution: the env option the protocol's code works at (``MedSegEnv``'s
            ``native_resolution``: masks and metrics at the sample's own resolution).
        min_box_size: the env's ``min_box_size`` under this protocol, or None for the env's
            default.
        raw_box_corners: a box goes to the segmenter with the corners the model wrote, mapped
            to pixel coordinates and nothing more (no sorting, no ``+1`` on the far edge, no
            clamping; the env option ``sort_box_corners=False``); False: the box covers the
            pixels its corners name, sorted.
        retries_spend_turns: a retried reply (``retries``, ``retry_first_stop``) spends a turn
            of the budget (``MedSegEnv.reject(spend_turn=...)``).
        first_retry_restarts: a reply retried before the first action restarts the
            conversation: the history is dropped and the first turn's text is sent again.
        keep_empty_replies: an empty reply (``""``) is kept in the history; False: it leaves
            no trace in the conversation and the same turn is asked again.
        score_stop_after_mask: when a reply also asks to stop (``ParsedReply.stop_after``),
            the mask of its executed call counts in the reward's masks
            (``MedSegEnv.note_reply(scored=...)``).
        shifted_history_images: each kept history user message shows the image MedSAM-Agent's
            EVAL code puts there instead of its own turn's: the images shown at the replies
            after the first action (retried ones too; the last ``history_turns`` of them), in
            order from the oldest kept message, and the original full-size image where that
            list runs out; so a message shows the overlay of a later turn, and the newest
            the original image.

    ``MedSeg-Text-v0`` builds its env with ``env_options()``. A protocol with some of these
    changed is ``protocol.replace(name=value, ...)`` (a copy), which ``MedSeg-Text-v0`` and
    ``MedSegTextEnv`` take in place of a name.
    """

    name: str
    system_prompt: str
    first_turn: str
    later_turn: str
    image_token: str = ""
    tools: Sequence[Mapping[str, Any]] = ()
    frame: geometry.GridFrame
    box_frame: geometry.GridFrame | None = None
    image_rule: ImageRule = ImageRule()
    overlay_color: tuple[int, int, int] = (0, 255, 0)
    overlay_alpha: float = 0.5
    history_turns: int | None = None
    max_turns: int = 5
    execute_last_turn: bool = True
    retries: int = 0
    retry_first_stop: bool = False
    segmenter_call: str = "accumulate"
    native_resolution: bool = False
    min_box_size: float | None = None
    raw_box_corners: bool = False
    retries_spend_turns: bool = True
    first_retry_restarts: bool = False
    keep_empty_replies: bool = True
    score_stop_after_mask: bool = True
    shifted_history_images: bool = False

    SETTINGS = (
        "image_rule",
        "history_turns",
        "max_turns",
        "execute_last_turn",
        "retries",
        "retry_first_stop",
        "segmenter_call",
        "native_resolution",
        "min_box_size",
        "raw_box_corners",
        "retries_spend_turns",
        "first_retry_restarts",
        "keep_empty_replies",
        "score_stop_after_mask",
        "shifted_history_images",
    )
    """The attributes ``replace`` may change: the protocol's rules, not its texts or grid."""

    def replace(self, **changes: Any) -> Protocol:
        """A copy of the protocol with some rules changed (the switches of its quirks).

        ``get_protocol("medsam_agent").replace(retries_spend_turns=True)``. The names are those
        of ``SETTINGS``; a value must have the type of the attribute it replaces.

        Raises:
            TypeError: an unknown name, or a value of the wrong type.
        """
        unknown = sorted(set(changes) - set(self.SETTINGS))
        if unknown:
            raise TypeError(
                f"Protocol.replace() got unknown setting(s) {unknown}; known: {list(self.SETTINGS)}"
            )
        out = copy.copy(self)
        for name, value in changes.items():
            current = getattr(self, name)
            if not _fits(name, value, current):
                raise TypeError(
                    f"Protocol.replace(): {name} must be like {current!r} "
                    f"({type(current).__name__}); got {value!r} ({type(value).__name__})"
                )
            setattr(out, name, value)
        return out

    def env_options(self) -> dict[str, Any]:
        """The ``MedSegEnv`` options this protocol's released code runs with.

        ``max_turns``, ``prompting`` (``segmenter_call``), ``native_resolution``,
        ``sort_box_corners`` (not ``raw_box_corners``) and, when the protocol sets one,
        ``min_box_size``. ``MedSeg-Text-v0`` uses each unless given.
        """
        options: dict[str, Any] = {
            "max_turns": self.max_turns,
            "prompting": self.segmenter_call,
            "native_resolution": self.native_resolution,
            "sort_box_corners": not self.raw_box_corners,
        }
        if self.min_box_size is not None:
            options["min_box_size"] = float(self.min_box_size)
        return options

    @abstractmethod
    def parse(self, text: str) -> ParsedReply:
        """The call in ``text``; never raises (a non-string gives an error reply too)."""

    @abstractmethod
    def render(self, call: ToolCall) -> str:
        """The reply text that ``parse`` reads back as ``call`` (up to grid rounding)."""

    def first_user_text(self, target: str) -> str:
        # replace, not str.format: a template may hold literal braces (JSON examples)
        return self.image_token + self.first_turn.replace("{target}", target)

    def later_user_text(self, target: str = "") -> str:
        """The text of a later turn (``later_turn`` may name ``{target}``, as SegAgent's)."""
        return self.image_token + self.later_turn.format(target=target)

    def frame_for(self, call: ToolCall) -> geometry.GridFrame:
        """The grid of ``call``'s coordinates."""
        if call.name == "add_bbox" and self.box_frame is not None:
            return self.box_frame
        return self.frame
