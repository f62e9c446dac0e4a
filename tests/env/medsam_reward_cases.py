"""Cases for MedSAM-Agent's RL reward, and how their reference scores were made.

``medsam_agent_reward_cases.json`` (next to this file) holds the cases and the scores that the
released ``compute_score`` gave them (CUHK-AIM-Group/MedSAM-Agent at ``bfb43be``,
``RL-verl/recipe/medsam_agent/medsam_reward.py``). Only its outputs are stored here, never its
code. Two kinds of case:

- ``function``: ``compute_score``'s own inputs: the episode text (replies joined as the RL loop's
  decoded response joins them), the mask history (rectangles on a grid, in several dtypes,
  shapes and layouts) and the ground truth, and ``num_turns``. They cover every branch of
  ``compute_score`` (checked with ``coverage`` when the file is made: see ``main``).
- ``episode``: a bundled demo sample and the replies of one RL episode. The reference score was
  computed by playing the replies as the released RL loop does
  (``medsam_iterative_agent_loop.py``: only a reply's first call runs; a reply with no call,
  an unknown tool or a failed tool call ends the episode; a reply that holds ``stop_action``
  ends it and its mask is not added to the history; the 5th reply is never run; the reward
  gets the history, else the latest mask, else an empty mask), each call's mask coming from
  the package's env with the ``classical`` segmenter at the sample's resolution, and handing
  the result to ``compute_score``. The test replays the same replies through
  ``MedSeg-Text-v0`` and compares its episode return.

To make the file again (the released file is imported from where it lies, not copied)::

    PYTHONPATH=/path/to/coverage python tests/env/medsam_reward_cases.py \\
        --reference /tmp/ref/medsam_reward.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CASES_FILE = Path(__file__).with_name("medsam_agent_reward_cases.json")
SEED = 20261127

# The user turn between two replies of the RL loop's decoded response (the package's
# medseg_env.rewards.MEDSAM_AGENT_TURN_SEPARATOR, written out here so that the cases do not
# depend on the code they test).
LATER_TURN = (
    "Here is the updated mask after your previous action.\n"
    "Based on this, what is your next action? "
    "If the mask is now accurate, you can call 'stop_action' to finish."
)
SEPARATOR = "\nuser\n" + LATER_TURN + "\nassistant\n"

REQUIRED_FUNCTION_BRANCHES = (
    "no_block",
    "format_1",
    "format_half_interaction",
    "format_half_stop",
    "format_0_blocks",
    "interaction_by_fallback",
    "stop_by_fallback",
    "last_block_json_not_object",
    "block_spans_replies",
    "no_masks",
    "no_ground_truth",
    "one_mask",
    "several_masks",
    "overshoot",
    "overshoot_within_tolerance",
    "bonus",
    "dice_zero",
    "clipped_high",
    "clipped_low",
    "resized",
    "channels",
    "non_uint8",
    "pil",
    "both_empty",
    "num_turns_cap",
    "default_cap",
)
REQUIRED_EPISODE_BRANCHES = (
    "no_call_ends",
    "unknown_tool_ends",
    "tool_error_ends",
    "stop_first",
    "add_and_stop_first",  # R2 with an empty history: the add's mask is the latest, scored
    "add_and_stop_later",  # R2: the add runs, its mask stays out of the history
    "stop_later",
    "unexecuted_fifth",
    "later_calls_ignored",
)


# ----------------------------------------------------------------------------- masks
def mask_from_spec(spec: dict[str, Any]) -> Any:
    """A mask (array or PIL image) from its JSON spec: rectangles on a grid, as stored."""
    if "text" in spec:
        return spec["text"]
    dtype = np.dtype(spec.get("dtype", "uint8"))
    value = spec.get("value", 255)
    array = np.zeros(tuple(spec["shape"]), dtype)  # a 1-D shape is an unreadable mask
    for r0, c0, r1, c1 in spec.get("rects", []):
        array[r0:r1, c0:c1] = value
    if spec.get("channels", 0):
        array = np.stack([array] * int(spec["channels"]), axis=-1)
    if spec.get("pil"):
        return Image.fromarray(array)
    return array


def _rects(rng: np.random.Generator, shape: tuple[int, int], count: int) -> list[list[int]]:
    height, width = shape
    out = []
    for _ in range(count):
        r0, c0 = int(rng.integers(0, height - 1)), int(rng.integers(0, width - 1))
        r1 = int(rng.integers(r0 + 1, min(height, r0 + max(2, height // 2)) + 1))
        c1 = int(rng.integers(c0 + 1, min(width, c0 + max(2, width // 2)) + 1))
        out.append([r0, c0, r1, c1])
    return out


# ----------------------------------------------------------------------------- texts
def call(name: Any, arguments: Any = None, *, layout: str = "qwen") -> str:
    """A ``<tool_call>`` block as Qwen's template writes it (or a compact variant)."""
    body = json.dumps({"name": name, "arguments": {} if arguments is None else arguments})
    if layout == "compact":
        return f"<tool_call>{body}</tool_call>"
    return f"<tool_call>\n{body}\n</tool_call>"


