"""MedSAM-Agent's two text protocols, as its released code (commit ``bfb43be``) runs them.

Both share the three tool schemas (``TOOLS``, the released ``tools_json_v2``) and the system
prompt (``SYSTEM_PROMPT``, byte-identical to ``system_prompt_v2`` of
``infer/models/model_loader.py`` and to the prompt ``RL-verl/recipe/medsam_agent/
medsam_dataset.py`` builds), and both reply in Qwen's Hermes format
(``medseg_env.text.hermes``)::

    <tool_call>
    {"name": "add_point", "arguments": {"point_2d": [345, 167], "point_type": "positive"}}
    </tool_call>

``medsam_agent`` (EVAL: ``infer/unibiomed_inference_toolusing.py`` with
``GroundingModel_QwenVL_WithHistory``):

- user texts start with a literal ``<image>`` (after the image part, so the model reads the
  string ``<image>``); the first is ``"<image>The target to be segmented is: {target}.\\n Now,
  please analyze..."`` (a space after the newline);
- the image is ``thumbnail``-ed to 512 (PIL's ``Image.thumbnail``, Lanczos: its own size
  rounding and two-step reduction, and it never enlarges, so a smaller image is only padded)
  and pasted centred on a white 512×512 canvas (``ImageRule(mode="thumbnail_white")``). The
  overlay is made *after* that: the mask, at the original ``H×W``, is resized to 512×512 with
  NEAREST and thresholded at ``> 128`` (stretched over the whole canvas, padding included, so
  it is misaligned with the content of any non-square or smaller-than-512 image:
  ``overlay_mask="stretched"``), then ``pixel * 0.5 + green * 0.5`` (float, truncated to
  uint8) on the mask; the first turn shows no overlay;
- a grid value maps to ``round(v / 999 * W)`` of the ORIGINAL image (``GRID_999_ROUND``), not
  of the padded thumbnail the model saw: the two agree only for square images of >= 512 px;
- a box is passed to the segmenter as the two corners the model wrote, each mapped to a pixel
  coordinate (``round(v / 999 * W)``) and nothing more: not sorted, no ``+1`` on the far
  edge, 999 not clamped (``raw_box_corners``; the env option ``sort_box_corners=False``);
- parsing reads the first ``<tool_call>\\s*{...}\\s*</tool_call>`` only; keys missing their
  opening quote (``{"x": 5, y": 6}``) are repaired by the released regex (fully unquoted keys
  are not); the legacy ``add_positive_point`` / ``add_negative_point`` (arguments ``x``,
  ``y``) are accepted; ``point_type`` is compared lower-cased; ``point_2d`` may hold more than
  two numbers (the first two are used); box corners are taken in either order;
- a reply with no usable call is retried once (``retries=1``; the retry counter resets after
  every action), and a ``stop_action`` as the very first action is retried once too, from the
  same budget (``retry_first_stop``). Retries do not spend the turn budget: the loop runs
  ``while actual_click_count < max_clicks`` and counts executed actions only
  (``infer/unibiomed_inference_toolusing.py`` lines 356-516; ``retries_spend_turns=False``).
  Before the first action the runner scripts (``reset_history_per_image=True``:
  ``infer/run_single_inference.py`` line 125, ``infer/unibiomed_inference_toolusing_multi_gpu.py``
  line 429) clear the history at every prompt (lines 363-373), so a first-turn retry resends
  the turn-1 text with a fresh history (``first_retry_restarts``); a later retried reply stays
  in the history (and adds one more history image), and the retry is asked with the
  later-turn text again. An empty reply is never saved to the history
  (``infer/models/model_loader.py`` line 1146, ``if save_history and response``), so it is
  asked again unchanged (``keep_empty_replies=False``);
- up to 5 actions (``max_turns``; retried replies do not count); the history keeps the last 5
  turns (``max_history_length=5``), but each history user message shows the overlay of the
  *next* turn (the intermediate image list starts at turn 1 and is indexed from the history's
  start), and the newest history turn shows the original full-size image, not the thumbnail
  (``infer/models/model_loader.py`` lines 940-975 and 1056-1075; ``shifted_history_images``);
- the segmenter segments the original image (``native_resolution``; ``min_box_size=0``: any
  box runs) and is called as ``medsam_agent_eval``; generation is capped at 128 new tokens.

``medsam_agent_rl`` (RL: ``medsam_dataset.py``, ``medsam_iterative_agent_loop.py``, the verl
tools ``verl/tools/medsam_unified_point_tools.py``, ``configs/``, ``run.sh``):

- no ``<image>`` text; ``"...{target}.\\nNow, please analyze..."`` and ``"...previous
  action.\\nBased on this, ..."``;
- the image is stretched to 512×512 (PIL BILINEAR). The overlay is made on that 512×512
  image: the tool's mask (at the original size) is resized with BILINEAR and thresholded at
  ``> 127``, then ``image * (1 - 0.5 m) + green * 0.5 m`` truncated to uint8;
- a grid value maps to ``int(v * W / 1000)`` of the original image (``GRID_1000_FLOOR``),
  consistent with the stretched view;
- parsing is verl's Hermes parser: every ``<tool_call>(.*?)</tool_call>`` is JSON-decoded
  (a failed one is retried with newlines replaced by spaces, else skipped); the first decoded
  call is executed (``max_parallel_calls=1``); an unknown name in *any* decoded call ends the
  episode; a ``stop_action`` in any call ends it after the first call runs (``stop_after``);
  ``point_type`` must be exactly ``positive``/``negative``; ``point_2d`` exactly 2 numbers;
  ``x1 >= x2`` or ``y1 >= y2`` is an error;
- a reply with no call, or a call the tool rejects, ends the episode (``retries=0``);
- a reply whose first call runs and a later call is ``stop_action`` ends the episode, and
  the mask of the call that ran is left out of the masks the reward scores
  (``medsam_iterative_agent_loop.py`` lines 466-476; ``score_stop_after_mask=False``);
- at most 5 assistant turns; the 5th reply is generated but never executed
  (``execute_last_turn=False``), so at most 4 actions; the full history is kept;
- each tool name has its own segmentation-server session, so ``add_bbox`` and ``add_point``
  chain their logits separately (``prompting="medsam_agent_rl"``); the server is SAM 2.1
  hiera-tiny at 1024 with one mask per call (``MedSAM2(medsam_agent_rl=True)``); the original
  image is segmented and scored (``native_resolution``, ``min_box_size=0``), and a box's
  corners are passed as written (``raw_box_corners``: ``int(v * W / 1000)``, no ``+1``).

Neither released path checks the grid range (nor, on RL, ``bool`` or finite values); here an
out-of-range, non-finite, boolean or string coordinate is an error, so every parsed call maps
into the image.

Both protocols reproduce the released code by default; each rule above that a user may not
want is a protocol setting, switched with ``protocol.replace(...)`` (``Protocol.SETTINGS``),
or an env option. ``docs/medsam-agent.md`` lists them, with the released file and line.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from typing import Any

from .. import geometry
from .hermes import (
    call_blocks,
    call_objects,
    decode_block,
    json_kind,
    json_problem,
    no_call_reason,
    render_call,
)
from .protocol import TOOL_NAMES, ImageRule, ParsedReply, Protocol, ToolCall, grid_integers

TOOLS: tuple[dict[str, Any], ...] = (
    {
        "type": "function",
        "function": {
            "name": "add_bbox",
            "description": "Add a bounding box to initialize or refine the segmentation.",
            "parameters": {
                "type": "object",
                "properties": {
                    "bbox_2d": {
                        "type": "array",
                        "items": {"type": "integer"},
                        "minItems": 4,
                        "maxItems": 4,
                        "description": "2D bounding box in [x1, y1, x2, y2] format",
                    }
                },
                "required": ["bbox_2d"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add_point",
            "description": (
                "Add a point to refine the mask "
                "(positive to include areas, negative to exclude areas)."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "point_2d": {
                        "type": "array",
                        "items": {"type": "integer"},
                        "minItems": 2,
                        "maxItems": 2,
                        "description": (
                            "2D coordinate point in [x, y] format, with x and y in range [0, 999]"
                        ),
                    },
                    "point_type": {
                        "type": "string",
                        "enum": ["positive", "negative"],
                        "description": (
                            "Type of point: 'positive' to expand mask, 'negative' to refine mask"
                        ),
                    },
                },
                "required": ["point_2d", "point_type"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "stop_action",
            "description": (
                "Stop the refinement process when the mask accurately covers the target object."
            ),
            "parameters": {"type": "object", "properties": {}, "required": []},
        },
    },
)
"""The released ``tools_json_v2``, in its order (the system prompt lists them so)."""

# The released construction: one ``json.dumps`` (default separators) of each tool per line.
SYSTEM_PROMPT = (
    "You are a professional segmentation annotator specializing in mask creation and "
    "refinement. Your core task is to segment the USER-SPECIFIED TARGET REGION from the "
    "provided image. "
    "No preliminary mask is available\u2014you must first create an initial mask using the "
    "tool, then iteratively refine it to achieve pixel-level accuracy. "
    "The mask will be displayed as a semi-transparent green overlay; your goal is to ensure it "
    "exactly covers the entire target region and excludes all non-target areas (e.g., "
    "background, adjacent objects).\n\n"
    "# Tools\n\n"
    "You must call one function to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n" + "\n".join(json.dumps(tool) for tool in TOOLS) + "\n"
    "</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    "<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>\n\n"
    "Only use the provided functions to complete your task. Do not invent or assume any other "
    "functions. Carefully consider the current mask state before each action."
)

_EVAL_KEY_FIX = re.compile(r'([,{]\s*)([a-zA-Z_]\w*)(\s*":\s*)')
_LEGACY_POINTS = {"add_positive_point": "positive", "add_negative_point": "negative"}
_POINT_TYPES = ("positive", "negative")

_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40
_repr.maxlong = 40
_repr.maxlist = 6
_repr.maxdict = 4


def _short(value: Any) -> str:
    """A short repr of a value for an error message."""
    return _repr.repr(value)


def _value_error(value: Any, key: str, frame: geometry.GridFrame) -> str | None:
    """Why ``value`` is not a grid coordinate, or None when it is one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{key} value {_short(value)} is not a number"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{key} value {value!r} is not finite"
    if not 0 <= value <= frame.max_value:
        return f"{key} value {_short(value)} outside 0..{frame.max_value}"
    return None


