"""``medseg_env.text.hermes``: Qwen's ``<tool_call>`` text, written and read in one place."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from medseg_env.text import ToolCall, get_protocol
from medseg_env.text.hermes import (
    call_blocks,
    call_objects,
    decode_block,
    render_call,
    reply_text,
    tool_call_parts,
)

# The released format, as MedSAM-Agent's system prompt and Qwen's chat template write it.
RELEASED_POINT = (
    "<tool_call>\n"
    '{"name": "add_point", "arguments": {"point_2d": [345, 167], "point_type": "positive"}}\n'
    "</tool_call>"
)


def test_render_call_is_byte_identical_to_the_released_text() -> None:
    text = render_call("add_point", {"point_2d": [345, 167], "point_type": "positive"})
    assert text == RELEASED_POINT
    assert render_call("stop_action", {}) == (
        '<tool_call>\n{"name": "stop_action", "arguments": {}}\n</tool_call>'
    )
    for name in ("medsam_agent", "medsam_agent_rl"):
        call = ToolCall("add_point", {"point_2d": (345, 167), "point_type": "positive"})
        assert get_protocol(name).render(call) == RELEASED_POINT


def test_values_json_cannot_hold_are_written_as_their_repr() -> None:
    body = render_call("add_bbox", {"bbox_2d": [1, 2, object, 4]}).split("\n")[1]
    assert json.loads(body)["arguments"]["bbox_2d"][2] == repr(object)


def test_reply_text_puts_parsed_calls_back_as_qwens_template_does() -> None:
    # content, then each call, a newline between parts (the template's layout)
    calls = [
        {
            "type": "function",
            "function": {
                "name": "add_point",
                "arguments": {"point_2d": [345, 167], "point_type": "positive"},
            },
        },  # noqa: E501
        {"name": "stop_action", "arguments": "{}"},
    ]
    stop = render_call("stop_action", {})
    assert reply_text("I see it.", calls) == f"I see it.\n{RELEASED_POINT}\n{stop}"
    assert reply_text("", calls) == f"{RELEASED_POINT}\n{stop}"
    assert reply_text([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) == "ab"
    assert reply_text(None, None) == ""
    # an OpenAI client object, arguments as JSON text
    server = SimpleNamespace(
        function=SimpleNamespace(
            name="add_point", arguments=json.dumps(calls[0]["function"]["arguments"])
        )
    )
    assert reply_text("", [server]) == RELEASED_POINT
    assert tool_call_parts(server) == ("add_point", calls[0]["function"]["arguments"])


def test_arguments_that_are_not_json_stay_as_the_model_wrote_them() -> None:
    broken = {"name": "add_bbox", "arguments": '{"bbox_2d": [1, 2, 3'}
    text = reply_text("", [broken])
    assert (
        text == '<tool_call>\n{"name": "add_bbox", "arguments": {"bbox_2d": [1, 2, 3}\n</tool_call>'
    )
    parsed = get_protocol("medsam_agent_rl").parse(text)
    assert parsed.call is None and "invalid JSON" in (parsed.error or "")


@pytest.mark.parametrize(
    ("segment", "expected"),
    [
        ('{"name": "stop_action", "arguments": {}}', (("stop_action", {}), None)),
        ('\n{"name": "a",\n"arguments": [1]}\n', (("a", [1]), None)),
        ('{"name": "a", "arguments": {"x": "1\n2"}}', (("a", {"x": "1 2"}), None)),  # salvaged
        ("[1, 2]", (None, "a tool call must be a JSON object, got a list")),
        ('{"name": "a"}', (None, "a tool call needs a 'name' and 'arguments'")),
        ('{"name": 3, "arguments": {}}', (None, "tool name must be a string, got int")),
    ],
)
def test_decode_block_is_verls_hermes_parser(segment: str, expected: tuple) -> None:
    assert decode_block(segment) == expected


def test_the_two_readings_of_the_blocks() -> None:
    text = f"x {RELEASED_POINT} y <tool_call>not json</tool_call>"
    assert call_blocks(text) == [
        RELEASED_POINT.split("<tool_call>")[1].split("</tool_call>")[0],
        "not json",
    ]
    assert call_objects(text) == [RELEASED_POINT.split("\n")[1]]
