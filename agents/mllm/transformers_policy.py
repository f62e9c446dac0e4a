"""``TransformersPolicy``: a local Hugging Face VLM (``AutoModelForImageTextToText``).

The processor's own chat template renders the messages (PIL images in the content parts), the
batch is left-padded, and ``generate`` answers every episode of the batch in one call.
Weights load from safetensors only, from a local folder by default (no download).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from medseg_env.text.messages import ImageFormat, Message, convert_images

from .base import TextPolicy


class TransformersPolicy(TextPolicy):
    """A local VLM run with Hugging Face transformers.

    Args:
        model: a model folder (or a hub name with ``local_files_only=False``).
        protocol, temperature, top_p, max_tokens, seed, episode_batch: see ``TextPolicy``.
        device: ``"cpu"``, ``"cuda"``...; dtype: ``"auto"`` or a torch dtype name.
        batch_size: conversations per ``generate`` call.
        local_files_only: no download unless this is False.
    """

    name = "transformers"
    images: ClassVar[ImageFormat] = "pil"

    def __init__(
        self,
        model: str,
        protocol: str = "medsam_agent",
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 128,
        device: str = "cpu",
        dtype: str = "auto",
        batch_size: int = 8,
        local_files_only: bool = True,
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
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
        try:
            import torch
            from transformers import AutoModelForImageTextToText, AutoProcessor
        except ImportError as exc:
            raise ImportError(
                'TransformersPolicy needs transformers: pip install "medseg-env[mllm]"'
            ) from exc
        self.model_path, self.device, self.batch_size = str(model), device, batch_size
        self.processor = AutoProcessor.from_pretrained(
            self.model_path, local_files_only=local_files_only
        )
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        loaded: Any = AutoModelForImageTextToText.from_pretrained(
            self.model_path,
            dtype=torch_dtype,
            local_files_only=local_files_only,
            use_safetensors=True,
        )
        self.model = loaded.to(device).eval()
        self._torch = torch

    def generate(self, conversations: Sequence[list[Message]]) -> list[str]:
        replies: list[str] = []
        for start in range(0, len(conversations), self.batch_size):
            replies += self._generate(conversations[start : start + self.batch_size])
        return replies

    def _generate(self, conversations: Sequence[list[Message]]) -> list[str]:
        torch = self._torch
        batch = [convert_images(c, "pil") for c in conversations]
        self.processor.tokenizer.padding_side = "left"
        inputs = self.processor.apply_chat_template(
            batch,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True},
        ).to(self.device)
        sampling: dict[str, Any] = {"do_sample": not self.greedy}
        if not self.greedy:
            sampling.update(temperature=self.temperature, top_p=self.top_p)
            torch.manual_seed(self.request_seed())
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.max_tokens,
                pad_token_id=self.processor.tokenizer.pad_token_id,
                **sampling,
            )
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.model_path, "device": self.device}
