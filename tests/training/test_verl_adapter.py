"""The verl 0.9.1 adapter on a real ``MedSeg-Text-v0`` env (bundled demo, litemedsam_clicks).

Needs verl, which the main venv does not have (it pins transformers 5.10): build the overlay once
and put it first on the path::

    bash scripts/verl_env.sh
    PYTHONPATH=$PWD/.verl-env python -m pytest tests/training/test_verl_adapter.py -q

- the three tools (loaded from ``agents/training/verl/configs/medseg_tools.yaml`` by verl's own
  loader):
  ``create`` / ``execute`` / ``calc_reward`` / ``release`` against a reference text env fed the
  same replies: same step rewards, the overlay image pixel for pixel, the episode reward;
  malformed arguments; verl's ``tool_agent`` path (an instance per call);
- the parquet rows through verl's ``RLHFDataset``;
- the agent loop (``MedSegAgentLoop``) run end to end on CPU with the tiny Qwen3-VL's real
  tokenizer, processor and chat template and verl's Continuous Token builder. The LLM server is
  the one stand-in: ``ScriptedServer`` answers each ``generate`` with the tokens of a scripted
  reply (an oracle's box, click, stop; five clicks; a malformed reply) and records the prompts
  and images it was sent;
- the GRPO config composed by Hydra over verl's ``ppo_trainer``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip(
    "verl",
    reason="verl 0.9.1 is not importable here: build the overlay with `bash scripts/verl_env.sh` "
    "and run with PYTHONPATH=.verl-env",
)

from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402
from verl.experimental.agent_loop.agent_loop import (  # noqa: E402
    DictConfigWrap,
    ToolListWrap,
    _agent_loop_registry,
)
from verl.tools.tool_registry import initialize_tools_from_config  # noqa: E402
from verl.utils.dataset.rl_dataset import RLHFDataset  # noqa: E402
from verl.workers.rollout.replica import TokenOutput  # noqa: E402

from medseg_agents.training.verl import verl_data  # noqa: E402
from medseg_agents.training.verl import verl_tools as vt  # noqa: E402
from medseg_agents.training.verl.verl_agent_loop import MedSegAgentLoop  # noqa: E402
from medseg_env import actions as A  # noqa: E402
from medseg_env.segmenters import shared_segmenter  # noqa: E402
from medseg_env.text import TOOL_NAMES, get_protocol  # noqa: E402
from medseg_env.text.medsam_agent import TOOLS  # noqa: E402
from medseg_env.wrappers.text_env import MedSegTextEnv, make_text_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "agents" / "training" / "verl" / "configs"
SPEC = vt.EpisodeSpec(dataset="demo", sample_index=0, seed=0)
MALFORMED_PROSE = "The tumour is in the upper left part of the image."
UNKNOWN_TOOL = '<tool_call>\n{"name": "add_polygon", "arguments": {"points": [1, 2]}}\n</tool_call>'


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---------------------------------------------------------------------- references
def reference_env(spec: vt.EpisodeSpec) -> MedSegTextEnv:
    """A fresh text env of ``spec`` (the process's segmenter, already loaded by a session)."""
    segmenter = shared_segmenter(spec.segmenter)
    env = make_text_env(
        spec.protocol, images="pil", reward=spec.reward, dataset=spec.dataset, segmenter=segmenter
    )
    env.reset(seed=spec.seed, options=spec.reset_options())
    return env


def oracle_replies(env: MedSegTextEnv) -> list[str]:
    """A box around the target, a positive click inside it, stop: as reply texts."""
    gt = np.asarray(env.unwrapped.ground_truth)
    size = env.unwrapped.obs_size
    ys, xs = np.nonzero(gt)
    box = A.box(xs.min() / size, ys.min() / size, (xs.max() + 1) / size, (ys.max() + 1) / size)
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    click = A.click((xs[k] + 0.5) / size, (ys[k] + 0.5) / size, positive=True)
    return [env.render_action(box), env.render_action(click), env.render_action(A.stop())]


def click_replies(env: MedSegTextEnv, count: int) -> list[str]:
    return oracle_replies(env)[1:2] * count


def reference_run(spec: vt.EpisodeSpec, replies: list[str]) -> list[tuple[float, Any, Any]]:
    """``(reward, messages, info)`` of each step of a fresh env fed ``replies`` until it ends."""
    env = reference_env(spec)
    out = []
    for reply in replies:
        messages, reward, terminated, truncated, info = env.step(reply)
        out.append((float(reward), messages, info))
        if terminated or truncated:
            break
    return out


def image_of(message: dict[str, Any]) -> Image.Image:
    return next(p["image"] for p in message["content"] if p["type"] == "image")


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tools() -> dict[str, vt.MedSegTool]:
    """The three tools, built by verl's loader from the tool config YAML."""
    loaded = initialize_tools_from_config(str(CONFIG_DIR / "medseg_tools.yaml"))
    return {tool.name: tool for tool in loaded}


@pytest.fixture(scope="module")
def replies_of_sample() -> dict[str, list[str]]:
    """The oracle's replies on ``SPEC``'s sample (one reference reset)."""
    vt.open_text_env(SPEC)  # loads the shared segmenter once
    env = reference_env(SPEC)
    return {"oracle": oracle_replies(env), "clicks": click_replies(env, 5)}


@pytest.fixture(autouse=True)
def _no_leaked_instances() -> Any:
    yield
    assert vt.live_instances() == []


# ---------------------------------------------------------------------- the tool config
def test_tool_config_builds_the_three_tools_with_the_released_schemas(tools):
    assert sorted(tools) == sorted(TOOL_NAMES)
    assert isinstance(tools["add_bbox"], vt.AddBboxTool)
    assert isinstance(tools["add_point"], vt.AddPointTool)
    assert isinstance(tools["stop_action"], vt.StopActionTool)
    released = {t["function"]["name"]: t["function"] for t in TOOLS}
    for name, tool in tools.items():
        schema = tool.get_openai_tool_schema().model_dump(exclude_none=True)["function"]
        assert schema["description"] == released[name]["description"]
        assert schema["parameters"]["required"] == released[name]["parameters"]["required"]
        assert list(schema["parameters"]["properties"]) == list(
            released[name]["parameters"]["properties"]
        )
        # the YAML's schema is the released one, key for key
        assert tool.tool_schema.model_dump(exclude_none=True) == type(tool)(
            {"type": "native"}, None
        ).tool_schema.model_dump(exclude_none=True)


# ---------------------------------------------------------------------- the tools
def test_tools_step_the_env_as_the_env_steps_itself(tools, replies_of_sample):
    replies = replies_of_sample["oracle"]
    reference = reference_run(SPEC, replies)
    protocol = get_protocol(SPEC.protocol)

    async def play() -> list[tuple[Any, float, dict[str, Any]]]:
        iid = "test-tools"
        for tool in tools.values():  # every tool registers the same episode: one env
            assert (await tool.create(iid, create_kwargs=SPEC.to_kwargs()))[0] == iid
        first = image_of(vt.get_session(iid).messages[-1])
        out = []
        for reply in replies:
            call = protocol.parse(reply).to_dict()["call"]
            out.append(await tools[call["name"]].execute(iid, call["arguments"]))
        out.append(await tools["stop_action"].calc_reward(iid))
        out.append(first)
        await tools["add_point"].release(iid)
        with pytest.raises(KeyError, match="create"):
            await tools["add_bbox"].execute(iid, {"bbox_2d": [1, 2, 3, 4]})
        return out

    *steps, total, plain = run(play())
    assert len(steps) == len(reference) == 3
    for (response, reward, metrics), (ref_reward, ref_messages, ref_info) in zip(
        steps, reference, strict=True
    ):
        assert reward == ref_reward
        assert metrics["dice"] == ref_info["dice"] and metrics["format_error"] is None
        image = response.image[0]
        assert isinstance(image, Image.Image) and image.size == (512, 512)
        assert image.mode == "RGB"
        if ref_messages[-1]["role"] == "user":  # the episode goes on: the env's next turn
            assert np.array_equal(np.asarray(image), np.asarray(image_of(ref_messages[-1])))
            assert response.text == protocol.later_user_text()
        else:
            assert response.text == vt.EPISODE_OVER_TEXT
    # the overlay is the plain view tinted green where the mask is
    shown, base = np.asarray(steps[0][0].image[0], int), np.asarray(plain, int)
    changed = np.any(shown != base, axis=-1)
    assert 0.001 < changed.mean() < 0.5
    assert (shown[changed, 1] - base[changed, 1]).mean() > 0
    assert (shown[changed, 0] - base[changed, 0]).mean() < 0
    assert (shown[changed, 2] - base[changed, 2]).mean() < 0
    # the final overlay shows the same mask as the last overlay (stop keeps the mask)
    assert np.array_equal(np.asarray(steps[2][0].image[0]), np.asarray(steps[1][0].image[0]))
    # the medsam_agent reward: paid once, when the episode ends
    assert [r for _, r, _ in steps[:2]] == [0.0, 0.0]
    assert total == pytest.approx(sum(r for r, _, _ in reference)) == steps[2][1]
    assert reference[-1][2]["reward_terms"] == {"medsam_agent": pytest.approx(total)}
    assert total > 0.2  # well-formed replies (0.2) and a mask on the target (more)
    assert reference[-1][2]["dice"] > 0.3


def test_a_malformed_call_ends_the_episode_with_the_envs_charge(tools):
    bad = {"bbox_2d": [10, 20, 30]}
    (ref_reward, _, ref_info), *_ = reference_run(SPEC, [vt.render_call("add_bbox", bad)])

    async def play() -> tuple[Any, Any, float]:
        iid = "test-malformed"
        await tools["add_bbox"].create(iid, create_kwargs=SPEC.to_kwargs())
        first = await tools["add_bbox"].execute(iid, bad)
        again = await tools["add_point"].execute(
            iid, {"point_2d": [5, 5], "point_type": "positive"}
        )
        total = await tools["add_bbox"].calc_reward(iid)
        await tools["add_bbox"].release(iid)
        return first, again, total

    (response, reward, metrics), again, total = run(play())
    assert response.image is None
    assert response.text.startswith("Error: bbox_2d needs 4 numbers, got 3.")
    assert metrics["format_error"] == ref_info["format_error"] and metrics["terminated"]
    assert reward == ref_reward == total
    assert ref_info["reward_terms"]["medsam_agent"] == pytest.approx(ref_reward)
    assert again[0].text == vt.EPISODE_OVER_TEXT and again[1] == 0.0


@pytest.mark.parametrize(
    ("name", "arguments", "problem"),
    [
        ("add_point", {"point_2d": [1, 2], "point_type": "maybe"}, "point_type"),
        ("add_point", {"point_2d": [1000, 5], "point_type": "positive"}, "outside 0..999"),
        ("add_point", {"point_2d": ["1", 2], "point_type": "positive"}, "not a number"),
        ("add_point", {"point_2d": [True, 2], "point_type": "positive"}, "not a number"),
        ("add_point", {"point_type": "positive"}, "needs point_2d"),
        ("add_bbox", [1, 2, 3, 4], "must be a JSON object"),
        ("add_bbox", {"bbox_2d": [30, 20, 10, 40]}, "x1 < x2"),
        ("add_bbox", {"bbox_2d": [1.5, float("nan"), 3, 4]}, "not finite"),
    ],
)
def test_rendered_malformed_arguments_give_no_call(name, arguments, problem):
    """What ``execute`` sends for bad arguments: the protocol finds no call (the env rejects)."""
    parsed = get_protocol("medsam_agent_rl").parse(vt.render_call(name, arguments))
    assert parsed.call is None and problem in (parsed.error or "")


def test_episode_spec_checks_its_keys():
    assert vt.EpisodeSpec.from_kwargs(SPEC.to_kwargs()) == SPEC
    assert vt.EpisodeSpec.from_kwargs({"sample_index": 3, "seed": None}).seed is None
    opts = vt.EpisodeSpec.from_kwargs({"env_options": {"obs_size": 128}})
    assert opts.options() == {"obs_size": 128}
    with pytest.raises(TypeError, match="unknown episode keys"):
        vt.EpisodeSpec.from_kwargs({"sample": 3})
    with pytest.raises(TypeError, match="sample_index"):
        vt.EpisodeSpec.from_kwargs({"sample_index": 1.5})
    with pytest.raises(TypeError, match="env_options"):
        vt.EpisodeSpec.from_kwargs({"env_options": "[1]"})
    with pytest.raises(ValueError, match="another episode"):
        vt.register_episode("twice", SPEC)
        try:
            vt.register_episode("twice", vt.EpisodeSpec(sample_index=1))
        finally:
            vt.release_episode("twice")


def test_verl_tool_agent_keeps_one_env_per_trajectory(tools, replies_of_sample):
    """verl's ``ToolAgentLoop`` creates and releases an instance around every call."""
    box, click, _ = replies_of_sample["oracle"]
    protocol = get_protocol(SPEC.protocol)
    reference = reference_run(SPEC, [box, click])

    async def play() -> list[tuple[Any, float, dict[str, Any]]]:
        agent_data = SimpleNamespace()
        out = []
        for reply in (box, click):
            call = protocol.parse(reply).to_dict()["call"]
            tool = tools[call["name"]]
            iid, _ = await tool.create(create_kwargs=SPEC.to_kwargs())
            out.append(await tool.execute(iid, call["arguments"], agent_data=agent_data))
            await tool.release(iid)
        assert isinstance(getattr(agent_data, vt.SESSION_ATTR), vt.MedSegSession)
        return out

    steps = run(play())
    assert [m["turn"] for _, _, m in steps] == [1, 2]
    for (response, _, metrics), (_, ref_messages, ref_info) in zip(steps, reference, strict=True):
        assert metrics["dice"] == ref_info["dice"]
        assert np.array_equal(np.asarray(response.image[0]), np.asarray(image_of(ref_messages[-1])))


# ---------------------------------------------------------------------- the data rows
@pytest.fixture(scope="module")
def dataset(tiny_vlm_dir, tmp_path_factory) -> Any:
    """verl's ``RLHFDataset`` on two rows written by ``verl_data`` (the tiny model's processor)."""
    from transformers import AutoProcessor, AutoTokenizer

    folder = tmp_path_factory.mktemp("verl-data")
    assert verl_data.main(["--out", str(folder), "--limit", "2", "--val-dataset", ""]) == 0
    tokenizer = AutoTokenizer.from_pretrained(tiny_vlm_dir)
    processor = AutoProcessor.from_pretrained(tiny_vlm_dir)
    config = OmegaConf.create(
        {
            "prompt_key": "prompt",
            "image_key": "images",
            "max_prompt_length": 8192,
            "filter_overlong_prompts": False,
            "return_raw_chat": True,
            "cache_dir": str(folder / "cache"),
        }
    )
    ds = RLHFDataset(str(folder / "train.parquet"), tokenizer, config, processor)
    return SimpleNamespace(ds=ds, tokenizer=tokenizer, processor=processor, config=config)


def test_rows_load_in_verls_dataset(dataset):
    assert len(dataset.ds) == 2
    row = dataset.ds[1]
    assert row["agent_name"] == "medseg_agent" and row["index"] == 1
    spec = vt.EpisodeSpec.from_kwargs(row["tools_kwargs"]["add_point"]["create_kwargs"])
    assert spec == vt.EpisodeSpec(dataset="demo", sample_index=1, sample_id=spec.sample_id, seed=0)
    assert set(row["tools_kwargs"]) == set(TOOL_NAMES)
    system, user = row["raw_prompt"]
    protocol = get_protocol("medsam_agent_rl")
    # verl turns every string content into parts once a row has images
    assert system == {
        "role": "system",
        "content": [{"type": "text", "text": protocol.system_prompt}],
    }
    assert [p["type"] for p in user["content"]] == ["image", "text"]
    assert user["content"][1]["text"].startswith("The target to be segmented is: ")
    assert user["content"][0]["image"].size == (512, 512)


# ---------------------------------------------------------------------- the agent loop
class ScriptedServer:
    """Stands in for verl's LLM server: each ``generate`` returns the next scripted reply.

    The reply's tokens come from the real (tiny) tokenizer, ended by ``<|im_end|>`` as a Qwen
    model ends a turn; every request's prompt ids and images are recorded.
    """

    def __init__(self, tokenizer: Any, replies: list[str]) -> None:
        self.tokenizer = tokenizer
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []
        self.generated: list[list[int]] = []

    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict, **kwargs: Any
    ) -> Any:
        self.requests.append(
            {"prompt_ids": list(prompt_ids), "images": list(kwargs.get("image_data") or [])}
        )
        reply = self.replies[len(self.requests) - 1]
        ids = self.tokenizer.encode(reply, add_special_tokens=False)
        ids.append(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
        self.generated.append(ids)
        return TokenOutput(token_ids=ids, num_preempted=0)


def loop_config(max_turns: int = 5) -> Any:
    return OmegaConf.create(
        {
            "actor_rollout_ref": {
                "rollout": {
                    "prompt_length": 8192,
                    "response_length": 8192,
                    "full_determinism": False,
                    "multi_turn": {
                        "max_user_turns": max_turns,
                        "max_assistant_turns": max_turns,
                        "max_parallel_calls": 1,
                        "max_tool_response_length": 256,
                        "tool_response_truncate_side": "middle",
                        "format": "hermes",
                    },
                }
            },
            "data": {"apply_chat_template_kwargs": {}, "mm_processor_kwargs": {}},
        }
    )


def run_loop(dataset: Any, tools: dict[str, Any], replies: list[str], index: int = 0) -> Any:
    """One trajectory of ``MedSegAgentLoop`` on row ``index``, as verl's worker runs it."""
    row = dict(dataset.ds[index])
    row.pop("agent_name")
    config = loop_config()
    server = ScriptedServer(dataset.tokenizer, replies)

    async def go() -> tuple[Any, MedSegAgentLoop]:
        loop = MedSegAgentLoop(
            trainer_config=DictConfigWrap(config),
            server_manager=server,
            tokenizer=dataset.tokenizer,
            processor=dataset.processor,
            dataset_cls=RLHFDataset,
            data_config=DictConfigWrap(config.data),
            hf_model_type="qwen3_vl",
            tools=ToolListWrap(list(tools.values())),
        )
        return await loop.run({"temperature": 1.0}, **row), loop

    output, loop = run(go())
    return SimpleNamespace(output=output, server=server, loop=loop, row=row)


def decoded(dataset: Any, ids: list[int]) -> str:
    return dataset.tokenizer.decode(ids, skip_special_tokens=False)


def test_agent_loop_is_registered():
    target = _agent_loop_registry["medseg_agent"]["_target_"]
    assert target == "medseg_agents.training.verl.verl_agent_loop.MedSegAgentLoop"
    entries = OmegaConf.load(CONFIG_DIR / "medseg_agent_loop.yaml")
    assert [(e.name, e._target_) for e in entries] == [("medseg_agent", target)]


def test_agent_loop_plays_medsam_agents_loop(dataset, tools, replies_of_sample, caplog):
    replies = replies_of_sample["oracle"]
    reference = reference_run(SPEC, replies)
    with caplog.at_level(logging.WARNING, logger="medseg_agents.training.verl.verl_agent_loop"):
        got = run_loop(dataset, tools, replies)
    assert not [r for r in caplog.records if r.name.startswith("medseg_agents")]
    out, requests = got.output, got.server.requests
    # three replies: box, click, stop; the episode ends at stop
    assert len(requests) == 3
    assert out.num_turns == 3 + 2 + 1
    assert out.reward_score == pytest.approx(sum(r for r, _, _ in reference))
    extra = out.extra_fields["reward_extra_info"]
    assert extra["dice"] == reference[-1][2]["dice"] and extra["format_ok"] == 1.0
    assert extra["num_prompts"] == 2 and extra["episode_over"] == 1.0
    assert out.extra_fields["tool_rewards"] == [r for r, _, _ in reference]
    # the row's prompt is the episode's first turn, image included (the loop checks the text)
    first = got.row["raw_prompt"][1]
    assert np.array_equal(np.asarray(image_of(first)), np.asarray(requests[0]["images"][0]))
    episode_first = got.loop.session.env.messages()[1]
    assert np.array_equal(np.asarray(image_of(first)), np.asarray(image_of(episode_first)))
    # every request extends the last one: an append-only conversation
    for before, after in zip(requests, requests[1:], strict=False):
        assert after["prompt_ids"][: len(before["prompt_ids"])] == before["prompt_ids"]
    # the overlay comes back as a USER message: image + the protocol's later-turn text
    protocol = get_protocol(SPEC.protocol)
    second = decoded(dataset, requests[1]["prompt_ids"][len(requests[0]["prompt_ids"]) :])
    assert second.startswith(dataset.tokenizer.decode(got.server.generated[0]))
    tail = second[len(dataset.tokenizer.decode(got.server.generated[0])) :]
    assert tail.startswith("\n<|im_start|>user\n<|vision_start|><|image_pad|>")
    assert tail.endswith(
        "<|vision_end|>" + protocol.later_user_text() + "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "<tool_response>" not in decoded(dataset, requests[2]["prompt_ids"])
    # no tools= in the template: the system prompt's <tools> block is the only one
    opening = decoded(dataset, requests[0]["prompt_ids"])
    assert opening.count("<tools>") == protocol.system_prompt.count("<tools>")
    assert "You may call one or more functions" not in opening  # the template's tools block
    # the images sent: the first view, then each overlay, as the env shows them
    assert [len(r["images"]) for r in requests] == [1, 2, 3]
    for k in (1, 2):
        shown = np.asarray(requests[2]["images"][k])
        assert np.array_equal(shown, np.asarray(image_of(reference[k - 1][1][-1])))
    assert len(out.multi_modal_data["images"]) == 3
    # the training mask: 1 on generated tokens, 0 on the user turns in between
    assert sum(out.response_mask) == sum(len(ids) for ids in got.server.generated)
    assert out.response_mask[0] == 1 and 0 in out.response_mask
    assert out.prompt_ids + out.response_ids == requests[2]["prompt_ids"] + got.server.generated[2]


def test_agent_loop_stops_at_five_replies_without_running_the_fifth(
    dataset, tools, replies_of_sample
):
    replies = replies_of_sample["clicks"]
    reference = reference_run(SPEC, replies)
    got = run_loop(dataset, tools, replies)
    assert len(got.server.requests) == 5 == len(reference)
    assert [t["executed"] for t in got.loop.turns] == [True] * 4 + [False]
    assert got.loop.turns[-1]["truncated"]
    assert got.output.extra_fields["reward_extra_info"]["num_prompts"] == 4
    assert got.output.num_turns == 5 + 4 + 1
    assert got.output.reward_score == pytest.approx(sum(r for r, _, _ in reference))


@pytest.mark.parametrize("reply", [MALFORMED_PROSE, UNKNOWN_TOOL], ids=["prose", "unknown-tool"])
def test_a_malformed_reply_ends_the_loop_with_the_envs_reward(dataset, tools, reply):
    reference = reference_run(SPEC, [reply, reply])
    assert len(reference) == 1
    got = run_loop(dataset, tools, [reply] * 5)
    assert len(got.server.requests) == 1
    assert got.output.num_turns == 2
    assert got.output.reward_score == pytest.approx(reference[0][0])
    assert got.output.extra_fields["reward_extra_info"]["format_ok"] == 0.0
    assert got.loop.turns[0]["format_error"] == reference[0][2]["format_error"]


# ---------------------------------------------------------------------- the GRPO config
def test_grpo_config_composes_over_verls_trainer_config(tiny_vlm_dir):
    from hydra import compose, initialize_config_dir
    from verl.utils.config import omega_conf_to_dataclass

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(
            config_name="medseg_grpo",
            overrides=[f"actor_rollout_ref.model.path={tiny_vlm_dir}"],
        )
    rollout = cfg.actor_rollout_ref.rollout
    assert cfg.algorithm.adv_estimator == "grpo" and cfg.algorithm.kl_ctrl.kl_coef == 0.0
    assert not cfg.algorithm.use_kl_in_reward and not cfg.actor_rollout_ref.actor.use_kl_loss
    assert cfg.actor_rollout_ref.actor.optim.lr == 1e-6 and rollout.n == 8
    assert rollout.multi_turn.enable and rollout.multi_turn.max_assistant_turns == 5
    assert rollout.agent.default_agent_loop == "medseg_agent"
    assert (ROOT / rollout.multi_turn.tool_config_path).is_file()
    assert (ROOT / rollout.agent.agent_loop_config_path).is_file()
    assert cfg.data.max_prompt_length == 4096 and cfg.data.max_response_length == 8192
    typed = omega_conf_to_dataclass(rollout)
    assert typed.multi_turn.max_parallel_calls == 1 and typed.multi_turn.format == "hermes"
