"""The fast decoder path (``decoder="onnx"``): equivalence with eager PyTorch on the bundled data
with the real weights, the graph cache, and the env end to end. No speed assertions: see
``python -m medseg_env.segmenters.fast_decoder --bench``."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from medseg_env import MedSegEnv  # noqa: E402
from medseg_env import actions as A  # noqa: E402
from medseg_env.data import Dataset  # noqa: E402
from medseg_env.files import current_umask  # noqa: E402
from medseg_env.metrics import dice  # noqa: E402
from medseg_env.registry import parse_spec  # noqa: E402
from medseg_env.segmenters import (  # noqa: E402
    Embedding,
    EmbeddingCache,
    PredictRequest,
    Prompts,
    make_segmenter,
)
from medseg_env.segmenters import fast_decoder as fd  # noqa: E402

MIN_DICE = 0.999


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def pair(onnx_dir):
    """Eager and ONNX ``litemedsam_clicks`` sharing one embedding cache (the same model_id)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(fd.ONNX_DIR_ENV, str(onnx_dir))
        eager = make_segmenter("litemedsam_clicks", cache=EmbeddingCache())
        fast = make_segmenter("litemedsam_clicks", cache=eager.cache, decoder="onnx")
    assert fast.model_id == eager.model_id and fast.decoder == "onnx"
    return eager, fast


@pytest.fixture(scope="module")
def samples(demo):
    """A CT, an MR and a microscopy sample (different sizes: 256 and 128 pixels)."""
    return [next(s for s in demo if s.modality == m) for m in ("CT", "MR", "microscopy")]


def prompt_cases(sample, first_logits, every: bool = True):
    """(label, prompts, previous logits, multimask): every structure the env asks for."""
    rows, cols = np.nonzero(sample.mask)
    box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)
    inside = Prompts().with_point(float(cols.mean()) + 0.5, float(rows.mean()) + 0.5, True)
    three = inside.with_point(float(cols.min()), float(rows.min()), False).with_point(
        float(cols.max()), float(rows.max()), True
    )
    rng = np.random.default_rng(0)  # 14 clicks + box: 21 tokens, the plain-attention graph
    many = Prompts(
        rng.uniform(0, sample.mask.shape[1], (14, 2)).astype(np.float32),
        rng.integers(0, 2, 14).astype(np.int64),
        box,
    )
    boxed = Prompts(three.points, three.labels, box)
    cases = [
        ("box", Prompts().with_box(box), None, False),
        ("click", inside, None, False),
        ("clicks+mask", three, first_logits, False),
        ("box+clicks", boxed, None, False),
        ("box+clicks+mask", boxed, first_logits, False),
        ("many clicks+box+mask", many, first_logits, False),
        ("mask only", Prompts(), first_logits, False),
        ("multimask box+mask", Prompts().with_box(box), first_logits, True),
        ("multimask click", inside, None, True),
        ("multimask click+mask", inside, first_logits, True),
        ("multimask clicks+mask", three, first_logits, True),
    ]
    return cases if every else [cases[i] for i in (0, 2, 4, 7, 8)]


def test_masks_equal_eager_for_every_prompt_structure(pair, samples):
    eager, fast = pair
    worst_dice, worst_logit, worst_score = 1.0, 0.0, 0.0
    for index, sample in enumerate(samples):
        embedding = eager.encode(sample.image)
        first = eager.predict(embedding, Prompts().with_box(np.array([8, 8, 60, 60], np.float32)))
        for label, prompts, logits, multimask in prompt_cases(sample, first.logits, index == 0):
            a = eager.predict(embedding, prompts, logits, multimask=multimask)
            b = fast.predict(embedding, prompts, logits, multimask=multimask)
            assert b.mask.shape == a.mask.shape == sample.mask.shape, label
            assert b.logits.shape == a.logits.shape == (1, 1, 256, 256), label
            assert b.mask.dtype == a.mask.dtype == np.bool_
            both_empty = not a.mask.any() and not b.mask.any()
            worst_dice = min(worst_dice, 1.0 if both_empty else dice(a.mask, b.mask))
            worst_logit = max(worst_logit, float((a.logits - b.logits).abs().max()))
            worst_score = max(worst_score, abs(a.score - b.score))
    assert worst_dice >= MIN_DICE
    assert worst_logit <= fd.LOGIT_ATOL
    assert worst_score <= fd.LOGIT_ATOL
    # the 4 signatures were used: mask input or not, absorbed attention or not
    assert set(fast.fast_decoder._sessions) == {
        fd.Signature(m, a) for m in (False, True) for a in (False, True)
    } - {fd.Signature(False, False)}


