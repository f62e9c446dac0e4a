"""``ToolSession``: one ``MedSeg-Text-v0`` episode driven call by call, for any trainer.

Trainers with a tool loop (TRL's ``environment_factory``, verl's ``BaseTool`` and agent loop)
need the same few things of an episode: reset it, run one tool call (or a whole reply) and get
the tool's result back (the text and image the model sees next), close an episode the loop
left open, and read the episode's return and its count of invalid turns. ``ToolSession`` is
that, over a ``MedSegTextEnv``, and knows nothing of any trainer; the adapters in
``medseg_agents.training`` wrap it.

**One path.** A call is rendered as the reply text Qwen's template writes for it
(``medseg_env.text.hermes.render_call``) and sent to ``MedSegTextEnv.step``, as a whole reply
is: the protocol's parser checks the arguments (a malformed call takes the env's invalid-action
path, ``MedSegEnv.reject``), the protocol's rules decide what a malformed reply or the last turn
does, and the env computes the reward. Nothing here re-implements parsing, coordinates or
reward.

**The result** of a turn (``ToolResult``): the env's reward, flags and ``info``; ``user_content``,
the next user turn's content parts (the new overlay and the protocol's later-turn text), or
None once the episode is over; and ``text`` / ``image``, the tool's answer: the next turn's
text and overlay, or, once the episode is over, ``EPISODE_OVER_TEXT`` with the final overlay
(after a reply that gave no call, ``"Error: <why>. "`` before it, and no image). A call made
after the end runs nothing and answers ``EPISODE_OVER_TEXT``.

**Closing.** :meth:`ToolSession.close` ends an open episode with
``MedSegTextEnv.close_episode`` (the env's stop action, no format charge) and is idempotent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..wrappers.text_env import MedSegTextEnv
from .hermes import render_call
from .messages import Message

EPISODE_OVER_TEXT = "The episode is over: no further action is taken."
"""The tool's answer once the episode has ended (and to a call made after it)."""

RESET_KEYS = ("sample_index", "sample_id")
"""The reset options a dataset row may name (``reset_arguments``)."""

Content = list[dict[str, Any]]


def reset_arguments(row: Mapping[str, Any]) -> dict[str, Any]:
    """``ToolSession.reset`` keywords from a dataset row: its ``seed`` and the sample it names.

    Reads ``sample_index`` or ``sample_id`` (None: a random sample) and ``seed`` (None: no
    reseed); every other key is ignored.
    """
    options = {k: row[k] for k in RESET_KEYS if row.get(k) is not None}
    seed = row.get("seed")
    return {"seed": None if seed is None else int(seed), "options": options or None}


@dataclass(frozen=True)
class ToolResult:
    """One turn of a session (a call, a reply, or closing) and what the tool answers.

    Attributes:
        reward: the env's reward of the turn (0 when nothing ran).
        terminated, truncated: the env's flags after the turn.
        info: the env's ``info`` of the turn (the last turn's when nothing ran).
        user_content: the next user turn's content parts (fresh copies), or None once the
            episode is over.
        text: the tool's answer text (see the module docstring).
        image: the tool's answer image, or None.
        ran: False for a call made after the end, which runs nothing.
    """

    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]
    user_content: Content | None
    text: str
    image: Image.Image | None = None
    ran: bool = True

    @property
    def over(self) -> bool:
        return self.terminated or self.truncated

    def content(self) -> Content:
        """The answer as content parts: ``[image, text]``, or ``[text]`` without an image."""
        parts: Content = [] if self.image is None else [{"type": "image", "image": self.image}]
        return [*parts, {"type": "text", "text": self.text}]