BOX = call("add_bbox", {"bbox_2d": [120, 140, 610, 700]})
CLICK = call("add_point", {"point_2d": [345, 167], "point_type": "positive"})
NEGATIVE = call("add_point", {"point_2d": [10, 900], "point_type": "negative"})
STOP = call("stop_action")
PIECES: dict[str, str] = {
    "box": BOX,
    "click": CLICK,
    "negative": NEGATIVE,
    "stop": STOP,
    "stop_compact": call("stop_action", layout="compact"),
    "unknown": call("zoom_in", {"factor": 2}),
    "broken_point": '<tool_call>{"name": "add_point", "arguments": {point_2d: [3, 4]}}</tool_call>',
    "broken_stop": '<tool_call>\n{"name": "stop_action", "arguments": {}\n</tool_call>',
    "broken_other": "<tool_call>{name: zoom}</tool_call>",
    "json_string_stop": '<tool_call>"stop_action"</tool_call>',
    "json_string_box": '<tool_call>"add_bbox"</tool_call>',
    "json_list": '<tool_call>["add_bbox", "stop_action"]</tool_call>',
    "json_number": "<tool_call>42</tool_call>",
    "name_list_point": '<tool_call>{"name": ["add_point"]}</tool_call>',
    "name_list_stop": '<tool_call>{"name": ["stop_action"]}</tool_call>',
    "name_object": '<tool_call>{"name": {"add_bbox": 1}}</tool_call>',
    "no_name": '<tool_call>{"arguments": {"bbox_2d": [1, 2, 3, 4]}}</tool_call>',
    "nan": '<tool_call>{"name": "add_bbox", "arguments": {"bbox_2d": [NaN, 1, 2, 3]}}</tool_call>',
    "deep": "<tool_call>" + "[" * 3000 + "]" * 3000 + "</tool_call>",
    "empty_block": "<tool_call></tool_call>",
    "nested": '<tool_call> <tool_call>{"name": "stop_action"}</tool_call>',
    "unclosed": "<tool_call>",
    "stray_close": "</tool_call>",
    "prose": "The tumour is on the left; I will outline it.",
    "prose_names": "I could call add_bbox or stop_action now.",
    "empty": "",
}


def random_reply(rng: np.random.Generator) -> str:
    """A reply of 0 to 3 pieces, with prose around them now and then."""
    names = sorted(PIECES)
    parts = [PIECES[names[int(rng.integers(len(names)))]] for _ in range(int(rng.integers(0, 4)))]
    if rng.random() < 0.3:
        parts.insert(0, "Let me look at the image first.")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- function cases
