"""Segmentation backends: the ``Segmenter`` interface, the embedding cache, the registry, and
the decoders (eager or ONNX) that SAM-family backends take."""

from .base import SEGMENTERS, Segmenter, make_segmenter, register_segmenter, registered_segmenters
from .cache import EmbeddingCache, default_cache
from .classical import Classical
from .decoders import (
    DECODERS,
    Decoder,
    DecoderInputs,
    EagerDecoder,
    make_decoder,
    register_decoder,
)
from .litemedsam import LiteMedSAM
from .litemedsam_clicks import LiteMedSAMClicks
from .onnx_decoder import OnnxDecoder
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

register_decoder("eager", EagerDecoder)
register_decoder("onnx", OnnxDecoder)
register_segmenter("litemedsam", LiteMedSAM)
register_segmenter("litemedsam_clicks", LiteMedSAMClicks)
register_segmenter("sam", SAM)
register_segmenter("medsam", MedSAM)
register_segmenter("sam2", SAM2)
register_segmenter("medsam2", MedSAM2)
register_segmenter("classical", Classical)

__all__ = [
    "DECODERS",
    "Classical",
    "Decoder",
    "DecoderInputs",
    "EagerDecoder",
    "Embedding",
    "EmbeddingCache",
    "LiteMedSAM",
    "LiteMedSAMClicks",
    "MedSAM",
    "OnnxDecoder",
    "Prediction",
    "PredictRequest",
    "PromptKind",
    "Prompts",
    "SAM",
    "SEGMENTERS",
    "Segmenter",
    "UnsupportedPromptError",
    "default_cache",
    "make_decoder",
    "make_segmenter",
    "register_decoder",
    "register_segmenter",
    "registered_segmenters",
    "shared_segmenter",
]
