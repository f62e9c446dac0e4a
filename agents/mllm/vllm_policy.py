"""``VLLMPolicy``: offline vLLM (``vllm.LLM.chat``), one generate call per batch of episodes.

The engine is built on first use, so the request building (``build_requests``,
``sampling_kwargs``, ``engine_kwargs``) is usable and tested where vLLM is not installed (vLLM
does not install on CPU-only machines). ``limit_mm_per_prompt`` is sized to the most images a
conversation can hold under the protocol's history mode.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, ClassVar

from medseg_env.text import get_protocol
from medseg_env.text.messages import ImageFormat, Message, convert_images

from .base import TextPolicy


def images_per_prompt(protocol: str, budget: int | None = None) -> int:
    """The most images one request holds: every kept turn's image plus the current one.

    ``budget``: the episode's turn budget when it differs from the protocol's ``max_turns``.
    """
    proto = get_protocol(protocol)
    if proto.history_turns is not None:  # a window: whatever the budget
        return proto.history_turns + 1
    return budget if budget is not None else proto.max_turns


class VLLMPolicy(TextPolicy):
    """A local model run by vLLM's offline engine.

    Args:
        model: a Hugging Face model folder or hub name (vLLM's own rules for downloads apply).
        protocol, temperature, top_p, max_tokens, seed, episode_batch: see ``TextPolicy``.
        max_images: images per prompt (default: ``images_per_prompt(protocol, budget)``).
        budget: the turn budget of the episodes (sizes ``max_images``).
        engine: extra ``vllm.LLM`` keyword arguments (``tensor_parallel_size``,
            ``gpu_memory_utilization``, ``max_model_len``...).
    """

    name = "vllm"
    images: ClassVar[ImageFormat] = "data_url"

    def __init__(
        self,
        model: str,
        protocol: str = "medsam_agent",
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 128,
        max_images: int | None = None,
        budget: int | None = None,
        engine: dict[str, Any] | None = None,
        seed: int | None = None,
        episode_batch: int = 64,
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
            raise ValueError(f"model must be a model folder or name; got {model!r}")
        limit = max_images if max_images is not None else images_per_prompt(protocol, budget)
        if not (isinstance(limit, int) and limit >= 1):
            raise ValueError(f"max_images must be an int >= 1; got {max_images!r}")
        self.model, self.max_images = model, limit
        self.engine = dict(engine or {})
        self._llm: Any = None

    def engine_kwargs(self) -> dict[str, Any]:
        """The ``vllm.LLM(...)`` arguments."""
        return {
            "model": self.model,
            "limit_mm_per_prompt": {"image": self.max_images},
            **self.engine,
        }

    def sampling_kwargs(self) -> dict[str, Any]:
        """The ``vllm.SamplingParams(...)`` arguments of one batch."""
        kwargs: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
        }
        if not self.greedy:
            kwargs["seed"] = self.request_seed()
        return kwargs

    def build_requests(self, conversations: Sequence[list[Message]]) -> list[list[Message]]:
        """The conversations as ``LLM.chat`` takes them: images as data URLs, counts checked."""
        requests = []
        for i, conversation in enumerate(conversations):
            messages = convert_images(conversation, "data_url")
            count = sum(
                1
                for m in messages
                if isinstance(m.get("content"), list)
                for p in m["content"]
                if p.get("type") == "image_url"
            )
            if count > self.max_images:
                raise ValueError(
                    f"conversation {i} holds {count} images; limit_mm_per_prompt allows "
                    f"{self.max_images} (pass max_images= or budget=)"
                )
            requests.append(messages)
        return requests

    def generate(self, conversations: Sequence[list[Message]]) -> list[str]:
        requests = self.build_requests(conversations)
        try:  # an optional dependency, without type information here
            vllm: Any = importlib.import_module("vllm")
        except ImportError as exc:
            raise ImportError('VLLMPolicy needs vLLM: pip install "medseg-env[vllm]"') from exc
        if self._llm is None:
            self._llm = vllm.LLM(**self.engine_kwargs())
        params = vllm.SamplingParams(**self.sampling_kwargs())
        outputs = self._llm.chat(requests, params, use_tqdm=False)
        return [output.outputs[0].text for output in outputs]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.model, "max_images": self.max_images}
