"""The TRL adapter (``medseg_agents.training.trl``): the tool methods against the env, and one
real GRPO step of TRL 1.16 on the tiny Qwen3-VL, through the tool loop and through MedSAM-Agent's
exact rollout (``rollout_func``).

Every episode here is on one CT sample, so the segmenter encodes one image. The GRPO steps
start from the tiny model after a few SFT steps on oracle boxes for that sample: a random
model never writes a tool call, every rollout then scores 0, and GRPO's advantages (and
gradient) are zero; a model that writes boxes samples different boxes with different Dice.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("trl", reason="the TRL adapter needs trl (pip install trl==1.16.0)")

from medseg_testing import gt_box_action  # noqa: E402

from medseg_agents.simulation import oracle_box_action  # noqa: E402
from medseg_agents.training.learn_text import sft  # noqa: E402
from medseg_agents.training.trl.tokens import ChatLayout, Turns  # noqa: E402
from medseg_agents.training.trl.trl_env import (  # noqa: E402
    EPISODE_OVER_TEXT,
    MedSegToolEnv,
    dice_reward,
    format_reward,
    grpo_rows,
    render_call,
    reward_setup,
    tool_env_factory,
    tool_rounds,
    tool_system_prompt,
)
from medseg_env.data import Dataset, demo_dataset  # noqa: E402
from medseg_env.text.medsam_agent import TOOLS, MedSAMAgentRLProtocol  # noqa: E402
from medseg_env.wrappers.text_env import make_text_env  # noqa: E402

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
TOOL_NAMES = ["add_bbox", "add_point", "stop_action"]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One thread: this tiny model gains nothing from more, and on a busy machine OpenMP's
    waiting threads made a training step 45 times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_ct() -> Dataset:
    sample = next(s for s in demo_dataset() if s.modality == "CT")
    return Dataset([sample], name="one-ct")


@pytest.fixture(scope="module")
def factory(one_ct: Dataset):
    return tool_env_factory(dataset=one_ct)


@pytest.fixture
def env(factory) -> MedSegToolEnv:
    return factory()


def _good_box(env: MedSegToolEnv) -> list[int]:
    call = env.text_env.to_call(gt_box_action(env.text_env))
    return list(call.arguments["bbox_2d"])


# ---------------------------------------------------------------------- the tools
def test_trl_finds_the_three_tools_with_medsam_agents_schemas() -> None:
    from transformers.utils import get_json_schema

    # TRL's discovery: the public functions of the class, minus reset and get_reward
    public = [
        name
        for name, _ in inspect.getmembers(MedSegToolEnv, predicate=inspect.isfunction)
        if name not in ("reset", "get_reward") and not name.startswith("_")
    ]
    assert public == TOOL_NAMES
    for name, released in zip(TOOL_NAMES, TOOLS, strict=True):
        schema = get_json_schema(getattr(MedSegToolEnv, name))
        expected = _without(released, {"minItems", "maxItems"})
        if name == "stop_action":
            expected["function"]["parameters"].pop("required")
        assert schema == expected


def _without(value: Any, keys: set[str]) -> Any:
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    return value


def test_reset_returns_the_first_user_content(env: MedSegToolEnv) -> None:
    row = grpo_rows([0], seeds=[5])[0]
    assert row["prompt"][0]["content"] == tool_system_prompt()
    content = env.reset(**row)
    assert [p["type"] for p in content] == ["image", "text"]
    assert content[0]["image"].size == (512, 512)
    assert content[1]["text"] == env.text_env.protocol.first_user_text("tumour in CT")
    assert env.text_env.unwrapped.turn == 0 and not env.episode_over


def test_add_bbox_steps_the_env_and_returns_the_overlay(env: MedSegToolEnv) -> None:
    first = env.reset(sample_index=0, seed=0)
    box = _good_box(env)
    result = env.add_bbox(bbox_2d=box)
    assert [p["type"] for p in result] == ["image", "text"]
    assert result[1]["text"] == env.text_env.protocol.later_user_text()
    before, after = (np.asarray(c[0]["image"]) for c in (first, result))
    assert (before != after).any()  # the green overlay
    assert env.info["parsed"]["call"] == {"name": "add_bbox", "arguments": {"bbox_2d": box}}
    assert env.dice > 0.5 and env.format_ok and not env.episode_over
    assert env.stop_action() == [{"type": "text", "text": EPISODE_OVER_TEXT}]
    assert env.episode_over
    # a call after the end is answered, never run
    assert env.add_point(point_2d=[1, 1], point_type="positive")[0]["text"] == EPISODE_OVER_TEXT


def test_get_reward_is_the_text_envs_reward(env: MedSegToolEnv, one_ct: Dataset) -> None:
    env.reset(sample_index=0, seed=3)
    box = _good_box(env)
    env.add_bbox(bbox_2d=box)
    centre = [(box[0] + box[2]) // 2, (box[1] + box[3]) // 2]
    env.add_point(point_2d=centre, point_type="positive")
    env.stop_action()
    # the same replies typed into a plain MedSeg-Text-v0
    plain = make_text_env("medsam_agent_rl", reward="medsam_agent", dataset=one_ct)
    plain.reset(seed=3, options={"sample_index": 0})
    total = 0.0
    for name, arguments in (
        ("add_bbox", {"bbox_2d": box}),
        ("add_point", {"point_2d": centre, "point_type": "positive"}),
        ("stop_action", {}),
    ):
        _, reward, *_ = plain.step(render_call(name, arguments))
        total += reward
    assert env.get_reward() == pytest.approx(total)
    assert env.get_reward() == pytest.approx(env.info["reward_terms"]["medsam_agent"])
    assert env.get_reward() > 0.2  # format (0.2) and a good box


@pytest.mark.parametrize(
    ("name", "arguments", "reason"),
    [
        ("add_bbox", {"bbox_2d": [10, 20, 30]}, "bbox_2d needs 4 numbers"),
        ("add_bbox", {"bbox_2d": [10, 20, 3000, 40]}, "outside 0..999"),
        ("add_bbox", {"bbox_2d": [40, 20, 10, 30]}, "x1 < x2"),
        ("add_bbox", {"box": [10, 20, 30, 40]}, "add_bbox needs bbox_2d"),
        ("add_point", {"point_2d": [5, 5], "point_type": "maybe"}, "point_type must be"),
        ("add_point", {"point_2d": ["5", 5], "point_type": "positive"}, "is not a number"),
    ],
)
def test_malformed_arguments_take_the_invalid_path(
    env: MedSegToolEnv, name: str, arguments: dict[str, Any], reason: str
) -> None:
    env.reset(sample_index=0, seed=0)
    result = getattr(env, name)(**arguments)
    # MedSAM-Agent's RL protocol: a call the tool rejects ends the episode
    assert result == [{"type": "text", "text": EPISODE_OVER_TEXT}]
    assert reason in env.info["format_error"]
    assert env.info["invalid_action"] == env.info["format_error"]
    assert env.num_malformed == 1 and not env.format_ok
    # compute_score reads the reply's text: a block naming add_* is an interaction (format
    # 0.5, no stop), and no mask was made: 0.2 * 0.5
    assert env.get_reward() == pytest.approx(0.1) == env.info["reward_terms"]["medsam_agent"]


def test_a_last_reply_with_no_call_is_charged_by_the_reward_functions(
    env: MedSegToolEnv,
) -> None:
    env.reset(sample_index=0, seed=0)
    box = _good_box(env)
    result = env.add_bbox(bbox_2d=box)
    call = {"type": "function", "function": {"name": "add_bbox", "arguments": {"bbox_2d": box}}}
    completion = [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "name": "add_bbox", "content": result},
        {"role": "assistant", "content": "The mask looks right."},  # TRL found no call
    ]
    assert format_reward([completion], [env]) == [0.0]
    assert env.info["format_error"] == "no <tool_call> found" and env.episode_over
    assert dice_reward([completion], [env]) == [pytest.approx(env.dice)]
    assert env.dice > 0.5
    assert env.get_reward() == pytest.approx(env.info["reward_terms"]["medsam_agent"])
    assert 0.0 < env.get_reward() <= 0.8  # no format score


def test_an_open_episode_is_closed_with_the_envs_stop(env: MedSegToolEnv) -> None:
    env.reset(sample_index=0, seed=0)
    box = _good_box(env)
    env.add_bbox(bbox_2d=box)
    call = {"type": "function", "function": {"name": "add_bbox", "arguments": {"bbox_2d": box}}}
    # TRL dropped the tool result (max_completion_length) after the env ran the call
    completion = [{"role": "assistant", "content": "", "tool_calls": [call]}]
    assert format_reward([completion], [env]) == [1.0]
    assert env.episode_over and env.num_replies == 1
    assert env.get_reward() == pytest.approx(env.info["reward_terms"]["medsam_agent"])
    assert env.get_reward() > 0.2  # format kept


def test_tool_rounds_give_the_protocols_replies() -> None:
    assert tool_rounds("medsam_agent_rl") == 4  # 5 replies, the 5th never executed
    assert tool_rounds("medsam_agent") == 5


# ---------------------------------------------------------------------- GRPO steps
SHORT_SYSTEM = "Segment the target with the tools."


class ShortRL(MedSAMAgentRLProtocol):
    """MedSAM-Agent's RL protocol with a short system prompt: shorter sequences, faster test."""

    system_prompt = SHORT_SYSTEM


