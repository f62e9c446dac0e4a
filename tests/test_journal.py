"""``medseg_env.journal.JsonlJournal``: the one set of repair rules every resumable journal
(the benchmark's episodes, the SFT export's trajectories) shares."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from medseg_env.journal import JsonlJournal


def parse(data: object) -> int:
    if not isinstance(data, dict) or not isinstance(data.get("n"), int):
        raise ValueError("not a record with an integer n")
    return data["n"]


def first_of_each() -> Callable[[int], str | None]:
    """A caller's rule: a second record of the same ``n`` is dropped."""
    seen: set[int] = set()

    def check(n: int) -> str | None:
        if n in seen:
            return "a second record"
        seen.add(n)
        return None

    return check


def test_append_load_and_repair(tmp_path) -> None:
    journal = JsonlJournal(tmp_path / "work.jsonl", parse, redo="it is done again")
    assert journal.load() == [] and journal.rejected_path.name == "work.rejected.jsonl"
    for n in (1, 2, 3):
        journal.append_json({"n": n, "a": 0})
    assert journal.path.read_text().splitlines()[0] == '{"a": 0, "n": 1}'  # keys sorted
    with pytest.raises(ValueError):
        journal.append_json({"n": float("nan")})  # JSON holds no NaN
    # a bad record, a record the caller refuses, and a torn last line
    text = journal.path.read_text() + '"text"\n{"n": 2}\n{"n": 4'
    journal.path.write_text(text)
    with pytest.warns(UserWarning) as caught:
        assert journal.load(check=first_of_each()) == [1, 2, 3]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2  # the torn line goes without a word
    assert messages[0].startswith(f"{journal.path}:4: dropping line 4 (not a record")
    assert messages[0].endswith("; it is done again")
    assert messages[1].startswith(f"{journal.path}:5: dropping line 5 (a second record)")
    assert journal.path.read_text() == text  # a load without repair writes nothing
    with pytest.warns(UserWarning):
        journal.load(repair=True, check=first_of_each())
    assert [json.loads(line)["n"] for line in journal.path.read_text().splitlines()] == [1, 2, 3]
    assert journal.rejected_path.read_text() == '"text"\n{"n": 2}\n'  # moved aside, not lost
    journal.path.write_text(journal.path.read_text() + '{"n": 5}')  # no final newline
    assert journal.load(repair=True) == [1, 2, 3, 5]
    assert journal.path.read_text().endswith('{"n": 5}\n')
    # only the torn last line: cut off by a repairing load, silently
    journal.path.write_text(journal.path.read_text() + '{"n": 6')
    assert journal.load(repair=True) == [1, 2, 3, 5]
    assert journal.path.read_text().endswith('{"n": 5}\n')
