"""The tiny offline Qwen-VL: built small and reproducibly, loads back offline, generates from a
multimodal multi-turn chat, and answers OpenAI chat completions through ``transformers serve``.
"""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("transformers")

from medseg_agents.testing.tiny_qwen import (  # noqa: E402
    MAX_PIXELS,
    QWEN2_5_VL_CHAT_TEMPLATE,
    QWEN3_VL_CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    build_tiny_qwen_vl,
    folder_size,
    main,
)

# SHA-256 of the chat templates of Qwen/Qwen3-VL-*-Instruct and Qwen/Qwen2.5-VL-*-Instruct.
QWEN3_VL_TEMPLATE_SHA256 = "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"
QWEN2_5_VL_TEMPLATE_SHA256 = "a0bc6f6fc7a29a80017a433e8f03a1cc1236e838a944a2d034295a60c4f2fddb"

TOOL_CALL = (
    '<tool_call>\n{"name": "add_bbox", "arguments": {"bbox_2d": [12, 34, 560, 780]}}\n</tool_call>'
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image(seed: int, size: int = 512) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def two_turn_chat() -> list[dict[str, Any]]:
    """System, user (image + text), assistant (a tool call), user (image + text)."""
    return [
        {"role": "system", "content": "You are an expert radiologist. Use the tools."},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": image(0)},
                {"type": "text", "text": "Segment the tumour."},
            ],
        },
        {"role": "assistant", "content": TOOL_CALL},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": image(1)},
                {"type": "text", "text": "Dice 0.41. Add a point or stop."},
            ],
        },
    ]


def test_chat_templates_are_the_qwen_ones() -> None:
    assert hashlib.sha256(QWEN3_VL_CHAT_TEMPLATE.encode()).hexdigest() == QWEN3_VL_TEMPLATE_SHA256
    assert (
        hashlib.sha256(QWEN2_5_VL_CHAT_TEMPLATE.encode()).hexdigest() == QWEN2_5_VL_TEMPLATE_SHA256
    )


def test_folder_is_small_and_complete(tiny_vlm_dir: Path) -> None:
    names = {p.name for p in tiny_vlm_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= names
    assert {"processor_config.json", "generation_config.json", "tokenizer_config.json"} <= names
    assert folder_size(tiny_vlm_dir) < 3_000_000
    assert (tiny_vlm_dir / "chat_template.jinja").read_text() == QWEN3_VL_CHAT_TEMPLATE


def test_same_seed_same_bytes_and_global_rng_untouched(tiny_vlm_dir: Path, tmp_path: Path) -> None:
    import torch

    state = torch.random.get_rng_state()
    again = build_tiny_qwen_vl(tmp_path / "again", seed=0)
    other = build_tiny_qwen_vl(tmp_path / "other", seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert sha256(again / name) == sha256(tiny_vlm_dir / name), name
    assert sha256(other / "model.safetensors") != sha256(tiny_vlm_dir / "model.safetensors")


def test_cli_prints_folder_and_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "cli"), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert str((tmp_path / "cli").resolve()) in out and "MB" in out


def test_tokenizer_has_the_qwen_tokens(tiny_vlm_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_vlm_dir)
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    for token, _ in SPECIAL_TOKENS:
        assert tokenizer.tokenize(token) == [token]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    # Round trip; the protocol text takes few tokens (the BPE was trained on it).
    ids = tokenizer(TOOL_CALL)["input_ids"]
    assert tokenizer.decode(ids) == TOOL_CALL
    assert len(ids) < 40


def test_loads_offline_and_generates_from_a_two_turn_multimodal_chat(
    tiny_vlm_dir: Path,
) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    processor = AutoProcessor.from_pretrained(tiny_vlm_dir)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert processor.image_processor.size["longest_edge"] == MAX_PIXELS

    chat = two_turn_chat()
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system\nYou are an expert radiologist.")
    assert prompt.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert TOOL_CALL + "<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")

    inputs = processor.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    # 512×512 → 128×128 pixels → 8×8 patches of 16 → 16 image tokens per image.
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 8]]
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 2 * 16

    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        again = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert len(new) > 0 and torch.equal(out, again)
    text = processor.decode(new, skip_special_tokens=True)
    assert isinstance(text, str)


def png_data_url(img: Image.Image) -> str:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def test_openai_chat_completion_with_an_image_over_loopback(
    openai_server: tuple[str, str],
) -> None:
    openai = pytest.importorskip("openai")
    base_url, model_name = openai_server
    client = openai.OpenAI(
        base_url=base_url,
        api_key="unused",
        max_retries=0,
        timeout=60,
        http_client=openai.DefaultHttpxClient(trust_env=False),  # loopback: no proxy
    )
    messages: Any = [
        {"role": "system", "content": "You are an expert radiologist."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": png_data_url(image(0))}},
                {"type": "text", "text": "Segment the tumour."},
            ],
        },
    ]
    # Greedy: random weights can emit a bare <tool_call>, which the server's Qwen tool-call
    # parser rejects; the greedy answer of the seed-0 model is known not to.
    reply = client.chat.completions.create(
        model=model_name, messages=messages, max_tokens=16, temperature=0.0
    )
    choice = reply.choices[0]
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    # The prompt holds the 16 image tokens of the 512×512 image.
    assert reply.usage.prompt_tokens > 16


def test_qwen2_5_vl_family_builds_and_generates(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = build_tiny_qwen_vl(tmp_path / "qwen2_5", family="qwen2_5_vl")
    assert folder_size(folder) < 3_000_000
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    inputs = processor.apply_chat_template(
        two_turn_chat(),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_unknown_family_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="family"):
        build_tiny_qwen_vl(tmp_path, family="llava")  # type: ignore[arg-type]


def test_the_package_never_imports_the_tiny_model() -> None:
    import subprocess
    import sys

    code = (
        "import sys, medseg_agents, medseg_agents.mllm, medseg_agents.training; "
        "print(sorted(m for m in sys.modules if m.startswith('medseg_agents.testing')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("content", ["I see it.", ""])
def test_hermes_reply_text_is_what_the_chat_template_writes(
    tiny_vlm_dir: Path, content: str
) -> None:
    """The Qwen3-VL template (byte-identical to the released one, above) renders an assistant
    message with tool calls exactly as ``medseg_env.text.hermes`` rebuilds the reply."""
    from transformers import AutoTokenizer

    from medseg_env.text.hermes import render_call, reply_text

    calls: list[dict[str, Any]] = [
        {
            "type": "function",
            "function": {
                "name": "add_point",
                "arguments": {"point_2d": [345, 167], "point_type": "positive"},
            },
        },
        {"type": "function", "function": {"name": "stop_action", "arguments": "{}"}},
        {"type": "function", "function": {"name": "add_bbox", "arguments": '{"bbox_2d": [1, 2'}},
    ]
    tokenizer = AutoTokenizer.from_pretrained(tiny_vlm_dir)
    messages = [
        {"role": "user", "content": "segment it"},
        {"role": "assistant", "content": content, "tool_calls": calls},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    written = rendered.split("<|im_start|>assistant\n", 1)[1].split("<|im_end|>", 1)[0]
    assert reply_text(content, calls) == written
    first = calls[0]["function"]
    assert render_call(first["name"], first["arguments"]) in written
