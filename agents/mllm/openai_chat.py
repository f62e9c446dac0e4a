"""``OpenAIChatPolicy``: any OpenAI-compatible chat server as a policy.

``vllm serve``, ``sglang``, ``transformers serve`` or a hosted API: the text env's messages go
as they are (images as PNG data URLs), one request per episode and turn, at most
``concurrency`` in flight, each with a timeout. Failed requests are retried by the OpenAI
client itself (``max_retries``): connection errors, timeouts, rate limits (HTTP 429) and server
errors, after the delay the server asks for (``Retry-After``, up to two minutes) or else an
exponential back-off with jitter (from 0.5 s, doubling, at most 8 s, each shortened by up to
25% at random so that concurrent requests spread out). A request that still fails raises
``RuntimeError`` naming the server and the cause: the benchmark's journal keeps every episode
finished before it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from medseg_env.text.hermes import reply_text as hermes_reply_text
from medseg_env.text.messages import ImageFormat, Message, convert_images

from .base import TextPolicy


def _import_openai() -> Any:
    try:
        import openai
    except ImportError as exc:
        raise ImportError(
            'OpenAIChatPolicy needs the openai client: pip install "medseg-env[mllm]"'
        ) from exc
    return openai


class OpenAIChatPolicy(TextPolicy):
    """A model behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    Args:
        model: the served model's name.
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (default: ``OPENAI_BASE_URL`` or OpenAI).
        api_key: default ``OPENAI_API_KEY``, else ``"EMPTY"`` (local servers ignore it).
        protocol, temperature, top_p, max_tokens, seed, episode_batch: see ``TextPolicy``.
        timeout: seconds per request.
        max_retries: retries of a failed request, by the OpenAI client (its back-off with
            jitter, or the server's ``Retry-After``).
        backoff: deprecated and ignored (it scaled a back-off of this policy's own, which
            ignored ``Retry-After``); giving it warns.
        concurrency: requests in flight at once in ``act_batch``.
        extra_body: extra request fields the server understands (e.g. ``{"top_k": 1}``).
        on_server_error: ``"raise"`` (default), or ``"empty"`` to answer a request whose server
            error (HTTP 5xx) survived every retry with an empty reply, which the protocol
            records as malformed. For servers that parse tool calls themselves and fail on a
            malformed one (``transformers serve`` answers HTTP 500): the model's text is lost
            then, so only use it where the alternative is a run that cannot finish.
    """

    name = "openai"
    images: ClassVar[ImageFormat] = "data_url"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        protocol: str = "medsam_agent",
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 128,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float | None = None,
        concurrency: int = 8,
        extra_body: dict[str, Any] | None = None,
        on_server_error: str = "raise",
        seed: int | None = None,
        episode_batch: int = 8,
    ) -> None:
        super().__init__(
            protocol,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed,
            episode_batch=episode_batch,
        )
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must name the served model; got {model!r}")
        if not (isinstance(concurrency, int) and concurrency >= 1):
            raise ValueError(f"concurrency must be an int >= 1; got {concurrency!r}")
        if not (isinstance(max_retries, int) and max_retries >= 0):
            raise ValueError(f"max_retries must be an int >= 0; got {max_retries!r}")
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise ValueError(f"timeout must be a number of seconds > 0; got {timeout!r}")
        if on_server_error not in ("raise", "empty"):
            raise ValueError(f"on_server_error must be 'raise' or 'empty'; got {on_server_error!r}")
        if backoff is not None:
            warnings.warn(
                "OpenAIChatPolicy(backoff=...) is ignored: the OpenAI client retries with its own "
                "back-off and jitter, and honours the server's Retry-After",
                DeprecationWarning,
                stacklevel=2,
            )
        self.on_server_error = on_server_error
        self.server_errors = 0  # requests answered empty after a server error
        openai = _import_openai()
        self.model, self.concurrency = model, concurrency
        self.max_retries = max_retries
        self.extra_body = dict(extra_body or {})
        self.client = openai.OpenAI(
            base_url=base_url or os.environ.get("OPENAI_BASE_URL"),
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
            timeout=float(timeout),
            max_retries=max_retries,  # the client's retries honour Retry-After, with jitter
        )
        self._transient = (
            openai.APIConnectionError,  # includes APITimeoutError
            openai.RateLimitError,
            openai.InternalServerError,
        )
        self._server_error = openai.InternalServerError

    def request(self, messages: list[Message], seed: int | None = None) -> dict[str, Any]:
        """The ``chat.completions.create`` arguments for one conversation (PIL images become
        data URLs; data URLs pass as they are)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": convert_images(messages, "data_url"),
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
        }
        if seed is not None:
            body["seed"] = seed
        if self.extra_body:
            body["extra_body"] = self.extra_body
        return body

    def generate(self, conversations: Sequence[list[Message]]) -> list[str]:
        seeds = [None if self.greedy else self.request_seed() for _ in conversations]
        if len(conversations) == 1:
            return [self._complete(conversations[0], seeds[0])]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(self._complete, conversations, seeds))

    def _complete(self, messages: list[Message], seed: int | None) -> str:
        body = self.request(messages, seed)
        try:
            response = self.client.chat.completions.create(**body)
        except self._transient as exc:  # raised once the client's retries are spent
            if self.on_server_error == "empty" and isinstance(exc, self._server_error):
                self.server_errors += 1
                return ""
            raise RuntimeError(
                f"{self.client.base_url}: chat completion for {self.model!r} failed after "
                f"{self.max_retries + 1} tries: {type(exc).__name__}: {exc}"
            ) from exc
        return reply_text(response.choices[0].message)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.model, "base_url": str(self.client.base_url)}


def reply_text(message: Any) -> str:
    """The reply as the model wrote it.

    A server that parses tool calls itself (``vllm serve --enable-auto-tool-choice``) moves
    them out of ``content``; they are put back as Hermes ``<tool_call>`` blocks, as Qwen's
    template writes them (``medseg_env.text.hermes.reply_text``), so the protocol parses what
    the model wrote.
    """
    return hermes_reply_text(message.content, getattr(message, "tool_calls", None))
