"""``MedSegToolEnv``: ``MedSeg-Text-v0`` as an ``environment_factory`` of TRL 1.16's GRPOTrainer.

TRL's contract (``trl/trainer/grpo_trainer.py``, 1.16.0): the trainer calls the factory with no
argument for every concurrent rollout (instances are pooled and reused), lists the *public
functions* of the class (``inspect.getmembers(cls, inspect.isfunction)``, minus ``reset``,
``get_reward`` and names starting with ``_``) as the model's tools, and renders their JSON
schemas (``transformers.utils.get_json_schema``: type hints and Google docstrings) into the chat
template's ``tools``. Before generation it calls ``reset(**row)`` with every column of the
dataset row and appends the returned content to the row's last (user) message. When a reply
holds ``<tool_call>``s it calls the methods with the parsed arguments; a method that returns a
list of content parts (``{"type": "image", "image": PIL}``, ``{"type": "text", ...}``) becomes a
``{"role": "tool", "content": [...]}`` message whose images reach both the next generation and
the training forward pass. ``get_reward()`` (no arguments) is one more reward function, weight 1,
appended after the ones passed as ``reward_funcs``.

Here the three public methods are MedSAM-Agent's tools, ``add_bbox(bbox_2d)``,
``add_point(point_2d, point_type)`` and ``stop_action()``, with its descriptions. Each is one
``ToolSession.call`` (``medseg_env.text.tool_session``, the framework-neutral core this class
adapts to TRL): the call is rendered as the reply text Qwen's template writes for it and sent
to ``MedSegTextEnv.step``, so the protocol's parser checks the arguments (a bad value, a missing
or extra key, takes the env's invalid-action path, ``MedSegEnv.reject``), the protocol's rules
decide what a malformed reply or the last turn does, and the env computes the reward (preset
``medsam_agent`` by default). The result is the next turn's user content of the text env (the
new overlay and the protocol's later-turn text), or a short text once the episode is over.

**Where TRL's loop differs from MedSAM-Agent's** (``RL-verl``: its agent loop and tools):

- *Overlay message*: TRL returns a tool result as a ``tool`` message; Qwen's template renders
  it ``<|im_start|>user\\n<tool_response>\\n<image>text\\n</tool_response><|im_end|>``, where
  MedSAM-Agent appends a plain user message (image + text).
- *System prompt*: the chat template writes the tools section from these methods (Qwen's "You
  may call one or more functions" wording; ``get_json_schema`` cannot express the released
  schemas' ``minItems``/``maxItems``, the parser still checks the lengths), so ``grpo_rows``
  puts only the part of the protocol's system prompt before its own ``# Tools`` section.
- *Turn limits*: TRL bounds tool rounds (``max_tool_calling_iterations``), not replies, and
  keeps generating after the episode has ended (stop, a rejected call) while the model calls
  tools; those calls get a text-only "episode is over" result and their tokens are trained with
  the episode's reward. ``tool_rounds(protocol)`` gives the bound that makes the number of
  replies the protocol's (``medsam_agent_rl``: 4 rounds, so 5 replies, the 5th never executed).
  ``max_completion_length`` counts every turn's tokens, the overlays' image tokens included; a
  tool result that would overflow it is dropped by TRL *after* the env ran the call.
- *Malformed replies*: a reply TRL's parser cannot read as a tool call ends TRL's rollout as the
  final answer, never reaching a tool. The reward functions below hand that last reply to the
  text env first (``_finish``), so it takes the invalid path and is charged, as MedSAM-Agent
  charges it; they must run before ``get_reward`` (TRL runs ``reward_funcs`` first, in order:
  use ``reward_setup()``). A call of an unknown tool gets TRL's error message and the env
  never sees it. TRL runs *every* call of a reply (each one turn here); MedSAM-Agent runs the
  first and ends the episode if any is ``stop_action``. TRL's parser types the arguments by the
  schema (``"7"`` becomes ``7``) before the protocol sees them.
- A rollout that stops with the episode still open (TRL's token budget, a dropped tool
  result) is closed with the env's stop action, without a format charge
  (``MedSegTextEnv.close_episode``).

``medseg_agents.training.trl.trl_rollout`` runs MedSAM-Agent's exact loop through TRL's
``rollout_func``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from medseg_env.text import Protocol, get_protocol
from medseg_env.text.hermes import render_call, reply_text
from medseg_env.text.tool_session import (
    EPISODE_OVER_TEXT,
    Content,
    ToolSession,
    reset_arguments,
)
from medseg_env.wrappers.text_env import MedSegTextEnv, make_text_env

from ..envs import with_shared_segmenter

__all__ = [  # render_call and EPISODE_OVER_TEXT are re-exported for the adapter's users
    "EPISODE_OVER_TEXT",
    "MedSegToolEnv",
    "dice_reward",
    "episode_reward",
    "format_reward",
    "grpo_rows",
    "render_call",
    "reward_setup",
    "tool_env_factory",
    "tool_rounds",
    "tool_system_prompt",
]


def _tool(method: Callable[..., Any]) -> Callable[..., Content]:
    """A tool whose schema is ``method``'s signature and docstring, called with any arguments.

    Python would refuse a call with a missing or unknown keyword before the method ran, and
    TRL would answer with its own error; here every call reaches the protocol's parser.
    """
    name = method.__name__
    params = list(inspect.signature(method).parameters)[1:]

    @functools.wraps(method)
    def call(self: MedSegToolEnv, *args: Any, **kwargs: Any) -> Content:
        arguments = dict(zip(params, args, strict=False)) | kwargs
        return self._call(name, arguments)

    return call


class MedSegToolEnv:
    """One ``MedSeg-Text-v0`` episode per rollout, driven by tool calls (TRL's environment).

    Args:
        text_env: the text env to drive; by default ``make_text_env(protocol, images="pil",
            reward=reward, **env_options)``.
        protocol: the text protocol (default ``"medsam_agent_rl"``, MedSAM-Agent's training path).
        reward: the env's reward (default ``"medsam_agent"``, MedSAM-Agent's RL reward as its
            released ``compute_score`` computes it).
        env_options: more ``MedSeg-v0`` options (``dataset``, ``segmenter``...).

    Public attributes for logging (properties, so TRL does not list them as tools):
    ``episode_reward`` (the sum of the env's rewards), ``dice``, ``format_ok`` (no invalid
    turn), ``num_replies``, ``num_malformed``,
    ``episode_over``, ``info`` (the last step's), ``text_env``, and ``session``, the
    ``medseg_env.text.tool_session.ToolSession`` it adapts.
    """

    def __init__(
        self,
        text_env: MedSegTextEnv | None = None,
        *,
        protocol: str | Protocol = "medsam_agent_rl",
        reward: Any = "medsam_agent",
        **env_options: Any,
    ) -> None:
        if text_env is None:
            text_env = make_text_env(protocol, images="pil", reward=reward, **env_options)
        elif env_options:
            raise TypeError("give either text_env or env options, not both")
        if text_env.images != "pil":
            raise ValueError("TRL needs PIL images: build the text env with images='pil'")
        self._session = ToolSession(text_env)
        self._finished = False

    # ------------------------------------------------------------------ TRL's contract
    def reset(self, **row: Any) -> Content:
        """Start the episode the dataset row names; return the first user content.

        Reads ``sample_index`` or ``sample_id`` (else a random sample) and ``seed`` (else
        none) from the row; other columns are ignored. Returns ``[image part, text part]``:
        the plain image and the protocol's first-turn text, which TRL appends to the row's
        last message.
        """
        self._session.reset(**reset_arguments(row))
        self._finished = False
        content = self._session.user_content()
        assert content is not None  # a fresh episode always has a user turn
        return content

    @_tool
    def add_bbox(self, bbox_2d: list[int]):
        """Add a bounding box to initialize or refine the segmentation.

        Args:
            bbox_2d: 2D bounding box in [x1, y1, x2, y2] format
        """

    @_tool
    def add_point(self, point_2d: list[int], point_type: str):
        """Add a point to refine the mask (positive to include areas, negative to exclude areas).

        Args:
            point_2d: 2D coordinate point in [x, y] format, with x and y in range [0, 999]
            point_type: Type of point: 'positive' to expand mask, 'negative' to refine mask (choices: ["positive", "negative"])
        """  # noqa: E501

    @_tool
    def stop_action(self):
        """Stop the refinement process when the mask accurately covers the target object."""

    def get_reward(self) -> float:
        """The episode's reward: the sum of the env's rewards (closing an open episode first)."""
        self._finish(None)
        return self.episode_reward

    # ------------------------------------------------------------------ read-outs
    @property
    def text_env(self) -> MedSegTextEnv:
        return self._session.text_env

    @property
    def session(self) -> ToolSession:
        return self._session

    @property
    def info(self) -> dict[str, Any]:
        return self._session.info

    @property
    def episode_over(self) -> bool:
        return self._session.over

    @property
    def episode_reward(self) -> float:
        return float(self._session.episode_return)

    @property
    def dice(self) -> float:
        return float(self._session.info.get("dice", 0.0))

    @property
    def format_ok(self) -> bool:
        return self._session.format_ok

    @property
    def num_replies(self) -> int:
        return self._session.num_replies

    @property
    def num_malformed(self) -> int:
        return self._session.num_malformed

    # ------------------------------------------------------------------ the one path
    def _call(self, name: str, arguments: Mapping[str, Any]) -> Content:
        """A tool call through the session; the next turn's content (or the end's text).

        TRL shows the end as text only: after the last turn, and for calls made after it.
        """
        result = self._session.call(name, dict(arguments))
        if result.user_content is None:
            return [{"type": "text", "text": EPISODE_OVER_TEXT}]
        return result.user_content

    def _finish(self, completion: Sequence[Mapping[str, Any]] | None) -> None:
        """End the episode once the rollout is over (idempotent; reward functions call it).

        A last reply that no tool ran (no call TRL could parse, or the tool-round limit) goes
        to the text env, so the protocol judges it. An episode still open after that (TRL's
        token budget ran out, or it dropped a tool result after the env ran the call) is
        closed (``ToolSession.close``: the env's stop action, no format charge).
        """
        session = self._session
        if not session.started or self._finished:
            return
        self._finished = True
        if not session.over and completion:
            shown = sum(
                1
                for m in completion
                if m.get("role") == "tool" and isinstance(m.get("content"), list)
            )
            last = completion[-1]
            if last.get("role") == "assistant" and session.num_calls <= shown:
                session.reply(reply_text(last.get("content"), last.get("tool_calls")))
        session.close()


# ---------------------------------------------------------------------- reward functions
def _scores(
    completions: Sequence[Any],
    environments: Sequence[MedSegToolEnv] | None,
    score: Callable[[MedSegToolEnv], float],
) -> list[float]:
    if environments is None:
        raise ValueError("these reward functions need TRL's environments (environment_factory)")
    out = []
    for completion, env in zip(completions, environments, strict=True):
        env._finish(completion if isinstance(completion, list) else None)
        out.append(float(score(env)))
    return out


def format_reward(
    completions: Sequence[Any], environments: Sequence[MedSegToolEnv] | None = None, **_: Any
) -> list[float]:
    """1 when no turn of the episode was invalid, else 0 (stricter than the ``medsam_agent``
    reward's format score, which reads the replies' ``<tool_call>`` blocks as MedSAM-Agent's
    ``compute_score`` does)."""
    return _scores(completions, environments, lambda env: float(env.format_ok))


def dice_reward(
    completions: Sequence[Any], environments: Sequence[MedSegToolEnv] | None = None, **_: Any
) -> list[float]:
    """The Dice of the episode's final mask."""
    return _scores(completions, environments, lambda env: env.dice)


def episode_reward(
    completions: Sequence[Any], environments: Sequence[MedSegToolEnv] | None = None, **_: Any
) -> list[float]:
    """The env's episode reward (what ``get_reward`` returns), as a named reward function."""
    return _scores(completions, environments, lambda env: env.episode_reward)


def reward_setup() -> tuple[list[Any], list[float]]:
    """``(reward_funcs, reward_weights)`` for ``GRPOTrainer``/``GRPOConfig``.

    Format and Dice are logged with weight 0 (``rewards/format_reward/mean``...), and run
    before ``get_reward``, which TRL appends with weight 1: the reward is the env's.
    """
    return [format_reward, dice_reward], [0.0, 0.0]


# ---------------------------------------------------------------------- set-up helpers
def tool_env_factory(**options: Any) -> Callable[[], MedSegToolEnv]:
    """A factory for ``environment_factory=``: instances share the process's segmenter
    (``medseg_env.segmenters.shared_segmenter``) unless ``text_env`` is given."""

    def factory() -> MedSegToolEnv:
        if "text_env" in options:
            return MedSegToolEnv(**options)
        return MedSegToolEnv(**with_shared_segmenter(options))

    return factory


def tool_system_prompt(protocol: str | Protocol = "medsam_agent_rl") -> str:
    """The protocol's system prompt without its own tools section (the template writes one)."""
    text = get_protocol(protocol).system_prompt
    return text.split("\n\n# Tools", 1)[0]


def tool_rounds(protocol: str | Protocol = "medsam_agent_rl") -> int:
    """``max_tool_calling_iterations`` that gives the protocol's number of replies.

    ``n`` tool rounds let the model reply ``n + 1`` times; a protocol that never executes its
    last reply (``medsam_agent_rl``) gets ``max_turns - 1``.
    """
    p = get_protocol(protocol)
    return p.max_turns - 1 if not p.execute_last_turn else p.max_turns


def grpo_rows(
    sample_indices: Sequence[int],
    *,
    seeds: Sequence[int] = (0,),
    protocol: str | Protocol = "medsam_agent_rl",
    system: str | None = None,
) -> list[dict[str, Any]]:
    """Dataset rows for ``GRPOTrainer``: one per (sample, seed), with the system prompt.

    ``prompt`` is ``[system, user ""]``: ``reset`` appends the image and the first-turn text
    to the user message. ``system`` defaults to ``tool_system_prompt(protocol)``.
    """
    system = tool_system_prompt(protocol) if system is None else system
    return [
        {
            "prompt": [
                {"role": "system", "content": system},
                {"role": "user", "content": ""},
            ],
            "sample_index": int(index),
            "seed": int(seed),
        }
        for seed in seeds
        for index in sample_indices
    ]
