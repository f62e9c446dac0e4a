"""Issue 10, finding 8 (benchmark): journal records are validated as they are read (a bad one is
dropped with a warning naming file:line, moved aside, and its episode redone), and a lock stops a
second run on the same results folder."""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from medseg_agents import Policy
from medseg_bench import BenchConfig, BenchError, run_benchmark
from medseg_bench.cli import main
from medseg_bench.records import EpisodeRecord, Journal, Step
from medseg_bench.runner import LOCK_FILE, folder_lock

CONFIG = BenchConfig(
    policies=("boxer", "clicker"),
    datasets=("tiny",),
    segmenters=("litemedsam",),
    budget=3,
    seed=7,
)


def run(out, policies, tiny, **kwargs):
    kwargs = {"progress": False, "plots": False, **kwargs}
    return run_benchmark(CONFIG, out, policies=policies, datasets={"tiny": tiny}, **kwargs)


# --- validation of single records ----------------------------------------------------------------


def good_record(sample: str = "a") -> dict[str, Any]:
    """A valid record as the journal holds it: a box, a refused click, then a stop."""
    steps = [
        Step(1, "box", None, 0.8, 0.67, 0.9, 2.5, 0, 1),
        Step(2, "positive_click", "box-only", 0.8, 0.67, 0.9, 2.5, 0, 1),
        Step(3, "stop", None, 0.8, 0.67, 0.9, 2.5, 0, 1),
    ]
    record = EpisodeRecord(
        "p",
        "d",
        "m",
        sample,
        0,
        "CT",
        "t",
        "src",
        1,
        3,
        True,
        tuple(steps),
        timing={"reset": 0.1, "act": [0.0, 0.0, 0.0], "env": [0.1, 0.1, 0.0]},
    )
    return record.to_json()


def edit(path: str, value: Any):
    """A change of ``good_record()`` at a dotted path (``steps.0.dice``); DELETE removes it."""

    def apply(doc: dict[str, Any]) -> dict[str, Any]:
        *parents, last = path.split(".")
        target: Any = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        key = int(last) if isinstance(target, list) else last
        if value is DELETE:
            del target[key]
        else:
            target[key] = value
        return doc

    return apply


DELETE = object()


def too_many_steps(doc):
    doc["steps"].insert(2, {**doc["steps"][1], "turn": 3})
    doc["steps"][3]["turn"] = 4
    doc["timing"] = {}
    return doc


def stops_early(doc):
    doc["steps"] = doc["steps"][:1] + doc["steps"][2:]
    doc["steps"][1]["turn"] = 2
    doc["stopped"] = False
    doc["steps"][1]["action"] = "box"
    doc["timing"] = {}
    return doc


# (id, change, words of the reason)
BAD_RECORDS = [
    ("dice-5", edit("steps.0.dice", 5.0), "dice = 5.0, expected a number in [0, 1]"),
    ("dice-nan", edit("steps.1.dice", float("nan")), "steps[1]: dice = NaN"),
    ("iou-negative", edit("steps.0.iou", -0.1), "iou = -0.1"),
    ("nsd-inf", edit("steps.2.nsd", float("inf")), "nsd = Infinity"),
    ("dice-string", edit("steps.0.dice", "0.8"), 'dice = "0.8"'),
    ("dice-bool", edit("steps.0.dice", True), "dice = true"),
    ("hd95-negative", edit("steps.0.hd95", -1.0), "hd95 = -1.0"),
    ("hd95-nan", edit("steps.0.hd95", float("nan")), "hd95 = NaN"),
    ("turn-skipped", edit("steps.1.turn", 3), "steps[1]: turn = 3, expected 2"),
    ("too-many-steps", too_many_steps, "4 steps in a budget of 3 turns"),
    ("no-stop-short", stops_early, "2 steps without a stop in a budget of 3"),
    ("stopped-no-stop", edit("steps.2.action", "box"), "the last action is 'box'"),
    ("stop-not-last", edit("steps.0.action", "stop"), "steps[0]: a stop before the last turn"),
    ("unknown-action", edit("steps.0.action", "jump"), 'action = "jump"'),
    ("clicks-shrink", edit("steps.0.num_clicks", 1), "steps[1]: fewer prompts"),
    ("two-boxes", edit("steps.0.num_boxes", 2), "more than one box"),
    ("sample_index-string", edit("sample_index", "0"), 'sample_index = "0"'),
    ("seed-float", edit("seed", 1.5), "seed = 1.5"),
    ("budget-zero", edit("budget", 0), "budget = 0"),
    ("stopped-string", edit("stopped", "true"), 'stopped = "true"'),
    ("policy-number", edit("policy", 3), "policy = 3"),
    ("steps-empty", edit("steps", []), "steps = [], expected a non-empty list"),
    ("missing-key", edit("target", DELETE), "missing ['target']"),
    ("extra-key", edit("extra", 1), "unknown ['extra']"),
    ("step-extra-key", edit("steps.0.bonus", 1), "unknown ['bonus']"),
    ("timing-short", edit("timing.act", [0.1]), "timing.act"),
    ("not-an-object", lambda doc: [doc], "must be a JSON object"),
]


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


