"""``python -m medseg_bench.throughput --table``: its rows, their counts and arithmetic, and what
it writes (no speed is checked: timings belong to the benchmark, never to a timed test).

The table runs with the ``classical`` backend (milliseconds a call) on tiny settings.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os

import numpy as np
import pytest
import torch

from medseg_bench import memory, throughput
from medseg_bench import throughput_table as tt
from medseg_env import actions as A
from medseg_env.geometry import letterbox

ENVS = (1, 3)
STEPS = 5
TURNS = 2


@pytest.fixture(scope="module")
def table() -> dict:
    return tt.throughput_table(["classical"], envs=ENVS, steps=STEPS, turns=TURNS)


def by_config(table: dict) -> dict[tuple, dict]:
    rows = table["rows"]
    keyed = {(r["embeddings"], r["decoder"], r["form"], r["num_envs"]): r for r in rows}
    assert len(keyed) == len(rows), "two rows of the same configuration"
    return keyed


def test_one_row_per_configuration(table: dict) -> None:
    forms = [("bare", 1), ("env", 1), *[("vector", n) for n in ENVS]]
    expected = {
        (mode, "eager", form, n) for mode, (form, n) in itertools.product(tt.EMBEDDINGS, forms)
    }
    assert set(by_config(table)) == expected  # classical has no fast decoder: eager only
    assert all(set(r) == set(tt.TABLE_FIELDS) for r in table["rows"])
    assert table["meta"]["device"] == "cpu" and table["meta"]["cores"] >= 1
    assert table["meta"]["steps"] == STEPS and table["meta"]["envs"] == list(ENVS)


def test_cold_rows_encode_every_episode_and_cached_rows_never(table: dict) -> None:
    for row in table["rows"]:
        if row["embeddings"] == "cold":
            assert row["encoder_calls"] == row["episodes"] > 0, row
        else:
            assert row["encoder_calls"] == 0, row


def test_rows_step_every_sub_env_and_decode_every_step(table: dict) -> None:
    for row in table["rows"]:
        n = row["num_envs"]
        assert row["rounds"] == math.ceil(STEPS / (n * TURNS))
        assert row["episodes"] == row["rounds"] * n  # one episode per sub-env a round
        assert row["steps"] == row["episodes"] * TURNS >= STEPS
        # every action of the workload is valid and needs the model: one request a step
        assert row["invalid_actions"] == 0, row
        assert row["decoder_calls"] == row["steps"], row
        assert row["batched"] is (False if row["form"] == "vector" else None)  # CPU: "auto"


def test_rates_and_ratios_follow_from_the_times(table: dict) -> None:
    rows = by_config(table)
    for (mode, decoder, form, _), row in rows.items():
        assert row["seconds"] > 0
        assert row["steps_per_s"] == pytest.approx(row["steps"] / row["seconds"])
        assert row["ms_per_step"] == pytest.approx(1000 / row["steps_per_s"])
        bare, single = rows[(mode, decoder, "bare", 1)], rows[(mode, decoder, "env", 1)]
        if form == "bare":
            assert row["env_overhead"] is None
        else:
            ratio = row["ms_per_step"] / bare["ms_per_step"]
            assert row["env_overhead"] == pytest.approx(ratio - 1)
        assert row["vs_single_env"] == pytest.approx(row["steps_per_s"] / single["steps_per_s"])
    assert all(r["vs_single_env"] == 1 for r in table["rows"] if r["form"] == "env")


def test_markdown_names_the_machine_and_has_every_row(table: dict) -> None:
    text = tt.table_markdown(table)
    lines = text.splitlines()
    assert lines[0].startswith("Machine: ") and "device cpu" in lines[0]
    assert f"torch {torch.__version__}" in lines[0]
    body = [line for line in lines if line.startswith("| `classical`")]
    assert len(body) == len(table["rows"])
    header = next(line for line in lines if line.startswith("| backend"))
    assert all(line.count("|") == header.count("|") for line in body)


def test_oracle_prompts_box_then_clicks_on_the_target(demo) -> None:
    index = 5
    _, target, _ = letterbox(demo[index], 256)
    policy = tt.OraclePrompts(demo, 256, 4, frozenset({"box", "point"}), seed=3)
    plan = [policy(index, turn) for turn in range(4)]
    kinds = [A.ActionKind(a["kind"]) for a in plan]
    assert kinds[0] == A.ActionKind.BOX and A.ActionKind.BOX not in kinds[1:]
    rows, cols = np.nonzero(target)
    x0, y0, x1, y1 = plan[0]["box"] * 256  # pixel edges; the box holds the whole target
    assert x0 <= cols.min() and y0 <= rows.min() and x1 >= cols.max() + 1 and y1 >= rows.max() + 1
    first = plan[1]
    assert A.ActionKind(first["kind"]) == A.ActionKind.POSITIVE_CLICK
    col, row = (first["point"] * 256).astype(int)
    assert target[row, col]
    again = tt.OraclePrompts(demo, 256, 4, frozenset({"box", "point"}), seed=3)
    assert all(np.array_equal(again(index, t)["point"], plan[t]["point"]) for t in range(4))
    boxes = tt.OraclePrompts(demo, 256, 3, frozenset({"box"}))
    assert all(boxes(index, t)["kind"] == A.ActionKind.BOX for t in range(3))


def test_decoder_rows_where_the_onnx_decoder_runs() -> None:
    assert tt._decoders("classical", "cpu") == (["eager"], [])
    assert tt._decoders("litemedsam_clicks", "cpu") == (["eager", "onnx"], [])
    assert tt._decoders("sam", "cpu") == (["eager", "onnx"], [])  # any SAM-family backend
    decoders, notes = tt._decoders("litemedsam_clicks", "cuda")
    assert decoders == ["eager"] and "CPU only" in notes[0]


def test_peak_memory_counts_the_stretch_only() -> None:
    probe = memory.PeakMemory()
    if not probe.rss_available:
        pytest.skip("needs Linux's /proc/self/clear_refs and glibc's malloc_trim")
    big = np.ones(128 * 2**20, np.uint8)  # raises the process's peak, then is freed
    del big
    probe.start()
    rss, gpu = probe.stop()
    assert rss is not None and rss < 32 and gpu is None  # the earlier peak is not counted
    probe.start()
    held = np.ones(64 * 2**20, np.uint8)
    rss, _ = probe.stop()
    assert rss is not None and rss >= 60
    del held


ARGS = ["--table", "--backends", "classical", "--envs", "2", "--steps", "2", "--turns", "2"]
QUICK = ["--embeddings", "cached", "--no-memory", "--no-progress"]


def test_cli_writes_files_only_where_asked(tmp_path, capsys) -> None:
    assert os.getcwd() == str(tmp_path)  # tests/bench/conftest.py runs every test from here
    throughput.main([*ARGS, *QUICK])
    text = capsys.readouterr().out
    assert text.startswith("Machine: ") and text.count("| `classical`") == 3
    assert os.listdir(tmp_path) == []
    out = tmp_path / "out"
    out.mkdir()
    throughput.main([*ARGS, *QUICK, "--json", str(out / "t.json"), "--csv", str(out / "t.csv")])
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert sorted(os.listdir(out)) == ["t.csv", "t.json"]
    saved = json.loads((out / "t.json").read_text())
    assert set(saved) == {"meta", "rows", "notes"} and len(saved["rows"]) == 3
    assert all(r["peak_rss_mib"] is None for r in saved["rows"])  # --no-memory
    with open(out / "t.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == tt.TABLE_FIELDS
        assert [r["form"] for r in reader] == [r["form"] for r in saved["rows"]]


def test_cli_refuses_cuda_without_a_gpu_and_unknown_backends(tmp_path, capsys) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            throughput.main([*ARGS, "--device", "cuda"])
        assert "no CUDA device is available" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        throughput.main(["--table", "--backends", "nope"])
    assert "unknown backends ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        throughput.main(["--csv", str(tmp_path / "t.csv")])  # --csv needs --table
    assert os.listdir(tmp_path) == []
