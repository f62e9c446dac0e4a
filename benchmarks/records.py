"""Episode records and the append-only journal that makes runs resumable.

The journal ``episodes.jsonl`` holds one JSON object per finished episode, appended, flushed
and fsynced as soon as the episode ends: an interrupted run loses at most the episode in
progress. It is ``medseg_env.journal.JsonlJournal``, whose repair rules the SFT export's journal
shares: a torn last line (the process died mid-write) is dropped on the next load.

Every record is validated as it is read (:meth:`EpisodeRecord.from_json`): field types, metric
ranges, turn numbering and the turn budget. A bad line is dropped with a warning that names the
file, the line and the reason, so its episode runs again; a repairing load moves it to
``<journal stem>.rejected.jsonl`` next to the journal, so that nothing is deleted and the
warning is not repeated on every later load.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

from medseg_env.actions import ActionKind
from medseg_env.files import atomic_write
from medseg_env.journal import JsonlJournal

__all__ = ["NO_ACTION", "EpisodeKey", "EpisodeRecord", "Journal", "Step", "atomic_write"]

EpisodeKey = tuple[str, str, str, str]
"""``(policy, dataset, segmenter, sample_id)``: identifies an episode within a config."""


@dataclass(frozen=True)
class Step:
    """The state after one turn.

    ``hd95`` is in millimetres and ``inf`` when exactly one of mask and target is empty;
    ``invalid`` is the env's reason string for an invalid action, else None.

    Text policies (``MedSeg-Text-v0``) also keep the turn's raw ``reply`` and its ``parsed``
    result (``{"call": ..., "error": ..., "num_calls": n}``); a reply that gave no action has
    ``action == "none"`` and the parse error as ``invalid``. Both are None for other policies.
    ``retries`` are the replies retried before this turn without spending a turn of the budget
    (MedSAM-Agent's EVAL protocol, ``retries_spend_turns=False``), each ``{"reply": str,
    "parsed": {...}}``; their time is in the turn's.
    """

    turn: int
    action: str
    invalid: str | None
    dice: float
    iou: float
    nsd: float
    hd95: float
    num_clicks: int
    num_boxes: int
    reply: str | None = None
    parsed: dict[str, Any] | None = None
    retries: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        if self.reply is None and self.parsed is None:  # structured policies: the old format
            del out["reply"], out["parsed"]
        if self.retries:
            out["retries"] = [dict(r) for r in self.retries]
        else:
            del out["retries"]
        # JSON has no infinity: null stands for "infinite" (one mask empty).
        out["hd95"] = None if math.isinf(self.hd95) else self.hd95
        return out

    @classmethod
    def from_json(cls, data: Any, turn: int | None = None) -> Step:
        """Validate and build a step; ``turn``: the turn number it must have.

        Raises:
            ValueError: a missing, unknown or wrongly typed field, or a value out of range
                (the message says which).
        """
        _check_keys(data, cls, "step", optional=("reply", "parsed", "retries"))
        step_turn = _int_field(data, "turn", 1)
        if turn is not None and step_turn != turn:
            raise ValueError(f"turn = {step_turn}, expected {turn} (turns count from 1)")
        action = data["action"]
        if action not in _ACTIONS:
            raise ValueError(f"action = {_show(action)}, expected one of {sorted(_ACTIONS)}")
        invalid = data["invalid"]
        if invalid is not None and not isinstance(invalid, str):
            raise ValueError(f"invalid = {_show(invalid)}, expected a string or null")
        scores: dict[str, float] = {}
        for key in ("dice", "iou", "nsd"):
            value = data[key]
            if not (_is_number(value) and 0.0 <= value <= 1.0):  # NaN fails both comparisons
                raise ValueError(f"{key} = {_show(value)}, expected a number in [0, 1]")
            scores[key] = float(value)
        hd95 = data["hd95"]
        if hd95 is None:  # JSON has no infinity: null is "infinite" (one mask empty)
            hd95 = math.inf
        elif not (_is_number(hd95) and hd95 >= 0):
            raise ValueError(f"hd95 = {_show(hd95)}, expected a number >= 0 or null (infinite)")
        clicks = _int_field(data, "num_clicks", 0)
        boxes = _int_field(data, "num_boxes", 0)
        if clicks > step_turn or boxes > 1:
            raise ValueError(
                f"num_clicks = {clicks}, num_boxes = {boxes} after turn {step_turn}: more prompts "
                "than turns (or more than one box)"
            )
        reply, parsed = data.get("reply"), data.get("parsed")
        if reply is not None and not isinstance(reply, str):
            raise ValueError(f"reply = {_show(reply)}, expected a string or null")
        if parsed is not None and not (isinstance(parsed, dict) and "error" in parsed):
            raise ValueError(f"parsed = {_show(parsed)}, expected a parse record or null")
        retries = data.get("retries", [])
        if not isinstance(retries, list) or not all(
            isinstance(r, dict)
            and set(r) == {"reply", "parsed"}
            and isinstance(r["reply"], str)
            and isinstance(r["parsed"], dict)
            for r in retries
        ):
            raise ValueError(
                f"retries = {_show(retries)}, expected a list of {{reply, parsed}} objects"
            )
        return cls(
            reply=reply,
            parsed=parsed,
            retries=tuple(retries),
            turn=step_turn,
            action=action,
            invalid=invalid,
            dice=scores["dice"],
            iou=scores["iou"],
            nsd=scores["nsd"],
            hd95=float(hd95),
            num_clicks=clicks,
            num_boxes=boxes,
        )


@dataclass(frozen=True)
class EpisodeRecord:
    """One finished episode.

    Attributes:
        steps: one ``Step`` per turn taken, ``len(steps) <= budget``.
        stopped: the policy ended the episode (stop action) rather than the budget.
        timing: wall-clock seconds, ``{"reset": s, "act": [s per turn], "env": [s per turn]}``;
            the only non-deterministic part of a record.
    """

    policy: str
    dataset: str
    segmenter: str
    sample_id: str
    sample_index: int
    modality: str
    target: str
    source_id: str
    seed: int
    budget: int
    stopped: bool
    steps: tuple[Step, ...]
    timing: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> EpisodeKey:
        return (self.policy, self.dataset, self.segmenter, self.sample_id)

    @property
    def turns(self) -> int:
        return len(self.steps)

    def series(self, metric: str) -> list[float]:
        """Per-turn values of a step metric (``dice``, ``iou``, ``nsd``, ``hd95``)."""
        return [float(getattr(s, metric)) for s in self.steps]

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "steps"}
        out["steps"] = [s.to_json() for s in self.steps]
        return out

    @classmethod
    def from_json(cls, data: Any) -> EpisodeRecord:
        """Validate and build a record (as :meth:`to_json` writes it).

        Checked: every field's type, the metrics' ranges (Dice, IoU and NSD finite in [0, 1];
        HD95 >= 0 or null), turns numbered 1, 2, ..., at most ``budget`` of them, exactly
        ``budget`` unless the policy stopped, a ``stop`` only as the last turn, prompt counts
        that never shrink, and the timings' shape.

        Raises:
            ValueError: the first problem found (the message names the field).
        """
        _check_keys(data, cls, "record", optional=("timing",))
        values: dict[str, Any] = {}
        for key in _STR_FIELDS:
            if not isinstance(data[key], str):
                raise ValueError(f"{key} = {_show(data[key])}, expected a string")
            values[key] = data[key]
        values["sample_index"] = _int_field(data, "sample_index", 0)
        values["seed"] = _int_field(data, "seed", 0)
        budget = values["budget"] = _int_field(data, "budget", 1)
        stopped = data["stopped"]
        if not isinstance(stopped, bool):
            raise ValueError(f"stopped = {_show(stopped)}, expected true or false")
        raw_steps = data["steps"]
        if not isinstance(raw_steps, list) or not raw_steps:
            raise ValueError(f"steps = {_show(raw_steps)}, expected a non-empty list")
        if len(raw_steps) > budget:
            raise ValueError(f"{len(raw_steps)} steps in a budget of {budget} turns")
        steps: list[Step] = []
        for i, raw in enumerate(raw_steps):
            try:
                step = Step.from_json(raw, turn=i + 1)
            except ValueError as err:
                raise ValueError(f"steps[{i}]: {err}") from None
            if steps and (
                step.num_clicks < steps[-1].num_clicks or step.num_boxes < steps[-1].num_boxes
            ):
                raise ValueError(f"steps[{i}]: fewer prompts than the turn before")
            if step.action == "stop" and i != len(raw_steps) - 1:
                raise ValueError(f"steps[{i}]: a stop before the last turn")
            steps.append(step)
        # A text episode also ends without a stop: on malformed replies (the protocol's rule)
        # or a stop in a later call of a reply; only a stop must then say "stopped".
        text = steps[-1].reply is not None
        if stopped != (steps[-1].action == "stop") and not (text and stopped):
            raise ValueError(
                f"stopped = {_show(stopped)} but the last action is {steps[-1].action!r}"
            )
        if not stopped and len(steps) != budget:
            raise ValueError(f"{len(steps)} steps without a stop in a budget of {budget} turns")
        timing = data.get("timing", {})
        _check_timing(timing, len(steps))
        return cls(stopped=stopped, steps=tuple(steps), timing=timing, **values)


# --- validation helpers ---------------------------------------------------------------------

NO_ACTION = "none"
"""``Step.action`` of a text turn whose reply gave no action."""
_ACTIONS = frozenset(kind.name.lower() for kind in ActionKind) | {NO_ACTION}
_STR_FIELDS = ("policy", "dataset", "segmenter", "sample_id", "modality", "target", "source_id")


def _show(value: Any) -> str:
    """A value as the journal holds it (JSON), shortened."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any) -> bool:
    """A real JSON number (not a boolean) that is not NaN."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _int_field(data: dict[str, Any], key: str, minimum: int) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} = {_show(value)}, expected an integer >= {minimum}")
    return value


def _check_keys(data: Any, cls: type, what: str, optional: tuple[str, ...] = ()) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"a {what} must be a JSON object; got {_show(data)}")
    names = {f.name for f in fields(cls)}
    missing = sorted(names - set(optional) - set(data))
    unknown = sorted(set(data) - names)
    if missing or unknown:
        parts = [f"missing {missing}"] * bool(missing) + [f"unknown {unknown}"] * bool(unknown)
        raise ValueError(f"{what} key(s): {'; '.join(parts)}")


def _check_timing(timing: Any, turns: int) -> None:
    """``{"reset": s, "act": [s per turn], "env": [s per turn]}``, each part optional."""
    if not isinstance(timing, dict):
        raise ValueError(f"timing = {_show(timing)}, expected an object")
    reset = timing.get("reset", 0.0)
    if not (_is_number(reset) and 0 <= reset < math.inf):
        raise ValueError(f"timing.reset = {_show(reset)}, expected seconds >= 0")
    for key in ("act", "env"):
        per_turn = timing.get(key, [0.0] * turns)
        if not (
            isinstance(per_turn, list)
            and len(per_turn) == turns
            and all(_is_number(t) and 0 <= t < math.inf for t in per_turn)
        ):
            raise ValueError(
                f"timing.{key} = {_show(per_turn)}, expected {turns} durations (s) >= 0"
            )


class Journal(JsonlJournal[EpisodeRecord]):
    """The append-only ``episodes.jsonl`` of one output folder: ``medseg_env.journal``'s
    journal (its repair rules) of :class:`EpisodeRecord` s, each validated as it is read."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, EpisodeRecord.from_json, redo="its episode will be run again")

    def append(self, record: EpisodeRecord) -> None:
        """Append one record and force it to disk before returning."""
        self.append_json(record.to_json())
