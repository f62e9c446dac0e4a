"""Segmentation backends: the ``Segmenter`` interface, the embedding cache and the registry."""

from .base import SEGMENTERS, Segmenter, make_segmenter, register_segmenter, registered_segmenters
from .cache import EmbeddingCache, default_cache
from .classical import Classical
from .litemedsam import LiteMedSAM
from .litemedsam_clicks import LiteMedSAMClicks
from .sam import SAM, MedSAM
from .sam2_family import SAM2, MedSAM2  # sam2 itself is imported only when built
from .shared import shared_segmenter
from .types import (
    Embedding,
    Prediction,
    PredictRequest,
    PromptKind,
    Prompts,
    UnsupportedPromptError,
)

register_segmenter("litemedsam", LiteMedSAM)
register_segmenter("litemedsam_clicks", LiteMedSAMClicks)
register_segmenter("sam", SAM)
register_segmenter("medsam", MedSAM)
register_segmenter("sam2", SAM2)
register_segmenter("medsam2", MedSAM2)
register_segmenter("classical", Classical)

__all__ = [
    "Classical",
    "Embedding",
    "EmbeddingCache",
    "LiteMedSAM",
    "LiteMedSAMClicks",
    "MedSAM",
    "Prediction",
    "PredictRequest",
    "PromptKind",
    "Prompts",
    "SAM",
    "SEGMENTERS",
    "Segmenter",
    "UnsupportedPromptError",
    "default_cache",
    "make_segmenter",
    "register_segmenter",
    "registered_segmenters",
    "shared_segmenter",
]
