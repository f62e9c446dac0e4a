"""MLLM policies.

- ``OpenAIChatPolicy`` (``openai``): any OpenAI-compatible server;
- ``VLLMPolicy`` (``vllm``): vLLM's offline engine, one generate call per batch;
- ``TransformersPolicy`` (``transformers``): a local Hugging Face VLM.

All are ``TextPolicy``: they answer ``MedSeg-Text-v0``'s messages with the model's reply.
Model libraries are imported only when a policy is built. The tiny offline test model lives in
``medseg_agents.testing.tiny_qwen``, which the package does not import.
"""

from .base import TextPolicy
from .openai_chat import OpenAIChatPolicy
from .transformers_policy import TransformersPolicy
from .vllm_policy import VLLMPolicy, images_per_prompt

__all__ = [
    "OpenAIChatPolicy",
    "TextPolicy",
    "TransformersPolicy",
    "VLLMPolicy",
    "images_per_prompt",
]