def _coordinates(
    values: Any, key: str, count: int, frame: geometry.GridFrame, *, extra_ok: bool = False
) -> tuple[tuple[Any, ...] | None, str | None]:
    """``count`` grid coordinates from a JSON list, or the reason there are none."""
    if not isinstance(values, list):
        return None, f"{key} must be a list of {count} numbers, got {json_kind(values)}"
    if len(values) < count or (len(values) > count and not extra_ok):
        return None, f"{key} needs {count} numbers, got {len(values)}"
    for value in values[:count]:
        problem = _value_error(value, key, frame)
        if problem is not None:
            return None, problem
    return tuple(values[:count]), None


def render_arguments(call: ToolCall, frame: geometry.GridFrame) -> dict[str, Any]:
    """The JSON arguments of a canonical call, coordinates rounded to integers."""
    if call.name == "add_bbox":
        return {"bbox_2d": grid_integers(call.arguments.get("bbox_2d"), 4, "bbox_2d", frame)}
    if call.name == "add_point":
        point_type = call.arguments.get("point_type")
        if point_type not in _POINT_TYPES:
            raise ValueError(f"point_type must be 'positive' or 'negative'; got {point_type!r}")
        point = grid_integers(call.arguments.get("point_2d"), 2, "point_2d", frame)
        return {"point_2d": point, "point_type": point_type}
    if call.name == "stop_action":
        return {}
    raise ValueError(f"unknown tool {call.name!r}; known: {list(TOOL_NAMES)}")