def _oracle_replies(env: MedSegToolEnv, count: int, jitter: float, seed: int = 0) -> list[str]:
    """Replies of near-oracle first boxes for the env's current episode."""
    text = env.text_env
    oracle = text.get_wrapper_attr("oracle")
    rng = np.random.default_rng(seed)
    replies = []
    for _ in range(count):
        action = oracle_box_action(oracle.ground_truth, rng, jitter_frac=jitter, min_side=2.0)
        replies.append(text.protocol.render(text.to_call(action)))
    return replies


@pytest.fixture(scope="module")
def warm_model_dir(tiny_vlm_dir: Path, factory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model after 96 SFT steps on four jittered oracle first boxes in the tool loop's
    layout (with the short system prompt): it then writes box calls, with varied boxes (and
    some broken ones), so that the sampled replies score differently."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vlm_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir, dtype=torch.float32)
    env = factory()
    tools = ChatLayout(processor, tools=[env.add_bbox, env.add_point, env.stop_action])
    first = env.reset(sample_index=0, seed=0)
    data: list[Turns] = []
    for reply in _oracle_replies(env, 4, jitter=0.3):
        turns = tools.prompt(
            [{"role": "system", "content": SHORT_SYSTEM}, {"role": "user", "content": first}]
        )
        tools.add_reply(turns, reply)
        data.append(turns)
    torch.manual_seed(0)
    sft(
        model,
        tools,
        data,
        max_steps=96,
        batch_size=1,
        lr=1e-2,
        eval_every=10**6,
        evaluate=lambda step: 0.0,
        target=2.0,
        warmup=3,
    )
    out = tmp_path_factory.mktemp("warm-tiny")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _grpo_config(out: Path, **overrides: Any) -> Any:
    from trl import GRPOConfig

    options: dict[str, Any] = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        num_generations=4,
        max_steps=1,
        learning_rate=1e-3,
        temperature=1.0,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=0,
        disable_tqdm=True,
    )
    options.update(overrides)
    return GRPOConfig(**options)


