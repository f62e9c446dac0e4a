"""Config hashing/serialisation, episode seeds, policy specs, the journal and atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from medseg_bench.config import (
    BenchConfig,
    BenchError,
    default_out_dir,
    episode_seed,
    parse_policy_spec,
)
from medseg_bench.records import EpisodeRecord, Journal, Step, atomic_write


def test_config_round_trip_hash_and_diff():
    a = BenchConfig(policies=("ritm", "imis"), budget=7, policy_budgets={"ritm": 3}, limit=5)
    b = BenchConfig.from_dict(json.loads(json.dumps(a.to_dict())))
    assert a == b and a.hash() == b.hash()
    c = BenchConfig(policies=("ritm", "imis"), budget=8, policy_budgets={"ritm": 3}, limit=5)
    assert c.hash() != a.hash()
    assert c.diff(a) == ["budget: 8 != 7"]
    assert a.budget_for("ritm") == 3 and a.budget_for("imis") == 7


def test_config_hash_is_stable_across_processes():
    code = "from medseg_bench.config import BenchConfig as C; print(C(policies=('ritm',)).hash())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == BenchConfig(policies=("ritm",)).hash()


def test_episode_seed_is_a_stable_hash():
    # Pinned: Python's salted hash() would change this from one process to the next.
    assert episode_seed(0, "ritm", "demo", "litemedsam", "a/b") == episode_seed(
        0, "ritm", "demo", "litemedsam", "a/b"
    )
    assert episode_seed(0, "ritm", "demo", "litemedsam", "a/b") == 2736363616914234961
    assert episode_seed(1, "ritm", "demo", "litemedsam", "a/b") != episode_seed(
        0, "ritm", "demo", "litemedsam", "a/b"
    )


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"budget": 0}, "budget"),
        ({"limit": 0}, "limit"),
        ({"subset": "middle"}, "subset"),
        ({"datasets": ()}, "datasets"),
        ({"policies": ("ritm", "ritm")}, "more than once"),
        ({"policies": ("ritm:first_box",)}, "key=value"),
    ],
)
def test_bad_config_values_are_refused(kwargs, words):
    with pytest.raises(BenchError, match=words):
        BenchConfig(**kwargs)


def test_policy_spec_parsing():
    assert parse_policy_spec("ritm") == ("ritm", {})
    assert parse_policy_spec("oracle_box:jitter_px=5,jitter_frac=0.1,mode=x") == (
        "oracle_box",
        {"jitter_px": 5, "jitter_frac": 0.1, "mode": "x"},
    )
    assert parse_policy_spec("ritm:first_box=true") == ("ritm", {"first_box": True})


def test_default_out_dir_is_never_the_cwd(tmp_path, monkeypatch):
    config = BenchConfig(policies=("ritm",))
    assert default_out_dir(config) == tmp_path / "default-bench-dir" / config.hash()
    monkeypatch.delenv("MEDSEG_BENCH_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".cache" / "medseg-env" / "bench" / config.hash()
    assert default_out_dir(config) == expected


def test_default_out_dir_changes_with_the_weights(tmp_path):
    # An upgrade ships new weights under the same segmenter name: a fresh folder, not a
    # refused resume of the old one.
    config = BenchConfig(policies=("ritm",))
    old = default_out_dir(config, {"litemedsam_clicks": "litemedsam_clicks-000b23bd4923"})
    new = default_out_dir(config, {"litemedsam_clicks": "litemedsam_clicks-ee1352077434"})
    assert old != new
    assert old.parent == new.parent == tmp_path / "default-bench-dir"
    assert old.name.startswith(config.hash() + "-") and new.name.startswith(config.hash() + "-")
    assert old == default_out_dir(config, {"litemedsam_clicks": "litemedsam_clicks-000b23bd4923"})


def _record(sample: str) -> EpisodeRecord:
    step = Step(1, "box", None, 0.5, 0.33, 0.4, float("inf"), 0, 1)
    # budget 1: one turn, not stopped (a record must be consistent to load)
    return EpisodeRecord("p", "d", "m", sample, 0, "CT", "t", "src", 1, 1, False, (step,))


def test_journal_round_trip_and_infinite_hd95(tmp_path):
    journal = Journal(tmp_path / "episodes.jsonl")
    journal.append(_record("a"))
    journal.append(_record("b"))
    loaded = journal.load()
    assert [r.sample_id for r in loaded] == ["a", "b"]
    assert loaded[0] == _record("a") and loaded[0].steps[0].hd95 == float("inf")
    assert "Infinity" not in journal.path.read_text()  # strict JSON


def test_a_step_keeps_the_replies_retried_before_it(tmp_path):
    """MedSAM-Agent's EVAL retries spend no turn: their replies ride on the next turn's step."""
    retry = {"reply": "no call", "parsed": {"call": None, "error": "no <tool_call> found"}}
    call = {"call": {"name": "add_bbox"}, "error": None}
    step = Step(1, "box", None, 0.5, 0.33, 0.4, 2.0, 0, 1, "<tool_call>", call, (retry,))
    record = EpisodeRecord("p", "d", "m", "a", 0, "CT", "t", "src", 1, 1, False, (step,))
    journal = Journal(tmp_path / "episodes.jsonl")
    journal.append(record)
    (loaded,) = journal.load()
    assert loaded == record and loaded.steps[0].retries == (retry,)
    plain = json.loads(journal.path.read_text())
    assert "retries" not in json.dumps(_record("b").to_json()) and plain["steps"][0]["retries"]
    plain["steps"][0]["retries"] = [{"reply": 3}]
    with pytest.raises(ValueError, match="retries"):
        EpisodeRecord.from_json(plain)


def test_journal_drops_a_torn_last_line(tmp_path):
    journal = Journal(tmp_path / "episodes.jsonl")
    journal.append(_record("a"))
    journal.append(_record("b"))
    text = journal.path.read_bytes()
    journal.path.write_bytes(text[:-20])  # the write of "b" was cut short
    assert [r.sample_id for r in journal.load(repair=True)] == ["a"]
    assert journal.path.read_bytes() == text[: text.index(b"\n") + 1]  # torn tail removed
    journal.append(_record("c"))
    assert [r.sample_id for r in journal.load()] == ["a", "c"]


def test_journal_keeps_a_complete_last_line_without_newline(tmp_path):
    journal = Journal(tmp_path / "episodes.jsonl")
    journal.append(_record("a"))
    journal.path.write_bytes(journal.path.read_bytes().rstrip(b"\n"))
    assert [r.sample_id for r in journal.load(repair=True)] == ["a"]
    journal.append(_record("b"))
    assert [r.sample_id for r in journal.load()] == ["a", "b"]


def test_journal_skips_a_corrupt_middle_line(tmp_path):
    journal = Journal(tmp_path / "episodes.jsonl")
    journal.append(_record("a"))
    with open(journal.path, "a") as fh:
        fh.write("{not json\n")
    journal.append(_record("b"))
    with pytest.warns(UserWarning, match="line 2"):
        assert [r.sample_id for r in journal.load(repair=True)] == ["a", "b"]


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "x.json"
    atomic_write(path, "one")
    atomic_write(path, b"two")
    assert path.read_text() == "two"
    assert os.listdir(tmp_path) == ["x.json"]
