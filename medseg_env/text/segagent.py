"""SegAgent's text protocol, as its released evaluation code (``evaltools/``, ``21eca0a``) runs it.

SegAgent (``aim-uofa/SegAgent``) fine-tunes Qwen-VL-Chat (the first Qwen-VL) to refine a
mask one click at a time. Its released ``evaltools/model_loader.py``
(``GroundingModel_Qwen_full``, the ``qwen-full`` model that ``run_eval.sh`` evaluates) and
``evaltools/refcocog_eval.py`` show:

- **no task system prompt**: every step sends Qwen-VL's default system message
  ``"You are a helpful assistant."`` and one fresh user turn, with no history
  (``history_turns=0``)::

      Picture 1: <img>{overlay image path}</img>
      Please optimize the semi-transparent green mask in a point-wise manner based on the image
      and description content, so that it covers the target object as accurately as possible.
      The object description is as follows:<ref>{target}</ref>

  (one line after ``</img>\\n``; ``Picture 1: <img>…</img>\\n`` is Qwen-VL's own image markup,
  which its tokenizer writes for an image part, so ``image_token`` is empty);
- **the image**: the mask is tinted on the image at its own resolution (green, alpha 0.5,
  ``pixel * 0.5 + green * 0.5`` truncated to uint8; an empty mask on the first step), saved
  to a temporary file (JPEG when the source is ``.jpg``), and Qwen-VL-Chat resizes it to
  448×448 itself (its visual transform: a bicubic stretch; that part is Qwen-VL's code, not
  in SegAgent's repository);
- **the reply**: ``Positive point: (a, b)`` or ``Negative point: (a, b)``, integers on a
  0–1000 grid. The code turns it into a click at ``row = round(a / 1000 * H)``, ``col =
  round(b / 1000 * W)`` (SimpleClick's ``Click.coords`` is ``(y, x)``), so the FIRST number is
  the row: the pair is ``(y, x)``, not ``(x, y)``. The comment example ``<box>(68,308),
  (255,986)</box> Positive point: (679, 186)`` for "person bottom left" agrees: ``(679,
  186)`` is inside that box only read as ``(y, x)``. Parsing follows the code: the reply is
  positive when it contains ``Positive point`` anywhere, else negative when it contains
  ``Negative point``; the numbers are the first ``(...)`` after the last ``point: ``, split
  at commas and read with ``int`` (so ``(1.5, 2)`` is an error and extra numbers are
  ignored);
- **boxes** (``qwen-full-box`` variants only): ``<box>(x1,y1),(x2,y2)</box>``, Qwen-VL's
  ``(x, y)`` order, read with ``float`` and mapped with ``int(v / 999 * size)``
  (``box_frame = GRID_999_FLOOR``). There the box comes *with* a point in one reply and
  both prompt the segmenter together; here a reply's point wins and a reply with only a box
  gives ``add_bbox`` (an extension: the default ``qwen-full`` ignores boxes);
- **the end**: there is no stop tool. ``n_clicks`` steps at most (``run_eval.sh`` uses 7,
  the argument default is 5), and the first reply without a readable point ends the episode
  (the ``finish_action`` option only labels a reply containing ``Finish``). Here a reply with
  ``Finish`` and no point or box is ``stop_action``; any other reply without a point is an
  error, which ends the episode (``retries=0``);
- every click goes to the segmenter with all previous clicks and the previous logits
  (``use_previous_mask 1``): ``segmenter_call="accumulate"``.

Coordinates outside the grid (0..1000 for points, 0..999 for boxes) are an error here; the
released code does not check them.
"""

from __future__ import annotations

import math
import re

from .. import geometry
from .protocol import ImageRule, ParsedReply, Protocol, ToolCall, grid_integers

USER_TEXT = (
    "Please optimize the semi-transparent green mask in a point-wise manner based on the "
    "image and description content, so that it covers the target object as accurately as "
    "possible. The object description is as follows:<ref>{target}</ref>"
)

_PARENS = re.compile(r"\((.*?)\)")
_BOX_CORNERS = re.compile(r"\((.*?)\),\((.*?)\)")


def _int_or_float(token: str) -> int | float:
    """A box number as ``float`` reads it, kept an ``int`` when it is one."""
    try:
        return int(token)
    except ValueError:
        return float(token)