class _MedSAMAgentBase(Protocol):
    """What both MedSAM-Agent protocols share: the prompt, the tools and the reply text."""

    system_prompt = SYSTEM_PROMPT
    tools = TOOLS
    overlay_color = (0, 255, 0)
    overlay_alpha = 0.5
    max_turns = 5

    def parse(self, text: str) -> ParsedReply:
        if not isinstance(text, str):
            return ParsedReply("", None, f"reply must be a str, got {type(text).__name__}")
        try:
            return self._parse(text)
        except Exception as err:  # a safety net: parse never raises (the tests keep it unused)
            return ParsedReply(text, None, f"unparseable reply ({type(err).__name__}: {err})")

    def _parse(self, text: str) -> ParsedReply:
        raise NotImplementedError

    def render(self, call: ToolCall) -> str:
        """``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, Qwen's layout.

        The JSON is ``json.dumps`` with its default separators, as Qwen's chat template
        (``tojson``) writes a call and as the system prompt shows the format
        (``hermes.render_call``).
        """
        return render_call(call.name, render_arguments(call, self.frame))


class MedSAMAgentProtocol(_MedSAMAgentBase):
    """MedSAM-Agent's EVAL path (``infer/``); see the module docstring for its behaviour."""

    name = "medsam_agent"
    image_token = "<image>"
    first_turn = (
        "The target to be segmented is: {target}.\n"
        " Now, please analyze the original image, then decide your first action."
    )
    later_turn = (
        "Here is the updated mask after your previous action. Based on this, what is your next "
        "action? If the mask is now accurate, you can call 'stop_action' to finish."
    )
    frame = geometry.GRID_999_ROUND
    image_rule = ImageRule(
        side=512, mode="thumbnail_white", resample="lanczos", overlay_mask="stretched"
    )
    history_turns = 5
    execute_last_turn = True
    retries = 1
    retry_first_stop = True
    segmenter_call = "medsam_agent_eval"
    native_resolution = True
    min_box_size = 0.0
    raw_box_corners = True
    retries_spend_turns = False
    first_retry_restarts = True
    keep_empty_replies = False
    shifted_history_images = True

    def _parse(self, text: str) -> ParsedReply:
        found = call_objects(text)
        if not found:
            return ParsedReply(text, None, no_call_reason(text))
        num_calls = len(found)

        def fail(reason: str) -> ParsedReply:
            return ParsedReply(text, None, reason, num_calls)

        fixed = _EVAL_KEY_FIX.sub(r'\1"\2\3', found[0])
        try:
            obj = json.loads(fixed)
        except (ValueError, RecursionError) as err:
            return fail(json_problem(err))
        if not isinstance(obj, dict):  # cannot happen for "{...}" text; kept for safety
            return fail(f"a tool call must be a JSON object, got {json_kind(obj)}")
        name = obj.get("name", "")
        arguments = obj.get("arguments", {})
        if not isinstance(name, str):
            return fail(f"unknown tool {_short(name)}")
        if name == "stop_action":  # the released code never looks at its arguments
            return ParsedReply(text, ToolCall("stop_action", {}), None, num_calls)
        if name not in ("add_bbox", "add_point", *_LEGACY_POINTS):
            return fail(f"unknown tool {_short(name)}")
        if not isinstance(arguments, dict):
            return fail(f"{name} arguments must be a JSON object, got {json_kind(arguments)}")

        if name == "add_bbox":
            bbox = arguments.get("bbox_2d")
            if bbox is None:
                return fail("add_bbox needs bbox_2d")
            coords, problem = _coordinates(bbox, "bbox_2d", 4, self.frame)
            if coords is None:
                return fail(problem or "bad bbox_2d")
            return ParsedReply(text, ToolCall("add_bbox", {"bbox_2d": coords}), None, num_calls)

        if name == "add_point":
            point_type = arguments.get("point_type", "")
            if not isinstance(point_type, str) or point_type.lower() not in _POINT_TYPES:
                return fail(
                    f"point_type must be 'positive' or 'negative', got {_short(point_type)}"
                )
            point = arguments.get("point_2d")
            if point is None:
                return fail("add_point needs point_2d")
            coords, problem = _coordinates(point, "point_2d", 2, self.frame, extra_ok=True)
            kind = point_type.lower()
        else:  # add_positive_point / add_negative_point: {"x": .., "y": ..}
            x, y = arguments.get("x"), arguments.get("y")
            if x is None or y is None:
                return fail(f"{name} needs x and y")
            problem = _value_error(x, "x", self.frame) or _value_error(y, "y", self.frame)
            coords = None if problem else (x, y)
            kind = _LEGACY_POINTS[name]
        if coords is None:
            return fail(problem or "bad point")
        call = ToolCall("add_point", {"point_2d": coords, "point_type": kind})
        return ParsedReply(text, call, None, num_calls)


