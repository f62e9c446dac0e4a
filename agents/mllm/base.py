"""``TextPolicy``: a policy that answers ``MedSeg-Text-v0``'s messages with reply text.

A text policy reads the observation of the text env (the conversation so far, as OpenAI-style
chat messages in its protocol's history mode) and returns the model's raw reply. It keeps no
state of its own between turns: the messages are the state, so one policy serves many
episodes at once through ``act_batch`` (one batched generate call, or concurrent requests).

Subclasses implement ``generate(conversations) -> replies``. ``protocol`` names the text
protocol the model speaks (``medseg_env.text``); ``images`` says which image form it wants in
the messages (``"pil"`` or ``"data_url"``). ``medseg-bench`` wraps the env in
``MedSegTextEnv(env, policy.protocol, images=policy.images)`` for such a policy.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym

from medseg_env.text import get_protocol
from medseg_env.text.messages import ImageFormat, Message

from ..base import Info, Policy


class TextPolicy(Policy):
    """Base class of MLLM policies: ``act`` returns reply text, not a structured action.

    Args:
        protocol: the text protocol's registered name (``medsam_agent``, ...).
        temperature, top_p, max_tokens: sampling, per policy (0 temperature: greedy, as
            MedSAM-Agent evaluates).
        seed: seeds the policy's generator, from which sampled requests draw their seeds.
        episode_batch: episodes the benchmark plays in lockstep, one ``generate`` call per
            turn for all of them (see ``Policy.episode_batch``).
    """

    images: ClassVar[ImageFormat] = "pil"

    def __init__(
        self,
        protocol: str = "medsam_agent",
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 128,
        seed: int | None = None,
        episode_batch: int = 1,
    ) -> None:
        super().__init__(seed)
        if not (isinstance(episode_batch, int) and episode_batch >= 1):
            raise ValueError(f"episode_batch must be an int >= 1; got {episode_batch!r}")
        self.episode_batch = episode_batch
        self.protocol = get_protocol(protocol).name
        if not (isinstance(temperature, int | float) and temperature >= 0):
            raise ValueError(f"temperature must be a number >= 0; got {temperature!r}")
        if not (isinstance(top_p, int | float) and 0 < top_p <= 1):
            raise ValueError(f"top_p must be a number in (0, 1]; got {top_p!r}")
        if not (isinstance(max_tokens, int) and max_tokens >= 1):
            raise ValueError(f"max_tokens must be an int >= 1; got {max_tokens!r}")
        self.temperature, self.top_p, self.max_tokens = float(temperature), float(top_p), max_tokens

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def request_seed(self) -> int:
        """A seed for one sampled request, drawn from the policy's generator (reproducible)."""
        return int(self.rng.integers(2**31 - 1))

    # Text policies return the reply text; Policy.act's structured Action does not apply.
    def act(  # type: ignore[override]
        self, obs: list[Message], info: Info, env: gym.Env | None = None
    ) -> str:
        return self.act_batch([obs], [info])[0]

    def act_batch(  # type: ignore[override]
        self,
        observations: Sequence[list[Message]],
        infos: Sequence[Info],
        envs: Sequence[gym.Env | None] | None = None,
    ) -> list[str]:
        if len(observations) != len(infos):
            raise ValueError(
                f"batch sizes differ: {len(observations)} observations, {len(infos)} infos"
            )
        replies = self.generate(list(observations))
        if len(replies) != len(observations) or not all(isinstance(r, str) for r in replies):
            raise RuntimeError(
                f"{type(self).__name__}.generate returned {len(replies)} replies for "
                f"{len(observations)} conversations, or a non-str reply"
            )
        return replies

    @abstractmethod
    def generate(self, conversations: Sequence[list[Message]]) -> list[str]:
        """One reply per conversation, in order."""

    def describe(self) -> dict[str, Any]:
        """The settings that decide its replies (for run records)."""
        return {
            "protocol": self.protocol,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
        }
