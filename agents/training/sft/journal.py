"""The export's journal ``trajectories.jsonl``: ``medseg_env.journal.JsonlJournal`` of entries.

The repair rules are the journal's own (the benchmark's episode journal shares them): a torn
last line is dropped silently, a bad line is dropped with a warning naming the file, the line
and the reason, and a repairing load moves it to ``trajectories.rejected.jsonl``; its
trajectory runs again. The export adds its own rules (:func:`entry_check`): an entry of this
export's plan, with the planned sample, seed and style, whose images are on disk, and the first
one of its trajectory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medseg_env.journal import JsonlJournal

from .format import ENTRY_KEYS, JOURNAL_FILE, image_names
from .plan import TrajectorySpec

Entry = dict[str, Any]


def parse_entry(data: Any) -> Entry:
    """A journal line's value as an entry.

    Raises:
        ValueError: not an object with exactly the entry keys (``format.ENTRY_KEYS``), or a
            kept trajectory without turns.
    """
    if not isinstance(data, dict) or set(data) != ENTRY_KEYS:
        raise ValueError("not a trajectory entry")
    if not isinstance(data["id"], str):
        raise ValueError(f"id = {data['id']!r}, expected a string")
    if data["skipped"] is None and not (isinstance(data["turns"], list) and data["turns"]):
        raise ValueError("no turns")
    return data


def entry_check(plan: Sequence[TrajectorySpec], out: Path) -> Callable[[Entry], str | None]:
    """The export's rules for a journal entry: the reason to drop it, or None."""
    wanted = {s.id: s for s in plan}
    seen: set[str] = set()

    def check(entry: Entry) -> str | None:
        spec = wanted.get(entry["id"])
        if spec is None:
            return f"trajectory {entry['id']!r} is not in this export's plan"
        got = (entry["sample_index"], entry["seed"], entry["style"])
        planned = (spec.sample_index, spec.seed, spec.style)
        if got != planned:
            return f"(sample_index, seed, style) = {got}, planned {planned}"
        if entry["skipped"] is None:
            try:
                names = [n for turn in entry["turns"] for n in image_names(turn["prompt"])]
            except (KeyError, TypeError, AttributeError) as err:
                return f"a malformed entry ({err!r})"
            missing = next((n for n in names if not (out / n).is_file()), None)
            if missing is not None:
                return f"its image {missing} is missing"
        if entry["id"] in seen:
            return "a second entry of this trajectory (the first one is kept)"
        seen.add(entry["id"])
        return None

    return check


class TrajectoryJournal(JsonlJournal[Entry]):
    """``trajectories.jsonl`` of an export folder."""

    def __init__(self, out: Path) -> None:
        super().__init__(out / JOURNAL_FILE, parse_entry, redo="its trajectory will run again")

    def entries(self, plan: Sequence[TrajectorySpec], out: Path, repair: bool) -> dict[str, Entry]:
        """The valid entries by trajectory id (see the module docstring)."""
        return {e["id"]: e for e in self.load(repair=repair, check=entry_check(plan, out))}

    def append(self, entry: Mapping[str, Any]) -> None:
        """Append one entry and force it to disk before returning."""
        self.append_json(dict(entry))