@dataclass(eq=False)
class ToolSession:
    """One ``MedSeg-Text-v0`` episode at a time, driven by tool calls or whole replies.

    Args:
        text_env: the text env to drive (PIL images, as trainers pass images on).

    Read-outs: ``episode_return`` (the sum of the env's rewards, closing included),
    ``invalid_turns`` (turns the env marked invalid: rejected replies and actions it could not
    carry out), ``num_calls`` (calls made through :meth:`call`, those after the end
    included), ``num_replies`` (turns that reached the env), ``num_malformed`` (replies that
    gave no call), ``over``, ``info`` (the last turn's), ``messages`` (the conversation after
    the last turn), ``replies`` and ``rewards`` (per turn that ran).
    """

    text_env: MedSegTextEnv
    started: bool = field(default=False, init=False)
    over: bool = field(default=False, init=False)
    info: dict[str, Any] = field(default_factory=dict, init=False)
    messages: list[Message] = field(default_factory=list, init=False)
    episode_return: float = field(default=0.0, init=False)
    invalid_turns: int = field(default=0, init=False)
    num_calls: int = field(default=0, init=False)
    num_malformed: int = field(default=0, init=False)
    closed: bool = field(default=False, init=False)
    replies: list[str] = field(default_factory=list, init=False)
    rewards: list[float] = field(default_factory=list, init=False)
    _flags: tuple[bool, bool] = field(default=(False, False), init=False, repr=False)

    def __post_init__(self) -> None:
        if self.text_env.images != "pil":
            raise ValueError(
                f"a ToolSession needs PIL images: build the text env with images='pil' (got "
                f"images={self.text_env.images!r})"
            )

    # ------------------------------------------------------------------ the episode
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> list[Message]:
        """Start an episode (``MedSegTextEnv.reset``'s arguments); the first messages."""
        messages, info = self.text_env.reset(seed=seed, options=options)
        self.started, self.over, self.closed = True, False, False
        self._flags = (False, False)
        self.info, self.messages = info, messages
        self.episode_return = 0.0
        self.invalid_turns = self.num_calls = self.num_malformed = 0
        self.replies, self.rewards = [], []
        return messages

    def call(self, name: str, arguments: Any) -> ToolResult:
        """One tool call, as the reply text Qwen's template writes for it (see :meth:`reply`)."""
        self._require_start()
        self.num_calls += 1
        return self.reply(render_call(name, arguments))

    def reply(self, text: str) -> ToolResult:
        """One whole reply through ``MedSegTextEnv.step``; after the end, nothing runs."""
        self._require_start()
        if self.over:
            return self._after_end()
        messages, reward, terminated, truncated, info = self.text_env.step(text)
        self.replies.append(text)
        if info["parsed"]["call"] is None:
            self.num_malformed += 1
        return self._record(messages, float(reward), bool(terminated), bool(truncated), info)

    def close(self) -> float:
        """End the episode if it is still open (``MedSegTextEnv.close_episode``).

        Idempotent; returns the reward closing added (0 when the episode was already over).
        """
        self._require_start()
        if self.over:
            return 0.0
        messages, reward, terminated, truncated, info = self.text_env.close_episode()
        self.closed = True
        self._record(messages, float(reward), bool(terminated), bool(truncated), info)
        return float(reward)

    # ------------------------------------------------------------------ read-outs
    @property
    def num_replies(self) -> int:
        return len(self.replies)

    @property
    def format_ok(self) -> bool:
        """No invalid turn: every reply gave a call and every action could be carried out."""
        return self.invalid_turns == 0

    def user_content(self) -> Content | None:
        """The user turn the model answers next (fresh content parts), or None once over."""
        if self.over or not self.messages or self.messages[-1]["role"] != "user":
            return None
        return _copy_content(self.messages[-1]["content"])

    def overlay(self) -> Image.Image:
        """The current mask tinted on the protocol's view (the plain view before any mask)."""
        content = self.user_content()
        if content is not None:
            return next(p["image"] for p in content if p["type"] == "image")
        return self.text_env.current_image()

    def summary(self) -> dict[str, float]:
        """Scalars for logging: ``reward``, ``dice``, ``iou``, ``format_ok``, turns, replies."""
        info = self.info
        return {
            "reward": float(self.episode_return),
            "dice": float(info.get("dice", 0.0)),
            "iou": float(info.get("iou", 0.0)),
            "format_ok": float(self.format_ok),
            "num_prompts": float(info.get("num_prompts", 0)),
            "num_replies": float(self.num_replies),
            "episode_over": float(self.over),
        }

    # ------------------------------------------------------------------ helpers
    def _require_start(self) -> None:
        if not self.started:
            raise RuntimeError("call reset() before a tool call")

    def _record(
        self,
        messages: list[Message],
        reward: float,
        terminated: bool,
        truncated: bool,
        info: dict[str, Any],
    ) -> ToolResult:
        self.episode_return += reward
        self.rewards.append(reward)
        self.info, self.messages = info, messages
        if info.get("invalid_action") is not None:
            self.invalid_turns += 1
        self.over, self._flags = terminated or truncated, (terminated, truncated)
        content = self.user_content()
        if content is not None:
            image = next((p["image"] for p in content if p["type"] == "image"), None)
            text = "".join(p.get("text", "") for p in content if p["type"] == "text")
        elif info.get("format_error"):
            image, text = None, f"Error: {info['format_error']}. {EPISODE_OVER_TEXT}"
        else:
            image, text = self.overlay(), EPISODE_OVER_TEXT
        return ToolResult(reward, terminated, truncated, info, content, text, image)

    def _after_end(self) -> ToolResult:
        terminated, truncated = self._flags
        return ToolResult(
            0.0, terminated, truncated, self.info, None, EPISODE_OVER_TEXT, None, ran=False
        )


def _copy_content(content: Any) -> Content:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [dict(part) for part in content]
