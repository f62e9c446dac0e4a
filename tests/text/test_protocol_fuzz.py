"""Property-based fuzzing of the text protocols' parsers.

For any input, ``parse`` returns a ``ParsedReply`` without raising, never through its safety
net, and any call it returns is canonical: a known tool, the canonical arguments, every
coordinate a finite real inside the protocol's grid, so ``frame.to_pixels`` puts it inside any
image; and ``render`` writes it back to a reply that parses to the same call.
"""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medseg_env.text import TOOL_NAMES, ParsedReply, Protocol, get_protocol

PROTOCOLS = [get_protocol(name) for name in ("medsam_agent", "medsam_agent_rl", "segagent")]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FRAGMENTS = [
    "<tool_call>",
    "</tool_call>",
    "\n",
    " ",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    '"',
    '{"name": ',
    '"name"',
    '"arguments": ',
    '"add_point"',
    '"add_bbox"',
    '"stop_action"',
    '"add_positive_point"',
    '"add_negative_point"',
    "add_point",
    '"point_2d": ',
    '"bbox_2d": ',
    '"point_type": ',
    '"positive"',
    '"negative"',
    '"Positive"',
    '"x": ',
    'y": ',
    "NaN",
    "Infinity",
    "-",
    "1e400",
    "true",
    "null",
    "```",
    "Positive point: ",
    "Negative point: ",
    "point: ",
    "(",
    ")",
    "<box>",
    "</box>",
    "Finish",
    "<|im_end|>",
]

numbers = st.one_of(
    st.integers(-20, 1200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 999, 1000, 10**30, -0.0, 0.5, 998.9999]),
)
fragment_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), numbers.map(str), st.text(max_size=4)), max_size=40
).map("".join)

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=6)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
names = st.one_of(
    st.sampled_from([*TOOL_NAMES, "add_positive_point", "add_negative_point"]), json_values
)
arguments = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "point_2d": st.one_of(st.lists(numbers, max_size=4), json_values),
            "bbox_2d": st.one_of(st.lists(numbers, max_size=5), json_values),
            "point_type": st.one_of(
                st.sampled_from(["positive", "negative", "Negative"]), json_values
            ),
            "x": numbers,
            "y": numbers,
        },
    ),
    json_values,
)


coordinate = st.one_of(
    st.integers(0, 999), st.integers(0, 999), st.integers(-2, 1001), st.floats(0, 999), numbers
)


def lists_near(size: int):
    exact = st.lists(coordinate, min_size=size, max_size=size)
    return st.one_of(exact, exact, st.lists(coordinate, min_size=size - 1, max_size=size + 1))


good_arguments = {
    "add_point": st.fixed_dictionaries(
        {
            "point_2d": lists_near(2),
            "point_type": st.sampled_from(["positive", "negative", "Negative", "up"]),
        }
    ),
    "add_bbox": st.fixed_dictionaries({"bbox_2d": lists_near(4)}),
    "stop_action": st.just({}),
    "add_positive_point": st.fixed_dictionaries({"x": coordinate, "y": coordinate}),
    "add_negative_point": st.fixed_dictionaries({"x": coordinate, "y": coordinate}),
}


@st.composite
def hermes_replies(draw) -> str:
    """Replies of one or more near-valid JSON calls, with prose around them."""
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):  # the right keys for the name, values near the grid
            name = draw(st.sampled_from(sorted(good_arguments)))
            payload = {"name": name, "arguments": draw(good_arguments[name])}
        else:
            payload = {"name": draw(names), "arguments": draw(arguments)}
        body = json.dumps(payload, allow_nan=True)
        if draw(st.booleans()):
            body = "\n" + body + "\n"
        parts.append(draw(st.text(max_size=5)) + "<tool_call>" + body + "</tool_call>")
    return "".join(parts) + draw(st.sampled_from(["", "<|im_end|>", "\nDone."]))


@st.composite
def segagent_replies(draw) -> str:
    kind = draw(st.sampled_from(["Positive point: ", "Negative point: ", "point: ", ""]))
    nums = draw(st.lists(coordinate.map(str), max_size=3))
    reply = f"{kind}({', '.join(nums)})"
    if draw(st.booleans()):
        corners = draw(st.lists(coordinate.map(str), min_size=4, max_size=4))
        reply = f"<box>({corners[0]},{corners[1]}),({corners[2]},{corners[3]})</box> " + reply
    return reply


def check(protocol: Protocol, text, reply: ParsedReply) -> None:
    assert isinstance(reply, ParsedReply)
    assert (reply.call is None) == (reply.error is not None)
    assert reply.num_calls >= 0
    if reply.error is not None:
        assert reply.error and not reply.error.startswith("unparseable reply"), reply.error
        return
    assert reply.text == text
    call = reply.call
    assert call is not None and call.name in TOOL_NAMES
    frame = protocol.frame_for(call)
    args = dict(call.arguments)
    if call.name == "stop_action":
        assert args == {}
        coords: tuple = ()
    elif call.name == "add_point":
        assert set(args) == {"point_2d", "point_type"}
        assert args["point_type"] in ("positive", "negative")
        coords = args["point_2d"]
        assert isinstance(coords, tuple) and len(coords) == 2
    else:
        assert set(args) == {"bbox_2d"}
        coords = args["bbox_2d"]
        assert isinstance(coords, tuple) and len(coords) == 4
    for value in coords:
        assert isinstance(value, int | float) and not isinstance(value, bool)
        assert math.isfinite(value) and 0 <= value <= frame.max_value
    for size in (1, 3, 448, 512, 1000, 1023, 4096):
        pixels = frame.to_pixels(list(coords), size)
        assert ((0 <= pixels) & (pixels <= size)).all()
    if all(isinstance(v, int) for v in coords):
        again = protocol.parse(protocol.render(call))
        assert again.call == call, (protocol.render(call), again.error)


@FUZZ
@given(text=st.one_of(st.text(), fragment_text))
def test_any_text_parses_without_raising(text):
    for protocol in PROTOCOLS:
        check(protocol, text, protocol.parse(text))


@FUZZ
@given(text=hermes_replies())
def test_near_valid_tool_calls(text):
    for protocol in PROTOCOLS:
        check(protocol, text, protocol.parse(text))


@FUZZ
@given(text=segagent_replies())
def test_near_valid_segagent_replies(text):
    for protocol in PROTOCOLS:
        check(protocol, text, protocol.parse(text))


@FUZZ
@given(value=st.one_of(st.none(), st.binary(), st.integers(), st.floats(), st.lists(st.text())))
def test_non_text_is_an_error(value):
    for protocol in PROTOCOLS:
        reply = protocol.parse(value)
        assert reply.call is None and reply.error.startswith("reply must be a str")


@FUZZ
@given(size=st.integers(1, 100_000), value=st.floats(0, 1000))
def test_grid_values_map_inside_any_image(size, value):
    for protocol in PROTOCOLS:
        for frame in {protocol.frame, protocol.box_frame or protocol.frame}:
            v = min(value, frame.max_value)
            assert 0 <= int(frame.to_pixels(v, size)) <= size
            back = frame.from_pixels(frame.to_pixels(v, size), size)
            assert 0 <= int(back) <= frame.max_value
