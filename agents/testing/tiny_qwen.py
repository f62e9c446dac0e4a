"""A tiny, real Qwen-VL model built offline, for tests of the MLLM policies and trainers.

``build_tiny_qwen_vl(out_dir)`` writes a complete Hugging Face model folder, about 1 MB, that
``AutoModelForImageTextToText.from_pretrained`` and ``AutoProcessor.from_pretrained`` load
with no network, and that ``transformers serve`` serves as an OpenAI-compatible endpoint:

- the real Qwen3-VL (or Qwen2.5-VL) architecture, shrunk: a one-block vision tower (hidden 32,
  2 heads, patch 16; 14 for Qwen2.5-VL) and a two-layer text model (hidden 64, 4 heads, 2 KV
  heads), with random weights drawn from a seeded generator: a seed always gives the same bytes;
- a byte-level BPE tokenizer trained here with ``tokenizers`` on a small built-in corpus of the
  tool-call protocol and segmentation prompts, wrapped as ``Qwen2Tokenizer`` with every Qwen
  special token (``<|im_start|>``, ``<|vision_start|>``, ``<|image_pad|>``, ``<tool_call>``...);
- the real image processor (``Qwen2VLImageProcessor``), limited to ``MAX_PIXELS`` = 128×128
  pixels, so a 512×512 image becomes 16 image tokens (64 patches of 16 pixels, merged 2×2);
- the real Qwen chat template of the family (system messages, images in content parts, tool
  calls, multi-turn), written below verbatim.

The weights are random: the model answers with arbitrary tokens. It exists to exercise the
whole real pipeline (chat template, image processing, generation, serving, the OpenAI client)
in milliseconds, not to segment anything.

``python -m medseg_agents.testing.tiny_qwen OUT_DIR`` builds one and prints the folder and its
size. The package never imports this module: only the tests and the CPU learning demo
(``medseg_agents.training.learn_text``) do.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

Family = Literal["qwen3_vl", "qwen2_5_vl"]
FAMILIES: tuple[Family, ...] = ("qwen3_vl", "qwen2_5_vl")

#: Pixel budget of one image: a 512×512 image is resized to 128×128.
MAX_PIXELS = 128 * 128
#: The smallest image, in pixels: 2×2 patches, one merged image token (at patch 16).
MIN_PIXELS = 32 * 32
#: Size the BPE trainer aims at; the small corpus usually stops it earlier.
BPE_VOCAB_SIZE = 640

# The Qwen special tokens, in the order (and with the `special` flags) of the real Qwen2.5-VL
# and Qwen3-VL tokenizers. Special tokens are dropped by `decode(skip_special_tokens=True)`;
# the others (tool calls, thinking) stay in the decoded text, where parsers look for them.
SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)

# The training text of the tokenizer: the tool-call protocol of the MLLM policies, numbers and
# the words of segmentation prompts, so that they take few tokens.
CORPUS: tuple[str, ...] = (
    "You are an expert radiologist segmenting one target structure in a medical image.",
    "You can call tools to place prompts for an interactive segmentation model.",
    "Segment the tumour. The image is a CT slice of the brain, lung, liver or breast.",
    "Segment the nucleus in this microscopy image. The mask overlay shows the current result.",
    "The red contour is the current mask. The green dot is a positive point, the red dot a "
    "negative point. Coordinates are pixels in the 1000 by 1000 grid of the image.",
    "Draw a bounding box around the target, then add positive points inside the target and "
    "negative points on the background where the mask is wrong. Stop when the mask is good.",
    "Dice score improved. The mask now covers the lesion, the organ, the cell, the vessel.",
    "Turn 1 of 5. Current Dice unknown. Clicks so far: 0. Previous action: none.",
    '<tool_call>\n{"name": "add_bbox", "arguments": {"bbox_2d": [12, 34, 560, 780]}}\n</tool_call>',
    "<tool_call>\n"
    '{"name": "add_point", "arguments": {"point_2d": [250, 410], "label": "positive"}}\n'
    "</tool_call>",
    "<tool_call>\n"
    '{"name": "add_point", "arguments": {"point_2d": [903, 67], "label": "negative"}}\n'
    "</tool_call>",
    '<tool_call>\n{"name": "stop_action", "arguments": {}}\n</tool_call>',
    '{"type": "function", "function": {"name": "add_bbox", "description": "Draw a box", '
    '"parameters": {"type": "object", "properties": {"bbox_2d": {"type": "array", '
    '"items": {"type": "integer"}}}, "required": ["bbox_2d"]}}}',
    '{"type": "function", "function": {"name": "add_point", "description": "Click a point", '
    '"parameters": {"type": "object", "properties": {"point_2d": {"type": "array"}, '
    '"label": {"type": "string", "enum": ["positive", "negative"]}}}}}',
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 [0, 0, 999, 999] x1 y1 x2 y2 x y",
    "# Tools\n\nYou may call one or more functions to assist with the user query.",
    "The quick brown fox jumps over the lazy dog. Yes, no, done, thanks, ok.",
)

# The chat template of Qwen3-VL-*-Instruct (its `chat_template.json`), verbatim. The two tool
# prompt lines are longer than this file allows, so they are spliced in below.
_QWEN3_VL_TOOLS_INTRO = (
    r'    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n'
    r'You are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}'
)
_QWEN3_VL_TOOLS_OUTRO = (
    r'    {{- "\n</tools>\n\nFor each function call, return a json object with function name '
    r"and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    r'{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n"'
    r" }}"
)
_QWEN3_VL_TEMPLATE_BODY = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\n\n' }}
    {%- endif %}
@TOOLS_INTRO@
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
@TOOLS_OUTRO@
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' }}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and message.content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
#: The chat template of Qwen3-VL-*-Instruct, byte for byte.
QWEN3_VL_CHAT_TEMPLATE = _QWEN3_VL_TEMPLATE_BODY.replace(
    "@TOOLS_INTRO@", _QWEN3_VL_TOOLS_INTRO
).replace("@TOOLS_OUTRO@", _QWEN3_VL_TOOLS_OUTRO)

#: The chat template of Qwen2-VL/Qwen2.5-VL-*-Instruct (its `chat_template.json`), byte for byte.
#: It has no tool support, and adds a default system message when the chat has none.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CHAT_TEMPLATES: dict[str, str] = {
    "qwen3_vl": QWEN3_VL_CHAT_TEMPLATE,
    "qwen2_5_vl": QWEN2_5_VL_CHAT_TEMPLATE,
}


def _train_tokenizer() -> Any:
    """A ``Qwen2Tokenizer`` with a byte-level BPE trained on ``CORPUS`` and the Qwen tokens."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # The same normaliser and pre-tokeniser as Qwen2Tokenizer's, so the merges fit it.
    bpe = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    bpe.train_from_iterator(list(CORPUS), trainer=trainer)
    state = json.loads(bpe.model.__getstate__())
    options: dict[str, Any] = {
        "vocab": state["vocab"],
        "merges": [
            tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]
        ],
        "unk_token": None,  # as in Qwen's tokenizer_config.json: byte-level BPE has no unknowns
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 32768,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
    }
    tokenizer = Qwen2Tokenizer(**options)
    tokenizer.add_tokens(
        [
            AddedToken(tok, special=special, normalized=False, lstrip=False, rstrip=False)
            for tok, special in SPECIAL_TOKENS
        ]
    )
    # As in the real Qwen-VL tokenizers: a chat turn ends with <|im_end|>.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.extra_special_tokens = [tok for tok, special in SPECIAL_TOKENS[1:] if special]
    return tokenizer


