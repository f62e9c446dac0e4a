"""The weight-free ``classical`` backend: determinism, box quality on real demo samples, and the
marker rules (a positive click grows the mask, a negative one removes its region, a careless
click far away changes nothing else, the previous logits are the initial state)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from medseg_testing import mask_box
from scipy import ndimage

from medseg_env.metrics import dice_iou
from medseg_env.segmenters import (
    Classical,
    EmbeddingCache,
    Prompts,
    make_segmenter,
    registered_segmenters,
)

# Demo samples (raw, not letterboxed): CT tumours and microscopy nuclei. On these, a box
# alone measured a Dice of 0.90-0.97 (mean 0.93) with the default watershed.
BOX_SAMPLES = (6, 7, 20, 30, 40, 50)
NUCLEUS = 81  # a 128x128 microscopy crop whose target nucleus has neighbours


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return dice_iou(a, b)[0]


def deepest(region: np.ndarray) -> tuple[float, float]:
    """``(x, y)`` pixel centre of the point of ``region`` farthest from its outside."""
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return c + 0.5, r + 0.5


def logits_of(seg: Classical, mask: np.ndarray) -> torch.Tensor:
    """A mask as logits for ``previous_logits`` (+1 inside, -1 outside, on the base square)."""
    x = torch.from_numpy(np.where(mask, 1.0, -1.0).astype(np.float32))[None, None]
    return torch.nn.functional.interpolate(x, seg.mask_input_shape, mode="bilinear")


@pytest.fixture(scope="module")
def seg() -> Classical:
    return Classical(cache=EmbeddingCache())


@pytest.fixture(scope="module")
def nucleus(demo):
    return demo[NUCLEUS]


def test_registered_and_declared():
    assert "classical" in registered_segmenters()
    built = make_segmenter("classical", cache=EmbeddingCache())
    assert isinstance(built, Classical)
    assert built.prompt_kinds == {"box", "point"}
    assert built.supports("box") and built.supports("point")
    assert built.model_id == "classical-watershed-64-v1"
    assert Classical(algorithm="grabcut", work_size=64).model_id == "classical-grabcut-64-v1"
    assert built.mask_input_shape == (256, 256)
    with pytest.raises(ValueError, match="algorithm"):
        Classical(algorithm="snakes")  # type: ignore[arg-type]


def test_shapes_dtypes_and_empty_prompts(seg, nucleus):
    emb = seg.encode(nucleus.image)
    assert emb.features.shape == (1, 4, 256, 256) and emb.features.dtype == torch.float32
    assert emb.image_size == nucleus.mask.shape == (128, 128)
    pred = seg.predict(emb, Prompts(box=mask_box(nucleus.mask)))
    assert pred.mask.shape == (128, 128) and pred.mask.dtype == bool
    assert pred.logits.shape == (1, 1, 256, 256) and pred.logits.dtype == torch.float32
    assert 0.0 <= pred.score <= 1.0
    # the logits are a signed distance: their sign is the mask (read back at the image size)
    assert (pred.logits > 0).any() and (pred.logits < 0).any()
    assert pred.logits.abs().max() <= seg.logit_clip
    # nothing that can be foreground: an empty mask, not an error
    for prompts in (Prompts(), Prompts().with_point(10.5, 10.5, False)):
        empty = seg.predict(emb, prompts)
        assert not empty.mask.any() and empty.score == 0.0
    other = Classical(algorithm="grabcut", cache=EmbeddingCache())
    with pytest.raises(ValueError, match="made by"):
        other.predict(emb, Prompts(box=mask_box(nucleus.mask)))


@pytest.mark.parametrize("algorithm", ["watershed", "grabcut", "random_walker"])
def test_deterministic_and_cache_exact(algorithm, nucleus):
    seg = Classical(algorithm=algorithm, cache=EmbeddingCache())
    emb = seg.encode(nucleus.image)
    prompts = Prompts(box=mask_box(nucleus.mask)).with_point(*deepest(nucleus.mask), True)
    first = seg.predict(emb, prompts)
    refined = seg.predict(emb, prompts, first.logits)
    for _ in range(2):
        again = seg.predict(seg._encode(nucleus.image), prompts)  # a fresh embedding
        torch.testing.assert_close(again.logits, first.logits, rtol=0, atol=0)
        np.testing.assert_array_equal(again.mask, first.mask)
        assert again.score == first.score
        np.testing.assert_array_equal(seg.predict(emb, prompts, first.logits).mask, refined.mask)
    assert dice(first.mask, nucleus.mask) > 0.7


def test_box_alone_on_real_samples(seg, demo):
    scores = []
    for index in BOX_SAMPLES:
        sample = demo[index]
        pred = seg.predict(seg.encode(sample.image), Prompts(box=mask_box(sample.mask)))
        scores.append(dice(pred.mask, sample.mask))
    assert min(scores) > 0.75, scores
    assert np.mean(scores) > 0.85, scores


def test_positive_click_grows_an_under_segmented_target(seg, nucleus):
    emb = seg.encode(nucleus.image)
    gt = nucleus.mask
    cols = np.nonzero(gt)[1]
    half = gt & (np.arange(gt.shape[1])[None, :] < np.median(cols))  # the left half only
    first_click = deepest(half)
    prompts = Prompts().with_point(*first_click, True)
    before = dice(half, gt)
    grown = seg.predict(emb, prompts.with_point(*deepest(gt & ~half), True), logits_of(seg, half))
    assert dice(grown.mask, gt) > before + 0.15
    assert dice(grown.mask, gt) > 0.8


def test_negative_click_removes_its_region(seg, nucleus):
    emb = seg.encode(nucleus.image)
    gt = nucleus.mask
    box = Prompts(box=mask_box(gt))
    first = seg.predict(emb, box)
    # a false-positive blob beside the nucleus, in the previous mask
    rows, cols = np.nonzero(gt)
    yy, xx = np.mgrid[: gt.shape[0], : gt.shape[1]]
    blob = ((yy - rows.mean()) ** 2 + (xx - (cols.max() + 6)) ** 2 <= 5**2) & ~gt
    assert blob.sum() > 30
    previous = first.mask | blob
    # the click on the blob, outside the box: clicks count outside the box too
    x, y = deepest(blob)
    pred = seg.predict(emb, Prompts(box=mask_box(gt | blob)).with_point(x, y, False),
                       logits_of(seg, previous))  # fmt: skip
    assert not pred.mask[int(y), int(x)]
    assert (pred.mask & blob).sum() < 0.2 * blob.sum()
    assert dice(pred.mask, gt) > dice(previous, gt) + 0.05


@pytest.mark.parametrize("with_box", [True, False])
def test_far_click_does_not_collapse_the_mask(seg, nucleus, with_box):
    emb = seg.encode(nucleus.image)
    gt = nucleus.mask
    prompts = Prompts(box=mask_box(gt)) if with_box else Prompts().with_point(*deepest(gt), True)
    first = seg.predict(emb, prompts)
    assert dice(first.mask, gt) > 0.8
    # careless clicks in the far background, of either sign
    rows, cols = np.nonzero(gt)
    far_x = 5.5 if cols.mean() > 64 else 122.5
    far_y = 5.5 if rows.mean() > 64 else 122.5
    for positive in (True, False):
        after = seg.predict(emb, prompts.with_point(far_x, far_y, positive), first.logits)
        # the click is honoured, and the object is kept: it only changes its own surroundings
        assert after.mask[int(far_y), int(far_x)] == positive
        assert (after.mask & gt).sum() >= 0.85 * (first.mask & gt).sum()
        if with_box or not positive:
            # a box bounds the object (a positive click outside it adds its own neighbourhood)
            assert dice(after.mask, gt) > dice(first.mask, gt) - 0.1


def test_previous_logits_are_the_initial_state(seg, nucleus):
    emb = seg.encode(nucleus.image)
    gt = nucleus.mask
    prompts = Prompts(box=mask_box(gt))
    first = seg.predict(emb, prompts)
    # fed back with the same prompts, a mask stays (about) what it was
    kept = seg.predict(emb, prompts, first.logits)
    assert dice(kept.mask, first.mask) > 0.95
    # another previous mask gives another result; off, previous logits are ignored
    inverted = seg.predict(emb, prompts, -first.logits)
    assert not np.array_equal(inverted.mask, kept.mask)
    ignoring = Classical(use_previous=False, cache=EmbeddingCache())
    emb2 = ignoring.encode(nucleus.image)
    np.testing.assert_array_equal(
        ignoring.predict(emb2, prompts, -first.logits).mask, ignoring.predict(emb2, prompts).mask
    )
    # logits of another size (a SAM-style backend's, say) are resized, not refused
    small = torch.nn.functional.interpolate(first.logits, (64, 64), mode="bilinear")
    assert dice(seg.predict(emb, prompts, small).mask, first.mask) > 0.9