def _load(model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    return model, processor


def _spy_on_the_loss(trainer: Any) -> dict[str, Any]:
    """What the loss's forward pass gets (the whole batch: one generation, one step)."""
    seen: dict[str, Any] = {}
    compute_loss = trainer._compute_loss

    def spy(model: Any, inputs: dict[str, Any]) -> Any:
        seen.update(inputs)
        return compute_loss(model, inputs)

    trainer._compute_loss = spy
    return seen


def _image_tokens_match_pixels(seen: dict[str, Any], image_pad_id: int) -> int:
    ids = torch.cat([seen["prompt_ids"], seen["completion_ids"]], dim=1)
    tokens = int((ids == image_pad_id).sum())
    assert tokens == int((seen["mm_token_type_ids"] == 1).sum())
    assert tokens == int(seen["image_grid_thw"].prod(-1).sum()) // 4  # 2×2 merge
    assert len(seen["image_grid_thw"]) == sum(seen["num_images"])
    return tokens


def test_one_grpo_step_with_the_tool_env(warm_model_dir: Path, factory, tmp_path: Path) -> None:
    from datasets import Dataset as HFDataset
    from trl import GRPOTrainer

    model, processor = _load(warm_model_dir)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    funcs, weights = reward_setup()
    config = _grpo_config(
        tmp_path, max_completion_length=160, max_tool_calling_iterations=1, reward_weights=weights
    )
    trainer = GRPOTrainer(
        model=model,
        processing_class=processor,
        reward_funcs=funcs,
        args=config,
        train_dataset=HFDataset.from_list(grpo_rows([0], seeds=[0], system=SHORT_SYSTEM)),
        environment_factory=factory,
    )
    seen = _spy_on_the_loss(trainer)
    trainer.train()
    log = trainer.state.log_history[0]
    envs = trainer.environments
    assert len(envs) == 4 and all(e.episode_over for e in envs)
    assert all(e.num_replies >= 1 for e in envs)  # real replies went through the env
    assert log["reward"] == pytest.approx(np.mean([e.episode_reward for e in envs]), abs=1e-5)
    dice = np.mean([e.dice for e in envs])
    assert log["rewards/dice_reward/mean"] == pytest.approx(dice, abs=1e-5)
    fmt = np.mean([e.format_ok for e in envs])
    assert log["rewards/format_reward/mean"] == pytest.approx(fmt, abs=1e-5)
    assert log["reward_std"] > 0  # the sampled replies scored differently
    # the tool results' overlays reached the loss's forward pass with their pixels
    _image_tokens_match_pixels(seen, processor.tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    assert sum(seen["num_images"]) > len(envs)
    changed = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert changed, "GRPO left the weights as they were"


def test_one_grpo_step_with_medsam_agents_exact_rollout(
    tiny_vlm_dir: Path, factory, one_ct: Dataset, tmp_path: Path
) -> None:
    """The exact loop: overlays as user messages, their pixels in the training forward pass.

    The random tiny model never writes a call, so each rollout's first reply is a scripted
    near-oracle box (different per rollout); the later replies are the model's own.
    """
    from datasets import Dataset as HFDataset

    from medseg_agents.training.trl.trl_rollout import MedSAMAgentGRPOTrainer, rollout_rows

    model, processor = _load(tiny_vlm_dir)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    env = factory()
    env.reset(sample_index=0, seed=0)
    scripted = _oracle_replies(env, 4, jitter=0.3, seed=1)
    trainer = MedSAMAgentGRPOTrainer(
        model=model,
        processing_class=processor,
        args=_grpo_config(tmp_path, max_completion_length=160, reward_weights=[1.0, 0.0, 0.0]),
        train_dataset=HFDataset.from_list(rollout_rows([0], seeds=[0])),
        protocol=ShortRL(),
        env_options={"dataset": one_ct},
        max_new_tokens=24,
    )
    layout = trainer._layout
    generate = layout.generate
    calls: list[int] = []

    def first_reply_scripted(model_: Any, seqs: Any, **options: Any) -> list[list[int]]:
        calls.append(len(seqs))
        if len(calls) == 1:
            return [layout.reply_ids(reply) for reply in scripted[: len(seqs)]]
        return generate(model_, seqs, **options)

    layout.generate = first_reply_scripted  # type: ignore[method-assign]
    seen = _spy_on_the_loss(trainer)
    trainer.train()
    log = trainer.state.log_history[0]
    envs = trainer._env_pool
    assert calls[0] == 4 and len(calls) >= 2  # the model answered the overlays
    assert len(envs) == 4 and all(e.unwrapped.episode_over for e in envs)
    # each overlay came back as a user message and reached the forward pass with its pixels
    tokens = _image_tokens_match_pixels(
        seen, processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    )
    assert tokens > 0 and seen["num_images"] == [2, 2, 2, 2]
    completions = processor.tokenizer.batch_decode(seen["completion_ids"])
    assert all("<|im_start|>user\n<|vision_start|>" in c for c in completions)
    assert not any("<tool_response>" in c for c in completions)
    # the env's tokens are left out of the loss
    model_tokens = int((seen["tool_mask"] * seen["completion_mask"]).sum())
    assert 0 < model_tokens < int(seen["completion_mask"].sum())
    assert log["reward_std"] > 0  # different boxes, different Dice
    changed = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert changed, "GRPO left the weights as they were"