def _function_cases(rng: np.random.Generator) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []

    def add(replies: list[str], masks: list[dict], gt: dict | None, num_turns: Any = None) -> None:
        cases.append(
            {
                "kind": "function",
                "replies": replies,
                "masks": masks,
                "gt": gt,
                "num_turns": num_turns,
            }
        )

    shape = (48, 40)
    gt = {"shape": list(shape), "rects": [[10, 8, 30, 28]]}
    inside = {"shape": list(shape), "rects": [[12, 10, 28, 26]]}
    exact = dict(gt)
    far = {"shape": list(shape), "rects": [[40, 0, 46, 6]]}
    empty = {"shape": list(shape), "rects": []}
    # hand-made: every quality branch once, with the plain format
    text = [BOX, CLICK, STOP]
    add(text, [], gt)  # no mask
    add(text, [inside], None)  # no ground truth
    add(text, [inside], gt)  # one mask
    add(text, [inside, exact], gt)  # clipped at 1 (bonus beats the turn cost)
    add(text, [exact, far], gt)  # overshoot, clipped at 0, Dice 0
    add(text, [inside, exact, inside], gt)  # overshoot
    add(text, [empty, empty], {"shape": list(shape), "rects": []})  # both empty: IoU 1
    add(text, [inside, exact, far, inside], gt, 2)  # num_turns caps the history
    add(text, [inside] * 20 + [far] * 15, gt)  # the default cap of 32
    add(text, [{**inside, "dtype": "bool", "value": True}], gt)  # bool: read as 0/1, empty
    add(text, [{**inside, "value": 1}], gt)  # 0/1 uint8: empty
    add(text, [{**inside, "dtype": "float64", "value": 255.0}, {**exact, "channels": 3}], gt)
    add(text, [{**inside, "pil": True}, {**exact, "channels": 3, "pil": True}], gt)
    add(text, [{"shape": [24, 20], "rects": [[5, 4, 15, 14]]}, inside], gt)  # resized NEAREST
    add(text, [inside], {**gt, "channels": 3})
    add(text, [inside], {**gt, "dtype": "bool", "value": True})  # a bool ground truth: empty
    add(text, [{"shape": [3], "rects": []}], gt)  # a 1-D mask, resized as an image
    add(text, [inside, {"shape": [2, 2, 2, 2], "rects": []}], gt)  # unreadable: scores 0
    add(text, [{"shape": [2, 2, 2, 2], "rects": []}, exact], gt)  # ... and the next one counts
    add(text, [inside], {**gt, "pil": True})  # a PIL ground truth
    add(text, [inside], {"text": "not a mask"})  # a ground truth that cannot be read
    # IoU 0.6, then 600001 / 1000002 (2e-7 lower): no overshoot penalty below 1e-6
    big = (1002, 1000)
    big_gt = {"shape": list(big), "rects": [[0, 0, 1000, 1000]]}
    first = {"shape": list(big), "rects": [[0, 0, 600, 1000]]}
    second = {
        "shape": list(big),
        "rects": [[0, 0, 600, 1000], [600, 0, 601, 1], [1000, 0, 1001, 2]],
    }
    add(text, [first, second], big_gt)
    add(text, [second, first], big_gt)
    # format: each piece alone, each pair, and random texts across replies
    names = sorted(PIECES)
    for name in names:
        add([PIECES[name]], [inside], gt)
    for a in names:
        b = names[int(rng.integers(len(names)))]
        add([PIECES[a], PIECES[b]], [inside, exact], gt)
    # blocks that span replies (an unclosed block, closed in a later reply)
    for last in ("box", "click", "stop", "unknown", "broken_point"):
        add([BOX + "\n<tool_call>", PIECES[last]], [inside, exact], gt)
        add([BOX, "<tool_call>", PIECES[last]], [inside], gt)
    # random episodes: texts and mask histories of random rectangles, shapes and layouts
    while len(cases) < 420:
        height, width = int(rng.integers(8, 64)), int(rng.integers(8, 64))
        gt_spec = {"shape": [height, width], "rects": _rects(rng, (height, width), 2)}
        masks = []
        for _ in range(int(rng.integers(0, 6))):
            mh, mw = (
                (height, width)
                if rng.random() < 0.8
                else (int(rng.integers(4, 64)), int(rng.integers(4, 64)))
            )
            spec: dict[str, Any] = {"shape": [mh, mw], "rects": _rects(rng, (mh, mw), 2)}
            roll = rng.random()
            if roll < 0.1:
                spec["channels"] = 3
            elif roll < 0.15:
                spec["pil"] = True
            elif roll < 0.2:
                spec["dtype"], spec["value"] = "float32", 255.0
            masks.append(spec)
        if masks and rng.random() < 0.3:
            masks.append(gt_spec)  # a perfect last mask now and then
        replies = [random_reply(rng) for _ in range(int(rng.integers(1, 6)))]
        if rng.random() < 0.5:
            replies[-1] += "\n" + STOP
        num_turns = int(rng.integers(1, 8)) if rng.random() < 0.1 else None
        add(replies, masks, gt_spec, num_turns)
    return cases


