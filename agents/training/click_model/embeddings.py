"""The frozen image encoder's embeddings of the training images, computed once.

Encoding goes through the segmenter's public ``encode`` with the project's on-disk
``EmbeddingCache`` (``--cache``), so a second stage, or a run that was cut off, re-encodes
nothing. Training keeps fp16 copies in memory: it is decoder passes only.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from medseg_env.segmenters import EmbeddingCache, LiteMedSAM
from medseg_env.segmenters.cache import image_key

from .data import Item


def image_encoder(cache_dir: Path, device: torch.device) -> LiteMedSAM:
    """The original LiteMedSAM, caching its embeddings in ``cache_dir`` only (``max_bytes=0``:
    nothing is kept in memory twice; training holds its own fp16 copies)."""
    return LiteMedSAM(device=device, cache=EmbeddingCache(max_bytes=0, disk_dir=cache_dir))


def is_cached(encoder: LiteMedSAM, item: Item) -> bool:
    """Whether ``item``'s image is in the encoder's cache already."""
    return encoder.cache.get(image_key(item.image, encoder.model_id)) is not None


def encode_all(items: list[Item], encoder: LiteMedSAM) -> torch.Tensor:
    """``(N, 256, 64, 64)`` fp16 embeddings of the items' images, in order."""
    feats = []
    t0 = time.time()
    for i, it in enumerate(items):
        calls = encoder.encoder_calls
        feats.append(encoder.encode(it.image).features.to(torch.float16).contiguous())
        if encoder.encoder_calls > calls:
            print(f"encoded {i + 1}/{len(items)} {it.name} ({time.time() - t0:.0f}s)", flush=True)
    return torch.cat(feats)
