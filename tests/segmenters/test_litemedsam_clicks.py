"""LiteMedSAM-clicks: the shipped fine-tuned weights, their checksum, and real click behaviour."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from scipy import ndimage

from medseg_agents.clickers import next_click
from medseg_env.metrics import dice
from medseg_env.segmenters import EmbeddingCache, LiteMedSAMClicks, Prompts, make_segmenter
from medseg_env.segmenters.litemedsam import litemedsam_checkpoint_sha256
from medseg_env.segmenters.litemedsam_clicks import (
    WEIGHTS_SHA256,
    WeightsChecksumError,
    default_weights_path,
    verify_weights,
)

ENCODER_SHA256 = litemedsam_checkpoint_sha256()


def deepest(mask: np.ndarray) -> tuple[int, int]:
    """The pixel of ``mask`` farthest from its border (``(row, col)``)."""
    dt = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dt)), dt.shape)
    return int(r), int(c)


@pytest.fixture(scope="module")
def seg() -> LiteMedSAMClicks:
    return make_segmenter("litemedsam_clicks", cache=EmbeddingCache())


@pytest.fixture(scope="module")
def lung(demo):
    return next(s for s in demo if s.modality == "CT")


def test_shipped_weights_match_the_recorded_checksum(seg):
    assert verify_weights(default_weights_path()) == WEIGHTS_SHA256
    assert seg.supports("box") and seg.supports("point")
    # the click weights and the encoder checkpoint that makes the embeddings
    assert seg.model_id == f"litemedsam_clicks-{WEIGHTS_SHA256[:12]}-{ENCODER_SHA256[:12]}"
    assert not seg.multimask_single_click


def test_positive_click_inside_target_gives_a_mask_containing_it(seg, lung):
    row, col = deepest(lung.mask)
    emb = seg.encode(lung.image)
    out = seg.predict(emb, Prompts().with_point(col + 0.5, row + 0.5, True))
    assert out.mask[row, col]
    assert dice(out.mask, lung.mask) > 0.5


def test_negative_click_removes_a_region(seg, lung):
    # The RITM user: a positive click, then a negative click on the over-segmentation.
    emb = seg.encode(lung.image)
    row, col, positive = next_click(np.zeros_like(lung.mask), lung.mask)
    assert positive
    prompts = Prompts().with_point(col + 0.5, row + 0.5, True)
    first = seg.predict(emb, prompts)
    row, col, positive = next_click(first.mask, lung.mask)
    assert not positive and first.mask[row, col]  # the click falls on a false positive
    second = seg.predict(emb, prompts.with_point(col + 0.5, row + 0.5, False), first.logits)
    # The region shrinks (the clicked boundary pixel itself may stay: see MODEL_CARD.md).
    assert second.mask.sum() < first.mask.sum()
    assert dice(second.mask, lung.mask) > dice(first.mask, lung.mask)


def test_checksum_mismatch_is_a_clear_error(tmp_path):
    bad = tmp_path / "litemedsam_clicks.safetensors"
    shutil.copyfile(default_weights_path(), bad)
    with open(bad, "r+b") as fh:  # flip one byte at the end of the tensor data
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(WeightsChecksumError, match="checksum mismatch.*expected " + WEIGHTS_SHA256):
        LiteMedSAMClicks(weights=bad, cache=EmbeddingCache())