def test_box_only_litemedsam_too(pair, samples, tmp_path, monkeypatch):
    monkeypatch.setenv(fd.ONNX_DIR_ENV, str(tmp_path))
    eager = make_segmenter("litemedsam", cache=EmbeddingCache())
    fast = make_segmenter("litemedsam", cache=eager.cache, decoder="onnx")
    # The same image encoder: litemedsam_clicks' embedding, relabelled, saves an encode.
    clicks = pair[0].encode(samples[1].image)
    embedding = Embedding(clicks.features, clicks.image_size, eager.model_id)
    rows, cols = np.nonzero(samples[1].mask)
    box = Prompts().with_box(np.array([cols.min(), rows.min(), cols.max(), rows.max()], "f4"))
    a, b = eager.predict(embedding, box), fast.predict(embedding, box)
    assert dice(a.mask, b.mask) >= MIN_DICE
    a2 = eager.predict(embedding, box, a.logits)
    b2 = fast.predict(embedding, box, a.logits)
    assert dice(a2.mask, b2.mask) >= MIN_DICE
    assert float((a2.logits - b2.logits).abs().max()) <= fd.LOGIT_ATOL


def test_predict_batch_and_pickling(pair, samples):
    _, fast = pair
    embeddings = [fast.encode(s.image) for s in samples[:2]]
    box = Prompts().with_box(np.array([10, 10, 50, 40], np.float32))
    singles = [fast.predict(e, box) for e in embeddings]
    batch = fast.predict_batch([PredictRequest(e, box) for e in embeddings])
    for one, other in zip(singles, batch, strict=True):
        assert np.array_equal(one.mask, other.mask)
    copy = pickle.loads(pickle.dumps(fast))  # sessions are dropped and made again
    assert copy.fast_decoder._sessions == {}
    assert np.array_equal(copy.predict(embeddings[0], box).mask, singles[0].mask)


@pytest.fixture
def probe(samples):
    """A quick call on an embedding, and the box it uses."""
    sample = samples[1]
    box = Prompts().with_box(np.array([20, 20, 90, 80], np.float32))

    def call(seg):
        return seg.predict(seg.encode(sample.image), box)

    return call


@pytest.fixture
def cached(pair, samples, tmp_path, monkeypatch):
    """A fresh cache folder (as ``$MEDSEG_ONNX_DIR``) and a segmenter that filled it."""
    monkeypatch.setenv(fd.ONNX_DIR_ENV, str(tmp_path))
    seg = make_segmenter("litemedsam_clicks", cache=pair[0].cache, decoder="onnx")
    return tmp_path, seg


def no_mask_file(seg) -> Path:
    return seg.fast_decoder.path(fd.Signature(mask_input=False, absorbed=True))


def test_second_construction_loads_the_cached_graph(cached, probe):
    folder, first = cached
    expected = probe(first)
    assert (first.fast_decoder.graphs_built, first.fast_decoder.graphs_loaded) == (1, 0)
    path = no_mask_file(first)
    assert path.parent == folder and path.name.startswith(first.model_id)
    assert "nomask-absorbed" in path.name and f"op{fd.OPSET}" in path.name
    assert [p.name for p in folder.iterdir()] == [path.name]  # no temporary file left
    second = make_segmenter("litemedsam_clicks", cache=first.cache, decoder="onnx")
    assert np.array_equal(probe(second).mask, expected.mask)
    assert (second.fast_decoder.graphs_built, second.fast_decoder.graphs_loaded) == (0, 1)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "bit-flip", "other key"])
def test_a_damaged_cached_graph_is_rebuilt(cached, probe, damage):
    folder, first = cached
    expected = probe(first)
    path = no_mask_file(first)
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not an onnx file" * 100)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "bit-flip":  # a weight deep in the file: only the digest can tell
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(flipped))
    else:  # a valid graph written for another signature
        other = first.fast_decoder.path(fd.Signature(mask_input=True, absorbed=True))
        first.fast_decoder.session(fd.Signature(mask_input=True, absorbed=True))
        path.write_bytes(other.read_bytes())
    second = make_segmenter("litemedsam_clicks", cache=first.cache, decoder="onnx")
    assert np.array_equal(probe(second).mask, expected.mask)
    assert (second.fast_decoder.graphs_built, second.fast_decoder.graphs_loaded) == (1, 0)
    assert path.read_bytes() == data  # rewritten whole
    third = make_segmenter("litemedsam_clicks", cache=first.cache, decoder="onnx")
    probe(third)
    assert third.fast_decoder.graphs_loaded == 1


