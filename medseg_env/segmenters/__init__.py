"""Segmentation backends: the ``Segmenter`` interface, the embedding cache and the registry."""

from .base import (
    Embedding,
    Prediction,
    Prompts,
    Segmenter,
    UnsupportedPromptError,
    make_segmenter,
    register_segmenter,
    registered_segmenters,
)
from .cache import EmbeddingCache, default_cache
from .litemedsam import LiteMedSAM

register_segmenter("litemedsam", LiteMedSAM)

__all__ = [
    "Embedding",
    "EmbeddingCache",
    "LiteMedSAM",
    "Prediction",
    "Prompts",
    "Segmenter",
    "UnsupportedPromptError",
    "default_cache",
    "make_segmenter",
    "register_segmenter",
    "registered_segmenters",
]
