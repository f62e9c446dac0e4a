"""The Segmenter interface, the embedding cache, and the LiteMedSAM backend (real weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from medseg_testing import mask_box

from medseg_env.metrics import dice
from medseg_env.segmenters import (
    SAM,
    EmbeddingCache,
    LiteMedSAM,
    Prompts,
    UnsupportedPromptError,
    make_segmenter,
    registered_segmenters,
)


@pytest.fixture(scope="module")
def lung(demo):
    return next(s for s in demo if s.modality == "CT")


def test_litemedsam_loads_offline_and_is_box_only():
    seg = make_segmenter("litemedsam", cache=EmbeddingCache())
    assert "litemedsam" in registered_segmenters()
    assert seg.supports("box") and not seg.supports("point")
    assert seg.model_id.startswith("litemedsam-")


def test_box_prompt_segments_the_target(lung):
    seg = LiteMedSAM()  # the process-wide cache: the image is encoded once per run
    emb = seg.encode(lung.image)
    assert tuple(emb.features.shape) == (1, 256, 64, 64)
    pred = seg.predict(emb, Prompts(box=mask_box(lung.mask)))
    assert pred.mask.shape == lung.mask.shape and pred.mask.dtype == bool
    assert tuple(pred.logits.shape) == (1, 1, 256, 256)
    assert dice(pred.mask, lung.mask) > 0.6
    assert 0.0 < pred.score <= 1.5
    # feeding the logits back is accepted and changes the decoder input
    again = seg.predict(emb, Prompts(box=mask_box(lung.mask)), pred.logits)
    assert again.mask.shape == lung.mask.shape


def test_points_are_refused_by_the_box_only_model(lung):
    seg = LiteMedSAM()  # the process-wide cache: the image is encoded once per run
    emb = seg.encode(lung.image)
    with pytest.raises(UnsupportedPromptError, match="point"):
        seg.predict(emb, Prompts().with_point(10, 10, True))


def test_non_square_images_map_back_to_their_size(lung):
    seg = LiteMedSAM()  # the process-wide cache: the image is encoded once per run
    image, mask = lung.image[:, :200], lung.mask[:, :200]
    if not mask.any():
        pytest.skip("target outside the crop")
    pred = seg.predict(seg.encode(image), Prompts(box=mask_box(mask)))
    assert pred.mask.shape == (256, 200)
    assert dice(pred.mask, mask) > 0.5


def tiny_sam(cache: EmbeddingCache) -> SAM:
    """A small, randomly initialised SAM: the cache logic does not depend on the backend."""
    arch = {"embed_dim": 32, "depth": 1, "num_heads": 2, "global_attn": (0,)}
    return SAM(model_type=arch, image_size=256, allow_random_init=True, cache=cache)


def test_cache_is_lru_bounded_by_bytes_and_keyed_by_content(lung):
    one = 256 * 16 * 16 * 4  # float32 (1, 256, 16, 16) embeddings at 256 px input
    cache = EmbeddingCache(max_bytes=2 * one)
    seg = tiny_sam(cache)
    images = [lung.image, np.ascontiguousarray(lung.image[::-1]), lung.image[:, ::-1].copy()]
    for image in images:
        seg.encode(image)
    assert seg.encoder_calls == 3 and len(cache) == 2 and cache.nbytes == 2 * one
    seg.encode(images[2].copy())  # same content, new array: a hit
    assert seg.encoder_calls == 3
    seg.encode(images[0])  # evicted first: a miss
    assert seg.encoder_calls == 4


def test_disk_cache_survives_a_new_process_and_ignores_damaged_entries(lung, tmp_path):
    seg = tiny_sam(EmbeddingCache(disk_dir=tmp_path))
    first = seg.encode(lung.image)
    files = list(tmp_path.rglob("*.safetensors"))
    assert len(files) == 1 and not list(tmp_path.rglob("*.tmp"))
    fresh = tiny_sam(EmbeddingCache(disk_dir=tmp_path))
    second = fresh.encode(lung.image)
    assert fresh.encoder_calls == 0
    torch.testing.assert_close(first.features, second.features)
    files[0].write_bytes(b"not a safetensors file")
    third = tiny_sam(EmbeddingCache(disk_dir=tmp_path))
    third.encode(lung.image)
    assert third.encoder_calls == 1


def test_encode_rejects_bad_images():
    seg = LiteMedSAM()  # the process-wide cache: the image is encoded once per run
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        seg.encode(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        seg.encode(np.zeros((32, 32, 3), np.float32))


def test_embedding_from_another_model_is_refused(lung):
    seg = LiteMedSAM()  # the process-wide cache: the image is encoded once per run
    emb = seg.encode(lung.image)
    other = LiteMedSAM()
    other._model_id = "something-else"
    with pytest.raises(ValueError, match="not by"):
        other.predict(emb, Prompts(box=mask_box(lung.mask)))
