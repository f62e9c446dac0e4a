"""Qwen's Hermes tool-call text, written and read in one place.

A Qwen model (Qwen2.5-VL, Qwen3-VL) writes each tool call of a reply as::

    <tool_call>
    {"name": "add_point", "arguments": {"point_2d": [345, 167], "point_type": "positive"}}
    </tool_call>

as its chat template renders an assistant message's ``tool_calls``: the content first, then
each call, with a newline between parts, and the call's JSON written by ``tojson``
(``json.dumps`` with its default separators; a string ``arguments`` is written as it is).
MedSAM-Agent's system prompt shows the same format, and its released parsers read it.

- Writing: :func:`render_call` (one call, byte-identical to the template's), and
  :func:`reply_text` (a reply that a server or a trainer has already split into content and
  ``tool_calls``, put back together as the model wrote it, so a protocol parses what the model
  wrote).
- Reading: :func:`call_objects` (the first-``{...}``-only reading of MedSAM-Agent's EVAL code),
  :func:`call_blocks` and :func:`decode_block` (verl's ``HermesToolParser``, which MedSAM-Agent's
  RL tools use), and the error texts every protocol reports (:func:`no_call_reason`,
  :func:`json_problem`, :func:`json_kind`).

The protocols (``medseg_env.text.medsam_agent``), the trainer adapters and the OpenAI policy
all use this module; none writes the tags itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

OPEN = "<tool_call>"
CLOSE = "</tool_call>"

_OBJECT = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)
_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


# ---------------------------------------------------------------------------------- writing
def render_call(name: str, arguments: Any) -> str:
    """One call as Qwen's chat template writes an assistant tool call.

    ``json.dumps`` of ``{"name": name, "arguments": arguments}`` with the default separators
    between the tags, each on its own line. Arguments are written as given (a non-object stays
    one, so a protocol rejects it); values JSON cannot hold are written as their ``repr``
    string (a protocol then rejects them as not a number).
    """
    payload = json.dumps({"name": name, "arguments": arguments}, default=repr)
    return f"{OPEN}\n{payload}\n{CLOSE}"


def _raw_call(name: str, arguments: str) -> str:
    """A call whose arguments are text that is not JSON, written as the template writes it."""
    return f'{OPEN}\n{{"name": {json.dumps(name)}, "arguments": {arguments}}}\n{CLOSE}'


def tool_call_parts(call: Any) -> tuple[str, Any]:
    """``(name, arguments)`` of one parsed tool call, whatever its form.

    Takes an OpenAI client object (``call.function.name``, ``call.function.arguments``), a
    mapping in the chat format (``{"type": "function", "function": {...}}``) or a bare
    ``{"name": ..., "arguments": ...}``. Arguments given as JSON text are decoded; text that
    is not JSON is returned as the ``str``.
    """
    if isinstance(call, Mapping):
        function = call.get("function", call)
        function = function if isinstance(function, Mapping) else {}
        name, arguments = function.get("name", ""), function.get("arguments", {})
    else:
        function = getattr(call, "function", call)
        name = getattr(function, "name", "")
        arguments = getattr(function, "arguments", None)
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except ValueError:
            pass  # kept as text: the reply is rebuilt with it as the model wrote it
    return str(name or ""), arguments


def reply_text(content: Any, tool_calls: Iterable[Any] | None = None) -> str:
    """An assistant reply split into content and ``tool_calls``, as the model wrote it.

    A server that parses tool calls itself (``vllm serve --enable-auto-tool-choice``) or a
    trainer's tool loop (TRL) moves them out of the content; here they are written back after
    it as Qwen's template writes them (a newline between parts), so a protocol parses the
    calls the model made. ``content`` may be a str, None, or a list of content parts (their
    text parts are joined). Arguments that are not JSON are written as they came.
    """
    if isinstance(content, list):
        content = "".join(
            str(p.get("text", "")) for p in content if isinstance(p, Mapping) and "text" in p
        )
    parts = [str(content)] if content else []
    for call in tool_calls or ():
        name, arguments = tool_call_parts(call)
        if isinstance(arguments, str):
            parts.append(_raw_call(name, arguments))
        else:
            parts.append(render_call(name, arguments))
    return "\n".join(parts)


# ---------------------------------------------------------------------------------- reading
def call_objects(text: str) -> list[str]:
    """The ``{...}`` of every ``<tool_call>{...}</tool_call>`` (MedSAM-Agent's EVAL reading).

    Non-greedy: an object ends at the first ``}`` followed by ``</tool_call>``.
    """
    return _OBJECT.findall(text)


def call_blocks(text: str) -> list[str]:
    """The body of every ``<tool_call>...</tool_call>`` (verl's ``HermesToolParser``)."""
    return _BLOCK.findall(text)


def decode_block(segment: str) -> tuple[tuple[str, Any] | None, str | None]:
    """verl's ``HermesToolParser`` on one block body: ``((name, arguments), None)`` or why not.

    A body that is not JSON gets verl's salvage: newlines become spaces, and a ``{...}`` line
    is read once more; it must then hold a non-empty ``name`` and some ``arguments``.
    """
    try:
        obj = json.loads(segment.strip())
    except json.JSONDecodeError as err:
        line = segment.strip().replace("\n", " ").replace("\r", "").strip()
        if not (line.startswith("{") and line.endswith("}")):
            return None, json_problem(err)
        try:
            salvaged = json.loads(line)
        except (ValueError, RecursionError):
            return None, json_problem(err)
        if not isinstance(salvaged, dict):
            return None, f"a tool call must be a JSON object, got {json_kind(salvaged)}"
        name, arguments = salvaged.get("name"), salvaged.get("arguments")
        if not (name and isinstance(name, str)) or arguments is None:
            return None, "a tool call needs a 'name' and 'arguments'"
        return (name, arguments), None
    except (ValueError, RecursionError) as err:
        return None, json_problem(err)
    if not isinstance(obj, dict):
        return None, f"a tool call must be a JSON object, got {json_kind(obj)}"
    if "name" not in obj or "arguments" not in obj:
        return None, "a tool call needs a 'name' and 'arguments'"
    if not isinstance(obj["name"], str):
        return None, f"tool name must be a string, got {json_kind(obj['name'])}"
    return (obj["name"], obj["arguments"]), None


def no_call_reason(text: str) -> str:
    """Why ``text`` holds no readable ``<tool_call>`` (for a reply that gave none)."""
    if OPEN not in text:
        return "no <tool_call> found"
    if CLOSE not in text:
        return "no <tool_call> found: <tool_call> is never closed (truncated reply?)"
    return "no <tool_call> found: no {...} object between <tool_call> and </tool_call>"


def json_problem(err: Exception) -> str:
    """The error text of a call body that is not JSON."""
    detail = err.msg if isinstance(err, json.JSONDecodeError) else str(err) or type(err).__name__
    return f"invalid JSON in <tool_call>: {detail}"


def json_kind(value: Any) -> str:
    """A JSON value's kind in words (``an object``, ``a list``, ``null``...), for errors."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