def test_the_write_is_atomic(pair, probe, tmp_path, monkeypatch):
    """A write that fails midway leaves no file (not a partial one) and no temporary file; the
    segmenter still works, from the graph in memory, and says where it could not write."""
    monkeypatch.setenv(fd.ONNX_DIR_ENV, str(tmp_path))
    replaced = []
    real_replace = os.replace

    def failing_fsync(fd_: int) -> None:
        raise OSError(28, "No space left on device")

    def spying_replace(src, dst):
        replaced.append((Path(src), Path(dst), Path(src).stat().st_size))
        real_replace(src, dst)

    monkeypatch.setattr(fd.os, "fsync", failing_fsync)
    seg = make_segmenter("litemedsam_clicks", cache=pair[0].cache, decoder="onnx")
    with pytest.warns(UserWarning, match="could not write the decoder graph"):
        result = probe(seg)
    assert result.mask.any()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setenv(fd.ONNX_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(fd.os, "replace", spying_replace)
    seg = make_segmenter("litemedsam_clicks", cache=pair[0].cache, decoder="onnx")
    probe(seg)
    [(src, dst, size)] = replaced  # written under a temporary name, then renamed whole
    assert src.parent == dst.parent == tmp_path and src != dst
    assert dst == no_mask_file(seg) and size == dst.stat().st_size
    assert dst.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # as the embedding cache
    assert [p.name for p in tmp_path.iterdir()] == [dst.name]


def test_an_unwritable_folder_only_warns(pair, probe, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(fd.ONNX_DIR_ENV, str(blocker / "onnx"))
    seg = make_segmenter("litemedsam_clicks", cache=pair[0].cache, decoder="onnx")
    with pytest.warns(UserWarning, match=fd.ONNX_DIR_ENV):
        assert probe(seg).mask.any()


def test_default_folder_is_under_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(fd.ONNX_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert fd.onnx_cache_dir() == tmp_path / "medseg-env" / "onnx"
    monkeypatch.setenv(fd.ONNX_DIR_ENV, "~/x")
    assert fd.onnx_cache_dir() == Path.home() / "x"


def test_option_errors(pair):
    eager, _ = pair
    with pytest.raises(ValueError, match=r"decoder must be one of \['eager', 'onnx'\]"):
        make_segmenter("litemedsam_clicks", decoder="tensorrt")
    import torch

    seg = make_segmenter("litemedsam_clicks", cache=eager.cache)
    seg.device = torch.device("cuda")  # as a CUDA segmenter would be
    with pytest.raises(ValueError, match="runs on the CPU"):
        seg.use_decoder("onnx")
    seg.device = torch.device("cpu")
    seg.use_decoder("onnx")
    seg.use_decoder("eager")
    assert seg.fast_decoder is None and seg.decoder == "eager"


def test_the_bench_spec_builds_it():
    name, kwargs = parse_spec("litemedsam_clicks:decoder=onnx", "segmenter")
    assert (name, kwargs) == ("litemedsam_clicks", {"decoder": "onnx"})


def test_env_end_to_end_matches_eager(pair, samples, onnx_dir, monkeypatch):
    """The env with segmenter_kwargs={"decoder": "onnx"} plays the same episode as eager."""
    import gymnasium as gym

    monkeypatch.setenv(fd.ONNX_DIR_ENV, str(onnx_dir))
    data = Dataset([samples[0]], name="one-ct")
    options = {"decoder": "onnx", "cache": pair[0].cache}  # the cache: no second encode
    env = gym.make("MedSeg-v0", dataset=data, segmenter_kwargs=options, max_turns=4)
    assert env.unwrapped.segmenter.decoder == "onnx"
    reference = MedSegEnv(dataset=data, segmenter=pair[0], max_turns=4)
    rewards = []
    for e in (env, reference):
        e.reset(seed=0, options={"sample_index": 0})
        gt = e.unwrapped.ground_truth
        rows, cols = np.nonzero(gt)
        size = gt.shape[0]
        steps = [
            A.pixel_box(rows.min(), cols.min(), rows.max(), cols.max(), size),
            A.pixel_click(int(rows.mean()), int(cols.mean()), size, True),
            A.pixel_click(rows.min(), cols.min(), size, False),
        ]
        masks, got = [], []
        for action in steps:
            obs, reward, *_ = e.step(action)
            masks.append(e.unwrapped.current_mask.copy())
            got.append(reward)
        rewards.append((masks, got))
    (fast_masks, fast_rewards), (eager_masks, eager_rewards) = rewards
    for a, b in zip(fast_masks, eager_masks, strict=True):
        assert a.any() and dice(a, b) >= MIN_DICE
    assert np.allclose(fast_rewards, eager_rewards, atol=1e-3)
    env.close()


def test_the_bench_reports_both_paths(pair, onnx_dir, monkeypatch):
    monkeypatch.setenv(fd.ONNX_DIR_ENV, str(onnx_dir))
    result = fd.bench(repeats=1, warmup=0, cache=pair[0].cache)
    for key in ("eager_box_ms", "onnx_box_ms", "eager_click_ms", "onnx_click_ms"):
        assert result[key] > 0
    assert result["max_logit_diff"] <= fd.LOGIT_ATOL