def function_branches(case: dict[str, Any], reference: dict[str, Any]) -> set[str]:
    """Which of ``REQUIRED_FUNCTION_BRANCHES`` a case takes (read from its inputs and the
    reference's per-turn metrics)."""
    import re

    found: set[str] = set()
    text = SEPARATOR.join(case["replies"])
    blocks = re.findall(r"<tool_call>(.*?)</tool_call>", text, re.DOTALL)
    fmt = reference["format_reward"]
    if not blocks:
        found.add("no_block")
    elif fmt == 0.0:
        found.add("format_0_blocks")
    if fmt == 1.0:
        found.add("format_1")
    for block in blocks:
        if "\nuser\n" in block:
            found.add("block_spans_replies")
    if blocks:
        via = None  # how the interaction was found, as compute_score's loop finds it
        for block in blocks:
            try:
                if json.loads(block.strip()).get("name", "") in ("add_bbox", "add_point"):
                    via = "json"
                    break
            except Exception:  # noqa: BLE001
                if "add_bbox" in block or "add_point" in block:
                    via = "fallback"
                    break
        if via == "fallback":
            found.add("interaction_by_fallback")
        try:
            data = json.loads(blocks[-1].strip())
            if not isinstance(data, dict):
                found.add("last_block_json_not_object")
        except Exception:  # noqa: BLE001
            if "stop_action" in blocks[-1]:
                found.add("stop_by_fallback")
        if fmt == 0.5:
            found.add("format_half_interaction" if via else "format_half_stop")
    ious = reference["iou_per_turn"]
    dices = reference["dice_per_turn"]
    if case["gt"] is None:
        found.add("no_ground_truth")
    elif not case["masks"]:
        found.add("no_masks")
    if len(ious) == 1:
        found.add("one_mask")
    if len(ious) > 1:
        found.add("several_masks")
        gap = max(ious) - ious[-1]
        if gap >= 1e-6:
            found.add("overshoot")
        elif gap > 0:
            found.add("overshoot_within_tolerance")
        if any(b > a for a, b in zip(ious, ious[1:], strict=False)):
            found.add("bonus")
    if dices and dices[-1] == 0.0:
        found.add("dice_zero")
    if reference["combined_quality"] == 1.0 and ious:
        found.add("clipped_high")
    if reference["combined_quality"] == 0.0 and ious and (ious[-1] > 0 or len(ious) > 1):
        found.add("clipped_low")
    if (
        ious
        and ious[-1] == 1.0
        and dices[-1] == 1.0
        and case["gt"] is not None
        and not any(case["gt"].get("rects", []))
    ):
        found.add("both_empty")
    n = case["num_turns"]
    if isinstance(n, int) and 0 < n < len(case["masks"]):
        found.add("num_turns_cap")
    if len(case["masks"]) > 32:
        found.add("default_cap")
    specs = [*case["masks"], *([case["gt"]] if case["gt"] else [])]
    if case["gt"] and any(m.get("shape") != case["gt"].get("shape") for m in case["masks"]):
        found.add("resized")
    if any(s.get("channels") for s in specs):
        found.add("channels")
    if any(s.get("dtype", "uint8") != "uint8" for s in specs):
        found.add("non_uint8")
    if any(s.get("pil") for s in specs):
        found.add("pil")
    return found


# ----------------------------------------------------------------------------- episodes
def _grid(pixel: float, side: int) -> int:
    """A grid value whose ``int(v * side / 1000)`` is ``pixel`` (the RL tools' mapping)."""
    return int(min(999, max(0, int((pixel + 0.5) * 1000 / side))))