class SegAgentProtocol(Protocol):
    """SegAgent's point-wise refinement protocol; see the module docstring."""

    name = "segagent"
    system_prompt = "You are a helpful assistant."
    first_turn = USER_TEXT
    later_turn = USER_TEXT
    image_token = ""
    tools = ()
    frame = geometry.GRID_1000_ROUND
    box_frame = geometry.GRID_999_FLOOR
    image_rule = ImageRule(side=448, mode="stretch", resample="bicubic", tint_first=True)
    overlay_color = (0, 255, 0)
    overlay_alpha = 0.5
    history_turns = 0
    max_turns = 7
    execute_last_turn = True
    retries = 0
    segmenter_call = "accumulate"

    def parse(self, text: str) -> ParsedReply:
        if not isinstance(text, str):
            return ParsedReply("", None, f"reply must be a str, got {type(text).__name__}")
        try:
            return self._parse(text)
        except Exception as err:  # a safety net: parse never raises (the tests keep it unused)
            return ParsedReply(text, None, f"unparseable reply ({type(err).__name__}: {err})")

    def _parse(self, text: str) -> ParsedReply:
        points = text.count("Positive point") + text.count("Negative point")
        boxes = text.count("<box>")
        num_calls = points + boxes

        def fail(reason: str) -> ParsedReply:
            return ParsedReply(text, None, reason, num_calls)

        if points:
            kind = "positive" if "Positive point" in text else "negative"
            groups = _PARENS.findall(text.split("point: ")[-1])
            if not groups:
                return fail("no (y, x) after 'point: '")
            try:
                numbers = [int(part) for part in groups[0].split(",")]
            except ValueError:
                return fail(f"point needs integers, got ({groups[0][:40]})")
            if len(numbers) < 2:
                return fail(f"point needs 2 numbers, got {len(numbers)}")
            row, col = numbers[0], numbers[1]
            for value in (row, col):
                if not 0 <= value <= self.frame.max_value:
                    return fail(f"point value {value} outside 0..{self.frame.max_value}")
            call = ToolCall("add_point", {"point_2d": (col, row), "point_type": kind})
            return ParsedReply(text, call, None, num_calls)

        if boxes:
            inside = text.split("<box>")[-1].split("</box>")[0]
            corners = _BOX_CORNERS.findall(inside)
            if not corners:
                return fail("no (x1,y1),(x2,y2) in <box>")
            first, second = corners[0][0].split(","), corners[0][1].split(",")
            if len(first) != 2 or len(second) != 2:  # each corner is "x,y"
                return fail(f"bbox_2d needs 4 numbers, got {len(first) + len(second)}")
            parts = first + second
            try:
                values = tuple(_int_or_float(part) for part in parts)
            except ValueError:
                return fail(f"bbox_2d needs numbers, got ({corners[0][0][:20]}),(...)")
            frame = self.box_frame or self.frame
            for number in values:
                if not math.isfinite(number):
                    return fail(f"bbox_2d value {number} is not finite")
                if not 0 <= number <= frame.max_value:
                    return fail(f"bbox_2d value {number} outside 0..{frame.max_value}")
            return ParsedReply(text, ToolCall("add_bbox", {"bbox_2d": values}), None, num_calls)

        if "Finish" in text:
            return ParsedReply(text, ToolCall("stop_action", {}), None, 1)
        return fail("no 'Positive point' or 'Negative point' found")

    def render(self, call: ToolCall) -> str:
        """``Positive point: (y, x)``, ``<box>(x1,y1),(x2,y2)</box>`` or ``Finish``."""
        if call.name == "add_point":
            kind = call.arguments.get("point_type")
            if kind not in ("positive", "negative"):
                raise ValueError(f"point_type must be 'positive' or 'negative'; got {kind!r}")
            x, y = grid_integers(call.arguments.get("point_2d"), 2, "point_2d", self.frame)
            return f"{kind.capitalize()} point: ({y}, {x})"
        if call.name == "add_bbox":
            frame = self.box_frame or self.frame
            x1, y1, x2, y2 = grid_integers(call.arguments.get("bbox_2d"), 4, "bbox_2d", frame)
            return f"<box>({x1},{y1}),({x2},{y2})</box>"
        if call.name == "stop_action":
            return "Finish"
        raise ValueError(f"unknown tool {call.name!r}")
