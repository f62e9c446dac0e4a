"""An append-only JSON-lines journal that makes long runs resumable: :class:`JsonlJournal`.

A journal holds one JSON object per finished unit of work (a benchmark episode, an exported
trajectory), appended, flushed and fsynced as soon as it ends: an interrupted run loses at most
the unit in progress, and the next run does only what the journal lacks.

One set of repair rules for every journal:

- a torn last line (the process died mid-write: an unreadable last line without its newline)
  is dropped silently;
- any other bad line (not JSON, a record its parser refuses, or one the caller's ``check``
  refuses) is dropped with a ``UserWarning`` naming the file, the line and the reason; its work
  is done again;
- a repairing load fixes the file for the appends to come: it cuts a torn last line, adds a
  missing final newline, and moves dropped lines to ``<stem>.rejected.jsonl`` next to the
  journal (nothing is deleted, and the warning is not repeated on every later load).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

from .files import atomic_write

R = TypeVar("R")


class JsonlJournal(Generic[R]):
    """The append-only journal at ``path`` of records of type ``R``.

    Args:
        path: the ``.jsonl`` file (it need not exist yet).
        parse: builds a record from one line's JSON value; raises ``ValueError`` (the message
            says why) for a value that is not a valid record.
        redo: what the warning for a dropped line says happens next
            (``"its episode will be run again"``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        parse: Callable[[Any], R],
        *,
        redo: str = "its work will be done again",
    ) -> None:
        self.path = Path(path)
        self._parse = parse
        self._redo = redo

    @property
    def rejected_path(self) -> Path:
        """Where a repairing load moves the lines it drops (``<stem>.rejected.jsonl``)."""
        return self.path.with_name(f"{self.path.stem}.rejected{self.path.suffix}")

    def load(self, repair: bool = False, check: Callable[[R], str | None] | None = None) -> list[R]:
        """The valid records written so far, in file order (see the module docstring).

        Args:
            repair: fix the file for the appends to come (cut a torn last line, add a missing
                final newline, move dropped lines to :attr:`rejected_path`, appended as they
                were; the journal is then rewritten atomically without them).
            check: more rules for the caller (e.g. "a record of this run's plan", "the first
                record of its key"): returns the reason to drop a record, or None to keep it.
                It sees the records in file order, only those the parser accepted.
        """
        if not self.path.is_file():
            return []
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")  # the last element is b"" when the file ends with a newline
        records: list[R] = []
        kept: list[bytes] = []  # the lines worth keeping, each with its newline
        dropped: list[bytes] = []
        torn = False
        reason: str | None
        for i, line in enumerate(lines):
            terminated = i < len(lines) - 1
            if not line.strip():
                if terminated:
                    kept.append(line + b"\n")
                continue
            try:
                data = json.loads(line)
            except (ValueError, RecursionError) as err:  # incl. JSONDecodeError, bad UTF-8
                if not terminated:
                    torn = True  # the crash cut the last write short: not worth a warning
                    continue
                reason = f"not valid JSON ({err})"
            else:
                try:
                    record = self._parse(data)
                    reason = check(record) if check is not None else None
                except ValueError as err:
                    reason = str(err)
            if reason is not None:
                warnings.warn(
                    f"{self.path}:{i + 1}: dropping line {i + 1} ({reason}); {self._redo}",
                    stacklevel=2,
                )
                dropped.append(line + b"\n")
                continue
            records.append(record)
            kept.append(line + b"\n")
        if repair:
            self._repair(raw, kept, dropped, torn)
        return records

    def _repair(self, raw: bytes, kept: list[bytes], dropped: list[bytes], torn: bool) -> None:
        if dropped:
            # First a copy of what is dropped (fsynced), then the journal without it: a crash in
            # between leaves both copies, never neither.
            with open(self.rejected_path, "ab") as fh:
                fh.writelines(dropped)
                _sync(fh)
            atomic_write(self.path, b"".join(kept))
        elif torn:
            with open(self.path, "r+b") as fh:
                fh.truncate(sum(map(len, kept)))
                _sync(fh)
        elif raw and not raw.endswith(b"\n"):
            # A complete last object whose newline never made it to disk.
            with open(self.path, "ab") as fh:
                fh.write(b"\n")
                _sync(fh)

    def append_json(self, data: Any) -> None:
        """Append one record's JSON value (keys sorted) and force it to disk before returning.

        Raises:
            ValueError: a value JSON cannot hold exactly (NaN, infinity).
        """
        line = json.dumps(data, sort_keys=True, allow_nan=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            _sync(fh)


def _sync(fh: IO[Any]) -> None:
    fh.flush()
    os.fsync(fh.fileno())
