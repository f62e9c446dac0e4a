"""SAM 2 and MedSAM2 through Meta's ``sam2`` package, with no download.

The model is a real SAM 2.1 hiera-tiny built from the package's config with seeded random
weights, at a 256-pixel input to stay fast on a CPU (Hiera's weights do not depend on the input
size). Its state dict saved to disk and loaded back through ``checkpoint=`` must give the same
outputs; its outputs must match ``SAM2ImagePredictor`` on the same model.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from medseg_testing import mask_box

from medseg_env.segmenters import EmbeddingCache, Prompts

pytest.importorskip("sam2")

from medseg_env.segmenters.sam2_family import (  # noqa: E402  (after the skip)
    CONFIGS,
    SAM2,
    MedSAM2,
    describe_checkpoint,
    unpack_features,
)

SIZE = 256


@pytest.fixture(scope="module")
def sample(demo):
    return next(s for s in demo if s.modality == "MR")


@pytest.fixture(scope="module")
def seg() -> SAM2:
    return SAM2(allow_random_init=True, image_size=SIZE, device="cpu", cache=EmbeddingCache())


@pytest.fixture(scope="module")
def emb(seg, sample):
    return seg.encode(sample.image)


@pytest.fixture(scope="module")
def prompts(sample) -> Prompts:
    rows, cols = np.nonzero(sample.mask)
    inside = (cols[len(cols) // 2] + 0.5, rows[len(rows) // 2] + 0.5)
    return (
        Prompts(box=mask_box(sample.mask))
        .with_point(*inside, True)
        .with_point(cols.min() - 3.5, rows.min() - 3.5, False)
    )


@pytest.fixture(scope="module")
def checkpoints(seg, tmp_path_factory) -> dict[str, object]:
    """The random model's weights as released (``{"model": ...}`` .pt) and as safetensors."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("sam2_ckpt")
    state = {k: v.contiguous() for k, v in seg.model.state_dict().items()}
    torch.save({"model": state}, folder / "tiny.pt")
    save_file(state, str(folder / "tiny.safetensors"))
    return {"pt": folder / "tiny.pt", "safetensors": folder / "tiny.safetensors"}


