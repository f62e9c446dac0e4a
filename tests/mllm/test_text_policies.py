"""The MLLM policies, with the tiny real Qwen3-VL: locally, behind a real server, and vLLM's
request building (vLLM itself does not install on CPU machines)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

from medseg_agents import POLICIES, default_policies, make_policy
from medseg_agents.mllm import OpenAIChatPolicy, TransformersPolicy, VLLMPolicy, images_per_prompt
from medseg_agents.mllm.openai_chat import reply_text
from medseg_bench.cli import main as bench_main
from medseg_bench.records import Journal
from medseg_env.data import Dataset

pytest.importorskip("openai")


def _bench(tmp_path: Path, policy: str, budget: int = 3, limit: int = 2) -> Path:
    out = tmp_path / "bench"
    args = ["run", "-p", policy, "-d", "demo-heldout", "--limit", str(limit)]
    args += ["--budget", str(budget), "--out", str(out), "--no-plots", "--no-progress"]
    assert bench_main(args) == 0
    return out


def _check_text_run(out: Path, budget: int, episodes: int) -> list:
    records = Journal(out / "episodes.jsonl").load()
    assert len(records) == episodes
    for record in records:
        assert 1 <= record.turns <= budget
        for step in record.steps:
            assert isinstance(step.reply, str)
            assert set(step.parsed) >= {"call", "error", "num_calls"}
            # a reply that gave no call took the invalid-action path with its reason
            if step.parsed["call"] is None:
                assert step.action == "none"
            if step.parsed["call"] is None:
                assert step.invalid == step.parsed["error"]
    summary = (out / "summary.md").read_text()
    assert "## Text policies" in summary and "EVAL: empty left out" in summary
    rows = list(csv.DictReader((out / "summary.csv").open()))
    overall = next(r for r in rows if r["modality"] == "all")
    assert 0.0 <= float(overall["wellformed_rate"]) <= 1.0
    assert int(overall["eval_left_out"]) <= episodes
    return records


def test_mllm_policies_are_registered_but_not_default() -> None:
    for name in ("openai", "vllm", "transformers"):
        assert name in POLICIES.names() and name not in default_policies()
    assert default_policies() == [
        "learned",
        "learned_bc",
        "hint_box",
        "hint_click",
        "oracle_box",
        "hybrid_expert",
        "ritm",
    ]


def test_transformers_policy_drives_benchmark_episodes(tiny_vlm_dir: Path, tmp_path: Path) -> None:
    out = _bench(tmp_path, f"transformers:model={tiny_vlm_dir},max_tokens=48")
    _check_text_run(out, budget=3, episodes=2)


def test_transformers_policy_batches_like_single_calls(
    tiny_vlm_dir: Path, small_demo: Dataset
) -> None:
    """One batched generate (left-padded) gives the replies of one call per conversation."""
    policy = TransformersPolicy(str(tiny_vlm_dir), max_tokens=24, batch_size=8)
    env = gym.make("MedSeg-Text-v0", dataset=small_demo)
    conversations = [env.reset(seed=i, options={"sample_index": i})[0] for i in range(3)]
    batched = policy.act_batch(conversations, [{}] * 3)
    single = [policy.act(c, {}) for c in conversations]
    assert batched == single and all(isinstance(r, str) for r in batched)


def test_transformers_policy_samples_reproducibly(tiny_vlm_dir: Path, small_demo: Dataset) -> None:
    policy = TransformersPolicy(str(tiny_vlm_dir), max_tokens=16, temperature=1.0, seed=3)
    env = gym.make("MedSeg-Text-v0", dataset=small_demo)
    obs, info = env.reset(seed=0)
    policy.seed(7)
    first = [policy.act(obs, info) for _ in range(3)]
    policy.seed(7)
    assert [policy.act(obs, info) for _ in range(3)] == first


def test_openai_policy_drives_benchmark_episodes_through_a_real_server(
    openai_server: tuple[str, str], tmp_path: Path
) -> None:
    base_url, model = openai_server
    spec = f"openai:base_url={base_url},model={model},max_tokens=32,concurrency=2"
    out = _bench(tmp_path, spec, budget=2, limit=1)
    _check_text_run(out, budget=2, episodes=1)


def test_openai_policy_gives_up_with_a_clear_error(small_demo: Dataset) -> None:
    policy = OpenAIChatPolicy(
        "m", base_url="http://127.0.0.1:9/v1", max_retries=1, backoff=0.0, timeout=2.0
    )
    obs, info = gym.make("MedSeg-Text-v0", dataset=small_demo).reset(seed=0)
    with pytest.raises(RuntimeError, match=r"127\.0\.0\.1:9.*after 2 tries"):
        policy.act(obs, info)


def test_openai_reply_keeps_tool_calls_the_server_parsed() -> None:
    call = SimpleNamespace(
        function=SimpleNamespace(name="add_point", arguments='{"point_2d": [1, 2]}')
    )
    text = reply_text(SimpleNamespace(content="", tool_calls=[call]))
    body = text.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>")
    assert json.loads(body) == {"name": "add_point", "arguments": {"point_2d": [1, 2]}}
    assert reply_text(SimpleNamespace(content="plain", tool_calls=None)) == "plain"


@pytest.mark.parametrize("bad", [{"concurrency": 0}, {"max_retries": -1}, {"timeout": 0}])
def test_openai_policy_checks_its_options(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        OpenAIChatPolicy("m", base_url="http://127.0.0.1:9/v1", **bad)


def test_vllm_requests_are_built_without_vllm(small_demo: Dataset) -> None:
    policy = make_policy("vllm", model="Saint-lsy/MedSAM-Agent-Qwen3-VL-8B-MedSAM2")
    assert isinstance(policy, VLLMPolicy)
    assert policy.max_images == images_per_prompt("medsam_agent") == 6  # 5 kept turns + now
    assert policy.engine_kwargs()["limit_mm_per_prompt"] == {"image": 6}
    assert images_per_prompt("medsam_agent_rl", budget=8) == 8
    assert images_per_prompt("medsam_agent_rl") == 5
    assert images_per_prompt("segagent") == 1
    assert policy.sampling_kwargs() == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 128}
    env = gym.make("MedSeg-Text-v0", dataset=small_demo, images="pil")
    obs, _ = env.reset(seed=0)
    (request,) = policy.build_requests([obs])
    image_parts = [p for m in request[1:] for p in m["content"] if p["type"] == "image_url"]
    assert len(image_parts) == 1 and image_parts[0]["image_url"]["url"].startswith("data:image/")
    assert request[0] == obs[0] and isinstance(obs[1]["content"][0]["image"], Image.Image)
    tight = VLLMPolicy("m", max_images=1)
    two = obs + [{"role": "assistant", "content": "x"}, obs[1]]
    with pytest.raises(ValueError, match="2 images; limit_mm_per_prompt allows 1"):
        tight.build_requests([two])
    sampled = VLLMPolicy("m", temperature=0.7, seed=1)
    assert sampled.sampling_kwargs()["seed"] != sampled.sampling_kwargs()["seed"]


def test_vllm_policy_says_how_to_install_it(small_demo: Dataset) -> None:
    pytest.importorskip("numpy")
    try:
        import vllm  # noqa: F401
    except ImportError:
        obs, info = gym.make("MedSeg-Text-v0", dataset=small_demo).reset(seed=0)
        with pytest.raises(ImportError, match=r"medseg-env\[vllm\]"):
            VLLMPolicy("m").act(obs, info)
    else:  # pragma: no cover - only where vLLM is installed (GPU machines)
        pytest.skip("vLLM is installed here")


def test_text_policy_options_are_checked() -> None:
    with pytest.raises(ValueError, match="temperature"):
        VLLMPolicy("m", temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        VLLMPolicy("m", top_p=0)
    with pytest.raises(KeyError, match="unknown protocol 'nope'"):
        VLLMPolicy("m", protocol="nope")
    assert np.isfinite(VLLMPolicy("m").temperature)


def test_lockstep_episodes_equal_one_by_one(tiny_vlm_dir: Path, tmp_path: Path) -> None:
    """The benchmark's lockstep batches (one generate per turn) give the same episodes."""
    runs = {}
    for batch in (1, 3):
        spec = f"transformers:model={tiny_vlm_dir},max_tokens=24,episode_batch={batch}"
        out = _bench(tmp_path / f"b{batch}", spec, budget=3, limit=3)
        runs[batch] = {r.sample_id: r.steps for r in Journal(out / "episodes.jsonl").load()}
    assert len(runs[1]) == 3 and runs[1] == runs[3]
