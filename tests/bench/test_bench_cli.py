"""The ``medseg-bench`` command line, called through ``main([...])``."""

from __future__ import annotations

import json
from pathlib import Path

import medseg_bench.runner
from medseg_bench import BenchConfig
from medseg_bench.cli import main
from medseg_bench.runner import BenchResult
from medseg_env import default_config
from medseg_env.metrics import NSD_TOLERANCE_MM


def test_run_resume_and_compare(tiny_npz, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["-p", "oracle_box:jitter_px=4", "-d", str(tiny_npz), "--budget", "2"]
    common += ["--no-progress", "--examples", "1"]
    assert main(["run", *common, "--out", str(a)]) == 0
    printed = capsys.readouterr().out
    assert "| oracle_box:jitter_px=4 | " in printed
    assert "2 episodes: 2 run, 0 resumed" in printed
    assert f"Plot: {a / 'dice_vs_turn.png'}" in printed
    doc = json.loads((a / "results.json").read_text())
    assert doc["config"]["budget"] == 2 and doc["config"]["datasets"] == [str(tiny_npz)]

    # The same command again resumes everything; options alone (no "run") mean run.
    assert main([*common, "--out", str(a)]) == 0
    assert "2 episodes: 0 run, 2 resumed" in capsys.readouterr().out

    assert main(["run", *common, "--seed", "1", "--out", str(b)]) == 0
    capsys.readouterr()
    assert main(["compare", str(a), str(b)]) == 0
    table = capsys.readouterr().out
    assert "Δ Dice@final" in table and "NoC@90 B" in table
    row = next(line for line in table.splitlines() if line.startswith("| oracle_box"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    dice_a, dice_b, delta = (float(c) for c in cells[4:7])
    assert delta == round(dice_b - dice_a, 3) or abs(delta - (dice_b - dice_a)) < 2e-3
    assert cells[3] == "2/2"
    assert "Configs differ (B != A): seed: 1 != 0" in table


def test_errors_exit_2_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "-p", "bogus", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown policy 'bogus'" in err and "oracle_box" in err
    assert main(["run", "-d", "no-such-data", "--out", str(out)]) == 2
    assert "no-such-data" in capsys.readouterr().err
    assert main(["run", "--budget", "x", "--out", str(out)]) == 2
    assert "--budget takes N or POLICY=N" in capsys.readouterr().err
    assert not out.exists()
    assert main(["compare", str(tmp_path / "x"), str(tmp_path / "y")]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_plain_command_runs_the_default_benchmark(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_run(config, out, **kwargs):
        seen.update(config=config, out=out, **kwargs)
        return BenchResult(Path(tmp_path), config, [], [], 0, 0, {}, "")

    monkeypatch.setattr(medseg_bench.runner, "run_benchmark", fake_run)
    assert main([]) == 0
    # Every registered policy (resolved by the runner), the bundled held-out split, the default
    # segmenter, and the default folder (None: $MEDSEG_BENCH_DIR/<hash> or ~/.cache/..., never
    # the cwd); sizes and tolerances are the env's and the metrics' own defaults.
    config = seen["config"]
    assert config == BenchConfig()
    assert config.datasets == ("demo-heldout",) and config.budget == 20
    assert config.segmenters == (default_config()["segmenter"],)
    assert config.obs_size == default_config()["obs_size"]
    assert config.nsd_tolerance_mm == NSD_TOLERANCE_MM
    assert seen["out"] is None and seen["progress"] is True and seen["plots"] is True
    assert list(tmp_path.iterdir()) == []


def test_budget_options(monkeypatch, tmp_path):
    seen = {}

    def fake_run(config, out, **kwargs):
        seen["config"] = config
        return BenchResult(Path(tmp_path), config, [], [], 0, 0, {}, "")

    monkeypatch.setattr(medseg_bench.runner, "run_benchmark", fake_run)
    args = ["-p", "ritm", "oracle_box", "--budget", "10", "--budget", "oracle_box=2"]
    assert main(args) == 0
    config = seen["config"]
    assert config.policies == ("ritm", "oracle_box")
    assert config.budget_for("ritm") == 10 and config.budget_for("oracle_box") == 2


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "oracle_box" in out and "demo" in out and "litemedsam" in out
    assert "demo-heldout" in out
    # policies in registration order, the order of the benchmark's tables
    line = next(line for line in out.splitlines() if line.startswith("policies:"))
    assert line.split()[1:10] == [
        "learned",
        "learned_bc",
        "hint_box",
        "hint_click",
        "random",
        "oracle_box",
        "hybrid_expert",
        "ritm",
        "imis",
    ]


def test_export_sft_is_deprecated_and_forwarded_to_medseg_train(tmp_path, capfd):
    """``medseg-bench export-sft`` (kept for one release) runs ``medseg-train export-sft`` with
    the same arguments in a subprocess, and returns its status."""
    out = tmp_path / "sft"
    args = ["export-sft", "-s", "classical", "--limit", "1", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    captured = capfd.readouterr()
    assert "'medseg-bench export-sft' is deprecated" in captured.err
    assert "use 'medseg-train export-sft'" in captured.err
    assert "1 trajectories" in captured.out and (out / "trl.jsonl").is_file()
    # the forwarded command's own status: 1 for a failed replay check, 2 for bad input
    (out / "trl.jsonl").write_text("not json\n", encoding="utf-8")
    assert main(["export-sft", "--verify", "--out", str(out), "--no-progress"]) == 1
    assert main(["export-sft", "-d", "demo-heldout", "--out", str(tmp_path / "x")]) == 2
    err = capfd.readouterr().err
    assert "medseg-train export-sft: error: " in err and "trl.jsonl:1 is not JSON" in err
    assert "medseg-train export-sft: error: medseg-train export-sft --dataset: dataset " in err
    assert not (tmp_path / "x").exists()