@pytest.mark.parametrize(
    "change, words", [c[1:] for c in BAD_RECORDS], ids=[c[0] for c in BAD_RECORDS]
)
def test_a_bad_record_is_dropped_with_file_line_and_reason(tmp_path, change, words):
    journal = Journal(tmp_path / "episodes.jsonl")
    bad = json.dumps(change(good_record("bad")))  # NaN / Infinity as Python's json writes them
    a = good_record("a")
    a["steps"][0]["hd95"] = None  # JSON null: infinite (one mask empty), which is fine
    a["steps"][1]["hd95"] = 0  # so is an integer
    write_lines(journal.path, [json.dumps(a), bad, json.dumps(good_record("b"))])
    with pytest.warns(UserWarning) as caught:
        records = journal.load(repair=True)
    assert [r.sample_id for r in records] == ["a", "b"]
    assert records[0].steps[0].hd95 == float("inf") and records[0].steps[1].hd95 == 0.0
    assert records[1] == EpisodeRecord.from_json(good_record("b"))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert messages[0].startswith(f"{journal.path}:2: dropping line 2 ("), messages
    assert words in messages[0] and "run again" in messages[0], messages
    # Moved aside as it was, not lost; a later load is quiet and agrees.
    assert journal.rejected_path.read_text() == bad + "\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r.sample_id for r in journal.load(repair=True)] == ["a", "b"]


def test_malformed_json_in_the_middle_is_dropped_with_its_line(tmp_path):
    journal = Journal(tmp_path / "episodes.jsonl")
    lines = [
        json.dumps(good_record("a")),
        '{"policy": "p", "steps": [',
        json.dumps(good_record("b")),
    ]
    write_lines(journal.path, lines)
    with pytest.warns(
        UserWarning, match=rf"^{re.escape(str(journal.path))}:2: dropping line 2 \(not valid JSON"
    ):
        assert [r.sample_id for r in journal.load(repair=True)] == ["a", "b"]
    # A complete (newline-ended) malformed *last* line is no torn write: reported as well.
    with open(journal.path, "a") as fh:
        fh.write("[1, 2\n")
    with pytest.warns(
        UserWarning, match=rf"{re.escape(str(journal.path))}:3: dropping line 3 \(not valid JSON"
    ):
        assert len(journal.load(repair=True)) == 2
    assert journal.rejected_path.read_text() == '{"policy": "p", "steps": [\n[1, 2\n'


# --- in a run: bad records are redone, good ones kept --------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny, make_policies):
    out = tmp_path_factory.mktemp("reference")
    return run(out, make_policies(), tiny)


