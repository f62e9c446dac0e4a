"""Text protocols: parser corpora from the released formats, render round trips, the integer
grids of ``medseg_env.geometry`` and the protocol registry."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medseg_env import geometry
from medseg_env.prompting import (
    PROMPTING_RULES,
    Accumulate,
    prompting_rule_names,
    register_prompting_rule,
)
from medseg_env.registry import UnknownNameError
from medseg_env.text import (
    PROTOCOLS,
    TOOL_NAMES,
    ImageRule,
    MedSAMAgentProtocol,
    ParsedReply,
    Protocol,
    SegAgentProtocol,
    ToolCall,
    get_protocol,
    register_protocol,
    registered_protocols,
)

EVAL = get_protocol("medsam_agent")
RL = get_protocol("medsam_agent_rl")
SEG = get_protocol("segagent")


def call(text: str) -> str:
    """A reply with one Hermes call around ``text`` (the layout of the system prompt)."""
    return f"<tool_call>\n{text}\n</tool_call>"


def point(x, y, kind="positive") -> ToolCall:
    return ToolCall("add_point", {"point_2d": (x, y), "point_type": kind})


def box(x1, y1, x2, y2) -> ToolCall:
    return ToolCall("add_bbox", {"bbox_2d": (x1, y1, x2, y2)})


STOP = ToolCall("stop_action", {})

# The process_response docstring examples of MedSAM-Agent's EVAL code (no newlines).
DOC_BBOX = (
    '<tool_call>{"name": "add_bbox", "arguments": {"bbox_2d": [100, 200, 300, 400]}}</tool_call>'
)
DOC_POS = (
    '<tool_call>{"name": "add_point", "arguments": {"point_2d": [345, 167], '
    '"point_type": "positive"}}</tool_call>'
)
DOC_NEG = (
    '<tool_call>{"name": "add_point", "arguments": {"point_2d": [100, 200], '
    '"point_type": "negative"}}</tool_call>'
)
DOC_STOP = '<tool_call>{"name": "stop_action", "arguments": {}}</tool_call>'
DOC_LEGACY_POS = (
    '<tool_call>{"name": "add_positive_point", "arguments": {"x": 500, "y": 300}}</tool_call>'
)
DOC_LEGACY_NEG = (
    '<tool_call>{"name": "add_negative_point", "arguments": {"x": 100, "y": 200}}</tool_call>'
)


def P(args: str, name: str = "add_point") -> str:
    return call(f'{{"name": "{name}", "arguments": {args}}}')


# ---------------------------------------------------------------------------------------------
# Corpora: (reply, expected call or None, expected error substring or None)
# ---------------------------------------------------------------------------------------------

SHARED_OK = [
    (DOC_BBOX, box(100, 200, 300, 400)),
    (DOC_POS, point(345, 167)),
    (DOC_NEG, point(100, 200, "negative")),
    (DOC_STOP, STOP),
    (P('{"point_2d": [345, 167], "point_type": "positive"}'), point(345, 167)),
    (P('{"bbox_2d": [0, 0, 999, 999]}', "add_bbox"), box(0, 0, 999, 999)),
    (P('{"point_2d": [12.5, 0.25], "point_type": "negative"}'), point(12.5, 0.25, "negative")),
    ("I will box the liver first.\n" + DOC_BBOX + "\nThat should do.", box(100, 200, 300, 400)),
    ("```\n" + call('{"name": "stop_action", "arguments": {}}') + "\n```", STOP),
    (DOC_STOP + "<|im_end|>", STOP),
]

EVAL_OK = [
    *SHARED_OK,
    (DOC_LEGACY_POS, point(500, 300)),
    (DOC_LEGACY_NEG, point(100, 200, "negative")),
    # a key missing its opening quote: the released regex repairs it
    (
        '<tool_call>{"name": "add_positive_point", "arguments": {"x": 500, y": 430}}</tool_call>',
        point(500, 430),
    ),
    (P('{point_2d": [3, 4], "point_type": "positive"}'), point(3, 4)),
    # point_type is compared lower-cased; extra point numbers are ignored; corners in any order
    (P('{"point_2d": [3, 4], "point_type": "Positive"}'), point(3, 4)),
    (P('{"point_2d": [3, 4, 5], "point_type": "negative"}'), point(3, 4, "negative")),
    (P('{"bbox_2d": [300, 400, 100, 200]}', "add_bbox"), box(300, 400, 100, 200)),
    (P('{"bbox_2d": [5, 5, 5, 5]}', "add_bbox"), box(5, 5, 5, 5)),
    # stop_action's arguments are never read
    (call('{"name": "stop_action"}'), STOP),
    (call('{"name": "stop_action", "arguments": "now"}'), STOP),
    # only the first call counts
    (DOC_POS + "\n" + DOC_STOP, point(345, 167)),
]

EVAL_BAD = [
    ("", "no <tool_call> found"),
    ("The liver is in the upper left.", "no <tool_call> found"),
    ('<tool_call>\n{"name": "add_point", "arguments": {"point_2d": [3', "never closed"),
    ("<tool_call>add_point(3, 4)</tool_call>", "no {...} object"),
    (call('{name: "add_point", arguments: {}}'), "invalid JSON in <tool_call>"),
    (call('{"name": "add_point", "arguments": {"point_2d": [1, 2],}}'), "invalid JSON"),
    (call('{"name": "foo", "arguments": {}}'), "unknown tool 'foo'"),
    (call('{"arguments": {}}'), "unknown tool ''"),
    (call('{"name": 7, "arguments": {}}'), "unknown tool 7"),
    (P('{"bbox_2d": [1, 2, 3]}', "add_bbox"), "bbox_2d needs 4 numbers, got 3"),
    (P('{"bbox_2d": [1, 2, 3, 4, 5]}', "add_bbox"), "bbox_2d needs 4 numbers, got 5"),
    (P('{"bbox_2d": "1, 2, 3, 4"}', "add_bbox"), "bbox_2d must be a list of 4 numbers"),
    (P("{}", "add_bbox"), "add_bbox needs bbox_2d"),
    (P('{"point_2d": [1200, 5], "point_type": "positive"}'), "point_2d value 1200 outside 0..999"),
    (P('{"point_2d": [-1, 5], "point_type": "positive"}'), "point_2d value -1 outside 0..999"),
    (P('{"point_2d": [1000, 5], "point_type": "positive"}'), "outside 0..999"),
    (P('{"point_2d": [1e30, 5], "point_type": "positive"}'), "outside 0..999"),
    (P('{"point_2d": ["345", "167"], "point_type": "positive"}'), "'345' is not a number"),
    (P('{"point_2d": [true, 5], "point_type": "positive"}'), "True is not a number"),
    (P('{"point_2d": [NaN, 5], "point_type": "positive"}'), "nan is not finite"),
    (P('{"point_2d": [Infinity, 5], "point_type": "positive"}'), "inf is not finite"),
    (P('{"point_2d": [1e400, 5], "point_type": "positive"}'), "inf is not finite"),
    (P('{"point_2d": [7], "point_type": "positive"}'), "point_2d needs 2 numbers, got 1"),
    (P('{"point_2d": [], "point_type": "positive"}'), "point_2d needs 2 numbers, got 0"),
    (P('{"point_2d": [3, 4], "point_type": "middle"}'), "point_type must be 'positive' or"),
    (P('{"point_2d": [3, 4], "point_type": 1}'), "point_type must be"),
    (P('{"point_2d": [3, 4]}'), "point_type must be"),
    (P('{"point_type": "positive"}'), "add_point needs point_2d"),
    (P("[3, 4]"), "arguments must be a JSON object, got a list"),
    (P('{"x": 5}', "add_positive_point"), "add_positive_point needs x and y"),
    (P('{"x": 5, "y": 1500}', "add_negative_point"), "y value 1500 outside 0..999"),
    # the first call is the one read, even when a later one is fine
    (call('{"name": "foo", "arguments": {}}') + DOC_POS, "unknown tool 'foo'"),
]

RL_OK = [
    *SHARED_OK,
    # verl's Hermes parser reads every call; the first decoded one is executed
    (DOC_POS + "\n" + DOC_BBOX, point(345, 167)),
    (call("{not json}") + DOC_BBOX, box(100, 200, 300, 400)),
    # a raw newline inside a JSON string: verl's salvage replaces newlines with spaces
    (call('{"name": "stop_action", "arguments": {}, "note": "a\nb"}'), STOP),
    (call('{"name": "stop_action", "arguments": null}'), STOP),
    (DOC_STOP + DOC_POS, STOP),
]

RL_BAD = [
    ("", "no <tool_call> found"),
    ('<tool_call>\n{"name": "add_point", "arguments": {"point_2d": [3', "never closed"),
    ("</tool_call> text <tool_call>", "</tool_call> before <tool_call>"),
    (call("{not json}"), "invalid JSON in <tool_call>"),
    (call("[1, 2]"), "must be a JSON object, got a list"),
    (call('{"name": "stop_action"}'), "needs a 'name' and 'arguments'"),
    (DOC_LEGACY_POS, "unknown tool 'add_positive_point'"),
    (call('{"name": "foo", "arguments": {}}'), "unknown tool 'foo'"),
    (DOC_POS + call('{"name": "zoom", "arguments": {}}'), "unknown tool 'zoom'"),
    (P('{"point_2d": [3, 4], point_type": "positive"}'), "invalid JSON"),
    (P('{"point_2d": [3, 4], "point_type": "Positive"}'), "point_type must be 'positive' or"),
    (P('{"point_2d": [3, 4, 5], "point_type": "positive"}'), "point_2d needs 2 numbers, got 3"),
    (P('{"point_2d": [3, 4]}'), "add_point needs point_2d and point_type"),
    (P('{"point_2d": [1000, 4], "point_type": "positive"}'), "point_2d value 1000 outside 0..999"),
    (P('{"point_2d": ["3", 4], "point_type": "positive"}'), "'3' is not a number"),
    (P('{"point_2d": [NaN, 4], "point_type": "positive"}'), "nan is not finite"),
    (P('{"bbox_2d": [300, 400, 100, 200]}', "add_bbox"), "bbox_2d needs x1 < x2 and y1 < y2"),
    (P('{"bbox_2d": [1, 5, 9, 5]}', "add_bbox"), "x1 < x2 and y1 < y2, got [1, 5, 9, 5]"),
    (P('{"bbox_2d": [1, 2, 3]}', "add_bbox"), "bbox_2d needs 4 numbers, got 3"),
    (P("{}", "add_bbox"), "add_bbox needs bbox_2d"),
    (P('"x"', "add_bbox"), "arguments must be a JSON object, got a string"),
]

SEG_OK = [
    # the pair is (row, col): point_2d is (x, y) = (second, first)
    ("Positive point: (679, 186)", point(186, 679)),
    (" Negative point: (200, 534)<|im_end|>", point(534, 200, "negative")),
    (
        "<ref>person bottom left</ref><box>(68,308),(255,986)</box> Positive point: (679, 186)",
        point(186, 679),
    ),
    ("Positive point: ( 12 , 34 )", point(34, 12)),
    ("Positive point: (0, 1000)", point(1000, 0)),
    ("Negative point: (1, 2, 3)", point(2, 1, "negative")),
    # polarity from "Positive point" anywhere, numbers after the last "point: "
    ("Positive point: (1, 2) Negative point: (3, 4)", point(4, 3)),
    ("<box>(68,308),(255,986)</box>", box(68, 308, 255, 986)),
    ("<ref>liver</ref><box>(0.5,1),(999,998.5)</box>", box(0.5, 1, 999, 998.5)),
    ("Finish", STOP),
    ("The mask is accurate. Finish.", STOP),
]

SEG_BAD = [
    ("", "no 'Positive point' or 'Negative point' found"),
    ("positive point: (1, 2)", "no 'Positive point'"),
    ("Positive point: (1.5, 2)", "point needs integers"),
    ("Positive point: (5)", "point needs 2 numbers, got 1"),
    ("Positive point: (1001, 5)", "point value 1001 outside 0..1000"),
    ("Negative point: (-1, 5)", "point value -1 outside 0..1000"),
    ("Positive point: 12, 34", "no (y, x) after 'point: '"),
    ("<box>(1,2)</box>", "no (x1,y1),(x2,y2) in <box>"),
    ("<box>(1,2,3),(4,5)</box>", "bbox_2d needs 4 numbers, got 5"),
    ("<box>(a,2),(4,5)</box>", "bbox_2d needs numbers"),
    ("<box>(0,0),(1000,5)</box>", "bbox_2d value 1000 outside 0..999"),
    ("<box>(nan,0),(10,5)</box>", "is not finite"),
]

NOT_TEXT = [None, b"Positive point: (1, 2)", 42, ["<tool_call>"], {"name": "stop_action"}]


def _ids(corpus):
    return [repr(entry[0])[:60] for entry in corpus]


@pytest.mark.parametrize(
    ("protocol", "text", "expected"),
    [(EVAL, t, c) for t, c in EVAL_OK]
    + [(RL, t, c) for t, c in RL_OK]
    + [(SEG, t, c) for t, c in SEG_OK],
    ids=[f"eval-{i}" for i in _ids(EVAL_OK)]
    + [f"rl-{i}" for i in _ids(RL_OK)]
    + [f"seg-{i}" for i in _ids(SEG_OK)],
)
def test_well_formed_replies(protocol, text, expected):
    reply = protocol.parse(text)
    assert reply.error is None, reply.error
    assert reply.call == expected
    assert reply.ok and reply.text == text and reply.num_calls >= 1


@pytest.mark.parametrize(
    ("protocol", "text", "reason"),
    [(EVAL, t, r) for t, r in EVAL_BAD]
    + [(RL, t, r) for t, r in RL_BAD]
    + [(SEG, t, r) for t, r in SEG_BAD],
    ids=[f"eval-{i}" for i in _ids(EVAL_BAD)]
    + [f"rl-{i}" for i in _ids(RL_BAD)]
    + [f"seg-{i}" for i in _ids(SEG_BAD)],
)
def test_malformed_replies(protocol, text, reason):
    reply = protocol.parse(text)
    assert reply.call is None and not reply.ok
    assert reason in reply.error
    assert reply.text == text


@pytest.mark.parametrize("protocol", [EVAL, RL, SEG], ids=lambda p: p.name)
@pytest.mark.parametrize("value", NOT_TEXT, ids=repr)
def test_non_text_gives_an_error_reply(protocol, value):
    reply = protocol.parse(value)
    assert reply.call is None
    assert f"reply must be a str, got {type(value).__name__}" == reply.error


def test_num_calls_and_stop_after():
    assert EVAL.parse(DOC_POS + DOC_BBOX + DOC_STOP).num_calls == 3
    assert not EVAL.parse(DOC_POS + DOC_STOP).stop_after  # EVAL never looks past the first
    rl = RL.parse(DOC_POS + DOC_STOP)
    assert rl.call == point(345, 167) and rl.stop_after and rl.num_calls == 2
    assert not RL.parse(DOC_STOP + DOC_POS).stop_after  # the call is the stop itself
    assert RL.parse(call("{bad}") + DOC_POS).num_calls == 2
    assert SEG.parse("<box>(1,2),(3,4)</box> Positive point: (5, 6)").num_calls == 2
    assert EVAL.parse("no call").num_calls == 0


def test_parsed_reply_record_is_json_ready():
    record = RL.parse(DOC_POS + DOC_STOP).to_dict()
    assert json.loads(json.dumps(record)) == {
        "call": {
            "name": "add_point",
            "arguments": {"point_2d": [345, 167], "point_type": "positive"},
        },
        "error": None,
        "num_calls": 2,
        "stop_after": True,
    }
    assert EVAL.parse("").to_dict()["error"] == "no <tool_call> found"


# ---------------------------------------------------------------------------------------------
# render
# ---------------------------------------------------------------------------------------------

ROUND_TRIP_CALLS = [
    STOP,
    point(0, 0),
    point(999, 999, "negative"),
    point(345, 167),
    point(1, 998, "negative"),
    box(0, 0, 999, 999),
    box(100, 200, 300, 400),
    box(1, 2, 3, 4),
]


@pytest.mark.parametrize("protocol", [EVAL, RL, SEG], ids=lambda p: p.name)
@pytest.mark.parametrize("tool_call", ROUND_TRIP_CALLS, ids=repr)
def test_render_parse_round_trip(protocol, tool_call):
    text = protocol.render(tool_call)
    reply = protocol.parse(text)
    assert reply.error is None, (text, reply.error)
    assert reply.call == tool_call
    assert reply.num_calls == 1 and not reply.stop_after


def test_render_texts():
    rendered = EVAL.render(point(345, 167))
    assert rendered == (
        '<tool_call>\n{"name": "add_point", "arguments": {"point_2d": [345, 167], '
        '"point_type": "positive"}}\n</tool_call>'
    )
    assert RL.render(point(345, 167)) == rendered
    assert EVAL.render(box(1, 2, 3, 4)) == (
        '<tool_call>\n{"name": "add_bbox", "arguments": {"bbox_2d": [1, 2, 3, 4]}}\n</tool_call>'
    )
    assert (
        EVAL.render(STOP) == '<tool_call>\n{"name": "stop_action", "arguments": {}}\n</tool_call>'
    )
    assert SEG.render(point(345, 167)) == "Positive point: (167, 345)"
    assert SEG.render(point(3, 4, "negative")) == "Negative point: (4, 3)"
    assert SEG.render(box(68, 308, 255, 986)) == "<box>(68,308),(255,986)</box>"
    assert SEG.render(STOP) == "Finish"


def test_render_rounds_float_coordinates():
    assert '"point_2d": [346, 167]' in EVAL.render(point(345.6, 167.2))
    assert SEG.render(point(0.4, 999.5)) == "Positive point: (1000, 0)"


@pytest.mark.parametrize("protocol", [EVAL, RL, SEG], ids=lambda p: p.name)
@pytest.mark.parametrize(
    "bad",
    [
        ToolCall("zoom", {}),
        point(1000.6, 3),
        point(-1, 3),
        point(3, 4, "maybe"),
        ToolCall("add_point", {"point_2d": (1, 2, 3), "point_type": "positive"}),
        ToolCall("add_point", {"point_2d": (True, 2), "point_type": "positive"}),
        ToolCall("add_bbox", {"bbox_2d": (1, 2, 3)}),
        ToolCall("add_bbox", {"bbox_2d": (1, 2, 3, math.nan)}),
    ],
    ids=repr,
)
def test_render_refuses_non_canonical_calls(protocol, bad):
    with pytest.raises(ValueError):
        protocol.render(bad)


# ---------------------------------------------------------------------------------------------
# Protocol attributes, as the released code runs them
# ---------------------------------------------------------------------------------------------


def test_medsam_agent_eval_settings():
    assert EVAL.name == "medsam_agent" and isinstance(EVAL, MedSAMAgentProtocol)
    assert EVAL.first_user_text("liver") == (
        "<image>The target to be segmented is: liver.\n"
        " Now, please analyze the original image, then decide your first action."
    )
    assert EVAL.later_user_text() == (
        "<image>Here is the updated mask after your previous action. Based on this, what is "
        "your next action? If the mask is now accurate, you can call 'stop_action' to finish."
    )
    assert EVAL.frame is geometry.GRID_999_ROUND
    # PIL's thumbnail (never enlarges), the mask stretched NEAREST over the square: released
    assert EVAL.image_rule == ImageRule(
        side=512, mode="thumbnail_white", resample="lanczos", overlay_mask="stretched"
    )
    assert (EVAL.max_turns, EVAL.history_turns, EVAL.retries) == (5, 5, 1)
    assert EVAL.execute_last_turn and EVAL.retry_first_stop
    assert EVAL.segmenter_call == "medsam_agent_eval"
    assert not EVAL.retries_spend_turns and EVAL.first_retry_restarts
    assert not EVAL.keep_empty_replies and EVAL.raw_box_corners
    assert EVAL.env_options() == {
        "max_turns": 5,
        "prompting": "medsam_agent_eval",
        "native_resolution": True,
        "sort_box_corners": False,
        "min_box_size": 0.0,
    }
    assert [t["function"]["name"] for t in EVAL.tools] == list(TOOL_NAMES)


def test_medsam_agent_rl_settings():
    assert RL.first_user_text("the left kidney") == (
        "The target to be segmented is: the left kidney.\n"
        "Now, please analyze the original image, then decide your first action."
    )
    assert RL.later_user_text() == (
        "Here is the updated mask after your previous action.\nBased on this, what is your "
        "next action? If the mask is now accurate, you can call 'stop_action' to finish."
    )
    assert RL.image_token == "" and RL.frame is geometry.GRID_1000_FLOOR
    assert RL.image_rule == ImageRule(side=512, mode="stretch", resample="bilinear")
    assert (RL.max_turns, RL.history_turns, RL.retries) == (5, None, 0)
    assert not RL.execute_last_turn and not RL.retry_first_stop
    assert RL.segmenter_call == "medsam_agent_rl" and RL.tools == EVAL.tools
    assert not RL.score_stop_after_mask and RL.raw_box_corners
    assert RL.env_options() == {
        "max_turns": 5,
        "prompting": "medsam_agent_rl",
        "native_resolution": True,
        "sort_box_corners": False,
        "min_box_size": 0.0,
    }


def test_a_protocols_quirks_are_switched_with_replace():
    switched = EVAL.replace(retries_spend_turns=True, keep_empty_replies=True, min_box_size=2)
    assert switched is not EVAL and switched.retries_spend_turns and switched.keep_empty_replies
    assert not EVAL.retries_spend_turns  # the registered protocol is unchanged
    assert switched.env_options()["min_box_size"] == 2.0
    assert switched.system_prompt == EVAL.system_prompt
    with pytest.raises(TypeError, match="unknown setting"):
        EVAL.replace(system_prompt="x")
    with pytest.raises(TypeError, match="retries must be like 1"):
        EVAL.replace(retries=True)
    with pytest.raises(TypeError, match="image_rule"):
        EVAL.replace(image_rule="stretch")


def test_segagent_settings():
    assert isinstance(SEG, SegAgentProtocol)
    text = SEG.first_user_text("man in red")
    assert text.startswith("Please optimize the semi-transparent green mask in a point-wise")
    assert text.endswith("The object description is as follows:<ref>man in red</ref>")
    assert SEG.later_user_text("man in red") == text
    assert SEG.frame is geometry.GRID_1000_ROUND
    assert SEG.frame_for(box(1, 2, 3, 4)) is geometry.GRID_999_FLOOR
    assert SEG.frame_for(point(1, 2)) is geometry.GRID_1000_ROUND
    assert EVAL.frame_for(box(1, 2, 3, 4)) is geometry.GRID_999_ROUND
    assert SEG.image_rule == ImageRule(
        side=448, mode="stretch", resample="bicubic", tint_first=True
    )
    assert (SEG.history_turns, SEG.retries, SEG.tools) == (0, 0, ())


def test_targets_with_braces_are_inserted_verbatim():
    assert "{x} and {0}" in EVAL.first_user_text("{x} and {0}")


# ---------------------------------------------------------------------------------------------
# Integer grids (medseg_env.geometry)
# ---------------------------------------------------------------------------------------------

FRAMES = [
    geometry.GRID_999_ROUND,
    geometry.GRID_1000_FLOOR,
    geometry.GRID_1000_ROUND,
    geometry.GRID_999_FLOOR,
]
RELEASED = {  # the released formulas, in Python
    geometry.GRID_999_ROUND: lambda v, s: round(v / 999.0 * s),
    geometry.GRID_1000_FLOOR: lambda v, s: int(v * s / 1000),
    geometry.GRID_1000_ROUND: lambda v, s: round(v / 1000 * s),
    geometry.GRID_999_FLOOR: lambda v, s: int(v / 999 * s),
}


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f.name)
@pytest.mark.parametrize("size", [1, 2, 7, 256, 333, 512, 999, 1000, 1001, 1024, 4096])
def test_to_pixels_is_the_released_formula(frame, size):
    values = list(range(frame.max_value + 1)) + [0.5, 12.25, 499.5, 998.75]
    got = frame.to_pixels(np.array(values), size)
    assert got.dtype == np.int64
    assert got.tolist() == [RELEASED[frame](v, size) for v in values]
    assert 0 <= got.min() and got.max() <= size


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f.name)
def test_from_pixels_inverts_to_pixels_when_the_grid_is_finer(frame):
    for size in range(1, 701):
        top = int(frame.to_pixels(frame.max_value, size))
        pixels = np.arange(top + 1)
        values = frame.from_pixels(pixels, size)
        assert values.dtype == np.int64
        assert values.min() >= 0 and values.max() <= frame.max_value
        assert np.array_equal(frame.to_pixels(values, size), pixels), size


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f.name)
@pytest.mark.parametrize("size", [1024, 1500, 2048, 4999])
def test_from_pixels_on_a_coarser_grid_gives_the_nearest_pixel(frame, size):
    pixels = np.arange(size + 1)
    values = frame.from_pixels(pixels, size)
    back = frame.to_pixels(values, size)
    reachable = frame.to_pixels(np.arange(frame.max_value + 1), size)
    # no grid value lands nearer the pixel than the one chosen
    nearest = np.abs(reachable[None, :] - pixels[:, None]).min(axis=1)
    assert np.array_equal(np.abs(back - pixels), nearest)
    assert np.all(np.diff(values) >= 0)
    assert values.min() >= 0 and values.max() <= frame.max_value


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f.name)
def test_from_pixels_clips_and_keeps_shape(frame):
    out = frame.from_pixels([[-5, 0], [10**6, 3]], 100)
    assert out.shape == (2, 2)
    assert out[0, 0] == 0 and out[1, 0] == frame.max_value
    assert frame.from_pixels(3, 100).shape == ()


def test_grid_frame_refuses_bad_input():
    frame = geometry.GRID_999_ROUND
    for size in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            frame.to_pixels([1], size)
        with pytest.raises(ValueError, match="positive integer"):
            frame.from_pixels([1], size)
    with pytest.raises(ValueError, match="finite"):
        frame.to_pixels([np.nan], 10)
    with pytest.raises(ValueError, match="finite"):
        frame.from_pixels([np.inf], 10)
    with pytest.raises(ValueError, match="max_value <= divisor"):
        geometry.GridFrame("bad", 1000, 999)
    with pytest.raises(ValueError, match="rounding"):
        geometry.GridFrame("bad", 999, 999, "ceil")  # type: ignore[arg-type]
    assert frame.to_pixels(np.int64(999), np.int64(10)) == 10


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


class _Echo(Protocol):
    name = "echo"
    system_prompt = ""
    first_turn = "{target}"
    later_turn = ""
    frame = geometry.GRID_999_ROUND

    def parse(self, text):
        return ParsedReply(str(text), STOP, None, 1)

    def render(self, call):
        return "stop"


def test_builtins_are_registered_in_order():
    assert registered_protocols()[:3] == ["medsam_agent", "medsam_agent_rl", "segagent"]
    for name in ("medsam_agent", "medsam_agent_rl", "segagent"):
        assert get_protocol(name).name == name
    assert get_protocol(EVAL) is EVAL


def test_unknown_name_and_wrong_type():
    with pytest.raises(KeyError, match="unknown protocol 'nope'; known: \\['medsam_agent'"):
        get_protocol("nope")
    with pytest.raises(ValueError):
        get_protocol("nope")
    with pytest.raises(UnknownNameError):
        get_protocol("nope")
    with pytest.raises(TypeError, match="registered name or a Protocol"):
        get_protocol(42)  # type: ignore[arg-type]


def test_user_registration():
    echo = _Echo()
    try:
        register_protocol("test-echo", echo)
        register_protocol("test-echo-factory", _Echo)
        assert registered_protocols()[-2:] == ["test-echo", "test-echo-factory"]
        assert get_protocol("test-echo") is echo
        made = get_protocol("test-echo-factory")
        assert isinstance(made, _Echo) and made.parse("x").call == STOP
        with pytest.raises(ValueError, match="already registered"):
            register_protocol("test-echo", _Echo)
        register_protocol("test-echo", _Echo, overwrite=True)
        assert isinstance(get_protocol("test-echo"), _Echo)
        with pytest.raises(ValueError, match="already registered"):
            register_protocol("segagent", _Echo)
        with pytest.raises(TypeError, match="must be a Protocol or a callable"):
            register_protocol("test-bad", 5)  # type: ignore[arg-type]
        register_protocol("test-bad-factory", lambda: "not a protocol")  # type: ignore[arg-type,return-value]
        with pytest.raises(TypeError, match="not a Protocol"):
            get_protocol("test-bad-factory")
    finally:
        for name in ("test-echo", "test-echo-factory", "test-bad-factory"):
            if name in PROTOCOLS:
                PROTOCOLS.unregister(name)
    assert "test-echo" not in registered_protocols()


def test_a_protocol_names_a_registered_prompting_rule():
    for name in registered_protocols():
        assert get_protocol(name).segmenter_call in prompting_rule_names()

    class _OwnCall(_Echo):
        segmenter_call = "every_other_click"

    with pytest.raises(ValueError, match=r"'every_other_click'.*known: \['accumulate'"):
        get_protocol(_OwnCall())
    register_prompting_rule("every_other_click", Accumulate)
    try:
        assert get_protocol(_OwnCall()).segmenter_call == "every_other_click"
    finally:
        PROMPTING_RULES.unregister("every_other_click")