def _model_and_processor(family: Family, tokenizer: Any, vocab_size: int) -> tuple[Any, Any]:
    """The untrained model (random weights from torch's current RNG) and its processor."""
    ids = {
        name: tokenizer.convert_tokens_to_ids(tok)
        for name, tok in (
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        )
    }
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    config: Any
    model: Any
    image_processor: Any
    video_processor: Any
    processor: Any
    text: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "bos_token_id": pad_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "tie_word_embeddings": True,
    }
    vision: dict[str, Any] = {
        "depth": 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "in_channels": 3,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": text["hidden_size"],
    }
    if family == "qwen3_vl":
        from transformers import (
            Qwen2VLImageProcessor,
            Qwen3VLConfig,
            Qwen3VLForConditionalGeneration,
            Qwen3VLProcessor,
            Qwen3VLVideoProcessor,
        )

        # head_dim 16: the rotary frequencies (8) split 4/2/2 over time, height and width.
        text |= {
            "head_dim": 16,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_section": [4, 2, 2],
                "mrope_interleaved": True,
            },
        }
        vision |= {
            "patch_size": 16,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": [0],
            "hidden_act": "gelu_pytorch_tanh",
        }
        config = Qwen3VLConfig(
            text_config=text, vision_config=vision, tie_word_embeddings=True, **ids
        )
        model = Qwen3VLForConditionalGeneration(config)
        half = [0.5, 0.5, 0.5]  # Qwen3-VL normalises to [-1, 1]
        image_processor = Qwen2VLImageProcessor(
            size=size,
            patch_size=16,
            temporal_patch_size=2,
            merge_size=2,
            image_mean=half,
            image_std=half,
        )
        video_processor = Qwen3VLVideoProcessor(
            size={"shortest_edge": MIN_PIXELS, "longest_edge": 4 * MAX_PIXELS},
            patch_size=16,
            temporal_patch_size=2,
            merge_size=2,
            image_mean=half,
            image_std=half,
        )
        processor = Qwen3VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=video_processor,
            chat_template=QWEN3_VL_CHAT_TEMPLATE,
        )
    else:
        from transformers import (
            Qwen2_5_VLConfig,
            Qwen2_5_VLForConditionalGeneration,
            Qwen2_5_VLProcessor,
            Qwen2VLImageProcessor,
            Qwen2VLVideoProcessor,
        )

        # head_dim 64 / 4 = 16: the rotary frequencies (8) split 2/3/3 over time, height, width.
        text |= {
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1_000_000.0,
                "mrope_section": [2, 3, 3],
            },
        }
        vision |= {
            "patch_size": 14,
            "window_size": 112,
            "fullatt_block_indexes": [0],
            "tokens_per_second": 2,
            "hidden_act": "silu",
        }
        config = Qwen2_5_VLConfig(
            text_config=text, vision_config=vision, tie_word_embeddings=True, **ids
        )
        model = Qwen2_5_VLForConditionalGeneration(config)
        size = {"shortest_edge": 28 * 28, "longest_edge": MAX_PIXELS}
        image_processor = Qwen2VLImageProcessor(
            size=size, patch_size=14, temporal_patch_size=2, merge_size=2
        )
        video_processor = Qwen2VLVideoProcessor(
            size={"shortest_edge": 28 * 28, "longest_edge": 4 * MAX_PIXELS},
            patch_size=14,
            temporal_patch_size=2,
            merge_size=2,
        )
        processor = Qwen2_5_VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=video_processor,
            chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
        )
    # The sampling defaults of the real Qwen-VL instruct models: a request with temperature 0
    # (or `generate(do_sample=False)`) is greedy, one without samples.
    generation = model.generation_config
    generation.do_sample = True
    generation.temperature = 0.7
    generation.top_p = 0.8
    generation.top_k = 20
    generation.repetition_penalty = 1.0
    generation.bos_token_id = pad_id
    generation.eos_token_id = [eos_id, pad_id]
    generation.pad_token_id = pad_id
    return model, processor


