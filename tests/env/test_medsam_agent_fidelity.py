"""MedSAM-Agent's protocols against its released code, one test per rule of issue 22.

R3 (one logit chain per tool, the RL server's model), E1 (retries spend no turn), E2 (a
first-turn retry restarts, empty replies are not kept), E3 (PIL thumbnail, NEAREST > 128
overlay, raw box corners) and N1 (the sample's own resolution, any box runs). The reward (R1,
R2) is ``test_medsam_agent_reward.py``'s. Real data (the bundled demo set, and small synthetic
samples where a size or aspect is the point) and real models (the weight-free ``classical``
segmenter; SAM 2.1 hiera-tiny built from its config with random weights).
"""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

from medseg_env import MedSegEnv
from medseg_env import actions as A
from medseg_env.data import Dataset, Sample
from medseg_env.geometry import resample_square_mask
from medseg_env.metrics import dice_iou
from medseg_env.segmenters import make_segmenter
from medseg_env.text import ToolCall, get_protocol
from medseg_env.text.messages import message_images, thumbnail_size

EVAL = get_protocol("medsam_agent")
RL = get_protocol("medsam_agent_rl")
GREEN = np.array([0, 255, 0], np.float64)


def synthetic(height: int, width: int, name: str = "synthetic") -> Sample:
    """A textured image with one bright rectangle as the target."""
    rng = np.random.default_rng(height * 1000 + width)
    image = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), bool)
    mask[height // 4 : height // 2, width // 3 : (2 * width) // 3] = True
    image[mask] = 200
    return Sample(image, mask, "block", "synthetic", name, f"{name}/{height}x{width}")


def text_env(dataset: Dataset, protocol: Any = EVAL, **options: Any) -> gym.Env:
    options.setdefault("segmenter", "classical")
    return gym.make("MedSeg-Text-v0", dataset=dataset, protocol=protocol, **options)


def grid_point(env: gym.Env, protocol: Any, positive: bool = True) -> str:
    """A click on the target's innermost pixel, as the protocol's reply text."""
    oracle = env.get_wrapper_attr("oracle")
    rows, cols = np.nonzero(oracle.ground_truth)
    action = A.pixel_click(int(rows.mean()), int(cols.mean()), oracle.obs_size, positive)
    return env.get_wrapper_attr("render_action")(action)


def bbox_reply(protocol: Any, box: tuple[int, int, int, int]) -> str:
    return protocol.render(ToolCall("add_bbox", {"bbox_2d": box}))


def texts(messages: list[dict]) -> list[tuple[str, str]]:
    """(role, text) of each message: what the model reads, images aside."""
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            out.append((message["role"], content))
        else:
            out.append((message["role"], "".join(p.get("text", "") for p in content)))
    return out


# ----------------------------------------------------------------------------- R3
def test_r3_medsam2_rl_spec_is_the_rl_segmentation_server() -> None:
    """``MedSAM2(medsam_agent_rl=True)`` is ``segmentation_api.py``'s model (sam2.1 hiera-t at
    1024, SAM 2's preprocessing, one mask), and with ``prompting="medsam_agent_rl"`` the env
    gives each call what the server's per-tool sessions give ``SAM2ImagePredictor.predict``."""
    pytest.importorskip("sam2")
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from medseg_env.segmenters.cache import EmbeddingCache

    seg = make_segmenter(
        "medsam2",
        medsam_agent_rl=True,
        allow_random_init=True,
        device="cpu",
        cache=EmbeddingCache(),
    )
    assert (seg.config_name, seg.input_size, seg.preprocessing) == ("sam2.1_hiera_t", 1024, "sam2")
    assert not seg.object_gating and not seg.multimask_single_click
    assert seg.model_id == "medsam2-sam2.1_hiera_t-1024-sam2-random0"
    plain = make_segmenter("sam2", multimask_single_click=False, allow_random_init=True)
    assert plain.model_id.removeprefix("sam2-") == seg.model_id.removeprefix("medsam2-")
    assert not plain.object_gating and not plain.multimask_single_click
    with pytest.raises(ValueError, match="give one of them"):
        make_segmenter(
            "medsam2", medsam_agent_rl=True, medsam_agent_eval=True, allow_random_init=True
        )

    sample = synthetic(1024, 1024)  # at 1024 the server's pixel indices are SAM's input's
    env = text_env(Dataset([sample], name="big"), RL, segmenter=seg, obs_size=64)
    env.reset(seed=0)
    box = (300, 230, 700, 520)
    replies = [
        bbox_reply(RL, box),
        RL.render(ToolCall("add_point", {"point_2d": (500, 380), "point_type": "positive"})),
        RL.render(ToolCall("add_point", {"point_2d": (320, 240), "point_type": "negative"})),
        bbox_reply(RL, (310, 240, 690, 510)),
    ]
    ours = []
    for reply in replies:
        *_, info = env.step(reply)
        assert info["executed"] and info["invalid_action"] is None
        ours.append(env.get_wrapper_attr("current_mask"))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        server = SAM2ImagePredictor(seg.model)
    server.set_image(sample.image.copy())
    sessions: dict[str, Any] = {}  # f"{episode_id}_{tool_name}" -> its logits
    for reply, mask in zip(replies, ours, strict=True):
        call = RL.parse(reply).call
        assert call is not None
        kwargs: dict[str, Any] = {}
        if call.name == "add_bbox":
            corners = np.array([int(v * 1024 / 1000) for v in call.arguments["bbox_2d"]], float)
            # the package's box corner p is SAM's index p - 0.5 (its documented convention)
            kwargs["box"] = corners - 0.5
        else:
            x, y = (int(v * 1024 / 1000) for v in call.arguments["point_2d"])
            kwargs["point_coords"] = np.array([[x, y]], float)
            kwargs["point_labels"] = np.array([int(call.arguments["point_type"] == "positive")])
        masks, scores, logits = server.predict(
            mask_input=sessions.get(call.name), multimask_output=False, **kwargs
        )
        best = int(np.argmax(scores))
        sessions[call.name] = logits[[best]]
        assert (mask != masks[best].astype(bool)).mean() < 1e-3, call


# ----------------------------------------------------------------------------- E1
@pytest.mark.parametrize("free", [True, False])
def test_e1_eval_retries_do_not_spend_the_turn_budget(small_demo: Dataset, free: bool) -> None:
    """One bad reply before each of 5 clicks: all 5 run (``while actual_click_count <
    max_clicks``); ``retries_spend_turns=True`` is the switch."""
    protocol = EVAL if free else EVAL.replace(retries_spend_turns=True)
    env = text_env(small_demo, protocol)
    env.reset(seed=0, options={"sample_index": 0})
    executed = 0
    over = False
    for _ in range(5):
        *_, terminated, truncated, info = env.step("I am not sure yet.")
        assert info["format_error"] and not terminated
        if truncated:
            over = True
            break
        *_, terminated, truncated, info = env.step(grid_point(env, protocol))
        executed += int(info["executed"])
        over = terminated or truncated
        if over:
            break
    assert over
    if free:
        assert executed == 5 and env.get_wrapper_attr("turn") == 5
    else:
        assert executed == 2  # bad, click, bad, click, bad: the budget of 5 is spent


# ----------------------------------------------------------------------------- E2
def test_e2_first_turn_retry_restarts_and_empty_replies_are_not_kept(
    small_demo: Dataset,
) -> None:
    env = text_env(small_demo, EVAL)
    first, _ = env.reset(seed=0, options={"sample_index": 1})
    images = message_images(first)
    for bad in ("no call", '<tool_call>\n{"name": "stop_action", "arguments": {}}\n</tool_call>'):
        env.reset(seed=0, options={"sample_index": 1})
        retried, *_ = env.step(bad)
        # the history is cleared and the turn-1 text is sent again, with the same image
        assert texts(retried) == texts(first)
        assert [np.asarray(i).tolist() for i in message_images(retried)] == [
            np.asarray(i).tolist() for i in images
        ]
    env.reset(seed=0, options={"sample_index": 1})
    before, *_ = env.step(grid_point(env, EVAL))
    after, *_, info = env.step("")  # an empty reply: not saved, the same turn asked again
    assert info["format_error"] and texts(after) == texts(before)
    env.step(grid_point(env, EVAL))  # (a call: the count of failed replies in a row restarts)
    kept, *_ = env.step("still thinking")  # a later non-empty bad reply stays in the history
    assert texts(kept)[-2:] == [
        ("assistant", "still thinking"),
        ("user", EVAL.later_user_text()),
    ]

    switched = text_env(
        small_demo, EVAL.replace(first_retry_restarts=False, keep_empty_replies=True)
    )
    switched.reset(seed=0, options={"sample_index": 1})
    old, *_ = switched.step("no call")
    assert [m["role"] for m in old] == ["system", "user", "assistant", "user"]
    _, *_ = switched.step(grid_point(switched, EVAL))
    empty, *_ = switched.step("")
    assert texts(empty)[-2] == ("assistant", "")


def test_eval_history_shows_the_images_the_released_code_shows(small_demo: Dataset) -> None:
    """Each kept history message shows the image shown at a later reply (the released
    ``intermediate_images``, indexed from the kept history's start), the original full-size
    image where they run out; ``shifted_history_images=False`` keeps each turn's own."""
    env = text_env(small_demo, EVAL)
    messages, _ = env.reset(seed=0, options={"sample_index": 0})
    original = env.get_wrapper_attr("sample").image
    pixels = lambda image: np.asarray(image).tolist()  # noqa: E731
    shown = [pixels(message_images(messages)[-1])]  # the image at each reply
    for reply in (bbox_reply(EVAL, (300, 200, 700, 520)), grid_point(env, EVAL), "no call"):
        messages, *_ = env.step(reply)
        shown.append(pixels(message_images(messages)[-1]))
    history = message_images(messages)[:-1]
    # three exchanges kept (the retried one too); the images kept so far are those shown at
    # the 2nd and 3rd replies (the replies after the first action), then the original image
    assert [pixels(i) for i in history[:2]] == [shown[1], shown[2]]
    assert pixels(history[2]) == original.tolist() and history[2].size == original.shape[1::-1]
    assert shown[3] == shown[2]  # a retry is asked with the same overlay
    messages, *_ = env.step(grid_point(env, EVAL))
    history = message_images(messages)[:-1]
    assert [pixels(i) for i in history[:3]] == [shown[1], shown[2], shown[3]]
    assert pixels(history[3]) == original.tolist()

    own = text_env(small_demo, EVAL.replace(shifted_history_images=False))
    messages, _ = own.reset(seed=0, options={"sample_index": 0})
    first = pixels(message_images(messages)[0])
    messages, *_ = own.step(bbox_reply(EVAL, (300, 200, 700, 520)))
    assert pixels(message_images(messages)[0]) == first


# ----------------------------------------------------------------------------- E3
@pytest.mark.parametrize("shape", [(700, 1100), (1100, 700), (200, 300), (640, 640), (2048, 1536)])
def test_e3_eval_image_is_pil_thumbnail_on_white(shape: tuple[int, int]) -> None:
    sample = synthetic(*shape)
    env = text_env(Dataset([sample], name="sized"), EVAL)
    messages, _ = env.reset(seed=0)
    (image,) = message_images(messages)
    expected = Image.fromarray(sample.image.copy())
    expected.thumbnail((512, 512), Image.Resampling.LANCZOS)  # never enlarges; reducing_gap
    canvas = Image.new("RGB", (512, 512), (255, 255, 255))
    canvas.paste(expected, ((512 - expected.size[0]) // 2, (512 - expected.size[1]) // 2))
    assert np.array_equal(np.asarray(image), np.asarray(canvas))


def test_e3_thumbnail_size_is_pillows() -> None:
    for width in range(1, 1400, 37):
        for height in (1, 7, 300, 511, 512, 513, 700, 1023, 2048):
            image = Image.new("L", (width, height))
            image.thumbnail((512, 512))
            assert thumbnail_size(width, height, 512) == image.size, (width, height)


@pytest.mark.parametrize("shape", [(1024, 1024), (300, 500)])
def test_e3_eval_overlay_is_the_mask_stretched_nearest_above_128(
    shape: tuple[int, int],
) -> None:
    sample = synthetic(*shape)
    env = text_env(Dataset([sample], name="sized"), EVAL)
    messages, _ = env.reset(seed=0)
    (plain,) = message_images(messages)
    messages, *_ = env.step(bbox_reply(EVAL, (300, 200, 700, 520)))
    shown = np.asarray(message_images(messages)[-1])
    height, width = shape
    mask = env.get_wrapper_attr("current_mask")[:height, :width]
    assert mask.any()
    stretched = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (512, 512), Image.Resampling.NEAREST
    )
    on = np.asarray(stretched) > 128  # the whole square, the white padding included
    expected = np.asarray(plain).astype(np.float64)
    expected[on] = expected[on] * 0.5 + GREEN * 0.5
    assert np.array_equal(shown, expected.astype(np.uint8))


def test_e3_boxes_reach_the_segmenter_as_the_corners_written(small_demo: Dataset) -> None:
    """Not sorted, no ``+1``, 999 not clamped: ``round(v / 999 * W)`` of each corner."""
    calls: list[Any] = []
    for protocol in (EVAL, EVAL.replace(raw_box_corners=False)):
        segmenter = make_segmenter("classical")
        real = segmenter.predict

        def predict(embedding, prompts, previous_logits=None, multimask=False, real=real):
            calls.append(None if prompts.box is None else prompts.box.copy())
            return real(embedding, prompts, previous_logits, multimask)

        segmenter.predict = predict  # type: ignore[method-assign]
        env = text_env(small_demo, protocol, segmenter=segmenter)
        env.reset(seed=0, options={"sample_index": 0})
        height, width = env.get_wrapper_attr("sample").mask.shape
        *_, info = env.step(bbox_reply(protocol, (900, 800, 100, 999)))
        assert info["executed"] and info["invalid_action"] is None
    raw, sorted_box = calls
    written = [
        round(900 / 999 * width),
        round(800 / 999 * height),
        round(100 / 999 * width),
        height,
    ]
    np.testing.assert_allclose(raw, written, atol=1e-9)
    # the switch: sorted, the far edge + 1, clamped into the image
    expected = [written[2], written[1], min(written[0], width - 1) + 1, height]
    np.testing.assert_allclose(sorted_box, expected, atol=1e-9)


# ----------------------------------------------------------------------------- N1
@pytest.mark.parametrize("protocol", [EVAL, RL], ids=lambda p: p.name)
def test_n1_masks_and_metrics_live_at_the_samples_resolution(protocol: Any) -> None:
    sample = synthetic(100, 160)  # not square, not the canvas size
    encoded: list[tuple[int, ...]] = []
    segmenter = make_segmenter("classical")
    real = segmenter.encode

    def encode(image):
        encoded.append(image.shape)
        return real(image)

    segmenter.encode = encode  # type: ignore[method-assign]
    env = text_env(Dataset([sample], name="n1"), protocol, segmenter=segmenter)
    env.reset(seed=0)
    base = env.unwrapped
    assert encoded == [(100, 160, 3)], "the segmenter sees the original image"
    oracle = env.get_wrapper_attr("oracle")
    assert base.frame_size == oracle.obs_size == 160 and oracle.ground_truth.shape == (160, 160)
    assert np.array_equal(oracle.ground_truth[:100], sample.mask)
    assert not oracle.ground_truth[100:].any()
    *_, info = env.step(bbox_reply(protocol, (300, 200, 700, 520)))
    mask = env.get_wrapper_attr("current_mask")
    assert mask.shape == (160, 160) and not mask[100:].any() and mask.any()
    dice, iou = dice_iou(mask[:100], sample.mask)
    assert (info["dice"], info["iou"]) == (dice, iou)
    # any box runs (min_box_size 0): one pixel wide, as the released code runs it
    one_pixel = bbox_reply(protocol, (500, 100, 501, 900))
    *_, info = env.step(one_pixel)
    assert info["executed"] and info["invalid_action"] is None

    canvas = text_env(
        Dataset([sample], name="n1"),
        protocol,
        native_resolution=False,
        min_box_size=2.0,
        obs_size=64,
    )
    canvas.reset(seed=0)
    assert canvas.get_wrapper_attr("oracle").ground_truth.shape == (64, 64)
    canvas.step(bbox_reply(protocol, (300, 200, 700, 520)))
    *_, info = canvas.step(one_pixel)
    assert info["invalid_action"] is not None  # the switch: the canvas and its minimum box


def test_n1_the_observation_stays_the_canvas(demo: Dataset) -> None:
    small = next(i for i, s in enumerate(demo) if s.mask.shape == (128, 128))
    env = MedSegEnv(dataset=demo, segmenter="classical", native_resolution=True, obs_size=256)
    obs, info = env.reset(seed=0, options={"sample_index": small})
    assert env.frame_size == 128 and obs["mask"].shape == (256, 256, 1)
    gt = env.ground_truth
    rows, cols = np.nonzero(gt)
    obs, *_, info = env.step(A.pixel_box(rows.min(), cols.min(), rows.max(), cols.max(), 128))
    assert np.array_equal(obs["mask"][..., 0] > 0, resample_square_mask(env.current_mask, 256))
    assert obs in env.observation_space
    assert info["dice"] == dice_iou(env.current_mask, gt)[0]