def play_reference(
    engine: Any, index: int, rng: np.random.Generator
) -> tuple[list[str], list[np.ndarray], np.ndarray | None, int, set[str]]:
    """One random RL episode on sample ``index``, played as the released RL loop plays it.

    ``engine`` is a ``MedSegEnv`` (``classical``, native resolution, ``medsam_agent_rl``
    prompting, corners as given, no minimum box) that runs each executed call. Returns the
    replies, the masks handed to the reward (``pred_mask``), the latest mask, ``num_turns``
    and the branches taken.
    """
    from medseg_env import actions as A

    engine.reset(seed=index, options={"sample_index": index})
    sample = engine.sample
    height, width = sample.mask.shape
    side = max(height, width)
    gt = sample.mask
    rows, cols = np.nonzero(gt)
    replies: list[str] = []
    history: list[np.ndarray] = []
    latest: np.ndarray | None = None
    branches: set[str] = set()

    def box_call(jitter: float) -> tuple[str, dict]:
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        shift = lambda v: v + rng.normal(0, jitter)  # noqa: E731
        x1, x2 = sorted((_grid(shift(c0), width), _grid(shift(c1), width)))
        y1, y2 = sorted((_grid(shift(r0), height), _grid(shift(r1), height)))
        if rng.random() < 0.1:  # a box that collapses to one pixel column: it still runs
            x2 = x1 + 1
        return "add_bbox", {"bbox_2d": [x1, y1, x2, y2]}

    def click_call() -> tuple[str, dict]:
        mask = engine.current_mask[:height, :width]
        error = gt & ~mask if rng.random() < 0.7 else mask & ~gt
        positive = bool(error is not None and (error & gt).any())
        where = np.argwhere(error) if error.any() else np.argwhere(gt)
        r, c = where[int(rng.integers(len(where)))]
        point_type = "positive" if positive or rng.random() < 0.2 else "negative"
        return "add_point", {
            "point_2d": [_grid(c, width), _grid(r, height)],
            "point_type": point_type,
        }

    def run(name: str, arguments: dict) -> np.ndarray | None:
        """The tool's mask, or None when the tool refuses the call."""
        if name == "add_bbox":
            x1, y1, x2, y2 = arguments["bbox_2d"]
            if x1 >= x2 or y1 >= y2:
                return None
            corners = [
                int(x1 * width / 1000),
                int(y1 * height / 1000),
                int(x2 * width / 1000),
                int(y2 * height / 1000),
            ]
            engine.step(A.box(*(np.asarray(corners, float) / side)))
        else:
            x, y = arguments["point_2d"]
            px, py = int(x * width / 1000), int(y * height / 1000)
            positive = arguments["point_type"] == "positive"
            engine.step(A.click((px + 0.5) / side, (py + 0.5) / side, positive=positive))
        return engine.current_mask[:height, :width].copy()

    for turn in range(1, 6):
        roll = rng.random()
        calls: list[tuple[str, dict]] = []
        text_override = None
        if turn == 1:
            if roll < 0.6:
                calls = [box_call(2.0)]
            elif roll < 0.72:
                calls = [click_call()]
            elif roll < 0.78:
                calls = [("stop_action", {})]
            elif roll < 0.86:
                calls = [box_call(2.0), ("stop_action", {})]
            elif roll < 0.9:
                text_override = PIECES[["prose", "broken_point", "empty"][int(rng.integers(3))]]
            elif roll < 0.95:
                calls = [("zoom_in", {"factor": 2})]
            else:
                calls = [("add_bbox", {"bbox_2d": [500, 500, 400, 600]})]  # x1 >= x2
        else:
            if roll < 0.35:
                calls = [click_call()]
            elif roll < 0.45:
                calls = [box_call(4.0)]
            elif roll < 0.6:
                calls = [("stop_action", {})]
            elif roll < 0.72:
                calls = [click_call(), ("stop_action", {})]
            elif roll < 0.8:
                calls = [click_call(), box_call(1.0)]
            elif roll < 0.85:
                text_override = PIECES[["prose", "broken_point", "empty"][int(rng.integers(3))]]
            elif roll < 0.9:
                calls = [click_call(), ("zoom_in", {})]
            elif roll < 0.95:
                calls = [("add_bbox", {"bbox_2d": [10, 10, 10, 20]})]  # x1 >= x2
            else:
                calls = [("stop_action", {}), click_call()]
        text = (
            text_override
            if text_override is not None
            else "\n".join(call(name, arguments) for name, arguments in calls)
        )
        if rng.random() < 0.2 and text_override is None:
            text = "I will refine the mask.\n" + text
        replies.append(text)
        if turn == 5:  # max_assistant_turns: generated, never parsed or run
            branches.add("unexecuted_fifth")
            break
        if not calls:
            branches.add("no_call_ends")
            break
        if any(name not in ("add_bbox", "add_point", "stop_action") for name, _ in calls):
            branches.add("unknown_tool_ends")
            break
        if len(calls) > 1:
            branches.add("later_calls_ignored")
        name, arguments = calls[0]
        mask = None if name == "stop_action" else run(name, arguments)
        if any(other == "stop_action" for other, _ in calls):
            if name == "stop_action":
                branches.add("stop_first" if turn == 1 else "stop_later")
            elif mask is not None:
                branches.add("add_and_stop_first" if not history else "add_and_stop_later")
                latest = mask
            break
        if mask is None:
            branches.add("tool_error_ends")
            break
        history.append(mask)
        latest = mask
    num_turns = len(history) + len(replies) + 1  # user turns + assistant turns + 1
    if history:
        masks = list(history)
    elif latest is not None:
        masks = [latest]
    else:
        masks = [np.zeros((height, width), bool)]
    return replies, masks, latest, num_turns, branches