def build_tiny_qwen_vl(out_dir: str | Path, *, seed: int = 0, family: Family = "qwen3_vl") -> Path:
    """Write a tiny random-weight Qwen-VL model with its processor to ``out_dir``; return it.

    ``family`` is ``"qwen3_vl"`` (``Qwen3VLForConditionalGeneration``) or ``"qwen2_5_vl"``
    (``Qwen2_5_VLForConditionalGeneration``). The same ``seed`` and family always give the
    same weights; torch's global random state is left as it was. The folder holds
    ``config.json``, ``generation_config.json``, ``model.safetensors`` (float32),
    ``tokenizer.json``, ``tokenizer_config.json``, ``processor_config.json`` and
    ``chat_template.jinja``: about 1 MB.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATES[family]
    vocab_size = -(-len(tokenizer) // 64) * 64  # padded to a multiple of 64, as Qwen does
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor = _model_and_processor(family, tokenizer, vocab_size)
    model = model.to(torch.float32).eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def folder_size(path: str | Path) -> int:
    """The total size in bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medseg_agents.testing.tiny_qwen",
        description="Build the tiny random-weight Qwen-VL test model into a folder.",
    )
    parser.add_argument("out_dir", type=Path, help="folder to write the model to")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument("--family", choices=FAMILIES, default="qwen3_vl")
    args = parser.parse_args(argv)
    out = build_tiny_qwen_vl(args.out_dir, seed=args.seed, family=args.family)
    print(f"{out.resolve()}\t{folder_size(out) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
