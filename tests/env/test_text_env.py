"""``MedSeg-Text-v0``: reply text through the protocols, on the real demo data and LiteMedSAM."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from PIL import Image

from medseg_agents import HybridExpert
from medseg_agents.simulation import oracle_box_action
from medseg_env import MedSegEnv
from medseg_env.data import Dataset
from medseg_env.metrics import dice_iou
from medseg_env.text import get_protocol, registered_protocols
from medseg_env.text.messages import from_data_url, message_images
from medseg_env.wrappers.text_env import ChatMessages, MedSegTextEnv

PROTOCOLS = registered_protocols()


def make(small_demo: Dataset, protocol: str, **kwargs) -> gym.Env:
    env = gym.make("MedSeg-Text-v0", dataset=small_demo, protocol=protocol, **kwargs)
    assert any(isinstance(w, MedSegTextEnv) for w in _chain(env))
    return env


def _chain(env: gym.Env) -> list[gym.Env]:
    out = [env]
    while isinstance(out[-1], gym.Wrapper):
        out.append(out[-1].env)
    return out


def box_reply(env: gym.Env) -> str:
    """A well-formed reply with the ground truth's box, rendered by the protocol itself."""
    action = oracle_box_action(env.get_wrapper_attr("oracle").ground_truth)
    return env.get_wrapper_attr("render_action")(action)


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_check_env_passes(small_demo: Dataset, protocol: str) -> None:
    env = make(small_demo, protocol)
    check_env(env.unwrapped)  # the base env, as gymnasium recommends
    check_env(env, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_observation_is_the_conversation(small_demo: Dataset, protocol: str) -> None:
    env = make(small_demo, protocol)
    proto = get_protocol(protocol)
    obs, info = env.reset(seed=1)
    assert obs in env.observation_space and info["messages"] == obs
    assert obs[0] == {"role": "system", "content": proto.system_prompt}
    assert [m["role"] for m in obs] == ["system", "user"]
    text = obs[1]["content"][-1]["text"]
    sample = env.get_wrapper_attr("sample")
    assert text == proto.first_user_text(f"{sample.target} in {sample.modality}")
    (image,) = message_images(obs)
    assert image.size == (proto.image_rule.side, proto.image_rule.side)
    # turn 1 shows the plain image: no green-tinted pixel that the sample does not have
    first = np.asarray(image, np.int16)
    obs, _, _, _, info = env.step(box_reply(env))
    history = ["user", "assistant"] if proto.history_turns != 0 else []
    assert [m["role"] for m in obs] == ["system", *history, "user"]
    assert obs[-1]["content"][-1]["text"] == proto.later_user_text(
        f"{sample.target} in {sample.modality}"
    )
    second = np.asarray(message_images(obs)[-1], np.int16)
    assert info["parsed"]["error"] is None and info["executed"]
    green = (second[..., 1] - second[..., 0]) - (first[..., 1] - first[..., 0])
    assert (green > 20).sum() > 50, "the overlay after a box must tint the mask green"
    env.close()


def test_data_url_images_carry_the_same_pixels(small_demo: Dataset) -> None:
    pil_env = make(small_demo, "medsam_agent", images="pil")
    url_env = make(small_demo, "medsam_agent", images="data_url")
    pil_obs, _ = pil_env.reset(seed=3)
    url_obs, _ = url_env.reset(seed=3)
    pil_image = pil_obs[1]["content"][0]["image"]
    url = url_obs[1]["content"][0]["image_url"]["url"]
    assert isinstance(pil_image, Image.Image) and url.startswith("data:image/png;base64,")
    assert np.array_equal(np.asarray(pil_image), np.asarray(from_data_url(url)))


def test_non_str_reply_raises_and_changes_nothing(small_demo: Dataset) -> None:
    env = make(small_demo, "medsam_agent")
    obs, _ = env.reset(seed=0)
    for bad in (None, 3, {"kind": 0}, b"<tool_call>"):
        with pytest.raises(TypeError, match="str"):
            env.step(bad)  # type: ignore[arg-type]
    assert env.get_wrapper_attr("turn") == 0
    assert ChatMessages().contains(obs)


@pytest.mark.parametrize(
    ("protocol", "survives"), [("medsam_agent", 1), ("medsam_agent_rl", 0), ("segagent", None)]
)
def test_malformed_reply_takes_the_invalid_action_path(
    small_demo: Dataset, protocol: str, survives: int | None
) -> None:
    proto = get_protocol(protocol)
    survives = proto.retries if survives is None else survives
    env = make(small_demo, protocol, max_turns=5)
    env.reset(seed=2)
    mask_before = env.get_wrapper_attr("current_mask")
    for attempt in range(survives + 1):
        obs, reward, terminated, truncated, info = env.step("I think the tumour is on the left.")
        assert info["format_error"] and info["invalid_action"] == info["format_error"]
        assert info["parsed"]["call"] is None and not info["executed"]
        assert info["reward_terms"]["invalid_action"] < 0 and reward < 0
        # MedSAM-Agent's EVAL retries spend no turn of the budget; the others' do
        assert info["turn"] == (0 if not proto.retries_spend_turns else attempt + 1)
        assert np.array_equal(env.get_wrapper_attr("current_mask"), mask_before)
        assert terminated == (attempt == survives), "the protocol's retry rule decides"
        assert obs[-1]["role"] == ("assistant" if terminated else "user")
    # a well-formed reply in between resets the count of malformed replies in a row
    if survives:
        env.reset(seed=2)
        env.step("no call")
        env.step(box_reply(env))
        _, _, terminated, _, _ = env.step("still no call")
        assert not terminated


def test_reject_scores_the_format_terms(small_demo: Dataset) -> None:
    env = make(small_demo, "medsam_agent_rl", reward={"dice_gain": 1.0, "format_error": -1.0})
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step('<tool_call>{"name": "fly", "arguments": {}}')
    assert terminated and reward == -1.0
    assert info["reward_terms"] == {"dice_gain": 0.0, "format_error": -1.0}


def test_rl_protocol_does_not_execute_the_last_reply(small_demo: Dataset) -> None:
    proto = get_protocol("medsam_agent_rl")
    assert not proto.execute_last_turn
    env = make(small_demo, "medsam_agent_rl")
    env.reset(seed=4)
    reply = box_reply(env)
    for turn in range(1, proto.max_turns + 1):
        obs, _, terminated, truncated, info = env.step(reply)
        assert info["parsed"]["error"] is None
        assert info["executed"] == (turn < proto.max_turns)
    assert truncated and not terminated and info["num_boxes"] == 1
    # full history: every turn's image is still in the conversation
    assert len(message_images(obs)) == proto.max_turns


def test_eval_protocol_keeps_the_last_turns_only(small_demo: Dataset) -> None:
    proto = get_protocol("medsam_agent")
    assert proto.history_turns is not None
    env = make(small_demo, "medsam_agent", max_turns=proto.history_turns + 3)
    env.reset(seed=5)
    reply = box_reply(env)
    for _ in range(proto.history_turns + 2):
        obs, *_ = env.step(reply)
    kept = [m for m in obs if m["role"] == "assistant"]
    assert len(kept) == proto.history_turns
    assert len(message_images(obs)) == proto.history_turns + 1


@pytest.mark.slow
@pytest.mark.parametrize("frame", ["canvas", "protocol"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_expert_actions_replayed_as_text_give_the_same_masks(
    small_demo: Dataset, protocol: str, frame: str
) -> None:
    """HybridExpert's actions → protocol text → the text env: the masks of the structured env.

    Protocols address pixels of the sample; a canvas finer than the sample (the 128-pixel
    nuclei crop on a 256 canvas) has positions between them that no reply can name, so the
    canvas here is no finer than the smallest sample (128), and what is left is the grid.
    ``frame="protocol"``: both envs run with the protocol's own env options (MedSAM-Agent's:
    the sample's own resolution, raw box corners, its prompting rule), as ``MedSeg-Text-v0``
    builds them.
    """
    proto = get_protocol(protocol)
    budget = proto.max_turns
    executed = budget if proto.execute_last_turn else budget - 1
    size = min(min(s.mask.shape) for s in small_demo)
    options: dict = {"max_turns": budget, "obs_size": size}
    if frame == "protocol":
        options = {**proto.env_options(), **options}
    structured = MedSegEnv(dataset=small_demo, **options)
    text_env = MedSegTextEnv(MedSegEnv(dataset=small_demo, **options), proto)
    expert = HybridExpert(seed=0)
    compared = 0
    for index in range(len(small_demo)):
        obs, info = structured.reset(seed=index, options={"sample_index": index})
        text_env.reset(seed=index, options={"sample_index": index})
        for _ in range(executed):
            action = expert.act(obs, info, structured)
            reply = text_env.render_action(action)
            obs, _, terminated, truncated, info = structured.step(action)
            _, _, t_term, t_trunc, t_info = text_env.step(reply)
            assert t_info["parsed"]["error"] is None, reply
            dice, _ = dice_iou(structured.current_mask, text_env.get_wrapper_attr("current_mask"))
            if structured.current_mask.any():
                assert dice >= 0.99, (protocol, index, reply, dice)
                compared += 1
            assert t_term == terminated
            if terminated or truncated:
                break
    assert compared >= len(small_demo)