# ----------------------------------------------------------------------------- make the file
def _load_reference(path: Path) -> Callable[..., dict[str, Any]]:
    spec = importlib.util.spec_from_file_location("released_medsam_reward", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compute_score


def _scores(result: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "score",
        "format_reward",
        "iou",
        "dice",
        "combined_quality",
        "iou_per_turn",
        "dice_per_turn",
    )
    return {key: result[key] for key in keep}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference",
        type=Path,
        required=True,
        help="the released RL-verl/recipe/medsam_agent/medsam_reward.py",
    )
    parser.add_argument("--episodes", type=int, default=200)
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # the released function logs every call
    try:
        import coverage
    except ImportError:
        coverage = None
    tracer = coverage.Coverage(branch=True, include=[str(args.reference)]) if coverage else None
    if tracer:
        tracer.start()
    compute_score = _load_reference(args.reference)
    rng = np.random.default_rng(SEED)
    cases = _function_cases(rng)
    for case in cases:
        masks = [mask_from_spec(m) for m in case["masks"]]
        extra = {"pred_mask": masks, "ground_truth_mask": None}
        if case["gt"] is not None:
            extra["ground_truth_mask"] = mask_from_spec(case["gt"])
        if case["num_turns"] is not None:
            extra["num_turns"] = case["num_turns"]
        result = compute_score("medsam", SEPARATOR.join(case["replies"]), None, extra)
        case["reference"] = _scores(result)
        case["branches"] = sorted(function_branches(case, result))

    from medseg_env import MedSegEnv
    from medseg_env.data import load_dataset

    demo = load_dataset("demo")
    engine = MedSegEnv(
        dataset=demo,
        segmenter="classical",
        native_resolution=True,
        sort_box_corners=False,
        min_box_size=0.0,
        prompting="medsam_agent_rl",
        max_turns=10,
    )
    for number in range(args.episodes):
        index = int(rng.integers(len(demo)))
        replies, masks, _, num_turns, branches = play_reference(engine, index, rng)
        gt = (demo[index].mask * np.uint8(255)).astype(np.uint8)
        extra = {
            "pred_mask": [(m * np.uint8(255)).astype(np.uint8) for m in masks],
            "ground_truth_mask": gt,
            "num_turns": num_turns,
        }
        result = compute_score("medsam", SEPARATOR.join(replies), None, extra)
        cases.append(
            {
                "kind": "episode",
                "sample_id": demo[index].sample_id,
                "replies": replies,
                "reference": _scores(result),
                "branches": sorted(branches),
            }
        )
        del number
    if tracer:  # which lines and branches of the released file the cases ran
        tracer.stop()
        tracer.report(show_missing=True, file=sys.stderr)
    CASES_FILE.write_text(
        json.dumps(
            {
                "released": "CUHK-AIM-Group/MedSAM-Agent@bfb43be "
                "RL-verl/recipe/medsam_agent/medsam_reward.py compute_score",
                "separator": SEPARATOR,
                "cases": cases,
            },
            indent=None,
            separators=(",", ":"),
        )
        + "\n"
    )
    counts: dict[str, int] = {}
    for case in cases:
        for branch in case["branches"]:
            counts[branch] = counts.get(branch, 0) + 1
    print(f"{len(cases)} cases -> {CASES_FILE}", file=sys.stderr)
    print(json.dumps(counts, sort_keys=True), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