def test_a_resumed_run_redoes_exactly_the_bad_records(reference, tiny, make_policies, tmp_path):
    out = tmp_path / "tampered"
    out.mkdir()
    (out / "config.json").write_bytes((reference.out_dir / "config.json").read_bytes())
    lines = (reference.out_dir / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == 6
    docs = [json.loads(line) for line in lines]
    docs[1]["steps"][0]["dice"] = 5.0
    docs[3]["steps"][-1]["nsd"] = float("nan")
    docs[4]["sample_index"] = str(docs[4]["sample_index"])  # a wrongly typed value
    docs[5]["seed"] += 1  # well formed, but not this plan's episode
    tampered = [json.dumps(d, sort_keys=True) for d in docs]
    write_lines(out / "episodes.jsonl", tampered)

    policies = make_policies()
    with pytest.warns(UserWarning) as caught:
        result = run(out, policies, tiny)
    dropped = sorted(str(w.message) for w in caught if "dropping line" in str(w.message))
    assert [m.split(": dropping")[0] for m in dropped] == [
        f"{out / 'episodes.jsonl'}:{n}" for n in (2, 4, 5, 6)
    ]
    assert "dice = 5.0" in dropped[0] and "nsd = NaN" in dropped[1]
    assert 'sample_index = "' in dropped[2] and "planned" in dropped[3]
    assert (result.resumed, result.executed) == (2, 4)  # every good record kept
    assert result.records == reference.records
    for name in ("episodes.csv", "summary.csv"):
        assert (out / name).read_bytes() == (reference.out_dir / name).read_bytes()
    rejected = (out / "episodes.rejected.jsonl").read_text().splitlines()
    assert rejected == tampered[1:2] + tampered[3:]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(Journal(out / "episodes.jsonl").load()) == 6
        again = run(out, make_policies(), tiny)
    assert (again.resumed, again.executed) == (6, 0)


# --- one run per folder --------------------------------------------------------------------------


def in_use(folder: Path, pid: int | None = None) -> str:
    """The start of the refusal message, as a regex."""
    held_by = f"(pid {os.getpid() if pid is None else pid}"
    return re.escape(f"{folder} is in use by another medseg-bench run {held_by}")


def test_folder_lock_refuses_a_second_holder_and_is_released(tmp_path):
    with folder_lock(tmp_path):
        lock = tmp_path / LOCK_FILE
        assert lock.read_text().startswith(f"pid {os.getpid()} on ")
        with pytest.raises(
            BenchError,
            match=in_use(tmp_path) + " on ",
        ):
            with folder_lock(tmp_path):
                pass
    assert not lock.exists()
    with folder_lock(tmp_path):  # free again
        pass


def test_a_second_run_on_a_locked_folder_is_refused(tiny, make_policies, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    with folder_lock(out):  # as another run would hold it
        with pytest.raises(
            BenchError,
            match=in_use(out),
        ):
            run(out, make_policies(), tiny)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written


def test_a_lock_held_by_another_process_names_its_pid(tiny_npz, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            f"fd = os.open({str(out / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, f'pid {os.getpid()} on elsewhere'.encode())\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["run", "-p", "oracle_box", "-d", str(tiny_npz), "--budget", "2"]
        assert main([*argv, "--no-progress", "--no-plots", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{out} is in use by another medseg-bench run (pid {holder.pid} on elsewhere" in err
        assert not (out / "config.json").exists()
    finally:
        holder.communicate("")
    # The holder ended: the kernel released its lock, and its leftover file is taken over.
    with pytest.warns(UserWarning, match=rf"taking over a stale lock left by pid {holder.pid}"):
        assert main([*argv, "--no-progress", "--no-plots", "--out", str(out)]) == 0
    assert not (out / LOCK_FILE).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tiny, make_policies, tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    out = tmp_path / "stale"
    out.mkdir()
    (out / LOCK_FILE).write_text(f"pid {pid} on somehost\n")  # its run was SIGKILLed
    with pytest.warns(
        UserWarning, match=rf"taking over a stale lock left by pid {pid} on somehost"
    ):
        result = run(out, make_policies(), tiny)
    assert result.executed == 6
    assert not (out / LOCK_FILE).exists()


class Interrupted(Policy):
    name = "interrupted"

    def act(self, obs, info, env=None):
        raise KeyboardInterrupt


@pytest.mark.parametrize("failure", ["error", "ctrl-c"])
def test_the_lock_is_released_when_a_run_fails(failure, tiny, make_policies, tmp_path):
    out = tmp_path / failure
    if failure == "error":
        policies, expected = make_policies(fail_at_call=2), RuntimeError
    else:
        policies, expected = {**make_policies(), "boxer": Interrupted()}, KeyboardInterrupt
    with pytest.raises(expected):
        run(out, policies, tiny)
    assert not (out / LOCK_FILE).exists()
    with folder_lock(out):  # nobody holds it
        pass


def test_the_lock_is_an_flock_released_by_the_kernel(tmp_path):
    """What the lock relies on: a second open file of the same path cannot take it."""
    with folder_lock(tmp_path):
        fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