def test_encode_predict_end_to_end(seg, emb, sample, prompts):
    assert seg.model_id == "sam2-sam2.1_hiera_t-256-sam2-random0"
    assert seg.supports("box") and seg.supports("point")
    # the packed embedding: image embedding and the two high-resolution feature maps
    parts = unpack_features(emb.features, seg.shapes)
    assert [tuple(p.shape) for p in parts] == [(1, 32, 64, 64), (1, 64, 32, 32), (1, 256, 16, 16)]
    assert emb.image_size == sample.mask.shape
    first = seg.predict(emb, prompts)
    assert first.mask.shape == sample.mask.shape and first.mask.dtype == bool
    assert tuple(first.logits.shape) == (1, 1, SIZE // 4, SIZE // 4)
    assert 0.0 <= first.score <= 1.0  # SAM 2.1 predicts IoU through a sigmoid
    again = seg.predict(emb, prompts)
    torch.testing.assert_close(again.logits, first.logits, rtol=0, atol=0)
    refined = seg.predict(emb, prompts, first.logits)  # the previous logits as mask input
    assert not torch.equal(refined.logits, first.logits)
    clicks_only = seg.predict(emb, Prompts(prompts.points, prompts.labels), first.logits)
    assert clicks_only.mask.shape == sample.mask.shape
    box_only = seg.predict(emb, Prompts(box=prompts.box))
    assert box_only.mask.shape == sample.mask.shape
    with pytest.raises(ValueError, match="previous_logits must be"):
        seg.predict(emb, prompts, torch.zeros(1, 1, 256, 256))


def test_multimask_keeps_the_best_candidate(seg, emb, prompts):
    best = seg.predict(emb, prompts, multimask=True)
    # the three candidates, decoded by hand: the kept one has the best predicted IoU
    *high_res, image_embed = unpack_features(emb.features, seg.shapes)
    points = seg.prompt_tensors(prompts, emb.image_size)
    with torch.inference_mode():
        sparse, dense = seg.prompt_encoder(points=points, boxes=None, masks=None)
        low_res, iou, _, _ = seg.mask_decoder(
            image_embeddings=image_embed,
            image_pe=seg.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            repeat_image=False,
            high_res_features=high_res,
        )
    assert iou.shape == (1, 3) and best.score == pytest.approx(float(iou.max()))
    k = int(iou.argmax())
    torch.testing.assert_close(best.logits, low_res[:, k : k + 1].clamp(-32, 32))
    # medsam_agent_eval: every call is the best of three, as MedSAM-Agent's predictor calls
    seg.medsam_agent_eval = True
    try:
        torch.testing.assert_close(seg.predict(emb, prompts).logits, best.logits)
    finally:
        seg.medsam_agent_eval = False


def test_matches_the_official_image_predictor(seg, emb, sample, prompts):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script in SAM2Transforms
        predictor = SAM2ImagePredictor(seg.model)
    side = SIZE // 4
    predictor._bb_feat_sizes = [(side, side), (side // 2, side // 2), (side // 4, side // 4)]
    predictor.set_image(sample.image.copy())  # writable, or torchvision warns
    ours = unpack_features(emb.features, seg.shapes)
    theirs = [*predictor._features["high_res_feats"], predictor._features["image_embed"]]
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b.cpu())
    # Their pixel coordinates are indices (+0.5 inside SAM 2); ours are continuous.
    height, width = sample.mask.shape
    half_pixel = 0.5 * np.array([width, height]) / SIZE
    first = seg.predict(emb, prompts)
    masks, scores, logits = predictor.predict(
        point_coords=prompts.points - half_pixel,
        point_labels=prompts.labels,
        box=prompts.box - np.tile(half_pixel, 2),
        multimask_output=False,
    )
    torch.testing.assert_close(first.logits[0], torch.from_numpy(logits), atol=1e-4, rtol=1e-4)
    assert first.score == pytest.approx(float(scores[0]), abs=1e-5)
    assert (first.mask != masks[0]).mean() < 1e-3
    # the previous logits as mask input, and a lone click (three candidates, best kept)
    second = seg.predict(emb, prompts, first.logits)
    _, _, logits2 = predictor.predict(
        point_coords=prompts.points - half_pixel,
        point_labels=prompts.labels,
        box=prompts.box - np.tile(half_pixel, 2),
        mask_input=first.logits[0].numpy(),
        multimask_output=False,
    )
    torch.testing.assert_close(second.logits[0], torch.from_numpy(logits2), atol=1e-4, rtol=1e-4)
    click = Prompts(prompts.points[:1], prompts.labels[:1])
    _, scores3, logits3 = predictor.predict(
        point_coords=click.points - half_pixel, point_labels=click.labels
    )
    k = int(np.argmax(scores3))
    lone = seg.predict(emb, click).logits[0]
    torch.testing.assert_close(lone, torch.from_numpy(logits3[k : k + 1]), atol=1e-4, rtol=1e-4)


def test_preprocessing_and_coordinates():
    from sam2.utils.transforms import SAM2Transforms

    seg = object.__new__(SAM2)  # only the preprocessing and geometry, no model
    seg.input_size, seg.device, seg.preprocessing = SIZE, torch.device("cpu"), "sam2"
    image = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        reference = SAM2Transforms(SIZE, 0.0)(image)[None]
    torch.testing.assert_close(seg.preprocess(image), reference, rtol=0, atol=0)
    # MedSAM2: PIL bicubic to S×S, /255, ImageNet mean and std
    from PIL import Image

    seg.preprocessing = "medsam2"
    resized = np.array(Image.fromarray(image).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = ((resized / 255.0 - mean) / std).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(seg.preprocess(image).numpy(), expected, atol=1e-5)
    # the aspect ratio is not kept: x scales by S/W, y by S/H, and -0.5 undoes SAM 2's +0.5
    points, labels = seg.prompt_tensors(
        Prompts(box=np.array([0, 0, 150, 100], np.float32)).with_point(75, 50, False),
        (100, 150),
    )
    torch.testing.assert_close(
        points, torch.tensor([[[-0.5, -0.5], [255.5, 255.5], [127.5, 127.5]]])
    )
    assert labels.tolist() == [[2, 3, 0]]


def test_object_gating_blanks_the_mask_without_an_object(seg, emb, prompts):
    head = seg.mask_decoder.pred_obj_score_head.layers[-1]
    bias = head.bias.detach().clone()
    seg.object_gating = True
    try:
        with torch.no_grad():
            head.bias.fill_(-1e4)
        blank = seg.predict(emb, prompts)
        assert not blank.mask.any() and bool((blank.logits == -32).all())
        with torch.no_grad():
            head.bias.fill_(1e4)
        seg.object_gating = False
        ungated = seg.predict(emb, prompts)
        seg.object_gating = True
        torch.testing.assert_close(seg.predict(emb, prompts).logits, ungated.logits)
    finally:
        seg.object_gating = False
        with torch.no_grad():
            head.bias.copy_(bias)


@pytest.mark.parametrize("kind", ["pt", "safetensors"])
def test_checkpoint_round_trip(kind, checkpoints, seg, emb, sample, prompts):
    loaded = SAM2(checkpoints[kind], image_size=SIZE, device="cpu", cache=EmbeddingCache())
    assert "sam2.1_hiera_t-256" in loaded.model_id and loaded.model_id != seg.model_id
    theirs = loaded.model.state_dict()
    for name, value in seg.model.state_dict().items():
        assert torch.equal(theirs[name], value), name
    if kind == "pt":  # the whole path once; the weights are the same for safetensors
        theirs = loaded.predict(loaded.encode(sample.image), prompts)
        ours = seg.predict(emb, prompts)
        torch.testing.assert_close(theirs.logits, ours.logits, rtol=0, atol=0)
        np.testing.assert_array_equal(theirs.mask, ours.mask)


def test_checkpoint_errors_name_the_file(tmp_path, checkpoints):
    with pytest.raises(ValueError, match="needs checkpoint=PATH"):
        SAM2()
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        SAM2(tmp_path / "missing.pt", image_size=SIZE)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupt.pt"):
        MedSAM2(corrupt, image_size=SIZE)
    wrong = tmp_path / "wrong.pt"
    torch.save({"model": {"sam_mask_decoder.foo": torch.zeros(1)}}, wrong)
    with pytest.raises(ValueError, match=r"wrong.pt.*does not fit.*missing keys"):
        SAM2(wrong, image_size=SIZE)
    with pytest.raises(ValueError, match="unknown SAM 2 config 'sam2.1_hiera_q'"):
        SAM2(checkpoints["pt"], config="sam2.1_hiera_q")
    # a hiera-tiny checkpoint given to the small config: named, with what it looks like
    with pytest.raises(ValueError, match=r"tiny.pt.*sam2.1_hiera_s.*looks like a sam2.1_hiera_t"):
        SAM2(checkpoints["pt"], config="sam2.1_hiera_s", image_size=SIZE)
    with pytest.raises(ValueError, match="multiple of 32"):
        SAM2(allow_random_init=True, image_size=200)


def test_describe_checkpoint(seg):
    state = seg.model.state_dict()
    assert describe_checkpoint(state) == "sam2.1_hiera_t"
    without = {k: v for k, v in state.items() if k != "no_obj_embed_spatial"}
    assert describe_checkpoint(without) == "sam2_hiera_t"
    assert describe_checkpoint({}) is None
    assert set(CONFIGS) >= {f"sam2.1_hiera_{s}" for s in ("t", "s", "b+", "l")}


def test_cached_embeddings_give_identical_outputs(seg, emb, sample, prompts, tmp_path):
    fresh = emb  # the module's first encode of this image
    expected = seg.predict(fresh, prompts, multimask=True)
    old_cache = seg.cache
    try:
        seg.cache = EmbeddingCache(disk_dir=tmp_path)
        calls = seg.encoder_calls
        stored = seg.encode(sample.image)  # encoded, written to memory and disk
        assert seg.encode(sample.image.copy()) is stored and seg.encoder_calls == calls + 1
        assert torch.equal(stored.features, fresh.features)  # the encoder is deterministic
        seg.cache = EmbeddingCache(disk_dir=tmp_path)  # empty memory: served from disk
        from_disk = seg.encode(sample.image)
        assert seg.encoder_calls == calls + 1 and from_disk is not stored
        assert torch.equal(from_disk.features, fresh.features)
        for emb in (stored, from_disk):
            got = seg.predict(emb, prompts, multimask=True)
            assert torch.equal(got.logits, expected.logits) and got.score == expected.score
            np.testing.assert_array_equal(got.mask, expected.mask)
    finally:
        seg.cache = old_cache


def test_medsam2_defaults():
    medsam2 = MedSAM2(allow_random_init=True, device="cpu", cache=EmbeddingCache())
    assert medsam2.model_id == "medsam2-sam2.1_hiera_t512-512-medsam2-random0"
    assert medsam2.input_size == 512 and medsam2.object_gating
    assert tuple(medsam2.prompt_encoder.mask_input_size) == (128, 128)
    # MedSAM2's 512 config sets the memory attention's RoPE grid to 32×32
    rope = medsam2.model.memory_attention.layers[0].self_attn
    assert rope.freqs_cis.shape[0] == 32 * 32
    agent = MedSAM2(
        allow_random_init=True, medsam_agent_eval=True, device="cpu", cache=EmbeddingCache()
    )
    assert agent.model_id == "medsam2-sam2.1_hiera_t-1024-sam2-random0"
    assert not agent.object_gating and agent.medsam_agent_eval


def test_sam2_is_imported_only_when_a_backend_is_built():
    """``import medseg_env`` works without the sam2 extra: no module-level import of it."""
    import ast
    from pathlib import Path

    import medseg_env.segmenters.sam2_family as module

    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    top_level = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            top_level.add(node.module.split(".")[0])
    assert not top_level & {"sam2", "hydra", "omegaconf", "iopath", "PIL"}
