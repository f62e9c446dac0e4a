"""The ONNX decoder (``decoder="onnx"``, the LiteMedSAM backends' default on the CPU):
equivalence with eager PyTorch for every prompt structure, the graph cache, the decoder as a
component of another SAM-family backend, and the env end to end. No speed assertions: see
``python -m medseg_bench.throughput --decoders``. Every sample of the bundled sets is compared
in ``test_decoder_identity.py``."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg_env import MedSegEnv
from medseg_env import actions as A
from medseg_env.data import Dataset
from medseg_env.metrics import dice
from medseg_env.registry import UnknownNameError, parse_spec
from medseg_env.segmenters import (
    EagerDecoder,
    Embedding,
    EmbeddingCache,
    OnnxDecoder,
    PredictRequest,
    Prompts,
    make_segmenter,
)
from medseg_env.segmenters import onnx_cache as oc
from medseg_env.segmenters import onnx_decoder as od
from medseg_env.segmenters import onnx_graph as og
from medseg_env.segmenters.onnx_graph import Signature

MIN_DICE = 0.999


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def pair(onnx_dir):
    """Eager and ONNX ``litemedsam_clicks`` sharing one embedding cache (the same model_id)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(oc.ONNX_DIR_ENV, str(onnx_dir))
        eager = make_segmenter("litemedsam_clicks", cache=EmbeddingCache(), decoder="eager")
        fast = make_segmenter("litemedsam_clicks", cache=eager.cache)  # the default: onnx
    assert fast.model_id == eager.model_id
    assert isinstance(fast.decoder, OnnxDecoder) and isinstance(eager.decoder, EagerDecoder)
    assert fast.runtime == {"device": "cpu", "decoder": "onnx"}
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
    assert worst_logit <= od.LOGIT_ATOL
    assert worst_score <= od.LOGIT_ATOL
    # the 4 signatures were used: mask input or not, absorbed attention or not
    assert set(fast.decoder._sessions) == {
        Signature(m, a) for m in (False, True) for a in (False, True)
    } - {Signature(False, False)}


def test_box_only_litemedsam_too(pair, samples, tmp_path, monkeypatch):
    monkeypatch.setenv(oc.ONNX_DIR_ENV, str(tmp_path))
    eager = make_segmenter("litemedsam", cache=EmbeddingCache(), decoder="eager")
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
    assert float((a2.logits - b2.logits).abs().max()) <= od.LOGIT_ATOL


def test_predict_batch_and_pickling(pair, samples):
    _, fast = pair
    embeddings = [fast.encode(s.image) for s in samples[:2]]
    box = Prompts().with_box(np.array([10, 10, 50, 40], np.float32))
    singles = [fast.predict(e, box) for e in embeddings]
    batch = fast.predict_batch([PredictRequest(e, box) for e in embeddings])
    for one, other in zip(singles, batch, strict=True):
        assert np.array_equal(one.mask, other.mask)
    restored = pickle.loads(pickle.dumps(fast))  # sessions are dropped and made again
    assert restored.decoder._sessions == {}
    assert np.array_equal(restored.predict(embeddings[0], box).mask, singles[0].mask)


@pytest.fixture
def probe(samples):
    """A quick call on an embedding, and the box it uses."""
    sample = samples[1]
    box = Prompts().with_box(np.array([20, 20, 90, 80], np.float32))

    def call(seg):
        return seg.predict(seg.encode(sample.image), box)

    return call


def test_a_second_construction_loads_the_cached_graph(pair, probe, onnx_dir, monkeypatch):
    expected = probe(pair[1])  # the module's ONNX segmenter wrote its graphs to onnx_dir
    path = pair[1].decoder.path(Signature(mask_input=False, absorbed=True))
    assert path.parent == onnx_dir and path.name.startswith(pair[1].model_id)
    assert "nomask-absorbed" in path.name and f"op{og.OPSET}" in path.name
    monkeypatch.setenv(oc.ONNX_DIR_ENV, str(onnx_dir))
    second = make_segmenter("litemedsam_clicks", cache=pair[0].cache)
    assert np.array_equal(probe(second).mask, expected.mask)
    assert (second.decoder.graphs_built, second.decoder.graphs_loaded) == (0, 1)


def test_option_errors_and_switching(pair):
    eager, _ = pair
    with pytest.raises(UnknownNameError, match=r"litemedsam_clicks: .*unknown decoder 'tensorrt'"):
        make_segmenter("litemedsam_clicks", decoder="tensorrt")
    seg = make_segmenter("litemedsam_clicks", cache=eager.cache, decoder="eager")
    seg.device = torch.device("cuda")  # as a CUDA segmenter would be
    with pytest.raises(ValueError, match="runs on the CPU"):
        seg.use_decoder("onnx")
    seg.use_decoder("auto")  # off the CPU: eager
    assert seg.decoder.kind == "eager"
    seg.device = torch.device("cpu")
    seg.use_decoder("auto")
    assert seg.decoder.kind == "onnx" and seg.runtime["decoder"] == "onnx"
    seg.use_decoder(eager.decoder)  # an instance is taken as it is
    assert seg.decoder is eager.decoder


def test_a_graph_is_rebuilt_when_the_weights_change(pair, samples, tmp_path):
    """Training the modules in place (here: one weight changed) reaches the ONNX path too."""
    eager, _ = pair
    prompt_encoder = copy.deepcopy(eager.prompt_encoder)
    mask_decoder = copy.deepcopy(eager.mask_decoder)
    cache = oc.GraphCache(tmp_path)
    fast = OnnxDecoder(prompt_encoder, mask_decoder, model_id="t", cache=cache)
    slow = EagerDecoder(prompt_encoder, mask_decoder, model_id="t", device=torch.device("cpu"))
    embedding = eager.encode(samples[1].image)
    box = Prompts().with_box(np.array([20, 20, 90, 80], np.float32))
    inputs = eager.decoder_inputs(PredictRequest(embedding, box))
    before = fast.decode(embedding.features, inputs).logits
    with torch.no_grad():
        mask_decoder.iou_token.weight.mul_(3.0)  # as an optimiser step would, in place
    after = fast.decode(embedding.features, inputs)
    reference = slow.decode(embedding.features, inputs)
    assert fast.graphs_built == 2 and len(list(tmp_path.iterdir())) == 2
    assert float((after.logits - before).abs().max()) > 10 * od.LOGIT_ATOL
    assert float((after.logits - reference.logits).abs().max()) <= od.LOGIT_ATOL


def test_the_bench_spec_builds_it():
    name, kwargs = parse_spec("litemedsam_clicks:decoder=onnx", "segmenter")
    assert (name, kwargs) == ("litemedsam_clicks", {"decoder": "onnx"})


def test_env_end_to_end_matches_eager(pair, samples, onnx_dir, monkeypatch):
    """The env with segmenter_kwargs={"decoder": "onnx"} plays the same episode as eager."""
    import gymnasium as gym

    monkeypatch.setenv(oc.ONNX_DIR_ENV, str(onnx_dir))
    data = Dataset([samples[0]], name="one-ct")
    options = {"decoder": "onnx", "cache": pair[0].cache}  # the cache: no second encode
    env = gym.make("MedSeg-v0", dataset=data, segmenter_kwargs=options, max_turns=4)
    assert env.unwrapped.segmenter.decoder.kind == "onnx"
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
