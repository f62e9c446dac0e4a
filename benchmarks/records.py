"""Episode records, the append-only journal that makes runs resumable, and atomic writes.

The journal ``episodes.jsonl`` holds one JSON object per finished episode, appended, flushed
and fsynced as soon as the episode ends: an interrupted run loses at most the episode in
progress. A torn last line (the process died mid-write) is dropped on the next load.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EpisodeKey = tuple[str, str, str, str]
"""``(policy, dataset, segmenter, sample_id)``: identifies an episode within a config."""


@dataclass(frozen=True)
class Step:
    """The state after one turn.

    ``hd95`` is in millimetres and ``inf`` when exactly one of mask and target is empty;
    ``invalid`` is the env's reason string for an invalid action, else None.
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

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        # JSON has no infinity: null stands for "infinite" (one mask empty).
        out["hd95"] = None if math.isinf(self.hd95) else self.hd95
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Step:
        data = dict(data)
        data["hd95"] = math.inf if data["hd95"] is None else float(data["hd95"])
        return cls(**data)


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
    def from_json(cls, data: dict[str, Any]) -> EpisodeRecord:
        data = dict(data)
        data["steps"] = tuple(Step.from_json(s) for s in data["steps"])
        return cls(**data)


class Journal:
    """The append-only ``episodes.jsonl`` of one output folder."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self, repair: bool = False) -> list[EpisodeRecord]:
        """The records written so far, in file order.

        An unreadable *last* line is a write cut short by a crash: it is skipped and, with
        ``repair=True``, cut off the file so the next append starts on a fresh line. An
        unreadable line elsewhere is skipped with a warning (its episode will be re-run).
        """
        if not self.path.is_file():
            return []
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")  # the last element is b"" when the file ends with a newline
        records: list[EpisodeRecord] = []
        pos = keep_end = 0  # keep_end: end of the last byte worth keeping
        for i, line in enumerate(lines):
            start, pos = pos, pos + len(line) + 1
            terminated = i < len(lines) - 1
            if not line.strip():
                keep_end = pos if terminated else keep_end
                continue
            try:
                record = EpisodeRecord.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError):
                if any(rest.strip() for rest in lines[i + 1 :]):
                    # Good lines follow: corruption, not a torn write; leave it, re-run it.
                    warnings.warn(f"{self.path}: skipping unreadable line {i + 1}", stacklevel=2)
                    keep_end = pos
                continue
            records.append(record)
            keep_end = pos if terminated else start + len(line)
        if repair and keep_end < len(raw):
            with open(self.path, "r+b") as fh:
                fh.truncate(keep_end)
                _sync(fh)
        elif repair and raw and not raw.endswith(b"\n"):
            # A complete last object whose newline never made it to disk.
            with open(self.path, "ab") as fh:
                fh.write(b"\n")
                _sync(fh)
        return records

    def append(self, record: EpisodeRecord) -> None:
        """Append one record and force it to disk before returning."""
        line = json.dumps(record.to_json(), sort_keys=True, allow_nan=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            _sync(fh)


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; restored at once (at import, single-threaded)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _sync(fh: Any) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``.

    Readers see the old file or the new one, never a half-written one.
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            _sync(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
