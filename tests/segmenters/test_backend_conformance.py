"""One conformance suite shared by every registered segmenter backend.

The backends come from the segmenter registry, so a new backend is covered by registering it
(plus, if it cannot be built without arguments here, its test options in ``TEST_OPTIONS``).
LiteMedSAM and its click-tuned variant run with their real weights. SAM and MedSAM have no
weights we may ship, so they run as real, randomly initialised models of their architecture (a
small ViT encoder at 256 px); their checkpoint path is tested by saving and reloading such a
model.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from medseg_testing import mask_box

from medseg_env.segmenters import (
    SAM,
    SEGMENTERS,
    EmbeddingCache,
    MedSAM,
    Prompts,
    Segmenter,
    UnsupportedPromptError,
    make_segmenter,
    registered_segmenters,
)
from medseg_env.segmenters.onnx_cache import ONNX_DIR_ENV
from medseg_env.segmenters.onnx_decoder import LOGIT_ATOL

TINY = {"embed_dim": 64, "depth": 2, "num_heads": 2, "global_attn": (1,)}
# Options that let a backend build offline here; backends that need none are absent.
TEST_OPTIONS = {
    "sam": {"model_type": TINY, "image_size": 256, "allow_random_init": True},
    "medsam": {"model_type": TINY, "image_size": 256, "allow_random_init": True},
    # SAM 2.1 hiera-tiny with random weights, at a 128-pixel input to stay fast on CPUs
    "sam2": {"image_size": 128, "allow_random_init": True},
    "medsam2": {"image_size": 128, "allow_random_init": True},
}
BACKENDS = registered_segmenters()


def build(name: str, **kw) -> Segmenter:
    return make_segmenter(name, cache=EmbeddingCache(), **{**TEST_OPTIONS.get(name, {}), **kw})


def test_every_shipped_backend_is_in_the_suite():
    assert {"litemedsam", "litemedsam_clicks", "sam", "medsam", "classical"} <= set(BACKENDS)
    assert set(TEST_OPTIONS) <= set(BACKENDS)


@pytest.fixture(scope="module")
def backends() -> dict[str, Segmenter]:
    """One instance per backend for the module, so each image is encoded once."""
    return {name: build(name) for name in BACKENDS}


@pytest.fixture(scope="module")
def sample(demo):
    return next(s for s in demo if s.modality == "MR")


@pytest.mark.parametrize("name", BACKENDS)
def test_encode_predict_contract(name, sample, backends):
    seg = backends[name]
    calls = seg.encoder_calls
    emb = seg.encode(sample.image)
    assert emb.image_size == sample.mask.shape and emb.model_id == seg.model_id
    prompts = Prompts(box=mask_box(sample.mask)) if seg.supports("box") else Prompts()
    if seg.supports("point"):
        r, c = np.argwhere(sample.mask)[0]
        prompts = prompts.with_point(c + 0.5, r + 0.5, True)
    first = seg.predict(emb, prompts)
    assert first.mask.shape == sample.mask.shape and first.mask.dtype == bool
    # (1, 1, h, w) float logits at the size the backend declares, fed back next turn
    assert seg.mask_input_shape is not None
    assert tuple(first.logits.shape) == (1, 1, *seg.mask_input_shape)
    assert first.logits.dtype == torch.float32 and np.isfinite(first.score)
    # deterministic, and the previous logits are accepted as mask input
    np.testing.assert_array_equal(seg.predict(emb, prompts).mask, first.mask)
    second = seg.predict(emb, prompts, first.logits)
    assert second.mask.shape == sample.mask.shape
    # the second encode of the same content is served by the cache
    seg.encode(sample.image.copy())
    assert seg.encoder_calls == calls + 1


def _prompts(seg: Segmenter, mask: np.ndarray) -> Prompts:
    """The ground-truth box where the backend takes boxes, plus a click on the target."""
    prompts = Prompts(box=mask_box(mask)) if seg.supports("box") else Prompts()
    if seg.supports("point"):
        r, c = np.argwhere(mask)[len(np.argwhere(mask)) // 2]
        prompts = prompts.with_point(c + 0.5, r + 0.5, True)
    return prompts


@pytest.mark.parametrize("name", BACKENDS)
def test_cached_embeddings_give_identical_outputs(name, sample, backends, tmp_path):
    """A fresh embedding, the memory cache's and the disk cache's give the same prediction."""
    seg = backends[name]
    prompts = _prompts(seg, sample.mask)
    fresh = seg.predict(seg._encode(sample.image), prompts)
    kept = seg.cache
    try:
        seg.cache = EmbeddingCache(disk_dir=tmp_path)
        memory = seg.predict(seg.encode(sample.image), prompts)
        seg.cache = EmbeddingCache(disk_dir=tmp_path)  # a new process: read back from disk
        calls = seg.encoder_calls
        disk = seg.predict(seg.encode(sample.image), prompts)
        assert seg.encoder_calls == calls and seg.cache.hits == 1
    finally:
        seg.cache = kept
    for other in (memory, disk):
        torch.testing.assert_close(other.logits, fresh.logits, rtol=0, atol=0)
        np.testing.assert_array_equal(other.mask, fresh.mask)
        assert other.score == fresh.score


@pytest.mark.parametrize("name", BACKENDS)
def test_previous_logits_are_honoured(name, sample, backends):
    """Logits fed back are taken as the previous mask: another previous mask, another result."""
    seg = backends[name]
    emb = seg.encode(sample.image)
    prompts = _prompts(seg, sample.mask)
    first = seg.predict(emb, prompts)
    again = seg.predict(emb, prompts, first.logits)
    assert again.mask.shape == sample.mask.shape and again.mask.dtype == bool
    assert again.logits.shape == first.logits.shape
    inverted = seg.predict(emb, prompts, -first.logits)
    assert not torch.equal(inverted.logits, again.logits)


@pytest.mark.parametrize("name", BACKENDS)
def test_declared_prompt_kinds_are_enforced(name, sample, backends):
    seg = backends[name]
    emb = seg.encode(sample.image)
    assert seg.prompt_kinds and seg.prompt_kinds <= {"box", "point"}
    for kind in ("box", "point"):
        assert seg.supports(kind) == (kind in seg.prompt_kinds)  # the env's action mask
    for kind, prompts in (
        ("point", Prompts().with_point(5.0, 5.0, True)),
        ("box", Prompts(box=np.array([2, 2, 30, 30], np.float32))),
    ):
        if seg.supports(kind):
            seg.predict(emb, prompts)
        else:
            with pytest.raises(UnsupportedPromptError, match=kind):
                seg.predict(emb, prompts)


def takes_decoder(name: str) -> bool:
    """A SAM-family backend: one that takes the ``decoder`` option."""
    return "decoder" in inspect.signature(SEGMENTERS.get(name)).parameters


@pytest.mark.parametrize("name", [n for n in BACKENDS if takes_decoder(n)])
def test_onnx_and_eager_decoders_agree(name, sample, backends, tmp_path, monkeypatch):
    """Every SAM-family backend runs with either decoder (the component), with the same
    masks: SAM and MedSAM too, as random-initialised models of their architecture."""
    monkeypatch.setenv(ONNX_DIR_ENV, str(tmp_path))
    seg = backends[name]
    other = "eager" if seg.runtime["decoder"] == "onnx" else "onnx"
    twin = make_segmenter(name, cache=seg.cache, decoder=other, **TEST_OPTIONS.get(name, {}))
    assert twin.runtime["decoder"] == other and twin.model_id == seg.model_id
    emb = seg.encode(sample.image)
    box = Prompts(box=mask_box(sample.mask))
    r, c = np.argwhere(sample.mask)[len(np.argwhere(sample.mask)) // 2]
    click = Prompts().with_point(c + 0.5, r + 0.5, True)
    cases = [(box, None), (box, "previous")]
    if seg.supports("point"):
        both = Prompts(click.points, click.labels, box.box)
        cases += [(click, None), (click, "previous"), (both, "previous")]
    previous = seg.predict(emb, box).logits
    for prompts, logits in cases:
        fed = previous if logits else None
        a, b = seg.predict(emb, prompts, fed), twin.predict(emb, prompts, fed)
        np.testing.assert_array_equal(a.mask, b.mask)
        torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=LOGIT_ATOL)
        assert abs(a.score - b.score) <= LOGIT_ATOL


def test_expected_prompt_kinds(backends):
    assert backends["litemedsam"].prompt_kinds == {"box"}
    assert backends["litemedsam_clicks"].prompt_kinds == {"box", "point"}
    assert backends["sam"].prompt_kinds == {"box", "point"}
    assert backends["medsam"].prompt_kinds == {"box"}
    assert backends["classical"].prompt_kinds == {"box", "point"}


def test_sam_checkpoint_round_trip(tmp_path, sample, backends):
    random_model = backends["sam"]
    state = {
        **{f"image_encoder.{k}": v for k, v in random_model.image_encoder.state_dict().items()},
        **{f"prompt_encoder.{k}": v for k, v in random_model.prompt_encoder.state_dict().items()},
        **{f"mask_decoder.{k}": v for k, v in random_model.mask_decoder.state_dict().items()},
    }
    path = tmp_path / "tiny_sam.pth"
    torch.save({"model": state}, path)
    loaded = SAM(path, model_type=TINY, image_size=256, cache=EmbeddingCache())
    prompts = Prompts(box=mask_box(sample.mask))
    a = random_model.predict(random_model.encode(sample.image), prompts)
    b = loaded.predict(loaded.encode(sample.image), prompts)
    torch.testing.assert_close(a.logits, b.logits)
    assert loaded.model_id != random_model.model_id
    # the other random seed gives other weights
    other = build("sam", seed=4)
    assert other.model_id != random_model.model_id
    c = other.predict(other.encode(sample.image), prompts)
    assert not torch.allclose(a.logits, c.logits)


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="needs checkpoint=PATH"):
        SAM()
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        SAM(tmp_path / "missing.pth", model_type=TINY, image_size=256)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupt.pth"):
        MedSAM(corrupt, model_type=TINY, image_size=256)
    wrong = tmp_path / "wrong.pth"
    torch.save({"mask_decoder.foo": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="wrong.pth.*does not fit"):
        SAM(wrong, model_type=TINY, image_size=256)
    with pytest.raises(ValueError, match="unknown SAM model_type"):
        SAM(model_type="vit_x", allow_random_init=True)