class MedSAMAgentRLProtocol(_MedSAMAgentBase):
    """MedSAM-Agent's RL path (``RL-verl/``); see the module docstring for its behaviour."""

    name = "medsam_agent_rl"
    image_token = ""
    first_turn = (
        "The target to be segmented is: {target}.\n"
        "Now, please analyze the original image, then decide your first action."
    )
    later_turn = (
        "Here is the updated mask after your previous action.\n"
        "Based on this, what is your next action? "
        "If the mask is now accurate, you can call 'stop_action' to finish."
    )
    frame = geometry.GRID_1000_FLOOR
    image_rule = ImageRule(side=512, mode="stretch", resample="bilinear")
    history_turns = None
    execute_last_turn = False
    retries = 0
    segmenter_call = "medsam_agent_rl"
    native_resolution = True
    min_box_size = 0.0
    raw_box_corners = True
    score_stop_after_mask = False

    def _parse(self, text: str) -> ParsedReply:
        if "<tool_call>" not in text or "</tool_call>" not in text:
            return ParsedReply(text, None, no_call_reason(text))
        segments = call_blocks(text)
        num_calls = len(segments)
        if not segments:
            return ParsedReply(text, None, "no <tool_call> found: </tool_call> before <tool_call>")

        def fail(reason: str) -> ParsedReply:
            return ParsedReply(text, None, reason, num_calls)

        decoded: list[tuple[str, Any]] = []
        first_problem = None
        for segment in segments:
            found, problem = decode_block(segment)
            if found is not None:
                decoded.append(found)
            elif first_problem is None:
                first_problem = problem
        if not decoded:
            return fail(first_problem or "no tool call could be decoded")
        for name, _ in decoded:  # any unknown name ends the episode
            if name not in TOOL_NAMES:
                return fail(f"unknown tool {_short(name)}")
        name, arguments = decoded[0]
        if name == "stop_action":  # StopActionTool ignores its arguments
            return ParsedReply(text, ToolCall("stop_action", {}), None, num_calls)
        stop_after = any(other == "stop_action" for other, _ in decoded[1:])
        if not isinstance(arguments, dict):
            return fail(f"{name} arguments must be a JSON object, got {json_kind(arguments)}")

        if name == "add_point":
            point, point_type = arguments.get("point_2d"), arguments.get("point_type")
            if point is None or point_type is None:
                return fail("add_point needs point_2d and point_type")
            coords, problem = _coordinates(point, "point_2d", 2, self.frame)
            if coords is None:
                return fail(problem or "bad point_2d")
            if not isinstance(point_type, str) or point_type not in _POINT_TYPES:
                return fail(
                    f"point_type must be 'positive' or 'negative', got {_short(point_type)}"
                )
            call = ToolCall("add_point", {"point_2d": coords, "point_type": point_type})
        else:  # add_bbox
            bbox = arguments.get("bbox_2d")
            if bbox is None:
                return fail("add_bbox needs bbox_2d")
            coords, problem = _coordinates(bbox, "bbox_2d", 4, self.frame)
            if coords is None:
                return fail(problem or "bad bbox_2d")
            x1, y1, x2, y2 = coords
            if x1 >= x2 or y1 >= y2:
                return fail(f"bbox_2d needs x1 < x2 and y1 < y2, got {list(coords)}")
            call = ToolCall("add_bbox", {"bbox_2d": coords})
        return ParsedReply(text, call, None, num_calls, stop_after)
