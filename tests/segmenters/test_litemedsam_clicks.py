"""LiteMedSAM-clicks: the shipped fine-tuned weights, their checksum, and real click behaviour."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from scipy import ndimage

from medseg_env.metrics import dice
from medseg_env.segmenters import EmbeddingCache, LiteMedSAMClicks, Prompts, make_segmenter
from medseg_env.segmenters.litemedsam_clicks import (
    WEIGHTS_SHA256,
    WeightsChecksumError,
    default_weights_path,
    verify_weights,
)


def deepest(mask: np.ndarray) -> tuple[int, int]:
    """The pixel of ``mask`` farthest from its border (``(row, col)``)."""
    dt = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dt)), dt.shape)
    return int(r), int(c)


@pytest.fixture(scope="module")
def seg() -> LiteMedSAMClicks:
    return make_segmenter("litemedsam_clicks", cache=EmbeddingCache())


@pytest.fixture(scope="module")
def nuclei(demo):
    """Two large nuclei of one demo tile: ``(image, first mask, second mask)``."""
    samples = [s for s in demo if s.modality == "microscopy"]
    tile = samples[0].source_id, samples[0].image
    same = [s for s in samples if s.image is tile[1] or np.array_equal(s.image, tile[1])]
    big = sorted(same, key=lambda s: -int(s.mask.sum()))[:2]
    return tile[1], big[0].mask, big[1].mask


def test_shipped_weights_match_the_recorded_checksum(seg):
    assert verify_weights(default_weights_path()) == WEIGHTS_SHA256
    assert seg.supports("box") and seg.supports("point")
    assert seg.model_id == f"litemedsam_clicks-{WEIGHTS_SHA256[:12]}"
    assert not seg.multimask_single_click


def test_positive_click_inside_target_gives_a_mask_containing_it(seg, demo):
    sample = next(s for s in demo if s.modality == "CT")
    row, col = deepest(sample.mask)
    emb = seg.encode(sample.image)
    out = seg.predict(emb, Prompts().with_point(col + 0.5, row + 0.5, True))
    assert out.mask[row, col]
    assert dice(out.mask, sample.mask) > 0.5


def test_negative_click_removes_a_region(seg, nuclei):
    image, first, second = nuclei
    emb = seg.encode(image)
    (r1, c1), (r2, c2) = deepest(first), deepest(second)
    both = Prompts().with_point(c1 + 0.5, r1 + 0.5, True).with_point(c2 + 0.5, r2 + 0.5, True)
    out = seg.predict(emb, both)
    assert out.mask[r1, c1] and out.mask[r2, c2]
    # The second nucleus turned negative, with the previous logits fed back: it goes away.
    minus = Prompts(both.points, np.array([1, 0]), None)
    out2 = seg.predict(emb, minus, out.logits)
    assert out2.mask[r1, c1] and not out2.mask[r2, c2]
    assert out2.mask.sum() < out.mask.sum()


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
